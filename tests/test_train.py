"""Training: the data pipeline, checkpoints, the loss weights, and end-to-end runs of nstyle-train.

The end-to-end runs go through the console script in subprocesses (a real SIGKILL for the
resume test; XLA_FLAGS for the two-device test). They share a persistent compilation cache
so the train step compiles once for all of them.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from PIL import Image

from nstyle import checkpoint, data, fastnet, images, losses, train, vgg, weights

ROOT = Path(__file__).resolve().parent.parent
TRAIN = [sys.executable, "-c", "from nstyle.cli.train import main; main()"]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """A few photos of mixed size and format, a corrupt JPEG and a non-image file."""
    d = tmp_path_factory.mktemp("photos")
    sources = ["builtin:astronaut", "builtin:chelsea", "builtin:coffee"]
    for i, spec in enumerate(sources):
        img = images.load_image(spec, max_side=[80, 64, 96][i])
        images.save_image(d / f"p{i}.{['jpg', 'png', 'jpg'][i]}", img)
    sub = d / "sub"
    sub.mkdir()
    images.save_image(sub / "p3.png", images.load_image("builtin:astronaut", max_side=48)[::-1])  # recursive
    Image.fromarray((np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)).save(d / "p4.bmp")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "labels.csv").write_text("a,b\n")
    return d


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    env = dict(os.environ)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jaxcache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("XLA_FLAGS", None)
    return env


# ----------------------------------------------------------------------------- data


def test_folder_scan_lists_images_recursively_sorted(photo_dir):
    f = data.ImageFolder.scan(photo_dir)
    assert f.files == ("broken.jpg", "p0.jpg", "p1.png", "p2.jpg", "p4.bmp", os.path.join("sub", "p3.png"))
    assert f.ignored == 1  # labels.csv


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(data.DataError, match="holds no image files"):
        data.ImageFolder.scan(tmp_path)
    with pytest.raises(data.DataError, match="does not exist"):
        data.ImageFolder.scan(tmp_path / "nope")


def test_batches_are_a_pure_function_of_seed_and_position(photo_dir):
    folder = data.ImageFolder.scan(photo_dir)
    stream = data.Batches(folder, size=24, batch=2, seed=3)
    first = [stream.next_batch() for _ in range(7)]  # 14 samples: crosses two epochs of 6 files
    assert first[0].shape == (2, 24, 24, 3) and first[0].dtype == np.float32
    assert first[0].min() >= 0.0 and first[0].max() <= 1.0
    resumed = data.Batches(folder, size=24, batch=2, seed=3, start=5 * 2)  # resume at step 5
    np.testing.assert_array_equal(resumed.next_batch(), first[5])
    np.testing.assert_array_equal(resumed.next_batch(), first[6])
    other = data.Batches(folder, size=24, batch=2, seed=4).next_batch()
    assert not np.array_equal(other, first[0])
    # the unreadable file is skipped and counted once, never fatal
    assert stream.skipped == 1 and len(stream.bad) == 1


def test_epochs_are_reshuffled_and_cover_every_readable_file(photo_dir):
    folder = data.ImageFolder.scan(photo_dir)
    p0, p1 = data.permutation(0, 0, len(folder)), data.permutation(0, 1, len(folder))
    assert sorted(p0) == list(range(len(folder))) and not np.array_equal(p0, p1)


def test_random_crop_handles_small_and_odd_images():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((10, 33, 3)).astype(np.float32)
    out = data.random_crop(img, 32, rng, (0.6, 1.0))
    assert out.shape == (32, 32, 3)


def test_multi_host_slices_partition_the_global_batch(photo_dir):
    folder = data.ImageFolder.scan(photo_dir)
    whole = data.Batches(folder, size=16, batch=4, seed=0).next_batch()
    parts = [data.Batches(folder, size=16, batch=4, seed=0, shard=(i, 2)).next_batch() for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_prefetch_keeps_order_and_reraises():
    it = iter(range(5))
    pf = data.Prefetch(lambda: next(it), depth=2)
    assert [pf.next() for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(StopIteration):
        pf.next()
    pf.close()


# ----------------------------------------------------------------------------- checkpoints


def _state(width=2):
    """A TrainState of random arrays with the real structure (eval_shape: nothing to compile)."""
    net = fastnet.FastNetConfig(width=width, blocks=1)
    shapes = jax.eval_shape(lambda k: train.init_state(net, optax.adam(1e-3), k), jax.random.key(0))
    rng = np.random.default_rng(width)
    fill = lambda s: (
        rng.standard_normal(s.shape) if np.issubdtype(s.dtype, np.floating) else rng.integers(0, 9, s.shape)
    )  # noqa: E731
    return jax.tree_util.tree_map(lambda s: np.asarray(fill(s), s.dtype), shapes)


def test_checkpoint_round_trip_keeps_last_k_and_ignores_temporaries(tmp_path):
    state = _state()
    tree = state._asdict()
    for step in (2, 4, 6, 8):
        checkpoint.save(tmp_path, step, tree, {"data": {"samples_seen": step * 4}}, keep=2)
    assert checkpoint.all_steps(tmp_path) == [6, 8]
    (tmp_path / ".ckpt_00000010.npz.abc.tmp").write_bytes(b"half a file")  # a crash mid-write
    (tmp_path / "ckpt_00000012.npz").write_bytes(b"garbage")  # a damaged copy is passed over
    last = checkpoint.latest(tmp_path)
    assert last.name == "ckpt_00000008.npz"
    restored, info = checkpoint.restore(last, like=tree)
    assert info["step"] == 8 and info["data"]["samples_seen"] == 32
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(tree)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, jax.device_get(tree))
    with np.load(last, allow_pickle=False) as z:  # flat '/'-joined names
        assert "params/ConvIN_0/Conv_0/kernel" in z.files and "opt_state/0/mu/ConvIN_0/Conv_0/kernel" in z.files


def test_checkpoint_of_another_network_is_refused(tmp_path):
    checkpoint.save(tmp_path, 1, _state()._asdict())
    other = _state(width=3)
    with pytest.raises(checkpoint.CheckpointError, match="expects"):
        checkpoint.restore(checkpoint.latest(tmp_path), like=other._asdict())


# ----------------------------------------------------------------------------- loss


def test_mse_unit_weights_equal_the_pytorch_formulation():
    """perceptual_loss_for turns MSE weights into METHOD.md sums: check against numpy MSEs."""
    params = weights.load("vgg16")
    cfg = train.TrainLoss(normalize=False, content_weight=3.0, style_weight=7.0, tv_weight=2.0)
    loss, _ = train.perceptual_loss_for(cfg, 32, params)
    k = jax.random.split(jax.random.key(0), 3)
    x, y, s = (jax.random.uniform(kk, (1, 32, 32, 3)) for kk in k)
    targets = losses.Targets(losses.content_targets(params, x, loss), losses.style_targets(params, [s], loss))
    total, _ = losses.perceptual_loss(params, y, targets, loss)
    fy = vgg.features(params, y, loss.layers, "max")
    fx = vgg.features(params, x, loss.layers, "max")
    fs = vgg.features(params, s, loss.layers, "max")

    def gram(f):  # PyTorch example: F Fᵀ / (N·M)
        f = np.asarray(f, np.float64)[0]
        n = f.shape[-1]
        f = f.reshape(-1, n)
        return f.T @ f / f.size

    want = 3.0 * np.mean((np.asarray(fy["relu2_2"], np.float64) - np.asarray(fx["relu2_2"])) ** 2)
    want += 7.0 * sum(np.mean((gram(fy[l]) - gram(fs[l])) ** 2) for l in loss.style_layers)
    yy = np.asarray(y, np.float64)[0]
    want += 2.0 * (np.sum(np.diff(yy, axis=0) ** 2) + np.sum(np.diff(yy, axis=1) ** 2)) / yy.size
    assert float(total[0]) == pytest.approx(want, rel=1e-3)


def test_normalised_loss_is_each_layers_relative_error():
    """normalize=True: content Σ(F−P)²/ΣP² per image, style Σ(G/M−Â)²/ΣÂ² per layer, TV in MSE units."""
    params = weights.load("vgg16")
    cfg = train.TrainLoss(content_weight=3.0, style_weight=7.0, tv_weight=2.0)
    assert cfg.normalize is True
    loss, _ = train.perceptual_loss_for(cfg, 32, params)
    k = jax.random.split(jax.random.key(0), 4)
    x, y = (jax.random.uniform(kk, (2, 32, 32, 3)) for kk in k[:2])
    s = jax.random.uniform(k[2], (1, 40, 36, 3))  # a style image of another size
    targets = losses.Targets(losses.content_targets(params, x, loss), losses.style_targets(params, [s], loss))
    total, terms = train.training_loss(params, y, targets, loss, "target")
    fy = vgg.features(params, y, loss.layers, "max")
    fx = vgg.features(params, x, loss.layers, "max")
    fs = vgg.features(params, s, loss.layers, "max")

    def mean_gram(f):  # (h, w, N) -> (N, N), G / M
        f = np.asarray(f, np.float64).reshape(-1, f.shape[-1])
        return f.T @ f / f.shape[0]

    for b in range(2):
        fyb = {l: np.asarray(v[b], np.float64) for l, v in fy.items()}
        p = np.asarray(fx["relu2_2"][b], np.float64)
        content = 3.0 * np.sum((fyb["relu2_2"] - p) ** 2) / np.sum(p**2)
        style = 7.0 * sum(
            np.sum((mean_gram(fyb[l]) - mean_gram(fs[l][0])) ** 2) / np.sum(mean_gram(fs[l][0]) ** 2)
            for l in loss.style_layers
        )
        yy = np.asarray(y[b], np.float64)
        tv = 2.0 * (np.sum(np.diff(yy, axis=0) ** 2) + np.sum(np.diff(yy, axis=1) ** 2)) / yy.size
        assert float(terms["content"][b]) == pytest.approx(content, rel=1e-4)
        assert float(terms["style"][b]) == pytest.approx(style, rel=1e-3)
        assert float(terms["tv"][b]) == pytest.approx(tv, rel=1e-4)
        assert float(total[b]) == pytest.approx(content + style + tv, rel=1e-3)


def test_style_indices_share_the_photos_equally_and_depend_only_on_the_step():
    got = np.stack([np.asarray(train.style_indices(jax.numpy.int32(t), 4, 3)) for t in range(3)])
    np.testing.assert_array_equal(got, [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2]])
    assert np.bincount(got.ravel(), minlength=3).tolist() == [4, 4, 4]


def test_multi_style_training_gives_each_style_its_own_output(tmp_path, photo_dir):
    """style=[a, b]: one network, a scale and shift per style; trained, each style's output is its own."""

    # two generated paintings that differ plainly: red and blue noise
    rng = np.random.default_rng(0)
    styles = []
    for name, channel in (("red", 0), ("blue", 2)):
        img = np.zeros((32, 32, 3), np.float32)
        img[..., channel] = rng.uniform(0.3, 1.0, (32, 32))
        styles.append(str(images.save_image(tmp_path / f"{name}.png", img)))
    cfg = train.TrainConfig(
        style=styles,
        data=str(photo_dir),
        size=32,
        steps=200,
        batch=2,
        net=fastnet.FastNetConfig(width=8, blocks=1),
        optim=train.LRSchedule(lr=3e-3),
        log_every=20,
        sample_every=200,
        checkpoint_every=200,
        validation=("builtin:chelsea",),
        sample_size=32,
        progress=False,
    )
    train.train(cfg, tmp_path / "run")
    net, params, meta = fastnet.load_model(tmp_path / "run" / "model.npz")
    assert net.styles == 2 and meta["styles"] == styles
    x = jax.numpy.asarray(images.load_image("builtin:astronaut", max_side=48)[None, :32, :32])  # (1, 32, 32, 3)
    outs = [fastnet.stylize(net, params, x, np.eye(2)[k]) for k in range(2)]
    # at init every style's parameters are equal (scale 1, shift 0): a difference is learnt
    assert float(jax.numpy.mean(jax.numpy.abs(outs[0] - outs[1]))) > 0.005
    # the style term of the training loss: each style's output is nearer its own style than the other output
    vp = weights.load("vgg16")
    loss, _ = train.perceptual_loss_for(cfg.loss, 32, vp)
    table = train.style_table(vp, [images.load_image(s, max_side=32) for s in styles], loss)
    content = losses.content_targets(vp, x, loss)

    def style_term(out, j):
        targets = losses.Targets(content, {layer: a[j : j + 1] for layer, a in table.items()})
        return float(train.training_loss(vp, out, targets, loss, "target")[1]["style"][0])

    d = [[style_term(o, j) for j in range(2)] for o in outs]  # d[k][j]: style k's output against style j
    assert d[0][0] + d[1][1] < 0.95 * (d[0][1] + d[1][0]), d  # matched beats swapped
    red, blue = (np.asarray(o)[0].mean(axis=(0, 1)) for o in outs)  # (3,) mean colours
    assert red[0] - red[2] > blue[0] - blue[2] + 0.1, (red, blue)  # the red style's output is the redder
    sample = images.load_image(tmp_path / "run" / "samples" / "step_0000200.png")
    row = images.load_image("builtin:chelsea", max_side=32).shape[0]
    assert sample.shape[0] >= 3 * row  # the validation row and one row per style


