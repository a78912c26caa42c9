"""The style-loss family (mean-std, W2), spatial masks and the size normalisation, against
numpy references and finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import losses, vgg

RNG = np.random.default_rng(7)


def feats(b=1, h=4, w=5, n=6, rng=RNG):
    """ReLU-like features: non-negative, some exact zeros."""
    return np.maximum(rng.standard_normal((b, h, w, n)) + 0.3, 0.0)


def np_moments(f, wts=None):
    """Weighted mean and covariance of one image's (h, w, N) features, float64."""
    x = f.reshape(-1, f.shape[-1]).astype(np.float64)
    p = np.ones(len(x)) if wts is None else np.asarray(wts, np.float64).reshape(-1)
    p = p / p.sum()
    mu = p @ x
    xc = x - mu
    return mu, (xc * p[:, None]).T @ xc


def np_sqrtm(c):
    lam, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.maximum(lam, 0))) @ v.T


def np_w2(f, mu_t, cov_t, tau, wts=None):
    """(|μ − μ̂|² + tr C + tr Ĉ − 2 Σ(√(λ + τ) − √τ)) / N with λ the eigenvalues of C Ĉ (the same as
    those of Ĉ^½ C Ĉ^½; computed here from the non-symmetric product, a different route)."""
    mu, c = np_moments(f, wts)
    lam = np.linalg.eigvals(c @ cov_t).real
    s = np.sum(np.sqrt(np.maximum(lam, 0) + tau) - np.sqrt(tau))
    return (np.sum((mu - mu_t) ** 2) + np.trace(c) + np.trace(cov_t) - 2 * s) / len(mu)


def gaussian(mu, cov, tau):
    return losses.Gaussian(
        mean=jnp.asarray(mu[None]), cov_sqrt=jnp.asarray(np_sqrtm(cov)[None]), tau=jnp.asarray([tau])
    )


# ------------------------------------------------------------------------- values vs numpy


@pytest.mark.parametrize("shape", [(4, 5, 6), (2, 2, 9)], ids=["M>N", "M<N"])
@pytest.mark.parametrize("weighted", [False, True])
def test_w2_value_matches_numpy(shape, weighted):
    f, s = feats(1, *shape), feats(1, 5, 5, shape[-1])
    mu_t, cov_t = np_moments(s[0])
    wts = RNG.random(shape[:2]) if weighted else None
    tau = 1e-3
    got = losses.w2_layer_loss(
        jnp.asarray(f, jnp.float32),
        gaussian(mu_t, cov_t, tau)._replace(cov_sqrt=jnp.asarray(np_sqrtm(cov_t)[None], jnp.float32)),
        None if wts is None else jnp.asarray(wts[None], jnp.float32),
    )
    want = np_w2(f[0], mu_t, cov_t, tau, wts)
    assert float(got[0]) == pytest.approx(want, rel=2e-4, abs=1e-5)
    assert want > 0.05


