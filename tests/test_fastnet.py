"""FastNet: the paper's architecture, any-size stylisation, the exported model file."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from nstyle import fastnet


def conv(k, cin, cout, bias=False):
    """A conv's weights; only the last conv has a bias (instance norm follows the others)."""
    return k * k * cin * cout + (cout if bias else 0)


def paper_param_count(w=32, blocks=5):
    """Johnson et al.'s network counted by hand: conv kernels + instance-norm scale/shift."""
    n = conv(9, 3, w) + 2 * w  # 9×9 conv w, IN
    n += conv(3, w, 2 * w) + 4 * w  # stride-2 conv 2w, IN
    n += conv(3, 2 * w, 4 * w) + 8 * w  # stride-2 conv 4w, IN
    n += blocks * (2 * conv(3, 4 * w, 4 * w) + 8 * w + 4 * w)  # residual blocks: two convs, IN, IN without shift
    n += conv(3, 4 * w, 2 * w) + 4 * w  # upsample, conv 2w, IN
    n += conv(3, 2 * w, w) + 2 * w  # upsample, conv w, IN
    n += conv(9, w, 3, bias=True)  # 9×9 conv to RGB, no norm
    return n


# the linear head: a freshly initialised network already transforms its input (the residual
# default starts as the identity, which would hide what most tests here check)
TINY = fastnet.FastNetConfig(width=4, blocks=1, output="linear")


@pytest.fixture(scope="module")
def tiny_params():
    return fastnet.init(TINY, jax.random.key(0))


def test_full_architecture_parameter_count_and_shapes():
    cfg = fastnet.FastNetConfig()
    shapes = jax.eval_shape(lambda: fastnet.init(cfg, jax.random.key(0)))
    # PyTorch's fast_neural_style net has 1,679,235: the same plus 1,600 conv biases before instance
    # norms and 640 shifts of the residual blocks' second norms, all without effect on the output
    assert fastnet.param_count(shapes) == paper_param_count() == 1_679_235 - 1_600 - 640
    assert shapes["ConvIN_0"]["Conv_0"]["kernel"].shape == (9, 9, 3, 32)
    assert shapes["ConvIN_2"]["Conv_0"]["kernel"].shape == (3, 3, 64, 128)
    assert len([k for k in shapes if k.startswith("Residual_")]) == 5
    assert shapes["ConvIN_3"]["Conv_0"]["kernel"].shape == (9, 9, 32, 3)
    params = fastnet.init(cfg, jax.random.key(0))
    out = jax.eval_shape(
        lambda p, x: fastnet.apply(cfg, p, x), params, jax.ShapeDtypeStruct((2, 64, 48, 3), jnp.float32)
    )
    assert out.shape == (2, 64, 48, 3)
    # the transposed-convolution variant has the same parameter count (3×3 kernels either way)
    t = fastnet.FastNetConfig(upsample="transpose")
    assert fastnet.param_count(jax.eval_shape(lambda: fastnet.init(t, jax.random.key(0)))) == 1_679_235 - 1_600 - 640


def test_width_and_blocks_are_config_values():
    for w, b in [(8, 0), (8, 2), (16, 3)]:
        shapes = jax.eval_shape(lambda: fastnet.init(fastnet.FastNetConfig(width=w, blocks=b), jax.random.key(0)))
        assert fastnet.param_count(shapes) == paper_param_count(w, b)


def test_outputs_linear_unbounded_and_tanh_bounded_stylize_clips(tiny_params):
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    big = jax.tree_util.tree_map(lambda p: p, tiny_params)
    big["ConvIN_3"]["Conv_0"]["kernel"] = big["ConvIN_3"]["Conv_0"]["kernel"] * 6.0  # |z| well past 1
    z = 2.0 * fastnet.apply(TINY, big, x) - 1.0  # the final conv's output, through the linear head
    assert float(jnp.min(z)) < -1.5 and float(jnp.max(z)) > 1.5
    # the tanh head (format version 1) is that z squashed into [0, 1]; stylize clips the linear one
    tanh = dataclasses.replace(TINY, output="tanh")
    np.testing.assert_allclose(fastnet.apply(tanh, big, x), (np.tanh(z) + 1) / 2, atol=2e-6)
    np.testing.assert_allclose(fastnet.stylize(TINY, big, x), np.clip((z + 1) / 2, 0, 1), atol=2e-6)
    y = fastnet.apply(TINY, tiny_params, x)
    assert y.shape == x.shape
    assert not np.allclose(y[0], y[1])  # instance norm keeps images independent, not constant


