"""How nstyle compiles its hot loops: XLA options chosen for speed, with a switch to turn them off.

On the CPU, XLA (jaxlib 0.10) runs convolutions as YNNPACK fusions by default. For VGG's
3×3 convolutions at the sizes style transfer uses, its older Eigen convolutions are faster
(``benchmarks/bench_loss.py``; figures in benchmarks/README.md). The choice is a
per-compilation option, so it touches only the functions nstyle compiles with :func:`jit`,
never the user's own jitted code.

``NSTYLE_CPU_CONV`` selects it: ``eigen`` (the default) or ``xla`` (XLA's own default, i.e.
YNNPACK). On other backends the option is inert; a jaxlib that does not know it gets no
options at all (checked once, on the first compilation).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import jax

CONV_ENV = "NSTYLE_CPU_CONV"
CONV_CHOICES = ("eigen", "xla")
_EIGEN = {"xla_cpu_experimental_ynn_fusion_type": ""}  # no YNN fusions: Eigen convolutions


def conv_choice() -> str:
    """The CPU convolution implementation asked for by ``NSTYLE_CPU_CONV`` (default ``eigen``)."""
    value = os.environ.get(CONV_ENV, "eigen").strip().lower() or "eigen"
    if value not in CONV_CHOICES:
        raise ValueError(
            f"{CONV_ENV}={value!r} is not one of {', '.join(CONV_CHOICES)}; unset it or set {CONV_ENV}=eigen"
        )
    return value


@functools.cache
def _supported(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib accepts ``options`` (compiles a scalar function once to find out)."""
    try:
        jax.jit(lambda x: x + 1).lower(0.0).compile(compiler_options=dict(options))
    except Exception:  # noqa: BLE001 - an unknown option is reported as a generic XLA error
        return False
    return True


PRECISION_ENV = "NSTYLE_PRECISION"
PRECISIONS = ("float32", "tensorfloat32", "bfloat16")
# Convolutions and matmuls that name no precision of their own run at this one on GPUs and TPUs
# (the Gram products name HIGHEST: float32 always). TF32 is what PyTorch's cuDNN convolutions
# use by default; benchmarks/gpu_suite.py measures all three and the final loss each reaches.
# XLA:CPU computes float32 at every setting.
DEFAULT_PRECISION = "tensorfloat32"


def precision() -> str:
    """The default matmul/convolution precision of nstyle's computations (``NSTYLE_PRECISION``)."""
    value = os.environ.get(PRECISION_ENV, DEFAULT_PRECISION).strip().lower() or DEFAULT_PRECISION
    if value not in PRECISIONS:
        raise ValueError(
            f"{PRECISION_ENV}={value!r} is not one of {', '.join(PRECISIONS)}; unset it or set "
            f"{PRECISION_ENV}={DEFAULT_PRECISION}"
        )
    return value


# JAX preallocates this fraction of an accelerator's memory for its allocator (its own default
# is 0.75): print-size runs need most of it, and nstyle.memory plans against that pool.
GPU_MEMORY_FRACTION = "0.90"


