"""Reading, resizing and writing images; built-in demo images.

    img = nstyle.images.load_image("builtin:chelsea", max_side=256)  # (H, W, 3) float32 in [0, 1]
    nstyle.images.save_image("out/result.png", img)                  # atomic write

Every image inside nstyle is a float32 numpy array (H, W, 3), RGB in [0, 1]; a batch for VGG
is (B, H, W, 3). Anything wrong with a user's image raises :class:`ImageError`, whose message
is one line naming the file, the problem and the fix, so a command line can print it as is.

Resizing is done by Pillow on each channel as a 32-bit float image (mode ``"F"``) with the
Lanczos filter: no 8-bit rounding between load and network, 16-bit inputs keep their
precision, and Pillow widens the filter support when shrinking, which anti-aliases the
downscale. Lanczos rings slightly past the input range, so the result is clipped to [0, 1].
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nstyle import _io
from nstyle._errors import UserError

BUILTIN_PREFIX = "builtin:"
RESAMPLE = Image.Resampling.LANCZOS


def _skimage_data_dir() -> Path | None:
    """``skimage/data`` inside the installed wheel, found without importing skimage.

    Importing ``skimage.data`` is slow and its fetchers may reach for pooch downloads; the
    files used here are plain files shipped in the wheel, so only the path is needed.
    """
    spec = find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# name -> file in skimage/data; all ship in scikit-image's wheel (no download).
# brick/grass/gravel are grayscale textures; they load as 3 equal channels.
_BUILTIN_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "camera": "camera.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "horse": "horse.png",
    "color": "color.png",
}


# (content, style) pairs of built-in images that the experiments and benchmarks run on
BUILTIN_PAIRS = (
    ("builtin:chelsea", "builtin:ihc"),
    ("builtin:astronaut", "builtin:hubble_deep_field"),
    ("builtin:rocket", "builtin:gravel"),
)


def _builtin_table() -> dict[str, str]:
    root = _skimage_data_dir()
    if root is None:
        return {}
    return {name: str(root / f) for name, f in _BUILTIN_FILES.items() if (root / f).is_file()}


BUILTIN: dict[str, str] = _builtin_table()


class ImageError(UserError, ValueError):
    """A user-facing problem with an image file; the message is one line with the fix."""


# ---------------------------------------------------------------------------- loading


def resolve(spec: str | os.PathLike) -> Path:
    """``"builtin:chelsea"`` -> the bundled file; any other string or path -> ``Path(spec)`` (``~`` expanded)."""
    if isinstance(spec, str) and spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN:
            known = ", ".join(sorted(BUILTIN)) or "none (scikit-image is not installed)"
            raise ImageError(f"{spec}: no such built-in image; choose one of: {known}")
        return Path(BUILTIN[name])
    return Path(spec).expanduser()  # "~/x.jpg" from a config file, where no shell expands it


def _open(path: Path, label: str) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes an :class:`ImageError`."""
    with warnings.catch_warnings():
        # above Pillow's hard pixel limit the open is refused; its softer warning is noise here
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _open_quietly(path, label)


def _open_quietly(path: Path, label: str) -> Image.Image:
    if not path.exists():
        hint = f"; did you mean '{BUILTIN_PREFIX}{path.stem}'?" if path.stem in BUILTIN and not path.parent.name else ""
        raise ImageError(f"{label}: no such file; check the path{hint}")
    if path.is_dir():
        raise ImageError(f"{label}: is a directory, not an image file; give the path of one image")
    try:
        im = Image.open(path)
    except PermissionError:
        raise ImageError(f"{label}: permission denied; make the file readable (chmod +r) or copy it") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{label}: not an image file (cannot identify image format); give a PNG/JPEG/TIFF/WebP/BMP file"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{label}: image too large to open safely ({e}); downscale it first") from None
    except OSError as e:
        if e.errno is None:  # raised by a Pillow decoder, not the file system
            raise ImageError(
                f"{label}: corrupt or truncated image data ({e}); re-export or re-download the file"
            ) from None
        raise ImageError(f"{label}: cannot read file ({e.strerror or e}); check the file and its disk") from None
    try:
        im.load()  # decode now: truncated/corrupt data fails here, not later
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        im.close()
        raise ImageError(
            f"{label}: corrupt or truncated {im.format or 'image'} data ({e}); re-export or re-download the file"
        ) from None
    return im


def _icc_to_srgb(im: Image.Image) -> Image.Image:
    """Convert an embedded colour profile (e.g. Display P3 photos, CMYK print profiles) to sRGB.

    VGG was trained on sRGB-ish photos, so pixels are interpreted in sRGB. If littleCMS is
    missing or the profile is broken, the pixels are used as they are.
    """
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "CMYK"):
        return im
    try:
        import io

        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
    except Exception:  # noqa: BLE001 -- any profile problem: fall back to the raw pixels
        return im


