"""PyTorch reference for bench_loss.py: the same Gatys loss value-and-gradient, for comparison only.

    $NSTYLE_TORCH_PYTHON benchmarks/bench_loss_torch.py --size 256 512

Optional: torch is never a dependency of nstyle; run this with a Python that has torch and
numpy. It reads nstyle's cached VGG19 (``~/.cache/nstyle/vgg19.npz``, written by
``nstyle-weights fetch``) with numpy alone, so both frameworks use the very same weights,
and evaluates what ``nstyle.losses.perceptual_loss`` does with ``PerceptualLoss()``:
Caffe preprocessing, average pooling, content ½Σ(F−P)² at conv4_2, style
Σ(G/M − Â)²/(4N²) at conv1_1 … conv5_1 with w = 1/5, α = 1, β = 1e3. Weights are frozen;
the gradient is taken w.r.t. the input pixels only.

Each size runs in a fresh process (``--child``) so peak RSS is per size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def _cache_file() -> Path:
    root = os.environ.get("NSTYLE_CACHE_DIR") or Path.home() / ".cache" / "nstyle"
    return Path(root) / "vgg19.npz"


def load_weights(torch, memory_format) -> dict:
    """{layer: (weight OIHW, bias)} up to conv5_1, from nstyle's HWIO cache."""
    path = _cache_file()
    if not path.exists():
        raise SystemExit(f"error: {path} not found; run `nstyle-weights fetch` (in the nstyle venv) first")
    with np.load(path, allow_pickle=False) as z:
        out = {}
        for name, cin, cout, _ in C.CONVS:
            k = z[f"{name}/kernel"]  # (3, 3, I, O) HWIO
            assert k.shape == (3, 3, cin, cout), (name, k.shape)
            w = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))  # (O, I, 3, 3)
            out[name] = (w.contiguous(memory_format=memory_format), torch.from_numpy(z[f"{name}/bias"].copy()))
    return out


def build(torch, weights: dict, memory_format):
    F = torch.nn.functional
    mean = torch.tensor(C.CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    wanted = {C.CONTENT_LAYER, *C.STYLE_LAYERS}

    def features(rgb):  # rgb (1, H, W, 3) in [0, 1] -> {layer: (1, C, h, w)}
        x = rgb.permute(0, 3, 1, 2).flip(1) * 255.0 - mean  # (1, 3, H, W) BGR, mean-subtracted
        x = x.contiguous(memory_format=memory_format)
        out, pools = {}, 0
        for name, _, _, p in C.CONVS:
            if p > pools:
                x, pools = F.avg_pool2d(x, 2), p  # (1, C, h/2, w/2)
            w, b = weights[name]
            x = F.relu(F.conv2d(x, w, b, padding=1))
            if name in wanted:
                out[name] = x
        return out

    def mean_gram(f):  # (1, N, h, w) -> (1, N, N)
        _, n, h, w = f.shape
        f = f.reshape(1, n, h * w)
        return f @ f.transpose(1, 2) / (h * w)

    def targets(content, style):
        with torch.no_grad():
            p = features(content)[C.CONTENT_LAYER]
            s = features(style)
            return p, {l: mean_gram(s[l]) for l in C.STYLE_LAYERS}

    def loss(x, p, a):
        f = features(x)
        d = f[C.CONTENT_LAYER] - p
        content = 0.5 * (d * d).sum()
        style = 0.0
        for l in C.STYLE_LAYERS:
            n = f[l].shape[1]
            e = mean_gram(f[l]) - a[l]
            style = style + C.STYLE_WEIGHT * (e * e).sum() / (4.0 * n * n)
        return C.ALPHA * content + C.BETA * style

    return targets, loss


def child(size: int, repeats: int, warmup: int, channels_last: bool) -> dict:
    import torch

    torch.set_num_threads(C.threads())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    weights = load_weights(torch, fmt)
    targets, loss = build(torch, weights, fmt)
    content, style, x0 = (torch.from_numpy(a) for a in C.images(size))
    p, a = targets(content, style)
    x = x0.clone().requires_grad_(True)

    def value_and_grad():
        v = loss(x, p, a)
        (g,) = torch.autograd.grad(v, x)
        return v, g

    t0 = time.perf_counter()
    v, g = value_and_grad()  # first call: oneDNN primitive creation, allocator warm-up
    first = time.perf_counter() - t0
    cpu0 = time.process_time()
    times = C.time_calls(value_and_grad, repeats, warmup)
    cpu = (time.process_time() - cpu0) / (repeats + warmup)
    return C.summarise(
        {
            "framework": "torch",
            "version": torch.__version__,
            "size": size,
            "threads": torch.get_num_threads(),
            "variant": "channels_last" if channels_last else "nchw",
            "compile_s": first,
            "times_s": times,
            "cpu_s": cpu,
            "loss": float(v),
            "grad_abs_sum": float(g.abs().sum()),
            "peak_rss_mib": C.peak_rss_mib(),
        }
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format for the convs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        C.report(child(args.size[0], args.repeats, args.warmup, args.channels_last))
        return
    for size in args.size:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--size",
            str(size),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
        ] + (["--channels-last"] if args.channels_last else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = next(line[7:] for line in out.splitlines() if line.startswith("RESULT "))
        import json

        r = json.loads(r)
        print(
            f"torch {r['version']} {r['variant']} {size}px threads={r['threads']}: first call {r['compile_s']:.2f} s, "
            f"median {r['median_s']:.3f} s/eval over {len(r['times_s'])}, {r['gflops']:.0f} GFLOP/s, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB, loss {r['loss']:.6g}"
        )


if __name__ == "__main__":
    main()
