"""VGG16/VGG19 feature extraction as a pure JAX function.

    params = nstyle.weights.load("vgg19")
    feats = nstyle.vgg.features(params, images, layers=("conv1_1", "conv4_2"), pooling="avg")

``images`` are RGB in [0, 1], shape (B, H, W, 3). Layer names follow Gatys et al.:
``conv4_2`` is the *rectified* response of that conv (Caffe's ReLU is in place), and
``relu4_2`` is accepted as the same thing; ``pool1`` … ``pool5`` are the pooled maps.
The network runs only as deep as the deepest layer asked for.

:func:`map_features` applies a function to each named response where it is computed, so a
loss can be reduced inside the network pass; its ``memory`` mode says what a backward pass
through it keeps (``MEMORY_MODES``, benchmarks/MEMORY.md):

- ``"plain"``: one pass; autodiff keeps every rectified response for the backward pass. Fastest.
- ``"remat"``: each block (its convs and the pool after them) runs under ``jax.checkpoint``
  saving nothing inside it, with the per-layer function inside the block: only the block
  boundaries and the function's (small) results outlive the forward pass, and the backward
  pass recomputes one block at a time (one more forward pass of work). Same values as plain.
- ``"remat_bf16"``: as ``"remat"``, with the responses (and so their gradients) held as
  bfloat16; every convolution accumulates in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

VGG19_LAYERS = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4",
    "conv5_1", "conv5_2", "conv5_3", "conv5_4",
)  # fmt: skip
VGG16_LAYERS = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3",
    "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip
ARCH_LAYERS = {"vgg19": VGG19_LAYERS, "vgg16": VGG16_LAYERS}
BLOCK_WIDTH = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}  # output channels of every conv of block b


def conv_shape(layer: str) -> tuple[int, int, int, int]:
    """HWIO kernel shape of a VGG conv layer, e.g. conv3_1 -> (3, 3, 128, 256) (VGG16 and VGG19 alike)."""
    block, idx = (int(t) for t in layer[4:].split("_"))
    out = BLOCK_WIDTH[block]
    inp = out if idx > 1 else (3 if block == 1 else BLOCK_WIDTH[block - 1])
    return (3, 3, inp, out)


# Caffe/Keras "caffe" mode: BGR, 0-255, mean-subtracted (B, G, R)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision: RGB in [0, 1], then (x - mean) / std
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
# avg_rescaled: average pooling times AVG_POOL_SCALE, which keeps the activations the size they
# have with max pooling (averages are smaller than maxima, and the gap compounds with depth)
POOLINGS = ("max", "avg", "avg_rescaled")
PADDINGS = ("zero", "reflect", "replicate")  # of every 3×3 convolution's input, one pixel wide
_PAD_MODE = {"reflect": "reflect", "replicate": "edge"}
# Multiplier of each of the five average poolings for avg_rescaled: the ratio of the mean
# activation after max pooling to that after average pooling at that stage, the earlier stages
# already rescaled (tools/pool_scale.py; mean over builtin astronaut, chelsea, coffee and
# rocket at 256 px).
AVG_POOL_SCALE = {
    "vgg19": (1.248, 1.701, 1.496, 2.154, 1.92),
    "vgg16": (1.572, 1.978, 2.115, 2.138, 1.953),
}
MEMORY_MODES = ("plain", "remat", "remat_bf16", "tiled")
DEFAULT_TILE = 1024  # tiled mode: side (px) of the image square each tile owns


@struct.dataclass
class VGGParams:
    """Frozen VGG conv weights; ``convs[layer] = {"kernel": (3, 3, I, O), "bias": (O,)}``.

    ``arch`` and ``preprocessing`` are static (part of the tree structure), so a jitted
    function specialises on them and never traces them.
    """

    convs: dict
    # {layer: (3, 3, O, I)}: each kernel rotated by 180° with its channel axes swapped, the
    # kernel of the input gradient; see with_backward_kernels. None: XLA derives it per call.
    backward_kernels: dict | None = None
    arch: str = struct.field(pytree_node=False, default="vgg19")
    preprocessing: str = struct.field(pytree_node=False, default="caffe")
    checksum: str = struct.field(pytree_node=False, default="")
    source: str = struct.field(pytree_node=False, default="")

    @classmethod
    def from_arrays(
        cls, arrays: dict, arch: str, preprocessing: str, checksum: str = "", source: str = ""
    ) -> VGGParams:
        layers = ARCH_LAYERS[arch]
        convs = {}
        for layer in layers:
            kernel, bias = arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"]
            assert tuple(kernel.shape) == conv_shape(layer), (layer, kernel.shape)
            convs[layer] = {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
        return cls(convs=convs, arch=arch, preprocessing=preprocessing, checksum=checksum, source=source)


def canonical(layer: str, arch: str = "vgg19") -> str:
    """``relu3_1`` -> ``conv3_1``; raises ``ValueError`` listing the valid names otherwise."""
    name = layer.replace("relu", "conv", 1) if layer.startswith("relu") else layer
    if name in ARCH_LAYERS[arch] or (name.startswith("pool") and name[4:] in {"1", "2", "3", "4", "5"}):
        return name
    valid = ", ".join(ARCH_LAYERS[arch]) + ", relu… aliases, pool1…pool5"
    raise ValueError(f"unknown {arch} layer '{layer}'; valid names: {valid}")


def stage_order(arch: str) -> list[str]:
    """Network order of the named stages: convs, with a pool after each block's last conv."""
    out = []
    convs = ARCH_LAYERS[arch]
    for i, c in enumerate(convs):
        out.append(c)
        nxt = convs[i + 1] if i + 1 < len(convs) else None
        if nxt is None or nxt[4] != c[4]:
            out.append(f"pool{c[4]}")
    return out


