"""The losses of Gatys et al. (and Johnson et al.), exactly as in METHOD.md.

Per-layer functions return one value per image, shape (B,); the caller reduces.
Notation: F is the (B, h, w, N) response of the generated image at one layer,
M = h·w positions, N channels; features are NHWC, so the paper's F^l (N × M) is
``F.reshape(B, M, N)`` transposed.

- content:  ½ Σ_ij (F − P)²
- Gram:     G = F Fᵀ,   G_ij = Σ_k F_ik F_jk                       (B, N, N)
- style:    E = 1/(4 N² M²) Σ_ij (G − A)²
- total:    α Σ_l c_l L_content,l + β Σ_l w_l E_l (+ γ TV)

Style targets are stored as *mean* Gram matrices Â = A / M_a (A divided by the number of
positions of the style image). Then E = 1/(4 N²) Σ (G/M − Â)², which is METHOD.md's E_l
exactly when the style and generated images have the same size, and stays meaningful
when they do not (style scale, several style images) — and keeps float32 sums small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nstyle import vgg


def gram(features: jax.Array) -> jax.Array:
    """Unnormalised Gram matrix G = F Fᵀ of (B, h, w, N) features -> (B, N, N), float32.

    One product of the features with themselves, read in place (no transposed copy); bfloat16
    features are accumulated in float32.
    """
    b, h, w, n = features.shape
    f = features.reshape(b, h * w, n)  # (B, M, N)
    return jnp.einsum("bmi,bmj->bij", f, f, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def mean_gram(features: jax.Array) -> jax.Array:
    """G / M: the Gram matrix divided by the number of positions -> (B, N, N)."""
    b, h, w, n = features.shape
    return gram(features) / (h * w)


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    """½ Σ (F − P)² per image: (B, h, w, N), (B|1, h, w, N) -> (B,)."""
    d = features - target
    return 0.5 * jnp.sum(d * d, axis=(1, 2, 3))


def style_layer_loss(features: jax.Array, target_mean_gram: jax.Array) -> jax.Array:
    """E_l = 1/(4 N² M²) Σ (G − A)² per image, with the target given as Â = A / M_a.

    (B, h, w, N), (B|1, N, N) -> (B,)

    Its gradient is METHOD.md's analytic one, written out (a ``jax.custom_vjp``):
    ∂E/∂F = 1/(N² M) · F (G/M − Â)_sym, one (M × N)·(N × N) product per image, where autodiff
    of the Gram matrix gives two products and a transpose. ``_style_layer_loss_autodiff`` is
    the same value left to autodiff; the tests check the two gradients agree. Reverse mode
    only: no jvp.
    """
    return _style_layer_loss(features, target_mean_gram)


def _style_layer_loss_autodiff(features: jax.Array, target_mean_gram: jax.Array) -> jax.Array:
    n = features.shape[-1]
    d = mean_gram(features) - target_mean_gram  # (B, N, N) = (G − A) / M
    return jnp.sum(d * d, axis=(1, 2)) / (4.0 * n * n)


@jax.custom_vjp
def _style_layer_loss(features: jax.Array, target_mean_gram: jax.Array) -> jax.Array:
    return _style_layer_loss_autodiff(features, target_mean_gram)


def _style_layer_loss_fwd(features, target_mean_gram):
    b, h, w, n = features.shape
    d = mean_gram(features) - target_mean_gram  # (B, N, N) = (G − A) / M
    f = features.reshape(b, h * w, n)  # (B, M, N), for the backward product
    return jnp.sum(d * d, axis=(1, 2)) / (4.0 * n * n), (f, d, features.shape, target_mean_gram.shape)


def _style_layer_loss_bwd(res, g):
    f, d, shape, target_shape = res  # (B, M, N), (B, N, N)
    b, m, n = f.shape
    # E = Σ D²/(4N²) with D = FᵀF/M − Â: dE/dF = F (D + Dᵀ)/(2 N² M), dE/dÂ = −D/(2N²)
    scale = g / (n * n)  # (B,)
    d_sym = (d + jnp.swapaxes(d, 1, 2)) * (0.5 * scale / m)[:, None, None]
    # in the features' own dtype (bfloat16 in the remat_bf16 mode), accumulated in float32
    df = jnp.einsum(
        "bmi,bij->bmj",
        f,
        d_sym.astype(f.dtype),
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    dt = -d * (0.5 * scale)[:, None, None]
    if target_shape[0] != b:  # a (1, N, N) target broadcast over the batch
        dt = jnp.sum(dt, axis=0, keepdims=True)
    return df.reshape(shape).astype(f.dtype), dt.astype(d.dtype)


_style_layer_loss.defvjp(_style_layer_loss_fwd, _style_layer_loss_bwd)


def tv_loss(images: jax.Array) -> jax.Array:
    """Total variation Σ (x_{i+1,j} − x_ij)² + (x_{i,j+1} − x_ij)² per image: (B, H, W, C) -> (B,)."""
    dh = images[:, 1:, :, :] - images[:, :-1, :, :]
    dw = images[:, :, 1:, :] - images[:, :, :-1, :]
    return jnp.sum(dh * dh, axis=(1, 2, 3)) + jnp.sum(dw * dw, axis=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
    """Which layers enter the loss, with which weights. Hashable: a static jit argument.

    Defaults are the paper's style-transfer settings (content conv4_2; style conv1_1 …
    conv5_1 with w_l = 1/5; α/β = 1e-3).
    """

    content_layers: tuple[str, ...] = ("conv4_2",)
    content_weights: tuple[float, ...] = (1.0,)
    style_layers: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    style_weights: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    alpha: float = 1.0
    beta: float = 1e3
    tv_weight: float = 0.0
    pooling: str = "avg"

    def __post_init__(self):
        if len(self.content_layers) != len(self.content_weights):
            raise ValueError(
                f"{len(self.content_layers)} content layers but {len(self.content_weights)} content weights"
            )
        if len(self.style_layers) != len(self.style_weights):
            raise ValueError(f"{len(self.style_layers)} style layers but {len(self.style_weights)} style weights")
        for what, v in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("tv_weight", self.tv_weight),
            *[("content weight", w) for w in self.content_weights],
            *[("style weight", w) for w in self.style_weights],
        ]:
            if v < 0:
                raise ValueError(f"{what} must be >= 0, got {v}")
        if self.pooling not in vgg.POOLINGS:
            raise ValueError(f"unknown pooling '{self.pooling}' (expected one of {', '.join(vgg.POOLINGS)})")

    @property
    def uses_content(self) -> bool:
        return self.alpha > 0 and len(self.content_layers) > 0

    @property
    def uses_style(self) -> bool:
        return self.beta > 0 and len(self.style_layers) > 0

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the loss reads, each once, for one pass of :func:`vgg.features`."""
        names = (self.content_layers if self.uses_content else ()) + (self.style_layers if self.uses_style else ())
        return tuple(dict.fromkeys(names))


