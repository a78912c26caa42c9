"""Atomic, flat ``.npz`` checkpoints of a pytree plus a JSON of everything else.

    save(dir, step, {"params": p, "opt_state": o, "step": s}, info={"data": {...}}, keep=3)
    path = latest(dir)                                   # None when there is none
    tree, info = restore(path, like=template_tree)       # same structure as ``like``

Each checkpoint is one file ``ckpt_<step>.npz``: the pytree flattened with '/'-joined key
paths (``opt_state/0/mu/ConvIN_0/Conv_0/kernel``) and a ``__info__`` JSON string, read back
with ``allow_pickle=False``. It is written to a hidden temporary file in the same folder,
fsynced and renamed, so a crash (or SIGKILL) mid-write leaves the previous checkpoints
intact; only then are the oldest beyond ``keep`` deleted.

A checkpoint that cannot be read (damaged on disk, or copied in half) is never overwritten
nor silently skipped: :func:`latest_readable` renames it ``ckpt_<step>.npz.damaged`` and
reports it; :func:`damaged` lists those files, so a run whose only checkpoints are damaged
stops instead of starting over.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nstyle import _io
from nstyle._errors import UserError

_NAME = re.compile(r"^ckpt_(\d+)\.npz$")
DAMAGED = ".damaged"


class CheckpointError(UserError, ValueError):
    """A checkpoint is unreadable or does not match the run it should resume."""


def flatten(tree: Any) -> dict[str, np.ndarray]:
    """Any pytree -> {'a/b/c': array}, '/'-joining its key path (dict keys, attribute names, indices)."""
    return {
        "/".join(_key_name(k) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_for(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"ckpt_{int(step):08d}.npz"


def step_of(path: str | os.PathLike) -> int:
    """The step of checkpoint file ``path`` (from its name, ``ckpt_<step>.npz``)."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a checkpoint file name (ckpt_<step>.npz)")
    return int(m.group(1))


def all_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in ``directory``, ascending (temporary files ignored)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _NAME.match(p.name)))


def save(directory: str | os.PathLike, step: int, tree: Any, info: dict | None = None, keep: int = 3) -> Path:
    """Write ``tree`` (any pytree of arrays) and ``info`` (JSON-able) as checkpoint ``step``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = flatten(jax.device_get(tree))
    if "__info__" in arrays:
        raise ValueError("'__info__' is reserved")
    arrays["__info__"] = np.array(json.dumps({"step": int(step), **(info or {})}, sort_keys=True))
    final = _io.save_npz(path_for(d, step), arrays)
    if keep > 0:
        for old in all_steps(d)[:-keep]:
            path_for(d, old).unlink(missing_ok=True)
    return final


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """``(flat arrays, info)`` of one checkpoint file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if "__info__" not in flat:
        raise CheckpointError(f"{path}: not an nstyle checkpoint (no '__info__' entry)")
    info = json.loads(str(flat.pop("__info__")))
    return flat, info


def restore(path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """Rebuild a pytree shaped like ``like`` from checkpoint ``path``; every name, shape and dtype must match."""
    flat, info = read(path)
    leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    want = flatten(like)
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{path}: does not match this run's state (missing {missing[:3]}, unexpected {extra[:3]}); "
            f"was it written with another network or optimiser config?"
        )
    leaves = []
    for key, ref in zip(want, jax.tree_util.tree_leaves(like)):
        arr = flat[key]
        if arr.shape != np.shape(ref) or arr.dtype != np.asarray(ref).dtype:
            raise CheckpointError(
                f"{path}: '{key}' is {arr.dtype}{arr.shape}, this run expects {np.asarray(ref).dtype}{np.shape(ref)}"
            )
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(treedef, leaves), info


def latest(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint file in ``directory`` that can be read, or None (nothing is moved)."""
    for step in reversed(all_steps(directory)):
        p = path_for(directory, step)
        try:
            read(p)
        except CheckpointError:
            continue
        return p
    return None


def latest_readable(directory: str | os.PathLike) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """``(newest readable checkpoint, its info, [(damaged file moved aside, why)])``.

    Checkpoints newer than the first readable one are damaged: each is renamed
    ``<name>.damaged`` (``.damaged-2``, ... if taken), so neither a resume nor a later save
    can overwrite or mistake it. Returns ``(None, None, moved)`` if no readable one is left.
    """
    moved = []
    for step in reversed(all_steps(directory)):
        p = path_for(directory, step)
        try:
            _, info = read(p)
        except CheckpointError as e:
            moved.append((set_aside(p), str(e)))
            continue
        return p, info, moved
    return None, None, moved


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged`` (never replacing another file)."""
    path = Path(path)
    for n in range(1, 1000):
        target = path.with_name(path.name + DAMAGED + ("" if n == 1 else f"-{n}"))
        try:
            os.link(path, target)  # fails if target exists: nothing is ever replaced
        except FileExistsError:
            continue
        path.unlink()
        _io.fsync_dir(path.parent)
        return target
    raise CheckpointError(f"{path}: too many damaged copies beside it; clean up {path.parent}")


def damaged(directory: str | os.PathLike) -> list[Path]:
    """The checkpoints of ``directory`` set aside as damaged."""
    d = Path(directory)
    return sorted(p for p in d.glob(f"ckpt_*.npz{DAMAGED}*")) if d.is_dir() else []
