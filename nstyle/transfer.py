"""A complete Gatys et al. stylisation from image files: colour handling, style scale, coarse to fine.

    s = TransferSettings(loss=losses.PerceptualLoss(), optim=optimize.OptimConfig(steps=200),
                         content="photo.jpg", styles=("painting.jpg",), sizes=(256, 512), stage_steps=(200, 100))
    inputs = load_inputs(s)                       # the images at full resolution
    plans = check_sizes(s, inputs, memory.available_bytes())   # each stage's memory mode, or a refusal
    out = run(s, inputs, weights.load(s.arch), plans=plans)      # out.image (H, W, 3) in [0, 1]; out.stages

:func:`nstyle.optimize.stylize` optimises one image at one size; this module is everything
around it that ``nstyle-stylize`` and batched sweeps share: which images at which size each
stage sees (the style image's longest side is ``style_scale`` × the output's), colour
preservation (Gatys et al. 2017: histogram matching of the style, or luminance-only transfer),
spatial control (Gatys et al. 2017: one mask per style image, aligned with the content, each
resized to every stage), the coarse-to-fine schedule (each stage starts from the previous
result, upsampled; Adam's moments are carried over, resized, L-BFGS restarts;
:func:`multiscale_sizes` gives the √2 schedule), and each stage's memory mode (the fastest that
fits: :func:`nstyle.memory.choose`).
"""

from __future__ import annotations

import dataclasses
import math
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
    masks: tuple[str, ...] | None = None  # spatial control: one mask per style image, aligned with the content
    style_masks: tuple[str | None, ...] | None = None  # per style image, the region to take its style from
    # how the VGG passes keep their activations (nstyle.vgg.MEMORY_MODES); auto: per stage the
    # fastest mode whose estimate fits the memory available (nstyle.memory.choose)
    memory_mode: str = "auto"

    def __post_init__(self):
        if self.memory_mode != "auto" and self.memory_mode not in vgg.MEMORY_MODES:
            raise ValueError(
                f"unknown memory mode '{self.memory_mode}' (expected auto or one of {', '.join(vgg.MEMORY_MODES)})"
            )


MemoryBudgetError = memory.MemoryBudgetError


@dataclasses.dataclass
class Inputs:
    """The images of a run at full resolution (before per-stage resizing)."""

    content: np.ndarray | None  # (H, W, 3) or None
    styles: list[np.ndarray]  # [(h, w, 3)]
    init: np.ndarray | None  # an init image given as a file, else None
    masks: np.ndarray | None = None  # (K, H_m, W_m) in [0, 1], one per style image
    style_masks: list[np.ndarray | None] | None = None  # per style image, (h_k, w_k) in [0, 1] or None


def load_inputs(s: TransferSettings) -> Inputs:
    """Read every image the settings name (:class:`nstyle.images.ImageError` for a bad one)."""
    content = images.load_image(s.content) if s.content is not None else None
    styles = [images.load_image(p) for p in s.styles]
    init = None
    if s.init not in optimize.INITS:
        init = images.load_image(s.init)  # a file: resized to the output at each stage
    elif s.init == "style" and not styles:
        raise UserError("init=style needs a style image (beta > 0 and style=PATH)")
    masks = None
    if s.masks is not None:
        if len(s.masks) != len(styles):
            raise UserError(f"masks: {len(styles)} style images need {len(styles)} masks, got {len(s.masks)}")
        if content is None:
            raise UserError("masks are aligned with the content image; give content=PATH")
        loaded = [load_mask(p, content.shape[:2], "content") for p in s.masks]
        h, w = max(m.shape[0] for m in loaded), max(m.shape[1] for m in loaded)
        masks = np.stack([images.resize(m[..., None], (h, w))[..., 0] for m in loaded])  # (K, H_m, W_m)
    style_masks = None
    if s.style_masks is not None:
        if len(s.style_masks) != len(styles):
            raise UserError(
                f"style_masks: {len(styles)} style images need {len(styles)} entries, got {len(s.style_masks)}"
            )
        style_masks = [
            None if p is None else load_mask(p, x.shape[:2], f"style {spec}")
            for p, x, spec in zip(s.style_masks, styles, s.styles)
        ]
    return Inputs(content=content, styles=styles, init=init, masks=masks, style_masks=style_masks)


MASK_ASPECT_TOLERANCE = 0.02  # a mask may differ this much in aspect ratio from its image (rounding of sizes)