class Targets(NamedTuple):
    """What the generated image is compared with; a pytree of arrays."""

    content: dict  # {layer: (B|1, h, w, N)} responses P of the content image
    style: dict  # {layer: (B|1, N, N)} mean Gram matrices Â of the (blended) style images


def content_targets(params: vgg.VGGParams, content: jax.Array, loss: PerceptualLoss, tile: int | None = None) -> dict:
    """{layer: P} for the content image(s) (B, H, W, 3); ``tile``: computed tile by tile
    (:func:`nstyle.vgg.features_tiled`, the same values in one tile's memory)."""
    if not loss.uses_content:
        return {}
    if tile is not None:
        return vgg.features_tiled(params, content, loss.content_layers, loss.pooling, tile)
    return vgg.features(params, content, loss.content_layers, loss.pooling)


def blend_weights(blend: Sequence[float] | None, n: int) -> np.ndarray:
    """Style-blend weights for ``n`` style images, checked and normalised to sum 1: (n,) float32.

    ``None`` gives equal weights. Raises ``ValueError`` for a count mismatch, a negative or
    non-finite weight, or weights that are all zero.
    """
    if blend is None:
        return np.full((n,), 1.0 / n, np.float32)
    b = np.asarray(blend, np.float64).reshape(-1)
    if b.shape != (n,):
        raise ValueError(f"{n} style images but {b.size} blend weights")
    if not np.all(np.isfinite(b)) or np.any(b < 0) or not b.sum() > 0:
        raise ValueError(f"style blend weights must be finite, >= 0 and not all zero, got {list(blend)}")
    return (b / b.sum()).astype(np.float32)


