"""What a run records about itself so it can be reproduced: versions, device, weights, git, inputs.

    info = nstyle.runinfo.collect(params=vgg_params, seed=0)    # a JSON-ready dict
    nstyle.runinfo.write_json_atomic(run_dir / "metrics.json", {**metrics, **info})

Generic: the stylise, FastNet and experiment entry points all use it. Nothing here imports
Hydra; numpy scalars and arrays, Paths and dataclasses are converted for JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = ("nstyle", "jax", "jaxlib", "flax", "optax", "numpy", "pillow", "hydra-core", "omegaconf", "scikit-image")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """{"python": "3.11.9", "jax": "0.10.2", ...}; None for a package that is not installed."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """The jax backend this process computes on: platform, device kind and count, host CPUs."""
    import jax

    devs = jax.devices()
    return {
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "device_count": len(devs),
        "host": platform.node(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def git_commit(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """{"commit": sha, "dirty": bool} of the git checkout holding ``path`` (default: this
    package's source), or None outside a checkout or without git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                            capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(st.stdout.strip()) if st.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def file_sha256(path: str | os.PathLike) -> str:
    from nstyle.weights import sha256_file  # one implementation of the chunked file hash

    return sha256_file(path)


def array_sha256(a: np.ndarray) -> str:
    """Checksum of an array's dtype, shape and bytes (e.g. to compare results pixel for pixel)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def weights_info(params: Any) -> dict[str, Any]:
    """Arch, input convention, checksum and source of a VGGParams (or anything with those fields)."""
    return {k: getattr(params, k, None) for k in ("arch", "preprocessing", "checksum", "source")}


def collect(params: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """Everything above in one dict: ``versions``, ``device``, ``git``, ``argv``, ``seed``, ``weights``."""
    out: dict[str, Any] = {
        "versions": versions(),
        "device": device_info(),
        "git": git_commit(),
        "argv": list(sys.argv),
    }
    if seed is not None:
        out["seed"] = int(seed)
    if params is not None:
        out["weights"] = weights_info(params)
    out.update(extra)
    return out


def to_jsonable(obj: Any) -> Any:
    """numpy/jax scalars and arrays, Paths, dataclasses, tuples -> plain JSON types.

    Non-finite floats become the strings "NaN", "Infinity", "-Infinity" so the file stays
    strict JSON (a NaN loss is worth recording).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
