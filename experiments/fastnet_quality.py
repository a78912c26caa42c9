"""FastNet after a short training: is a held-out photo moved towards the style without being lost?

    python -m experiments.fastnet_quality style=painting.jpg data=photos/ photo=held_out.jpg \
        --variants defaults,v1 --out outputs/fastnet_quality [steps=300 size=128 batch=4 seed=0 ...]

Each variant is a named set of ``nstyle-train`` overrides (:data:`VARIANTS`; ``--variant
NAME='k=v;k=v'`` adds one); the other ``key=value`` arguments apply to every variant. For
each, the script trains with :func:`nstyle.train.train` into ``OUT/<variant>/`` (an
interrupted variant resumes; a finished one is only evaluated again), applies the exported
model to the held-out photo (longest side ``--eval-size``, default 512 px) and measures:

- ``style_ratio``: :func:`nstyle.metrics.style_distance` (VGG16 Gram, relu1_2 … relu4_3) of
  the result to the painting, divided by the photo's own. Below 1: closer to the painting
  than the untouched photo. The FastNet loss uses VGG16 too, but on 128 px crops against the
  painting at 128 px; this compares the 512 px result with the painting at its own size.
- ``style_ratio_vgg19``: the same with VGG19 (Caffe weights; conv1_1 … conv5_1, the Gatys
  layers), a network the training never saw.
- ``lpips``: LPIPS (VGG16 heads) between the result and the photo; 0 is the photo itself.
- ``white`` / ``black``: the fraction of pixels whose three channels are all >= 250/255
  (<= 5/255) in the result, minus the photo's own fraction: saturated blobs show here.
- ``out_of_range``: the fraction of output values outside [0, 1] before the clip.

Writes ``OUT/fastnet_quality.csv`` / ``.md`` (one row per variant and photo),
``OUT/fastnet_quality.png`` (the photo and each variant's result) and, per variant,
``OUT/<variant>/applied_<photo>.png``. ``photo=`` may be given several times
(``photo=[a.jpg,b.jpg]``); the table has a row per photo. Numbers of a run are in docs/fastnet.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

# Named override sets. "v1" is the network and loss of model format version 1 (before the
# normalised loss and the residual output): MSE-unit weights of PyTorch's example, tanh output.
VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "v1": [
        "net.output=tanh",
        "loss.normalize=false",
        "loss.content_weight=1e5",
        "loss.style_weight=1e10",
        "loss.tv_weight=10",
    ],  # fmt: skip
    "v1_style2e9": [
        "net.output=tanh",
        "loss.normalize=false",
        "loss.content_weight=1e5",
        "loss.style_weight=2e9",
        "loss.tv_weight=10",
    ],  # fmt: skip
    "tanh": ["net.output=tanh"],  # the default loss with the version-1 output
    "linear": ["net.output=linear"],  # the default loss with an output that starts as noise, not the photo
}
FIELDS = ("variant", "photo", "steps", "size", "train_s", "final_loss", "final_content", "final_style", "style_ratio",
          "style_ratio_vgg19", "lpips", "white", "black", "out_of_range", "overrides")  # fmt: skip
VGG19_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


def train_config(overrides: list[str]):
    """An :class:`nstyle.train.TrainConfig` from ``key=value`` overrides, checked like nstyle-train's."""
    from omegaconf import OmegaConf

    from nstyle.cli import schema

    cfg = OmegaConf.merge(OmegaConf.structured(schema.TrainSchema), OmegaConf.from_dotlist(overrides))
    return schema.train_settings(cfg)


def _gram_distance(params, image: np.ndarray, style: np.ndarray, layers, pooling: str) -> float:
    import jax.numpy as jnp

    from nstyle import losses, vgg

    fx = vgg.features(params, jnp.asarray(image[None]), layers, pooling)
    fs = vgg.features(params, jnp.asarray(style[None]), layers, pooling)
    return float(np.mean([float(losses.style_layer_loss(fx[l], losses.mean_gram(fs[l]))[0]) for l in layers]))