def test_w2_is_zero_at_the_target_and_equals_meanstd_for_diagonal_covariances():
    f = jnp.asarray(feats(1, 6, 6, 5), jnp.float32)
    t = losses.make_target("w2", losses.moments(f))
    # the ridge τ leaves a bias of about 2√τ per direction: 1% of the target's size here
    assert 0 <= float(losses.w2_layer_loss(f, t)[0]) < 0.02 * float(losses.style_norm("w2", t)[0])
    assert abs(float(losses.w2_layer_loss(f, t._replace(tau=jnp.zeros(1)))[0])) < 1e-5
    # independent channels: W2 between diagonal Gaussians is the mean-std distance (τ, ε -> 0)
    with jax.enable_x64(True):
        x = np.zeros((1, 4, 4, 3))
        x[0, :, :2, 0], x[0, :2, :, 1], x[0, ::2, ::2, 2] = 1.0, 2.0, 3.0
        mu, var = np.array([0.2, 0.5, 1.1]), np.array([0.3, 0.7, 0.1])
        w2 = losses.w2_layer_loss(
            jnp.asarray(x),
            losses.Gaussian(jnp.asarray(mu[None]), jnp.asarray(np.diag(np.sqrt(var))[None]), jnp.zeros(1)),
        )
        ms = losses.meanstd_layer_loss(
            jnp.asarray(x), losses.MeanStd(jnp.asarray(mu[None]), jnp.asarray(np.sqrt(var)[None]), jnp.zeros(1))
        )
        xm, xc = np_moments(x[0])
        assert np.allclose(xc, np.diag(np.diag(xc)), atol=1e-12)  # the channels are uncorrelated
        want = (np.sum((xm - mu) ** 2) + np.sum((np.sqrt(np.diag(xc)) - np.sqrt(var)) ** 2)) / 3
        assert float(w2[0]) == pytest.approx(want, rel=1e-9) and float(ms[0]) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_meanstd_value_matches_numpy(weighted):
    f, s = feats(2, 4, 5, 6), feats(1, 3, 3, 6)
    wts = RNG.random((2, 4, 5)) if weighted else None
    t = losses.make_target("meanstd", losses.moments(jnp.asarray(s, jnp.float32), full=False))
    got = losses.meanstd_layer_loss(jnp.asarray(f, jnp.float32), t, None if wts is None else jnp.asarray(wts))
    smu, scov = np_moments(s[0])
    eps = losses.MEANSTD_EPS * np.mean(np.diag(scov))
    assert float(t.eps[0]) == pytest.approx(eps, rel=1e-5)
    for i in range(2):
        mu, cov = np_moments(f[i], None if wts is None else wts[i])
        want = np.mean((mu - smu) ** 2 + (np.sqrt(np.diag(cov) + eps) - np.sqrt(np.diag(scov) + eps)) ** 2)
        assert float(got[i]) == pytest.approx(want, rel=1e-4)


# ------------------------------------------------------------------- gradients, float64 FD


