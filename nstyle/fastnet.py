"""Johnson et al.'s feed-forward style network ("FastNet"), in Flax.

    cfg = FastNetConfig()                                  # the paper's network
    params = init(cfg, jax.random.key(0))
    y = apply(cfg, params, x)                              # (B, H, W, 3) [0, 1] -> same, H, W % 4 == 0
    y = stylize(cfg, params, x)                            # any H, W: reflect-pad to a multiple of 4, crop back
    y = stylize_tiled(cfg, params, photo)                  # one (H, W, 3) image of any size, tile by tile

Architecture (Johnson, Alahi, Fei-Fei 2016, supplementary Table 1, with instance norm):

    9×9 conv w      → IN → ReLU                    (B, H,   W,   w)
    3×3 conv 2w /2  → IN → ReLU                    (B, H/2, W/2, 2w)
    3×3 conv 4w /2  → IN → ReLU                    (B, H/4, W/4, 4w)
    blocks × [3×3 conv 4w → IN → ReLU → 3×3 conv 4w → IN (scale only)] + identity
    ×2 nearest upsample, 3×3 conv 2w → IN → ReLU   (B, H/2, W/2, 2w)
    ×2 nearest upsample, 3×3 conv w  → IN → ReLU   (B, H,   W,   w)
    9×9 conv 3 → output                            (B, H,   W,   3)

Convolutions followed by instance norm carry no bias (the norm removes it; its learnt shift
plays that role). Every conv pads its input by reflection, so borders carry image statistics instead of zeros.
Upsampling is nearest-neighbour followed by a convolution (Odena et al. 2016): a stride-2
transposed convolution (``upsample="transpose"``, the paper's original) overlaps its kernel
unevenly and leaves checkerboard artefacts.

Output (``FastNetConfig.output``): ``"residual"`` (the default) is ``x + z/2`` with the last
conv's kernel and bias starting at zero, so an untrained network returns its input and
training only learns the change the style asks for; the photo is never lost on the way.
It is unbounded while training, so no pixel ever stops receiving gradient; :func:`stylize`
clips it to [0, 1] (PyTorch's fast_neural_style example does the same: an unbounded output,
clamped when saved). ``"linear"`` is ``(z + 1) / 2``, unbounded as well, but it starts as
noise and must first relearn the photo. ``"tanh"`` is ``(tanh(z) + 1) / 2``, the output of
model format version 1: where ``|z|`` grows its slope vanishes (1/2 at 0, 0.035 at
|z| = 2.5), and a region the style term pushed to white stays white, with no gradient left
to bring it back. docs/fastnet.md compares the three.

Several styles (Dumoulin, Shlens, Kudlur 2017, "A learned representation for artistic
style"): with ``styles=S > 1`` every instance norm holds S scales and shifts (conditional
instance norm) and the network takes per-image style weights ``(B, S)``; each image's scale
and shift are the weighted sums of the styles' ones, so a one-hot row picks one style and a
convex mix interpolates between them. With ``styles=1`` the parameters are those of a
single-style network (and of model files of version 1).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from nstyle import _io, _xla, images
from nstyle._errors import UserError

UPSAMPLES = ("nearest", "transpose")
OUTPUTS = ("linear", "tanh", "residual")


@dataclasses.dataclass(frozen=True)
class FastNetConfig:
    """What is needed to rebuild the network; stored in checkpoints and exported models."""

    width: int = 32  # channels of the first conv; then 2·width, 4·width (paper: 32, 64, 128)
    blocks: int = 5  # residual blocks at 4·width channels (paper: 5)
    upsample: str = "nearest"  # "nearest" (upsample then conv) or "transpose" (stride-2 transposed conv)
    epsilon: float = 1e-5  # instance-norm variance floor (PyTorch's default)
    # "residual": x + z/2 with the last conv starting at zero (the network starts as the identity);
    # "linear": (z+1)/2; both clipped only by stylize(); "tanh": (tanh(z)+1)/2 (format version 1)
    output: str = "residual"
    styles: int = 1  # styles the network holds (conditional instance norm when > 1)

    def __post_init__(self):
        if self.width < 1 or self.blocks < 0:
            raise ValueError(f"width must be >= 1 and blocks >= 0, got width={self.width}, blocks={self.blocks}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsample '{self.upsample}' (expected one of {', '.join(UPSAMPLES)})")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output '{self.output}' (expected one of {', '.join(OUTPUTS)})")
        if self.styles < 1:
            raise ValueError(f"styles must be >= 1, got {self.styles}")


def _reflect(x: jax.Array, pad: int) -> jax.Array:
    """Reflection-pad H and W by ``pad``: (B, H, W, C) -> (B, H+2p, W+2p, C)."""
    if pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


class ConditionalInstanceNorm(nn.Module):
    """Instance norm with one learnt scale and shift per style, mixed by per-image style weights."""

    styles: int
    use_bias: bool = True
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, style_weights):  # (B, H, W, C), (B, S)
        c = x.shape[-1]
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)

        def mix(table):  # (S, C) -> (B, 1, 1, C); a sum of products, exact for a one-hot row
            return jnp.sum(style_weights[:, :, None] * table[None], axis=1)[:, None, None, :]

        y = y * mix(self.param("scale", nn.initializers.ones, (self.styles, c)))
        if self.use_bias:
            y = y + mix(self.param("bias", nn.initializers.zeros, (self.styles, c)))
        return y


def _norm(x, style_weights, styles: int, shift: bool, epsilon: float):
    """Instance norm; conditional on the style weights when the network holds several styles."""
    if styles == 1:  # the single-style parameters (and module names) of format version 1
        return nn.InstanceNorm(epsilon=epsilon, use_bias=shift)(x)
    return ConditionalInstanceNorm(styles, use_bias=shift, epsilon=epsilon)(x, style_weights)


class ConvIN(nn.Module):
    """Reflection-padded conv, then instance norm and ReLU (each optional)."""

    features: int
    kernel: int
    stride: int = 1
    norm: bool = True
    relu: bool = True
    shift: bool = True  # the instance norm's learnt shift
    epsilon: float = 1e-5
    styles: int = 1
    zero_init: bool = False  # kernel and bias start at 0

    @nn.compact
    def __call__(self, x, style_weights=None):
        x = _reflect(x, self.kernel // 2)
        # no bias before instance norm: IN subtracts the channel mean, so a bias's gradient is
        # rounding noise, which Adam would amplify into ±lr steps of a parameter that does nothing
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding="VALID",
            use_bias=not self.norm,
            **({"kernel_init": nn.initializers.zeros} if self.zero_init else {}),
        )(x)
        if self.norm:
            # per image and channel over (H, W), with a learnt scale and shift (one per style)
            x = _norm(x, style_weights, self.styles, self.shift, self.epsilon)
        return nn.relu(x) if self.relu else x


class Residual(nn.Module):
    features: int
    epsilon: float = 1e-5
    styles: int = 1

    @nn.compact
    def __call__(self, x, style_weights=None):
        y = ConvIN(self.features, 3, epsilon=self.epsilon, styles=self.styles)(x, style_weights)
        # no shift here: a per-channel constant added to the residual stream is removed by the
        # next instance norm (reflection padding keeps it constant), so its gradient is zero
        y = ConvIN(self.features, 3, relu=False, shift=False, epsilon=self.epsilon, styles=self.styles)(
            y, style_weights
        )
        return x + y


class Upsample(nn.Module):
    """×2 in H and W: nearest-neighbour then conv, or a stride-2 transposed conv."""

    features: int
    mode: str = "nearest"
    epsilon: float = 1e-5
    styles: int = 1

    @nn.compact
    def __call__(self, x, style_weights=None):
        if self.mode == "nearest":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
            return ConvIN(self.features, 3, epsilon=self.epsilon, styles=self.styles)(x, style_weights)
        x = nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)(x)  # (B, 2H, 2W, F)
        x = _norm(x, style_weights, self.styles, True, self.epsilon)
        return nn.relu(x)


class FastNet(nn.Module):
    cfg: FastNetConfig

    @nn.compact
    def __call__(self, images, style_weights=None):  # (B, H, W, 3) in [0, 1], H and W multiples of 4; (B, S)
        c, eps, s = self.cfg.width, self.cfg.epsilon, self.cfg.styles
        x = 2.0 * images - 1.0  # centre the input
        x = ConvIN(c, 9, epsilon=eps, styles=s)(x, style_weights)  # (B, H, W, c)
        x = ConvIN(2 * c, 3, stride=2, epsilon=eps, styles=s)(x, style_weights)  # (B, H/2, W/2, 2c)
        x = ConvIN(4 * c, 3, stride=2, epsilon=eps, styles=s)(x, style_weights)  # (B, H/4, W/4, 4c)
        for _ in range(self.cfg.blocks):
            x = Residual(4 * c, epsilon=eps, styles=s)(x, style_weights)
        x = Upsample(2 * c, self.cfg.upsample, epsilon=eps, styles=s)(x, style_weights)  # (B, H/2, W/2, 2c)
        x = Upsample(c, self.cfg.upsample, epsilon=eps, styles=s)(x, style_weights)  # (B, H, W, c)
        residual = self.cfg.output == "residual"
        x = ConvIN(3, 9, norm=False, relu=False, zero_init=residual)(x)  # (B, H, W, 3)
        if self.cfg.output == "tanh":
            return (jnp.tanh(x) + 1.0) * 0.5
        if residual:
            return images + 0.5 * x  # unbounded: stylize() clips
        return (x + 1.0) * 0.5  # unbounded: stylize() clips


def init(cfg: FastNetConfig, key: jax.Array, size: int = 32) -> Any:
    """Fresh parameters (a nested dict of arrays). Fully convolutional: ``size`` is only the dummy input."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    w = jnp.full((1, cfg.styles), 1.0 / cfg.styles, jnp.float32)
    # jitted: eager init dispatches (and compiles) every op one at a time, which takes a minute
    return jax.jit(lambda k: FastNet(cfg).init(k, x, w)["params"])(key)


