"""A complete Gatys et al. stylisation from image files: colour handling, style scale, coarse to fine.

    s = TransferSettings(loss=losses.PerceptualLoss(), optim=optimize.OptimConfig(steps=200),
                         content="photo.jpg", styles=("painting.jpg",), sizes=(256, 512), stage_steps=(200, 100))
    inputs = load_inputs(s)                       # the images at full resolution
    check_sizes(s, inputs, memory.available_bytes())
    out = run(s, inputs, weights.load(s.arch))     # out.image (H, W, 3) in [0, 1]; out.stages

:func:`nstyle.optimize.stylize` optimises one image at one size; this module is everything
around it that ``nstyle-stylize`` and batched sweeps share: which images at which size each
stage sees (the style image's longest side is ``style_scale`` × the output's), colour
preservation (Gatys et al. 2017: histogram matching of the style, or luminance-only transfer),
and the coarse-to-fine schedule (each stage starts from the previous result, upsampled).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from nstyle import color, images, losses, memory, optimize, vgg
from nstyle._errors import UserError

COLOR_MODES = ("off", "luminance", "histogram")


@dataclasses.dataclass(frozen=True)
class TransferSettings:
    """A validated stylisation, in the library's own types (``nstyle.cli.schema`` builds one)."""

    loss: losses.PerceptualLoss = losses.PerceptualLoss()
    optim: optimize.OptimConfig = optimize.OptimConfig()
    arch: str = "vgg19"
    content: str | None = "builtin:chelsea"  # a path or builtin:NAME; None for texture synthesis
    styles: tuple[str, ...] = ("builtin:ihc",)
    style_blend: tuple[float, ...] | None = None  # one weight per style image; None: equal
    style_scale: float = 1.0  # the style image's longest side relative to the output's
    sizes: tuple[int, ...] = (256,)  # longest side of each stage; the last is the output's
    stage_steps: tuple[int, ...] = (200,)  # iterations of each stage
    init: str = "content"  # content | noise | style | a path to an image
    preserve_color: str = "off"  # off | luminance | histogram
    seed: int = 0


MemoryBudgetError = memory.MemoryBudgetError


@dataclasses.dataclass
class Inputs:
    """The images of a run at full resolution (before per-stage resizing)."""

    content: np.ndarray | None  # (H, W, 3) or None
    styles: list[np.ndarray]  # [(h, w, 3)]
    init: np.ndarray | None  # an init image given as a file, else None


def load_inputs(s: TransferSettings) -> Inputs:
    """Read every image the settings name (:class:`nstyle.images.ImageError` for a bad one)."""
    content = images.load_image(s.content) if s.content is not None else None
    styles = [images.load_image(p) for p in s.styles]
    init = None
    if s.init not in optimize.INITS:
        init = images.load_image(s.init)  # a file: resized to the output at each stage
    elif s.init == "style" and not styles:
        raise UserError("init=style needs a style image (beta > 0 and style=PATH)")
    return Inputs(content=content, styles=styles, init=init)


def stage_shape(inputs: Inputs, size: int) -> tuple[int, int]:
    """(H, W) of the output at longest side ``size``: the content's aspect, else the first style's."""
    ref = inputs.content if inputs.content is not None else (inputs.styles[0] if inputs.styles else inputs.init)
    h, w = (1, 1) if ref is None else ref.shape[:2]
    k = size / max(h, w)
    return max(1, round(h * k)), max(1, round(w * k))


def style_shape(s: TransferSettings, style: np.ndarray, size: int) -> tuple[int, int]:
    """(h, w) a style image is seen at in a stage of longest side ``size``."""
    return images.longest_shape(style.shape[:2], max(1, round(s.style_scale * size)))


def stage_images(s: TransferSettings, inputs: Inputs, size: int):
    """Content, styles (and init file) resized for one stage, with colour preservation applied.

    Returns ``(content, styles, init_file, shape)``; in luminance mode the images are the
    grey (Y, Y, Y) versions the optimisation works on.
    """
    shape = stage_shape(inputs, size)
    content = images.resize(inputs.content, shape) if inputs.content is not None else None
    # the style's longest side is style_scale × the output's, so its features have the same scale
    styles = [images.resize(x, style_shape(s, x, size)) for x in inputs.styles]
    if s.preserve_color == "histogram":
        styles = [color.match_color_histogram(x, content) for x in styles]
    elif s.preserve_color == "luminance":
        pairs = [color.luminance_only(content, x) for x in styles]
        styles = [st for _, st in pairs]
        content = pairs[0][0] if pairs else color.luminance_only(content, content)[0]
    init = images.resize(inputs.init, shape) if inputs.init is not None else None
    return content, styles, init, shape


