"""Several processes, one computation: ``jax.distributed`` under SLURM, and what each process may do.

    from nstyle import distributed
    distributed.initialize()              # first, before anything asks JAX for its devices; one process: a no-op
    mesh = distributed.make_mesh()        # then spans the devices of every process
    x = distributed.shard_batch(local_rows, distributed.batch_sharding(mesh))   # each process its slice
    if distributed.is_main(): ...         # only process 0 writes files

``srun --ntasks=N nstyle-train ...`` (or submitit's ``tasks_per_node=N``) starts N copies of a
program; :func:`initialize` joins them: ``jax.devices()`` then lists every process's devices,
each process drives its own (``jax.local_devices()``), and a jitted function over a mesh of all
of them runs as one SPMD program. On the CPU the processes exchange data through gloo.

When :func:`initialize` joins processes is set by ``NSTYLE_DISTRIBUTED``:

- ``auto`` (default): inside a SLURM job step with more than one task (``srun --ntasks=N``,
  N > 1). A batch script itself (``sbatch -n2 script.sh`` outside ``srun``) is not a step:
  it runs one process.
- ``1``: always; JAX finds its peers (SLURM, Open MPI, ...) or takes them from
  ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
- ``0``: never (each task of a step runs alone).

One sharding idea serves both parallel paths: a 1-D mesh whose ``data`` axis is the batch.
FastNet training (:mod:`nstyle.train`) splits each batch of photos over it, the batched Gatys
sweep (:func:`nstyle.optimize.stylize_batch`) its grid cells; parameters are replicated.

:func:`launch_rank` tells a process its rank from the environment alone, before JAX starts,
so a command line can decide who writes its records; :func:`local` and :func:`gather` bring
global arrays to the host, :func:`broadcast` makes every process take process 0's value.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nstyle._errors import UserError

MODE_ENV = "NSTYLE_DISTRIBUTED"
MODES = ("auto", "1", "0")
# seconds a process waits for the others to join; JAX's own default (300 s) is long to wait
# for a peer that died while starting
INIT_TIMEOUT_S = 120
BATCH_AXIS = "data"  # the mesh axis a batch is split over


class DistributedError(UserError, RuntimeError):
    """The processes of a multi-process run could not be joined."""


def mode() -> str:
    """``NSTYLE_DISTRIBUTED`` as one of :data:`MODES` (default ``auto``)."""
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    value = {"true": "1", "yes": "1", "on": "1", "false": "0", "no": "0", "off": "0"}.get(value, value)
    if value not in MODES:
        raise DistributedError(f"{MODE_ENV}={value!r} is not one of auto, 1, 0; unset it or use one of them")
    return value


def slurm_step() -> tuple[int, int] | None:
    """``(rank, tasks)`` of this process in a SLURM job step, or None outside one.

    A step (``srun``) sets ``SLURM_STEP_ID`` and ``SLURM_STEP_NUM_TASKS``; a batch script's
    environment has neither, only the job's ``SLURM_NTASKS``.
    """
    env = os.environ
    if "SLURM_STEP_ID" not in env or "SLURM_PROCID" not in env:
        return None
    try:
        tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        return int(env["SLURM_PROCID"]), tasks
    except ValueError:
        return None


def wanted() -> bool:
    """Whether :func:`initialize` will join processes (see the module's docstring)."""
    m = mode()
    if m != "auto":
        return m == "1"
    step = slurm_step()
    return step is not None and step[1] > 1


def launch_rank() -> tuple[int, int]:
    """``(rank, processes)`` this process will have, from the environment only (JAX untouched).

    ``(0, 1)`` when :func:`initialize` will not join processes.
    """
    if not wanted():
        return 0, 1
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    env = os.environ
    if "JAX_PROCESS_ID" in env and "JAX_NUM_PROCESSES" in env:
        return int(env["JAX_PROCESS_ID"]), int(env["JAX_NUM_PROCESSES"])
    step = slurm_step()
    return step if step is not None else (0, 1)


def initialize(timeout_s: int = INIT_TIMEOUT_S) -> int:
    """Join the processes of this run if :func:`wanted` (once; later calls do nothing).

    Must run before anything initialises a JAX backend (``jax.devices()``, any computation).
    Returns the number of processes.
    """
    if not wanted() or jax.distributed.is_initialized():
        return jax.process_count() if jax.distributed.is_initialized() else 1
    # gloo is jaxlib's CPU collective implementation across processes; without one, a CPU
    # computation over several processes' devices fails. Inert on GPUs and TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    env = os.environ
    kwargs: dict[str, Any] = {}
    if "JAX_NUM_PROCESSES" in env and "JAX_PROCESS_ID" in env:
        kwargs = {"num_processes": int(env["JAX_NUM_PROCESSES"]), "process_id": int(env["JAX_PROCESS_ID"])}
    try:
        jax.distributed.initialize(initialization_timeout=int(timeout_s), **kwargs)
    except Exception as e:  # noqa: BLE001 -- JAX raises ValueError, RuntimeError or its own errors here
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DistributedError(
            f"could not join the processes of this run ({first.strip()[:300]}); check that every task started "
            f"(srun --ntasks), that process 0's host name resolves, or set {MODE_ENV}=0 to run each task alone"
        ) from None
    _open_communicator(timeout_s)
    return jax.process_count()


def _open_communicator(timeout_s: int) -> None:
    """Run one collective over all devices, with every process there at once.

    On the CPU, the first collective over a set of devices opens gloo's connections, and a
    process waits only 30 s there for the others; later collectives over the same devices
    wait as long as it takes. Processes that compile a big step (the FastNet train step, a
    sweep's step) at different speeds would arrive further apart than that, so the
    connections are opened here, after a barrier of the coordination service (which
    waits ``timeout_s``).
    """
    from jax._src import distributed as _jax_distributed  # the client's barrier has no public name
    from jax.experimental import multihost_utils

    client = getattr(_jax_distributed.global_state, "client", None)
    if client is not None:
        client.wait_at_barrier("nstyle-distributed-start", int(timeout_s) * 1000)
    multihost_utils.sync_global_devices("nstyle-distributed-start")


def is_main() -> bool:
    """Whether this is process 0, the one that writes files (True in a single-process run)."""
    return jax.process_index() == 0


def local(tree: Any) -> Any:
    """A pytree of arrays as numpy, on every process: a replicated global array (the state of a
    data-parallel run) is read from this process's own copy. One split over processes needs :func:`gather`."""
    return jax.tree.map(np.asarray, tree)


def gather(tree: Any) -> Any:
    """A pytree of global arrays split over processes, whole, as numpy on every process (a collective)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def broadcast(value: Any) -> Any:
    """Process 0's ``value`` (a pytree of numbers or arrays) on every process (a collective)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(value))


# ----------------------------------------------------------------------------- sharding


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over the batch axis of all (or the given) devices; all processes' after :func:`initialize`."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def shard_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Host batch -> global array split over the batch axis. Several processes: ``batch`` is this
    process's slice (rows ``i·B/n … (i+1)·B/n`` of the global batch for process i of n)."""
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.make_array_from_process_local_data(sharding, batch)


def put(tree: Any, sharding: NamedSharding) -> Any:
    """A pytree of host arrays holding the same values on every process, as global arrays with ``sharding``."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(one, tree)