def _style_rows(cfg: FastNetConfig, style_weights, batch: int) -> jax.Array | None:
    """Style weights as (B, S) rows: None for a single-style network, (S,) broadcast over the batch."""
    if style_weights is None:
        if cfg.styles > 1:
            raise ValueError(f"this network holds {cfg.styles} styles; give style_weights of shape (S,) or (B, S)")
        return None
    w = jnp.asarray(style_weights, jnp.float32)
    if w.ndim == 1:
        w = jnp.broadcast_to(w, (batch, w.shape[0]))  # (B, S)
    if w.shape != (batch, cfg.styles):
        raise ValueError(f"style_weights must be (S,) or (B, S) with S={cfg.styles}, got shape {tuple(w.shape)}")
    return w


def apply(cfg: FastNetConfig, params: Any, images: jax.Array, style_weights=None) -> jax.Array:
    """(B, H, W, 3) in [0, 1] with H, W multiples of 4 -> (B, H, W, 3), the raw output.

    ``style_weights`` (S,) or (B, S): how much of each style (a multi-style network needs them;
    rows are used as given, e.g. one-hot, or a convex mix). A ``"residual"`` or ``"linear"`` output is not
    clipped here (training needs its gradient everywhere); :func:`stylize` clips.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) RGB, got shape {tuple(images.shape)}")
    if images.shape[1] % 4 or images.shape[2] % 4:
        raise ValueError(
            f"H and W must be multiples of 4 (two stride-2 stages), got {images.shape[1:3]}; use stylize()"
        )
    return FastNet(cfg).apply({"params": params}, images, _style_rows(cfg, style_weights, images.shape[0]))


def pad_to_multiple(images: jax.Array, multiple: int = 4) -> tuple[jax.Array, tuple[int, int]]:
    """Reflect-pad H and W up to multiples of ``multiple``: (B, H, W, C) -> ((B, H', W', C), (H, W))."""
    h, w = images.shape[1:3]
    ph, pw = (-h) % multiple, (-w) % multiple
    # split the padding so the image stays centred; 'symmetric' works for 1-px images where 'reflect' cannot
    mode = "reflect" if min(h, w) > 1 else "symmetric"
    padded = jnp.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)
    return padded, (h, w)


def stylize(cfg: FastNetConfig, params: Any, images: jax.Array, style_weights=None) -> jax.Array:
    """Any (B, H, W, 3) in [0, 1] -> (B, H, W, 3) in [0, 1]: pad to a multiple of 4 by reflection, run,
    crop back, clip."""
    padded, (h, w) = pad_to_multiple(images, 4)
    ph, pw = padded.shape[1] - h, padded.shape[2] - w
    out = apply(cfg, params, padded, style_weights)
    return jnp.clip(out[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w, :], 0.0, 1.0)


def mix_styles(cfg: FastNetConfig, params: Any, style_weights) -> tuple[FastNetConfig, Any]:
    """The single-style network that :func:`apply` with the (S,) ``style_weights`` computes: each
    conditional instance norm's scale and shift rows mixed by the weights (exact for a one-hot
    row, which picks that style). A single-style network is returned as it is."""
    if cfg.styles == 1:
        return cfg, params
    w = np.asarray(style_weights, np.float32)
    if w.shape != (cfg.styles,):
        raise ValueError(f"style_weights must be (S,) with S={cfg.styles}, got shape {w.shape}")
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, v in flat.items():
        if len(path) >= 2 and path[-2].startswith("ConditionalInstanceNorm_"):
            path = path[:-2] + ("InstanceNorm_" + path[-2].rsplit("_", 1)[1], path[-1])
            v = jnp.sum(jnp.asarray(w)[:, None] * v, axis=0)  # (S, C) -> (C,)
        out[path] = v
    return dataclasses.replace(cfg, styles=1), traverse_util.unflatten_dict(out)


def select_style(cfg: FastNetConfig, params: Any, index: int) -> tuple[FastNetConfig, Any]:
    """The single-style network of style ``index`` of a multi-style one (:func:`mix_styles` with a one-hot row)."""
    if not 0 <= index < cfg.styles:
        raise ValueError(f"style index {index} out of range for a network of {cfg.styles} styles")
    return mix_styles(cfg, params, np.eye(cfg.styles, dtype=np.float32)[index])


def param_count(params: Any) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- tiled inference

DEFAULT_TILE = 1024  # side (px) of the square each tile owns
STATS_SIDE = 1024  # longest side of the copy the instance-norm statistics are first taken from
# Inference memory per pixel of the (padded) image, from XLA's analysis of the compiled forward
# pass of the paper's network (width 32, 5 blocks; benchmarks/MEMORY.md); scaled by width.
INFERENCE_BYTES_PER_PIXEL = 520


def reach(cfg: FastNetConfig) -> int:
    """How far (input px) an output pixel's value looks: each conv adds its half-width at its
    resolution (9×9: 4; 3×3 at half and quarter resolution: 2 and 4 input pixels)."""
    return 4 + 1 + 2 + cfg.blocks * 2 * 4 + 2 + 1 + 4


def inference_bytes(cfg: FastNetConfig, h: int, w: int) -> int:
    """Estimated memory of one untiled forward pass over an (h, w) image (its activations and
    its input and output on the device), bytes."""
    return int((INFERENCE_BYTES_PER_PIXEL * cfg.width / 32 + 24) * (h + 3) * (w + 3))


# The full image on the host besides the network's own memory: the image, its padded copy and
# the result in float32, the 8-bit result; and the runtime with the compiled network.
HOST_BYTES_PER_PIXEL = 48
BASE_BYTES = 450 * 2**20


@dataclasses.dataclass(frozen=True)
class InferencePlan:
    """How :func:`stylize_tiled` (or, with ``tile=None``, :func:`stylize`) runs in a budget."""

    tile: int | None  # None: one untiled pass
    stats_side: int  # longest side of the copy the statistics are taken from
    bytes: int  # the estimated peak


def plan_inference(
    cfg: FastNetConfig, h: int, w: int, budget_bytes: int, tile: int | str | None = "auto", extra_bytes: int = 0
) -> InferencePlan | None:
    """How an (h, w) image is stylised within ``budget_bytes``, or None if it cannot be.

    ``tile``: ``"auto"`` (untiled if it fits, else the largest tile that does), ``None``
    (untiled only) or a tile side. ``extra_bytes``: memory the caller holds meanwhile (the
    decoded source of a resize). The full image stays on the host in any case; the statistics
    come from the largest copy that fits, at most the image itself.
    """
    host = BASE_BYTES + extra_bytes + HOST_BYTES_PER_PIXEL * h * w
    side = max(h, w)
    if tile in ("auto", None) and host + inference_bytes(cfg, h, w) <= budget_bytes:
        return InferencePlan(tile=None, stats_side=side, bytes=host + inference_bytes(cfg, h, w))
    if tile is None:
        return None
    halo = -(-reach(cfg) // 4) * 4
    tiles = [int(tile)] if tile != "auto" else []
    t = -(-side // 2 // 4) * 4
    while tile == "auto" and t >= 16:
        tiles.append(t)
        t = -(-(t // 2) // 4) * 4
    for t in tiles:
        window = min(h, t + 2 * halo), min(w, t + 2 * halo)
        need = host + inference_bytes(cfg, *window)
        if need > budget_bytes:
            continue
        stats_side = min(side, max(STATS_SIDE, t))
        while stats_side > 64:  # the largest copy, up to the image itself, whose untiled pass fits
            sh, sw = images.longest_shape((h, w), stats_side)
            if host + inference_bytes(cfg, sh, sw) <= budget_bytes:
                break
            stats_side = stats_side * 3 // 4
        return InferencePlan(tile=t, stats_side=stats_side, bytes=max(need, host + inference_bytes(cfg, sh, sw)))
    return None


def _stats_path(module) -> str:
    return "/".join(module.scope.path)


def _instance_norms(x, stats, mask):
    """A method interceptor for :func:`_forward`: every ``nn.InstanceNorm`` normalises with the
    statistics ``stats[path] = (mean, var)`` when given (else its own, as Flax computes them),
    and reports the masked sums Σm·x, Σm·x², Σm of its input for whole-image statistics."""
    sums: dict = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not isinstance(module, nn.InstanceNorm) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        (y,) = args  # (B, h, w, C)
        path = _stats_path(module)
        s = x.shape[1] // y.shape[1]  # this layer's stride relative to the input
        m = mask[:, ::s, ::s, :][:, : y.shape[1], : y.shape[2], :]  # (B, h, w, 1)
        yf = y.astype(jnp.float32)
        sums[path] = (jnp.sum(m * yf, axis=(1, 2)), jnp.sum(m * yf * yf, axis=(1, 2)), jnp.sum(m, axis=(1, 2)))
        if stats is None or path not in stats:
            return next_fun(*args, **kwargs)
        mean, var = stats[path]  # (B, C) each
        mul = jax.lax.rsqrt(var + module.epsilon)[:, None, None, :]
        params = module.variables.get("params", {})
        if module.use_scale:
            mul = mul * params["scale"]
        out = (y - mean[:, None, None, :]) * mul
        return out + params["bias"] if module.use_bias else out

    return interceptor, sums


@functools.partial(_xla.jit, static_argnums=0)
def _forward(cfg: FastNetConfig, params: Any, x: jax.Array, stats: dict | None, mask: jax.Array):
    """``apply`` on (B, H, W, 3) with the instance-norm statistics ``stats`` (None: the image's
    own); returns ``(out, sums)``, ``sums[path]`` the masked moments of each norm's input."""
    interceptor, sums = _instance_norms(x, stats, mask)
    with nn.intercept_methods(interceptor):
        out = apply(cfg, params, x)
    return out, dict(sums)


