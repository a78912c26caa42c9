"""Johnson et al.'s feed-forward style network ("FastNet"), in Flax.

    cfg = FastNetConfig()                                  # the paper's network
    params = init(cfg, jax.random.key(0))
    y = apply(cfg, params, x)                              # (B, H, W, 3) [0, 1] -> same, H, W % 4 == 0
    y = stylize(cfg, params, x)                            # any H, W: reflect-pad to a multiple of 4, crop back

Architecture (Johnson, Alahi, Fei-Fei 2016, supplementary Table 1, with instance norm):

    9×9 conv w      → IN → ReLU                    (B, H,   W,   w)
    3×3 conv 2w /2  → IN → ReLU                    (B, H/2, W/2, 2w)
    3×3 conv 4w /2  → IN → ReLU                    (B, H/4, W/4, 4w)
    blocks × [3×3 conv 4w → IN → ReLU → 3×3 conv 4w → IN (scale only)] + identity
    ×2 nearest upsample, 3×3 conv 2w → IN → ReLU   (B, H/2, W/2, 2w)
    ×2 nearest upsample, 3×3 conv w  → IN → ReLU   (B, H,   W,   w)
    9×9 conv 3 → (tanh + 1) / 2                    (B, H,   W,   3)

Convolutions followed by instance norm carry no bias (the norm removes it; its learnt shift
plays that role). Every conv pads its input by reflection, so borders carry image statistics instead of zeros.
Upsampling is nearest-neighbour followed by a convolution (Odena et al. 2016): a stride-2
transposed convolution (``upsample="transpose"``, the paper's original) overlaps its kernel
unevenly and leaves checkerboard artefacts.

Output: ``(tanh(z) + 1) / 2``, Johnson et al.'s scaled tanh moved to [0, 1]. A bounded
output keeps the loss network inside the range it was trained on without clipping (a clip
has zero gradient outside [0, 1]); the tanh form has slope 1/2 at z = 0 (a plain sigmoid has
1/4), so the final conv's initial outputs already span the useful range.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from nstyle import _io
from nstyle._errors import UserError

UPSAMPLES = ("nearest", "transpose")


@dataclasses.dataclass(frozen=True)
class FastNetConfig:
    """What is needed to rebuild the network; stored in checkpoints and exported models."""

    width: int = 32  # channels of the first conv; then 2·width, 4·width (paper: 32, 64, 128)
    blocks: int = 5  # residual blocks at 4·width channels (paper: 5)
    upsample: str = "nearest"  # "nearest" (upsample then conv) or "transpose" (stride-2 transposed conv)
    epsilon: float = 1e-5  # instance-norm variance floor (PyTorch's default)

    def __post_init__(self):
        if self.width < 1 or self.blocks < 0:
            raise ValueError(f"width must be >= 1 and blocks >= 0, got width={self.width}, blocks={self.blocks}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsample '{self.upsample}' (expected one of {', '.join(UPSAMPLES)})")


def _reflect(x: jax.Array, pad: int) -> jax.Array:
    """Reflection-pad H and W by ``pad``: (B, H, W, C) -> (B, H+2p, W+2p, C)."""
    if pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


class ConvIN(nn.Module):
    """Reflection-padded conv, then instance norm and ReLU (each optional)."""

    features: int
    kernel: int
    stride: int = 1
    norm: bool = True
    relu: bool = True
    shift: bool = True  # the instance norm's learnt shift
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        x = _reflect(x, self.kernel // 2)
        # no bias before instance norm: IN subtracts the channel mean, so a bias's gradient is
        # rounding noise, which Adam would amplify into ±lr steps of a parameter that does nothing
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding="VALID",
            use_bias=not self.norm,
        )(x)
        if self.norm:
            # per image and channel over (H, W), with a learnt scale and shift
            x = nn.InstanceNorm(epsilon=self.epsilon, use_bias=self.shift)(x)
        return nn.relu(x) if self.relu else x


class Residual(nn.Module):
    features: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        y = ConvIN(self.features, 3, epsilon=self.epsilon)(x)
        # no shift here: a per-channel constant added to the residual stream is removed by the
        # next instance norm (reflection padding keeps it constant), so its gradient is zero
        y = ConvIN(self.features, 3, relu=False, shift=False, epsilon=self.epsilon)(y)
        return x + y


class Upsample(nn.Module):
    """×2 in H and W: nearest-neighbour then conv, or a stride-2 transposed conv."""

    features: int
    mode: str = "nearest"
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        if self.mode == "nearest":
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
            return ConvIN(self.features, 3, epsilon=self.epsilon)(x)
        x = nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)(x)  # (B, 2H, 2W, F)
        x = nn.InstanceNorm(epsilon=self.epsilon)(x)
        return nn.relu(x)


class FastNet(nn.Module):
    cfg: FastNetConfig

    @nn.compact
    def __call__(self, x):  # (B, H, W, 3) in [0, 1], H and W multiples of 4
        c, eps = self.cfg.width, self.cfg.epsilon
        x = 2.0 * x - 1.0  # centre the input
        x = ConvIN(c, 9, epsilon=eps)(x)  # (B, H, W, c)
        x = ConvIN(2 * c, 3, stride=2, epsilon=eps)(x)  # (B, H/2, W/2, 2c)
        x = ConvIN(4 * c, 3, stride=2, epsilon=eps)(x)  # (B, H/4, W/4, 4c)
        for _ in range(self.cfg.blocks):
            x = Residual(4 * c, epsilon=eps)(x)
        x = Upsample(2 * c, self.cfg.upsample, epsilon=eps)(x)  # (B, H/2, W/2, 2c)
        x = Upsample(c, self.cfg.upsample, epsilon=eps)(x)  # (B, H, W, c)
        x = ConvIN(3, 9, norm=False, relu=False)(x)  # (B, H, W, 3)
        return (jnp.tanh(x) + 1.0) * 0.5


def init(cfg: FastNetConfig, key: jax.Array, size: int = 32) -> Any:
    """Fresh parameters (a nested dict of arrays). Fully convolutional: ``size`` is only the dummy input."""
    # jitted: eager init dispatches (and compiles) every op one at a time, which takes a minute
    return jax.jit(lambda k: FastNet(cfg).init(k, jnp.zeros((1, size, size, 3), jnp.float32))["params"])(key)


def apply(cfg: FastNetConfig, params: Any, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) in [0, 1] with H, W multiples of 4 -> stylised (B, H, W, 3) in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) RGB, got shape {tuple(images.shape)}")
    if images.shape[1] % 4 or images.shape[2] % 4:
        raise ValueError(
            f"H and W must be multiples of 4 (two stride-2 stages), got {images.shape[1:3]}; use stylize()"
        )
    return FastNet(cfg).apply({"params": params}, images)


def pad_to_multiple(images: jax.Array, multiple: int = 4) -> tuple[jax.Array, tuple[int, int]]:
    """Reflect-pad H and W up to multiples of ``multiple``: (B, H, W, C) -> ((B, H', W', C), (H, W))."""
    h, w = images.shape[1:3]
    ph, pw = (-h) % multiple, (-w) % multiple
    # split the padding so the image stays centred; 'symmetric' works for 1-px images where 'reflect' cannot
    mode = "reflect" if min(h, w) > 1 else "symmetric"
    padded = jnp.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)
    return padded, (h, w)


def stylize(cfg: FastNetConfig, params: Any, images: jax.Array) -> jax.Array:
    """Any (B, H, W, 3) in [0, 1] -> (B, H, W, 3): pad to a multiple of 4 by reflection, run, crop back."""
    padded, (h, w) = pad_to_multiple(images, 4)
    ph, pw = padded.shape[1] - h, padded.shape[2] - w
    out = apply(cfg, params, padded)
    return out[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w, :]


def param_count(params: Any) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- export

MODEL_FORMAT = "nstyle-fastnet"
MODEL_VERSION = 1


class ModelFileError(UserError, ValueError):
    """The file is missing, unreadable or not an exported nstyle FastNet model."""


def export_model(path, cfg: FastNetConfig, params: Any, meta: dict | None = None) -> None:
    """Write params + the network config to one ``.npz`` (no pickles), atomically.

    The file holds ``params/<path>`` arrays and a ``__model__`` JSON string with the format
    name, version, :class:`FastNetConfig` and ``meta`` (free-form: style image, steps, ...).
    """
    header = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "fastnet": dataclasses.asdict(cfg), "meta": meta or {}}
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {f"params/{k}": np.asarray(v) for k, v in flat.items()}
    arrays["__model__"] = np.array(json.dumps(header, sort_keys=True))
    _io.save_npz(path, arrays)


def load_model(path) -> tuple[FastNetConfig, dict, dict]:
    """``(cfg, params, meta)`` from an exported model; needs nothing of the training code."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "__model__" not in files:
                raise ModelFileError(
                    f"{path}: not an nstyle FastNet model (no '__model__' entry); export one with nstyle-train"
                )
            header = json.loads(str(z["__model__"]))
            flat = {k[len("params/") :]: z[k] for k in files if k.startswith("params/")}
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file; give the model.npz written by nstyle-train") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a directory; give the model.npz file inside it") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(
            f"{path}: not a readable nstyle model ({type(e).__name__}); give the model.npz written by nstyle-train"
        ) from None
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path}: format '{header.get('format')}' is not '{MODEL_FORMAT}'; give a model written by nstyle-train"
        )
    if int(header.get("version", 0)) > MODEL_VERSION:
        raise ModelFileError(
            f"{path}: model format version {header.get('version')} is newer than this nstyle ({MODEL_VERSION}); "
            "upgrade nstyle"
        )
    cfg = FastNetConfig(**header["fastnet"])
    params = jax.tree_util.tree_map(jnp.asarray, traverse_util.unflatten_dict(flat, sep="/"))
    # a wrong-shaped tree fails here, with the names, not deep inside a convolution
    want = jax.tree_util.tree_map(np.shape, jax.eval_shape(lambda: init(cfg, jax.random.key(0))))
    got = jax.tree_util.tree_map(np.shape, params)
    if want != got:
        raise ModelFileError(f"{path}: parameters do not match the network its config describes; the file is damaged")
    bad = sorted(k for k, v in flat.items() if not np.all(np.isfinite(v)))
    if bad:
        raise ModelFileError(
            f"{path}: parameter {bad[0]} holds NaN or infinity ({len(bad)} array(s)); the model is damaged or its "
            f"training diverged: export an earlier checkpoint or train again with a lower optim.lr"
        )
    return cfg, params, header.get("meta", {})