def device_defaults() -> None:
    """Settings that must precede the first use of an accelerator; the commands call it first
    thing. Each is set only where the user has not set it: the preallocated fraction of GPU
    memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``). Buffer donation and the precision are
    per-computation (:func:`jit`) and need nothing here."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEMORY_FRACTION)


def compiler_options() -> dict[str, str]:
    """The XLA options nstyle compiles its hot loops with (empty when there is nothing to set)."""
    if conv_choice() == "xla" or jax.default_backend() != "cpu":
        return {}
    key = tuple(sorted(_EIGEN.items()))
    return dict(_EIGEN) if _supported(key) else {}


def jit(fun=None, **kwargs):
    """``jax.jit`` with :func:`compiler_options`, traced at :func:`precision`; usable as
    ``@jit`` or ``@jit(static_argnums=...)``.

    The options are looked up at the first use, not at decoration, so importing nstyle never
    initialises a JAX backend. The result behaves as the ``jax.jit`` object it wraps
    (``lower``, ``_cache_size``, ... are forwarded).
    """
    if fun is None:
        return functools.partial(jit, **kwargs)
    return _LazyJit(fun, kwargs)


def _inside_trace(args, kwargs) -> bool:
    """Whether a call happens while JAX traces something (an outer jit, vmap, grad, eval_shape)."""
    try:
        from jax._src import core as _core  # no public equivalent; checked by tests/test_xla.py

        return not _core.trace_state_clean()
    except (ImportError, AttributeError):  # a JAX without it: tracers among the arguments
        return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))


class _LazyJit:
    def __init__(self, fun, kwargs):
        self._fun, self._kwargs, self._jitted, self._nested = fun, kwargs, None, None
        functools.update_wrapper(self, fun)

    def _get(self):
        if self._jitted is None:
            self._jitted = jax.jit(self._fun, compiler_options=compiler_options() or None, **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        if _inside_trace(args, kwargs):
            # called inside another trace (jit, eval_shape, vmap, grad): JAX allows compile
            # options only on a top-level jit, and the outer computation is compiled as a whole
            if self._nested is None:
                self._nested = jax.jit(self._fun, **self._kwargs)
            return self._nested(*args, **kwargs)
        with jax.default_matmul_precision(precision()):
            return self._get()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.default_matmul_precision(precision()):  # as a call traces it: the same executable
            return self._get().lower(*args, **kwargs)

    def __getattr__(self, name):  # lower, trace, eval_shape, _cache_size, ...
        if name.startswith("__") or name in ("_fun", "_kwargs", "_jitted", "_nested"):
            raise AttributeError(name)
        return getattr(self._get(), name)


XLA_CACHE_ENV = "NSTYLE_XLA_CACHE"
# Cache every computation that took this long to compile: the targets and init take 0.1–1 s
# each, under JAX's default threshold of 1 s, and would compile afresh every run.
MIN_COMPILE_S = 0.1


def persistent_cache(path: str | os.PathLike | None = None) -> str | None:
    """Keep compiled XLA executables on disk, so a new process (the next run, each job of a
    sweep launched in its own process) skips most of its compilation (benchmarks/STYLIZE.md).

    The directory is ``path``, else ``$NSTYLE_XLA_CACHE``, else ``<weight cache>/xla`` (see
    :func:`nstyle.weights.cache_dir`); ``NSTYLE_XLA_CACHE=off`` turns it off. Computations
    that took at least ``MIN_COMPILE_S`` to compile are stored (a step is 100–400 KB).
    The command-line tools call this; library users may. Returns the directory, or None when
    off. Idempotent; it does not replace a cache directory the user configured in JAX.
    """
    from nstyle import weights

    setting = os.environ.get(XLA_CACHE_ENV, "").strip() if path is None else str(path)
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if jax.config.jax_compilation_cache_dir:  # already set (by the user or an earlier call)
        return jax.config.jax_compilation_cache_dir
    directory = setting or str(weights.cache_dir() / "xla")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return directory


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where there is none (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_host_memory() -> None:
    """Hand the heap memory that is free back to the operating system (glibc ``malloc_trim``).

    Compiling a VGG step frees 100–250 MB of compiler memory that glibc keeps for later
    allocations; the step's own buffers then come on top of it, so the run's peak RSS holds
    both (benchmarks/MEMORY.md). Called after each compilation of a run; a few milliseconds.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def single_threaded_lapack():
    """A context in which the BLAS/LAPACK libraries loaded in this process run on one thread.

    On the CPU, XLA hands linear algebra such as ``eigh`` (the W2 style loss) to LAPACK from
    the OpenBLAS that scipy ships, whose threads spin while they wait for each other: on a
    machine whose cores are busy with other work a 256 × 256 ``eigh`` then takes 1–4 s
    instead of 0.05–0.09 s on one thread (benchmarks/README.md, "W2 and LAPACK threads").
    For the matrices style losses decompose (at most 512 × 512) one thread loses little even
    on an idle machine. The convolutions are XLA's own and keep their threads.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
