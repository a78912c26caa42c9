"""PyTorch reference for bench_fastnet.py's training throughput: the same network, loss and step.

    $NSTYLE_TORCH_PYTHON benchmarks/bench_fastnet_torch.py --size 256 --batch 4 --steps 3

Optional: torch is never a dependency of nstyle. The network is Johnson et al.'s as in
nstyle.fastnet (reflection padding, instance norm with affine, nearest-upsample + conv,
(tanh + 1)/2 output, no conv bias before an instance norm, no shift in the residual blocks' second norm;
1,676,995 trainable parameters, asserted). The loss network is VGG16 to relu4_3
read from nstyle's cache (``~/.cache/nstyle/vgg16.npz``) with numpy, torchvision input
normalisation, max pooling; the loss is the MSE form of nstyle.train (content 1e5 at
relu2_2, style 1e10 on F Fᵀ/(N M) at relu1_2/2_2/3_3/4_3, TV 10), Adam 1e-3. Also times
one inference pass at ``--infer-sizes``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

VGG16 = (
    "conv1_1",
    "conv1_2",
    "P",
    "conv2_1",
    "conv2_2",
    "P",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "P",
    "conv4_1",
    "conv4_2",
    "conv4_3",
)
STYLE = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")
CONTENT = "conv2_2"


class ConvIN(nn.Module):
    def __init__(self, cin, cout, k, stride=1, norm=True, relu=True):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride, bias=not norm)  # as nstyle: no bias before instance norm
        self.norm = nn.InstanceNorm2d(cout, affine=True) if norm else None
        self.relu = relu

    def forward(self, x):
        x = self.conv(self.pad(x))
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = ConvIN(c, c, 3), ConvIN(c, c, 3, relu=False)
        # as nstyle: the second norm has no shift (the next instance norm would remove it)
        nn.init.zeros_(self.b.norm.bias)
        self.b.norm.bias.requires_grad_(False)

    def forward(self, x):
        return x + self.b(self.a(x))


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvIN(cin, cout, 3)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class FastNet(nn.Module):
    def __init__(self, w=32, blocks=5):
        super().__init__()
        self.net = nn.Sequential(
            ConvIN(3, w, 9),
            ConvIN(w, 2 * w, 3, 2),
            ConvIN(2 * w, 4 * w, 3, 2),
            *[Residual(4 * w) for _ in range(blocks)],
            Up(4 * w, 2 * w),
            Up(2 * w, w),
            ConvIN(w, 3, 9, norm=False, relu=False),
        )

    def forward(self, x):
        return (torch.tanh(self.net(2 * x - 1)) + 1) / 2


def load_vgg16():
    root = os.environ.get("NSTYLE_CACHE_DIR") or Path.home() / ".cache" / "nstyle"
    z = np.load(Path(root) / "vgg16.npz", allow_pickle=False)
    return {
        n: (
            torch.from_numpy(np.ascontiguousarray(z[f"{n}/kernel"].transpose(3, 2, 0, 1))),  # HWIO -> OIHW
            torch.from_numpy(z[f"{n}/bias"]),
        )
        for n in VGG16
        if n != "P"
    }


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def features(vgg, x):
    x = (x - MEAN) / STD
    out = {}
    for n in VGG16:
        if n == "P":
            x = F.max_pool2d(x, 2)
        else:
            x = F.relu(F.conv2d(x, *vgg[n], padding=1))
            out[n] = x
    return out


def gram(f):
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--infer-sizes", type=int, nargs="*", default=[256, 512, 1024])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = FastNet()
    n = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert n == 1_676_995, n
    vgg = load_vgg16()
    style = torch.rand(1, 3, args.size, args.size)
    with torch.no_grad():
        style_g = {k: gram(v) for k, v in features(vgg, style).items() if k in STYLE}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    x = torch.rand(args.batch, 3, args.size, args.size)

    def step():
        opt.zero_grad(set_to_none=True)
        y = net(x)
        with torch.no_grad():
            p = features(vgg, x)[CONTENT]
        fy = features(vgg, y)
        loss = 1e5 * F.mse_loss(fy[CONTENT], p)
        loss = loss + 1e10 * sum(F.mse_loss(gram(fy[l]), style_g[l].expand(args.batch, -1, -1)) for l in STYLE)
        dy, dx = y[:, :, 1:] - y[:, :, :-1], y[:, :, :, 1:] - y[:, :, :, :-1]
        loss = loss + 10.0 * (dy.pow(2).sum() + dx.pow(2).sum()) / y.numel()
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    dt = (time.perf_counter() - t) / args.steps
    print(
        f"torch {torch.__version__} train {args.size} px batch {args.batch}: {dt:.3f} s/step, "
        f"{args.batch / dt:.2f} images/s (loss {loss:.4g}; {args.threads} threads)",
        flush=True,
    )
    net.eval()
    with torch.no_grad():
        for s in args.infer_sizes:
            img = torch.rand(1, 3, s, s)
            net(img)
            t = time.perf_counter()
            for _ in range(3):
                net(img)
            print(f"torch infer {s:5d} px: {(time.perf_counter() - t) / 3:.4f} s/image", flush=True)


if __name__ == "__main__":
    main()