def fd_grad(fn, x, eps=1e-6):
    """Central finite differences of a scalar function of a float64 array."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (fn(x + d) - fn(x - d)) / (2 * eps)
    return g


def degenerate_features():
    """Rank-deficient features with repeated eigenvalues: two identical channels, one dead
    channel, one constant channel, and fewer positions than channels."""
    base = RNG.standard_normal((1, 2, 2, 3))
    f = np.concatenate([base, base[..., :1], np.zeros((1, 2, 2, 1)), np.full((1, 2, 2, 1), 0.7)], axis=-1)
    return f  # (1, 2, 2, 6): M = 4 < N = 6


@pytest.mark.parametrize("case", ["generic", "generic_weighted", "degenerate", "degenerate_target", "many_positions"])
def test_w2_gradient_matches_finite_differences_in_float64(case):
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        if case.startswith("degenerate"):
            f = degenerate_features()
        elif case == "many_positions":
            f = rng.standard_normal((1, 5, 4, 3))
        else:
            f = rng.standard_normal((1, 3, 3, 4))
        n = f.shape[-1]
        s = rng.standard_normal((1, 3, 4, n))
        if case == "degenerate_target":
            s[..., 1] = s[..., 0]  # a rank-deficient target covariance, repeated eigenvalues
            s[..., 2] = 0.0
        mu_t, cov_t = np_moments(s[0])
        wts = rng.random(f.shape[1:3])[None] + 0.1 if case.endswith("weighted") else None
        target = gaussian(mu_t, cov_t, 1e-4)

        def loss_f(x):
            return float(losses.w2_layer_loss(jnp.asarray(x), target, None if wts is None else jnp.asarray(wts))[0])

        got = np.asarray(
            jax.grad(lambda x: losses.w2_layer_loss(x, target, None if wts is None else jnp.asarray(wts))[0])(
                jnp.asarray(f)
            )
        )
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, fd_grad(loss_f, f), rtol=1e-5, atol=1e-7)
        # the target's mean and square root get their exact gradients too
        gm, ga = jax.grad(
            lambda m, a: losses.w2_layer_loss(jnp.asarray(f), losses.Gaussian(m, a, target.tau))[0], argnums=(0, 1)
        )(target.mean, target.cov_sqrt)
        fm = fd_grad(lambda m: float(losses.w2_layer_loss(jnp.asarray(f), target._replace(mean=jnp.asarray(m)))[0]),
                     np.asarray(target.mean))  # fmt: skip
        fa = fd_grad(
            lambda a: float(losses.w2_layer_loss(jnp.asarray(f), target._replace(cov_sqrt=jnp.asarray(a)))[0]),
            np.asarray(target.cov_sqrt),
        )
        np.testing.assert_allclose(np.asarray(gm), fm, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(ga), fa, rtol=1e-5, atol=1e-7)


def test_w2_gradient_in_float32_is_finite_and_close_to_float64_at_repeated_eigenvalues():
    """The float32 gradient of a realistic degenerate case: 16 positions, 32 channels with
    duplicates and dead ones, a target of its own rank deficiency; within a few 1e-3 of float64."""
    rng = np.random.default_rng(3)
    base = np.maximum(rng.standard_normal((1, 4, 4, 12)) * 30 + 10, 0)
    f = np.concatenate([base, base, np.zeros((1, 4, 4, 8))], axis=-1)  # (1, 4, 4, 32)
    s = np.maximum(rng.standard_normal((1, 6, 6, 32)) * 25 + 5, 0)
    s[..., 20:] = 0.0
    grads = {}
    for dtype, x64 in ((np.float32, False), (np.float64, True)):
        with jax.enable_x64(x64):
            t = losses.make_target("w2", losses.moments(jnp.asarray(s, dtype)))
            grads[dtype] = np.asarray(
                jax.grad(lambda x: losses.w2_layer_loss(x, t)[0])(jnp.asarray(f, dtype)), np.float64
            )
    assert np.all(np.isfinite(grads[np.float32]))
    scale = np.abs(grads[np.float64]).max()
    assert scale > 0
    np.testing.assert_allclose(grads[np.float32], grads[np.float64], atol=5e-3 * scale)


def test_meanstd_gradient_matches_finite_differences_in_float64():
    with jax.enable_x64(True):
        f = degenerate_features()  # a dead channel: σ = √ε there, still differentiable
        s = np.random.default_rng(5).standard_normal((1, 3, 3, f.shape[-1]))
        t = losses.make_target("meanstd", losses.moments(jnp.asarray(s), full=False))
        wts = jnp.asarray(np.random.default_rng(6).random(f.shape[:3]) + 0.1)
        got = np.asarray(jax.grad(lambda x: losses.meanstd_layer_loss(x, t, wts)[0])(jnp.asarray(f)))
        want = fd_grad(lambda x: float(losses.meanstd_layer_loss(jnp.asarray(x), t, wts)[0]), f)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert np.abs(want).max() > 1e-3


# ------------------------------------------------------------------- targets and blends


@pytest.mark.parametrize("kind", losses.STYLE_LOSSES)
def test_blend_is_the_statistic_of_the_pooled_features(kind):
    """Two images of the same size blended equally: the target of their features side by side."""
    a, b = feats(1, 4, 4, 5), feats(1, 4, 4, 5)
    both = np.concatenate([a, b], axis=2)  # (1, 4, 8, 5): one image holding both
    stats = [losses.style_statistic(kind, jnp.asarray(x, jnp.float32)) for x in (a, b)]
    mixed = losses.make_target(kind, losses.blend_statistics(kind, stats, np.array([0.5, 0.5], np.float32)))
    pooled = losses.make_target(kind, losses.style_statistic(kind, jnp.asarray(both, jnp.float32)))
    for got, want in zip(jax.tree.leaves(mixed), jax.tree.leaves(pooled)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", losses.STYLE_LOSSES)
def test_every_style_loss_is_zero_at_its_target_and_one_at_zero_when_normalised(kind):
    f = jnp.asarray(feats(1, 5, 5, 4), jnp.float32)
    t = losses.make_target(kind, losses.style_statistic(kind, f))
    assert abs(float(losses.style_term(kind, f, t)[0])) < (0.02 if kind == "w2" else 1e-5) * float(
        losses.style_norm(kind, t)[0]
    )
    assert float(losses.style_term(kind, f * 0, t, normalize=True)[0]) == pytest.approx(1.0, rel=1e-5)


# ------------------------------------------------------------------------- spatial masks


@pytest.mark.parametrize("kind", losses.STYLE_LOSSES)
def test_masks_confine_each_style_to_its_region(kind):
    """Region 0 is the left half, region 1 the right half: the gradient of region 0's term is
    zero on the right, and a mask of ones is the plain loss."""
    f = jnp.asarray(feats(1, 4, 6, 5), jnp.float32)
    s0, s1 = (jnp.asarray(feats(1, 5, 5, 5), jnp.float32) for _ in range(2))
    t0, t1 = (losses.make_target(kind, losses.style_statistic(kind, s)) for s in (s0, s1))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b], axis=1), t0, t1)  # (1, 2, ...)
    mask = np.zeros((1, 4, 6, 2), np.float32)
    mask[:, :, :3, 0], mask[:, :, 3:, 1] = 1.0, 1.0
    only0 = jnp.asarray(mask * np.array([1.0, 0.0], np.float32))  # region 1 switched off
    g = np.asarray(jax.grad(lambda x: losses.style_term(kind, x, both, only0)[0])(f))
    assert np.all(g[:, :, 3:] == 0) and np.abs(g[:, :, :3]).max() > 0
    # the two-region loss is the sum of each half against its own target, weighted by the area
    two = float(losses.style_term(kind, f, both, jnp.asarray(mask))[0])
    left, right = f[:, :, :3], f[:, :, 3:]
    want = 0.5 * float(losses.style_layer_term(kind, left, t0)[0]) + 0.5 * float(
        losses.style_layer_term(kind, right, t1)[0]
    )
    assert two == pytest.approx(want, rel=1e-4)
    ones = jnp.ones((1, 4, 6, 1))
    one_t = jax.tree.map(lambda a: a[:, None], t0)
    assert float(losses.style_term(kind, f, one_t, ones)[0]) == pytest.approx(
        float(losses.style_layer_term(kind, f, t0)[0]), rel=1e-5
    )


def test_guided_gram_is_normalised_by_the_region_size():
    """Σ_m m² f fᵀ / Σ_m m² — for a binary mask, the mean Gram matrix of the region's features."""
    f = feats(1, 4, 6, 3)
    w = np.zeros((1, 4, 6))
    w[0, 1:3, 2:5] = 1.0
    got = np.asarray(losses.weighted_mean_gram(jnp.asarray(f, jnp.float32), jnp.asarray(w, jnp.float32)))[0]
    region = f[0, 1:3, 2:5].reshape(-1, 3)
    np.testing.assert_allclose(got, region.T @ region / len(region), rtol=1e-5)