def _to_float_rgb(im: Image.Image, label: str) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) float32 RGB in [0, 1]; transparency composited over white."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        g = np.asarray(im).astype(np.float32) / 65535.0  # 16-bit grayscale: full range is 65535
        return np.repeat(g[..., None], 3, axis=-1)
    if mode == "I":
        # 32-bit int: 16-bit PNGs arrive as "I" in older Pillow, so values <= 65535 are 16-bit
        a = np.asarray(im).astype(np.float64)
        if a.min() < 0:
            raise ImageError(
                f"{label}: signed integer image with negative values; convert it to 8/16-bit RGB or grayscale"
            )
        scale = 65535.0 if a.max() <= 65535 else float(2**32 - 1)
        return np.repeat((a / scale).astype(np.float32)[..., None], 3, axis=-1)
    if mode == "F":
        a = np.asarray(im).astype(np.float32)
        if not np.isfinite(a).all():
            raise ImageError(f"{label}: floating-point image contains NaN or infinity; save it as 8/16-bit")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:  # not in [0, 1]: stretch its own range linearly
            a = (a - lo) / max(hi - lo, 1e-12)
        return np.repeat(a[..., None], 3, axis=-1)
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")  # palette transparency (tRNS) becomes a real alpha channel
    elif mode == "CMYK":
        im = _icc_to_srgb(im)
        im = im if im.mode == "RGB" else im.convert("RGB")
    elif mode == "RGB":
        im = _icc_to_srgb(im)
    elif mode not in ("L", "RGBA"):
        try:
            im = im.convert("RGB")  # YCbCr, HSV, ...
        except (ValueError, OSError):
            raise ImageError(f"{label}: unsupported colour mode '{mode}'; convert it to RGB (PNG or JPEG)") from None
    a = np.asarray(im).astype(np.float32) / 255.0
    if a.ndim == 2:  # (H, W) -> (H, W, 3)
        return np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 4:  # composite over white: rgb·α + 1·(1 − α)
        rgb, alpha = a[..., :3], a[..., 3:]
        return (rgb * alpha + (1.0 - alpha)).astype(np.float32)
    return a[..., :3]


def image_size(spec: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file as :func:`load_image` returns it (EXIF orientation applied), read
    from its header, without decoding the pixels: what a memory check needs before a load."""
    path = resolve(spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation; 5–8 turn the image by 90°
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError):
        return tuple(load_image(spec).shape[:2])  # the load reports what is wrong with the file
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


_PNG16 = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}  # big-endian rawmode -> the one that reads low bytes


def _png16_low_bytes(path: Path, im: Image.Image) -> np.ndarray | None:
    """The low bytes of a 16-bit RGB(A) PNG, or None for any other file.

    Pillow has no 48/64-bit mode: it opens such a PNG as 8-bit "RGB"/"RGBA", keeping each
    sample's high byte. Decoding the same data once more with the little-endian unpacker
    keeps the other byte (the PNG filters work on whole 6/8-byte pixels either way), so
    ``high · 256 + low`` is the full 16-bit value.
    """
    if im.format != "PNG" or im.mode not in ("RGB", "RGBA"):
        return None
    with open(path, "rb") as f:
        head = f.read(26)  # signature, IHDR length and tag, width, height, bit depth, colour type
    if len(head) < 26 or head[24] != 16:
        return None
    with Image.open(path) as again:
        tile = again.tile[0]
        if len(again.tile) != 1 or tile.args not in _PNG16:
            return None
        again.tile = [tile._replace(args=_PNG16[tile.args])]
        again.load()
        return np.asarray(again)


def _exif_orientation(im: Image.Image, a: np.ndarray) -> np.ndarray:
    """``a`` (H, W, C) turned as the image's EXIF orientation tag says (as ImageOps.exif_transpose)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 -- a broken EXIF block: as stored
        return a
    turn = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.swapaxes(0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],
        8: lambda x: np.rot90(x, 1),
    }
    return turn[orientation](a) if orientation in turn else a


def _deep_png(path: Path, raw: Image.Image) -> np.ndarray | None:
    """A 16-bit RGB(A) PNG at full depth, (H, W, 3) float32 in [0, 1] (alpha over white); else None."""
    low = _png16_low_bytes(path, raw)
    if low is None:
        return None
    a = (np.asarray(raw).astype(np.float32) * 256.0 + low) / 65535.0  # (H, W, 3 or 4)
    if a.shape[-1] == 4:
        a = a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])
    return np.ascontiguousarray(_exif_orientation(raw, a), dtype=np.float32)


def load_image(spec: str | os.PathLike, max_side: int | None = None) -> np.ndarray:
    """Read an image file (or ``"builtin:<name>"``) as float32 (H, W, 3) RGB in [0, 1].

    Handles grayscale (8/16/32-bit, float), palette and alpha (composited over white), CMYK,
    embedded ICC profiles (converted to sRGB), EXIF orientation, and multi-frame files (the
    first frame). With ``max_side`` the image is resized (up or down) so its longest side is
    ``max_side`` pixels, keeping the aspect ratio.

    Raises:
      ImageError: missing/unreadable file, directory, not an image, truncated data, bad mode.
    """
    path = resolve(spec)
    label = str(spec)
    with _open(path, label) as raw:  # closes the file (multi-frame files keep it open)
        image = _deep_png(path, raw)
        if image is None:
            try:
                im = ImageOps.exif_transpose(raw)  # phones store portrait shots sideways + a tag
            except Exception:  # noqa: BLE001 -- a broken EXIF block must not stop the load
                im = raw
            image = _to_float_rgb(im, label)
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"{label}: image has no pixels ({image.shape[1]}×{image.shape[0]}); give a real image")
    if max_side is not None:
        if int(max_side) < 1:
            raise ImageError(f"{label}: max_side must be a positive number of pixels, got {max_side}")
        image = resize_longest(image, int(max_side))
    return np.ascontiguousarray(image, dtype=np.float32)