def style_targets(
    params: vgg.VGGParams,
    styles: Sequence[jax.Array],
    loss: PerceptualLoss,
    blend: jax.Array | np.ndarray | None = None,
    tile: int | None = None,
) -> dict:
    """{layer: Σ_k blend_k Â_k (1, N, N)}: the blended mean Gram matrices of the style image(s).

    ``styles`` are (1, H_k, W_k, 3), each at its own size (style scale); ``blend`` holds one
    weight per image (default equal), normalised by :func:`blend_weights`; inside a trace it
    is used as given, already normalised. Blending mean Gram matrices gives the same gradient
    as the blend of the per-image losses. Jittable (one VGG pass per image). ``tile``: each
    Gram matrix summed over tiles (:func:`nstyle.vgg.map_tiles`), in one tile's memory.
    """
    if not loss.uses_style:
        return {}
    w = blend if isinstance(blend, jax.core.Tracer) else blend_weights(blend, len(styles))
    out: dict = {}
    for k, image in enumerate(styles):
        if tile is None:
            grams = {
                layer: mean_gram(f) for layer, f in vgg.features(params, image, loss.style_layers, loss.pooling).items()
            }
        else:
            grams = _tiled_mean_grams(params, image, loss.style_layers, loss.pooling, tile)
        for layer in loss.style_layers:
            g = w[k] * grams[layer]  # (1, N, N)
            out[layer] = g if layer not in out else out[layer] + g
    return out


def _tiled_mean_grams(params, image, layers, pooling, tile) -> dict:
    parts = vgg.map_tiles(params, image, layers, lambda name, f, where: gram(f), pooling, tile)
    shapes = jax.eval_shape(lambda x: vgg.features(params, x, layers, pooling), image)
    return {name: sum(p[name] for p in parts) / (shapes[name].shape[1] * shapes[name].shape[2]) for name in layers}


@jax.custom_vjp
def _gram_sum(features: jax.Array) -> jax.Array:
    """:func:`gram` of part of a response, differentiated as one product F (g + gᵀ) (autodiff: two)."""
    return gram(features)


def _gram_sum_fwd(features):
    return gram(features), features


