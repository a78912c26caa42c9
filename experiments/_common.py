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
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from nstyle import collect


@dataclasses.dataclass
class OptimSchema:
    """Mirrors :class:`nstyle.optimize.OptimConfig` (validated there)."""

    name: str = "lbfgs"
    steps: int = 500
    lr: Optional[float] = None
    memory: int = 10
    linesearch: str = "none"
    max_linesearch_steps: int = 20
    # Clip to [0, 1] after every step. From white noise with nothing but one layer's features
    # (or Gram matrices) to match, free pixels wander far outside [0, 1] and the final clip
    # undoes much of the fit: at 128 px, 300 L-BFGS steps (memory 20), projection gave
    # conv1_2 20.7 dB vs 19.4 dB PSNR, and a conv1_1 style loss of 0.25 vs 2.0e4 after the
    # clip. The paper's free pixels: optim.project=false.
    project: bool = True

    def build(self):
        from nstyle.optimize import OptimConfig

        return OptimConfig(**dataclasses.asdict(self))


@dataclasses.dataclass
class ReconstructionSchema:
    """Settings shared by both reconstruction experiments (each adds its own keys)."""

    image: str = "builtin:chelsea"  # the image whose content / style is reconstructed
    size: int = 256  # longest side in pixels
    seed: int = 0  # the white-noise start
    network: str = "vgg19"
    pooling: str = "avg"  # Gatys et al.: average pooling gives better reconstructions
    init: str = "noise"  # the paper starts from white noise
    layers: List[str] = dataclasses.field(default_factory=list)
    optim: OptimSchema = dataclasses.field(default_factory=OptimSchema)
    lpips_net: str = "vgg16"  # the independent perceptual distance: "vgg16" or "alexnet"
    publish: Optional[str] = None  # copy table + figure here (e.g. experiments/results)
    overwrite: bool = False  # allow publish to replace existing files
    resume: bool = False  # with hydra.run.dir=<an earlier run>: reuse its finished layers


class ExperimentError(ValueError):
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
    try:
        cfg.optim.build()
    except ValueError as e:
        raise ExperimentError(f"optim: {e}") from None


def check_publish(cfg: ReconstructionSchema, names: Sequence[str]) -> Path | None:
    """Fail before any work if ``publish`` would overwrite results without ``overwrite=true``."""
    if cfg.publish is None:
        return None
    dest = Path(cfg.publish)
    existing = [n for n in names if (dest / n).exists()]
    if existing and not cfg.overwrite:
        raise ExperimentError(f"publish={dest} already holds {', '.join(existing)}; "
                              "add overwrite=true to replace them, or publish elsewhere")
    return dest


def setup(cfg: ReconstructionSchema, name: str, out: Path, saved_as: str):
    """The checks and inputs every reconstruction starts with, before any optimisation:
    validate ``cfg``, refuse a ``publish`` that would overwrite, load the image at ``cfg.size``
    (checked against the deepest layer) and the weights, and save the image as ``saved_as``.

    Returns ``(publish dest or None, image (H, W, 3), params)``.
    """
    from nstyle import images, vgg, weights

    check_common(cfg)
    dest = check_publish(cfg, [f"{name}.csv", f"{name}.md", f"{name}.png"])
    image = images.load_image(cfg.image, cfg.size)  # (H, W, 3)
    images.check_size(image.shape, vgg.min_size(cfg.layers, cfg.network), cfg.image)
    params = weights.load(cfg.network)
    from nstyle import _xla

    _xla.persistent_cache()  # a rerun (or resume) skips most compilation
    out.mkdir(parents=True, exist_ok=True)
    images.save_image(out / saved_as, image)
    return dest, image, params


PUBLISH_MAX_WIDTH = 1400  # px: committed figures stay small (results/ < 2 MB in all)


def publish_file(src: Path, target: Path) -> Path:
    """Copy ``src`` to ``target`` atomically; PNG figures are re-encoded with a 256-colour
    palette (and narrowed to ``PUBLISH_MAX_WIDTH``) so committed results stay small."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    try:
        if src.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(src) as im:
                im = im.convert("RGB")
                if im.width > PUBLISH_MAX_WIDTH:
                    h = round(im.height * PUBLISH_MAX_WIDTH / im.width)
                    im = im.resize((PUBLISH_MAX_WIDTH, h), Image.Resampling.LANCZOS)
                im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                    tmp, format="PNG", optimize=True)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def publish(files: Sequence[Path], dest: Path | None) -> list[Path]:
    """Copy ``files`` into ``dest`` (see :func:`publish_file`)."""
    if dest is None:
        return []
    return [publish_file(f, dest / f.name) for f in files]


def write_table(rows: Sequence[dict], out: Path, name: str) -> tuple[Path, Path]:
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    collect.write_text_atomic(csv_path, collect.to_csv(rows))
    collect.write_text_atomic(md_path, collect.to_markdown(rows))
    return csv_path, md_path


def write_metrics(out: Path, data: dict) -> Path:
    import jax

    info = {"device": str(jax.devices()[0]), "jax": jax.__version__, "python": platform.python_version(),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = out / "metrics.json"
    collect._write_json_atomic(path, {**data, "environment": info})
    return path


class Lpips:
    """LPIPS distance if :mod:`nstyle.lpips` is available, else None (the column stays empty)."""

    def __init__(self, net: str):
        self.net = net
        try:
            from nstyle.lpips import lpips_distance

            self._fn = lpips_distance
        except ImportError:
            self._fn = None

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float | None:
        if self._fn is None:
            return None
        return float(np.asarray(self._fn(np.asarray(a)[None], np.asarray(b)[None], net=self.net))[0])


def settings_of(cfg: Any, keys: Sequence[str]) -> dict:
    """``{"size": 256, "optim": "lbfgs×500", ...}`` for a figure footer."""
    out = {}
    for k in keys:
        v = getattr(cfg, k)
        out[k] = v
    out["optim"] = f"{cfg.optim.name}×{cfg.optim.steps}" + (f" lr={cfg.optim.lr}" if cfg.optim.lr else "")
    return out


def to_jsonable(x):
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def dump_config(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def cli_errors(fn):
    """Run a Hydra task; user mistakes print one line and exit 2 instead of a traceback."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from nstyle.images import ImageError

        try:
            return fn(*a, **kw)
        except (ExperimentError, ImageError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


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
    rec = Reconstruction(image=r.image, history=to_jsonable(r.history), final=to_jsonable(r.final), evals=int(r.evals),
                         iterations=int(r.iterations), wall_s=float(r.wall_s), compile_s=float(r.compile_s))
    meta = {k: getattr(rec, k) for k in ("history", "final", "evals", "iterations", "wall_s", "compile_s")}
    tmp = out / f".{tag}.tmp.npz"
    np.savez(tmp, image=rec.image, fingerprint=np.asarray(fp), meta=np.asarray(json.dumps(meta)))
    os.replace(tmp, path)
    return rec