def load_mask(spec: str, image_hw: tuple[int, int], image_name: str) -> np.ndarray:
    """A mask file as (h, w) float32 in [0, 1] (the mean of its colour channels; any size with
    the aspect ratio of the image it belongs to, which is checked)."""
    m = images.load_image(spec).mean(axis=-1)  # (h, w)
    aspect, want = m.shape[1] / m.shape[0], image_hw[1] / image_hw[0]
    if abs(aspect / want - 1) > MASK_ASPECT_TOLERANCE:
        raise UserError(
            f"mask {spec} is {m.shape[1]}×{m.shape[0]} px but the {image_name} image is {image_hw[1]}×{image_hw[0]}: "
            f"a mask must have its image's aspect ratio (any size)"
        )
    if not np.any(m > 0):
        raise UserError(f"mask {spec} is black everywhere: its style would apply nowhere")
    return m.astype(np.float32)


def multiscale_sizes(size: int, start: int = 128, factor: float = math.sqrt(2)) -> tuple[int, ...]:
    """Stage sizes that grow by ``factor`` up to ``size``, the first about ``start`` px:
    ``size / factor^k`` for k = K … 0 with K = round(log_factor(size / start)) (≥ 0).
    256 -> (128, 181, 256); 512 -> (128, 181, 256, 362, 512); 160 -> (113, 160); 64 -> (64,)."""
    k = max(0, round(math.log(size / start) / math.log(factor)))
    return tuple(max(1, round(size / factor**i)) for i in range(k, -1, -1))


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


def stage_masks(s: TransferSettings, inputs: Inputs, size: int):
    """The masks for one stage: ``(masks (K, H, W) at the output's shape or None, style masks
    [(h_k, w_k) | None] at each style image's shape or None)``."""
    masks = None
    if inputs.masks is not None:
        shape = stage_shape(inputs, size)
        masks = np.stack([images.resize(m[..., None], shape)[..., 0] for m in inputs.masks])
    style_masks = None
    if inputs.style_masks is not None:
        style_masks = [
            None if m is None else images.resize(m[..., None], style_shape(s, x, size))[..., 0]
            for m, x in zip(inputs.style_masks, inputs.styles)
        ]
    return masks, style_masks


def finish(s: TransferSettings, inputs: Inputs, x: np.ndarray) -> np.ndarray:
    """The optimised image -> the image to save (luminance mode puts the content's colour back)."""
    if s.preserve_color == "luminance":
        return color.recombine_luminance(x, inputs.content)
    return x


def _estimate_kwargs(s: TransferSettings) -> dict:
    return {
        "optimizer": s.optim.name,
        "history": s.optim.memory,
        "content_layers": s.loss.content_layers if s.loss.uses_content else (),
    }


def needed_bytes(s: TransferSettings, inputs: Inputs, batch: int = 1) -> int:
    """Estimated peak memory of the largest stage in the fastest mode ``s`` allows (plain under
    ``auto``), style images' forward passes included: what a batch of ``batch`` needs without a
    memory remedy (:func:`plan_stages` picks one when it must)."""
    mode = "plain" if s.memory_mode == "auto" else s.memory_mode
    size = s.sizes[-1]
    h, w = stage_shape(inputs, size)
    need = memory.estimate(h, w, s.loss.layers, s.arch, batch, mode, **_estimate_kwargs(s))
    for x in inputs.styles:
        need = max(need, memory.forward_bytes(*style_shape(s, x, size), s.loss.layers, s.arch, mode))
    return need


def plan_stages(s: TransferSettings, inputs: Inputs, budget_bytes: int, batch: int = 1) -> list[memory.Plan]:
    """Per stage, the memory mode it runs in (:func:`nstyle.memory.choose` with ``s.memory_mode``)
    and its estimate; :class:`MemoryBudgetError`, naming a size that would fit, when a stage
    fits in no mode allowed."""
    tiled = losses.tiled_supported(s.loss, s.masks is not None)
    if s.memory_mode == "tiled" and not tiled:
        raise UserError(
            f"memory_mode=tiled computes the Gram style loss without masks only (loss.style_loss={s.loss.style_loss}"
            f"{', masks given' if s.masks is not None else ''}); use memory_mode=auto or remat"
        )
    plans = []
    for size in s.sizes:
        h, w = stage_shape(inputs, size)
        plan = memory.choose(
            budget_bytes, h, w, s.loss.layers, s.arch, batch, s.memory_mode, tiled, **_estimate_kwargs(s)
        )
        styles_fit = plan is not None and all(
            memory.forward_bytes(*style_shape(s, x, size), s.loss.layers, s.arch, plan.mode, plan.tile) <= budget_bytes
            for x in inputs.styles
        )
        if not styles_fit:
            raise MemoryBudgetError(_too_big(s, inputs, budget_bytes, batch, size))
        plans.append(plan)
    return plans


