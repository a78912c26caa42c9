"""Training images from a folder: deterministic random crops, prefetched in a background thread.

    ds = ImageFolder.scan("path/to/train2014")             # lists image files (any format, any size)
    it = Batches(ds, size=256, batch=4, seed=0, start=0)    # start = samples already consumed
    for batch in it: ...                                   # (B, size, size, 3) float32 in [0, 1]

Determinism: sample number ``s`` of the stream is image ``perm(seed, epoch)[s % N]`` of epoch
``s // N``, cropped with a generator seeded by ``(seed, epoch, s % N)``. So the batch at step
``k`` depends only on ``(seed, k)`` and the folder's contents, and a run resumed at step ``k``
(``start = k · batch``) sees exactly the batches an uninterrupted run would have seen.

Unreadable files never stop training: a file that fails to decode is counted and replaced by
the next image of the same epoch's permutation (again a pure function of the folder), and the
file is remembered so it is tried only once per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from nstyle import images
from nstyle._errors import UserError

# every format Pillow reads that nstyle.images handles; other files in the folder are ignored
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm")


class DataError(UserError, ValueError):
    """The training folder cannot be used (missing, empty of images); the message says the fix."""


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The sorted list of image files under ``root`` (recursively)."""

    root: str
    files: tuple[str, ...]  # paths relative to root, sorted: the order is part of the determinism
    ignored: int = 0  # files without an image suffix

    @classmethod
    def scan(cls, root: str | os.PathLike) -> ImageFolder:
        root_p = Path(root).expanduser()
        if not root_p.is_dir():
            raise DataError(
                f"data folder '{root}' does not exist or is not a folder; give data=DIR with training photos"
            )
        files, ignored = [], 0
        for dirpath, dirnames, filenames in os.walk(root_p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith("."):
                    continue
                if name.lower().endswith(IMAGE_SUFFIXES):
                    files.append(os.path.relpath(os.path.join(dirpath, name), root_p))
                else:
                    ignored += 1
        if not files:
            raise DataError(
                f"data folder '{root}' holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                "point data= at a folder of photos"
            )
        return cls(root=str(root_p), files=tuple(sorted(files)), ignored=ignored)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def digest(self) -> str:
        """Short hash of the file list: a resumed run warns if the folder changed."""
        return hashlib.sha256("\n".join(self.files).encode()).hexdigest()[:16]

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.files[i])

    def check_readable(self) -> str:
        """The first file that decodes (in name order); :class:`DataError` if none does, so a
        folder of broken files is refused before any compiling, not at the first batch."""
        for i in range(len(self.files)):
            try:
                images.load_image(self.path(i))
            except images.ImageError:
                continue
            return self.files[i]
        raise DataError(
            f"no readable image in '{self.root}' ({len(self.files)} files tried); check the files or point "
            f"data= at another folder"
        )


def permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch ``epoch``: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, scale: tuple[float, float]) -> np.ndarray:
    """A random square crop of side ``U(scale) · min(H, W)``, resized to ``size``.

    (H, W, 3) -> (size, size, 3). Photos of any aspect ratio and size (smaller than ``size``
    too: the crop is upsampled) give the same output shape.
    """
    h, w = image.shape[:2]
    side = max(1, int(round(rng.uniform(*scale) * min(h, w))))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = image[top : top + side, left : left + side]  # (side, side, 3)
    return images.resize(crop, (size, size))  # (size, size, 3); flips happen on the device


class Batches:
    """Iterator of (batch, size, size, 3) float32 batches from ``start`` on; see the module docstring."""

    def __init__(
        self,
        folder: ImageFolder,
        size: int,
        batch: int,
        seed: int,
        start: int = 0,
        scale: tuple[float, float] = (0.6, 1.0),
        load: Callable[[str], np.ndarray] | None = None,
        shard: tuple[int, int] = (0, 1),
    ):
        self.folder, self.size, self.batch, self.seed = folder, int(size), int(batch), int(seed)
        # multi-host: process i of n loads only its slice of each global batch
        self.shard_index, self.shard_count = int(shard[0]), int(shard[1])
        if self.batch % self.shard_count:
            raise DataError(f"batch {self.batch} does not split over {self.shard_count} processes; use a multiple")
        self.position = int(start)  # samples consumed so far (the next batch starts here)
        self.scale = (float(scale[0]), float(scale[1]))
        self.load = load or _load_for_training(self.size, self.scale[0])
        self.bad: set[int] = set()  # indices that failed to decode
        self.skipped = 0  # decode failures met (each bad file counted once per process)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: permutation(self.seed, epoch, len(self.folder))}  # keep one epoch
        return self._perms[epoch]

    def sample(self, s: int) -> np.ndarray:
        """Sample number ``s`` of the stream, (size, size, 3)."""
        n = len(self.folder)
        epoch, pos = divmod(s, n)
        perm = self._perm(epoch)
        for k in range(n):  # a bad file is replaced by the next good one of the same permutation
            idx = int(perm[(pos + k) % n])
            if idx in self.bad:
                continue
            try:
                image = self.load(self.folder.path(idx))
            except images.ImageError:
                self.bad.add(idx)
                self.skipped += 1
                continue
            rng = np.random.default_rng([self.seed, epoch, pos])
            return random_crop(image, self.size, rng, self.scale)
        raise DataError(f"no readable image in '{self.folder.root}' ({n} files tried); check the files")

    def next_batch(self) -> np.ndarray:
        """The next global batch's slice for this process: (batch / processes, size, size, 3)."""
        local = self.batch // self.shard_count
        s0 = self.position + self.shard_index * local
        out = np.stack([self.sample(s) for s in range(s0, s0 + local)])  # (B_local, size, size, 3)
        self.position += self.batch
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next_batch()


def _load_for_training(size: int, min_scale: float) -> Callable[[str], np.ndarray]:
    """Read a file, shrinking huge photos first: the crop never needs more than ~2× its output size."""

    def load(path: str) -> np.ndarray:
        img = images.load_image(path)
        h, w = img.shape[:2]
        need = int(np.ceil(size / max(min_scale, 1e-3) * 2))  # shorter side that keeps crops sharp
        if min(h, w) > 2 * need:
            s = need / min(h, w)
            img = images.resize(img, (max(1, round(h * s)), max(1, round(w * s))))
        return img

    return load


class Prefetch:
    """Run ``produce()`` in a daemon thread, ``depth`` results ahead; ``next()`` returns them in order.

    Decoding and resizing run in Pillow/numpy, which release the GIL, so the accelerator
    (or XLA's CPU threads) keeps working on the previous step meanwhile. An exception in
    the thread is re-raised by the next ``next()``.
    """

    _DONE = object()

    def __init__(self, produce: Callable[[], object], depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._produce = produce
        self._thread = threading.Thread(target=self._run, name="nstyle-prefetch", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                item = self._produce()
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            self._q.put(_Failure(e))

    def next(self):
        item = self._q.get()
        if isinstance(item, _Failure):
            raise item.error
        return item

    def close(self):
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)


@dataclasses.dataclass
class _Failure:
    error: BaseException
