"""Memory: what a stylisation will need (estimated before anything is allocated), the memory
mode that makes it fit, and what is free.

    need = nstyle.memory.estimate(2048, 2048, loss.layers, mode="tiled", tile=1024)   # bytes
    plan = nstyle.memory.choose(nstyle.memory.available_bytes(), 2048, 2048, loss.layers)
    plan.mode, plan.tile, plan.bytes       # the fastest mode that fits, or None when none does

The estimate is of the whole process's peak resident memory during a run of
:func:`nstyle.optimize.stylize_batch`, and is fitted to measurements: ``benchmarks/bench_memory.py``
runs ``nstyle-stylize`` at 512–4096 px in each mode, each in a fresh process, and compares
the peak RSS the kernel reports with this estimate (within ±15%, benchmarks/MEMORY.md). It is
a sum of four parts:

- a fixed part: the JAX runtime, the VGG weights and their backward kernels, compiled code;
- the activations of one VGG forward and backward pass, ``ACTIVATION[mode]`` times the bytes of
  every stage's output once (:func:`stage_bytes`) — of the whole image, or in the tiled mode of
  the largest tile's window;
- the optimiser's image-sized buffers: the iterate, the best iterate, the gradient and the
  step's temporaries, and L-BFGS's 2 × ``history`` stored pairs;
- the content targets (the content image's responses at the content layers).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

from nstyle import images, vgg
from nstyle._errors import UserError


class MemoryBudgetError(UserError):
    """The run would not fit in the memory available; the message names a size that would."""


# Peak memory of value_and_grad of the loss, in units of "every stage's output once", as XLA's
# own memory analysis of the compiled Gatys step gives it on the CPU (VGG19, conv1_1…conv5_1 +
# conv4_2, 256–2048 px): plain keeps every rectified response for the backward pass and holds
# cotangents beside them; remat keeps the block boundaries and one block's working set (the
# first block's dominates); bfloat16 activations do not lower it on XLA:CPU, which computes
# bfloat16 convolutions in float32; tiled is a plain pass over one tile's window.
ACTIVATION = {"plain": 1.29, "remat": 1.0, "remat_bf16": 1.0, "tiled": 1.3}
BACKWARD_FACTOR = ACTIVATION["plain"]
# A forward pass alone (targets) holds a conv's input, its output and, for conv1_1, the 3×3
# patches: about the first two stages' outputs.
FORWARD = 0.5
# Image-sized float32 buffers besides the L-BFGS pairs: iterate, best iterate, gradient,
# optimiser state and the step's temporaries (Adam: its two moments in place of the pairs).
IMAGE_BUFFERS = {"lbfgs": 14, "adam": 16}
# Runtime, weights (VGG19 up to conv5_1: 80 MB, and 52 MB of backward kernels) and compiled code.
BASE_BYTES = 520 * 2**20
# The modes ``choose`` tries, fastest first. remat_bf16 is left out: it changes the result
# (slightly), and on XLA:CPU it saves nothing over remat.
AUTO_ORDER = ("plain", "remat", "tiled")
MIN_TILE = 256  # the smallest tile the tiled mode is offered with (px): below it the halo dominates


def _stage_elements(h: int, w: int, layers: Iterable[str], arch: str) -> list[int]:
    """Values (H·W·C per image) of the input and of each stage up to the deepest layer."""
    last = vgg.deepest(layers, arch)
    c = 3
    sizes = [h * w * c]  # the input image
    for stage in vgg.stage_order(arch):
        if stage.startswith("pool"):
            h, w = h // 2, w // 2  # (h/2, w/2, C): VALID 2×2 pooling floors odd sides
        else:
            c = vgg.conv_shape(stage)[-1]  # 'same' conv: (h, w, C_out)
        sizes.append(h * w * c)
        if stage == last:
            break
    return sizes


def stage_bytes(h: int, w: int, layers: Iterable[str], arch: str = "vgg19") -> int:
    """Bytes of the input and every stage's output up to the deepest of ``layers``, once, in float32."""
    return 4 * sum(_stage_elements(int(h), int(w), layers, arch))