def test_the_residual_head_starts_as_the_identity_and_is_the_input_plus_half_z(tiny_params):
    x = jax.random.uniform(jax.random.key(3), (2, 32, 28, 3))
    residual = dataclasses.replace(TINY, output="residual")
    assert fastnet.FastNetConfig().output == "residual"  # the default
    fresh = fastnet.init(residual, jax.random.key(0))
    assert not np.any(fresh["ConvIN_3"]["Conv_0"]["kernel"]) and not np.any(fresh["ConvIN_3"]["Conv_0"]["bias"])
    np.testing.assert_array_equal(fastnet.apply(residual, fresh, x), x)  # an untrained network returns the photo
    # with the same parameters: residual = x + z/2 where the linear head gives (z + 1)/2
    np.testing.assert_allclose(
        fastnet.apply(residual, tiny_params, x), x + fastnet.apply(TINY, tiny_params, x) - 0.5, atol=2e-6
    )
    big = jax.tree_util.tree_map(lambda p: p, tiny_params)
    big["ConvIN_3"]["Conv_0"]["bias"] = big["ConvIN_3"]["Conv_0"]["bias"] + 8.0  # pushes every pixel past 1
    raw = fastnet.apply(residual, big, x)
    assert float(jnp.min(raw)) > 1.0  # unbounded while training ...
    np.testing.assert_array_equal(fastnet.stylize(residual, big, x), 1.0)  # ... and clipped when applied
    g = jax.grad(lambda p: jnp.mean(fastnet.apply(residual, p, x)))(big)
    assert float(jnp.linalg.norm(g["ConvIN_3"]["Conv_0"]["kernel"])) > 0.1  # no pixel loses its gradient


def test_the_linear_head_keeps_its_gradient_where_tanh_saturates(tiny_params):
    """The reason for the linear output: where z is large, tanh passes almost no gradient back."""
    x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
    big = jax.tree_util.tree_map(lambda p: p, tiny_params)
    big["ConvIN_3"]["Conv_0"]["bias"] = big["ConvIN_3"]["Conv_0"]["bias"] + 3.0  # z around 3: tanh saturated

    def grad_norm(cfg):
        g = jax.grad(lambda p: jnp.mean(fastnet.apply(cfg, p, x)))(big)
        return float(jnp.linalg.norm(g["ConvIN_3"]["Conv_0"]["kernel"]))

    tanh = grad_norm(dataclasses.replace(TINY, output="tanh"))
    assert tanh < 0.05 * grad_norm(TINY)  # 1 − tanh²(3) ≈ 0.01


def test_images_in_a_batch_are_independent(tiny_params):
    """Instance norm: an image's output does not depend on its batch mates (unlike batch norm)."""
    x = jax.random.uniform(jax.random.key(2), (3, 32, 32, 3))
    both = fastnet.apply(TINY, tiny_params, x)
    alone = fastnet.apply(TINY, tiny_params, x[1:2])
    np.testing.assert_allclose(both[1:2], alone, atol=1e-5)


@pytest.mark.parametrize("shape", [(37, 50), (5, 9), (64, 48)])
def test_stylise_any_size_crops_back(tiny_params, shape):
    x = jax.random.uniform(jax.random.key(3), (1, *shape, 3))
    y = fastnet.stylize(TINY, tiny_params, x)
    assert y.shape == x.shape
    if shape[0] % 4 == 0 and shape[1] % 4 == 0:  # nothing to pad: identical to the plain network, clipped
        np.testing.assert_array_equal(y, jnp.clip(fastnet.apply(TINY, tiny_params, x), 0.0, 1.0))


def test_pad_to_multiple_reflects():
    x = jnp.arange(5.0)[None, :, None, None] * jnp.ones((1, 5, 6, 1))
    p, hw = fastnet.pad_to_multiple(x, 4)
    assert hw == (5, 6) and p.shape == (1, 8, 8, 1)
    # rows 0..4 padded by 1 above and 2 below, mirrored without repeating the edge
    np.testing.assert_array_equal(p[0, :, 0, 0], [1, 0, 1, 2, 3, 4, 3, 2])


