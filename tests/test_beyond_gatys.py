"""Options beyond the paper, with the real weights: style losses in the optimiser, spatial
control, the iterate average, the multi-scale schedule with Adam's state carried over,
padding and rescaled average pooling, and their config keys."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import images, losses, metrics, optimize, transfer, vgg
from nstyle._errors import UserError
from nstyle.cli import schema
from nstyle.optimize import OptimConfig

SHALLOW = losses.PerceptualLoss(
    content_layers=("conv2_2",), content_weights=(1.0,), style_layers=("conv1_1", "conv2_1"), style_weights=(0.5, 0.5)
)


# ------------------------------------------------------------------- style losses, optimised


@pytest.mark.parametrize("kind", ["meanstd", "w2"])
def test_style_losses_optimise_in_batches_each_image_as_alone(vgg19, tiny, kind):
    """A batched sweep over β with a blend of two styles at their own sizes (style scale):
    each member is what it would be alone, and the style term falls."""
    loss = dataclasses.replace(SHALLOW, style_loss=kind, normalize=True, beta=10.0)
    styles = [tiny["style"], images.resize(tiny["style"][:, ::-1], (24, 24))]
    kw = dict(content=tiny["content"], styles=styles, style_blend=[0.7, 0.3], optim=OptimConfig(steps=5))
    rb = optimize.stylize_batch(vgg19, loss, weights={"beta": [3.0, 30.0]}, **kw)
    for i, beta in enumerate([3.0, 30.0]):
        r = optimize.stylize_batch(vgg19, loss, weights={"beta": [beta]}, **kw)
        np.testing.assert_allclose(rb.images[i], r.images[0], atol=5e-5)
    style = rb.history["style"]  # (T, B)
    assert np.all(np.isfinite(style)) and np.all(style[-1] < 0.8 * style[0])
    assert set(rb.history) >= {"style/conv1_1", "style/conv2_1"}


# --------------------------------------------------------------------------- spatial control


def test_masks_put_each_style_in_its_region(vgg19):
    """Two styles, left and right halves of the content: swapping the masks swaps which half
    is closer (VGG16 style distance, independent of the VGG19 loss) to which style."""
    content = images.load_image("builtin:chelsea", 64)  # (42, 64, 3)
    a, b = images.load_image("builtin:ihc", 64), images.load_image("builtin:gravel", 64)
    h, w = content.shape[:2]
    left = np.zeros((h, w), np.float32)
    left[:, : w // 2] = 1.0
    loss = losses.PerceptualLoss(beta=1e4)

    def run(masks):
        return optimize.stylize(vgg19, loss, content=content, styles=[a, b], masks=masks, optim=OptimConfig(steps=40))

    ab, ba = run(np.stack([left, 1 - left])).image, run(np.stack([1 - left, left])).image
    half = w // 2
    d = metrics.style_distance
    assert d(ab[:, :half], a) < d(ba[:, :half], a) and d(ba[:, :half], b) < d(ab[:, :half], b)
    assert d(ab[:, half:], b) < d(ba[:, half:], b) and d(ba[:, half:], a) < d(ab[:, half:], a)


def test_mask_of_ones_is_the_plain_loss_and_style_masks_restrict_the_target(vgg19, tiny):
    plain = optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [tiny["style"]], None, 1)
    ones = np.ones((1,) + tiny["content"].shape[:2], np.float32)
    masked = optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [tiny["style"]], None, 1, masks=ones)
    x = jnp.asarray(tiny["content"][None] * 0.8)
    t1 = losses.perceptual_loss(vgg19, x, plain, SHALLOW)[0]
    t2 = losses.perceptual_loss(vgg19, x, masked, SHALLOW)[0]
    np.testing.assert_allclose(np.asarray(t1), np.asarray(t2), rtol=1e-5)
    # a style mask takes the statistic over its region only: the top half of the style image
    top = np.zeros(tiny["style"].shape[:2], np.float32)
    top[:16] = 1.0
    c = tiny["content"]
    t_top = optimize.prepare_targets(vgg19, SHALLOW, c, [tiny["style"]], None, 1, style_masks=[top]).style
    f = vgg.features(vgg19, jnp.asarray(tiny["style"][None]), SHALLOW.style_layers, "avg")
    lm = losses.layer_masks(top[None, :, :, None], SHALLOW.style_layers, "vgg19", "avg")
    for layer in SHALLOW.style_layers:  # the region's mean Gram matrix, the mask pooled to the layer
        want = losses.weighted_mean_gram(f[layer], jnp.asarray(lm[layer][..., 0] ** 2))
        np.testing.assert_allclose(np.asarray(t_top[layer]), np.asarray(want), rtol=1e-5, atol=1e-3)
        assert not np.allclose(np.asarray(t_top[layer]), np.asarray(plain.style[layer]), rtol=0.05)


def test_mask_inputs_are_checked(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((30, 45), 255, np.uint8)).save(tmp_path / "ok.png")  # chelsea's 451×300 aspect
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "square.png")
    Image.fromarray(np.zeros((30, 45), np.uint8)).save(tmp_path / "black.png")
    two = ("builtin:ihc", "builtin:coffee")
    s = transfer.TransferSettings(styles=two, masks=(str(tmp_path / "ok.png"), str(tmp_path / "ok.png")))
    inputs = transfer.load_inputs(s)
    assert inputs.masks.shape == (2, 30, 45) and float(inputs.masks.max()) == 1.0
    for masks, match in [
        (("ok.png",), "need 2 masks"),
        (("ok.png", "square.png"), "aspect ratio"),
        (("ok.png", "black.png"), "black everywhere"),
    ]:
        with pytest.raises(UserError, match=match):
            transfer.load_inputs(dataclasses.replace(s, masks=tuple(str(tmp_path / m) for m in masks)))


# ------------------------------------------------------------------------ iterate average


def test_average_returns_the_bias_corrected_average_of_the_evaluated_iterates(vgg19, tiny):
    seen = []
    d = 0.6
    r = optimize.stylize(
        vgg19,
        SHALLOW,
        content=tiny["content"],
        styles=[tiny["style"]],
        optim=OptimConfig(name="adam", steps=5, average=d),
        callback=lambda i, state, m: seen.append(np.asarray(state.image[0])),
    )
    evaluated = [tiny["content"]] + seen[:-1]  # step t evaluates the image step t−1 left
    total = sum(d ** (len(evaluated) - 1 - t) * (1 - d) * x for t, x in enumerate(evaluated))
    want = total / (1 - d ** len(evaluated))
    np.testing.assert_allclose(r.image, np.clip(want, 0, 1), atol=1e-5)
    assert not np.allclose(r.image, np.clip(seen[-2], 0, 1), atol=1e-3)  # not the last iterate
    targets = optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [tiny["style"]], None, 1)
    value, _ = optimize.make_evaluate(SHALLOW)(
        jnp.asarray(want[None]), vgg19, targets, optimize.loss_weights(SHALLOW, 1)
    )
    assert r.final["loss"] == pytest.approx(float(value[0]), rel=1e-5)  # the loss of the average itself


# ----------------------------------------------------------------- multi-scale schedule


def test_multiscale_sizes_grow_by_sqrt2_from_about_128():
    assert transfer.multiscale_sizes(256) == (128, 181, 256)
    assert transfer.multiscale_sizes(512) == (128, 181, 256, 362, 512)
    assert transfer.multiscale_sizes(160) == (113, 160)
    assert transfer.multiscale_sizes(64) == (64,)
    sizes = transfer.multiscale_sizes(1024)
    assert sizes[0] == 128 and all(1.35 < b / a < 1.45 for a, b in zip(sizes, sizes[1:]))


def test_schedule_carries_adams_moments_and_restarts_lbfgs(vgg19, monkeypatch):
    import optax

    calls = []
    real = optimize.stylize

    def spy(*args, **kw):
        r = real(*args, **kw)
        calls.append((kw.get("opt_state"), r.opt_state))
        return r

    monkeypatch.setattr(optimize, "stylize", spy)
    s = transfer.TransferSettings(loss=SHALLOW, optim=OptimConfig(name="adam"), sizes=(24, 32), stage_steps=(3, 2))
    r = transfer.run(s, transfer.load_inputs(s), vgg19)
    assert [st["shape"] for st in r.stages] == [[16, 24], [21, 32]]
    (given1, out1), (given2, out2) = calls
    assert given1 is None
    count = lambda st: int(np.asarray(optax.tree_utils.tree_get(st, "count"))[0])  # noqa: E731
    assert (count(out1), count(given2), count(out2)) == (3, 3, 5)  # the second stage goes on from step 3
    mu1, mu2 = (optax.tree_utils.tree_get(st, "mu") for st in (out1, given2))
    assert mu2.shape == (1, 21, 32, 3)
    np.testing.assert_allclose(np.asarray(mu2), np.asarray(jax.image.resize(mu1, (1, 21, 32, 3), "linear")), rtol=1e-6)
    calls.clear()
    transfer.run(dataclasses.replace(s, optim=OptimConfig(), stage_steps=(2, 1)), transfer.load_inputs(s), vgg19)
    assert calls[1][0] is None  # L-BFGS restarts


# ------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize("kind", ["gram", "meanstd", "w2"])
def test_normalised_weights_keep_the_content_style_balance_across_sizes(vgg19, kind):
    """The same scene (content chelsea, style ihc, the image a blur of the content) at 48 and
    at 192 px: with the paper's weights the content term grows with the positions (about 16x
    here) while the style term does not, so α L_c / β L_s moves by an order of magnitude;
    with ``normalize`` every term is a relative error and the balance moves by less than 2x."""
    photo, painting = images.load_image("builtin:chelsea"), images.load_image("builtin:ihc")

    def balance(loss, side):
        content = jnp.asarray(images.resize_longest(photo, side))[None]  # (1, H, W, 3)
        image = jnp.asarray(images.resize(images.resize_longest(photo, side // 4), content.shape[1:3]))[None]
        style = jnp.asarray(images.resize_longest(painting, side))[None]
        targets = losses.Targets(
            losses.content_targets(vgg19, content, loss), losses.style_targets(vgg19, [style], loss)
        )
        _, aux = losses.perceptual_loss(vgg19, image, targets, loss)
        return float(aux["content"][0] / aux["style"][0])

    paper = losses.PerceptualLoss(style_loss=kind)
    normalized = dataclasses.replace(losses.NORMALIZED, style_loss=kind)
    paper_ratio = balance(paper, 192) / balance(paper, 48)
    normalized_ratio = balance(normalized, 192) / balance(normalized, 48)
    assert paper_ratio > 5.0, paper_ratio
    assert 0.5 < normalized_ratio < 2.0, normalized_ratio


# ------------------------------------------------------------------ padding and pooling


def np_conv(x, kernel, bias, mode):
    """3×3 'same' cross-correlation in numpy with the given np.pad mode: (H, W, I) -> (H, W, O)."""
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode=mode)
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[i : i + h, j : j + w] @ kernel[i, j]
    return out + bias


@pytest.mark.parametrize("padding, mode", [("reflect", "reflect"), ("replicate", "edge"), ("zero", "constant")])
def test_padding_modes_match_numpy(vgg19, padding, mode):
    x = images.load_image("builtin:coffee", 24)[None]  # (1, 16, 24, 3)
    f = vgg.features(vgg19, jnp.asarray(x), ("conv1_1", "pool1", "conv2_1"), "avg", padding=padding)
    pre = vgg.preprocess(jnp.asarray(x), "caffe")[0]
    p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in vgg19.convs.items()}
    want1 = np.maximum(np_conv(np.asarray(pre, np.float64), p["conv1_1"]["kernel"], p["conv1_1"]["bias"], mode), 0)
    np.testing.assert_allclose(np.asarray(f["conv1_1"][0]), want1, rtol=1e-4, atol=1e-2)
    want2 = np.maximum(
        np_conv(np.asarray(f["pool1"][0], np.float64), p["conv2_1"]["kernel"], p["conv2_1"]["bias"], mode), 0
    )
    np.testing.assert_allclose(np.asarray(f["conv2_1"][0]), want2, rtol=1e-4, atol=1e-2)
    g = jax.grad(lambda y: jnp.sum(vgg.features(vgg19, y, ("conv2_1",), "avg", padding=padding)["conv2_1"]))(
        jnp.asarray(x)
    )
    assert np.all(np.isfinite(np.asarray(g)))


def test_rescaled_average_pooling_keeps_max_poolings_activation_sizes(vgg19):
    """On an image the scales were not measured on, at another size: plain average pooling
    shrinks conv5_1's mean activation to under a third of max pooling's; rescaled, it stays
    within 30% of it at every block."""
    x = jnp.asarray(images.load_image("builtin:motorcycle_left", 128)[None])
    layers = ("conv2_1", "conv3_1", "conv4_1", "conv5_1")
    f = {p: vgg.features(vgg19, x, layers, p) for p in ("max", "avg", "avg_rescaled")}
    ratio = {p: {l: float(f[p][l].mean() / f["max"][l].mean()) for l in layers} for p in ("avg", "avg_rescaled")}
    assert ratio["avg"]["conv5_1"] < 1 / 3
    assert all(0.7 < r < 1.3 for r in ratio["avg_rescaled"].values()), ratio


# -------------------------------------------------------------------------------- config


def _settings(*overrides):
    from hydra import compose, initialize_config_dir

    from nstyle.cli import app

    schema.register()
    with initialize_config_dir(config_dir=str(app.conf_dir()), version_base="1.3"):
        return schema.stylize_settings(compose("config", overrides=list(overrides)))


def test_new_keys_reach_the_library():
    s = _settings(
        "loss.style_loss=w2",
        "loss.normalize=true",
        "loss.layer_weights=falling",
        "network.padding=reflect",
        "network.pooling=avg_rescaled",
        "optim.average=0.9",
        "schedule=sqrt2",
        "size=256",
        "schedule_steps=[7]",
    )
    assert (s.loss.style_loss, s.loss.normalize, s.loss.padding, s.loss.pooling) == (
        "w2",
        True,
        "reflect",
        "avg_rescaled",
    )
    assert s.loss.style_weights == losses.layer_weights("falling", 5) and s.optim.average == 0.9
    assert s.sizes == (128, 181, 256) and s.stage_steps == (7, 7, s.optim.steps)
    m = _settings("style=[builtin:ihc,builtin:coffee]", "masks=[a.png,b.png]", "style_masks=[null,c.png]")
    assert m.masks == ("a.png", "b.png") and m.style_masks == (None, "c.png")


def test_new_keys_default_to_the_library_and_the_normalized_preset_is_the_librarys():
    default = _settings()
    assert default == transfer.TransferSettings()
    lib = losses.NORMALIZED
    n = _settings("loss=normalized")
    assert n.loss == dataclasses.replace(
        transfer.TransferSettings().loss, alpha=lib.alpha, beta=lib.beta, normalize=True
    )


def test_quick_preset_is_normalised_rescaled_and_coarse_to_fine():
    """experiment=quick (benchmarks/QUICK.md): the library's normalised weights, rescaled average
    pooling, the √2 schedule from about 128 px, and fewer iterations at the full size."""
    s = _settings("experiment=quick", "size=160")
    paper = transfer.TransferSettings()
    assert s.loss == dataclasses.replace(
        paper.loss, alpha=losses.NORMALIZED.alpha, beta=losses.NORMALIZED.beta, normalize=True, pooling="avg_rescaled"
    )
    assert s.sizes == (113, 160) and s.stage_steps[-1] < paper.stage_steps[-1]
    assert _settings("experiment=quick", "size=512").sizes == (128, 181, 256, 362, 512)
    assert _settings("experiment=quick", "loss.beta=6").loss.beta == 6.0  # still overridable


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["loss.style_weights=[1,1,1,1,1]", "loss.layer_weights=falling"], "not both"),
        (["schedule=fast"], "schedule"),
        (["style=[builtin:ihc,builtin:coffee]", "masks=[a.png]"], "need 2 masks"),
        (["style=[builtin:ihc,builtin:coffee]", "masks=[a.png,b.png]", "style_blend=[1,2]"], "style_blend"),
        (["style_masks=[a.png,b.png]"], "style_masks"),
        (["optim.average=1.5"], "average"),
    ],
)
def test_new_keys_refuse_mistakes_in_one_line(overrides, match):
    with pytest.raises(UserError, match=match):
        _settings(*overrides)


def test_w2_runs_with_one_blas_thread():
    """LAPACK's eigh (the W2 loss) runs on OpenBLAS, whose spinning threads are slow on a busy CPU."""
    from threadpoolctl import threadpool_info

    from nstyle import _xla

    jax.block_until_ready(jax.jit(jnp.linalg.eigh)(jnp.eye(3)))  # loads the LAPACK behind it
    with _xla.single_threaded_lapack():
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
