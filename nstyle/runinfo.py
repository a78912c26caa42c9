"""What a run records about itself so it can be reproduced: versions, device, weights, git, inputs.

    info = nstyle.runinfo.describe(params=vgg_params, seed=0)    # a JSON-ready dict

Generic: the stylise, FastNet and experiment entry points all use it. Nothing here imports
Hydra.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

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
        st = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(st.stdout.strip()) if st.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def weights_info(params: Any) -> dict[str, Any]:
    """Arch, input convention, checksum and source of a VGGParams (or anything with those fields)."""
    return {k: getattr(params, k, None) for k in ("arch", "preprocessing", "checksum", "source")}


def describe(params: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
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
