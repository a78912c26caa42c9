"""Colour preservation for style transfer (Gatys, Ecker, Bethge, Hertzmann, Shechtman 2017,
"Controlling Perceptual Factors in Neural Style Transfer", section 5).

Two ways to keep the content image's colours:

1. Colour histogram matching (§5.1): before transfer, map the style image's pixels linearly,
   x' = A (x − μ_s) + μ_c, so their mean and covariance equal the content image's::

       style = match_color_histogram(style, content, mode="chol")

2. Luminance-only transfer (§5.2): run style transfer on the luminance (Y of YIQ) alone,
   with the style luminance's mean/std matched to the content's, then put the content's
   colour channels (I, Q) back::

       content_y, style_y = luminance_only(content, style)   # (H, W, 3) grey images for VGG
       result_y = stylise(content_y, style_y)
       result = recombine_luminance(result_y, content)

All images are (…, 3) RGB in [0, 1]. The statistics are computed in float64 numpy: this is
preprocessing, done once per image, outside any jitted step.
"""

from __future__ import annotations

import numpy as np

# NTSC RGB -> YIQ (rows: Y, I, Q). Y's weights sum to 1, so a grey pixel has Y equal to its
# value and I = Q = 0. The inverse is computed, not rounded, so a round trip is exact.
RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ],
    dtype=np.float64,
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
COLOR_MODES = ("chol", "pca", "sym")


def _apply(x, matrix: np.ndarray):
    """(…, 3) @ matrixᵀ in x's own array library and float dtype (numpy or jax)."""
    dtype = x.dtype if np.issubdtype(np.dtype(x.dtype), np.floating) else np.float32
    return x.astype(dtype) @ matrix.T.astype(dtype)


def rgb_to_yiq(x):
    """(…, 3) RGB -> (…, 3) YIQ; works on numpy and jax arrays."""
    return _apply(x, RGB_TO_YIQ)


def yiq_to_rgb(x):
    """(…, 3) YIQ -> (…, 3) RGB (not clipped); works on numpy and jax arrays."""
    return _apply(x, YIQ_TO_RGB)


def _pixels(image) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    return arr.reshape(-1, 3)  # (N, 3)


def _sqrtm(cov: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Symmetric (inverse) square root of a symmetric positive-definite 3×3 matrix."""
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, 1e-12)
    d = vals ** (-0.5 if inverse else 0.5)
    return (vecs * d) @ vecs.T


def color_transfer_matrix(cov_s: np.ndarray, cov_c: np.ndarray, mode: str = "chol") -> np.ndarray:
    """A with A Σ_s Aᵀ = Σ_c, three ways (all give the same statistics, different looks).

    - ``"chol"``: A = L_c L_s⁻¹ with Cholesky factors Σ = L Lᵀ (the paper's first choice).
    - ``"pca"``: A = Σ_c^½ Σ_s^-½, symmetric square roots via eigen-decomposition (the
      paper's "image analogies" variant).
    - ``"sym"``: A = Σ_s^-½ (Σ_s^½ Σ_c Σ_s^½)^½ Σ_s^-½, the symmetric map that moves the
      pixels least (the Monge–Kantorovich linear transport).
    """
    if mode == "chol":
        return np.linalg.cholesky(cov_c) @ np.linalg.inv(np.linalg.cholesky(cov_s))
    if mode == "pca":
        return _sqrtm(cov_c) @ _sqrtm(cov_s, inverse=True)
    if mode == "sym":
        rs, rs_inv = _sqrtm(cov_s), _sqrtm(cov_s, inverse=True)
        return rs_inv @ _sqrtm(rs @ cov_c @ rs) @ rs_inv
    raise ValueError(f"unknown colour matching mode '{mode}' (expected one of {', '.join(COLOR_MODES)})")


def match_color_histogram(style, content, mode: str = "chol", eps: float = 1e-5, clip: bool = True) -> np.ndarray:
    """The style image recoloured so its pixels' mean and covariance equal the content's.

    Args:
      style: (H, W, 3) RGB in [0, 1], the image that is transformed.
      content: (h, w, 3) RGB in [0, 1], whose colour statistics are taken (any size).
      mode: ``"chol"``, ``"pca"`` or ``"sym"``; see :func:`color_transfer_matrix`.
      eps: added to both covariances' diagonals so a grey or flat image (singular Σ) still
        has an inverse; the statistics then match to about ``eps``.
      clip: clip the result to [0, 1] (changes the statistics where pixels fall outside).

    Returns:
      (H, W, 3) float32, the style image in the content's colours.
    """
    xs, xc = _pixels(style), _pixels(content)  # (N, 3), (M, 3)
    mu_s, mu_c = xs.mean(0), xc.mean(0)
    eye = eps * np.eye(3)
    cov_s = np.cov(xs, rowvar=False, bias=True) + eye
    cov_c = np.cov(xc, rowvar=False, bias=True) + eye
    a = color_transfer_matrix(cov_s, cov_c, mode)
    out = (xs - mu_s) @ a.T + mu_c  # (N, 3)
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return out.reshape(np.shape(style)).astype(np.float32)


def luminance(image) -> np.ndarray:
    """(…, 3) RGB -> (…,) float64 luminance Y."""
    return np.asarray(image, dtype=np.float64) @ RGB_TO_YIQ[0]


def luminance_only(content, style, clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Grey (Y, Y, Y) versions of content and style for luminance-only transfer (§5.2).

    The style luminance is shifted and scaled so its mean and standard deviation equal the
    content's (y' = σ_c/σ_s · (y − μ_s) + μ_c), as in the paper, so the style's overall
    brightness and contrast do not leak in. Both are replicated to 3 channels for VGG, and
    clipped to [0, 1] by default because VGG expects images in that range.

    Returns:
      (content_y3 (H, W, 3), style_y3 (h, w, 3)), float32.
    """
    yc, ys = luminance(content), luminance(style)
    ys = (ys - ys.mean()) * (yc.std() / max(ys.std(), 1e-8)) + yc.mean()
    if clip:
        yc, ys = np.clip(yc, 0.0, 1.0), np.clip(ys, 0.0, 1.0)
    rep = lambda y: np.repeat(y[..., None], 3, axis=-1).astype(np.float32)  # (H, W) -> (H, W, 3)
    return rep(yc), rep(ys)


def recombine_luminance(result_y3, content, clip: bool = True) -> np.ndarray:
    """RGB with the result's luminance and the content's colour (I, Q) channels.

    ``result_y3`` is the stylised grey image; its luminance Y is used (for an exactly grey
    image that is its value). If its size differs from ``content``'s (a result made at a
    smaller working size), the content is resized to match first.
    """
    result_y3 = np.asarray(result_y3, dtype=np.float32)
    content = np.asarray(content, dtype=np.float32)
    if result_y3.shape != content.shape:
        from nstyle.images import resize

        content = resize(content, result_y3.shape[:2])
    yiq = rgb_to_yiq(content.astype(np.float64))  # (H, W, 3)
    yiq[..., 0] = luminance(result_y3)
    rgb = yiq_to_rgb(yiq)
    if clip:
        rgb = np.clip(rgb, 0.0, 1.0)
    return rgb.astype(np.float32)