def test_jitted_stylise_does_not_recompile(tiny_params):
    f = jax.jit(lambda p, x: fastnet.stylize(TINY, p, x))
    x = jnp.ones((1, 30, 30, 3)) * 0.4
    f(tiny_params, x)
    f(tiny_params, x * 0.5)
    assert f._cache_size() == 1


def test_export_and_load_round_trip(tmp_path, tiny_params):
    path = tmp_path / "model.npz"
    fastnet.export_model(path, TINY, tiny_params, {"style": "builtin:chelsea", "checkpoint": "ckpt_00000010.npz"})
    with np.load(path, allow_pickle=False) as z:  # plain arrays + one JSON string, no pickles
        header = json.loads(str(z["__model__"]))
        assert header["version"] == 2
        assert header["fastnet"] == {
            "width": 4,
            "blocks": 1,
            "upsample": "nearest",
            "epsilon": 1e-5,
            "output": "linear",
            "styles": 1,
        }
    cfg, params, meta = fastnet.load_model(path)
    assert cfg == TINY and meta["checkpoint"] == "ckpt_00000010.npz"
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, tiny_params)
    x = jnp.full((1, 16, 16, 3), 0.3).at[:, 4:9].set(0.8)
    np.testing.assert_array_equal(fastnet.apply(cfg, params, x), fastnet.apply(TINY, tiny_params, x))


def test_load_rejects_files_that_are_not_models(tmp_path, tiny_params):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    (tmp_path / "text.npz").write_text("hello")
    bad = {
        f"params/{k}": np.asarray(v)
        for k, v in traverse_util.flatten_dict(tiny_params, sep="/").items()
        if "Residual" not in k
    }
    header = {"format": fastnet.MODEL_FORMAT, "version": 1, "fastnet": {"width": 4, "blocks": 1}, "meta": {}}
    np.savez(tmp_path / "damaged.npz", __model__=np.array(json.dumps(header)), **bad)
    for name, words in [
        ("other.npz", "not an nstyle"),
        ("text.npz", "not a readable"),
        ("missing.npz", "no such"),
        ("damaged.npz", "do not match"),
    ]:
        with pytest.raises(fastnet.ModelFileError, match=words):
            fastnet.load_model(tmp_path / name)


# ----------------------------------------------------------------------------- tiled inference

TILED = fastnet.FastNetConfig(width=8, blocks=2)


@pytest.fixture(scope="module")
def tiled_params():
    """Fresh parameters moved off their initial values (scale 1, shift 0), as training moves them,
    so that wrong instance-norm statistics show in the output."""
    params = fastnet.init(TILED, jax.random.key(0))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def photo_203():
    from nstyle import images

    return images.load_image("builtin:astronaut", max_side=203)  # 203×203: not a multiple of 4 or of the tile


def test_tiled_equals_untiled_with_the_whole_images_statistics(tiled_params, photo_203):
    """Tiles of 64 px (4×4 windows of one size, reaching the image's edges) with the statistics
    of the whole image: the stitched result is the untiled one. Measured max |Δ| 1.3e-5."""
    untiled = np.asarray(fastnet.stylize(TILED, tiled_params, jnp.asarray(photo_203)[None]))[0]
    tiled = fastnet.stylize_tiled(TILED, tiled_params, photo_203, tile=64)
    assert tiled.shape == photo_203.shape
    assert float(np.abs(tiled - untiled).max()) < 1e-4