def finish(s: TransferSettings, inputs: Inputs, x: np.ndarray) -> np.ndarray:
    """The optimised image -> the image to save (luminance mode puts the content's colour back)."""
    if s.preserve_color == "luminance":
        return color.recombine_luminance(x, inputs.content)
    return x


def needed_bytes(s: TransferSettings, inputs: Inputs, batch: int = 1) -> int:
    """Estimated peak activation memory of the largest stage (output and style images)."""
    size = s.sizes[-1]
    h, w = stage_shape(inputs, size)
    need = memory.vgg_activation_bytes(h, w, s.loss.layers, s.arch, batch)
    for x in inputs.styles:  # each style image goes through the network too (forward only, but be safe)
        need = max(need, memory.vgg_activation_bytes(*style_shape(s, x, size), s.loss.layers, s.arch))
    return need


def check_sizes(s: TransferSettings, inputs: Inputs, budget_bytes: int, batch: int = 1) -> None:
    """Every stage's output and style images are big enough for the deepest layer, and the
    largest stage fits in ``budget_bytes``; :class:`ImageError` / :class:`MemoryBudgetError` otherwise."""
    min_side = vgg.min_size(s.loss.layers, s.arch)
    for size in s.sizes:
        shape = stage_shape(inputs, size)
        images.check_size(shape, min_side, name=f"output at size={size} ({shape[1]}×{shape[0]})")
        for path, x in zip(s.styles, inputs.styles):
            images.check_size(
                style_shape(s, x, size), min_side, name=f"style {path} at style_scale={s.style_scale:g}, size={size}"
            )
    need = needed_bytes(s, inputs, batch)
    if need > budget_bytes:
        h, w = stage_shape(inputs, s.sizes[-1])
        fit = memory.max_side_that_fits(budget_bytes, w / h, s.loss.layers, s.arch, batch)
        if s.styles and s.style_scale > 1:
            fit = int(fit / s.style_scale)
        hint = f"size={fit} would fit" if fit >= min_side else "no useful size fits"
        raise MemoryBudgetError(
            f"size={s.sizes[-1]}: the VGG activations need about {need / 2**30:.1f} GiB but "
            f"only {budget_bytes / 2**30:.1f} GiB is available; {hint} (or raise max_memory_gb)"
        )


@dataclasses.dataclass
class TransferResult:
    """What :func:`run` returns: the image to save and what each stage did."""

    image: np.ndarray  # (H, W, 3) float32 in [0, 1], colour restored
    stages: list[dict]  # per stage: size, shape, iterations, evals, restarts, resets, compile_s, wall_s, final
    history: dict[str, list]  # {term: values over all stages' iterations}
    stopped_reason: str  # "steps" | "nonfinite" | "callback" | "interrupted"

    @property
    def final(self) -> dict:
        return self.stages[-1]["final"]

    @property
    def iterations(self) -> int:
        return sum(st["iterations"] for st in self.stages)

    @property
    def evals(self) -> int:
        return sum(st["evals"] for st in self.stages)


def run(
    s: TransferSettings, inputs: Inputs, params: vgg.VGGParams, callback: Callable[[int, Any, dict], Any] | None = None
) -> TransferResult:
    """Every stage of ``s`` in turn, each from the previous result upsampled.

    ``callback(i, state, metrics)`` is :func:`nstyle.optimize.stylize`'s, called across stages.
    """
    params = vgg.with_backward_kernels(params, s.loss.layers)  # once, not again per stage
    key = jax.random.key(s.seed)
    stages: list[dict] = []
    history: dict[str, list] = {}
    image, reason = None, "steps"
    for k, (size, steps) in enumerate(zip(s.sizes, s.stage_steps)):
        content, styles, init_file, shape = stage_images(s, inputs, size)
        if image is not None:
            init = images.resize(image, shape)  # coarse to fine: the previous result, upsampled
        else:
            init = init_file if init_file is not None else s.init
        r = optimize.stylize(
            params,
            s.loss,
            content=content,
            styles=styles,
            style_blend=s.style_blend,
            shape=shape,
            init=init,
            key=jax.random.fold_in(key, k),
            optim=dataclasses.replace(s.optim, steps=steps),
            callback=callback,
        )
        image = r.image
        for name, v in r.history.items():
            history.setdefault(name, []).extend(v)
        stages.append(
            {
                "size": size,
                "shape": list(shape),
                "iterations": r.iterations,
                "evals": r.evals,
                "restarts": r.restarts,
                "lbfgs_memory_resets": r.resets,
                "compile_s": r.compile_s,
                "wall_s": r.wall_s,
                "stopped_reason": r.stopped_reason,
                "final": r.final,
            }
        )
        if r.stopped_reason != "steps":
            reason = r.stopped_reason
            break
    return TransferResult(image=finish(s, inputs, image), stages=stages, history=history, stopped_reason=reason)
