"""Shared by bench_loss.py (nstyle venv) and bench_loss_torch.py (torch venv): numpy only.

Both benchmarks evaluate the same thing: value and gradient w.r.t. the pixels of the Gatys
loss through VGG19 (content conv4_2; style conv1_1 … conv5_1, w_l = 1/5; α = 1, β = 1e3;
average pooling) for one image, on the same synthetic images, so their loss values can be
compared as a check that they are the same evaluation.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import numpy as np

# VGG19 convs up to conv5_1 (the deepest layer the loss reads): (name, C_in, C_out, pools before it).
# bench_loss.py asserts these against nstyle.vgg.conv_shape so the two cannot drift.
CONVS = (
    ("conv1_1", 3, 64, 0),
    ("conv1_2", 64, 64, 0),
    ("conv2_1", 64, 128, 1),
    ("conv2_2", 128, 128, 1),
    ("conv3_1", 128, 256, 2),
    ("conv3_2", 256, 256, 2),
    ("conv3_3", 256, 256, 2),
    ("conv3_4", 256, 256, 2),
    ("conv4_1", 256, 512, 3),
    ("conv4_2", 512, 512, 3),
    ("conv4_3", 512, 512, 3),
    ("conv4_4", 512, 512, 3),
    ("conv5_1", 512, 512, 4),
)
CONTENT_LAYER = "conv4_2"
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
STYLE_WEIGHT = 0.2
ALPHA, BETA = 1.0, 1e3
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

# The PyTorch side runs in a venv of its own (torch is never a dependency of nstyle):
#   python -m venv .torchvenv && .torchvenv/bin/pip install torch==2.13.0 numpy
#   export NSTYLE_TORCH_PYTHON=.torchvenv/bin/python
TORCH_PYTHON_ENV = "NSTYLE_TORCH_PYTHON"


def torch_python() -> str | None:
    """The Python of the PyTorch venv (``$NSTYLE_TORCH_PYTHON``), or None when it is not set."""
    return os.environ.get(TORCH_PYTHON_ENV) or None


def forward_gflop(size: int) -> float:
    """Multiply-adds ×2 of the 3×3 convs up to conv5_1 for one size×size image (bias, ReLU, pool ignored)."""
    total = 0
    for _, cin, cout, pools in CONVS:
        side = size >> pools
        total += 2 * side * side * cin * cout * 9
    return total / 1e9


def images(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(content, style, x), each (1, size, size, 3) float32 RGB in [0, 1], NHWC."""
    rng = np.random.default_rng(seed)
    return tuple(rng.random((1, size, size, 3), dtype=np.float32) for _ in range(3))


def threads() -> int:
    """CPU cores this process may run on (what both frameworks size their pools by)."""
    return len(os.sched_getaffinity(0))


def rss_mib() -> float:
    """Resident memory now (Linux /proc/self/statm), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_calls(fn, repeats: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def matmul_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of an n×n numpy matmul (its BLAS uses every core)."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    best = min(time_calls(lambda: a @ b, repeats, 0))
    return 2 * n**3 / best / 1e9


def report(result: dict) -> None:
    """One JSON line on stdout, the protocol between a child process and the --compare driver."""
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()


def summarise(result: dict) -> dict:
    """Add median s/eval and GFLOP/s (forward + backward ≈ 2 × forward) to a child's result."""
    med = statistics.median(result["times_s"])
    gf = forward_gflop(result["size"])
    return {**result, "median_s": med, "forward_gflop": gf, "gflops": 2 * gf / med}