def _moments(sums: dict) -> dict:
    """{path: (mean, var)} from summed Σx, Σx², count, as Flax computes them (E[x²] − E[x]²)."""
    out = {}
    for path, (s1, s2, n) in sums.items():
        mean = s1 / n
        out[path] = (mean, jnp.maximum(0.0, s2 / n - mean * mean))
    return out


def _spans(n: int, step: int, window: int) -> list[tuple[int, int, int, int]]:
    """(own start, own stop, window start, window stop) along one side of n px: windows of one
    size (``window``, or n when smaller), starts multiples of 4, kept inside the image."""
    window = min(n, window)
    out = []
    for a in range(0, n, step):
        b = min(a + step, n)
        start = min(max(0, a - (window - step) // 2 // 4 * 4), n - window)
        out.append((a, b, start, start + window))
    return out


def stylize_tiled(
    cfg: FastNetConfig,
    params: Any,
    image: np.ndarray,
    tile: int = DEFAULT_TILE,
    stats_side: int = STATS_SIDE,
    exact: bool = False,
    style_weights=None,
) -> np.ndarray:
    """:func:`stylize` of one (H, W, 3) image of any size, in the memory of one tile.

    The image is padded as :func:`stylize` pads it, then cut into squares of side ``tile``;
    each runs inside a window that adds :func:`reach` pixels on every side (or stops at the
    image's edge), and only its own square is kept: given the same instance-norm statistics,
    a square's pixels are the ones the whole image gives, so there is no seam to blend.

    The statistics are the whole image's, never a tile's (its own would recolour each tile):
    those of a copy resized to longest side ``stats_side`` (the image itself when it is not
    larger: then the result is :func:`stylize`'s). ``exact=True`` then refines them on the
    full-size image: each pass runs the tiles with the current statistics and sums each
    norm's input over the tiles' own squares; a layer's statistics depend only on the layers
    before it, so after one pass per instance norm they are the untiled ones (a pass costs a
    full tiled run: 16 for the paper's network).

    ``style_weights`` (S,): a multi-style network's mix (:func:`mix_styles`).

    Returns (H, W, 3) float32 in [0, 1]. The full-size arrays stay on the host; the device
    holds one window at a time.
    """
    if cfg.styles > 1:
        if style_weights is None:
            raise ValueError(f"this network holds {cfg.styles} styles; give style_weights of shape (S,)")
        cfg, params = mix_styles(cfg, params, style_weights)
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    padded = np.asarray(pad_to_multiple(image[None], 4)[0])  # (1, H', W', 3)
    ph, pw = padded.shape[1] - h, padded.shape[2] - w
    step = max(4, -(-int(tile) // 4) * 4)
    halo = -(-reach(cfg) // 4) * 4
    rows = _spans(padded.shape[1], step, step + 2 * halo)
    cols = _spans(padded.shape[2], step, step + 2 * halo)

    whole = max(h, w) <= stats_side
    small = padded if whole else np.asarray(pad_to_multiple(images.resize_longest(image, stats_side)[None], 4)[0])
    _, sums = _forward(cfg, params, jnp.asarray(small), None, jnp.ones(small.shape[:3] + (1,), jnp.float32))
    stats = _moments(sums)

    def tiles_pass(stats, keep_output: bool):
        out = np.empty_like(padded) if keep_output else None
        total = None
        for a, b, r0, r1 in rows:
            for c, d, c0, c1 in cols:
                window = padded[:, r0:r1, c0:c1, :]  # (1, h_w, w_w, 3)
                mask = np.zeros(window.shape[:3] + (1,), np.float32)
                mask[:, a - r0 : b - r0, c - c0 : d - c0] = 1.0  # the square this tile owns
                y, part = _forward(cfg, params, jnp.asarray(window), stats, jnp.asarray(mask))
                if keep_output:
                    out[:, a:b, c:d, :] = np.asarray(y)[:, a - r0 : b - r0, c - c0 : d - c0, :]
                else:
                    total = part if total is None else jax.tree.map(jnp.add, total, part)
        return out, total

    if exact and not whole:
        for _ in range(len(stats)):  # pass k makes the first k norms' statistics exact
            stats = _moments(tiles_pass(stats, keep_output=False)[1])
    out, _ = tiles_pass(stats, keep_output=True)
    return np.clip(out[0, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w, :], 0.0, 1.0)  # as stylize() clips


# ----------------------------------------------------------------------------- export

MODEL_FORMAT = "nstyle-fastnet"
MODEL_VERSION = 2  # 2: FastNetConfig.output and .styles; version 1 files are single-style, tanh output
# what a version-1 header leaves out: the network those files were trained as
_VERSION_1 = {"output": "tanh", "styles": 1}


class ModelFileError(UserError, ValueError):
    """The file is missing, unreadable or not an exported nstyle FastNet model."""


def export_model(path, cfg: FastNetConfig, params: Any, meta: dict | None = None) -> None:
    """Write params + the network config to one ``.npz`` (no pickles), atomically.

    The file holds ``params/<path>`` arrays and a ``__model__`` JSON string with the format
    name, version, :class:`FastNetConfig` and ``meta`` (free-form: style images, steps, ...).
    """
    header = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "fastnet": dataclasses.asdict(cfg), "meta": meta or {}}
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {f"params/{k}": np.asarray(v) for k, v in flat.items()}
    arrays["__model__"] = np.array(json.dumps(header, sort_keys=True))
    _io.save_npz(path, arrays)


def load_model(path) -> tuple[FastNetConfig, dict, dict]:
    """``(cfg, params, meta)`` from an exported model; needs nothing of the training code."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "__model__" not in files:
                raise ModelFileError(
                    f"{path}: not an nstyle FastNet model (no '__model__' entry); export one with nstyle-train"
                )
            header = json.loads(str(z["__model__"]))
            flat = {k[len("params/") :]: z[k] for k in files if k.startswith("params/")}
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file; give the model.npz written by nstyle-train") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory; give the model.npz file inside it") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(
            f"{path}: not a readable nstyle model ({type(e).__name__}); give the model.npz written by nstyle-train"
        ) from None
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path}: format '{header.get('format')}' is not '{MODEL_FORMAT}'; give a model written by nstyle-train"
        )
    if int(header.get("version", 0)) > MODEL_VERSION:
        raise ModelFileError(
            f"{path}: model format version {header.get('version')} is newer than this nstyle ({MODEL_VERSION}); "
            "upgrade nstyle"
        )
    fields = dict(header["fastnet"])
    if int(header.get("version", 0)) < 2:
        fields = {**_VERSION_1, **fields}
    try:
        cfg = FastNetConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"{path}: a network config this nstyle cannot build ({e}); the file is damaged") from None
    params = jax.tree_util.tree_map(jnp.asarray, traverse_util.unflatten_dict(flat, sep="/"))
    # a wrong-shaped tree fails here, with the names, not deep inside a convolution
    want = jax.tree_util.tree_map(np.shape, jax.eval_shape(lambda: init(cfg, jax.random.key(0))))
    got = jax.tree_util.tree_map(np.shape, params)
    if want != got:
        raise ModelFileError(f"{path}: parameters do not match the network its config describes; the file is damaged")
    bad = sorted(k for k, v in flat.items() if not np.all(np.isfinite(v)))
    if bad:
        raise ModelFileError(
            f"{path}: parameter {bad[0]} holds NaN or infinity ({len(bad)} array(s)); the model is damaged or its "
            f"training diverged: export an earlier checkpoint or train again with a lower optim.lr"
        )
    return cfg, params, header.get("meta", {})
