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

Beyond the paper (``PerceptualLoss.style_loss``; docs/losses.md has the derivations):

- ``"gram"``     the paper's E_l above (the default).
- ``"meanstd"``  the AdaIN statistic: 1/N Σ_c (μ_c − μ̂_c)² + (σ_c − σ̂_c)², per-channel mean and
  standard deviation over positions (σ = √(var + ε)).
- ``"w2"``       the squared Wasserstein-2 distance between Gaussian fits N(μ, C) of the
  features, divided by N: (|μ − μ̂|² + tr C + tr Ĉ − 2 tr (Ĉ^½ C Ĉ^½)^½) / N, the matrix square
  root by eigendecomposition with a hand-written gradient (:func:`w2_layer_loss`).

For diagonal covariances the W2 distance is the mean-std one, so ``meanstd`` is ``w2`` blind to
the correlations between channels. Several style images blend as one pooled sample: the
target is the statistic of the mixture of their features, weighted by the blend (for the Gram
matrix, the blend of the mean Grams, as before). Spatial control (Gatys et al. 2017):
``Targets.masks`` gives each style image its own region of the output; every statistic is then
taken over that region, each position weighted by the square of its mask value
(:func:`style_term`). ``PerceptualLoss.normalize`` divides each layer's term by its value at
zero features (:func:`content_norm`, :func:`style_norm`), so that the weights mean the same at
any image size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

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


# ----------------------------------------------------------------- the family of style statistics

STYLE_LOSSES = ("gram", "meanstd", "w2")
LAYER_WEIGHTS = ("equal", "falling")  # w_l = 1/L (the paper's); w_l ∝ 4^-l (shallow layers first)
# σ = √(var + ε), ε = MEANSTD_EPS × the target's mean variance: σ's gradient stays finite in
# channels that never fire (var = 0)
MEANSTD_EPS = 1e-5
# S = Σ √(λ + τ) − √τ with τ = W2_EPS × (the target's mean variance)²: the square root stays
# differentiable at zero eigenvalues, and τ lies above float32's rounding of the eigenvalues
# (~1e-7 of the largest), so that rounding noise cannot steer the gradient
W2_EPS = 1e-4
_TINY = 1e-12  # floor of a statistic's scale (an all-zero target); far below any real feature's


class MeanStd(NamedTuple):
    """Per-channel mean and standard deviation of one layer's features (the AdaIN statistic)."""

    mean: jax.Array  # (B, N)
    std: jax.Array  # (B, N) √(var + eps)
    eps: jax.Array  # (B,) the variance ridge ε; a constant of the target (no gradient flows to it)


class Gaussian(NamedTuple):
    """A Gaussian fit N(μ̂, Ĉ) of one layer's features, as the W2 loss uses it."""

    mean: jax.Array  # (B, N) μ̂
    cov_sqrt: jax.Array  # (B, N, N) Ĉ^½, symmetric positive semi-definite
    tau: jax.Array  # (B,) the eigenvalue ridge τ; a constant of the target (no gradient flows to it)


def _flat(features: jax.Array, weights: jax.Array | None):
    """(B, h, w, N) features, optional (B, h, w) position weights -> (x (B, M, N), p (B, M) | None),
    ``p`` normalised to sum 1 per image (None: uniform)."""
    b, h, w, n = features.shape
    x = features.reshape(b, h * w, n)  # (B, M, N)
    if weights is None:
        return x, None
    wv = weights.reshape(weights.shape[0], h * w).astype(x.dtype)  # (B|1, M)
    return x, wv / jnp.maximum(jnp.sum(wv, axis=1, keepdims=True), _TINY)


def moments(features: jax.Array, weights: jax.Array | None = None, full: bool = True):
    """Mean (B, N) and central second moment of (B, h, w, N) features over the positions, each
    weighted by ``weights`` (B, h, w) (None: equally): the covariance (B, N, N) if ``full``,
    else the variances (B, N). Centred before the products (float32 would lose small variances
    of large means in E[ffᵀ] − μμᵀ)."""
    x, p = _flat(features, weights)
    hi = jax.lax.Precision.HIGHEST
    if p is None:
        mean = jnp.mean(x, axis=1)  # (B, N)
        xc = (x - mean[:, None]) * (1.0 / np.sqrt(x.shape[1]))
    else:
        mean = jnp.einsum("bm,bmn->bn", p, x, precision=hi)
        xc = (x - mean[:, None]) * jnp.sqrt(p)[..., None]
    if full:
        return mean, jnp.einsum("bmi,bmj->bij", xc, xc, precision=hi)
    return mean, jnp.sum(xc * xc, axis=1)


