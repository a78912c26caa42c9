"""PyTorch Gatys et al. reference for bench_stylize.py: 100 L-BFGS iterations, end to end.

    $NSTYLE_TORCH_PYTHON benchmarks/bench_stylize_torch.py --images IMAGES.npz --steps 100

Run by ``bench_stylize.py --compare`` (never imported by nstyle; torch is not a dependency).
What it does is what Gatys' own PyTorch code and the usual PyTorch tools do, with nstyle's
exact settings: VGG19 from nstyle's cache (``~/.cache/nstyle/vgg19.npz``, read with numpy),
Caffe preprocessing, average pooling, content ½Σ(F−P)² at conv4_2, style Σ(G/M − Â)²/(4N²)
at conv1_1 … conv5_1 with w = 1/5, α = 1, β = 1e3; start from the content image;
``torch.optim.LBFGS(lr=1, history_size=10, line_search_fn=None)``, which evaluates the
loss once per iteration, run for exactly ``--steps`` iterations (tolerances disabled), on the
loss divided by its starting value (see ``--no-normalise`` for why).

Timed end to end inside the process (after imports): weights, targets, the iterations.
Prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

CONVS = (  # VGG19 up to conv5_1: (name, pools before it)
    ("conv1_1", 0),
    ("conv1_2", 0),
    ("conv2_1", 1),
    ("conv2_2", 1),
    ("conv3_1", 2),
    ("conv3_2", 2),
    ("conv3_3", 2),
    ("conv3_4", 2),
    ("conv4_1", 3),
    ("conv4_2", 3),
    ("conv4_3", 3),
    ("conv4_4", 3),
    ("conv5_1", 4),
)
CONTENT, STYLE = "conv4_2", ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
ALPHA, BETA, W_STYLE = 1.0, 1e3, 0.2
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help=".npz with content (H, W, 3) and style (h, w, 3) float32 in [0, 1]")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--memory", type=int, default=10, help="L-BFGS history (nstyle's default: 10)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the cores this process may use)")
    ap.add_argument(
        "--no-normalise",
        dest="normalise",
        action="store_false",
        help="optimise the raw loss (torch's L-BFGS then diverges to NaN at this scale)",
    )
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    t0 = time.perf_counter()
    cache = Path(os.environ.get("NSTYLE_CACHE_DIR") or Path.home() / ".cache" / "nstyle") / "vgg19.npz"
    with np.load(cache, allow_pickle=False) as z:
        weights = {
            n: (
                torch.from_numpy(np.ascontiguousarray(z[f"{n}/kernel"].transpose(3, 2, 0, 1))),  # HWIO -> OIHW
                torch.from_numpy(z[f"{n}/bias"].copy()),
            )
            for n, _ in CONVS
        }
    with np.load(args.images) as z:
        content = torch.from_numpy(z["content"]).permute(2, 0, 1)[None].contiguous()  # (1, 3, H, W)
        style = torch.from_numpy(z["style"]).permute(2, 0, 1)[None].contiguous()
    mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)

    def features(rgb):  # (1, 3, H, W) RGB [0, 1] -> {layer: (1, C, h, w)}
        x = rgb.flip(1) * 255.0 - mean  # BGR, 0-255, mean-subtracted
        out, pools = {}, 0
        for name, p in CONVS:
            if p > pools:
                x, pools = F.avg_pool2d(x, 2), p
            w, b = weights[name]
            x = F.relu(F.conv2d(x, w, b, padding=1))
            out[name] = x
        return out

    def mean_gram(f):  # (1, N, h, w) -> (N, N) / M
        _, n, h, w = f.shape
        f = f.reshape(n, h * w)
        return f @ f.t() / (h * w)

    with torch.no_grad():
        p = features(content)[CONTENT]
        fs = features(style)
        a = {l: mean_gram(fs[l]) for l in STYLE}

    def loss_terms(x):
        f = features(x)
        c = 0.5 * ((f[CONTENT] - p) ** 2).sum()
        s = sum(W_STYLE * ((mean_gram(f[l]) - a[l]) ** 2).sum() / (4.0 * f[l].shape[1] ** 2) for l in STYLE)
        return ALPHA * c + BETA * s

    x = content.clone().requires_grad_(True)
    # torch's L-BFGS sizes its first step as 1/‖g‖₁ (optax: 1/‖g‖₂); at this loss's scale
    # (~1e11, ‖g‖₁ ~ 1e12 on [0, 1] pixels) that step is so small that the next curvature
    # estimate is noise and the second step overflows to NaN. Dividing the objective by its
    # starting value (a constant: same minimiser, same work per iteration) avoids that.
    with torch.no_grad():
        scale = 1.0 / float(loss_terms(x)) if args.normalise else 1.0
    opt = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=args.steps,
        max_eval=10 * args.steps,
        history_size=args.memory,
        tolerance_grad=-1.0,
        tolerance_change=-1.0,
        line_search_fn=None,
    )
    evals, history = [0], []

    def closure():
        opt.zero_grad()
        v = loss_terms(x)
        history.append(float(v))
        v = v * scale
        v.backward()
        evals[0] += 1
        return v

    t_opt = time.perf_counter()
    opt.step(closure)
    iters = opt.state[opt._params[0]]["n_iter"]
    with torch.no_grad():
        final = float(loss_terms(x))  # the result's loss, as nstyle reports it (inside the timing there too)
    t_end = time.perf_counter()
    print(
        "RESULT "
        + json.dumps(
            {
                "framework": "torch",
                "version": torch.__version__,
                "threads": torch.get_num_threads(),
                "shape": list(content.shape[2:]),
                "iterations": int(iters),
                "evals": evals[0],
                "end_to_end_s": t_end - t0,
                "optimize_s": t_end - t_opt,
                "setup_s": t_opt - t0,
                "import_s": t0 - t_start,
                "loss_first": history[0],
                "loss_final": final,
                "normalised": args.normalise,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
