"""Run directories that belong to one run at a time.

    d = unique_dir("outputs/stylize/2024-05-01_12-00-00")   # created here; "..._2" if taken
    with hold(d):                                            # exclusive, or RunDirError at once
        ...every write of the run...

A run takes an exclusive ``fcntl.flock`` on ``<dir>/.nstyle.lock`` before it writes anything
and keeps it until its last write; a second run on the same directory (another process, or
another thread) is refused at once with one line naming the holder's pid. The lock is the open
file itself, so it ends with the process, also on SIGKILL: a crashed run never leaves a
stale lock. Holding is re-entrant in one thread (the command line takes the lock before
Hydra starts, the library functions it then calls take it again).

Default directories come from :func:`unique_dir`: ``mkdir`` without ``exist_ok`` is atomic,
so two runs started in the same second, in one process or many, get ``<name>`` and
``<name>_2``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from nstyle._errors import UserError

LOCK_FILE = ".nstyle.lock"
# what a run directory may hold without holding a result: Hydra's records, logs, the lock
_BOOKKEEPING = (".hydra", LOCK_FILE)


class RunDirError(UserError):
    """A run directory is in use by another run, or cannot be written."""


class _Held:
    def __init__(self, fd: int, owner: int):
        self.fd, self.owner, self.count = fd, owner, 1


_held: dict[str, _Held] = {}
_guard = threading.Lock()


def _key(directory: Path) -> str:
    return os.path.realpath(directory)


def unique_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (parents too), or ``path_2``, ``path_3``, ... if it exists; returns the one created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RunDirError(f"{path}: 10000 directories of that name exist; choose another hydra.run.dir")


def _unwritable(directory: Path, e: OSError) -> RunDirError:
    return RunDirError(
        f"cannot write to {directory} ({e.strerror or e}); choose a writable directory (hydra.run.dir=DIR) "
        f"or fix its permissions"
    )


def acquire(directory: str | os.PathLike) -> Path:
    """Take the run lock of ``directory`` (created if missing); :class:`RunDirError` if another
    run holds it or the directory cannot be written. Pair with :func:`release`."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(directory, e) from None
    key, me = _key(directory), threading.get_ident()
    with _guard:
        held = _held.get(key)
        if held is not None:
            if held.owner != me:
                raise RunDirError(f"{directory} is in use by another run in this process; choose another directory")
            held.count += 1
            return directory
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise _unwritable(directory, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{directory} is in use by another run{holder}; wait for it to finish or choose another "
                f"directory (hydra.run.dir=DIR)"
            ) from None
        _held[key] = _Held(fd, me)
    return directory


def _holder(fd: int) -> str:
    """ " (pid N)" of the process holding the flock on ``fd``'s file, from /proc/locks (Linux);
    "" where that cannot be told. The lock file itself is never written: a refused run
    changes nothing."""
    inode = os.fstat(fd).st_ino
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
                    return f" (pid {parts[4]})"
    except OSError:
        pass
    return ""


def release(directory: str | os.PathLike) -> None:
    """Give back one :func:`acquire` of ``directory`` (the lock ends with the last one)."""
    key = _key(Path(directory))
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count == 0:
            del _held[key]
            os.close(held.fd)  # closing the file ends the flock


def is_held(directory: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``directory``."""
    return _key(Path(directory)) in _held


@contextlib.contextmanager
def hold(directory: str | os.PathLike) -> Iterator[Path]:
    """``with hold(d):`` the run lock of ``d`` for the block (see :func:`acquire`)."""
    d = acquire(directory)
    try:
        yield d
    finally:
        release(d)


def check_writable(*directories: str | os.PathLike) -> None:
    """Create a file in each existing directory of ``directories`` (and remove it), so an
    unwritable one is a :class:`RunDirError` before any work, not after it."""
    for d in directories:
        d = Path(d)
        if not d.is_dir():
            continue
        try:
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".nstyle-probe-")
        except OSError as e:
            raise _unwritable(d, e) from None
        os.close(fd)
        os.unlink(tmp)


def remove_stale_temporaries(directory: str | os.PathLike, subdirs: Iterable[str] = ()) -> list[Path]:
    """Delete the hidden ``.<name>.*.tmp`` files an atomic write killed mid-way left behind in
    ``directory`` and its ``subdirs``. Call it only while holding the directory's lock: then no
    live writer owns them."""
    gone = []
    for d in [Path(directory), *(Path(directory) / s for s in subdirs)]:
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                    p.unlink(missing_ok=True)
                    gone.append(p)
    return gone


def holds_only_bookkeeping(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds nothing but Hydra's records (``.hydra/``), empty logs and the lock."""
    for p in Path(directory).iterdir():
        if p.name in _BOOKKEEPING:
            continue
        if p.suffix == ".log" and p.is_file() and p.stat().st_size == 0:
            continue
        return False
    return True


def remove_if_unused(directory: str | os.PathLike) -> bool:
    """Remove ``directory`` if a run that created it failed before writing anything of its own."""
    d = Path(directory)
    if d.is_dir() and holds_only_bookkeeping(d):
        shutil.rmtree(d, ignore_errors=True)
        return True
    return False
