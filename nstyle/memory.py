"""Memory: what a run will need (estimated before anything is allocated) and what is free.

need = nstyle.memory.vgg_activation_bytes(512, 512, loss.layers, "vgg19")
if need > nstyle.memory.available_bytes(): ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from nstyle import images, vgg
from nstyle._errors import UserError


class MemoryBudgetError(UserError):
    """The run would not fit in the memory available; the message names a size that would."""


# Peak memory of value_and_grad of the loss, in units of "every stage's output once": XLA keeps
# each rectified output for the backward pass and holds cotangents of the same sizes while it
# runs back. XLA's own memory analysis of the Gatys loss gradient on CPU gives 1.72–1.79 (128 to
# 512 px, VGG19, conv1_1…conv5_1 + conv4_2); 3 leaves room for the optimiser state, the target
# features and GPU convolution workspaces, so a size that passes the check does run.
BACKWARD_FACTOR = 3.0


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


def vgg_activation_bytes(h: int, w: int, layers: Iterable[str], arch: str = "vgg19", batch: int = 1) -> int:
    """Rough peak memory of a VGG forward+backward pass up to the deepest of ``layers``.

    Sum over the input and every conv/pool output of H·W·C float32 values (4 bytes each),
    times ``BACKWARD_FACTOR`` (3: stored activations, their gradients, and headroom; XLA
    measures about 1.75) and the batch size. Weights (≈80 MB for the VGG19 convs) are not
    included.
    """
    elems = sum(_stage_elements(int(h), int(w), layers, arch))
    return int(elems * 4 * BACKWARD_FACTOR * int(batch))


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
    budget_bytes: int, aspect: float, layers: Iterable[str], arch: str = "vgg19", batch: int = 1
) -> int:
    """Largest longest-side (px) whose estimated activations fit in ``budget_bytes``.

    ``aspect`` is width / height of the image. Returns 0 if not even the smallest useful
    size (:func:`nstyle.vgg.min_size`) fits.
    """
    layers = tuple(layers)
    if not aspect > 0:
        raise ValueError(f"aspect must be width/height > 0, got {aspect}")

    def fits(side: int) -> bool:
        h, w = images.longest_shape((1.0, float(aspect)), side)
        return vgg_activation_bytes(h, w, layers, arch, batch) <= budget_bytes

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
