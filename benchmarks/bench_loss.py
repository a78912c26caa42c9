"""Time the jitted value-and-gradient of the Gatys loss through VGG19 on this CPU.

    .venv/bin/python benchmarks/bench_loss.py                      # 256 and 512 px, JAX only
    .venv/bin/python benchmarks/bench_loss.py --peak               # + measured matmul peak
    .venv/bin/python benchmarks/bench_loss.py --compare --rounds 3 # A/B against PyTorch

The evaluation is ``jax.jit(jax.value_and_grad(lambda x: perceptual_loss(params, x, targets,
PerceptualLoss())[0].sum()))`` for one image: content conv4_2, style conv1_1 … conv5_1, average
pooling. Reported per size: compile time, median seconds per evaluation after warm-up, peak
RSS (each size in its own process, so peaks do not mix), achieved GFLOP/s counting the
backward pass as one more forward (the weights are frozen: no weight gradients), and the
fraction of the machine's peak.

``--compare`` runs ``bench_loss_torch.py`` (the same evaluation in PyTorch, with a Python that
has torch: ``--torch-python``) alternately with this one, A B B A …, each in a fresh process
restricted to the same cores, and prints the ratio jax/torch per size. ``--variant
NAME=SPEC`` (repeatable; SPEC = XLA flags and/or KEY=VALUE environment settings) adds JAX
configurations to the alternation, e.g. ``--variant default= --variant xla=NSTYLE_CPU_CONV=xla``.

The loss is compiled with ``nstyle._xla.jit``, as nstyle compiles its own hot loops (on the
CPU: Eigen convolutions unless ``NSTYLE_CPU_CONV=xla``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
TORCH_SCRIPT = HERE / "bench_loss_torch.py"
DEFAULT_TORCH_PYTHON = C.torch_python()  # $NSTYLE_TORCH_PYTHON


# ----------------------------------------------------------------------------- the measurement


def child(size: int, repeats: int, warmup: int, params_arg: bool = False, release: bool = True) -> dict:
    """One size, in this (fresh) process: compile, warm up, time, read peak RSS.

    ``params_arg``: pass the weights (and targets) as arguments of the jitted function instead
    of closing over them; a closure makes them compile-time constants of the executable.
    ``release``: hand the compiler's freed memory back to the OS before running
    (``nstyle._xla.release_host_memory``, as nstyle does).
    """
    rss = {"start": C.rss_mib()}
    import jax
    import jax.numpy as jnp

    import nstyle
    import nstyle._xla

    jnp.zeros(()).block_until_ready()
    rss["jax"] = C.rss_mib()
    for name, cin, cout, _ in C.CONVS:  # the FLOP table must describe nstyle's network
        assert nstyle.vgg.conv_shape(name) == (3, 3, cin, cout), name
    params = nstyle.weights.load("vgg19")
    rss["weights"] = C.rss_mib()
    cfg = nstyle.losses.PerceptualLoss()  # paper defaults, avg pooling
    assert cfg.content_layers == (C.CONTENT_LAYER,) and cfg.style_layers == C.STYLE_LAYERS, cfg
    assert (cfg.alpha, cfg.beta, cfg.pooling) == (C.ALPHA, C.BETA, "avg"), cfg
    content, style, x0 = C.images(size)
    # as nstyle.optimize computes them: one compiled call each (eager jnp ops would compile and
    # cache a program per operation)
    targets = nstyle.optimize.prepare_targets(params, cfg, content, [style[0]], None, 1)
    targets = jax.tree.map(lambda t: t[:1], targets)
    x0 = jnp.asarray(x0)
    jax.block_until_ready(targets)
    if release:
        nstyle._xla.release_host_memory()  # as nstyle.optimize does after computing its targets
    rss["targets"] = C.rss_mib()
    rss_setup = C.peak_rss_mib()
    jit = nstyle._xla.jit  # how nstyle compiles its hot loops (NSTYLE_CPU_CONV; see nstyle/_xla.py)

    if params_arg:
        fn = jit(jax.value_and_grad(lambda x, p, t: nstyle.losses.perceptual_loss(p, x, t, cfg)[0].sum()))
        args = (x0, params, targets)
    else:  # the form the issue specifies: weights and targets are closed over
        fn = jit(jax.value_and_grad(lambda x: nstyle.losses.perceptual_loss(params, x, targets, cfg)[0].sum()))
        args = (x0,)
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    rss["compiled"] = C.rss_mib()
    if release:
        nstyle._xla.release_host_memory()  # as nstyle.optimize does after compiling its step
    rss["released"] = C.rss_mib()
    v, g = jax.block_until_ready(compiled(*args))
    t3 = time.perf_counter()
    rss["ran"] = C.rss_mib()

    def call():
        jax.block_until_ready(compiled(*args))

    cpu0 = time.process_time()
    times = C.time_calls(call, repeats, warmup)
    cpu = (time.process_time() - cpu0) / (repeats + warmup)
    return C.summarise(
        {
            "framework": "jax",
            "version": jax.__version__,
            "size": size,
            "threads": C.threads(),
            "variant": os.environ.get("NSTYLE_BENCH_VARIANT", "default")
            + ("+params-arg" if params_arg else "")
            + ("" if release else "+no-release"),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "compiler_options": nstyle._xla.compiler_options(),
            "trace_s": t1 - t0,
            "compile_s": t2 - t1,
            "first_call_s": t3 - t2,
            "times_s": times,
            "cpu_s": cpu,
            "loss": float(v),
            "grad_abs_sum": float(jnp.abs(g).sum()),
            "rss_setup_mib": rss_setup,
            "rss_mib": rss,  # resident memory after each phase
            "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
            "peak_rss_mib": C.peak_rss_mib(),
        }
    )


def run_child(cmd: list[str], env: dict | None = None, cores: int | None = None) -> dict:
    """Run a benchmark child process (optionally on the first ``cores`` CPUs) and parse its RESULT line."""
    preexec = None
    if cores is not None:
        allowed = sorted(os.sched_getaffinity(0))[:cores]
        preexec = lambda: os.sched_setaffinity(0, allowed)  # noqa: E731
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=preexec)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"error: benchmark child failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(lines[-1][len("RESULT ") :])


def _child_flags(size: int, args) -> list[str]:
    """What both children (nstyle's and PyTorch's) are asked to measure."""
    return ["--child", "--size", str(size), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]


def jax_cmd(size: int, args) -> list[str]:
    return (
        [sys.executable, __file__, *_child_flags(size, args)]
        + (["--params-arg"] if args.params_arg else [])
        + (["--no-release"] if args.no_release else [])
    )


def torch_cmd(size: int, args) -> list[str]:
    cmd = [args.torch_python, str(TORCH_SCRIPT), *_child_flags(size, args)]
    return cmd + (["--channels-last"] if args.torch_channels_last else [])


def variant_env(name: str, spec: str) -> dict:
    """The environment of one variant: ``spec`` is space-separated XLA flags (``--xla_…``) and
    ``KEY=VALUE`` environment settings (e.g. ``NSTYLE_CPU_CONV=xla``)."""
    env = dict(os.environ, NSTYLE_BENCH_VARIANT=name)
    env.pop("XLA_FLAGS", None)
    flags = []
    for token in spec.split():
        if token.startswith("--"):
            flags.append(token)
        elif "=" in token:
            key, value = token.split("=", 1)
            env[key] = value
        else:
            raise SystemExit(f"error: variant '{name}': '{token}' is neither an XLA flag (--…) nor KEY=VALUE")
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


# ----------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def nominal_peak_gflops() -> tuple[float, str]:
    """Cores × clock (/proc/cpuinfo) × float32 FLOP/cycle of the widest FMA unit (2 FMA ports assumed)."""
    info = Path("/proc/cpuinfo").read_text()
    mhz = max(float(l.split(":")[1]) for l in info.splitlines() if l.startswith("cpu MHz"))
    flags = next(l for l in info.splitlines() if l.startswith("flags")).split()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    flop_per_cycle = lanes * 2 * 2  # lanes × (mul + add) × 2 FMA ports
    cores = C.threads()
    return cores * mhz / 1e3 * flop_per_cycle, f"{cores} cores × {mhz / 1e3:.2f} GHz × {flop_per_cycle} FLOP/cycle"


def measured_peak_gflops() -> dict:
    """Best float32 matmul rate from numpy's BLAS and from XLA, in this process (all cores)."""
    import jax
    import jax.numpy as jnp

    out = {"numpy": C.matmul_peak_gflops(4096)}
    n = 4096
    a = jax.random.uniform(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    best = min(C.time_calls(lambda: f(a, a).block_until_ready(), 5, 1))
    out["xla"] = 2 * n**3 / best / 1e9
    return out


# ----------------------------------------------------------------------------- printing


def describe(r: dict, peaks: dict) -> str:
    tag = r["framework"] + ("" if r.get("variant") in (None, "default") else f"[{r['variant']}]")
    comp = r.get("compile_s", 0.0) + r.get("trace_s", 0.0)
    pk = " ".join(f"{r['gflops'] / v:.0%} of {k}" for k, v in peaks.items())
    busy = f"  {r['cpu_s'] / r['median_s']:.1f} cores busy" if "cpu_s" in r else ""
    return (
        f"{tag:>18} {r['size']:4d}px  compile {comp:6.2f} s  median {r['median_s']:.3f} s/eval "
        f"(min {min(r['times_s']):.3f}, n={len(r['times_s'])})  {r['gflops']:5.0f} GFLOP/s  {pk}{busy}  "
        f"peak RSS {r['peak_rss_mib']:.0f} MiB  loss {r['loss']:.7g}"
        + ("  RSS after " + ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mib"].items()) if "rss_mib" in r else "")
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs="+", default=[256, 512], help="image sides in px (default 256 512)")
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations per process (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed evaluations after the first call")
    ap.add_argument("--peak", action="store_true", help="also measure the float32 matmul peak of this machine")
    ap.add_argument("--compare", action="store_true", help="alternate with the PyTorch benchmark")
    ap.add_argument("--rounds", type=int, default=2, help="--compare: A/B rounds per size")
    ap.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON, help="a Python with torch, for --compare")
    ap.add_argument("--torch-channels-last", action="store_true", help="--compare: torch in channels_last format")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="JAX configuration to add to the alternation (repeatable): SPEC is space-separated XLA "
        "flags and KEY=VALUE environment settings, e.g. 'xla=NSTYLE_CPU_CONV=xla'; 'default=' is the plain run",
    )
    ap.add_argument(
        "--params-arg",
        action="store_true",
        help="pass weights and targets to the jitted function as arguments (default: closed over)",
    )
    ap.add_argument(
        "--no-release",
        action="store_true",
        help="keep the compiler's freed memory in the process (no malloc_trim after compiling)",
    )
    ap.add_argument("--threads", type=int, default=None, help="restrict every child to this many cores")
    ap.add_argument("--json", type=Path, default=None, help="also write every result to this file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        C.report(child(args.size[0], args.repeats, args.warmup, args.params_arg, not args.no_release))
        return
    if args.compare and not (args.torch_python and Path(args.torch_python).exists()):
        raise SystemExit(
            f"error: no Python at {args.torch_python}; pass --torch-python PATH to a Python with torch "
            "(or set NSTYLE_TORCH_PYTHON)"
        )
    variants = []
    for v in args.variant or ["default=" + os.environ.get("XLA_FLAGS", "")]:
        if "=" not in v:
            raise SystemExit(f"error: --variant wants NAME=SPEC (SPEC may be empty), got '{v}'")
        variants.append(tuple(v.split("=", 1)))

    cores = args.threads or C.threads()
    nominal, how = nominal_peak_gflops()
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, children run on {cores} cores; "
        f"nominal float32 peak {nominal:.0f} GFLOP/s ({how})"
    )
    peaks = {"nominal": nominal}
    if args.peak:
        m = run_child(
            [
                sys.executable,
                "-c",
                "import sys, json; sys.path.insert(0, %r); import bench_loss as b; "
                "print('RESULT ' + json.dumps(b.measured_peak_gflops()))" % str(HERE),
            ],
            cores=cores,
        )
        print("measured float32 matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m.items()))
        peaks = {"matmul peak": max(m.values()), **peaks}
    for s in args.size:
        print(f"forward convs to conv5_1 at {s}x{s}: {C.forward_gflop(s):.1f} GFLOP; value+grad counted as 2x")

    results = []
    for size in args.size:
        per = {}  # label -> list of results
        rounds = args.rounds if args.compare else 1
        for r in range(rounds):
            jobs = [
                (f"jax[{n}]" if len(variants) > 1 else "jax", jax_cmd(size, args), variant_env(n, fl))
                for n, fl in variants
            ]
            if args.compare:
                jobs.append(("torch", torch_cmd(size, args), None))
            for label, cmd, env in jobs if r % 2 == 0 else jobs[::-1]:  # A B … then … B A
                res = run_child(cmd, env, cores)
                print(describe(res, peaks), flush=True)
                per.setdefault(label, []).append(res)
                results.append(res)
        if args.compare or len(variants) > 1:
            med = {k: statistics.median(x["median_s"] for x in v) for k, v in per.items()}
            ref = med.get("torch")
            print(
                f"--- {size}px, median over {rounds} process(es) of the per-process medians, "
                f"threads: " + ", ".join(f"{k} {v[0]['threads']}" for k, v in per.items())
            )
            for k, v in per.items():
                loss = v[0]["loss"]
                line = f"    {k:>18}: {med[k]:.3f} s/eval  {2 * C.forward_gflop(size) / med[k]:5.0f} GFLOP/s"
                line += f"  peak RSS {max(x['peak_rss_mib'] for x in v):.0f} MiB"
                if ref is not None and k != "torch":
                    rel = abs(loss - per["torch"][0]["loss"]) / abs(per["torch"][0]["loss"])
                    line += f"  ratio jax/torch {med[k] / ref:.2f}  (loss rel. diff {rel:.1e})"
                print(line)
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_model(), "peaks": peaks, "results": results}, indent=1))


if __name__ == "__main__":
    main()
