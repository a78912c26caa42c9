"""VGG feature extraction with the real weights, and the total loss through it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import losses, vgg, weights


@pytest.fixture(scope="module")
def vgg19():
    return weights.load("vgg19")


@pytest.fixture(scope="module")
def vgg16():
    return weights.load("vgg16")


def test_params_have_every_layer_with_its_shape(vgg19, vgg16):
    assert vgg19.arch == "vgg19" and vgg19.preprocessing == "caffe"
    assert vgg16.arch == "vgg16" and vgg16.preprocessing == "torchvision"
    assert vgg.param_count(vgg19) == 20_024_384  # VGG19 conv trunk
    assert vgg.param_count(vgg16) == 14_714_688  # VGG16 conv trunk
    np.testing.assert_allclose(
        np.asarray(vgg19.convs["conv1_1"]["bias"][:3]), [0.7301776, 0.06493629, 0.03428847], rtol=1e-6
    )


def test_feature_shapes_names_and_aliases(vgg19):
    x = jnp.full((2, 64, 48, 3), 0.5)
    f = vgg.features(vgg19, x, ("conv1_1", "relu3_1", "conv3_1", "pool4", "conv5_1"))
    assert set(f) == {"conv1_1", "relu3_1", "conv3_1", "pool4", "conv5_1"}
    assert f["conv1_1"].shape == (2, 64, 48, 64)
    assert f["conv3_1"].shape == (2, 16, 12, 256)
    assert f["pool4"].shape == (2, 4, 3, 512)
    assert f["conv5_1"].shape == (2, 4, 3, 512)
    np.testing.assert_array_equal(f["relu3_1"], f["conv3_1"])
    assert float(f["conv3_1"].min()) >= 0.0  # rectified responses


def test_unknown_layer_lists_valid_names(vgg19, vgg16):
    with pytest.raises(ValueError, match="valid names: conv1_1"):
        vgg.features(vgg19, jnp.zeros((1, 32, 32, 3)), ("conv6_1",))
    with pytest.raises(ValueError, match="unknown vgg16 layer 'conv3_4'"):
        vgg.features(vgg16, jnp.zeros((1, 32, 32, 3)), ("conv3_4",))


def test_stops_at_deepest_layer(vgg19):
    """Asking for conv1_1 only must not run (or depend on) the deeper layers."""
    broken = vgg.VGGParams(
        convs={**vgg19.convs, "conv2_1": {"kernel": jnp.full((3, 3, 64, 128), jnp.nan), "bias": jnp.zeros(128)}},
        arch="vgg19",
        preprocessing="caffe",
    )
    f = vgg.features(broken, jnp.full((1, 32, 32, 3), 0.5), ("conv1_2",))
    assert bool(jnp.all(jnp.isfinite(f["conv1_2"])))
    jaxpr = str(jax.make_jaxpr(lambda x: vgg.features(vgg19, x, ("conv1_2",)))(jnp.zeros((1, 32, 32, 3))))
    # conv1_1 is a patch matmul (vgg._conv_im2col), conv1_2 a convolution, nothing deeper
    assert jaxpr.count("conv_general_dilated") == 1 and jaxpr.count("dot_general") == 1


def test_conv1_1_as_patch_matmul_equals_the_convolution():
    """vgg._conv_im2col (used for the 3-channel first layer) is the same 3×3 'SAME' convolution."""
    kx, kk, kb = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (2, 9, 7, 3))
    k = jax.random.normal(kk, (3, 3, 3, 5))
    b = jax.random.normal(kb, (5,))
    want = (
        jax.lax.conv_general_dilated(
            x,
            k,
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        + b
    )
    np.testing.assert_allclose(np.asarray(vgg._conv_im2col(x, k, b)), np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(vgg._conv(x, k, b)), np.asarray(want), rtol=1e-5, atol=1e-5)
    # and its gradient w.r.t. the input (what the pixel optimisation uses)
    g = jax.random.normal(kb, (2, 9, 7, 5))
    gi = jax.vjp(lambda x: vgg._conv_im2col(x, k, b), x)[1](g)[0]
    gw = jax.vjp(
        lambda x: jax.lax.conv_general_dilated(
            x,
            k,
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        ),
        x,
    )[1](g)[0]
    np.testing.assert_allclose(np.asarray(gi), np.asarray(gw), rtol=1e-5, atol=1e-5)


def test_precomputed_backward_kernel_gives_autodiffs_gradients():
    """vgg._conv_given_backward: the input gradient from the precomputed rotated, transposed
    kernel equals autodiff's; the kernel gradient is autodiff's too; also under vmap."""
    kx, kk, kg = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (2, 9, 7, 6))
    k = jax.random.normal(kk, (3, 3, 6, 5))  # not square in I/O and not symmetric: a wrong flip/transpose shows
    g = jax.random.normal(kg, (2, 9, 7, 5))
    kt = vgg.backward_kernel(k)
    assert kt.shape == (3, 3, 5, 6)
    y_ref, vjp_ref = jax.vjp(vgg._lax_conv, x, k)
    y, vjp = jax.vjp(lambda x, k: vgg._conv_given_backward(x, k, vgg.backward_kernel(k)), x, k)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    for got, want in zip(vjp(g), vjp_ref(g)):  # (dx, dk)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
    dx_ref = vjp_ref(g)[0]
    assert (
        float(jnp.max(jnp.abs(jax.vjp(lambda x: vgg._lax_conv(x, k[::-1]), x)[1](g)[0] - dx_ref))) > 1e-2
    )  # the flip matters
    dx_vmapped = jax.vmap(
        lambda xi, gi: jax.vjp(lambda x: vgg._conv_given_backward(x, k, kt), xi[None])[1](gi[None])[0][0]
    )(x, g)
    np.testing.assert_allclose(np.asarray(dx_vmapped), np.asarray(dx_ref), rtol=1e-5, atol=1e-4)


def test_with_backward_kernels_same_features_and_pixel_gradient(vgg19):
    partial = vgg.with_backward_kernels(vgg19, ("conv1_1", "conv4_2"))  # only as deep as the loss reads
    assert sorted(partial.backward_kernels) == [
        "conv1_2",
        "conv2_1",
        "conv2_2",
        "conv3_1",
        "conv3_2",
        "conv3_3",
        "conv3_4",
        "conv4_1",
        "conv4_2",
    ]
    assert vgg.with_backward_kernels(partial, ("conv3_1",)) is partial  # already there
    prepared = vgg.with_backward_kernels(partial)  # adds the rest
    assert vgg.with_backward_kernels(prepared) is prepared
    assert "conv1_1" not in prepared.backward_kernels and prepared.backward_kernels["conv5_4"].shape == (3, 3, 512, 512)
    np.testing.assert_array_equal(
        np.asarray(prepared.backward_kernels["conv4_2"]),
        np.asarray(vgg.backward_kernel(vgg19.convs["conv4_2"]["kernel"])),
    )
    x = jax.random.uniform(jax.random.key(3), (1, 40, 36, 3))
    layers = ("conv1_1", "conv3_1", "conv4_2")

    def loss(params, x):
        f = vgg.features(params, x, layers, pooling="avg")
        return sum(jnp.mean(v**2) for v in f.values())

    v0, g0 = jax.jit(jax.value_and_grad(loss, argnums=1))(vgg19, x)
    v1, g1 = jax.jit(jax.value_and_grad(loss, argnums=1))(prepared, x)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(g0))))
    # the gradient w.r.t. a VGG kernel is still autodiff's (the derived copies get zero)
    k0 = jax.grad(loss)(vgg19, x).convs["conv3_1"]["kernel"]
    k1 = jax.grad(loss)(prepared, x).convs["conv3_1"]["kernel"]
    np.testing.assert_allclose(np.asarray(k1), np.asarray(k0), rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(k0))))


def test_avg_and_max_pooling_differ(vgg19):
    x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
    fm = vgg.features(vgg19, x, ("conv2_1",), pooling="max")["conv2_1"]
    fa = vgg.features(vgg19, x, ("conv2_1",), pooling="avg")["conv2_1"]
    assert fm.shape == fa.shape
    assert not np.allclose(fm, fa)
    with pytest.raises(ValueError, match="pooling"):
        vgg.features(vgg19, x, ("conv2_1",), pooling="median")


def test_caffe_preprocessing_is_bgr_minus_mean():
    x = jnp.asarray([[[[1.0, 0.5, 0.0]]]])  # one RGB pixel
    got = np.asarray(vgg.preprocess(x, "caffe"))[0, 0, 0]
    np.testing.assert_allclose(got, [0.0 - 103.939, 127.5 - 116.779, 255.0 - 123.68], rtol=1e-6)


def test_total_loss_value_and_grad_compiles_once_and_is_finite(vgg19):
    cfg = losses.PerceptualLoss(tv_weight=1e-3)
    key = jax.random.key(1)
    content = jax.random.uniform(key, (1, 64, 64, 3))
    style = jax.random.uniform(jax.random.fold_in(key, 1), (1, 64, 64, 3))
    targets = losses.Targets(losses.content_targets(vgg19, content, cfg), losses.style_targets(vgg19, [style], cfg))
    traces = []

    @jax.jit
    def value_and_grad(x, targets):
        traces.append(1)
        return jax.value_and_grad(lambda x: losses.perceptual_loss(vgg19, x, targets, cfg)[0].sum())(x)

    x0 = jax.random.uniform(jax.random.fold_in(key, 2), (1, 64, 64, 3))
    v1, g1 = value_and_grad(x0, targets)
    v2, g2 = value_and_grad(x0 * 0.5, targets)
    assert len(traces) == 1  # the second call reuses the compiled function
    assert np.isfinite(float(v1)) and float(v1) > 0
    assert bool(jnp.all(jnp.isfinite(g1))) and float(jnp.abs(g1).max()) > 0
    assert float(v1) != float(v2)
    # the content image has zero content loss; the per-layer aux terms are reported
    _, aux = losses.perceptual_loss(vgg19, content, targets, cfg)
    assert float(aux["content/conv4_2"][0]) == 0.0
    assert set(aux) >= {"style/conv1_1", "style/conv5_1", "content", "style", "tv"}