def test_tiled_statistics_from_a_smaller_copy_leave_no_seam_and_refine_to_exact(tiled_params, photo_203):
    """Statistics of a 101 px copy differ from the image's (this network is sensitive to them:
    measured mean |Δ| 0.011 on a random, perturbed network), but every tile uses the same ones:
    the difference to the untiled result jumps no more across tile borders than inside tiles.
    ``exact=True`` refines them to the untiled result."""
    untiled = np.asarray(fastnet.stylize(TILED, tiled_params, jnp.asarray(photo_203)[None]))[0]
    tiled = fastnet.stylize_tiled(TILED, tiled_params, photo_203, tile=64, stats_side=101)
    d = (tiled - untiled).mean(-1)  # (H, W)
    assert float(np.abs(d).mean()) > 1e-3  # the statistics do differ
    jumps = np.abs(np.diff(d, axis=1))  # between columns j and j+1
    offset = 1  # the image is padded by one column on the left (203 -> 204, centred)
    seams = [c - offset - 1 for c in (64, 128, 192)]
    inside = np.delete(jumps, seams, axis=1)
    assert float(jumps[:, seams].mean()) < 2 * float(inside.mean())
    exact = fastnet.stylize_tiled(TILED, tiled_params, photo_203, tile=64, stats_side=101, exact=True)
    assert float(np.abs(exact - untiled).max()) < 1e-4


def test_tiles_need_their_reach(tiled_params, photo_203, monkeypatch):
    untiled = np.asarray(fastnet.stylize(TILED, tiled_params, jnp.asarray(photo_203)[None]))[0]
    monkeypatch.setattr(fastnet, "reach", lambda cfg: 8)  # far less than the 38 px this network looks at
    tiled = fastnet.stylize_tiled(TILED, tiled_params, photo_203, tile=64)
    assert float(np.abs(tiled - untiled).max()) > 1e-2


def test_inference_plan_fits_the_budget():
    cfg = fastnet.FastNetConfig()
    h, w = 4000, 6000
    untiled = fastnet.plan_inference(cfg, h, w, 10**12)
    assert untiled.tile is None and untiled.bytes > 10 * 2**30
    plan = fastnet.plan_inference(cfg, h, w, 4 * 2**30)
    assert plan.tile is not None and plan.bytes <= 4 * 2**30 and plan.stats_side <= 6000
    assert fastnet.plan_inference(cfg, h, w, 4 * 2**30, tile=None) is None  # untiled only: does not fit
    assert fastnet.plan_inference(cfg, h, w, 2**30) is None  # the image alone does not fit


FIXTURES = Path(__file__).parent / "fixtures"


def test_a_version_1_model_loads_and_runs_as_trained():
    """tests/fixtures/fastnet_v1.npz was written by the version-1 code (tools/make_fastnet_v1_fixture.py),
    with its output for a fixed input: single style, the (tanh(z) + 1) / 2 head."""
    cfg, params, meta = fastnet.load_model(FIXTURES / "fastnet_v1.npz")
    assert cfg.output == "tanh" and cfg.styles == 1 and meta["style"] == "builtin:coffee"
    with np.load(FIXTURES / "fastnet_v1_expected.npz") as z:
        x, want = z["input"], z["output"]
    assert np.mean((want < 0.02) | (want > 0.98)) > 0.2  # the saturated range, where a linear head would differ
    np.testing.assert_allclose(fastnet.apply(cfg, params, jnp.asarray(x)), want, atol=1e-5)
    np.testing.assert_allclose(fastnet.stylize(cfg, params, jnp.asarray(x)), want, atol=1e-5)


# ----------------------------------------------------------------------------- several styles

MULTI = fastnet.FastNetConfig(width=4, blocks=1, styles=3, output="linear")


@pytest.fixture(scope="module")
def multi_params():
    """A 3-style network whose styles differ: each conditional norm's rows perturbed independently."""
    params = fastnet.init(MULTI, jax.random.key(0))
    flat = traverse_util.flatten_dict(params)
    keys = jax.random.split(jax.random.key(1), len(flat))
    for k, (path, v) in zip(keys, sorted(flat.items())):
        if path[-2].startswith("ConditionalInstanceNorm_"):
            flat[path] = v + 0.5 * jax.random.normal(k, v.shape)
    return traverse_util.unflatten_dict(flat)


