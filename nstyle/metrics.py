"""Measures of a result that are independent of the loss it was optimised with.

    d = nstyle.metrics.style_distance(result, style)       # VGG16 Gram distance, not the VGG19 loss
    nstyle.metrics.meanstd_distance(result, style)         # VGG16 per-channel mean and std distance
    nstyle.metrics.psnr(result, content); nstyle.metrics.correlation_length(result)
    nstyle.lpips.lpips_distance(result[None], content[None])  # LPIPS lives in nstyle.lpips

Images are (H, W, 3) RGB in [0, 1] (numpy). The experiment tables and the sweep collector
report these, so results can be compared across runs, losses and settings.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from nstyle import losses, vgg, weights

# Johnson et al.'s style layers of VGG16: shallow ones see fine texture, deep ones large structures
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


@functools.lru_cache(maxsize=1)
def _vgg16() -> vgg.VGGParams:
    return weights.load("vgg16")


def style_distances(image: np.ndarray, style: np.ndarray, layers=STYLE_LAYERS) -> dict[str, float]:
    """E_l of METHOD.md between ``image`` and ``style`` under VGG16 (torchvision's ImageNet
    weights, max pooling), per layer, on mean Gram matrices (the two may differ in size).

    VGG16 is not the VGG19 the Gatys loss uses, so this is not the quantity that was
    minimised: an independent measure of how close a result is to the style.
    """
    import jax.numpy as jnp

    params = _vgg16()
    fx = vgg.features(params, jnp.asarray(np.asarray(image, np.float32)[None]), layers)
    fs = vgg.features(params, jnp.asarray(np.asarray(style, np.float32)[None]), layers)
    return {
        layer: float(np.asarray(losses.style_layer_loss(fx[layer], losses.mean_gram(fs[layer])))[0]) for layer in layers
    }


def style_distance(image: np.ndarray, style: np.ndarray, layers=STYLE_LAYERS) -> float:
    """The mean of :func:`style_distances` over ``layers``."""
    d = style_distances(image, style, layers)
    return sum(d.values()) / len(d)


def meanstd_distance(image: np.ndarray, style: np.ndarray, layers=STYLE_LAYERS) -> float:
    """1/N Σ_c (μ_c − μ̂_c)² + (σ_c − σ̂_c)² of the per-channel means and standard deviations of
    ``image`` and ``style`` under VGG16 (max pooling), averaged over ``layers``: a second
    independent style measure, blind to the correlations between channels that the Gram
    distance sees."""
    import jax.numpy as jnp

    params = _vgg16()
    fx = vgg.features(params, jnp.asarray(np.asarray(image, np.float32)[None]), layers)
    fs = vgg.features(params, jnp.asarray(np.asarray(style, np.float32)[None]), layers)
    out = []
    for layer in layers:
        (mx, vx), (ms, vs) = (losses.moments(f[layer], full=False) for f in (fx, fs))
        d = (mx - ms) ** 2 + (jnp.sqrt(vx) - jnp.sqrt(vs)) ** 2
        out.append(float(jnp.mean(d)))
    return sum(out) / len(out)


LUMA = np.array([0.299, 0.587, 0.114], np.float64)


def pixel_mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over pixels and channels, in [0, 1] units."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean((a - b) ** 2))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for a peak of 1.0 (inf for identical images)."""
    mse = pixel_mse(a, b)
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def autocorrelation(image: np.ndarray) -> np.ndarray:
    """Radially averaged autocorrelation of the luminance, normalised to 1 at lag 0.

    Linear (zero-padded) autocorrelation via the FFT, each lag divided by the number of
    overlapping pixel pairs so large lags are not biased towards 0. Returns values for
    integer radii 0 … min(H, W) // 2.
    """
    y = np.asarray(image, np.float64) @ LUMA  # (H, W)
    y = y - y.mean()
    h, w = y.shape
    f = np.fft.rfft2(y, s=(2 * h, 2 * w))
    ac = np.fft.irfft2(f * np.conj(f), s=(2 * h, 2 * w))  # (2H, 2W), lag (0, 0) at [0, 0]
    ones = np.fft.rfft2(np.ones_like(y), s=(2 * h, 2 * w))
    pairs = np.fft.irfft2(ones * np.conj(ones), s=(2 * h, 2 * w))
    ac = np.fft.fftshift(ac / np.maximum(pairs, 1.0))  # lag (0, 0) at the centre [H, W]
    if ac[h, w] <= 0:
        return np.zeros(min(h, w) // 2 + 1)
    ac = ac / ac[h, w]
    yy, xx = np.indices(ac.shape)
    r = np.rint(np.hypot(yy - h, xx - w)).astype(int)
    rmax = min(h, w) // 2
    keep = r <= rmax
    sums = np.bincount(r[keep], ac[keep], minlength=rmax + 1)
    counts = np.bincount(r[keep], minlength=rmax + 1)
    return sums / np.maximum(counts, 1)


def correlation_length(image: np.ndarray, level: float = 0.5) -> float:
    """Radius (px) where the luminance autocorrelation first falls below ``level``.

    The typical size of the structures in an image: white noise gives ~1 px, large brush
    strokes or objects tens of px. Linear interpolation between integer radii.
    """
    ac = autocorrelation(image)
    below = np.nonzero(ac < level)[0]
    if len(below) == 0:
        return float(len(ac) - 1)
    i = int(below[0])
    if i == 0:
        return 0.0
    a0, a1 = ac[i - 1], ac[i]
    return float(i - 1 + (a0 - level) / (a0 - a1))
