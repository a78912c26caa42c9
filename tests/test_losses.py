"""The losses of METHOD.md against numpy, and autodiff against the analytic gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import losses

jax.config.update("jax_enable_x64", False)
RNG = np.random.default_rng(0)


def np_features(b=2, h=5, w=7, n=6):
    return RNG.standard_normal((b, h, w, n)).astype(np.float32)


def paper_layout(f):
    """(h, w, N) NHWC -> the paper's F^l, (N, M)."""
    h, w, n = f.shape
    return f.reshape(h * w, n).T.astype(np.float64)


def test_gram_of_one_hot_map():
    f = np.zeros((1, 2, 2, 3), np.float32)
    f[0, 0, 0, 1] = 2.0  # channel 1 fires once with value 2
    f[0, 1, 1, 2] = 1.0
    g = np.asarray(losses.gram(jnp.asarray(f)))[0]
    assert g[1, 1] == pytest.approx(4.0)
    assert g[2, 2] == pytest.approx(1.0)
    assert np.count_nonzero(g) == 2


def test_gram_matches_numpy():
    f = np_features()
    g = np.asarray(losses.gram(jnp.asarray(f)))
    for i in range(f.shape[0]):
        F = paper_layout(f[i])
        np.testing.assert_allclose(g[i], F @ F.T, rtol=1e-5, atol=1e-4)


def test_content_loss_matches_numpy_and_is_zero_on_itself():
    f, p = np_features(), np_features()
    got = np.asarray(losses.content_loss(jnp.asarray(f), jnp.asarray(p)))
    want = 0.5 * ((f.astype(np.float64) - p) ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(np.asarray(losses.content_loss(jnp.asarray(f), jnp.asarray(f))) == 0)


def test_style_layer_loss_matches_method_formula():
    f, s = np_features(), np_features()
    a_mean = losses.mean_gram(jnp.asarray(s))
    got = np.asarray(losses.style_layer_loss(jnp.asarray(f), a_mean))
    for i in range(f.shape[0]):
        F, S = paper_layout(f[i]), paper_layout(s[i])
        n, m = F.shape
        want = ((F @ F.T - S @ S.T) ** 2).sum() / (4 * n**2 * m**2)
        assert got[i] == pytest.approx(want, rel=1e-4)


def test_style_loss_invariant_to_spatial_permutation():
    f, s = np_features(b=1), np_features(b=1)
    perm = RNG.permutation(f.shape[1] * f.shape[2])
    fp = f.reshape(1, -1, f.shape[-1])[:, perm].reshape(f.shape)
    a = losses.mean_gram(jnp.asarray(s))
    e1 = losses.style_layer_loss(jnp.asarray(f), a)
    e2 = losses.style_layer_loss(jnp.asarray(fp), a)
    np.testing.assert_allclose(e1, e2, rtol=1e-5)
    assert float(e1[0]) > 0


def test_tv_of_constant_image_is_zero_and_matches_numpy():
    assert float(losses.tv_loss(jnp.full((1, 8, 8, 3), 0.3))[0]) == 0.0
    x = RNG.random((2, 6, 5, 3)).astype(np.float32)
    want = (np.diff(x, axis=1) ** 2).sum(axis=(1, 2, 3)) + (np.diff(x, axis=2) ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(losses.tv_loss(jnp.asarray(x))), want, rtol=1e-5)


def _relu_features(pre):
    return jax.nn.relu(pre)


def test_content_gradient_matches_analytic_with_relu_mask():
    """dL/dF^l through the ReLU: (F − P) where F > 0, else 0 (METHOD.md)."""
    pre = jnp.asarray(np_features(b=1))
    p = jax.nn.relu(jnp.asarray(np_features(b=1)))

    def loss_of_pre(z):
        return losses.content_loss(jax.nn.relu(z), p)[0]

    got = np.asarray(jax.jit(jax.grad(loss_of_pre))(pre))
    F = np.maximum(np.asarray(pre), 0)
    want = np.where(F > 0, F - np.asarray(p), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.any(np.asarray(pre) < 0) and np.all(got[np.asarray(pre) < 0] == 0)


def test_style_gradient_matches_analytic_with_relu_mask():
    """dE_l/dF^l_ij = 1/(N² M²) ((F^l)ᵀ (G − A))_ji where F > 0, else 0 (METHOD.md)."""
    b, h, w, n = 1, 4, 6, 5
    pre = jnp.asarray(np_features(b, h, w, n))
    s = jax.nn.relu(jnp.asarray(np_features(b, h, w, n)))
    a_mean = losses.mean_gram(s)

    def loss_of_pre(z):
        return losses.style_layer_loss(jax.nn.relu(z), a_mean)[0]

    got = np.asarray(jax.jit(jax.grad(loss_of_pre))(pre))[0]  # (h, w, N)
    F = paper_layout(np.maximum(np.asarray(pre)[0], 0))  # (N, M)
    S = paper_layout(np.asarray(s)[0])
    m = h * w
    G, A = F @ F.T, S @ S.T
    dF = (F.T @ (G - A)).T / (n**2 * m**2)  # (N, M): element (i, j) is ((F^T (G-A))_ji)
    dF = np.where(F > 0, dF, 0.0)
    want = dF.T.reshape(h, w, n)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert np.abs(want).max() > 1e-4  # the check is not vacuous


@pytest.mark.parametrize("target_batch", [1, 3])
def test_style_custom_vjp_equals_autodiff(target_batch):
    """The hand-written VJP of the style term equals autodiff of the same formula: for both
    arguments, a batch with per-image cotangents, a broadcast (1, N, N) or per-image target,
    and a non-symmetric target (where only the symmetric part of G/M − Â reaches F)."""
    b, h, w, n = 3, 4, 6, 5
    f = jnp.asarray(np_features(b, h, w, n))
    t = jnp.asarray(np.random.default_rng(4).standard_normal((target_batch, n, n)), jnp.float32)
    cot = jnp.asarray([1.0, -2.0, 0.5], jnp.float32)

    def weighted(fn):
        return lambda f, t: jnp.sum(cot * fn(f, t))

    got = jax.jit(jax.grad(weighted(losses.style_layer_loss), argnums=(0, 1)))(f, t)
    want = jax.grad(weighted(losses._style_layer_loss_autodiff), argnums=(0, 1))(f, t)
    for g, w_ in zip(got, want):
        assert g.shape == w_.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(w_), rtol=2e-5, atol=1e-6 * float(jnp.abs(w_).max()))
        assert float(jnp.abs(w_).max()) > 0
    # and per image under vmap, as the optimiser's step uses it
    per = jax.vmap(jax.grad(lambda f1, t1: losses.style_layer_loss(f1[None], t1[None])[0]))(
        f, jnp.broadcast_to(t, (b, n, n))
    )
    ref = jax.vmap(jax.grad(lambda f1, t1: losses._style_layer_loss_autodiff(f1[None], t1[None])[0]))(
        f, jnp.broadcast_to(t, (b, n, n))
    )
    np.testing.assert_allclose(np.asarray(per), np.asarray(ref), rtol=2e-5, atol=1e-6 * float(jnp.abs(ref).max()))


def test_perceptual_loss_config_validates():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        losses.PerceptualLoss(alpha=-1)
    with pytest.raises(ValueError, match="style weights"):
        losses.PerceptualLoss(style_layers=("conv1_1",), style_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="pooling"):
        losses.PerceptualLoss(pooling="min")
    cfg = losses.PerceptualLoss(beta=0.0)
    assert cfg.layers == ("conv4_2",)
