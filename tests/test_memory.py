"""Memory modes: remat and tiled give the plain pass's loss and gradient, bfloat16 close ones;
the estimate picks the fastest mode that fits and refuses with a size that would fit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import losses, memory, optimize, transfer, vgg
from nstyle.transfer import MemoryBudgetError

PAPER = losses.PerceptualLoss()  # content conv4_2, style conv1_1 … conv5_1
# shallow enough that a 96 px image holds several tiles with their halo (reach 13 px)
SHALLOW = losses.PerceptualLoss(
    content_layers=("conv3_1",), style_layers=("conv1_1", "conv2_1", "conv3_1"), style_weights=(1.0, 1.0, 1.0)
)


def _problem(params, loss, size, seed=0):
    rng = np.random.default_rng(seed)
    content, style, x = (jnp.asarray(rng.random((1, *size, 3), dtype=np.float32)) for _ in range(3))
    targets = losses.Targets(losses.content_targets(params, content, loss), losses.style_targets(params, [style], loss))
    return x, targets


def _value_and_grad(params, loss, x, targets, **kw):
    f = jax.jit(jax.value_and_grad(lambda x: losses.perceptual_loss(params, x, targets, loss, **kw)[0].sum()))
    v, g = f(x)
    return float(v), np.asarray(g)


def test_remat_gives_the_plain_loss_and_gradient_and_keeps_less(vgg19):
    params = vgg.with_backward_kernels(vgg19)
    x, targets = _problem(params, PAPER, (48, 64))
    v0, g0 = _value_and_grad(params, PAPER, x, targets)
    v1, g1 = _value_and_grad(params, PAPER, x, targets, memory="remat")
    # the same operations on the same values; XLA fuses the recomputed blocks' backward pass
    # differently, so the gradient may differ in float32 rounding (measured: loss equal to the
    # last bit, gradient 1.1e-7 in relative L2 norm and in max |Δ| / max |g|)
    assert v1 == pytest.approx(v0, rel=1e-7)
    assert np.linalg.norm(g1 - g0) / np.linalg.norm(g0) < 1e-6
    assert float(np.abs(g1 - g0).max()) < 1e-6 * float(np.abs(g0).max())

    # and XLA:CPU keeps the recomputation (its own barrier-based checkpoint would be merged away):
    # one more pass of convolutions, less temporary memory (at this size the weights' share is
    # large: measured 0.90 × plain's temporaries; 0.77 at 512 px, benchmarks/MEMORY.md)
    def compiled(mode):
        f = jax.jit(
            jax.value_and_grad(lambda x: losses.perceptual_loss(params, x, targets, PAPER, memory=mode)[0].sum())
        )
        return f.lower(x).compile()

    plain, remat = compiled("plain"), compiled("remat")
    assert remat.as_text().count(" convolution(") > plain.as_text().count(" convolution(")
    assert remat.memory_analysis().temp_size_in_bytes < 0.95 * plain.memory_analysis().temp_size_in_bytes


def test_tiled_gives_the_plain_loss_and_gradient(vgg19):
    """Several tiles (3×3 at 96 px with tile 32) with windows stopping at the image's edges.

    Only float32 summation order differs, so the loss agrees to 1e-6. The gradient is compared
    in relative L2 norm, not elementwise: a ReLU whose input lies within rounding of 0 may open
    in one pass and not the other, which moves the gradient of its receptive field; a 1e-7
    relative perturbation of the input does the same to the plain pass (measured: up to 1e-3 of
    the largest gradient element, in one patch)."""
    params = vgg.with_backward_kernels(vgg19)
    x, targets = _problem(params, SHALLOW, (96, 88))
    assert len(vgg.tiles((96, 88), SHALLOW.layers, "vgg19", 32)) == 9
    v0, g0 = _value_and_grad(params, SHALLOW, x, targets)
    v1, g1 = _value_and_grad(params, SHALLOW, x, targets, memory="tiled", tile=32)
    assert v1 == pytest.approx(v0, rel=1e-6)
    assert np.linalg.norm(g1 - g0) / np.linalg.norm(g0) < 1e-5


@pytest.mark.parametrize(
    "change",
    [
        {"padding": "reflect", "pooling": "avg_rescaled"},
        {"padding": "replicate", "normalize": True},
    ],
)
def test_memory_modes_follow_padding_pooling_and_normalisation(vgg19, change):
    """remat and tiled compute the same loss for the other paddings, the rescaled average
    pooling and the normalised terms (the tiles' halo absorbs any padding, as it does zeros)."""
    loss = dataclasses.replace(SHALLOW, **change)
    params = vgg.with_backward_kernels(vgg19)
    x, targets = _problem(params, loss, (96, 88))
    v0, g0 = _value_and_grad(params, loss, x, targets)
    for kw in ({"memory": "remat"}, {"memory": "tiled", "tile": 32}):
        v1, g1 = _value_and_grad(params, loss, x, targets, **kw)
        assert v1 == pytest.approx(v0, rel=1e-6), kw
        assert np.linalg.norm(g1 - g0) / np.linalg.norm(g0) < 1e-5, kw
    # and differently from the zero-padded, max-pooled, unnormalised loss: the option is used
    v_base, _ = _value_and_grad(params, SHALLOW, x, _problem(params, SHALLOW, (96, 88))[1])
    assert abs(v_base - v0) > 1e-3 * abs(v0)


def test_tiled_mode_refuses_the_losses_it_cannot_sum(vgg19):
    loss = dataclasses.replace(SHALLOW, style_loss="meanstd")
    assert not losses.tiled_supported(loss, False) and not losses.tiled_supported(SHALLOW, True)
    assert losses.tiled_supported(SHALLOW, False)
    x, targets = _problem(vgg19, loss, (48, 48))
    with pytest.raises(ValueError, match="Gram style losses without masks"):
        losses.perceptual_loss(vgg19, x, targets, loss, memory="tiled", tile=32)


def test_tiled_windows_need_their_reach(vgg19, monkeypatch):
    """The same comparison with windows 4 px short of what the deepest layer looks at fails: the
    halo is what makes the tiles exact."""
    params = vgg.with_backward_kernels(vgg19)
    x, targets = _problem(params, SHALLOW, (96, 88))
    v0, g0 = _value_and_grad(params, SHALLOW, x, targets)
    reach = vgg.reach(SHALLOW.layers)
    monkeypatch.setattr(vgg, "reach", lambda layers, arch="vgg19": reach - 4 - 4)  # halo rounds up to 4
    v1, g1 = _value_and_grad(params, SHALLOW, x, targets, memory="tiled", tile=32)
    assert abs(v1 - v0) / v0 > 1e-4 or np.linalg.norm(g1 - g0) / np.linalg.norm(g0) > 1e-3


def test_tiled_targets_are_the_whole_images(vgg19):
    x, _ = _problem(vgg19, SHALLOW, (80, 72))
    want = losses.content_targets(vgg19, x, SHALLOW)["conv3_1"]
    got = losses.content_targets(vgg19, x, SHALLOW, tile=32)["conv3_1"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    g0 = losses.style_targets(vgg19, [x], SHALLOW)
    g1 = losses.style_targets(vgg19, [x], SHALLOW, tile=32)
    for layer in SHALLOW.style_layers:
        np.testing.assert_allclose(np.asarray(g1[layer]), np.asarray(g0[layer]), rtol=1e-5, atol=1e-3)


def test_remat_bf16_is_close(vgg19):
    """bfloat16 activations (8-bit mantissa), float32 accumulation: measured 2.7% on the loss and
    a gradient cosine of 0.9994 from a random start. Stated tolerance: 5%, cosine >= 0.99."""
    params = vgg.with_backward_kernels(vgg19)
    x, targets = _problem(params, PAPER, (48, 64))
    v0, g0 = _value_and_grad(params, PAPER, x, targets)
    v1, g1 = _value_and_grad(params, PAPER, x, targets, memory="remat_bf16")
    assert v1 == pytest.approx(v0, rel=0.05)
    assert float(np.vdot(g0, g1) / np.linalg.norm(g0) / np.linalg.norm(g1)) >= 0.99


def test_stylize_in_each_exact_mode_gives_the_same_image(vgg19, small_images):
    kw = dict(
        content=small_images["content"], styles=[small_images["style"]], optim=optimize.OptimConfig(steps=4)
    )  # fmt: skip
    plain = optimize.stylize(vgg19, SHALLOW, **kw)
    remat = optimize.stylize(vgg19, SHALLOW, memory="remat", **kw)
    tiled = optimize.stylize(vgg19, SHALLOW, memory="tiled", tile=16, **kw)
    np.testing.assert_allclose(remat.image, plain.image, atol=1e-5)  # float32 rounding of the gradient
    assert remat.final["loss"] == pytest.approx(plain.final["loss"], rel=1e-6)
    np.testing.assert_allclose(tiled.image, plain.image, atol=1e-4)
    assert tiled.final["loss"] == pytest.approx(plain.final["loss"], rel=1e-5)


# ------------------------------------------------------------------ the estimate and the choice


def test_estimate_orders_the_modes_and_grows_with_size():
    layers = PAPER.layers
    plain, remat, tiled = (memory.estimate(2048, 2048, layers, mode=m, tile=512) for m in ("plain", "remat", "tiled"))
    assert tiled < remat < plain
    assert memory.estimate(4096, 4096, layers) > 3.5 * memory.estimate(2048, 2048, layers) - 3 * memory.BASE_BYTES
    # tiled: the activations are one window's, whatever the image; the image-sized buffers still grow
    small, big = (memory.estimate(s, s, layers, mode="tiled", tile=512) for s in (2048, 4096))
    image_part = (memory.IMAGE_BUFFERS["lbfgs"] + 20) * 4 * 3 * (4096**2 - 2048**2)
    assert big - small == pytest.approx(image_part + 4 * 512 * ((4096 // 8) ** 2 - (2048 // 8) ** 2), rel=0.2)
    assert memory.estimate(1024, 1024, layers, optimizer="lbfgs", history=20) > memory.estimate(1024, 1024, layers)


def test_choose_takes_the_fastest_mode_that_fits():
    layers, h, w = PAPER.layers, 1536, 1024
    need = {m: memory.estimate(h, w, layers, mode=m) for m in ("plain", "remat")}
    assert memory.choose(need["plain"], h, w, layers) == memory.Plan("plain", None, need["plain"])
    assert memory.choose(need["plain"] - 1, h, w, layers) == memory.Plan("remat", None, need["remat"])
    plan = memory.choose(need["remat"] - 1, h, w, layers)
    assert plan.mode == "tiled" and plan.bytes <= need["remat"] - 1
    # the largest tile that fits: the next larger one (the one tried before it) does not
    tiles = memory.tiles_to_try(h, w, layers, "vgg19")
    assert tiles == sorted(tiles, reverse=True) and plan.tile in tiles
    for t in tiles[: tiles.index(plan.tile)]:
        assert memory.estimate(h, w, layers, mode="tiled", tile=t) > need["remat"] - 1
    assert memory.choose(memory.BASE_BYTES, h, w, layers) is None
    # a named mode is checked alone
    assert memory.choose(need["plain"] - 1, h, w, layers, mode="plain") is None
    assert memory.choose(need["plain"], h, w, layers, mode="remat").mode == "remat"


def test_max_side_that_fits_is_the_largest():
    layers, budget = PAPER.layers, 3 * 2**30
    side = memory.max_side_that_fits(budget, 1.5, layers)

    def fits(s, **kw):
        h, w = memory.images.longest_shape((1.0, 1.5), s)
        return memory.choose(budget, h, w, layers, **kw) is not None

    assert fits(side) and not fits(side + 1)
    plain_side = memory.max_side_that_fits(budget, 1.5, layers, mode="plain")
    assert fits(plain_side, mode="plain") and not fits(plain_side + 1, mode="plain") and plain_side < side
    assert memory.max_side_that_fits(10, 1.0, layers) == 0


def _inputs(h, w):
    return transfer.Inputs(content=np.zeros((h, w, 3), np.float32), styles=[np.zeros((h, w, 3), np.float32)], init=None)


def test_transfer_plans_each_stage_and_refuses_with_a_size_that_fits():
    s = transfer.TransferSettings(sizes=(512, 2048), stage_steps=(10, 2))
    inputs = _inputs(600, 900)
    big = memory.estimate(1365, 2048, s.loss.layers, mode="plain")
    plans = transfer.check_sizes(s, inputs, big)
    assert [p.mode for p in plans] == ["plain", "plain"]
    plans = transfer.check_sizes(s, inputs, big // 2)
    assert plans[0].mode == "plain" and plans[1].mode in ("remat", "tiled")  # the small stage stays fast
    budget = memory.BASE_BYTES + 50 * 2**20
    with pytest.raises(MemoryBudgetError) as e:
        transfer.check_sizes(s, inputs, budget)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("size=512:") and "would fit" in msg
    fit = int(msg.split("size=")[2].split(" would fit")[0])
    ok = dataclasses.replace(s, sizes=(fit,), stage_steps=(1,))
    transfer.check_sizes(ok, inputs, budget)  # the size it names does fit
    with pytest.raises(MemoryBudgetError):
        transfer.check_sizes(dataclasses.replace(ok, sizes=(fit + 8,)), inputs, budget)
    # an explicit mode that does not fit says so, and that auto would
    with pytest.raises(MemoryBudgetError, match="memory_mode=plain .* memory_mode=auto"):
        transfer.check_sizes(dataclasses.replace(s, memory_mode="plain"), inputs, big // 2)


def test_print_preset_is_coarse_to_fine_to_4096():
    from hydra import compose, initialize_config_dir

    from nstyle.cli import app, schema

    schema.register()
    with initialize_config_dir(config_dir=str(app.conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=print"])
    s = schema.stylize_settings(cfg)
    assert s.sizes == (256, 512, 1024, 2048, 4096) and s.memory_mode == "auto"
    # most iterations at low resolution, a few at the top
    assert s.stage_steps == (200, 100, 50, 20, 5)
    cost = sum(n * size**2 for n, size in zip(s.stage_steps, s.sizes)) / 4096**2
    assert cost == pytest.approx(15.5, rel=0.01)  # in iterations at 4096 px
