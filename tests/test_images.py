"""Image loading for every kind of file a user might hand over, resizing, atomic saving,
and the size/memory checks used before running VGG."""

import os

import numpy as np
import pytest
from PIL import Image

from nstyle import images, memory, vgg
from nstyle.images import ImageError


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _mode(path) -> str:
    with Image.open(path) as im:
        return im.mode


def _noise(h=48, w=64, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ------------------------------------------------------------------ bad inputs


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ImageError) as e:
        images.load_image(tmp_path / "nope.jpg")
    msg = _one_line(e)
    assert "nope.jpg" in msg and "no such file" in msg


def test_bare_builtin_name_suggests_the_prefix():
    with pytest.raises(ImageError, match="builtin:"):
        images.load_image("chelsea")


def test_unknown_builtin_lists_the_choices():
    with pytest.raises(ImageError) as e:
        images.load_image("builtin:mona_lisa")
    msg = _one_line(e)
    assert "builtin:mona_lisa" in msg and "chelsea" in msg and "astronaut" in msg


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        images.load_image(tmp_path)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "photo.png"
    p.write_text("this is not a picture\n")
    with pytest.raises(ImageError) as e:
        images.load_image(p)
    msg = _one_line(e)
    assert "photo.png" in msg and "not an image" in msg


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg"):
        images.load_image(p)


@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".jpg", "JPEG")])
@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_file(tmp_path, ext, fmt, keep):
    p = tmp_path / f"cut{ext}"
    Image.fromarray(_noise()).save(p, fmt)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError) as e:
        images.load_image(p)
    msg = _one_line(e)
    assert f"cut{ext}" in msg and ("truncated" in msg or "corrupt" in msg)


def test_permission_denied(tmp_path, monkeypatch):
    p = tmp_path / "secret.png"
    Image.fromarray(_noise()).save(p)
    if os.geteuid() != 0:
        p.chmod(0)
    else:  # root reads any file, so make the open itself fail as it would for a user

        def denied(*a, **k):
            raise PermissionError(13, "Permission denied", str(p))

        monkeypatch.setattr(images.Image, "open", denied)
    try:
        with pytest.raises(ImageError, match="secret.png: permission denied"):
            images.load_image(p)
    finally:
        p.chmod(0o644)


# ------------------------------------------------------------ modes and scaling


def test_rgb_png_is_exact(tmp_path):
    a = _noise()
    p = tmp_path / "rgb.png"
    Image.fromarray(a).save(p)
    x = images.load_image(p)
    assert x.dtype == np.float32 and x.shape == (48, 64, 3)
    np.testing.assert_array_equal(x, a.astype(np.float32) / 255.0)