def weighted_mean_gram(features: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Σ_m p_m f_m f_mᵀ, p = weights / Σ weights: the mean Gram matrix over a region, (B, N, N);
    :func:`mean_gram` when ``weights`` is None."""
    if weights is None:
        return mean_gram(features)
    x, p = _flat(features, weights)
    xw = x * jnp.sqrt(p)[..., None]
    return jnp.einsum("bmi,bmj->bij", xw, xw, precision=jax.lax.Precision.HIGHEST)


def meanstd_layer_loss(features: jax.Array, target: MeanStd, weights: jax.Array | None = None) -> jax.Array:
    """1/N Σ_c (μ_c − μ̂_c)² + (σ_c − σ̂_c)², σ = √(var + ε): (B, h, w, N), MeanStd (B|1, ...) -> (B,).

    The mean squared error of AdaIN's statistics (Huang & Belongie 2017), which is also the
    squared W2 distance between the diagonal Gaussian fits, divided by N. ``weights`` (B, h, w)
    weight the positions (a region). Plain autodiff: nothing in it is singular.
    """
    mean, var = moments(features, weights, full=False)  # (B, N), (B, N)
    std = jnp.sqrt(var + target.eps[:, None])
    return jnp.mean((mean - target.mean) ** 2 + (std - target.std) ** 2, axis=-1)


def w2_layer_loss(features: jax.Array, target: Gaussian, weights: jax.Array | None = None) -> jax.Array:
    """Squared Wasserstein-2 distance between Gaussian fits, divided by N: (B, h, w, N) -> (B,).

    E = (|μ − μ̂|² + tr C + tr Ĉ − 2 S) / N with S = Σ_i √(λ_i + τ) − √τ over the eigenvalues λ of
    Ĉ^½ C Ĉ^½ (S = tr (Ĉ^½ C Ĉ^½)^½ at τ = 0); C is the covariance of the features over the
    positions (weighted by ``weights`` (B, h, w) if given) and tr Ĉ = |Ĉ^½|²_F.

    With X̃ the centred features scaled by √p (p the normalised weights; X̃ᵀX̃ = C) and
    B = X̃ Ĉ^½ (M × N), the λ are the eigenvalues of BᵀB (N × N) or, the same non-zero ones, of
    BBᵀ (M × M): whichever is smaller (deep layers of small images have fewer positions than
    channels). The gradient is written out (a ``jax.custom_vjp``): with H = (BᵀB + τI)^-½,
    ∂E/∂F = (2/N) [p ⊙ (F − μ)(I − Ĉ^½ H Ĉ^½) + p (μ − μ̂)ᵀ]. It never divides by a difference of
    eigenvalues and H ≤ 1/√τ, so it is finite at repeated and zero eigenvalues, where autodiff
    of ``eigh`` is not. The target's μ̂ and Ĉ^½ get their exact gradients, τ and the weights none.
    Reverse mode only.
    """
    return _w2(features, target.mean, target.cov_sqrt, target.tau, weights)


def _w2_fwd(features, mean_t, cov_sqrt, tau, weights):
    b, h, w, n = features.shape
    m = h * w
    hi = jax.lax.Precision.HIGHEST
    x, p = _flat(features, weights)  # (B, M, N), (B|1, M) | None
    if p is None:
        mean = jnp.mean(x, axis=1)  # (B, N)
        sq = jnp.full((1, 1, 1), 1.0 / np.sqrt(m), x.dtype)  # √p, broadcast
    else:
        mean = jnp.einsum("bm,bmn->bn", p, x, precision=hi)
        sq = jnp.sqrt(p)[..., None]  # (B|1, M, 1)
    xc = x - mean[:, None]  # (B, M, N)
    xw = xc * sq  # X̃, X̃ᵀX̃ = C
    bm = jnp.einsum("bmi,bij->bmj", xw, cov_sqrt, precision=hi)  # (B, M, N) B = X̃ Ĉ^½
    small_m = m < n
    if small_m:
        k = jnp.einsum("bmi,bki->bmk", bm, bm, precision=hi)  # (B, M, M) BBᵀ
    else:
        k = jnp.einsum("bmi,bmj->bij", bm, bm, precision=hi)  # (B, N, N) BᵀB
    lam, vec = jnp.linalg.eigh(k)  # (B, K), (B, K, K)
    root = jnp.sqrt(jnp.maximum(lam, 0.0) + tau[:, None])  # (B, K) rounding may leave λ slightly < 0
    s = jnp.sum(root - jnp.sqrt(tau)[:, None], axis=-1)  # (B,)
    dmu = mean - mean_t  # (B, N)
    tr_c = jnp.sum(xw * xw, axis=(1, 2))
    tr_t = jnp.sum(cov_sqrt * cov_sqrt, axis=(1, 2))
    value = (jnp.sum(dmu * dmu, axis=-1) + tr_c + tr_t - 2.0 * s) / n
    shapes = (features.shape, mean_t.shape, cov_sqrt.shape, tau.shape, None if weights is None else weights.shape)
    return value, (xc, sq, xw, bm, cov_sqrt, vec, root, dmu, small_m, shapes)


def _w2_bwd(res, g):
    xc, sq, xw, bm, cov_sqrt, vec, root, dmu, small_m, shapes = res
    f_shape, mean_shape, sqrt_shape, tau_shape, w_shape = shapes
    hi = jax.lax.Precision.HIGHEST
    n = xc.shape[-1]
    hmat = jnp.einsum("bik,bk,bjk->bij", vec, 1.0 / root, vec, precision=hi)  # (B, K, K) (K + τI)^-½
    if small_m:  # ∂S/∂B = H_M B = B H_N: the same matrix from either side
        ds = jnp.einsum("bmk,bkn->bmn", hmat, bm, precision=hi)
    else:
        ds = jnp.einsum("bmi,bij->bmj", bm, hmat, precision=hi)  # (B, M, N)
    scale = (2.0 * g / n)[:, None, None]  # (B, 1, 1)
    back = jnp.einsum("bmi,bji->bmj", ds, cov_sqrt, precision=hi)  # ∂S/∂B (Ĉ^½)ᵀ: (B, M, N)
    p = sq * sq  # (B|1, M|1, 1)
    df = scale * (p * xc - sq * back + p * dmu[:, None, :])  # centring adds nothing: Σ_m p_m X̃ (...) = 0
    d_mean = -scale[:, 0] * dmu  # (B, N)
    d_sqrt = scale * (cov_sqrt - jnp.einsum("bmi,bmj->bij", xw, ds, precision=hi))  # (B, N, N)
    if mean_shape[0] != d_mean.shape[0]:  # a (1, ...) target broadcast over the batch
        d_mean = jnp.sum(d_mean, axis=0, keepdims=True)
    if sqrt_shape[0] != d_sqrt.shape[0]:
        d_sqrt = jnp.sum(d_sqrt, axis=0, keepdims=True)
    d_w = None if w_shape is None else jnp.zeros(w_shape, xc.dtype)
    return df.reshape(f_shape), d_mean, d_sqrt, jnp.zeros(tau_shape, xc.dtype), d_w


@jax.custom_vjp
def _w2(features, mean_t, cov_sqrt, tau, weights):
    return _w2_fwd(features, mean_t, cov_sqrt, tau, weights)[0]


_w2.defvjp(_w2_fwd, _w2_bwd)


def _sqrtm_psd(c: jax.Array) -> jax.Array:
    """Symmetric square root of (B, N, N) positive semi-definite matrices (eigenvalues < 0 from
    rounding count as 0)."""
    lam, vec = jnp.linalg.eigh(c)
    return jnp.einsum("bik,bk,bjk->bij", vec, jnp.sqrt(jnp.maximum(lam, 0.0)), vec, precision=jax.lax.Precision.HIGHEST)


def style_statistic(kind: str, features: jax.Array, weights: jax.Array | None = None):
    """What is blended of one style image at one layer: the mean Gram matrix (``gram``), or the
    mean and the central second moment (variances for ``meanstd``, covariance for ``w2``)."""
    if kind == "gram":
        return weighted_mean_gram(features, weights)
    return moments(features, weights, full=kind == "w2")


def blend_statistics(kind: str, stats: Sequence, blend) -> Any:
    """The statistic of the mixture of several images' features, image k weighted by
    ``blend[k]`` (summing to 1): the blended mean Gram matrix; for the moments, the mixture's
    mean Σ w_k μ_k and central moment Σ w_k (C_k + (μ_k − μ)(μ_k − μ)ᵀ) (its diagonal for
    ``meanstd``)."""
    if kind == "gram":
        out = None
        for k, g in enumerate(stats):
            g = blend[k] * g
            out = g if out is None else out + g
        return out
    mean = sum(blend[k] * m for k, (m, _) in enumerate(stats))
    cov = None
    for k, (m, c) in enumerate(stats):
        d = m - mean  # (B, N)
        spread = d * d if c.ndim == 2 else d[:, :, None] * d[:, None, :]
        term = blend[k] * (c + spread)
        cov = term if cov is None else cov + term
    return mean, cov


def make_target(kind: str, stat) -> Any:
    """A layer's target from its (blended) statistic: the mean Gram matrix itself, a
    :class:`MeanStd` or a :class:`Gaussian` (square root by eigendecomposition, once)."""
    if kind == "gram":
        return stat
    mean, cov = stat
    n = mean.shape[-1]
    if kind == "meanstd":
        eps = jnp.maximum(MEANSTD_EPS * jnp.mean(cov, axis=-1), _TINY)  # (B,)
        return MeanStd(mean=mean, std=jnp.sqrt(cov + eps[:, None]), eps=eps)
    var = jnp.trace(cov, axis1=-2, axis2=-1) / n  # (B,) mean variance
    return Gaussian(mean=mean, cov_sqrt=_sqrtm_psd(cov), tau=jnp.maximum(W2_EPS * var * var, _TINY))


def style_layer_term(kind: str, features: jax.Array, target, weights: jax.Array | None = None) -> jax.Array:
    """One layer's style loss of the given kind, (B, h, w, N) against ``target`` -> (B,);
    ``weights`` (B, h, w) restrict the statistic to a weighted region (Gram: Σ p_m f_m f_mᵀ
    against the target, which is METHOD.md's E_l with G normalised by the region's size)."""
    if kind == "gram":
        if weights is None:
            return style_layer_loss(features, target)
        _, p = _flat(features, weights)  # (B, M)
        m = features.shape[1] * features.shape[2]
        # √(p M) f_m: its mean Gram over all M positions is Σ_m p_m f_m f_mᵀ; the custom VJP still applies
        scaled = features * jnp.sqrt(p * m).reshape(p.shape[0], *features.shape[1:3], 1)
        return style_layer_loss(scaled, target)
    if kind == "meanstd":
        return meanstd_layer_loss(features, target, weights)
    if kind == "w2":
        return w2_layer_loss(features, target, weights)
    raise ValueError(f"unknown style loss '{kind}' (expected one of {', '.join(STYLE_LOSSES)})")


def style_norm(kind: str, target) -> jax.Array:
    """The style term at zero features, the size of the target statistic: (B,).

    Gram ΣÂ²/(4N²); mean-std 1/N Σ μ̂² + (σ̂ − √ε)²; W2 (|μ̂|² + tr Ĉ)/N. Dividing by it makes each
    layer's term a relative error, near 1 for an image far from the style and 0 at it.
    """
    if kind == "gram":
        n = target.shape[-1]
        v = jnp.sum(target * target, axis=(-2, -1)) / (4.0 * n * n)
    elif kind == "meanstd":
        v = jnp.mean(target.mean**2 + (target.std - jnp.sqrt(target.eps)[:, None]) ** 2, axis=-1)
    else:
        n = target.mean.shape[-1]
        v = (jnp.sum(target.mean**2, axis=-1) + jnp.sum(target.cov_sqrt**2, axis=(-2, -1))) / n
    return jnp.maximum(v, _TINY)


def content_norm(target: jax.Array) -> jax.Array:
    """½ Σ P², the content term at zero features: (B|1, h, w, N) -> (B|1,)."""
    return jnp.maximum(0.5 * jnp.sum(target * target, axis=(1, 2, 3)), _TINY)


def style_term(
    kind: str, features: jax.Array, target, mask: jax.Array | None = None, normalize: bool = False
) -> jax.Array:
    """A layer's style term: (B, h, w, N) -> (B,).

    Without ``mask``: :func:`style_layer_term` (divided by :func:`style_norm` if ``normalize``).
    With a ``mask`` (B|1, h, w, R) (the layer's region masks, :func:`layer_masks`) and ``target``
    leaves (B|1, R, ...) (one target per region): Σ_r a_r E_r, where E_r is the loss over region
    r, each position weighted by m_r², against target r, and a_r = Σ m_r² / M its share of the
    positions. Each region's statistic is normalised by the region's size (a guided Gram
    matrix, Gatys et al. 2017), and a_r gives each pixel the pull it would have in a
    whole-image run: a mask of ones is exactly the plain loss. A position outside region r
    (m_r = 0) gets no gradient from E_r.
    """
    if mask is None:
        e = style_layer_term(kind, features, target)
        return e / jax.lax.stop_gradient(style_norm(kind, target)) if normalize else e
    m = features.shape[1] * features.shape[2]
    total = jnp.zeros(features.shape[:1], features.dtype)
    for r in range(mask.shape[-1]):
        w = mask[..., r] * mask[..., r]  # (B|1, h, w)
        t = jax.tree.map(lambda a, r=r: a[:, r], target)
        e = style_layer_term(kind, features, t, jnp.broadcast_to(w, features.shape[:3]))
        if normalize:
            e = e / jax.lax.stop_gradient(style_norm(kind, t))
        total = total + jnp.sum(w, axis=(1, 2)) / m * e
    return total


def layer_masks(masks, layers: Sequence[str], arch: str, pooling: str) -> dict:
    """Region masks (B, H, W, R) at the image's resolution -> {layer: (B, h, w, R)} at each
    layer's: 2×2 means at every pooling stage of the network (the same windows, ``VALID``), so a
    layer's mask is the share of each position's pooled window that lies in the region.
    numpy in, numpy out (or JAX in a trace)."""
    order = vgg.stage_order(arch)
    wanted: dict[str, list[str]] = {}
    for name in layers:
        wanted.setdefault(vgg.canonical(name, arch), []).append(name)
    last = vgg.deepest(layers, arch)
    x, out = masks, {}
    for stage in order:
        if stage.startswith("pool"):
            b, h, w, r = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, r).mean(axis=(2, 4))
        for name in wanted.get(stage, ()):
            out[name] = x
        if stage == last:
            break
    return out


def layer_weights(preset: str, n: int) -> tuple[float, ...]:
    """Style-layer weights for ``n`` layers: ``equal`` 1/n each (the paper's), ``falling``
    ∝ 4^-l (256, 64, 16, 4, 1 for five layers), normalised to sum 1."""
    if preset == "equal":
        return tuple([1.0 / max(n, 1)] * n)
    if preset == "falling":
        raw = [4.0 ** (n - 1 - i) for i in range(n)]
        return tuple(r / sum(raw) for r in raw)
    raise ValueError(f"unknown layer weights '{preset}' (expected one of {', '.join(LAYER_WEIGHTS)})")


def tv_loss(images: jax.Array) -> jax.Array:
    """Total variation Σ (x_{i+1,j} − x_ij)² + (x_{i,j+1} − x_ij)² per image: (B, H, W, C) -> (B,)."""
    dh = images[:, 1:, :, :] - images[:, :-1, :, :]
    dw = images[:, :, 1:, :] - images[:, :, :-1, :]
    return jnp.sum(dh * dh, axis=(1, 2, 3)) + jnp.sum(dw * dw, axis=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
    """Which layers enter the loss, with which weights. Hashable: a static jit argument.

    Defaults are the paper's style-transfer settings (content conv4_2; style conv1_1 …
    conv5_1 with w_l = 1/5; α/β = 1e-3; Gram matrices; average pooling).

    ``style_loss`` picks the style statistic (:data:`STYLE_LOSSES`); ``pooling`` and
    ``padding`` are the VGG network's (:func:`nstyle.vgg.features`). ``normalize`` divides
    each content layer's term by ½ΣP² and each style layer's by its value at zero features
    (:func:`content_norm`, :func:`style_norm`; TV becomes a mean over the pixels): every term is
    then a relative error, the same size at any resolution, for any style statistic
    (:data:`NORMALIZED` holds weights for it).
    """

    content_layers: tuple[str, ...] = ("conv4_2",)
    content_weights: tuple[float, ...] = (1.0,)
    style_layers: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    style_weights: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
    alpha: float = 1.0
    beta: float = 1e3
    tv_weight: float = 0.0
    pooling: str = "avg"
    style_loss: str = "gram"
    padding: str = "zero"
    normalize: bool = False

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
        if self.padding not in vgg.PADDINGS:
            raise ValueError(f"unknown padding '{self.padding}' (expected one of {', '.join(vgg.PADDINGS)})")
        if self.style_loss not in STYLE_LOSSES:
            raise ValueError(f"unknown style loss '{self.style_loss}' (expected one of {', '.join(STYLE_LOSSES)})")

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
    # {layer: target} of the (blended) style images, per PerceptualLoss.style_loss: a mean Gram
    # matrix Â (B|1, N, N), a MeanStd or a Gaussian; with masks, one per region: leaves (B|1, R, ...)
    style: dict
    masks: dict | None = None  # {layer: (B|1, h, w, R)} region masks (spatial control), or None


def content_targets(params: vgg.VGGParams, content: jax.Array, loss: PerceptualLoss, tile: int | None = None) -> dict:
    """{layer: P} for the content image(s) (B, H, W, 3); ``tile``: computed tile by tile
    (:func:`nstyle.vgg.features_tiled`, the same values in one tile's memory)."""
    if not loss.uses_content:
        return {}
    if tile is not None:
        return vgg.features_tiled(params, content, loss.content_layers, loss.pooling, tile, loss.padding)
    return vgg.features(params, content, loss.content_layers, loss.pooling, padding=loss.padding)


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
    masks: Sequence[jax.Array | None] | None = None,
    separate: bool = False,
    tile: int | None = None,
) -> dict:
    """{layer: target (1, ...)}: the statistic of the style image(s), per ``loss.style_loss``.

    ``styles`` are (1, H_k, W_k, 3), each at its own size (style scale); ``blend`` holds one
    weight per image (default equal), normalised by :func:`blend_weights`; inside a trace it
    is used as given, already normalised. Several images give the statistic of the mixture of
    their features (:func:`blend_statistics`); for Gram matrices the blended mean Gram, whose
    gradient is that of the blend of the per-image losses. ``masks``: per image None or a
    (1, H_k, W_k) region of it (weights in [0, 1]) that its statistics are taken over.
    ``separate``: no blend; each leaf gets a region axis, (1, K, ...), target k from image k
    (spatial control). Jittable (one VGG pass per image). ``tile``: Gram matrices of unmasked
    images summed over tiles (:func:`nstyle.vgg.map_tiles`), in one tile's memory.
    """
    if not loss.uses_style:
        return {}
    kind = loss.style_loss
    w = blend if isinstance(blend, jax.core.Tracer) else blend_weights(blend, len(styles))
    per_layer: dict = {layer: [] for layer in loss.style_layers}
    for k, image in enumerate(styles):
        mask = masks[k] if masks is not None else None
        if tile is not None and kind == "gram" and mask is None:
            grams = _tiled_mean_grams(params, image, loss.style_layers, loss.pooling, tile, loss.padding)
            for layer in loss.style_layers:
                per_layer[layer].append(grams[layer])
            continue
        feats = vgg.features(params, image, loss.style_layers, loss.pooling, padding=loss.padding)
        lm = layer_masks(mask[..., None], loss.style_layers, params.arch, loss.pooling) if mask is not None else {}
        for layer in loss.style_layers:
            wts = lm[layer][..., 0] ** 2 if mask is not None else None  # (1, h, w) position weights m²
            per_layer[layer].append(style_statistic(kind, feats[layer], wts))
    out: dict = {}
    for layer, stats in per_layer.items():
        if separate:
            parts = [make_target(kind, st) for st in stats]
            out[layer] = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *parts)  # (1, K, ...)
        else:
            out[layer] = make_target(kind, blend_statistics(kind, stats, w))
    return out


def tiled_supported(loss: PerceptualLoss, masked: bool) -> bool:
    """Whether the tiled memory mode computes this loss: a Gram style loss (a sum over
    positions), without region masks."""
    return not (loss.uses_style and (loss.style_loss != "gram" or masked))


def _tiled_mean_grams(params, image, layers, pooling, tile, padding="zero") -> dict:
    parts = vgg.map_tiles(params, image, layers, lambda name, f, where: gram(f), pooling, tile, padding=padding)
    shapes = jax.eval_shape(lambda x: vgg.features(params, x, layers, pooling, padding), image)
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


def _tiled_terms(params, images, targets, content_layers, style_layers, pooling, tile, padding="zero") -> dict:
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
    parts = vgg.map_tiles(params, images, layers, part, pooling, tile, recompute=True, padding=padding)
    sums = jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *parts)
    shapes = jax.eval_shape(lambda x: vgg.features(params, x, layers, pooling, padding), images)
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
    in the memory of one tile of side ``tile`` px (default :data:`nstyle.vgg.DEFAULT_TILE`; Gram
    style loss without masks only, :func:`tiled_supported`), ``"remat_bf16"`` close values.
    Returns ``(total (B,), aux)`` where ``aux`` holds the unweighted per-layer terms
    (``content/conv4_2``, ``style/conv1_1``, ``tv``; normalised ones with ``loss.normalize``)
    and the weighted sums ``content``, ``style``, each (B,). ``targets.masks`` (spatial
    control): see :func:`style_term`.
    """
    w = {"alpha": loss.alpha, "beta": loss.beta, "tv_weight": loss.tv_weight, **(weights or {})}
    content_layers = loss.content_layers if loss.uses_content else ()
    style_layers = loss.style_layers if loss.uses_style else ()
    masks = targets.masks or {}

    def terms(layer: str, f: jax.Array) -> dict:
        """The loss terms read at one layer, computed where the network computes ``f``."""
        out = {}
        if layer in content_layers:
            out["content"] = content_loss(f, targets.content[layer])
        if layer in style_layers:
            if loss.style_loss == "gram" and not loss.normalize and layer not in masks:
                out["style"] = style_layer_loss(f, targets.style[layer])
            else:
                out["style"] = style_term(loss.style_loss, f, targets.style[layer], masks.get(layer), loss.normalize)
        return out

    if memory == "tiled":
        if not tiled_supported(loss, bool(masks)):
            raise ValueError("the tiled memory mode computes Gram style losses without masks only")
        at = _tiled_terms(
            params, images, targets, content_layers, style_layers, loss.pooling, tile or vgg.DEFAULT_TILE, loss.padding
        )
        if loss.normalize:  # the tiles' sums are the plain terms; normalised as style_term does
            for layer in style_layers:
                norm = jax.lax.stop_gradient(style_norm("gram", targets.style[layer]))
                at[layer]["style"] = at[layer]["style"] / norm
    else:
        at = vgg.map_features(params, images, loss.layers, terms, loss.pooling, memory, loss.padding)
    batch = images.shape[0]
    aux: dict = {}
    content = jnp.zeros((batch,), images.dtype)
    for layer, c in zip(content_layers, loss.content_weights):
        term = at[layer]["content"]
        if loss.normalize:
            term = term / jax.lax.stop_gradient(content_norm(targets.content[layer]))
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
    if loss.normalize:
        tv = tv / float(np.prod(images.shape[1:]))  # a mean over the pixel values
    aux.update(content=content, style=style, tv=tv)
    total = w["alpha"] * content + w["beta"] * style + w["tv_weight"] * tv
    return total, aux


# Weights for PerceptualLoss(normalize=True): every term is then a relative error. β = 4 keeps
# the content as the paper's weights do at 256 px (chelsea × ihc, 100 L-BFGS steps: LPIPS to
# the photo 0.49 for both; β = 3 gives 0.48, β = 5 0.50), and holds at other sizes (docs/losses.md).
NORMALIZED = PerceptualLoss(normalize=True, alpha=1.0, beta=4.0)