def test_multi_style_network_has_a_scale_and_shift_per_style(multi_params):
    single = fastnet.init(TINY, jax.random.key(0))
    flat_m = traverse_util.flatten_dict(multi_params, sep="/")
    flat_s = traverse_util.flatten_dict(single, sep="/")
    norms = {k: v.shape for k, v in flat_m.items() if "ConditionalInstanceNorm" in k}
    assert norms and all(shape[0] == 3 for shape in norms.values())
    # the convolutions are shared: everything but the norms has the single-style shapes
    shared = {k: v.shape for k, v in flat_m.items() if "ConditionalInstanceNorm" not in k}
    assert shared == {k: v.shape for k, v in flat_s.items() if "InstanceNorm" not in k}
    extra = sum(np.prod(s) for s in norms.values()) - sum(
        np.prod(v.shape) for k, v in flat_s.items() if "InstanceNorm" in k
    )
    assert fastnet.param_count(multi_params) == fastnet.param_count(single) + extra
    assert extra == 2 * sum(np.prod(v.shape) for k, v in flat_s.items() if "InstanceNorm" in k)


def test_one_hot_style_weights_equal_that_style_alone_and_mixes_interpolate(multi_params):
    x = jax.random.uniform(jax.random.key(4), (2, 32, 28, 3))
    eye = np.eye(3, dtype=np.float32)
    outs = [fastnet.apply(MULTI, multi_params, x, eye[k]) for k in range(3)]
    for k in range(3):
        # the one-hot row of the mixing code == the plain instance norm with that style's parameters
        cfg1, p1 = fastnet.select_style(MULTI, multi_params, k)
        assert cfg1.styles == 1
        np.testing.assert_allclose(outs[k], fastnet.apply(cfg1, p1, x), atol=2e-5)
    assert float(jnp.mean(jnp.abs(outs[0] - outs[1]))) > 0.01  # distinct styles, distinct outputs
    # the endpoints of an interpolation are the one-hot outputs; the middle is neither
    for t, want in [(0.0, outs[0]), (1.0, outs[1])]:
        np.testing.assert_array_equal(fastnet.apply(MULTI, multi_params, x, np.array([1 - t, t, 0.0])), want)
    mid = fastnet.apply(MULTI, multi_params, x, np.array([0.5, 0.5, 0.0]))
    assert float(jnp.mean(jnp.abs(mid - outs[0]))) > 1e-3 and float(jnp.mean(jnp.abs(mid - outs[1]))) > 1e-3
    # per-image rows: each image of the batch gets its own style
    both = fastnet.apply(MULTI, multi_params, x, eye[[2, 0]])
    np.testing.assert_allclose(both[0], outs[2][0], atol=1e-6)
    np.testing.assert_allclose(both[1], outs[0][1], atol=1e-6)


def test_multi_style_network_needs_style_weights_of_the_right_shape(multi_params):
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="holds 3 styles"):
        fastnet.apply(MULTI, multi_params, x)
    with pytest.raises(ValueError, match="S=3"):
        fastnet.apply(MULTI, multi_params, x, np.ones(2))


def test_multi_style_model_round_trip(tmp_path, multi_params):
    path = tmp_path / "multi.npz"
    fastnet.export_model(path, MULTI, multi_params, {"styles": ["a.jpg", "b.jpg", "c.jpg"]})
    cfg, params, meta = fastnet.load_model(path)
    assert cfg == MULTI and meta["styles"] == ["a.jpg", "b.jpg", "c.jpg"]
    x = jnp.full((1, 16, 16, 3), 0.3).at[:, 4:9].set(0.8)
    w = np.array([0.2, 0.3, 0.5])
    np.testing.assert_array_equal(fastnet.apply(cfg, params, x, w), fastnet.apply(MULTI, multi_params, x, w))


def test_tiled_multi_style_mix_equals_untiled(multi_params, photo_203):
    """A multi-style network tiled with a style mix: the mixed scales and shifts
    (:func:`fastnet.mix_styles`) give the untiled mixed output, clipped to [0, 1]."""
    w = np.array([0.2, 0.5, 0.3], np.float32)
    untiled = np.asarray(fastnet.stylize(MULTI, multi_params, jnp.asarray(photo_203)[None], w))[0]
    tiled = fastnet.stylize_tiled(MULTI, multi_params, photo_203, tile=64, stats_side=1000, style_weights=w)
    assert tiled.min() >= 0.0 and tiled.max() <= 1.0
    assert float(np.abs(tiled - untiled).max()) < 1e-4
    with pytest.raises(ValueError, match="holds 3 styles"):
        fastnet.stylize_tiled(MULTI, multi_params, photo_203, tile=64)
