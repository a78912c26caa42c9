"""Stylise images with a trained FastNet: one forward pass per image, any size.

    nstyle-apply model=outputs/train/.../model.npz input=photo.jpg output=photo_starry.png
    nstyle-apply model=model.npz input=photos/ output=stylised/        # a whole folder
    nstyle-apply model=model.npz input=big.jpg output=out.png max_side=1024
    nstyle-apply model=three_styles.npz input=photo.jpg output=mix.png style_weights=[0.5,0.5,0]
    nstyle-apply model=model.npz input=photo.jpg output=out.png preserve_color=luminance

Each result is written atomically, next to a metadata file (``<output>.json`` for one
image, ``<output>/nstyle-apply.json`` for a folder) naming the model file, its checksum and
the checkpoint it was exported from. Existing outputs are never overwritten unless
``overwrite=true``. Unreadable images in a folder are skipped, counted and listed.

Options (key=value): ``model``, ``input``, ``output`` (required); ``max_side`` (resize the
longest side first; default: the image's own size); ``overwrite`` (default false);
``tile`` (``auto``: untiled when the image fits in memory, else tile by tile with
:func:`nstyle.fastnet.stylize_tiled`; ``off``: untiled only; or a tile side in px);
``max_memory_gb`` (the budget; default: the memory available now); ``exact_stats``
(tiled runs: refine the instance-norm statistics on the full-size image until they are the
untiled ones, one extra tiled pass per norm; default false: from the largest copy that fits).

Each image's memory is estimated from its header before it is decoded; one that fits in no
way is refused (a folder skips it) with the ``max_side`` that would fit.
``style_weights`` (a model of several styles: one weight per style, normalised to sum 1; a
one-hot list picks one style, a mix interpolates; required for such a model);
``preserve_color`` (``off``, the default; ``luminance``: the result's luminance with the
photo's colour, as in the optimisation's luminance-only transfer; ``histogram``: the result
recoloured to the photo's colour mean and covariance, see :mod:`nstyle.color`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from nstyle import _io, _rundir, _xla, color, fastnet, images, losses, memory, transfer
from nstyle._errors import UserError
from nstyle.cli.errors import command
from nstyle.data import IMAGE_SUFFIXES

PROG = "nstyle-apply"
USAGE = (
    "usage: nstyle-apply model=FILE input=PATH output=PATH [max_side=N] [overwrite=true] "
    "[tile=auto|off|N] [max_memory_gb=X] [exact_stats=true] [style_weights=[w1,w2,...]] "
    "[preserve_color=off|luminance|histogram]"
)
KEYS = (
    "model", "input", "output", "max_side", "overwrite", "tile", "max_memory_gb", "exact_stats", "style_weights",
    "preserve_color",
)  # fmt: skip
FLAGS = ("true", "false", "1", "0", "yes", "no")


def parse(argv: Sequence[str]) -> dict:
    opts: dict = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            raise UserError(USAGE)
        key, sep, value = arg.partition("=")
        if not sep or key not in KEYS:
            raise UserError(f"unknown argument '{arg}'; {USAGE}")
        opts[key] = value
    for key in ("model", "input", "output"):
        if not opts.get(key):
            raise UserError(f"missing {key}=...; {USAGE}")
    if "max_side" in opts:
        try:
            opts["max_side"] = int(opts["max_side"])
        except ValueError:
            raise UserError(f"max_side must be a whole number of pixels, got '{opts['max_side']}'") from None
        if opts["max_side"] < 1:
            raise UserError(f"max_side must be >= 1, got {opts['max_side']}")
    for key in ("overwrite", "exact_stats"):
        flag = str(opts.get(key, "false")).lower()
        if flag not in FLAGS:
            raise UserError(f"{key} must be true or false, got '{opts[key]}'")
        opts[key] = flag in ("true", "1", "yes")
    tile = str(opts.get("tile", "auto")).lower()
    if tile not in ("auto", "off"):
        try:
            tile = int(tile)
        except ValueError:
            raise UserError(f"tile must be auto, off or a side in pixels, got '{opts['tile']}'") from None
        if tile < 16:
            raise UserError(f"tile must be at least 16 px, got {tile}")
    opts["tile"] = None if tile == "off" else tile
    if "max_memory_gb" in opts:
        try:
            opts["max_memory_gb"] = float(opts["max_memory_gb"])
        except ValueError:
            raise UserError(f"max_memory_gb must be a number, got '{opts['max_memory_gb']}'") from None
        if not opts["max_memory_gb"] > 0:
            raise UserError(f"max_memory_gb must be > 0, got {opts['max_memory_gb']}")
    if "style_weights" in opts:
        text = opts["style_weights"].strip().removeprefix("[").removesuffix("]")
        try:
            opts["style_weights"] = [float(v) for v in text.split(",")]
        except ValueError:
            raise UserError(
                f"style_weights must be a list of numbers such as [0.5,0.5,0], got '{opts['style_weights']}'"
            ) from None
    opts["preserve_color"] = opts.get("preserve_color", "off")
    if opts["preserve_color"] not in transfer.COLOR_MODES:
        raise UserError(
            f"preserve_color must be one of {', '.join(transfer.COLOR_MODES)}, got '{opts['preserve_color']}'"
        )
    return opts


class Styliser:
    """A loaded model; ``__call__`` maps (H, W, 3) [0, 1] to (H, W, 3), compiled once per image shape
    (per tile shape when tiled).

    ``style_weights``: one weight per style of a multi-style model (normalised to sum 1);
    ``preserve_color``: ``off``, ``luminance`` or ``histogram``, applied to each result.
    """

    def __init__(self, model_path: str | os.PathLike, style_weights=None, preserve_color: str = "off"):
        self.path = Path(model_path)
        self.cfg, self.params, self.meta = fastnet.load_model(self.path)
        self.sha256 = _io.sha256_file(self.path)
        self.preserve_color = preserve_color
        self.style_weights = self._check_weights(style_weights)
        self._run = _xla.jit(lambda p, x, w: fastnet.stylize(self.cfg, p, x, w))

    def _check_weights(self, weights) -> np.ndarray | None:
        styles = self.meta.get("styles") or [f"style {k}" for k in range(self.cfg.styles)]
        if self.cfg.styles == 1:
            if weights is not None and len(weights) != 1:
                raise UserError(f"{self.path} holds one style; drop style_weights (got {len(weights)} weights)")
            return None
        if weights is None:
            raise UserError(
                f"{self.path} holds {self.cfg.styles} styles ({', '.join(map(str, styles))}); "
                f"choose with style_weights=[...], one weight each, e.g. [1{',0' * (self.cfg.styles - 1)}]"
            )
        if len(weights) != self.cfg.styles:
            raise UserError(
                f"style_weights has {len(weights)} weights but {self.path} holds {self.cfg.styles} styles "
                f"({', '.join(map(str, styles))}); give one weight per style"
            )
        try:
            return losses.blend_weights(weights, self.cfg.styles)
        except ValueError as e:
            raise UserError(f"style_weights: {e}") from None

    def __call__(self, image: np.ndarray, plan: fastnet.InferencePlan | None = None, exact: bool = False) -> np.ndarray:
        if plan is not None and plan.tile is not None:
            result = fastnet.stylize_tiled(
                self.cfg, self.params, image, plan.tile, plan.stats_side, exact, self.style_weights
            )
        else:
            out = self._run(self.params, image[None], self.style_weights)  # (1, H, W, 3)
            result = np.asarray(jax.device_get(out))[0]
        if self.preserve_color == "luminance":
            return color.recombine_luminance(result, image)
        if self.preserve_color == "histogram":
            return color.match_color_histogram(result, image)
        return result

    def plan(self, path: Path, opts: dict, budget: int) -> fastnet.InferencePlan:
        """How ``path`` is stylised in ``budget`` bytes, from its header (nothing decoded yet);
        :class:`UserError` naming a ``max_side`` that would fit when it cannot be."""
        h0, w0 = images.image_size(path)
        h, w = images.longest_shape((h0, w0), opts["max_side"]) if opts.get("max_side") else (h0, w0)
        source = 16 * h0 * w0 if (h, w) != (h0, w0) else 0  # the decoded original beside the resized copy
        plan = fastnet.plan_inference(self.cfg, h, w, budget, opts["tile"], source)
        if plan is not None:
            return plan

        def fits(side: int) -> bool:
            sh, sw = images.longest_shape((h0, w0), side)
            src = 16 * h0 * w0 if (sh, sw) != (h0, w0) else 0
            return fastnet.plan_inference(self.cfg, sh, sw, budget, opts["tile"], src) is not None

        lo, hi = 0, max(h, w)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        how = "untiled (tile=off)" if opts["tile"] is None else "even tile by tile"
        hint = f"max_side={lo} would fit" if lo >= 16 else "no useful size fits"
        raise UserError(
            f"{path}: stylising it at {w}×{h} needs more than the {budget / 2**30:.1f} GiB available {how}; "
            f"{hint}" + (", or tile=auto" if opts["tile"] is None else "")
        )

    def describe(self) -> dict:
        return {
            "model": str(self.path.resolve()),
            "model_sha256": self.sha256,
            "checkpoint": self.meta.get("checkpoint"),
            "trained": self.meta,
            "style_weights": None if self.style_weights is None else [float(w) for w in self.style_weights],
            "preserve_color": self.preserve_color,
        }


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def check_output_writable(folder: Path) -> None:
    """An unwritable output is one line before the model is loaded, not an error after the
    work: a file is created (and removed) in ``folder``, or in its nearest existing parent."""
    existing = next(p for p in [folder.absolute(), *folder.absolute().parents] if p.exists())
    try:
        _rundir.check_writable(existing)
    except UserError:
        raise UserError(f"cannot write to {existing}; choose another output or fix its permissions") from None


def run(opts: dict, log=print) -> dict:
    """Do what the command line asks; returns the metadata written. Raises UserError on bad input."""
    src, dst = Path(opts["input"]), Path(opts["output"])
    if not src.exists():
        raise UserError(f"input '{src}' does not exist; give an image file or a folder of images")
    if src.is_dir():
        todo = _list_images(src)
        if not todo:
            raise UserError(f"input folder '{src}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        if dst.exists() and (not dst.is_dir() or (any(dst.iterdir()) and not opts["overwrite"])):
            raise UserError(
                f"output '{dst}' already exists and is not an empty folder; choose a new folder or add overwrite=true"
            )
        pairs = [(p, dst / p.relative_to(src)) for p in todo]
        meta_path = dst / "nstyle-apply.json"
    else:
        if dst.exists() and not opts["overwrite"]:
            raise UserError(f"output '{dst}' already exists; choose another name or add overwrite=true")
        if dst.is_dir():
            raise UserError(f"output '{dst}' is a folder; for one input image give an output file name such as out.png")
        images.format_for(dst)
        pairs = [(src, dst)]
        meta_path = dst.with_name(dst.name + ".json")
    check_output_writable(dst if src.is_dir() else dst.parent)
    model = Styliser(opts["model"], opts.get("style_weights"), opts.get("preserve_color", "off"))
    budget = int(opts["max_memory_gb"] * 2**30) if opts.get("max_memory_gb") else memory.available_bytes()

    done, skipped = [], []
    for inp, out in pairs:
        try:
            plan = model.plan(inp, opts, budget)  # before anything of the image is decoded
            img = images.load_image(inp, max_side=opts.get("max_side"))  # (H, W, 3)
        except UserError as e:  # an unreadable image (ImageError) or one that fits in no way
            if len(pairs) == 1:
                raise
            skipped.append({"input": str(inp), "error": str(e)})
            log(f"skipped {inp}: {e}")
            continue
        t = time.perf_counter()
        result = model(img, plan, opts["exact_stats"])
        seconds = time.perf_counter() - t  # includes compilation for a new image (or tile) shape
        if not np.all(np.isfinite(result)):
            raise UserError(f"{model.path} turned {inp} into NaN or infinity; the model is damaged: train it again")
        images.save_image(out, result)
        done.append(
            {
                "input": str(inp),
                "output": str(out),
                "size": [int(img.shape[0]), int(img.shape[1])],
                "seconds": round(seconds, 4),
                "tile": plan.tile,
                "stats_side": plan.stats_side if plan.tile is not None else None,
                "memory_estimate_bytes": plan.bytes,
            }
        )
        how = f", tiles of {plan.tile} px" if plan.tile is not None else ""
        log(f"{inp} -> {out} ({img.shape[1]}x{img.shape[0]}{how}, {seconds:.2f} s)")
    if not done:
        raise UserError(f"no image in '{src}' could be read ({len(skipped)} skipped); check the files")
    meta = {
        **model.describe(),
        "input": str(src),
        "output": str(dst),
        "images": done,
        "skipped": skipped,
        "max_side": opts.get("max_side"),
        "tile": opts["tile"],
        "exact_stats": opts["exact_stats"],
        "jax": jax.__version__,
        "platform": jax.devices()[0].platform,
    }
    _io.write_json(meta_path, meta)
    return meta


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(sys.argv[1:] if argv is None else argv)
    _xla.device_defaults()
    _xla.persistent_cache()
    meta = run(opts)
    n = len(meta["images"])
    print(f"{PROG}: wrote {n} image{'s' * (n != 1)}" + (f", skipped {len(meta['skipped'])}" if meta["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