def test_16bit_png_uses_full_range(tmp_path):
    a = np.array([[0, 32768, 65535, 255]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    assert _mode(p).startswith("I")
    x = images.load_image(p)
    assert x.shape == (1, 4, 3)
    np.testing.assert_allclose(x[0, :, 0], [0.0, 32768 / 65535, 1.0, 255 / 65535], rtol=1e-6)
    assert x[0, 3, 0] < 0.01  # 255 is dark in 16-bit, not white: no clipping at 255
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _png16(arr: np.ndarray) -> bytes:
    """A 48-bit RGB (or 64-bit RGBA) PNG written by hand (Pillow cannot write them), its rows
    filtered in turn with PNG's five filters (none, Sub, Up, Average, Paeth) on 6/8-byte pixels."""
    import struct
    import zlib

    h, w, c = arr.shape
    bpp = 2 * c
    rows = [np.frombuffer(arr[i].astype(">u2").tobytes(), np.uint8).astype(int) for i in range(h)]
    out = b""
    for i, row in enumerate(rows):
        prev = rows[i - 1] if i else np.zeros_like(row)
        kind = i % 5
        f = []
        for x in range(len(row)):
            a = row[x - bpp] if x >= bpp else 0
            b, cc = prev[x], (prev[x - bpp] if x >= bpp else 0)
            pred = [0, a, b, (a + b) // 2, _paeth(a, b, cc)][kind]
            f.append((row[x] - pred) % 256)
        out += bytes([kind]) + bytes(f)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if c == 3 else 6, 0, 0, 0)  # 16 bits, RGB or RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(out)) + chunk(b"IEND", b"")


def test_16bit_rgb_png_keeps_all_16_bits(tmp_path):
    """Values that differ only in their low byte (Pillow alone reads the high byte) stay apart."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, (7, 9, 3)).astype(np.uint16)
    a[0, :3] = [[65535, 32768, 0], [1000, 1, 65535], [256, 257, 255]]
    p = tmp_path / "deep_rgb.png"
    p.write_bytes(_png16(a))
    x = images.load_image(p)
    assert x.shape == (7, 9, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x * 65535.0, a, atol=0.02)  # float32 rounding only, not 1/255
    assert x[0, 2, 0] != x[0, 2, 1]  # 256 and 257: one high byte, two values


def test_16bit_rgba_png_is_composited_at_16_bits(tmp_path):
    a = np.array([[[1000, 2000, 3000, 65535], [65535, 0, 0, 32768]]], np.uint16)
    p = tmp_path / "deep_rgba.png"
    p.write_bytes(_png16(a))
    x = images.load_image(p)
    alpha = 32768 / 65535
    want = [[1000 / 65535, 2000 / 65535, 3000 / 65535], [1.0, 1.0 - alpha, 1.0 - alpha]]
    np.testing.assert_allclose(x[0], want, atol=1e-6)


def test_embedded_colour_profile(tmp_path):
    from PIL import ImageCms

    a = _noise(16, 16)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p = tmp_path / "tagged.png"
    Image.fromarray(a).save(p, icc_profile=srgb)
    np.testing.assert_allclose(images.load_image(p), a / 255.0, atol=2 / 255)  # sRGB -> sRGB
    q = tmp_path / "badprofile.png"
    Image.fromarray(a).save(q, icc_profile=b"not a profile")
    np.testing.assert_array_equal(images.load_image(q), a / np.float32(255.0))  # ignored


def test_home_directory_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.fromarray(_noise(8, 8)).save(tmp_path / "mine.png")
    assert images.load_image("~/mine.png").shape == (8, 8, 3)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = _noise()[..., 0]
    p = tmp_path / "grey.png"
    Image.fromarray(g, mode="L").save(p)
    x = images.load_image(p)
    assert x.shape == (48, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(x[..., c], g / np.float32(255.0))


def test_bilevel_and_float_modes(tmp_path):
    p = tmp_path / "bw.png"
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(p)
    np.testing.assert_array_equal(images.load_image(p)[0, :, 0], [0.0, 1.0])
    f = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], np.float32), mode="F").save(f)
    np.testing.assert_allclose(images.load_image(f)[0, :, 1], [0.0, 0.25, 1.0])
    i32 = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], np.int32), mode="I").save(i32)
    assert _mode(i32) == "I"
    np.testing.assert_allclose(images.load_image(i32)[0, :, 0], [0.0, 32768 / 65535, 1.0], rtol=1e-6)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    Image.fromarray(_noise(64, 64)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 × limit
    with pytest.raises(ImageError, match="huge.png: image too large"):
        images.load_image(p)


def test_palette_with_transparency_is_white(tmp_path):
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, 1 blue
    im.putdata([0, 0, 1, 1, 0, 1, 0, 1])
    im.info["transparency"] = 1  # blue pixels are transparent
    p = tmp_path / "pal.png"
    im.save(p, transparency=1)
    assert _mode(p) == "P"
    x = images.load_image(p)
    np.testing.assert_array_equal(x[0, 0], [1.0, 0.0, 0.0])  # opaque red
    np.testing.assert_array_equal(x[0, 2], [1.0, 1.0, 1.0])  # transparent -> white, not blue


def test_rgba_and_la_composite_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    p = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(p)
    x = images.load_image(p)
    a = 128 / 255
    np.testing.assert_allclose(x[0], [[1, 0, 0], [1, 1, 1], [1 - a, 1 - a, 1 - a]], atol=1e-6)
    la = np.array([[[0, 0], [0, 255]]], np.uint8)
    q = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(q)
    np.testing.assert_allclose(images.load_image(q)[0], [[1, 1, 1], [0, 0, 0]], atol=1e-6)


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 0] = 255  # pure cyan ink
    p = tmp_path / "print.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(p, quality=95)
    assert _mode(p) == "CMYK"
    x = images.load_image(p)
    assert x.shape == (16, 16, 3)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), [0.0, 1.0, 1.0], atol=0.03)  # cyan = G + B


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # stored landscape, 20 high × 40 wide
    a[:5, :5] = [255, 0, 0]  # red mark top-left as stored
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    p = tmp_path / "phone.jpg"
    im.save(p, exif=exif, quality=95)
    x = images.load_image(p)
    assert x.shape == (40, 20, 3)  # displayed portrait
    assert x[:5, -5:, 0].mean() > 0.8 and x[:5, -5:, 1].mean() < 0.2  # mark moved top-right
    assert x[:5, :5, 0].mean() < 0.2


def test_multiframe_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    x = images.load_image(p)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), [1.0, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "ihc",
        "brick",
        "grass",
        "gravel",
        "motorcycle_left",
    ],
)
def test_builtin_images_ship_with_skimage(name):
    assert name in images.BUILTIN and os.path.isfile(images.BUILTIN[name])
    x = images.load_image(f"builtin:{name}", max_side=32)
    assert x.dtype == np.float32 and max(x.shape[:2]) == 32 and x.shape[2] == 3
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.01


# --------------------------------------------------------------------- resizing


def test_max_side_keeps_aspect_up_and_down():
    full = images.load_image("builtin:chelsea")
    assert full.shape == (300, 451, 3)
    small = images.load_image("builtin:chelsea", max_side=64)
    assert small.shape == (43, 64, 3)  # 300/451·64 = 42.6
    big = images.load_image("builtin:chelsea", max_side=600)
    assert big.shape == (399, 600, 3)
    assert images.resize_longest(np.zeros((10, 30, 3), np.float32), 15).shape == (5, 15, 3)
    assert images.scale_to(np.zeros((10, 30, 3), np.float32), 0.5).shape == (5, 15, 3)
    with pytest.raises(ImageError, match="max_side"):
        images.load_image("builtin:chelsea", max_side=0)


def test_resize_antialiases_and_keeps_constants():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)  # 1-px checkerboard
    x = images.resize(np.repeat(checker[..., None], 3, -1), (16, 16))
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, 0.5, atol=0.02)  # averaged, not aliased to 0/1
    flat = np.full((7, 9, 3), 0.3, np.float32)
    np.testing.assert_allclose(images.resize(flat, (20, 31)), 0.3, atol=1e-5)
    ramp = np.repeat(np.linspace(0, 1, 50, dtype=np.float32)[None, :, None], 3, -1).repeat(4, 0)
    up = images.resize(ramp, (4, 200))
    assert up.min() >= 0.0 and up.max() <= 1.0  # Lanczos overshoot clipped


# ----------------------------------------------------------------------- saving


def test_save_roundtrip_creates_dirs_and_rounds(tmp_path):
    x = np.random.default_rng(1).random((12, 10, 3)).astype(np.float32)
    x[0, 0] = [-0.5, 1.7, 0.5]  # out of range: clipped
    out = images.save_image(tmp_path / "a" / "b" / "res.png", x)
    assert out == tmp_path / "a" / "b" / "res.png"
    back = images.load_image(out)
    np.testing.assert_array_equal(back, images.to_uint8(x) / np.float32(255.0))
    np.testing.assert_allclose(back, np.clip(x, 0, 1), atol=0.5 / 255 + 1e-6)  # rounded, not truncated
    assert os.listdir(out.parent) == ["res.png"]


def test_save_replaces_atomically_and_cleans_up_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "res.png"
    images.save_image(target, np.zeros((4, 4, 3)))
    images.save_image(target, np.ones((1, 4, 4, 3)))  # a batch of one is accepted
    np.testing.assert_array_equal(images.load_image(target), 1.0)
    assert sorted(os.listdir(tmp_path)) == ["res.png"]

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        images.save_image(target, np.zeros((4, 4, 3)))
    monkeypatch.undo()
    np.testing.assert_array_equal(images.load_image(target), 1.0)  # old result intact
    assert sorted(os.listdir(tmp_path)) == ["res.png"]  # no temp file left


def test_save_refuses_bad_input(tmp_path):
    target = tmp_path / "res.png"
    images.save_image(target, np.zeros((4, 4, 3)))
    with pytest.raises(FileExistsError):
        images.save_image(target, np.ones((4, 4, 3)), overwrite=False)
    with pytest.raises(ImageError, match=r"\.xyz"):
        images.save_image(tmp_path / "res.xyz", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        images.save_image(tmp_path / "nan.png", np.full((4, 4, 3), np.nan))
    with pytest.raises(ValueError, match="shape"):
        images.save_image(tmp_path / "grey.png", np.zeros((4, 4)))
    assert sorted(os.listdir(tmp_path)) == ["res.png"]
    jpg = images.save_image(tmp_path / "res.jpg", np.full((8, 8, 3), 0.5))
    np.testing.assert_allclose(images.load_image(jpg), 0.5, atol=2 / 255)


def test_batch_roundtrip():
    x = np.random.default_rng(2).random((5, 7, 3)).astype(np.float32)
    b = images.to_batch(x)
    assert b.shape == (1, 5, 7, 3) and b.dtype == np.float32
    np.testing.assert_array_equal(images.from_batch(b), x)
    with pytest.raises(ValueError):
        images.from_batch(np.zeros((2, 5, 7, 3)))


# ------------------------------------------------------------------ size checks


def test_check_size_uses_the_vgg_minimum():
    need = vgg.min_size(["conv5_1"])
    assert need == 16
    images.check_size((16, 40, 3), need)
    with pytest.raises(ImageError) as e:
        images.check_size((15, 40, 3), need, name="style.jpg")
    msg = _one_line(e)
    assert "style.jpg" in msg and "40×15" in msg and "16 px" in msg


def test_activation_estimate_counts_every_stage():
    b = memory.vgg_activation_bytes(32, 32, ["conv1_1"])
    assert b == int((32 * 32 * 3 + 32 * 32 * 64) * 4 * memory.BACKWARD_FACTOR)
    # conv1_1, conv1_2, pool1 (16×16×64), conv2_1
    b2 = memory.vgg_activation_bytes(32, 32, ["relu2_1"], batch=2)
    elems = 32 * 32 * 3 + 2 * 32 * 32 * 64 + 16 * 16 * 64 + 16 * 16 * 128
    assert b2 == int(elems * 4 * memory.BACKWARD_FACTOR * 2)
    deeper = memory.vgg_activation_bytes(64, 64, ["conv5_1"])
    assert deeper > memory.vgg_activation_bytes(64, 64, ["conv4_1"])
    assert memory.vgg_activation_bytes(64, 64, ["conv5_1"], arch="vgg16") < deeper  # fewer convs


def test_max_side_that_fits_is_the_largest():
    layers = ["conv1_1", "conv4_2", "conv5_1"]
    budget = 300 * 2**20
    side = memory.max_side_that_fits(budget, 1.5, layers)
    assert side > 16

    def cost(s):
        h, w = images.longest_shape((1.0, 1.5), s)
        return memory.vgg_activation_bytes(h, w, layers)

    assert cost(side) <= budget < cost(side + 1)
    assert memory.max_side_that_fits(10, 1.0, layers) == 0
    assert memory.available_bytes() > 0


def test_activation_estimate_bounds_what_xla_allocates():
    """The estimate is an upper bound on XLA's own peak temporaries for the loss gradient."""
    import jax
    import jax.numpy as jnp

    from nstyle import losses, weights

    params = weights.load("vgg19")
    # shallow layers keep the compile short; the bound is per stage, so depth does not matter
    loss = losses.PerceptualLoss(
        content_layers=("conv2_2",), style_layers=("conv1_1", "conv2_1"), style_weights=(0.5, 0.5)
    )
    x = jnp.zeros((1, 48, 64, 3))
    shapes = jax.eval_shape(
        lambda im: losses.Targets(losses.content_targets(params, im, loss), losses.style_targets(params, [im], loss)), x
    )
    targets = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    grad = jax.jit(jax.grad(lambda im: losses.perceptual_loss(params, im, targets, loss)[0].sum()))
    mem = grad.lower(x).compile().memory_analysis()
    assert mem is not None, "XLA gave no memory analysis on this backend"
    est = memory.vgg_activation_bytes(48, 64, loss.layers)
    assert mem.temp_size_in_bytes <= est <= 4 * mem.temp_size_in_bytes