# ----------------------------------------------------------------------------- end to end


def _run(args, env, check=True, timeout=300):
    r = subprocess.run(TRAIN + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"nstyle-train failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_debug_training_learns_and_a_killed_run_resumes_to_the_same_parameters(tmp_path, photo_dir, cache_env):
    common = [
        "train/experiment=debug",
        "style=builtin:coffee",
        f"data={photo_dir}",
        "steps=12",
        "batch=2",
        "size=32",
        "seed=5",
        "checkpoint_every=4",
        "log_every=1",
        "sample_every=6",
        "keep_checkpoints=2",
        # the linear head starts as noise, so 12 steps show a clear fall; the residual default starts
        # at the photo itself and its loss in 12 steps is mostly batch noise
        "net.output=linear",
    ]
    straight = tmp_path / "straight"
    _run(common + [f"hydra.run.dir={straight}"], cache_env)
    rows = _rows(straight)
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    losses_ = [r["loss"] for r in rows]
    assert np.mean(losses_[-3:]) < 0.8 * np.mean(losses_[:3]), losses_  # it learns (12 steps of a width-8 net)
    summary = json.loads((straight / "metrics.json").read_text())
    assert summary["data"]["skipped_unreadable"] == 1 and summary["data"]["files"] == 6
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["ckpt_00000008.npz", "ckpt_00000012.npz"]
    assert (straight / "loss.png").stat().st_size > 0 and (straight / "samples" / "step_0000012.png").exists()
    assert (straight / ".hydra" / "config.yaml").exists()

    crashed = tmp_path / "crashed"
    r = _run(common + [f"hydra.run.dir={crashed}", "kill_at_step=6"], cache_env, check=False)
    assert r.returncode == -9, r.stderr[-2000:]  # SIGKILL between the checkpoints at 4 and 8
    assert checkpoint.all_steps(crashed / "checkpoints") == [4]
    assert not (crashed / "model.npz").exists()
    _run(common + [f"hydra.run.dir={crashed}"], cache_env)  # the same command resumes
    assert json.loads((crashed / "metrics.json").read_text())["resumed_from_step"] == 4

    a = fastnet.load_model(straight / "model.npz")[1]
    b = fastnet.load_model(crashed / "model.npz")[1]
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), a, b)
    final_a = checkpoint.read(straight / "checkpoints" / "ckpt_00000012.npz")[0]
    final_b = checkpoint.read(crashed / "checkpoints" / "ckpt_00000012.npz")[0]
    assert set(final_a) == set(final_b)
    for key in final_a:  # Adam moments and counts too
        np.testing.assert_allclose(final_a[key], final_b[key], rtol=1e-6, atol=1e-7, err_msg=key)
    # the log has each step once, with the same values as the uninterrupted run
    rb = _rows(crashed)
    assert [int(r["step"]) for r in rb] == list(range(1, 13))
    np.testing.assert_allclose([r["loss"] for r in rb], losses_, rtol=1e-5)


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, photo_dir, cache_env):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, words in [
        (["style=/no/such/style.jpg", f"data={photo_dir}"], "no such file"),
        (["style=builtin:coffee", f"data={empty}"], "holds no image files"),
        ([f"data={photo_dir}"], "no style image"),
    ]:
        r = _run(["train/experiment=debug", f"hydra.run.dir={tmp_path / 'r'}"] + args, cache_env, check=False)
        assert r.returncode == 2, r.stderr
        err = [l for l in r.stderr.splitlines() if l.startswith("nstyle-train")]
        assert len(err) == 1 and words in err[0], r.stderr
        assert "Traceback" not in r.stderr


