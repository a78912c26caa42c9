"""What the reconstruction experiments share: config schema, run directory, tables, publishing.

The reconstructions (content per layer, style per layer subset) are single commands with
their own small Hydra config in ``experiments/conf``; each loops over its layers in one
process with :func:`nstyle.optimize.stylize` and writes, into Hydra's run directory:
the images, a figure, loss curves, ``<name>.csv`` / ``<name>.md`` and ``metrics.json``.
``publish=DIR`` also copies the table and the figure to ``DIR`` (e.g. experiments/results).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nstyle import _io, _rundir, optimize, runinfo
from nstyle._errors import UserError
from nstyle.cli import collect, schema


@dataclasses.dataclass
class ReconOptimSchema(schema.OptimSchema):
    """The ``optim`` group of nstyle-stylize plus the step count (a top-level key there)."""

    steps: int = optimize.OptimConfig().steps

    def build(self) -> optimize.OptimConfig:
        return schema.optim_config(self, self.steps)


@dataclasses.dataclass
class ReconstructionSchema:
    """Settings shared by both reconstruction experiments (each adds its own keys)."""

    image: str = "builtin:chelsea"  # the image whose content / style is reconstructed
    size: int = 256  # longest side in pixels
    seed: int = 0  # the white-noise start
    network: str = "vgg19"
    pooling: str = "avg"  # Gatys et al.: average pooling gives better reconstructions
    init: str = "noise"  # the paper starts from white noise
    layers: list[str] = dataclasses.field(default_factory=list)
    optim: ReconOptimSchema = dataclasses.field(default_factory=ReconOptimSchema)
    lpips_net: str = "vgg16"  # the independent perceptual distance: "vgg16" or "alexnet"
    publish: Optional[str] = None  # copy table + figure here (e.g. experiments/results)
    overwrite: bool = False  # allow publish to replace existing files
    resume: bool = False  # with hydra.run.dir=<an earlier run>: reuse its finished layers


class ExperimentError(UserError, ValueError):
    """A user-facing configuration problem: one line naming it and the fix."""


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def check_common(cfg: ReconstructionSchema) -> None:
    from nstyle import vgg

    if cfg.size < 16:
        raise ExperimentError(f"size={cfg.size} is too small; use size >= 16 (the paper's figures are ~512 px)")
    if cfg.network not in vgg.ARCH_LAYERS:
        raise ExperimentError(f"network={cfg.network} is unknown; use one of {', '.join(vgg.ARCH_LAYERS)}")
    if cfg.pooling not in vgg.POOLINGS:
        raise ExperimentError(f"pooling={cfg.pooling} is unknown; use one of {', '.join(vgg.POOLINGS)}")
    if cfg.lpips_net not in ("vgg16", "alexnet"):
        raise ExperimentError(f"lpips_net={cfg.lpips_net} is unknown; use vgg16 or alexnet")
    if not cfg.layers:
        raise ExperimentError("layers is empty; give at least one layer, e.g. layers=[conv1_2,conv4_2]")
    for layer in cfg.layers:
        try:
            vgg.canonical(layer, cfg.network)
        except ValueError as e:
            raise ExperimentError(str(e)) from None
    cfg.optim.build()


def check_publish(cfg: ReconstructionSchema, names: Sequence[str]) -> Path | None:
    """Fail before any work if ``publish`` would overwrite results without ``overwrite=true``."""
    if cfg.publish is None:
        return None
    dest = Path(cfg.publish)
    existing = [n for n in names if (dest / n).exists()]
    if existing and not cfg.overwrite:
        raise ExperimentError(
            f"publish={dest} already holds {', '.join(existing)}; "
            "add overwrite=true to replace them, or publish elsewhere"
        )
    return dest


RECORD = "config.json"  # the settings of the run a directory holds (a resume must match them)
_NOT_SETTINGS = ("publish", "overwrite", "resume")


def settings_record(cfg: ReconstructionSchema) -> dict:
    """What defines an experiment's run: every setting but where it publishes and whether it resumes."""
    return {k: v for k, v in dump_config(cfg).items() if k not in _NOT_SETTINGS}


def check_run_dir(cfg: ReconstructionSchema, out: Path) -> None:
    """A directory that holds a run is refused, unless ``resume=true`` continues that same run
    (same settings, recorded in ``config.json``): a rerun never overwrites another run's tables
    nor leaves its per-layer files beside new ones."""
    held = (
        sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.suffix != ".log")
        if out.is_dir()
        else []
    )
    if not held:
        return
    if not cfg.resume:
        raise ExperimentError(
            f"{out} already holds a run ({', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
            f"choose another hydra.run.dir, or add resume=true to continue it"
        )
    record = _io.read_json(out / RECORD)
    if record is None:
        raise ExperimentError(f"{out} holds files but no {RECORD} saying which run; choose another hydra.run.dir")
    now = _io.to_jsonable(settings_record(cfg))
    differ = [k for k in sorted(set(now) | set(record)) if now.get(k) != record.get(k)]
    if differ:
        shown = ", ".join(f"{k}={record.get(k)} there, {now.get(k)} now" for k in differ[:3])
        raise ExperimentError(
            f"{out} holds a run with other settings ({shown}); resume=true needs the same settings, "
            f"or choose another hydra.run.dir"
        )


def check_memory(cfg: ReconstructionSchema, shape: tuple[int, int], budget_bytes: int) -> None:
    """Refuse, before the optimisation allocates it, an image whose VGG activations would not fit."""
    from nstyle import memory, vgg

    h, w = shape
    need = memory.vgg_activation_bytes(h, w, cfg.layers, cfg.network)
    if need > budget_bytes:
        fit = memory.max_side_that_fits(budget_bytes, w / h, cfg.layers, cfg.network)
        hint = f"size={fit} would fit" if fit >= vgg.min_size(cfg.layers, cfg.network) else "no useful size fits"
        raise ExperimentError(
            f"size={cfg.size}: the VGG activations need about {need / 2**30:.1f} GiB but only "
            f"{budget_bytes / 2**30:.1f} GiB is available; {hint}"
        )