def deepest(layers: Iterable[str], arch: str = "vgg19") -> str:
    order = stage_order(arch)
    return max((canonical(l, arch) for l in layers), key=order.index)


def preprocess(images: jax.Array, preprocessing: str) -> jax.Array:
    """RGB [0, 1] (B, H, W, 3) -> the network's input convention."""
    if preprocessing == "caffe":
        bgr = images[..., ::-1] * 255.0
        return bgr - jnp.asarray(CAFFE_MEAN_BGR, images.dtype)
    if preprocessing == "torchvision":
        return (images - jnp.asarray(TORCHVISION_MEAN, images.dtype)) / jnp.asarray(TORCHVISION_STD, images.dtype)
    raise ValueError(f"unknown preprocessing '{preprocessing}' (expected 'caffe' or 'torchvision')")


def _conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    backward_kernel: jax.Array | None = None,
    padding: str = "zero",
) -> jax.Array:
    """3×3 convolution, stride 1, padding 1 (``zero``, ``reflect`` or ``replicate``), + bias:
    (B, H, W, C_in) -> (B, H, W, C_out).

    ``backward_kernel``: the kernel of the input gradient, precomputed (:func:`with_backward_kernels`);
    used with zero padding (the others pad explicitly and leave the gradient to autodiff).
    A bfloat16 ``x`` is convolved with bfloat16 weights, accumulated and biased in float32.
    """
    if x.shape[-1] <= 4:  # conv1_1 (RGB in): one (B·H·W, 27) × (27, 64) matmul on the 9 shifted copies
        return _conv_im2col(x, kernel, bias, padding)
    kernel = kernel.astype(x.dtype)
    if padding != "zero":
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=_PAD_MODE[padding])  # (B, H+2, W+2, C_in)
        y = jax.lax.conv_general_dilated(
            xp, kernel, window_strides=(1, 1), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    elif backward_kernel is None:
        y = _lax_conv(x, kernel)
    else:
        y = _conv_given_backward(x, kernel, backward_kernel.astype(x.dtype))
    return y + bias.astype(y.dtype)


def _lax_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # float32 accumulation for bfloat16 operands too; float32 in, float32 out as before
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32 if x.dtype == jnp.bfloat16 else None,
    )


def backward_kernel(kernel: jax.Array) -> jax.Array:
    """The kernel whose convolution with ∂L/∂y is ∂L/∂x: rotated by 180°, I and O swapped.

    For y = x ⋆ K (cross-correlation, stride 1, 'same' padding), ∂L/∂x = ∂L/∂y ⋆ K' with
    K'[i, j, o, c] = K[2 − i, 2 − j, c, o]: (3, 3, I, O) -> (3, 3, O, I), again HWIO.
    """
    return kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # numpy or JAX


@jax.custom_vjp
def _conv_given_backward(x, kernel, kernel_t):
    """``_lax_conv(x, kernel)`` whose input gradient is a convolution with the given ``kernel_t``.

    XLA's own input gradient rotates and transposes the kernel on every call (as a copy: the
    convolution needs it laid out that way): for VGG19 up to conv5_1, 52 MB rewritten in every
    backward pass. Done once per run instead (:func:`with_backward_kernels`), it costs nothing
    per step.
    """
    return _lax_conv(x, kernel)