# --------------------------------------------------------------------------- resizing


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float -> (h, w, 3) float32 with Lanczos on each channel in float (mode "F").

    Shrinking is anti-aliased (Pillow widens the kernel by the scale factor). Clipped to [0, 1].
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"resize expects an (H, W, C) image, got shape {image.shape}")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"target shape must be positive, got {(h, w)}")
    if image.shape[:2] == (h, w):
        return image.copy()
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F").resize((w, h), RESAMPLE))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)  # (h, w, C)


def longest_shape(hw: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = hw
    s = side / max(h, w)
    return (max(1, round(h * s)), max(1, round(w * s)))


def resize_longest(image: np.ndarray, side: int) -> np.ndarray:
    """Resize so the longest side is ``side`` px, aspect ratio kept (shorter side rounded)."""
    return resize(image, longest_shape(image.shape[:2], int(side)))


def scale_to(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize by a factor (``0.5`` halves each side); sides are rounded and at least 1 px."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    h, w = image.shape[:2]
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))))


# ---------------------------------------------------------------------------- saving


def format_for(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ImageError(f"{path}: cannot write images with extension '{ext or '(none)'}'; use .png or .jpg")
    return fmt


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 by clipping and rounding (not truncating)."""
    return np.round(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_image(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = True) -> Path:
    """Write an (H, W, 3) (or (1, H, W, 3)) float image in [0, 1] to ``path``, atomically.

    The format follows the extension (PNG for ``.png``; JPEG at quality 95). The data goes to
    a hidden temporary file in the same folder which is then renamed over ``path``, so readers
    never see half a file; parent folders are created. With ``overwrite=False`` an existing
    ``path`` raises :class:`FileExistsError` instead (also when another process creates it
    during the write).
    """
    path = Path(path)
    arr = np.asarray(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]  # (1, H, W, 3) -> (H, W, 3)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"save_image expects (H, W, 3) RGB, got shape {np.shape(image)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: refusing to save an image containing NaN or infinity")
    fmt = format_for(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: already exists; choose another name or allow overwriting")
    pil = Image.fromarray(to_uint8(arr), mode="RGB")
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    return _io.atomic_write(path, lambda f: pil.save(f, format=fmt, **kwargs), overwrite=overwrite)


def tile(rows: Sequence[Sequence[np.ndarray]], pad: int = 4) -> np.ndarray:
    """Rows of (h, w, 3) images -> one (H, W, 3) image, white between and around short rows."""
    strips = []
    for row in rows:
        h = max(im.shape[0] for im in row)
        parts = []
        for im in row:
            canvas = np.ones((h, im.shape[1], 3), np.float32)
            canvas[: im.shape[0]] = im
            parts += [canvas, np.ones((h, pad, 3), np.float32)]
        strips.append(np.concatenate(parts[:-1], axis=1))
    width = max(s.shape[1] for s in strips)
    out = []
    for s in strips:
        out += [
            np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=1.0),
            np.ones((pad, width, 3), np.float32),
        ]
    return np.concatenate(out[:-1], axis=0)


# ---------------------------------------------------------------------------- batches


def to_batch(image: np.ndarray):
    """(H, W, 3) -> (1, H, W, 3) float32 jax array, ready for :func:`nstyle.vgg.features`."""
    import jax.numpy as jnp

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"to_batch expects (H, W, 3) RGB, got shape {image.shape}")
    return jnp.asarray(image[None])  # (1, H, W, 3)


def from_batch(batch) -> np.ndarray:
    """(1, H, W, 3) (or already (H, W, 3)) -> (H, W, 3) float32 numpy."""
    arr = np.asarray(batch, dtype=np.float32)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"from_batch expects a batch of one image, got shape {arr.shape}")
        arr = arr[0]  # (1, H, W, 3) -> (H, W, 3)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"from_batch expects (1, H, W, 3), got shape {np.shape(batch)}")
    return arr


# ------------------------------------------------------------------- sizes and memory


def check_size(shape: Sequence[int], min_side: int, name: str = "image") -> None:
    """Raise :class:`ImageError` if an (H, W[, C]) image is smaller than ``min_side`` px.

    ``min_side`` comes from :func:`nstyle.vgg.min_size` for the layers in use: below it the
    deepest layer's response would be empty.
    """
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < min_side:
        raise ImageError(
            f"{name}: {w}×{h} px is too small for the deepest layer used, which needs at least "
            f"{min_side} px per side; use a larger image or a larger max_side"
        )