def _gram_sum_bwd(f, g):
    b, h, w, n = f.shape
    g_sym = (g + jnp.swapaxes(g, 1, 2)).astype(f.dtype)  # (B, N, N)
    df = jnp.einsum(
        "bmi,bij->bmj",
        f.reshape(b, h * w, n),
        g_sym,
        precision=jax.lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return (df.reshape(f.shape).astype(f.dtype),)


_gram_sum.defvjp(_gram_sum_fwd, _gram_sum_bwd)


def _tiled_terms(params, images, targets, content_layers, style_layers, pooling, tile) -> dict:
    """``{layer: {"content"|"style": (B,)}}`` as the plain pass gives them, summed tile by tile
    (:func:`nstyle.vgg.map_tiles` with recomputation): the content term is a sum over positions,
    and the style term a function of the Gram matrix, which is one."""

    def part(layer, f, where):  # f: the tile's own (B, h, w, N) of the response at layer
        out = {}
        if layer in content_layers:
            p = targets.content[layer][:, where[0], where[1], :]
            out["content"] = content_loss(f, p)
        if layer in style_layers:
            out["gram"] = _gram_sum(f)  # (B, N, N)
        return out

    layers = tuple(dict.fromkeys(content_layers + style_layers))
    parts = vgg.map_tiles(params, images, layers, part, pooling, tile, recompute=True)
    sums = jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *parts)
    shapes = jax.eval_shape(lambda x: vgg.features(params, x, layers, pooling), images)
    out = {}
    for layer in layers:
        out[layer] = {}
        if layer in content_layers:
            out[layer]["content"] = sums[layer]["content"]
        if layer in style_layers:
            _, h, w, n = shapes[layer].shape
            d = sums[layer]["gram"] / (h * w) - targets.style[layer]  # (B, N, N) = (G − A) / M
            out[layer]["style"] = jnp.sum(d * d, axis=(1, 2)) / (4.0 * n * n)
    return out


def perceptual_loss(
    params: vgg.VGGParams,
    images: jax.Array,
    targets: Targets,
    loss: PerceptualLoss,
    weights: Mapping[str, jax.Array] | None = None,
    memory: str = "plain",
    tile: int | None = None,
) -> tuple[jax.Array, dict]:
    """α L_content + β L_style + γ TV of ``images`` (B, H, W, 3) against ``targets``.

    ``weights`` may override ``alpha``/``beta``/``tv_weight`` with arrays of shape (B,)
    (a batch of loss weights, for batched sweeps). ``memory`` is how the VGG pass keeps its
    activations for a backward pass (:data:`nstyle.vgg.MEMORY_MODES`): ``"remat"`` gives the same
    values as ``"plain"`` in less memory, ``"tiled"`` the same values (to float32 summation order)
    in the memory of one tile of side ``tile`` px (default :data:`nstyle.vgg.DEFAULT_TILE`),
    ``"remat_bf16"`` close values. Returns
    ``(total (B,), aux)`` where ``aux`` holds the unweighted per-layer terms
    (``content/conv4_2``, ``style/conv1_1``, ``tv``) and the weighted sums ``content``,
    ``style``, each (B,).
    """
    w = {"alpha": loss.alpha, "beta": loss.beta, "tv_weight": loss.tv_weight, **(weights or {})}
    content_layers = loss.content_layers if loss.uses_content else ()
    style_layers = loss.style_layers if loss.uses_style else ()

    def terms(layer: str, f: jax.Array) -> dict:
        """The loss terms read at one layer, computed where the network computes ``f``."""
        out = {}
        if layer in content_layers:
            out["content"] = content_loss(f, targets.content[layer])
        if layer in style_layers:
            out["style"] = style_layer_loss(f, targets.style[layer])
        return out

    if memory == "tiled":
        at = _tiled_terms(params, images, targets, content_layers, style_layers, loss.pooling, tile or vgg.DEFAULT_TILE)
    else:
        at = vgg.map_features(params, images, loss.layers, terms, loss.pooling, memory)
    batch = images.shape[0]
    aux: dict = {}
    content = jnp.zeros((batch,), images.dtype)
    for layer, c in zip(content_layers, loss.content_weights):
        term = at[layer]["content"]
        aux[f"content/{layer}"] = term
        content = content + c * term
    style = jnp.zeros((batch,), images.dtype)
    for layer, sw in zip(style_layers, loss.style_weights):
        term = at[layer]["style"]
        aux[f"style/{layer}"] = term
        style = style + sw * term
    tv = (
        tv_loss(images)
        if loss.tv_weight > 0 or (weights and "tv_weight" in weights)
        else jnp.zeros((batch,), images.dtype)
    )
    aux.update(content=content, style=style, tv=tv)
    total = w["alpha"] * content + w["beta"] * style + w["tv_weight"] * tv
    return total, aux