def _conv_given_backward_fwd(x, kernel, kernel_t):
    return _lax_conv(x, kernel), (x, kernel, kernel_t)


def _conv_given_backward_bwd(res, g):
    x, kernel, kernel_t = res
    dx = _lax_conv(g.astype(x.dtype), kernel_t).astype(x.dtype)
    # the kernel's gradient as autodiff gives it; compiled away unless someone asks for it
    dk = jax.vjp(lambda k: _lax_conv(x, k), kernel)[1](g)[0]
    # kernel_t is a copy derived from kernel, and dk is already the kernel's whole gradient
    return dx, dk, jnp.zeros_like(kernel_t)


_conv_given_backward.defvjp(_conv_given_backward_fwd, _conv_given_backward_bwd)


def _backward_kernels(convs: dict) -> dict:
    """{layer: backward_kernel(kernel)}, computed in numpy on the host (a first JAX call of the
    same would compile a program for it)."""
    if any(isinstance(p["kernel"], jax.core.Tracer) for p in convs.values()):  # inside someone's trace
        return {layer: backward_kernel(p["kernel"]) for layer, p in convs.items()}
    return {
        layer: jax.device_put(np.ascontiguousarray(backward_kernel(np.asarray(p["kernel"]))))
        for layer, p in convs.items()
    }


def with_backward_kernels(params: VGGParams, layers: Iterable[str] | None = None) -> VGGParams:
    """``params`` carrying the input-gradient kernel of every conv up to the deepest of
    ``layers`` (default: all), computed once here instead of inside every backward pass.
    The RGB conv1_1 needs none: it runs as a patch matmul.

    Use it for anything that differentiates through VGG many times with the same weights (the
    Gatys step, FastNet training): each call of the jitted step then reads the precomputed
    kernels. It adds one copy of those weights (52 MB up to conv5_1 of VGG19). Returns
    ``params`` itself when it already carries them.
    """
    order = [stage for stage in stage_order(params.arch) if not stage.startswith("pool")]
    if layers is not None:
        layers = tuple(layers)
        order = order[: order.index(deepest(layers, params.arch)) + 1] if layers else []
    needed = [layer for layer in order if params.convs[layer]["kernel"].shape[2] > 4]
    have = params.backward_kernels or {}
    if all(layer in have for layer in needed):
        return params
    return params.replace(
        backward_kernels={**have, **_backward_kernels({k: params.convs[k] for k in needed if k not in have})}
    )


def _conv_im2col(x: jax.Array, kernel: jax.Array, bias: jax.Array, padding: str = "zero") -> jax.Array:
    """The same convolution as a matmul over explicit 3×3 patches.

    For 3 input channels a convolution has little work per output and runs at a fraction of the
    machine's speed on the CPU; the patch matrix is only 9·3 = 27 wide, and its matmul and the
    backward pass (a matmul and 9 shifted adds) are faster (benchmarks/README.md). Same values
    up to float32 summation order.
    """
    b, h, w, c = x.shape
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    xp = jnp.pad(x, pad) if padding == "zero" else jnp.pad(x, pad, mode=_PAD_MODE[padding])
    patches = jnp.concatenate(
        [xp[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)], axis=-1
    )  # (B, H, W, 9C)
    k = kernel.astype(x.dtype).reshape(9 * c, kernel.shape[-1])  # HWIO -> (9·C_in, C_out), rows in (i, j, c) order
    y = jnp.einsum("bhwk,ko->bhwo", patches, k, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    return y + bias.astype(y.dtype)


def _pool(x: jax.Array, pooling: str, scale: float = 1.0) -> jax.Array:
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    if pooling == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, "VALID")
    if pooling == "avg":
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "VALID") * 0.25
    if pooling == "avg_rescaled":
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "VALID") * (0.25 * scale)
    raise ValueError(f"unknown pooling '{pooling}' (expected one of {', '.join(POOLINGS)})")


