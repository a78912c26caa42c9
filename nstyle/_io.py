"""Files that are never seen half-written: one atomic writer, hashing and JSON for all of nstyle.

    atomic_write(path, lambda f: f.write(data))             # any writer of a binary file object
    write_text(path, "a,b\\n"); write_json(path, {"loss": np.float32(1.5)}); save_npz(path, arrays)

Every write goes to a hidden temporary file in the target's folder, is flushed and fsynced,
gets the usual mode ``0666 & ~umask`` (``mkstemp`` alone makes 0600), and is renamed over the
target; the folder is fsynced so the rename itself survives a crash. A reader sees the old
file or the new one, never a mix; an interrupted write leaves the old file and no temporary.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def umask() -> int:
    """The process's umask (reading it requires setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (POSIX); harmless where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], *, overwrite: bool = True) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    Parent folders are created. With ``overwrite=False`` the rename is a hard link that fails
    if ``path`` exists (``FileExistsError``), so two writers can never both "create" it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic create-if-absent
            os.unlink(tmp)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(data), overwrite=overwrite)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, overwrite: bool = True) -> Path:
    """``obj`` as strict JSON (see :func:`to_jsonable`), atomically."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n", overwrite=overwrite)


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, overwrite: bool = True) -> Path:
    """An uncompressed ``.npz`` of ``arrays`` (read it back with ``allow_pickle=False``), atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays), overwrite=overwrite)


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object from ``path``; None if it is missing, unreadable or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def array_sha256(a: np.ndarray) -> str:
    """Checksum of an array's dtype, shape and bytes (to compare results pixel for pixel)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def to_jsonable(obj: Any) -> Any:
    """numpy/jax scalars and arrays, Paths, dataclasses, enums, tuples -> plain JSON types.

    Non-finite floats become the strings "NaN", "Infinity", "-Infinity", so the file stays
    strict JSON (a NaN loss is worth recording).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    return obj