def evaluate(model_path: Path, photo: np.ndarray, style: np.ndarray) -> tuple[dict, np.ndarray]:
    """The measures of the module docstring for one photo (H, W, 3); returns (row, result)."""
    import jax.numpy as jnp

    from nstyle import fastnet, lpips, metrics, weights

    cfg, params, _ = fastnet.load_model(model_path)
    if cfg.styles > 1:
        raise SystemExit(f"{model_path}: a multi-style model; this experiment measures single-style training")
    padded, _ = fastnet.pad_to_multiple(jnp.asarray(photo[None]), 4)
    raw = np.asarray(fastnet.apply(cfg, params, padded))  # (1, H', W', 3), before the clip
    result = np.asarray(fastnet.stylize(cfg, params, jnp.asarray(photo[None])))[0]  # (H, W, 3)
    vgg19 = weights.load("vgg19")
    white = lambda x: float(np.mean(np.all(x >= 250 / 255, axis=-1)))  # noqa: E731
    black = lambda x: float(np.mean(np.all(x <= 5 / 255, axis=-1)))  # noqa: E731
    row = {
        "style_ratio": metrics.style_distance(result, style) / metrics.style_distance(photo, style),
        "style_ratio_vgg19": _gram_distance(vgg19, result, style, VGG19_LAYERS, "max")
        / _gram_distance(vgg19, photo, style, VGG19_LAYERS, "max"),
        "lpips": float(lpips.lpips_distance(result[None], photo[None])[0]),
        "white": white(result) - white(photo),
        "black": black(result) - black(photo),
        "out_of_range": float(np.mean((raw < 0) | (raw > 1))),
    }
    return row, result


def run_variant(name: str, overrides: list[str], out: Path) -> tuple[Path, dict]:
    """Train (or resume, or find finished) ``OUT/<name>``; returns (model path, summary)."""
    from nstyle import train

    cfg = train_config(overrides)
    workdir = out / name
    model = workdir / "model.npz"
    if model.exists() and (workdir / "metrics.json").exists():
        summary = json.loads((workdir / "metrics.json").read_text())
        if summary.get("steps") == cfg.steps:
            print(f"[{name}] finished earlier: {model}", flush=True)
            return model, summary
    t = time.perf_counter()
    summary = train.train(cfg, workdir)
    summary["wall_s"] = time.perf_counter() - t
    return model, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="nstyle-train key=value overrides for every variant")
    ap.add_argument("--variants", default="defaults,v1", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--variant", action="append", default=[], help="NAME='k=v;k=v': one more variant")
    ap.add_argument("--out", default="outputs/fastnet_quality", help="work directory (one folder per variant)")
    ap.add_argument("--eval-size", type=int, default=512, help="longest side of the held-out photo (px)")
    args = ap.parse_intermixed_args(sys.argv[1:] if argv is None else argv)

    from nstyle import _io, _xla, images

    _xla.persistent_cache()
    variants = dict(VARIANTS)
    for spec in args.variant:
        name, _, text = spec.partition("=")
        variants[name] = [o for o in text.split(";") if o]
    names = [v for v in args.variants.split(",") if v] + [s.partition("=")[0] for s in args.variant]
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(variants)}")

    photos = [o.partition("=")[2] for o in args.overrides if o.startswith("photo=")]
    common = [o for o in args.overrides if not o.startswith("photo=")]
    photos = [p for text in photos for p in text.strip("[]").split(",") if p]
    if not photos:
        raise SystemExit("give photo=PATH (a held-out photo, not in the training folder)")
    base = train_config(common)  # checks the common overrides before any training
    style = images.load_image(base.styles[0])  # the painting at its own size (at most 512 px here)
    held_out = {Path(p).stem: images.load_image(p, max_side=args.eval_size) for p in photos}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, figure = [], [list(held_out.values())]
    for name in names:
        overrides = common + variants[name]
        model, summary = run_variant(name, overrides, out)
        final = summary.get("final", {})
        results = []
        for stem, photo in held_out.items():
            row, result = evaluate(model, photo, style)
            images.save_image(out / name / f"applied_{stem}.png", result)
            results.append(result)
            row.update(
                variant=name,
                photo=stem,
                steps=summary.get("steps"),
                size=base.size,
                train_s=round(float(final.get("time_s", float("nan"))), 1),
                final_loss=final.get("loss"),
                final_content=final.get("content"),
                final_style=final.get("style"),
                overrides=" ".join(variants[name]),
            )
            rows.append(row)
            print(
                f"[{name}] {stem}: style ratio {row['style_ratio']:.3f} (vgg19 {row['style_ratio_vgg19']:.3f}), "
                f"LPIPS {row['lpips']:.3f}, white {row['white']:+.4f}, out of range {row['out_of_range']:.4f}",
                flush=True,
            )
        figure.append(results)

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [",".join(FIELDS)] + [",".join(fmt(r.get(k, "")) for k in FIELDS) for r in rows]
    _io.write_text(out / "fastnet_quality.csv", "\n".join(lines) + "\n")
    md = ["| " + " | ".join(FIELDS) + " |", "|" + " --- |" * len(FIELDS)]
    md += ["| " + " | ".join(fmt(r.get(k, "")) for k in FIELDS) + " |" for r in rows]
    _io.write_text(out / "fastnet_quality.md", "\n".join(md) + "\n")
    small = [[images.resize_longest(im, 256) for im in row] for row in zip(*figure)]  # one row per photo
    images.save_image(out / "fastnet_quality.png", images.tile(small))
    print(f"wrote {out / 'fastnet_quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
