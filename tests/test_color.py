"""Colour preservation (Gatys et al. 2017): YIQ, linear colour histogram matching, and
luminance-only transfer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import color, images


@pytest.fixture(scope="module")
def pair():
    """A warm-toned cat (style) and a coffee cup (content), small."""
    return images.load_image("builtin:chelsea", max_side=64), images.load_image("builtin:coffee", max_side=48)


def _stats(x):
    p = np.asarray(x, np.float64).reshape(-1, 3)
    return p.mean(0), np.cov(p, rowvar=False, bias=True)


def test_yiq_roundtrip_numpy_and_jax():
    x = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    back = color.yiq_to_rgb(color.rgb_to_yiq(x))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, atol=1e-6)
    xj = jnp.asarray(x)
    yj = jax.jit(color.rgb_to_yiq)(xj)
    assert isinstance(yj, jax.Array)
    np.testing.assert_allclose(np.asarray(yj), color.rgb_to_yiq(x), atol=1e-6)
    np.testing.assert_allclose(np.asarray(color.yiq_to_rgb(yj)), x, atol=1e-6)


def test_yiq_of_grey_and_primaries():
    grey = np.full((3,), 0.4)
    np.testing.assert_allclose(color.rgb_to_yiq(grey), [0.4, 0.0, 0.0], atol=1e-6)
    y = color.rgb_to_yiq(np.eye(3))  # rows: pure R, G, B
    np.testing.assert_allclose(y[:, 0], [0.299, 0.587, 0.114])
    assert y[0, 1] > 0 and y[1, 1] < 0  # I is the orange–blue axis: red positive, green negative


@pytest.mark.parametrize("mode", color.COLOR_MODES)
def test_transfer_matrix_maps_covariances(mode):
    rng = np.random.default_rng(1)
    m_s, m_c = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    cov_s, cov_c = m_s @ m_s.T + 0.1 * np.eye(3), m_c @ m_c.T + 0.1 * np.eye(3)
    a = color.color_transfer_matrix(cov_s, cov_c, mode)
    np.testing.assert_allclose(a @ cov_s @ a.T, cov_c, atol=1e-10)
    if mode == "chol":
        assert np.allclose(np.triu(a, 1), 0)  # product of lower-triangular factors
    if mode == "sym":
        np.testing.assert_allclose(a, a.T, atol=1e-10)


def test_modes_differ_and_sym_moves_pixels_least(pair):
    style, content = pair
    outs = {m: color.match_color_histogram(style, content, m, clip=False) for m in color.COLOR_MODES}
    assert np.abs(outs["chol"] - outs["pca"]).max() > 1e-2
    # Monge–Kantorovich: the least mean squared displacement among maps with these statistics
    moved = {m: float(np.mean((o - style) ** 2)) for m, o in outs.items()}
    assert moved["sym"] <= min(moved["chol"], moved["pca"]) + 1e-9


@pytest.mark.parametrize("mode", color.COLOR_MODES)
def test_histogram_matching_gives_content_statistics(pair, mode):
    style, content = pair
    out = color.match_color_histogram(style, content, mode, clip=False)
    assert out.shape == style.shape and out.dtype == np.float32
    mu, cov = _stats(out)
    mu_c, cov_c = _stats(content)
    np.testing.assert_allclose(mu, mu_c, atol=1e-5)
    np.testing.assert_allclose(cov, cov_c, atol=3e-4)  # eps = 1e-5 regularisation
    mu_s, cov_s = _stats(style)
    assert np.abs(cov_s - cov_c).max() > 10 * 3e-4  # the test would notice no change
    clipped = color.match_color_histogram(style, content, mode)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    np.testing.assert_allclose(_stats(clipped)[0], mu_c, atol=0.02)  # clipping moves it a little


def test_histogram_matching_of_grey_style_is_finite(pair):
    _, content = pair
    brick = images.load_image("builtin:brick", max_side=32)  # R = G = B: singular covariance
    out = color.match_color_histogram(brick, content)
    assert np.isfinite(out).all() and out.std() > 0.01
    np.testing.assert_allclose(
        _stats(color.match_color_histogram(brick, content, clip=False))[0], _stats(content)[0], atol=1e-5
    )
    with pytest.raises(ValueError, match="mode"):
        color.match_color_histogram(brick, content, "lab")


def test_luminance_only_matches_mean_and_std(pair):
    style, content = pair
    cy, sy = color.luminance_only(content, style, clip=False)
    assert cy.shape == content.shape and sy.shape == style.shape
    for g in (cy, sy):
        np.testing.assert_array_equal(g[..., 0], g[..., 1])
        np.testing.assert_array_equal(g[..., 0], g[..., 2])
    np.testing.assert_allclose(cy[..., 0], color.rgb_to_yiq(content.astype(np.float64))[..., 0], atol=1e-6)
    ys, yc = sy[..., 0].astype(np.float64), cy[..., 0].astype(np.float64)
    assert ys.mean() == pytest.approx(yc.mean(), abs=1e-5)
    assert ys.std() == pytest.approx(yc.std(), abs=1e-5)
    cy2, sy2 = color.luminance_only(content, style)
    assert sy2.min() >= 0.0 and sy2.max() <= 1.0


def test_recombine_keeps_content_colour_exactly(pair):
    _, content = pair
    result = np.random.default_rng(3).random(content.shape[:2]).astype(np.float32)
    result3 = np.repeat(result[..., None], 3, -1)  # a grey stylised image
    out = color.recombine_luminance(result3, content, clip=False)
    yiq_out = color.rgb_to_yiq(out.astype(np.float64))
    yiq_c = color.rgb_to_yiq(content.astype(np.float64))
    np.testing.assert_allclose(yiq_out[..., 1:], yiq_c[..., 1:], atol=1e-6)  # I, Q from content
    np.testing.assert_allclose(yiq_out[..., 0], result, atol=1e-6)  # Y from the result
    clipped = color.recombine_luminance(result3, content)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


def test_recombine_with_its_own_luminance_is_identity_and_resizes(pair):
    _, content = pair
    cy, _ = color.luminance_only(content, content, clip=False)
    np.testing.assert_allclose(color.recombine_luminance(cy, content, clip=False), content, atol=1e-5)
    small = np.full((24, 32, 3), 0.5, np.float32)  # a result at half the working size
    out = color.recombine_luminance(small, content)
    assert out.shape == (24, 32, 3)
    np.testing.assert_allclose(color.rgb_to_yiq(out.astype(np.float64))[..., 0], 0.5, atol=0.05)