def vgg_activation_bytes(
    h: int, w: int, layers: Iterable[str], arch: str = "vgg19", batch: int = 1, mode: str = "plain"
) -> int:
    """Peak activation memory of a VGG forward+backward pass up to the deepest of ``layers``:
    ``ACTIVATION[mode]`` × :func:`stage_bytes` × the batch size. Weights are not included."""
    return int(stage_bytes(h, w, layers, arch) * ACTIVATION[mode] * int(batch))


def _window(h: int, w: int, layers: Iterable[str], arch: str, tile: int) -> tuple[int, int]:
    """(h, w) of the largest window of :func:`nstyle.vgg.tiles`."""
    return max(((t.rows[1] - t.rows[0], t.cols[1] - t.cols[0]) for t in vgg.tiles((h, w), layers, arch, tile)),
               key=lambda s: s[0] * s[1])  # fmt: skip


def estimate(
    h: int,
    w: int,
    layers: Iterable[str],
    arch: str = "vgg19",
    batch: int = 1,
    mode: str = "plain",
    tile: int | None = None,
    optimizer: str = "lbfgs",
    history: int = 10,
    content_layers: Iterable[str] = ("conv4_2",),
) -> int:
    """Estimated peak resident memory (bytes) of a stylisation of ``batch`` images of (h, w) px.

    ``layers``: every layer the loss reads; ``content_layers``: those with a content target;
    ``mode``/``tile``: :data:`nstyle.vgg.MEMORY_MODES` (tile: the tiled mode's tile side,
    default :data:`nstyle.vgg.DEFAULT_TILE`); ``optimizer``/``history``: ``"lbfgs"`` with its
    memory length, or ``"adam"``.
    """
    layers = tuple(layers)
    if mode not in vgg.MEMORY_MODES:
        raise ValueError(f"unknown memory mode '{mode}' (expected one of {', '.join(vgg.MEMORY_MODES)})")
    h, w, batch = int(h), int(w), int(batch)
    ah, aw = _window(h, w, layers, arch, tile or vgg.DEFAULT_TILE) if mode == "tiled" else (h, w)
    activations = vgg_activation_bytes(ah, aw, layers, arch, batch, mode)
    image = 4 * 3 * h * w * batch
    buffers = IMAGE_BUFFERS[optimizer] + (2 * int(history) if optimizer == "lbfgs" else 0)
    content = 0
    for layer in content_layers:
        s = vgg.stride(layer, arch)
        content += 4 * (h // s) * (w // s) * vgg.conv_shape(vgg.canonical(layer, arch))[-1] * batch
    return int(BASE_BYTES + activations + buffers * image + content)


def forward_bytes(
    h: int, w: int, layers: Iterable[str], arch: str = "vgg19", mode: str = "plain", tile: int | None = None
) -> int:
    """Estimated peak memory of computing targets (a forward pass, no backward) of an (h, w) image:
    ``FORWARD`` × :func:`stage_bytes`, of a tile's window when ``mode`` is tiled."""
    layers = tuple(layers)
    ah, aw = _window(h, w, layers, arch, tile or vgg.DEFAULT_TILE) if mode == "tiled" else (h, w)
    return int(BASE_BYTES + FORWARD * stage_bytes(ah, aw, layers, arch) + 4 * 3 * h * w)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a stylisation runs in the memory it has: the mode, its tile (tiled only), the estimate."""

    mode: str
    tile: int | None
    bytes: int


def tiles_to_try(h: int, w: int, layers: tuple[str, ...], arch: str) -> list[int]:
    """Tile sides for the tiled mode, largest first: halving from the first that splits the image."""
    align = vgg.stride(vgg.deepest(layers, arch), arch)
    side = -(-max(h, w) // 2 // align) * align  # two tiles along the longer side
    out = []
    while side >= MIN_TILE:
        out.append(side)
        side = -(-(side // 2) // align) * align
    return out or [max(align, MIN_TILE)]


def choose(
    budget_bytes: int,
    h: int,
    w: int,
    layers: Iterable[str],
    arch: str = "vgg19",
    batch: int = 1,
    mode: str = "auto",
    tiled: bool = True,
    **kwargs,
) -> Plan | None:
    """The fastest memory mode whose :func:`estimate` fits in ``budget_bytes``, or None.

    ``mode="auto"`` tries :data:`AUTO_ORDER` (plain, remat, tiled), each faster than the next
    (``tiled=False``: without the tiled mode, for losses it cannot compute); a named mode is
    checked alone. The tiled mode gets the largest tile that fits (fewer tiles: less halo
    recomputed, faster compilation). ``kwargs`` go to :func:`estimate`.
    """
    layers = tuple(layers)
    for m in AUTO_ORDER if mode == "auto" else (mode,):
        if m == "tiled" and not tiled:
            continue
        tiles = tiles_to_try(int(h), int(w), layers, arch) if m == "tiled" else [None]
        for t in tiles:
            need = estimate(h, w, layers, arch, batch, m, t, **kwargs)
            if need <= budget_bytes:
                return Plan(mode=m, tile=t, bytes=need)
    return None


def available_bytes() -> int:
    """Memory the process could still use: the accelerator's free memory when jax runs on
    one, else ``MemAvailable`` from ``/proc/meminfo`` (falling back to total physical memory).
    """
    try:
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001 -- no jax backend: fall through to host memory
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB -> bytes
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def max_side_that_fits(
    budget_bytes: int,
    aspect: float,
    layers: Iterable[str],
    arch: str = "vgg19",
    batch: int = 1,
    mode: str = "auto",
    **kwargs,
) -> int:
    """Largest longest-side (px) for which :func:`choose` finds a mode within ``budget_bytes``.

    ``aspect`` is width / height of the image. Returns 0 if not even the smallest useful
    size (:func:`nstyle.vgg.min_size`) fits.
    """
    layers = tuple(layers)
    if not aspect > 0:
        raise ValueError(f"aspect must be width/height > 0, got {aspect}")

    def fits(side: int) -> bool:
        h, w = images.longest_shape((1.0, float(aspect)), side)
        return choose(budget_bytes, h, w, layers, arch, batch, mode, **kwargs) is not None

    lo, hi = 0, max(1, vgg.min_size(layers, arch))
    if not fits(hi):
        return 0
    while fits(hi * 2):  # bytes grow like side², so this doubles only a few dozen times at most
        hi *= 2
    lo, hi = hi, hi * 2  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fastnet_activation_bytes(h: int, w: int, width: int, blocks: int, batch: int = 1) -> int:
    """Rough peak memory of a FastNet (:mod:`nstyle.fastnet`) forward+backward pass on (batch, h, w, 3).

    Per image: the input, each ConvIN's conv, norm and ReLU outputs (``width`` channels at full
    size, 2·width at half, 4·width at a quarter), ``blocks`` residual blocks of two ConvINs at a
    quarter, the two ×2 upsamplings (the nearest-neighbour copy and a ConvIN each) and the last
    conv; float32, times ``BACKWARD_FACTOR`` and the batch.
    """
    full = int(h) * int(w)
    half, quarter = full // 4, full // 16
    elems = 3 * full  # input
    elems += 3 * (width * full + 2 * width * half + 4 * width * quarter)  # three downsampling ConvINs
    elems += blocks * 2 * 3 * 4 * width * quarter  # residual blocks
    elems += 4 * width * half + 3 * 2 * width * half  # up ×2: the copy of 4w, then a ConvIN to 2w
    elems += 2 * width * full + 3 * width * full  # up ×2: the copy of 2w, then a ConvIN to w
    elems += 2 * 3 * full  # last conv and the output
    return int(elems * 4 * BACKWARD_FACTOR * int(batch))


def training_bytes(
    size: int, batch: int, width: int, blocks: int, layers: Iterable[str], arch: str, style_size: int | None = None
) -> int:
    """Rough peak memory of one FastNet training step on (batch, size, size, 3) crops: the
    network's pass plus the loss network's up to the deepest of ``layers``, and the style
    image's pass at ``style_size`` (its Gram targets, computed once)."""
    layers = tuple(layers)
    need = fastnet_activation_bytes(size, size, width, blocks, batch) + vgg_activation_bytes(
        size, size, layers, arch, batch
    )
    if style_size is not None:
        need = max(need, vgg_activation_bytes(style_size, style_size, layers, arch, 1))
    return need
