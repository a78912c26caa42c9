"""Write tests/fixtures/fastnet_v1.npz: a model file of format version 1 and what it computes.

    git worktree add ../nstyle-v1 9613b96           # the last commit that writes version-1 models
    PYTHONPATH=../nstyle-v1 python tools/make_fastnet_v1_fixture.py tests/fixtures

Version 1 is the single-style network with the (tanh(z) + 1) / 2 output. The fixture holds
the exported model (``fastnet_v1.npz``) and, in ``fastnet_v1_expected.npz``, a 32×40 input
and the version-1 code's output for it; tests/test_fastnet.py checks that today's code loads
the file and computes the same output. The parameters are a fresh init with the final conv
scaled up, so the output reaches tanh's saturated range, where any other output would differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nstyle import fastnet, images

assert fastnet.MODEL_VERSION == 1, "run this with the version-1 nstyle on PYTHONPATH (see the docstring)"

out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
cfg = fastnet.FastNetConfig(width=4, blocks=1)
params = fastnet.init(cfg, jax.random.key(7))
params["ConvIN_3"]["Conv_0"]["kernel"] = params["ConvIN_3"]["Conv_0"]["kernel"] * 4.0  # |z| up to ~5
x = images.load_image("builtin:chelsea", max_side=64)[:32, :40][None]  # (1, 32, 40, 3)
y = np.asarray(fastnet.apply(cfg, params, jnp.asarray(x)))
meta = {"style": "builtin:coffee", "checkpoint": "ckpt_00000001.npz"}
fastnet.export_model(out / "fastnet_v1.npz", cfg, params, meta)
np.savez_compressed(out / "fastnet_v1_expected.npz", input=x, output=y)
print("saturated fraction", float(np.mean((y < 0.02) | (y > 0.98))), "written to", out)