def setup(cfg: ReconstructionSchema, name: str, out: Path, saved_as: str, on_start=None):
    """The checks and inputs every reconstruction starts with, before any optimisation:
    validate ``cfg``, refuse a run directory that holds another run and a ``publish`` that
    would overwrite without ``overwrite=true``, load the image at ``cfg.size`` (checked
    against the deepest layer and the memory available) and the weights; then record the
    settings (``config.json``), call ``on_start()`` and save the image as ``saved_as``.

    Returns ``(publish dest or None, image (H, W, 3), params)``.
    """
    from nstyle import images, memory, vgg, weights

    check_common(cfg)
    check_run_dir(cfg, out)
    _rundir.check_writable(out)
    dest = check_publish(cfg, [f"{name}.csv", f"{name}.md", f"{name}.png"])
    full = images.load_image(cfg.image)  # (H0, W0, 3)
    shape = images.longest_shape(full.shape[:2], cfg.size)
    images.check_size(shape, vgg.min_size(cfg.layers, cfg.network), cfg.image)
    check_memory(cfg, shape, memory.available_bytes())
    image = images.resize(full, shape)  # (H, W, 3)
    params = weights.load(cfg.network)
    from nstyle import _xla

    _xla.persistent_cache()  # a rerun (or resume) skips most compilation
    out.mkdir(parents=True, exist_ok=True)
    _io.write_json(out / RECORD, settings_record(cfg))
    if on_start is not None:
        on_start()
    images.save_image(out / saved_as, image)
    return dest, image, params


PUBLISH_MAX_WIDTH = 1400  # px: committed figures stay small (results/ < 2 MB in all)


def publish_file(src: Path, target: Path) -> Path:
    """Copy ``src`` to ``target`` atomically; PNG figures are re-encoded with a 256-colour
    palette (and narrowed to ``PUBLISH_MAX_WIDTH``) so committed results stay small."""
    if src.suffix.lower() != ".png":
        return _io.atomic_write(target, lambda f: shutil.copyfileobj(open(src, "rb"), f))
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > PUBLISH_MAX_WIDTH:
            h = round(im.height * PUBLISH_MAX_WIDTH / im.width)
            im = im.resize((PUBLISH_MAX_WIDTH, h), Image.Resampling.LANCZOS)
        small = im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return _io.atomic_write(target, lambda f: small.save(f, format="PNG", optimize=True))


def publish(files: Sequence[Path], dest: Path | None) -> list[Path]:
    """Copy ``files`` into ``dest`` (see :func:`publish_file`)."""
    if dest is None:
        return []
    return [publish_file(f, dest / f.name) for f in files]


def write_table(rows: Sequence[dict], out: Path, name: str) -> tuple[Path, Path]:
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    _io.write_text(csv_path, collect.to_csv(rows))
    _io.write_text(md_path, collect.to_markdown(rows))
    return csv_path, md_path


def write_metrics(out: Path, data: dict, seed: int | None = None, params: Any = None) -> Path:
    return _io.write_json(out / "metrics.json", {**data, **runinfo.describe(params=params, seed=seed)})


def lpips(a: np.ndarray, b: np.ndarray, net: str) -> float:
    """LPIPS distance of two (H, W, 3) images."""
    from nstyle.lpips import lpips_distance

    return float(np.asarray(lpips_distance(np.asarray(a)[None], np.asarray(b)[None], net=net))[0])


def settings_of(cfg: Any, keys: Sequence[str]) -> dict:
    """``{"size": 256, "optim": "lbfgs×500", ...}`` for a figure footer."""
    out = {k: getattr(cfg, k) for k in keys}
    out["optim"] = f"{cfg.optim.name.value}×{cfg.optim.steps}" + (f" lr={cfg.optim.lr}" if cfg.optim.lr else "")
    return out


def dump_config(cfg) -> dict:
    """The experiment's config as plain JSON types."""
    return _io.to_jsonable(cfg)


@dataclasses.dataclass
class Reconstruction:
    """One optimised image and what the tables need of it (a subset of optimize.Result)."""

    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    history: dict
    final: dict
    evals: int
    iterations: int
    wall_s: float
    compile_s: float


def cached(out: Path, tag: str, fingerprint: dict, resume: bool, fn) -> Reconstruction:
    """Run ``fn() -> optimize.Result`` or, with ``resume``, reuse ``out/<tag>.npz`` saved by an
    earlier run of the same settings (so an interrupted long run continues where it stopped).
    """
    path = out / f"{tag}.npz"
    fp = json.dumps(fingerprint, sort_keys=True, default=str)
    if resume and path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) == fp:
                meta = json.loads(str(z["meta"]))
                return Reconstruction(image=z["image"], **meta)
    r = fn()
    rec = Reconstruction(
        image=r.image,
        history=_io.to_jsonable(r.history),
        final=_io.to_jsonable(r.final),
        evals=int(r.evals),
        iterations=int(r.iterations),
        wall_s=float(r.wall_s),
        compile_s=float(r.compile_s),
    )
    meta = {k: getattr(rec, k) for k in ("history", "final", "evals", "iterations", "wall_s", "compile_s")}
    _io.save_npz(path, {"image": rec.image, "fingerprint": np.asarray(fp), "meta": np.asarray(json.dumps(meta))})
    return rec