def test_layer_masks_have_each_layers_shape_and_keep_the_regions_share():
    layers = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    mask = np.zeros((1, 37, 50, 1), np.float32)
    mask[:, :, :25] = 1.0
    lm = losses.layer_masks(mask, layers, "vgg19", "avg")
    shapes = jax.eval_shape(
        lambda x: vgg.features(vgg.VGGParams(convs={l: {"kernel": jnp.zeros(vgg.conv_shape(l)),
                                                            "bias": jnp.zeros(vgg.conv_shape(l)[-1])}
                                                        for l in vgg.VGG19_LAYERS}), x, layers),
        jax.ShapeDtypeStruct((1, 37, 50, 3), jnp.float32),
    )  # fmt: skip
    for layer in layers:
        assert lm[layer].shape[1:3] == shapes[layer].shape[1:3], layer
        assert 0.4 < lm[layer].mean() <= 0.55


# ------------------------------------------------------------------------- normalisation


def test_normalised_content_term_is_the_relative_error():
    p = jnp.asarray(feats(2, 3, 3, 4), jnp.float32)
    f = p * 1.1
    got = losses.content_loss(f, p) / losses.content_norm(p)
    np.testing.assert_allclose(np.asarray(got), [0.01, 0.01], rtol=1e-4)


def test_layer_weight_presets():
    assert losses.layer_weights("equal", 5) == (0.2,) * 5
    w = losses.layer_weights("falling", 5)
    assert sum(w) == pytest.approx(1.0) and w[0] / w[1] == pytest.approx(4.0) and w[-1] == pytest.approx(1 / 341)
    with pytest.raises(ValueError, match="layer weights"):
        losses.layer_weights("rising", 3)