TWO_DEVICES = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from nstyle import fastnet, losses, train, weights
    assert jax.device_count() == 2, jax.devices()
    vp = weights.load("vgg16")
    loss, _ = train.perceptual_loss_for(train.TrainLoss(tv_weight=10.0), 32, vp)
    style = losses.style_targets(vp, [jax.random.uniform(jax.random.key(9), (1, 40, 40, 3))], loss)
    net, opt = fastnet.FastNetConfig(width=4, blocks=1), optax.adam(1e-3)
    batch = np.asarray(jax.random.uniform(jax.random.key(1), (4, 32, 32, 3)))
    out = {}
    for n in (1, 2):
        mesh = train.make_mesh(jax.devices()[:n])
        step = train.make_train_step(net, loss, opt, vp, style, mesh)
        state = train.init_state(net, opt, jax.random.key(0), mesh)
        from jax.sharding import NamedSharding, PartitionSpec as P
        x = train.shard_batch(batch, NamedSharding(mesh, P("data")))
        assert len(x.sharding.device_set) == n
        for _ in range(2):
            state, metrics = step(state, x, jax.random.key(3))
        y = fastnet.apply(net, state.params, jnp.asarray(batch))  # what the parameters compute
        out[n] = (jax.device_get(state.params), {k: float(v) for k, v in metrics.items()}, np.asarray(y))
    np.testing.assert_allclose(out[2][2], out[1][2], atol=1e-4)  # 1/40 of an 8-bit level
    for k in out[1][1]:
        np.testing.assert_allclose(out[2][1][k], out[1][1][k], rtol=1e-4, err_msg=k)
    # Adam's first steps are about lr·sign(g): where a gradient entry is tiny, the all-reduce's
    # rounding moves the parameter by a fraction of lr (1e-3) rather than of the gradient
    diffs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), out[1][0], out[2][0]))
    print("max param difference", max(diffs))
    assert max(diffs) < 1e-4, max(diffs)
    print("TWO_DEVICES_OK", out[1][1]["loss"])
""")


def test_two_device_step_equals_one_device_step(cache_env):
    env = dict(cache_env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    r = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and "TWO_DEVICES_OK" in r.stdout, r.stdout[-500:] + r.stderr[-3000:]