def _too_big(s: TransferSettings, inputs: Inputs, budget_bytes: int, batch: int, size: int) -> str:
    """The one-line refusal of a stage that fits in no allowed mode, with a size that would fit."""
    h, w = stage_shape(inputs, size)
    kw = _estimate_kwargs(s)
    tiled = losses.tiled_supported(s.loss, s.masks is not None)
    frugal = s.memory_mode if s.memory_mode != "auto" else ("tiled" if tiled else "remat")
    tiles = memory.tiles_to_try(h, w, s.loss.layers, s.arch) if frugal == "tiled" else [None]
    need = min(memory.estimate(h, w, s.loss.layers, s.arch, batch, frugal, t, **kw) for t in tiles)
    mode = s.memory_mode if s.memory_mode != "auto" or tiled else "remat"
    fit = memory.max_side_that_fits(budget_bytes, w / h, s.loss.layers, s.arch, batch, mode, **kw)
    if s.styles and s.style_scale > 1:
        fit = int(fit / s.style_scale)
    min_side = vgg.min_size(s.loss.layers, s.arch)
    hint = f"size={fit} would fit" if fit >= min_side else "no useful size fits"
    how = f"in memory_mode={s.memory_mode}" if s.memory_mode != "auto" else f"even in the {frugal} memory mode"
    return (
        f"size={size}: the run needs about {need / 2**30:.1f} GiB {how} but only "
        f"{budget_bytes / 2**30:.1f} GiB is available; {hint} (or raise max_memory_gb"
        + (", or memory_mode=auto)" if s.memory_mode != "auto" else ")")
    )


def check_sizes(s: TransferSettings, inputs: Inputs, budget_bytes: int, batch: int = 1) -> list[memory.Plan]:
    """Every stage's output and style images are big enough for the deepest layer, and every
    stage fits in ``budget_bytes`` in a memory mode ``s`` allows; returns each stage's
    :class:`nstyle.memory.Plan`. :class:`ImageError` / :class:`MemoryBudgetError` otherwise."""
    min_side = vgg.min_size(s.loss.layers, s.arch)
    for size in s.sizes:
        shape = stage_shape(inputs, size)
        images.check_size(shape, min_side, name=f"output at size={size} ({shape[1]}×{shape[0]})")
        for path, x in zip(s.styles, inputs.styles):
            images.check_size(
                style_shape(s, x, size), min_side, name=f"style {path} at style_scale={s.style_scale:g}, size={size}"
            )
    return plan_stages(s, inputs, budget_bytes, batch)


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
    s: TransferSettings,
    inputs: Inputs,
    params: vgg.VGGParams,
    callback: Callable[[int, Any, dict], Any] | None = None,
    plans: list[memory.Plan] | None = None,
) -> TransferResult:
    """Every stage of ``s`` in turn, each from the previous result upsampled.

    ``callback(i, state, metrics)`` is :func:`nstyle.optimize.stylize`'s, called across stages.
    ``plans``: each stage's memory mode (:func:`check_sizes`); default: planned now against the
    memory available.
    """
    if plans is None:
        plans = plan_stages(s, inputs, memory.available_bytes())
    params = vgg.with_backward_kernels(params, s.loss.layers)  # once, not again per stage
    key = jax.random.key(s.seed)
    stages: list[dict] = []
    history: dict[str, list] = {}
    image, reason, opt_state = None, "steps", None
    for k, (size, steps, plan) in enumerate(zip(s.sizes, s.stage_steps, plans)):
        content, styles, init_file, shape = stage_images(s, inputs, size)
        masks, style_masks = stage_masks(s, inputs, size)
        if image is not None:
            init = images.resize(image, shape)  # coarse to fine: the previous result, upsampled
            opt_state = optimize.carry_state(s.optim, opt_state, shape)  # Adam's moments resized; L-BFGS: None
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
            memory=plan.mode,
            tile=plan.tile,
            masks=masks,
            style_masks=style_masks,
            opt_state=opt_state,
        )
        image, opt_state = r.image, r.opt_state
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
                "memory_mode": plan.mode,
                "tile": plan.tile,
                "memory_estimate_bytes": plan.bytes,
                "stopped_reason": r.stopped_reason,
                "final": r.final,
            }
        )
        if r.stopped_reason != "steps":
            reason = r.stopped_reason
            break
    return TransferResult(image=finish(s, inputs, image), stages=stages, history=history, stopped_reason=reason)
