"""Run several variants of a stylisation over the built-in pairs, measure each result with the
metrics that are independent of the loss, and write a table, a figure and ``metrics.json``.

Used by :mod:`experiments.style_losses`, :mod:`experiments.spatial_control`,
:mod:`experiments.loss_normalization` and ``benchmarks/bench_quick.py``. A variant is a name and
the :class:`nstyle.transfer.TransferSettings` of one run; each run goes through
:func:`nstyle.transfer.run` exactly as ``nstyle-stylize`` would run it. Per run the table has:

- ``lpips``: LPIPS (VGG16 heads) between the result and the content image: lower keeps more
  of the photo;
- ``gram_dist``: the VGG16 Gram distance to the style image (:func:`nstyle.metrics.style_distance`);
- ``meanstd_dist``: the VGG16 mean-std distance to the style (:func:`nstyle.metrics.meanstd_distance`);
  both style distances are also given relative to the content image's own (``*_rel``: below 1
  means closer to the style than the photo is);
- ``optimize_s``: the iterations; ``wall_s``: the whole run (targets, compilation, iterations).

Each finished run is kept in the output directory (``<pair>__<variant>.png`` and ``.json``), and a
rerun with ``--out`` of that directory reuses the runs whose settings have not changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nstyle import _io, images, runinfo, transfer, weights


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    settings: Callable[[transfer.TransferSettings], transfer.TransferSettings]  # the pair's base settings -> this run's


def pair_name(content: str, style: str) -> str:
    strip = lambda s: Path(s.split(":", 1)[-1]).stem  # noqa: E731
    return f"{strip(content)}×{strip(style)}"


def parser(prog: str, doc: str, size: int, steps: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc.strip().splitlines()[0])
    p.add_argument("--size", type=int, default=size, help=f"longest side in px (default {size})")
    p.add_argument("--steps", type=int, default=steps, help=f"L-BFGS iterations (default {steps})")
    p.add_argument("--pairs", type=int, default=None, help="use only the first N built-in pairs")
    p.add_argument("--out", default=None, help="run directory (default outputs/experiments/<name>/<time>)")
    p.add_argument("--publish", default=None, help="copy the figure and the table here (e.g. experiments/results)")
    p.add_argument("--overwrite", action="store_true", help="let --publish replace existing files")
    p.add_argument("--debug", action="store_true", help="32 px, 3 steps, one pair: a smoke test in seconds")
    return p


def out_dir(name: str, out: str | None) -> Path:
    return Path(out or f"outputs/experiments/{name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}")


def check_publish(dest: str | None, names: Sequence[str], overwrite: bool) -> Path | None:
    if dest is None:
        return None
    held = [n for n in names if (Path(dest) / n).exists()]
    if held and not overwrite:
        raise SystemExit(f"error: {dest} already holds {', '.join(held)}; add --overwrite to replace them")
    return Path(dest)


def run_one(s: transfer.TransferSettings, out: Path, tag: str, params_for) -> tuple[np.ndarray, dict]:
    """One stylisation (or the saved one with the same settings): ``(image, record)``."""
    fingerprint = json.dumps(_io.to_jsonable(s), sort_keys=True)
    png, rec_path = out / f"{tag}.png", out / f"{tag}.json"
    if png.exists() and rec_path.exists():
        rec = json.loads(rec_path.read_text())
        if rec.get("fingerprint") == fingerprint:
            return images.load_image(png), rec
    inputs = transfer.load_inputs(s)
    params = params_for(s.arch)
    t0 = time.perf_counter()
    r = transfer.run(s, inputs, params)
    wall = time.perf_counter() - t0
    rec = {
        "fingerprint": fingerprint,
        "iterations": r.iterations,
        "optimize_s": sum(st["wall_s"] for st in r.stages),
        "compile_s": sum(st["compile_s"] for st in r.stages),
        "wall_s": wall,
        "final_loss": r.final["loss"],
        "stages": [{k: st[k] for k in ("size", "shape", "iterations", "wall_s", "compile_s")} for st in r.stages],
    }
    images.save_image(png, r.image)
    _io.write_json(rec_path, rec)
    return images.load_image(png), rec  # the saved 8-bit image, as a user would measure it


def measure(result: np.ndarray, content: np.ndarray | None, style: np.ndarray) -> dict:
    """LPIPS to the content and the two VGG16 style distances of ``result`` (H, W, 3)."""
    from nstyle import lpips, metrics

    out = {"gram_dist": metrics.style_distance(result, style), "meanstd_dist": metrics.meanstd_distance(result, style)}
    if content is not None:
        c = images.resize(content, result.shape[:2])
        out["lpips"] = float(np.asarray(lpips.lpips_distance(result[None], c[None]))[0])
    return out


def compare(
    base: transfer.TransferSettings,
    variants: Sequence[Variant],
    pairs: Sequence[tuple[str, str]],
    out: Path,
    *,
    size: int,
) -> tuple[list[dict], dict]:
    """Every variant on every pair: ``(rows, {pair: {"content", "style", variant: image}})``.

    The first row of each pair is the content image itself (the reference of ``*_rel``).
    """
    cache: dict = {}

    def params_for(arch):
        if arch not in cache:
            cache[arch] = weights.load(arch)
        return cache[arch]

    out.mkdir(parents=True, exist_ok=True)
    rows, shown = [], {}
    for content_spec, style_spec in pairs:
        pair = pair_name(content_spec, style_spec)
        content = images.load_image(content_spec, size)
        style = images.load_image(style_spec, size)
        ref = measure(content, content, style)
        rows.append({"pair": pair, "variant": "(content image)", **_metric_cells(ref, ref), "iterations": 0})
        shown[pair] = {"content": content, "style": style}
        for v in variants:
            s = v.settings(dataclasses.replace(base, content=content_spec, styles=(style_spec,)))
            image, rec = run_one(s, out, f"{pair}__{v.name}", params_for)
            m = measure(image, content, style)
            rows.append(
                {
                    "pair": pair,
                    "variant": v.name,
                    **_metric_cells(m, ref),
                    "iterations": rec["iterations"],
                    "optimize_s": round(rec["optimize_s"], 1),
                    "wall_s": round(rec["wall_s"], 1),
                }
            )
            shown[pair][v.name] = image
            print(f"{pair:28s} {v.name:24s} " + "  ".join(f"{k}={rows[-1][k]}" for k in list(rows[-1])[2:]), flush=True)
    return rows, shown


def _metric_cells(m: dict, ref: dict) -> dict:
    return {
        "lpips": round(m.get("lpips", 0.0), 3),
        "gram_dist": float(f"{m['gram_dist']:.4g}"),
        "gram_rel": round(m["gram_dist"] / ref["gram_dist"], 3),
        "meanstd_dist": float(f"{m['meanstd_dist']:.4g}"),
        "meanstd_rel": round(m["meanstd_dist"] / ref["meanstd_dist"], 3),
    }


def means(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Per variant, the mean of ``keys`` over the pairs (the content-image rows left out)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if r["variant"] != "(content image)":
            by.setdefault(r["variant"], []).append(r)
    return [
        {"variant": v, **{k: float(f"{np.mean([r[k] for r in rs]):.4g}") for k in keys if k in rs[0]}}
        for v, rs in by.items()
    ]


def write(
    name: str,
    out: Path,
    rows: Sequence[dict],
    summary: Sequence[dict],
    figure,
    settings: dict,
    dest: Path | None,
    extra: dict | None = None,
) -> list[Path]:
    """Table (all rows, then the per-variant means), figure and metrics.json; published if ``dest``."""
    from experiments._common import publish_file
    from nstyle.cli import collect, figures

    csv_path, md_path, png_path = out / f"{name}.csv", out / f"{name}.md", out / f"{name}.png"
    columns = list(dict.fromkeys(k for r in rows for k in r))  # every row's keys (the content row has no timings)
    rows = [{c: r.get(c, "") for c in columns} for r in rows]
    _io.write_text(csv_path, collect.to_csv(rows))
    md = f"Settings: {', '.join(f'{k}={v}' for k, v in settings.items())}\n\n"
    md += "Per variant, mean over the pairs:\n\n" + collect.to_markdown(summary) + "\nEvery run:\n\n"
    md += collect.to_markdown(rows)
    _io.write_text(md_path, md)
    figures.save_figure(figure, png_path)
    _io.write_json(
        out / "metrics.json",
        {"settings": settings, "rows": list(rows), "summary": list(summary), **(extra or {}), **runinfo.describe()},
    )
    print(collect.to_markdown(summary))
    published = []
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
        for src in (png_path, csv_path, md_path):
            published.append(publish_file(src, dest / src.name))
            print(f"published {published[-1]}")
    return published


def grid(shown: dict, columns: Sequence[str], title: str, settings: dict, rows: Sequence[dict] | None = None):
    """Pairs as rows; content, style and each variant as columns (images fitted to one box)."""
    from nstyle.cli import figures

    box = (96, 128)
    cells, labels = [], []
    for pair, imgs in shown.items():
        cells.append([fit(imgs[c], box) if c in imgs else None for c in ("content", "style", *columns)])
        labels.append(pair)
    return figures.image_grid(cells, labels, ["content", "style", *columns], title=title, settings=settings)


def fit(image: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """``image`` letterboxed into ``box`` (h, w) on white, aspect kept."""
    h, w = image.shape[:2]
    k = min(box[0] / h, box[1] / w)
    small = images.resize(image, (max(1, round(h * k)), max(1, round(w * k))))
    canvas = np.ones(box + (3,), np.float32)
    y, x = (box[0] - small.shape[0]) // 2, (box[1] - small.shape[1]) // 2
    canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
    return canvas