def _check(images: jax.Array, pooling: str, padding: str = "zero") -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) RGB, got shape {tuple(images.shape)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling '{pooling}' (expected one of {', '.join(POOLINGS)})")
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding '{padding}' (expected one of {', '.join(PADDINGS)})")


def _stage(params: VGGParams, stage: str, x: jax.Array, pooling: str, padding: str = "zero") -> jax.Array:
    """One named stage: a pool, or a conv and its ReLU; a bfloat16 ``x`` stays bfloat16."""
    if stage.startswith("pool"):
        return _pool(x, pooling, AVG_POOL_SCALE[params.arch][int(stage[4]) - 1])  # (B, h/2, w/2, C)
    p = params.convs[stage]
    kt = params.backward_kernels.get(stage) if params.backward_kernels is not None else None
    return jax.nn.relu(_conv(x, p["kernel"], p["bias"], kt, padding)).astype(x.dtype)  # (B, h, w, C_out)


def _by_stage(layers: Sequence[str], arch: str) -> dict[str, list[str]]:
    """{stage: the names in ``layers`` that read its output} (several spellings may name one stage)."""
    wanted: dict[str, list[str]] = {}
    for name in layers:
        wanted.setdefault(canonical(name, arch), []).append(name)
    return wanted


def features(
    params: VGGParams, images: jax.Array, layers: Sequence[str], pooling: str = "max", padding: str = "zero"
) -> dict[str, jax.Array]:
    """Responses of the named ``layers`` for RGB ``images`` in [0, 1].

    Args:
      params: weights from :func:`nstyle.weights.load`.
      images: (B, H, W, 3) RGB in [0, 1].
      layers: names such as ``("conv1_1", "relu4_2", "pool3")``; static under jit.
      pooling: ``"max"`` (the trained network), ``"avg"`` (Gatys et al.'s recommendation) or
        ``"avg_rescaled"`` (average pooling scaled to max pooling's activation sizes).
      padding: of the convolutions' inputs: ``"zero"`` (the trained network), ``"reflect"``
        or ``"replicate"`` (no dark frame for the borders to imitate).

    Returns:
      ``{name: (B, h, w, C)}`` keyed by the names exactly as given.
    """
    _check(images, pooling, padding)
    layers = tuple(layers)
    if not layers:
        return {}
    wanted = _by_stage(layers, params.arch)
    last = deepest(layers, params.arch)
    x = preprocess(images, params.preprocessing)  # (B, H, W, 3)
    out: dict[str, jax.Array] = {}
    for stage in stage_order(params.arch):
        x = _stage(params, stage, x, pooling, padding)
        for name in wanted.get(stage, ()):
            out[name] = x
        if stage == last:
            break
    return out


def blocks(layers: Iterable[str], arch: str = "vgg19") -> list[tuple[str, ...]]:
    """The stages up to the deepest of ``layers``, cut after each pool: the units that
    :func:`map_features` recomputes in its remat modes. E.g. ``["conv2_1"]`` ->
    ``[("conv1_1", "conv1_2", "pool1"), ("conv2_1",)]``."""
    last = deepest(layers, arch)
    out, cur = [], []
    for stage in stage_order(arch):
        cur.append(stage)
        if stage.startswith("pool") or stage == last:
            out.append(tuple(cur))
            cur = []
        if stage == last:
            break
    return out


def map_features(
    params: VGGParams,
    images: jax.Array,
    layers: Sequence[str],
    fn: Callable[[str, jax.Array], Any],
    pooling: str = "max",
    memory: str = "plain",
    padding: str = "zero",
) -> dict[str, Any]:
    """``{name: fn(name, response)}`` for the named ``layers`` of RGB ``images`` (B, H, W, 3) in [0, 1].

    ``fn`` reduces a response (B, h, w, C) to something small (a loss term per image); it is
    called inside the network pass, so with ``memory="remat"`` or ``"remat_bf16"`` only the
    block boundaries and ``fn``'s results outlive the forward pass (see the module docstring).
    With ``"remat_bf16"``, ``fn`` receives bfloat16 responses and should accumulate in float32.
    ``"plain"`` is exactly ``{name: fn(name, f) for name, f in features(...).items()}``.
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode '{memory}' (expected one of {', '.join(MEMORY_MODES)})")
    if memory == "plain":
        return {name: fn(name, f) for name, f in features(params, images, layers, pooling, padding).items()}
    _check(images, pooling, padding)
    layers = tuple(layers)
    if not layers:
        return {}
    wanted = _by_stage(layers, params.arch)
    dtype = jnp.bfloat16 if memory == "remat_bf16" else images.dtype
    x = preprocess(images, params.preprocessing).astype(dtype)  # (B, H, W, 3)
    out: dict[str, Any] = {}
    for block in blocks(layers, params.arch):

        def run(x, block_params, block=block):
            res = {}
            for stage in block:
                x = _stage(block_params, stage, x, pooling, padding)  # (B, h, w, C)
                for name in wanted.get(stage, ()):
                    res[name] = fn(name, x)
            return x, res

        sub = params.replace(  # this block's weights only
            convs={k: v for k, v in params.convs.items() if k in block},
            backward_kernels=None
            if params.backward_kernels is None
            else {k: v for k, v in params.backward_kernels.items() if k in block},
        )
        x, res = recompute_in_backward(run, x, sub)
        out.update(res)
    return {name: out[name] for name in layers}


def recompute_in_backward(fn: Callable, x: jax.Array, *args):
    """``fn(x, *args)``, whose backward pass keeps only its inputs and recomputes the rest.

    This is what ``jax.checkpoint`` does, in a form XLA:CPU keeps: there the optimisation
    barrier that stops XLA from merging the recomputation with the forward pass is removed
    before common-subexpression elimination, which then undoes the checkpoint (the compiled
    program is the plain one, memory included). Here the recomputation reads ``x`` through a
    zero computed from the incoming gradient, so it cannot run before that gradient exists
    nor be merged with the forward pass. ``fn`` may close over traced values (targets).
    """
    converted, consts = jax.closure_convert(fn, x, *args)
    return _recompute_call(converted, x, *args, *consts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recompute_call(fn, x, *rest):
    return fn(x, *rest)


def _recompute_fwd(fn, x, *rest):
    return fn(x, *rest), (x, rest)


def _recompute_bwd(fn, res, g):
    x, rest = res
    _, vjp = jax.vjp(fn, x + _zero_after(g).astype(x.dtype), *rest)
    return vjp(g)


_recompute_call.defvjp(_recompute_fwd, _recompute_bwd)


def stride(layer: str, arch: str = "vgg19") -> int:
    """Input pixels per response at ``layer``: 2 ** (pools before it); conv3_1 -> 4."""
    order = stage_order(arch)
    name = canonical(layer, arch)
    return 2 ** sum(1 for s in order[: order.index(name) + 1] if s.startswith("pool"))


def reach(layers: Iterable[str], arch: str = "vgg19") -> int:
    """How far (input px) past its own pixels a response at the deepest of ``layers`` looks.

    A response at ``layer`` covers input pixels [r·s, r·s + s) (s = :func:`stride`); its value
    depends on pixels up to ``reach`` beyond that on each side: each 3×3 conv adds one
    response of its resolution on both sides, each 2×2 pool one on the far side. conv5_1: 85.
    """
    last, jump, r = deepest(layers, arch), 1, 0
    for stage in stage_order(arch):
        r += jump
        if stage.startswith("pool"):
            jump *= 2
        if stage == last:
            return r
    return r


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile of a tiled pass: the window of input pixels it runs on and the square it owns.

    ``rows``/``cols`` are the window [start, stop) in input pixels, ``own_rows``/``own_cols``
    the part of the image whose responses this tile contributes (the tiles' own squares
    partition the image). Window starts are multiples of the deepest layer's stride, so the
    window's pools pair the same pixels as the whole image's.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    own_rows: tuple[int, int]
    own_cols: tuple[int, int]

    def owned(self, layer: str, arch: str = "vgg19") -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """``(in_window, in_image)``: the (row, col) slices of the responses at ``layer`` this tile
        owns, in the window's response map and in the whole image's."""
        s = stride(layer, arch)
        (r0, _), (c0, _) = self.rows, self.cols
        (a, b), (c, d) = self.own_rows, self.own_cols
        image = (slice(a // s, b // s), slice(c // s, d // s))
        window = (slice(a // s - r0 // s, b // s - r0 // s), slice(c // s - c0 // s, d // s - c0 // s))
        return window, image


def tiles(shape: tuple[int, int], layers: Iterable[str], arch: str = "vgg19", tile: int = DEFAULT_TILE) -> list[Tile]:
    """Cover an (H, W) image with tiles owning squares of side ``tile`` (rounded up to the deepest
    layer's stride) whose windows add :func:`reach` pixels (rounded up likewise) on each side
    but stop at the image's edges. Every response of ``layers`` computed inside a tile's own
    square from its window equals the whole image's: the window holds everything it depends on,
    and where the window stops at the image edge the convolutions pad with zeros as they do for
    the whole image. One tile, the whole image, when it fits.
    """
    layers = tuple(layers)
    align = stride(deepest(layers, arch), arch)
    step = max(align, -(-int(tile) // align) * align)
    halo = -(-reach(layers, arch) // align) * align
    h, w = (int(v) for v in shape)

    def spans(n):
        starts = list(range(0, n, step))
        return [(a, min(a + step, n), max(0, a - halo), min(n, a + step + halo)) for a in starts]

    return [
        Tile(rows=(r0, r1), cols=(c0, c1), own_rows=(a, b), own_cols=(c, d))
        for a, b, r0, r1 in spans(h)
        for c, d, c0, c1 in spans(w)
    ]


def map_tiles(
    params: VGGParams,
    images: jax.Array,
    layers: Sequence[str],
    fn: Callable[[str, jax.Array, tuple[slice, slice]], Any],
    pooling: str = "max",
    tile: int = DEFAULT_TILE,
    recompute: bool = False,
    padding: str = "zero",
) -> list[dict[str, Any]]:
    """Per tile of :func:`tiles`, ``{name: fn(name, owned, where)}``: ``owned`` is the part of the
    response (B, h, w, C) at ``name`` that the tile owns, ``where`` its (row, col) slices in the
    whole image's response map. The owned parts of all tiles are the whole image's responses.

    One tile's activations are alive at a time (the tiles run in sequence). ``recompute=True``:
    a backward pass keeps only each tile's window of ``images`` and recomputes the tile from it
    (:func:`recompute_in_backward`), so differentiating the tiles' results costs one tile's
    memory too.
    """
    _check(images, pooling, padding)
    layers = tuple(layers)
    out: list[dict[str, Any]] = []
    tie = None
    for t in tiles(images.shape[1:3], layers, params.arch, tile):

        def run(window, t=t):
            feats = features(params, window, layers, pooling, padding)
            res = {}
            for name in layers:
                (wr, wc), where = t.owned(name, params.arch)
                res[name] = fn(name, feats[name][:, wr, wc, :], where)
            return res

        window = images[:, slice(*t.rows), slice(*t.cols), :]  # (B, h_t, w_t, 3)
        if tie is not None:  # after the previous tile: XLA would otherwise be free to run them all at once
            window = window + tie.astype(window.dtype)
        res = recompute_in_backward(run, window) if recompute else run(window)
        out.append(res)
        tie = _zero_after(res)
    return out


def _zero_after(tree) -> jax.Array:
    """A float32 zero (NaN if ``tree`` holds one in the place read) computed from ``tree``: adding it to
    an input makes that computation wait for ``tree``, which XLA cannot simplify away (x·0 is not 0
    for a float that may be NaN)."""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size]
    return sum((leaf.reshape(-1)[0].astype(jnp.float32) for leaf in leaves), jnp.float32(0.0)) * 0.0


def features_tiled(
    params: VGGParams,
    images: jax.Array,
    layers: Sequence[str],
    pooling: str = "max",
    tile: int = DEFAULT_TILE,
    padding: str = "zero",
) -> dict[str, jax.Array]:
    """:func:`features`, computed tile by tile (:func:`map_tiles`): the same responses, with one
    tile's activations in memory at a time instead of the whole image's."""
    layers = tuple(layers)
    grid = tiles(images.shape[1:3], layers, params.arch, tile)
    parts = map_tiles(params, images, layers, lambda name, owned, where: owned, pooling, tile, padding=padding)
    ncols = len({t.own_cols for t in grid})
    out = {}
    for name in layers:
        rows = [parts[i : i + ncols] for i in range(0, len(parts), ncols)]
        out[name] = jnp.concatenate(
            [jnp.concatenate([p[name] for p in row], axis=2) for row in rows], axis=1
        )  # (B, h, w, C)
    return out


def min_size(layers: Iterable[str], arch: str = "vgg19") -> int:
    """Smallest input side (px) whose response at the deepest of ``layers`` is at least 1×1."""
    last = deepest(layers, arch)
    order = stage_order(arch)
    pools = sum(1 for s in order[: order.index(last) + 1] if s.startswith("pool"))
    # a pool at the very end halves too; before it, each pool needs an even side
    return int(2**pools)


def param_count(params: VGGParams) -> int:
    return int(sum(np.prod(v.shape) for p in params.convs.values() for v in p.values()))
