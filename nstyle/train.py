"""Train a FastNet on a folder of photos (Johnson et al. 2016; several styles in one network,
Dumoulin et al. 2017): the library side.

    cfg = TrainConfig(style="starry.jpg", data="/data/coco/train2014", size=256, steps=40000)
    cfg = TrainConfig(style=("a.jpg", "b.jpg", "c.jpg"), data=...)   # one network, three styles
    summary = train(cfg, "runs/starry")     # checkpoints/, metrics.csv, samples/, model.npz, metrics.json

``nstyle-train`` (:mod:`nstyle.cli.train`) is this function behind a Hydra schema. The work
directory holds ``checkpoints/``, ``metrics.csv`` (loss terms every ``log_every`` steps),
``samples/`` (the fixed validation images stylised every ``sample_every`` steps),
``model.npz`` (the exported network, see :mod:`nstyle.fastnet`) and ``metrics.json``.
Calling :func:`train` again on the same directory resumes from its last checkpoint: same
step, optimiser state, data order and RNG, so the result equals an uninterrupted run.

Several processes (:mod:`nstyle.distributed`, e.g. ``srun --ntasks=2``) train one model: the
mesh spans every process's devices, each process loads only its slice of each batch, all of
them resume from the checkpoint process 0 chose, and only process 0 writes files.

The pieces are separate functions: :func:`perceptual_loss_for` (the configured weights as
METHOD.md's sums), :func:`training_loss` (the normalised per-image objective),
:func:`make_train_step` (one jitted, data-parallel step), :func:`init_state`, and inside
:func:`train` the steps restore-or-init, loop, export.

With several styles, image ``i`` of step ``t``'s batch is trained for style
``(t·B + i) mod S`` (:func:`style_indices`): every style gets the same share of the photos,
and a resumed run assigns them as the uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from nstyle import (
    _io,
    _rundir,
    _xla,
    checkpoint,
    data,
    distributed,
    fastnet,
    images,
    losses,
    memory,
    runinfo,
    vgg,
    weights,
)
from nstyle._errors import UserError

log = logging.getLogger("nstyle.train")

# Johnson et al.'s layers for VGG16; for VGG19 the same positions (last ReLU of blocks 1-4)
DEFAULT_LAYERS = {
    "vgg16": (("relu2_2",), ("relu1_2", "relu2_2", "relu3_3", "relu4_3")),
    "vgg19": (("relu2_2",), ("relu1_2", "relu2_2", "relu3_4", "relu4_4")),
}
SCHEDULES = ("constant", "cosine")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TrainLoss:
    """The training loss: layers, weights and how each term is normalised.

    ``normalize=True`` (the default) divides each layer's term by the same term of a
    zero response, i.e. by its target's size: the content term of layer l becomes
    ``Σ(F−P)²/ΣP²`` (P the input photo's response, per image) and the style term
    ``Σ(G/M−Â)²/ΣÂ²`` (Â the style's mean Gram matrix). Both are relative errors, 1 for a
    black image whatever the crop size, the painting or the layer, so one set of weights
    holds from 64 to 256 px crops (docs/fastnet.md has the measurements).

    ``normalize=False`` takes the weights in mean-squared-error units, as PyTorch's
    fast_neural_style example does (it uses the same torchvision VGG16 and input
    normalisation, so its weights carry over: content 1e5, style 1e10, TV 10, meant for 256 px
    crops): content_weight · mean((F − P)²) + style_weight · Σ_l mean((G_l − A_l)²) with
    G = F Fᵀ / (N·M). See :func:`perceptual_loss_for` for the conversion to METHOD.md's sums.

    In both, the TV term is tv_weight · mean over pixels of (∂x² + ∂y²).
    """

    network: str = "vgg16"  # Johnson et al.'s loss network; vgg19 uses relu1_2/2_2/3_4/4_4 for style
    content_layers: tuple[str, ...] | None = None  # None: the network's default (relu2_2)
    style_layers: tuple[str, ...] | None = None  # None: relu1_2, relu2_2, relu3_3, relu4_3 (VGG16)
    normalize: bool = True  # relative errors per layer, as losses.PerceptualLoss(normalize=True); False: MSE units
    content_weight: float = 1.0
    style_weight: float = 1.0  # per style layer
    tv_weight: float = 0.0
    style_size: int | None = None  # longest side of the style image for its Gram targets; None: the crop size
    pooling: str = "max"  # the loss network as it was trained

    def __post_init__(self):
        if self.network not in DEFAULT_LAYERS:
            raise UserError(f"loss.network must be one of {', '.join(DEFAULT_LAYERS)}, got '{self.network}'")
        if not isinstance(self.normalize, bool):
            raise UserError(f"loss.normalize must be true or false, got '{self.normalize}'")
        for name in ("content_weight", "style_weight", "tv_weight"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise UserError(f"loss.{name} must be finite and >= 0, got {v}")
        if self.pooling not in vgg.POOLINGS:
            raise UserError(f"loss.pooling must be one of {', '.join(vgg.POOLINGS)}, got '{self.pooling}'")
        if self.style_size is not None and self.style_size < 16:
            raise UserError(f"loss.style_size must be >= 16 px (or null for the crop size), got {self.style_size}")


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """Adam's learning rate over the run."""

    lr: float = 1e-3  # the paper's
    schedule: str = "constant"  # "constant" or "cosine" (warmup, then cosine decay to lr·final_fraction)
    warmup_steps: int = 0
    final_fraction: float = 0.1

    def __post_init__(self):
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"optim.lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.warmup_steps < 0 or not 0 <= self.final_fraction <= 1:
            raise UserError(
                f"optim.warmup_steps must be >= 0 and optim.final_fraction in [0, 1], got "
                f"{self.warmup_steps} and {self.final_fraction}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; the defaults are the paper's (Johnson et al. 2016)."""

    style: str | tuple[str, ...] | None = None  # style image (path or builtin:<name>), or several (required)
    data: str | None = None  # folder of training photos, searched recursively (required)
    size: int = 256  # training crop side (px); a multiple of 4
    steps: int = 40000  # 40k steps of batch 4 ≈ 2 epochs of COCO's 83k images
    batch: int = 4  # global batch, split over all devices
    seed: int = 0  # fixes the init, the data order, the crops and the flips
    net: fastnet.FastNetConfig = fastnet.FastNetConfig()
    loss: TrainLoss = TrainLoss()
    optim: LRSchedule = LRSchedule()
    crop_scale: tuple[float, float] = (0.6, 1.0)  # random square crop, side = U(lo, hi) × the shorter side
    log_every: int = 20  # metrics.csv row (means over the interval)
    sample_every: int = 500  # stylise the validation images into samples/
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validation: tuple[str, ...] = ("builtin:chelsea", "builtin:astronaut", "builtin:coffee")
    sample_size: int = 256  # longest side of the validation stylisations
    prefetch: int = 2  # batches decoded ahead in a background thread
    progress: bool = True
    resume: bool = True  # continue from checkpoints/ in the work directory if there are any
    kill_at_step: int | None = None  # tests only: SIGKILL this process right after this step
    pause_at_step: int | None = None  # tests only: after this step, wait until killed (scancel tests)

    def __post_init__(self):
        if not self.style:
            raise UserError("no style image; add style=PATH (an image file or builtin:<name>) or style=[a.jpg,b.jpg]")
        if not all(isinstance(x, str) and x for x in self.styles):
            raise UserError(f"style: expected a path or a list of paths, got {self.style!r}")
        if len(set(self.styles)) != len(self.styles):
            raise UserError(f"style: {list(self.styles)} names an image twice; give each style once")
        if not self.data:
            raise UserError("no training data; add data=DIR (a folder of photos, e.g. COCO train2014)")
        if self.size < 16 or self.size % 4:
            raise UserError(f"size={self.size}: use a multiple of 4 of at least 16 (the network halves twice)")
        if self.steps < 1 or self.batch < 1:
            raise UserError(f"steps={self.steps}, batch={self.batch}: both must be >= 1")
        lo, hi = (float(v) for v in self.crop_scale)
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop_scale={list(self.crop_scale)}: need 0 < low <= high <= 1")
        for name in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "sample_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prefetch < 0:
            raise UserError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.net.styles not in (1, len(self.styles)):
            raise UserError(f"net.styles={self.net.styles} but {len(self.styles)} style images; leave net.styles at 1")

    @property
    def styles(self) -> tuple[str, ...]:
        """The style images, one or more, in the order of the network's style weights."""
        return (self.style,) if isinstance(self.style, str) else tuple(self.style)


# ----------------------------------------------------------------------------- loss


def perceptual_loss_for(cfg: TrainLoss, size: int, params: vgg.VGGParams) -> tuple[losses.PerceptualLoss, float]:
    """The configured weights as a :class:`losses.PerceptualLoss` (METHOD.md sums) for ``size`` crops.

    ``normalize=True``: the layer weights are ``content_weight`` and ``style_weight``
    as given; :func:`training_loss` divides each term by its target's size.
    ``normalize=False`` (MSE units); with N_l channels and M_l positions at layer l:
      content  w_c · Σ(F−P)²/(N M)           = (2 w_c / (N M)) · ½Σ(F−P)²       -> content weight 2 w_c/(N M)
      style    w_s · Σ(G/(NM) − A/(NM))²/N²  = (4 w_s / N²) · Σ(G/M−Â)²/(4N²)   -> style weight 4 w_s / N²
    E.g. at 256 px the VGG16 content weight for w_c = 1e5 is 2e5 / (128·128²) ≈ 0.095, and the
    style weights for w_s = 1e10 are 9.8e6, 2.4e6, 6.1e5, 1.5e5 for relu1_2 … relu4_3.
    TV, both: w_tv · tv / (3 H W). Returns ``(loss, tv_scale)``.
    """
    content_layers = tuple(cfg.content_layers or DEFAULT_LAYERS[cfg.network][0])
    style_layers = tuple(cfg.style_layers or DEFAULT_LAYERS[cfg.network][1])
    try:
        shapes = jax.eval_shape(
            lambda x: vgg.features(params, x, content_layers + style_layers, cfg.pooling),
            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.normalize:
        cw = (cfg.content_weight,) * len(content_layers)
        sw = (cfg.style_weight,) * len(style_layers)
    else:
        cw = tuple(
            2.0 * cfg.content_weight / (s.shape[3] * s.shape[1] * s.shape[2])
            for s in (shapes[l] for l in content_layers)
        )
        sw = tuple(4.0 * cfg.style_weight / shapes[l].shape[3] ** 2 for l in style_layers)
    tv = cfg.tv_weight / (3.0 * size * size)
    loss = losses.PerceptualLoss(
        content_layers=content_layers,
        content_weights=cw,
        style_layers=style_layers,
        style_weights=sw,
        alpha=1.0,
        beta=1.0,
        tv_weight=tv,
        pooling=cfg.pooling,
    )
    return loss, tv


def training_loss(
    params: vgg.VGGParams,
    outputs: jax.Array,
    targets: losses.Targets,
    loss: losses.PerceptualLoss,
    normalize: bool,
) -> tuple[jax.Array, dict]:
    """Per-image training loss of the network's ``outputs`` (B, H, W, 3): ``(total (B,), terms)``.

    ``targets.content``: {layer: (B, h, w, N)} the input photos' responses; ``targets.style``:
    {layer: (B|1, N, N)} each image's mean-Gram target. With ``normalize=True`` each
    layer's term is divided by the same term of a zero response (½ΣP² per image for content,
    ΣÂ²/(4N²) for style); with ``False`` it is :func:`losses.perceptual_loss` as it is.
    ``terms`` holds the weighted ``content``, ``style`` and ``tv`` parts, each (B,).
    """
    _, aux = losses.perceptual_loss(params, outputs, targets, loss)
    if not normalize:
        return aux["content"] + aux["style"] + loss.tv_weight * aux["tv"], {
            "content": aux["content"],
            "style": aux["style"],
            "tv": loss.tv_weight * aux["tv"],
        }
    content = jnp.zeros(outputs.shape[:1], outputs.dtype)
    for layer, w in zip(loss.content_layers, loss.content_weights):
        p = targets.content[layer]  # (B, h, w, N)
        size = 0.5 * jnp.sum(jnp.square(p), axis=(1, 2, 3))  # (B,) the content loss of a zero response
        content = content + w * aux[f"content/{layer}"] / jnp.maximum(size, 1e-12)
    style = jnp.zeros(outputs.shape[:1], outputs.dtype)
    for layer, w in zip(loss.style_layers, loss.style_weights):
        a = targets.style[layer]  # (B|1, N, N)
        size = jnp.sum(jnp.square(a), axis=(1, 2)) / (4.0 * a.shape[-1] ** 2)  # (B|1,) E_l of a zero response
        style = style + w * aux[f"style/{layer}"] / jnp.maximum(size, 1e-30)
    tv = loss.tv_weight * aux["tv"]
    return content + style + tv, {"content": content, "style": style, "tv": tv}


# ----------------------------------------------------------------------------- step


class TrainState(NamedTuple):
    params: Any  # FastNet parameters, nested dict
    opt_state: Any  # optax Adam state (same tree as params, twice, plus counts)
    step: jax.Array  # () int32, steps taken so far


def make_optimizer(cfg: LRSchedule, steps: int) -> optax.GradientTransformation:
    """Adam with the configured learning-rate schedule over ``steps``."""
    lr: float | optax.Schedule = cfg.lr
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, cfg.warmup_steps, max(steps, cfg.warmup_steps + 1), end_value=cfg.lr * cfg.final_fraction
        )
    return optax.adam(lr)


# the batch axis and its sharding are nstyle.distributed's, shared with the batched Gatys sweep
make_mesh = distributed.make_mesh
shard_batch = distributed.shard_batch


def style_indices(step: jax.Array, batch: int, styles: int) -> jax.Array:
    """(B,) int32: the style each image of step ``step``'s batch is trained for, ``(step·B + i) mod S``."""
    return (step * batch + jnp.arange(batch, dtype=jnp.int32)) % styles


def make_train_step(
    net: fastnet.FastNetConfig,
    loss: losses.PerceptualLoss,
    optimizer: optax.GradientTransformation,
    loss_params: vgg.VGGParams,
    style: dict,
    mesh: Mesh,
    normalize: bool = TrainLoss.normalize,
):
    """``train_step(state, batch, key) -> (state, metrics)``, jitted, data-parallel over ``mesh``.

    ``style`` is {layer: (S, N, N)}, the mean Gram matrices of the network's S styles.
    ``batch`` (B, H, W, 3) is split over the mesh's 'data' axis; params and optimiser state
    are replicated, so XLA inserts the gradient all-reduce. ``state`` is donated. The step's
    randomness (a horizontal flip per image) is ``fold_in(key, state.step)``, so a resumed
    run draws the same numbers; so is each image's style (:func:`style_indices`).
    """
    replicated = distributed.replicated(mesh)
    split = distributed.batch_sharding(mesh)

    def step_fn(frozen, state: TrainState, batch: jax.Array, key: jax.Array):
        loss_params, style = frozen
        rng = jax.random.fold_in(key, state.step)
        flip = jax.random.bernoulli(rng, 0.5, (batch.shape[0],))
        batch = jnp.where(flip[:, None, None, None], batch[:, :, ::-1, :], batch)  # (B, H, W, 3)
        # the content target is the input itself; VGG is frozen
        content = jax.lax.stop_gradient(losses.content_targets(loss_params, batch, loss))
        if net.styles == 1:
            weights, targets = None, style  # {layer: (1, N, N)}, broadcast over the batch
        else:
            index = style_indices(state.step, batch.shape[0], net.styles)  # (B,)
            weights = jax.nn.one_hot(index, net.styles, dtype=batch.dtype)  # (B, S)
            targets = {layer: a[index] for layer, a in style.items()}  # {layer: (B, N, N)}

        def objective(params):
            out = fastnet.apply(net, params, batch, weights)  # (B, H, W, 3)
            total, terms = training_loss(loss_params, out, losses.Targets(content, targets), loss, normalize)
            return jnp.mean(total), terms

        (value, terms), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": value,
            "content": jnp.mean(terms["content"]),
            "style": jnp.mean(terms["style"]),
            "tv": jnp.mean(terms["tv"]),
            "grad_norm": optax.global_norm(grads),
        }
        return TrainState(params, opt_state, state.step + 1), metrics

    jitted = _xla.jit(
        step_fn,
        donate_argnums=(1,),
        in_shardings=(replicated, replicated, split, replicated),
        out_shardings=(replicated, replicated),
    )
    frozen = jax.device_put((vgg.with_backward_kernels(loss_params, loss.layers), style), replicated)
    return functools.partial(jitted, frozen)


def init_state(
    net: fastnet.FastNetConfig, optimizer: optax.GradientTransformation, key: jax.Array, mesh: Mesh | None = None
) -> TrainState:
    """Fresh state, replicated over ``mesh``; one jitted call (eager init compiles op by op)."""

    def build(key):
        x, w = jnp.zeros((1, 32, 32, 3), jnp.float32), jnp.full((1, net.styles), 1.0 / net.styles, jnp.float32)
        params = fastnet.FastNet(net).init(key, x, w)["params"]
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    out = None if mesh is None else distributed.replicated(mesh)
    return jax.jit(build, out_shardings=out)(key)


# ----------------------------------------------------------------------------- training


CSV_FIELDS = ("step", "loss", "content", "style", "tv", "grad_norm", "images_per_s", "time_s")


def read_log(path: Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` as floats (empty if there is none)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _truncate_log(path: Path, upto: int) -> None:
    """Keep only the rows of steps <= ``upto`` (a killed run logged past its last checkpoint)."""
    if not path.exists():
        return

    def keep(i: int, line: str) -> bool:
        if i == 0:
            return True  # the header
        head = line.split(",", 1)[0]
        return line.endswith("\n") and head.isdigit() and int(head) <= upto  # a half-written last row goes

    with open(path, newline="") as f:
        text = [line for i, line in enumerate(f) if keep(i, line)]
    _io.write_text(path, "".join(text))


@dataclasses.dataclass
class _Run:
    """What the loop needs, prepared before the first step."""

    net: fastnet.FastNetConfig
    loss: losses.PerceptualLoss
    loss_params: vgg.VGGParams
    folder: data.ImageFolder
    style_images: list[np.ndarray]  # [(Hs, Ws, 3)], one per style
    style_sha256: list[str]  # of each style image file, in style order
    validation: list[np.ndarray]  # [(h, w, 3)]
    optimizer: optax.GradientTransformation
    mesh: Mesh


def _prepare(cfg: TrainConfig) -> _Run:
    """Read every input (style, validation images, data folder, weights) before any compiling."""
    n = jax.device_count()
    if cfg.batch % n:
        raise UserError(f"batch={cfg.batch} does not split over {n} devices; use a multiple of {n}")
    check_memory(cfg, memory.available_bytes())
    style_images = [images.load_image(s, max_side=cfg.loss.style_size or cfg.size) for s in cfg.styles]
    validation = [images.load_image(v, max_side=cfg.sample_size) for v in cfg.validation]
    folder = data.ImageFolder.scan(cfg.data)
    folder.check_readable()
    loss_params = weights.load(cfg.loss.network)
    loss, _ = perceptual_loss_for(cfg.loss, cfg.size, loss_params)
    return _Run(
        net=dataclasses.replace(cfg.net, styles=len(cfg.styles)),
        loss=loss,
        loss_params=loss_params,
        folder=folder,
        style_images=style_images,
        style_sha256=[_io.sha256_file(images.resolve(s)) for s in cfg.styles],
        validation=validation,
        optimizer=make_optimizer(cfg.optim, cfg.steps),
        mesh=make_mesh(),
    )


def style_table(params: vgg.VGGParams, style_images: list[np.ndarray], loss: losses.PerceptualLoss) -> dict:
    """{layer: (S, N, N)}: the mean Gram matrices of each style image, stacked in style order."""
    per_style = [losses.style_targets(params, [jnp.asarray(img[None])], loss) for img in style_images]
    return {layer: jnp.concatenate([t[layer] for t in per_style]) for layer in loss.style_layers}


def needed_bytes(cfg: TrainConfig, size: int | None = None) -> int:
    """Estimated peak memory of one training step on one device (:func:`memory.training_bytes`)."""
    size = cfg.size if size is None else size
    content, style = DEFAULT_LAYERS[cfg.loss.network]
    layers = tuple(cfg.loss.content_layers or content) + tuple(cfg.loss.style_layers or style)
    per_device = max(cfg.batch // jax.device_count(), 1)
    step = memory.training_bytes(
        size, per_device, cfg.net.width, cfg.net.blocks, layers, cfg.loss.network, cfg.loss.style_size
    )
    side = cfg.sample_size  # the validation stylisations: a forward pass, no gradients
    sample = memory.fastnet_activation_bytes(side, side, cfg.net.width, cfg.net.blocks) / memory.BACKWARD_FACTOR
    return int(max(step, sample))


def check_memory(cfg: TrainConfig, budget_bytes: int) -> None:
    """Refuse, before anything is allocated, a training step that would not fit in ``budget_bytes``."""
    need = needed_bytes(cfg)
    if need <= budget_bytes:
        return
    fit = 0
    lo, hi = 16, cfg.size  # sizes are multiples of 4; need grows with size
    while lo <= hi:
        mid = (lo + hi) // 8 * 4
        if needed_bytes(cfg, mid) <= budget_bytes:
            fit, lo = mid, mid + 4
        else:
            hi = mid - 4
    hint = f"size={fit} would fit" if fit else "no size fits at this batch"
    raise memory.MemoryBudgetError(
        f"size={cfg.size}, batch={cfg.batch}: a training step needs about {need / 2**30:.1f} GiB but only "
        f"{budget_bytes / 2**30:.1f} GiB is available; {hint} (or lower batch, net.width or loss.style_size)"
    )


def identity(cfg: TrainConfig, run: _Run) -> dict:
    """What defines a training run, flat and JSON-plain: the style images (their sha256), the
    data folder's digest, the crops, the seed, the network, the loss and the optimiser.
    A resume must match it exactly; ``steps`` (and logging, sampling, checkpointing) may change."""
    out = {
        # one style: its digest (as single-style runs always recorded it); several: the list, in order
        "style_sha256": run.style_sha256[0] if len(run.style_sha256) == 1 else run.style_sha256,
        "data_digest": run.folder.digest,
        "size": cfg.size,
        "batch": cfg.batch,
        "seed": cfg.seed,
        "crop_scale": list(cfg.crop_scale),
    }
    for group in ("net", "loss", "optim"):
        out.update({f"{group}.{k}": v for k, v in dataclasses.asdict(getattr(cfg, group)).items()})
    return _io.to_jsonable(out)


def check_identity(recorded: dict, now: dict, ckpt: Path) -> None:
    """Refuse to resume ``ckpt`` (whose info holds ``recorded``) with a run that differs in any key."""
    differ = [k for k in now if k in recorded and recorded[k] != now[k]] + [k for k in now if k not in recorded]

    def show(v):
        return f"{v[:12]}…" if isinstance(v, str) and len(v) == 64 else v

    if differ:
        shown = ", ".join(f"{k}={show(recorded.get(k, '?'))} there, {show(now[k])} now" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise checkpoint.CheckpointError(
            f"{ckpt.parent.parent} holds another run's checkpoints ({shown}{more}); resume with the same "
            f"settings (only steps may change) or choose a new hydra.run.dir"
        )


def restore_or_init(cfg: TrainConfig, run: _Run, workdir: Path) -> TrainState:
    """The newest readable checkpoint of ``workdir`` (checked against ``cfg``), else a fresh state.

    Damaged checkpoints are moved aside and named in a warning; if only damaged ones are
    left, the run stops rather than start over. A checkpoint of another run (see
    :func:`identity`) is refused, naming the keys that differ.
    """
    ckpt_dir = workdir / "checkpoints"
    if not cfg.resume and (checkpoint.all_steps(ckpt_dir) or checkpoint.damaged(ckpt_dir)):
        raise UserError(
            f"{ckpt_dir} already holds checkpoints and resume=false; use a new run directory "
            f"(or resume=true to continue that run)"
        )
    last, info = _agreed_checkpoint(ckpt_dir) if cfg.resume else (None, None)
    if last is not None:
        if "identity" in info:
            check_identity(info["identity"], identity(cfg, run), last)
        else:  # written before checkpoints recorded their run's identity
            for key in ("seed", "batch", "size"):
                if info.get("config", {}).get(key) != getattr(cfg, key):
                    raise checkpoint.CheckpointError(
                        f"{workdir}: its checkpoints were made with {key}={info['config'].get(key)}, "
                        f"not {getattr(cfg, key)}; use the same {key} or a new run directory"
                    )
        if info["step"] > cfg.steps:
            raise UserError(f"{last} is at step {info['step']}, past steps={cfg.steps}; give steps>={info['step']}")
    init_key = jax.random.split(jax.random.key(cfg.seed))[0]
    state = init_state(run.net, run.optimizer, init_key, run.mesh)
    if last is None:
        if distributed.is_main():
            _truncate_log(workdir / "metrics.csv", 0)  # a fresh start in a used directory: not this run's log
        return state
    tree, info = checkpoint.restore(last, like=state._asdict())
    state = TrainState(**tree)
    start = int(state.step)
    log.info("resuming from %s (step %d)", last.name, start)
    if distributed.is_main():
        _truncate_log(workdir / "metrics.csv", start)
    return distributed.put(state, distributed.replicated(run.mesh))


def _agreed_checkpoint(ckpt_dir: Path) -> tuple[Path | None, dict | None]:
    """``(checkpoint, its info)`` to resume from, as process 0 chose it; every process of a run takes that one.

    Process 0 alone moves damaged checkpoints aside; if it refuses to resume, the others stop too.
    """
    last, info, refused = None, None, None
    if distributed.is_main():
        try:
            last, info = _newest_readable(ckpt_dir)
        except UserError as e:
            refused = e
    if jax.process_count() > 1:
        step = -2 if refused is not None else -1 if last is None else checkpoint.step_of(last)
        step = int(distributed.broadcast(np.int32(step)))
        if step == -2 and refused is None:
            raise checkpoint.CheckpointError(f"{ckpt_dir}: process 0 refused to resume from it (its log says why)")
        if step >= 0 and last is None:
            last = checkpoint.path_for(ckpt_dir, step)
            info = checkpoint.read(last)[1]
    if refused is not None:
        raise refused
    return last, info


def _newest_readable(ckpt_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest readable checkpoint and its info; damaged ones are moved aside (and named)."""
    last, info, moved = checkpoint.latest_readable(ckpt_dir)
    for path, why in moved:
        log.warning("damaged checkpoint moved aside as %s: %s", path.name, why)
    if last is None and checkpoint.damaged(ckpt_dir):
        names = ", ".join(p.name for p in checkpoint.damaged(ckpt_dir))
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} holds no readable checkpoint, only damaged ones ({names}); delete them to start "
            f"this run over, or put a good checkpoint back"
        )
    return last, info


class _Logger:
    """Means of the step metrics over each ``log_every`` interval, appended to ``metrics.csv``.

    Every process computes the rows (and stops on a non-finite loss); only a ``writer`` writes them.
    """

    def __init__(self, path: Path, cfg: TrainConfig, start: int, writer: bool = True):
        self.cfg, self.pending, self.last_row = cfg, [], {}
        self.file = self.writer = None
        if writer:
            new = not path.exists()
            self.file = open(path, "a", newline="")  # noqa: SIM115 -- closed by close(), after the loop
            self.writer = csv.DictWriter(self.file, CSV_FIELDS)
            if new:
                self.writer.writeheader()
        self.t0 = self.t_last = time.perf_counter()
        self.bar = None
        if cfg.progress and writer:
            from tqdm import tqdm

            self.bar = tqdm(
                total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0
            )

    def add(self, done: int, metrics: dict) -> None:
        self.pending.append(metrics)
        if done % self.cfg.log_every == 0 or done == self.cfg.steps:
            host = distributed.local(self.pending)  # one sync per log interval
            now = time.perf_counter()
            row = {k: float(np.mean([m[k] for m in host])) for k in ("loss", "content", "style", "tv", "grad_norm")}
            row.update(
                step=done, images_per_s=len(host) * self.cfg.batch / max(now - self.t_last, 1e-9), time_s=now - self.t0
            )
            if not np.isfinite(row["loss"]):
                raise FloatingPointError(
                    f"loss became {row['loss']} at step {done}; lower optim.lr or the loss weights"
                )
            if self.writer is not None:
                self.writer.writerow(row)
                self.file.flush()
            self.pending, self.t_last, self.last_row = [], now, row
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{row['loss']:.3g}",
                    content=f"{row['content']:.3g}",
                    style=f"{row['style']:.3g}",
                    tv=f"{row['tv']:.2g}",
                    img_s=f"{row['images_per_s']:.1f}",
                    refresh=False,
                )
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.bar is not None:
            self.bar.close()


def _loop(
    cfg: TrainConfig, run: _Run, state: TrainState, workdir: Path, on_checkpoint: Callable[[int], Any] | None
) -> tuple[TrainState, dict, int]:
    """Steps from ``state.step`` to ``cfg.steps``; returns the state, the last log row and the skipped-file count."""
    start = int(state.step)
    split = distributed.batch_sharding(run.mesh)
    style = style_table(run.loss_params, run.style_images, run.loss)  # {layer: (S, N, N)}
    train_step = make_train_step(
        run.net, run.loss, run.optimizer, run.loss_params, style, run.mesh, normalize=cfg.loss.normalize
    )
    step_key = jax.random.split(jax.random.key(cfg.seed))[1]
    shard = (jax.process_index(), jax.process_count())  # multi-host: each process loads its slice
    batches = data.Batches(
        run.folder, cfg.size, cfg.batch, cfg.seed, start=start * cfg.batch, scale=tuple(cfg.crop_scale), shard=shard
    )
    loader = data.Prefetch(lambda: shard_batch(batches.next_batch(), split), depth=cfg.prefetch)
    main = distributed.is_main()
    logger = _Logger(workdir / "metrics.csv", cfg, start, writer=main)
    ckpt_dir = workdir / "checkpoints"
    run_identity = identity(cfg, run)
    try:
        for step in range(start, cfg.steps):
            state, metrics = train_step(state, loader.next(), step_key)
            done = step + 1
            logger.add(done, metrics)
            if main and (done % cfg.sample_every == 0 or done == cfg.steps):
                save_samples(workdir, done, run, state.params)
            if main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                info = {
                    "identity": run_identity,
                    "config": {"seed": cfg.seed, "batch": cfg.batch, "size": cfg.size},
                    "data": {
                        "samples_seen": done * cfg.batch,
                        "digest": run.folder.digest,
                        "files": len(run.folder),
                        "skipped_files": batches.skipped,
                    },
                    "rng": {"seed": cfg.seed, "step_key": "fold_in(split(key(seed))[1], step)"},
                    "fastnet": dataclasses.asdict(run.net),
                    "time": time.time(),
                }
                checkpoint.save(ckpt_dir, done, distributed.local(state._asdict()), info, keep=cfg.keep_checkpoints)
                if on_checkpoint is not None:
                    on_checkpoint(done)
            if cfg.kill_at_step is not None and done == cfg.kill_at_step:
                logger.close()
                os.kill(os.getpid(), signal.SIGKILL)  # a crash: no cleanup, nothing flushed but what is on disk
            if cfg.pause_at_step is not None and done == cfg.pause_at_step:
                logger.close()
                while True:  # mid-run until something (scancel, a test) kills the process
                    time.sleep(1)
    finally:
        loader.close()
        logger.close()
    return state, logger.last_row, batches.skipped


def save_samples(workdir: Path, step: int, run: _Run, params) -> Path:
    """The validation images above their stylisations (one row per style), as one PNG in ``samples/``."""
    stylize = _sampler(run.net)
    params = distributed.local(params)  # this process's copy: the sampler runs on its own device
    rows = [run.validation]
    for k in range(run.net.styles):
        onehot = np.eye(run.net.styles, dtype=np.float32)[k]  # (S,)
        rows.append([np.asarray(stylize(params, jnp.asarray(v[None]), onehot))[0] for v in run.validation])
    return images.save_image(workdir / "samples" / f"step_{step:07d}.png", images.tile(rows))


@functools.lru_cache(maxsize=8)
def _sampler(net: fastnet.FastNetConfig):
    if net.styles == 1:
        return _xla.jit(lambda p, x, w: fastnet.stylize(net, p, x))
    return _xla.jit(lambda p, x, w: fastnet.stylize(net, p, x, w))


def train(
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    on_checkpoint: Callable[[int], Any] | None = None,
    on_start: Callable[[], Any] | None = None,
) -> dict:
    """Train (or resume) in ``workdir``; returns the summary also written to ``metrics.json``.

    The run holds ``workdir``'s lock (:mod:`nstyle._rundir`) from its first check to its last
    write. Every input, the memory a step needs, that ``workdir`` can be written and that its
    checkpoints belong to this run are checked before anything is written; then
    ``on_start()`` is called (the command line records its config there), and
    ``on_checkpoint(step)`` after each checkpoint (it redraws the loss plot).
    """
    workdir = Path(workdir)
    main = distributed.is_main()
    # process 0 owns the directory; the others of a multi-process run only read from it
    with _rundir.hold(workdir) if main else contextlib.nullcontext():
        if main:
            _rundir.check_writable(workdir, workdir / "checkpoints", workdir / "samples")
        run = _prepare(cfg)
        state = restore_or_init(cfg, run, workdir)
        if main:
            _rundir.remove_stale_temporaries(workdir, ["checkpoints", "samples"])
            if on_start is not None:
                on_start()
        start = int(state.step)
        state, last_row, skipped = _loop(cfg, run, state, workdir, on_checkpoint)
        if not last_row:  # nothing trained in this process (resumed at the last step): the log's last row
            rows = read_log(workdir / "metrics.csv")
            last_row = rows[-1] if rows else {}
        if main and not (workdir / "samples" / f"step_{cfg.steps:07d}.png").exists():
            save_samples(workdir, cfg.steps, run, state.params)
        return export(cfg, run, state, workdir, start=start, last_row=last_row, skipped=skipped)


def export(
    cfg: TrainConfig, run: _Run, state: TrainState, workdir: Path, *, start: int, last_row: dict, skipped: int
) -> dict:
    """Write ``model.npz`` and ``metrics.json`` (process 0 only); returns the summary on every process."""
    params = distributed.local(state.params)
    model_meta = {
        "style": cfg.styles[0] if len(cfg.styles) == 1 else list(cfg.styles),
        "styles": list(cfg.styles),
        "steps": cfg.steps,
        "size": cfg.size,
        "batch": cfg.batch,
        "seed": cfg.seed,
        "loss_network": cfg.loss.network,
        "loss_normalize": cfg.loss.normalize,
        "checkpoint": checkpoint.path_for(workdir / "checkpoints", cfg.steps).name,
    }
    summary = {
        "steps": cfg.steps,
        "resumed_from_step": start,
        "final": last_row,
        "images_per_s": last_row.get("images_per_s"),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "platform": jax.devices()[0].platform,
        "data": {
            "folder": run.folder.root,
            "files": len(run.folder),
            "ignored_non_images": run.folder.ignored,
            "skipped_unreadable": skipped,
        },
        "model": "model.npz",
        "fastnet": dataclasses.asdict(run.net),
        "param_count": fastnet.param_count(params),
        "loss": {
            "network": cfg.loss.network,
            "content_layers": list(run.loss.content_layers),
            "style_layers": list(run.loss.style_layers),
            "weights_checksum": run.loss_params.checksum,
        },
        "config": cfg,
        "run": runinfo.describe(params=run.loss_params, seed=cfg.seed),
    }
    if distributed.is_main():
        fastnet.export_model(workdir / "model.npz", run.net, params, model_meta)
        _io.write_json(workdir / "metrics.json", summary)
    return summary
