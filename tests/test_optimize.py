"""The optimisation core: one jitted step, L-BFGS/Adam driven by optax, batches, NaN guard.

Mechanics are checked with a shallow loss (conv1_1, conv2_1, conv2_2: cheap to compile and
run); the claim that matters — the paper's loss falls by a large factor — with the paper's
layers on small real images.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nstyle import losses, optimize
from nstyle.optimize import OptimConfig

SHALLOW = losses.PerceptualLoss(
    content_layers=("conv2_2",), content_weights=(1.0,), style_layers=("conv1_1", "conv2_1"), style_weights=(0.5, 0.5)
)


def test_step_is_one_jitted_function_compiled_once(vgg19, tiny):
    init, step = optimize.make_step(SHALLOW, OptimConfig())
    targets = optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [tiny["style"]], None, batch=1)
    w = optimize.loss_weights(SHALLOW, 1)
    state = init(jnp.asarray(tiny["content"])[None])
    state, m1 = step(state, vgg19, targets, w)
    compiled = step._cache_size()  # 1, or more where other tests ran this cached step on other shapes
    state, m2 = step(state, vgg19, targets, w)
    assert compiled >= 1 and step._cache_size() == compiled  # the second call reused the first compilation
    assert int(state.step) == 2
    assert set(m2) >= {"loss", "content", "style", "tv", "content/conv2_2", "style/conv1_1", "evals", "alive"}
    assert m1["loss"].shape == (1,) and int(m1["evals"][0]) == 1
    assert float(m2["loss"][0]) < float(m1["loss"][0])
    # make_step is cached on (loss, optim) with the step count aside: a new run reuses it
    assert optimize.make_step(SHALLOW, OptimConfig(steps=7))[1] is step


def test_paper_settings_lower_the_loss_by_a_large_factor(vgg19, small_images):
    r = optimize.stylize(
        vgg19,
        losses.PerceptualLoss(),
        content=small_images["content"],
        styles=[small_images["style"]],
        init="noise",
        key=jax.random.key(0),
        optim=OptimConfig(steps=25),
    )
    assert r.stopped_reason == "steps" and r.iterations == 25 and not r.diverged
    assert r.final["loss"] < r.history["loss"][0] / 10  # measured: ÷18 in 25 iterations
    assert r.final["style"] < r.history["style"][0] / 10
    assert r.evals == 25 and r.evals_per_iter == 1.0  # L-BFGS without line search: one evaluation each
    assert len(r.history["style/conv5_1"]) == 25
    assert r.image.shape == small_images["content"].shape and r.image.dtype == np.float32
    assert r.image.min() >= 0 and r.image.max() <= 1
    assert r.compile_s > 0 and r.wall_s > 0


def test_texture_synthesis_style_only(vgg19, tiny):
    loss = losses.PerceptualLoss(alpha=0.0, style_layers=SHALLOW.style_layers, style_weights=SHALLOW.style_weights)
    r = optimize.stylize(
        vgg19,
        loss,
        content=None,
        styles=[tiny["style"]],
        shape=(24, 40),
        init="noise",
        key=jax.random.key(1),
        optim=OptimConfig(steps=20),
    )
    assert r.image.shape == (24, 40, 3)
    assert r.final["style"] < r.history["style"][0] / 20
    assert "content/conv4_2" not in r.history and max(r.history["content"]) == 0.0


def test_content_reconstruction_content_only(vgg19, tiny):
    loss = losses.PerceptualLoss(beta=0.0, content_layers=("conv2_2",), content_weights=(1.0,))
    noise = np.asarray(jax.random.uniform(jax.random.key(2), tiny["content"].shape))
    r = optimize.stylize(vgg19, loss, content=tiny["content"], styles=[], init=noise, optim=OptimConfig(steps=30))
    assert r.final["content"] < r.history["content"][0] / 20
    assert max(r.history["style"]) == 0.0
    # the image moved towards the photo (measured: mean |error| 0.28 -> 0.19 in 30 iterations)
    err0 = np.abs(noise - tiny["content"]).mean()
    assert np.abs(r.image - tiny["content"]).mean() < 0.8 * err0


def test_batch_optimises_each_image_independently(vgg19, tiny):
    betas = [1e2, 1e4]
    rb = optimize.stylize_batch(
        vgg19,
        SHALLOW,
        content=tiny["content"],
        styles=[tiny["style"]],
        weights={"beta": betas},
        optim=OptimConfig(steps=6),
    )
    assert rb.images.shape == (2,) + tiny["content"].shape
    assert rb.history["loss"].shape == (6, 2) and list(rb.evals) == [6, 6]
    for i, beta in enumerate(betas):  # each image alone (a batch of one: the same compiled step as the other tests)
        r = optimize.stylize_batch(
            vgg19,
            SHALLOW,
            content=tiny["content"],
            styles=[tiny["style"]],
            weights={"beta": [beta]},
            optim=OptimConfig(steps=6),
        )
        np.testing.assert_allclose(rb.images[i], r.images[0], atol=2e-5)
        np.testing.assert_allclose(rb.history["loss"][:, i], r.history["loss"][:, 0], rtol=1e-4)
    assert not np.allclose(rb.images[0], rb.images[1], atol=1e-3)


def test_nonfinite_loss_stops_and_keeps_the_last_good_image(vgg19, tiny):
    x0 = np.asarray(tiny["content"]) * 0.5 + 0.25
    # an absurd Adam step sends the pixels to ±1e30; the loss of that image overflows
    r = optimize.stylize(
        vgg19,
        SHALLOW,
        content=tiny["content"],
        styles=[tiny["style"]],
        init=x0,
        optim=OptimConfig(name="adam", lr=1e30, steps=10),
    )
    assert r.stopped_reason == "nonfinite" and r.diverged
    assert r.iterations == 2  # the 2nd evaluation saw the non-finite loss
    assert not np.isfinite(r.history["loss"][-1])
    np.testing.assert_array_equal(r.image, x0)  # the image whose loss was finite
    assert np.isfinite(r.final["loss"])


def test_result_is_the_best_evaluated_iterate_with_its_exact_loss_terms(vgg19, tiny):
    # Adam with a large step oscillates, so the last evaluated image is not the best one
    r = optimize.stylize(
        vgg19,
        SHALLOW,
        content=tiny["content"],
        styles=[tiny["style"]],
        init="noise",
        optim=OptimConfig(name="adam", lr=0.3, steps=12, project=True),
    )
    loss = np.asarray(r.history["loss"])
    best = int(np.argmin(loss))
    assert best < len(loss) - 1  # not vacuous: the run did get worse after its best image
    for k, v in r.history.items():  # the reported terms are that iteration's, exactly
        assert r.final[k] == v[best], k
    # and they are the loss of the returned image (in [0, 1] throughout, so the clip changes nothing)
    targets = optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [tiny["style"]], None, batch=1)
    total, aux = optimize.make_evaluate(SHALLOW)(
        jnp.asarray(r.image)[None], vgg19, targets, optimize.loss_weights(SHALLOW, 1)
    )
    np.testing.assert_allclose(float(total[0]), r.final["loss"], rtol=1e-5)
    np.testing.assert_allclose(float(aux["style"][0]), r.final["style"], rtol=1e-5)
    # no step at all: the starting image, evaluated
    r0 = optimize.stylize(vgg19, SHALLOW, content=tiny["content"], styles=[tiny["style"]], optim=OptimConfig(steps=0))
    assert r0.iterations == 0 and all(len(v) == 0 for v in r0.history.values())
    np.testing.assert_array_equal(r0.image, tiny["content"])
    start = optimize.stylize(
        vgg19, SHALLOW, content=tiny["content"], styles=[tiny["style"]], optim=OptimConfig(steps=1)
    )
    np.testing.assert_allclose(r0.final["loss"], start.history["loss"][0], rtol=1e-5)  # the loss of the content image


def test_blended_style_targets_are_the_weighted_mean_of_the_grams(vgg19, tiny):
    other = tiny["style"][::-1, :, ::-1]  # a different image of the same size
    small = tiny["style"][:24, :20]  # and one of another size (style scale)
    one = lambda img: optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [img], None, 1).style  # noqa: E731
    mix = optimize.prepare_targets(
        vgg19, SHALLOW, tiny["content"], [tiny["style"], other, small], [2.0, 1.0, 1.0], 1
    ).style
    a, b, c = one(tiny["style"]), one(other), one(small)
    for layer in SHALLOW.style_layers:
        np.testing.assert_allclose(mix[layer], 0.5 * a[layer] + 0.25 * b[layer] + 0.25 * c[layer], rtol=1e-5, atol=1e-7)
        assert not np.allclose(a[layer], b[layer])  # the images do differ


def test_zoom_linesearch_reports_evaluations(vgg19, tiny):
    one_layer = losses.PerceptualLoss(content_layers=("conv1_1",), style_layers=("conv1_1",), style_weights=(1.0,))
    r = optimize.stylize(
        vgg19,
        one_layer,
        content=tiny["content"],
        styles=[tiny["style"]],
        optim=OptimConfig(steps=4, linesearch="zoom", max_linesearch_steps=5),
    )
    assert r.iterations == 4 and r.stopped_reason == "steps"
    assert r.iterations <= r.evals <= r.iterations * 5 + 1
    assert r.final["loss"] < r.history["loss"][0]


def test_adam_with_projection_stays_in_range(vgg19, tiny):
    seen = []

    def check(i, state, m):
        x = np.asarray(state.image)
        seen.append((x.min(), x.max()))

    r = optimize.stylize(
        vgg19,
        SHALLOW,
        content=tiny["content"],
        styles=[tiny["style"]],
        init="noise",
        key=jax.random.key(0),
        optim=OptimConfig(name="adam", lr=0.05, steps=8, project=True),
        callback=check,
    )
    assert len(seen) == 8 and all(lo >= 0 and hi <= 1 for lo, hi in seen)
    assert r.final["loss"] < r.history["loss"][0] / 2


def test_same_seed_same_pixels_other_seed_other_pixels(vgg19, tiny):
    run = lambda seed: (
        optimize.stylize(
            vgg19,
            SHALLOW,
            content=tiny["content"],
            styles=[tiny["style"]],  # noqa: E731
            init="noise",
            key=jax.random.key(seed),
            optim=OptimConfig(steps=5),
        ).image
    )
    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_callback_can_stop_and_interrupt_returns_partial_result(vgg19, tiny):
    kw = dict(content=tiny["content"], styles=[tiny["style"]], optim=OptimConfig(steps=10))
    r = optimize.stylize(vgg19, SHALLOW, callback=lambda i, s, m: i == 3, **kw)
    assert r.stopped_reason == "callback" and r.iterations == 3 and len(r.history["loss"]) == 3

    def interrupt(i, s, m):
        if i == 2:
            raise KeyboardInterrupt

    r = optimize.stylize(vgg19, SHALLOW, callback=interrupt, **kw)
    assert r.stopped_reason == "interrupted" and r.iterations == 2
    assert np.isfinite(r.image).all() and r.image.shape == tiny["content"].shape


def test_init_options(vgg19, tiny):
    shape = tiny["content"].shape[:2]
    key = jax.random.key(0)
    x = optimize.initial_images("style", shape, 1, key, content=tiny["content"], styles=[tiny["style"]])
    assert x.shape == (1,) + tiny["content"].shape
    n = optimize.initial_images("noise", shape, 3, key)
    assert n.shape == (3,) + tiny["content"].shape and float(n.min()) >= 0 and float(n.max()) <= 1
    assert not np.array_equal(np.asarray(n[0]), np.asarray(n[1]))  # a different draw per image
    c = optimize.initial_images("content", shape, 2, key, content=tiny["content"])
    np.testing.assert_array_equal(np.asarray(c[1]), tiny["content"])
    with pytest.raises(ValueError, match="unknown init"):
        optimize.initial_images("pink", shape, 1, key, content=tiny["content"])
    with pytest.raises(ValueError, match="expected"):
        optimize.initial_images(np.zeros((5, 5, 3)), shape, 1, key)
    with pytest.raises(ValueError, match="needs a content image"):
        optimize.initial_images("content", shape, 1, key)


def test_bad_arguments_are_refused_with_a_clear_message(vgg19, tiny):
    bad_layer = losses.PerceptualLoss(style_layers=("conv1_1", "conv9_9"), style_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="conv9_9"):
        optimize.prepare_targets(vgg19, bad_layer, tiny["content"], [tiny["style"]], None, 1)
    with pytest.raises(ValueError, match="beta must be finite and >= 0"):
        optimize.loss_weights(SHALLOW, 2, {"beta": [1.0, -1.0]})
    with pytest.raises(ValueError, match="unknown loss weight"):
        optimize.loss_weights(SHALLOW, 1, {"gamma": [1.0]})
    with pytest.raises(ValueError, match="no content image"):
        optimize.prepare_targets(vgg19, SHALLOW, None, [tiny["style"]], None, 1)
    with pytest.raises(ValueError, match="no style image"):
        optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [], None, 1)
    with pytest.raises(ValueError, match="blend"):
        optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [tiny["style"]], [1.0, 2.0], 1)
    with pytest.raises(ValueError, match="unknown optimiser"):
        OptimConfig(name="sgd")
    with pytest.raises(ValueError, match="line search"):
        OptimConfig(linesearch="backtracking")


def test_lbfgs_uphill_direction_drops_the_memory():
    """On a concave quadratic f = −½‖x‖² the first curvature pair has sᵀy = −‖s‖² < 0 and optax's
    L-BFGS then points uphill; lbfgs_update replaces that with a fresh (downhill) gradient step."""
    opt = optimize.make_optimizer(OptimConfig())
    grad_of = lambda x: -x  # noqa: E731  (∇ of −½‖x‖²)
    x = jnp.asarray([1.0, 2.0, -0.5])
    state = opt.init(x)
    u, state = opt.update(grad_of(x), state, x)
    x1 = x + u
    raw, _ = opt.update(grad_of(x1), state, x1)
    assert float(jnp.vdot(raw, grad_of(x1))) > 0  # the raw optax step is uphill: the check has a case
    u1, _, reset = optimize.lbfgs_update(opt, grad_of(x1), state, x1, 1.0)
    assert bool(reset) and float(jnp.vdot(u1, grad_of(x1))) < 0
    # a downhill direction is left alone
    u0, _, reset0 = optimize.lbfgs_update(opt, grad_of(x), opt.init(x), x, 1.0)
    assert not bool(reset0) and float(jnp.vdot(u0, grad_of(x))) < 0


def test_lbfgs_fresh_start_equals_optax_from_an_empty_memory():
    """A reset keeps the stored pairs but zeroes their weights (no copy of m images); the steps
    after it must equal optax's from ``opt.init``: the first the scaled gradient, the next ones
    the quasi-Newton steps of the new pairs only. Also the restart state of the batched step."""
    opt = optimize.make_optimizer(OptimConfig(memory=3, lr=0.7))
    a = jnp.asarray(np.diag([1.0, 3.0, 10.0, 0.5]) + 0.1)  # SPD quadratic ½xᵀAx − bᵀx
    b = jnp.asarray([1.0, -2.0, 0.5, 3.0])
    grad_of = lambda x: a @ x - b  # noqa: E731
    x = jnp.asarray([2.0, 1.0, -1.0, 0.5])
    state = opt.init(x)
    for _ in range(4):  # fill the memory with pairs that the reset must make inert
        u, state = opt.update(grad_of(x), state, x)
        x = x + u
    u_ours, s_ours = optimize._fresh_lbfgs_update(opt, grad_of(x), x, 0.7, opt.update(grad_of(x), state, x)[1])
    u_ref, s_ref = opt.update(grad_of(x), opt.init(x), x)
    np.testing.assert_allclose(np.asarray(u_ours), np.asarray(u_ref), rtol=1e-6)
    assert float(jnp.abs(optax.tree_utils.tree_get(s_ours, "diff_params_memory")).max()) > 0  # pairs kept...
    y_ours = y_ref = x + u_ref
    for _ in range(3):  # ... and inert: the following steps are optax's from the empty memory
        u_ours, s_ours = opt.update(grad_of(y_ours), s_ours, y_ours)
        u_ref, s_ref = opt.update(grad_of(y_ref), s_ref, y_ref)
        np.testing.assert_allclose(np.asarray(u_ours), np.asarray(u_ref), rtol=1e-5, atol=1e-7)
        y_ours, y_ref = y_ours + u_ours, y_ref + u_ref
    # the batched restart state (count 0, no weights) steps like a fresh init too
    batched = jax.tree.map(lambda leaf: leaf[None], state)
    forgot = jax.tree.map(lambda leaf: leaf[0], optimize._forget(batched, 1))
    np.testing.assert_allclose(
        np.asarray(opt.update(grad_of(x), forgot, x)[0]),
        np.asarray(opt.update(grad_of(x), opt.init(x), x)[0]),
        rtol=1e-6,
    )


def test_step_donates_its_state_and_leaves_the_callers_images_alone(vgg19, tiny):
    init, step = optimize.make_step(SHALLOW, OptimConfig())
    targets = optimize.prepare_targets(vgg19, SHALLOW, tiny["content"], [tiny["style"]], None, batch=1)
    x0 = jnp.asarray(tiny["content"])[None]
    state = init(x0)
    new, _ = step(state, vgg19, targets, optimize.loss_weights(SHALLOW, 1))
    assert state.image.is_deleted() and state.opt_state[0].diff_params_memory.is_deleted()  # updated in place
    assert not x0.is_deleted() and not new.image.is_deleted()


def test_lbfgs_blow_up_restarts_from_the_best_image_and_recovers(vgg19, tiny):
    """A step that multiplies the loss (here: an absurd first step) is undone: the run goes back
    to the best image, drops the L-BFGS memory, halves its step scale, and still converges."""
    blow = optimize.stylize(
        vgg19, SHALLOW, content=tiny["content"], styles=[tiny["style"]], optim=OptimConfig(lr=300.0, steps=25)
    )
    assert blow.restarts > 0
    assert not blow.diverged and blow.stopped_reason == "steps"
    start = blow.history["loss"][0]
    assert blow.final["loss"] < 0.8 * start  # recovered and made progress (0.56× here)
    assert max(blow.history["loss"]) > optimize.RESTART_FACTOR * start  # the blow-up did happen
    calm = optimize.stylize(vgg19, SHALLOW, content=tiny["content"], styles=[tiny["style"]], optim=OptimConfig(steps=5))
    assert calm.restarts == 0  # ordinary runs never restart


SPLIT_OVER_TWO_DEVICES = """
import jax, numpy as np
from nstyle import distributed, images, losses, optimize, weights
assert jax.device_count() == 2, jax.devices()
params = weights.load("vgg19")
loss = losses.PerceptualLoss(content_layers=("conv1_2",), style_layers=("conv1_1",), style_weights=(1.0,), beta=1e4)
kw = dict(content=images.load_image("builtin:chelsea", 24), styles=[images.load_image("builtin:ihc", 24)],
          weights={"beta": np.array([1e3, 1e4, 1e5], np.float32)}, init="noise", key=jax.random.key(1),
          optim=optimize.OptimConfig(steps=5))
split = optimize.stylize_batch(params, loss, mesh=distributed.make_mesh(), **kw)   # 3 images padded to 4
alone = optimize.stylize_batch(params, loss, **kw)                                 # one device
assert split.images.shape == alone.images.shape == (3, 16, 24, 3), split.images.shape
np.testing.assert_array_equal(images.to_uint8(split.images), images.to_uint8(alone.images))
for k in alone.history:
    np.testing.assert_allclose(split.history[k], alone.history[k], rtol=1e-6, err_msg=k)
assert split.evals.tolist() == alone.evals.tolist() == [5, 5, 5]
print("SPLIT_OK", np.abs(split.images - alone.images).max())
"""


def test_a_batch_split_over_two_devices_gives_the_pixels_of_one_device():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-c", SPLIT_OVER_TWO_DEVICES], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0 and "SPLIT_OK" in r.stdout, r.stdout[-500:] + r.stderr[-3000:]
