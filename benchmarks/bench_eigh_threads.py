"""The W2 style loss's ``eigh`` with OpenBLAS's default threads and with one thread.

    .venv/bin/python benchmarks/bench_eigh_threads.py [--sizes 64 128 256 512] [--repeats 5]

XLA runs ``jnp.linalg.eigh`` on the CPU through LAPACK from scipy's OpenBLAS, whose worker
threads spin while they wait for each other. On a CPU that other processes keep busy this
costs far more than the decomposition itself; ``nstyle._xla.single_threaded_lapack`` (used
around every W2 run) limits it to one thread. Prints one JSON line per size with the median
time of a jitted ``eigh`` of a random symmetric positive definite matrix, alternating the two
settings (A B B A) ``--repeats`` times. Report the machine's load with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nstyle import _xla


def timed(fn, x) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    eigh = jax.jit(jnp.linalg.eigh)
    for n in args.sizes:
        a = np.random.default_rng(0).standard_normal((1, n, n)).astype(np.float32)
        x = jnp.asarray(a @ a.transpose(0, 2, 1))  # (1, n, n)
        timed(eigh, x)  # compile
        times = {"default": [], "one_thread": []}
        for _ in range(args.repeats):
            for which in ("default", "one_thread", "one_thread", "default"):
                if which == "default":
                    times[which].append(timed(eigh, x))
                else:
                    with _xla.single_threaded_lapack():
                        times[which].append(timed(eigh, x))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(
            json.dumps(
                {
                    "n": n,
                    "default_ms": round(med["default"], 1),
                    "one_thread_ms": round(med["one_thread"], 1),
                    "speedup": round(med["default"] / med["one_thread"], 2),
                    "loadavg_1min": os.getloadavg()[0],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
