"""Schemas of the command-line configuration, registered in Hydra's ConfigStore, and the one
door from a composed config to the library's types.

``conf/config.yaml`` (``nstyle-stylize``) starts its defaults list with ``stylize_schema`` and
``conf/train.yaml`` (``nstyle-train``) with ``train_schema``; every group file is merged into
the typed nodes below, so a value of the wrong type is refused by OmegaConf before anything
runs. :func:`stylize_settings` and :func:`train_settings` then refuse keys the schema does not
have (also those added with ``+key=`` or ``++key=``), check every value Hydra cannot (negative
or non-finite weights, unknown layers, an empty style list), and build the library's frozen
dataclasses; library code never sees a DictConfig.

Every default is the library's: each schema field takes its default from the library
dataclass it feeds (:class:`nstyle.losses.PerceptualLoss`, :class:`nstyle.optimize.OptimConfig`,
:class:`nstyle.transfer.TransferSettings`, :class:`nstyle.train.TrainConfig`, ...).
``tests/test_config.py`` checks the YAML presets against them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from nstyle import distributed, fastnet, losses, optimize, train, transfer, vgg
from nstyle._errors import UserError

# The schemas below use ``Optional[X]`` rather than ``X | None``: OmegaConf reads the
# annotations of structured configs and supports only the typing form.


def job_dirname(override_dirname: str) -> str:
    """A sweep job's directory name from Hydra's ``override_dirname``: path separators become
    ``_``, so ``style=/data/paintings/x.jpg`` names one directory, not a nest of them."""
    return str(override_dirname).replace("/", "_").replace("\\", "_")


def main_process_only(value: Any) -> Any:
    """``value`` in process 0 of a multi-process run (and in a single-process run), else None."""
    return value if distributed.launch_rank()[0] == 0 else None


# conf/*.yaml name job dirs ${nstyle_dirname:${hydra.job.override_dirname}}; registered on
# import, so a launcher's worker process that unpickles the task has it too
OmegaConf.register_new_resolver("nstyle_dirname", job_dirname, replace=True)
# conf/train.yaml: hydra.output_subdir is ${nstyle_main_only:.hydra}, so of the processes of one
# run (srun --ntasks=N, or submitit's tasks_per_node=N) only process 0 writes .hydra/
OmegaConf.register_new_resolver("nstyle_main_only", main_process_only, replace=True)

_LOSS = losses.PerceptualLoss()
_OPTIM = optimize.OptimConfig()
_TRANSFER = transfer.TransferSettings()
_NET = fastnet.FastNetConfig()
_TRAIN_LOSS = train.TrainLoss()
_SCHEDULE = train.LRSchedule()
_TRAIN = {f.name: f.default for f in dataclasses.fields(train.TrainConfig)}


class Pooling(enum.Enum):
    avg = "avg"  # Gatys et al.: better gradient flow, smoother results
    max = "max"  # the network as trained
    avg_rescaled = "avg_rescaled"  # average pooling scaled to max pooling's activation sizes (vgg.AVG_POOL_SCALE)


class Padding(enum.Enum):
    zero = "zero"  # the network as trained
    reflect = "reflect"  # mirror the border pixels: no dark frame for the result to imitate
    replicate = "replicate"  # repeat the border pixels


class StyleLoss(enum.Enum):
    gram = "gram"  # Gatys et al.: Gram matrices
    meanstd = "meanstd"  # per-channel mean and standard deviation (AdaIN's statistic)
    w2 = "w2"  # Wasserstein-2 distance between Gaussian fits (mean and covariance)


class LayerWeights(enum.Enum):
    equal = "equal"  # w_l = 1/L, the paper's
    falling = "falling"  # w_l ∝ 4^-l: 256, 64, 16, 4, 1 (normalised) for five layers


class OptimName(enum.Enum):
    lbfgs = "lbfgs"
    adam = "adam"


class LineSearch(enum.Enum):
    none = "none"
    zoom = "zoom"


class MemoryMode(enum.Enum):
    auto = "auto"  # per stage, the fastest of plain, remat, tiled whose estimate fits the memory available
    plain = "plain"  # keep every activation for the backward pass: fastest
    remat = "remat"  # recompute each VGG block in the backward pass: same result, ~25% less memory
    remat_bf16 = "remat_bf16"  # remat with bfloat16 activations: a slightly different result (for GPUs)
    tiled = "tiled"  # the loss and its gradient tile by tile: same result, memory of one tile


class ColorMode(enum.Enum):
    off = "off"
    luminance = "luminance"  # Gatys et al. 2017: transfer on luminance, keep the content's colour
    histogram = "histogram"  # Gatys et al. 2017: recolour the style to the content's colour statistics


# ------------------------------------------------------------------------ nstyle-stylize


@dataclasses.dataclass
class NetworkSchema:
    arch: str = _TRANSFER.arch  # vgg19 (Caffe, the paper's) or vgg16 (torchvision)
    pooling: Pooling = Pooling(_LOSS.pooling)
    padding: Padding = Padding(_LOSS.padding)  # of the 3×3 convolutions


@dataclasses.dataclass
class LossSchema:
    alpha: float = _LOSS.alpha  # content weight
    beta: float = _LOSS.beta  # style weight; α/β = 1e-3 with METHOD.md's normalisations, as in the paper
    tv_weight: float = _LOSS.tv_weight  # total variation (not in the paper)
    content_layers: list[str] = dataclasses.field(default_factory=lambda: list(_LOSS.content_layers))
    content_weights: Optional[list[float]] = None  # None: 1 each
    style_layers: list[str] = dataclasses.field(default_factory=lambda: list(_LOSS.style_layers))
    style_weights: Optional[list[float]] = None  # None: from layer_weights
    layer_weights: LayerWeights = LayerWeights(losses.LAYER_WEIGHTS[0])  # preset used when style_weights is None
    style_loss: StyleLoss = StyleLoss(_LOSS.style_loss)  # the style statistic
    normalize: bool = _LOSS.normalize  # each layer's term relative to its size: weights that hold at any size


@dataclasses.dataclass
class OptimSchema:
    name: OptimName = OptimName(_OPTIM.name)
    lr: Optional[float] = _OPTIM.lr  # None: 1.0 for L-BFGS (unit quasi-Newton step), 0.02 for Adam
    memory: int = _OPTIM.memory  # L-BFGS history
    linesearch: LineSearch = LineSearch(_OPTIM.linesearch)  # none: one evaluation per iteration
    max_linesearch_steps: int = _OPTIM.max_linesearch_steps
    project: bool = _OPTIM.project  # clip to [0, 1] after every step (for Adam)
    average: Optional[float] = _OPTIM.average  # decay of an iterate average returned as the result; None: off


@dataclasses.dataclass
class StylizeSchema:
    # stable top-level names (README; checks rely on them)
    content: Optional[str] = _TRANSFER.content  # path or builtin:NAME; null for texture synthesis
    style: Any = _TRANSFER.styles[0]  # a path/builtin, or a list of them (blended)
    size: int = _TRANSFER.sizes[-1]  # longest side of the output, px
    steps: int = _OPTIM.steps  # iterations (of the last stage, with a schedule)
    seed: int = _TRANSFER.seed
    overwrite: bool = False  # allow replacing an existing result in the run directory
    # everything else
    init: str = _TRANSFER.init  # content | noise | style | PATH to an image
    style_blend: Optional[list[float]] = None  # one weight per style image; None: equal
    style_scale: float = _TRANSFER.style_scale  # style image's longest side relative to the output's
    masks: Optional[list[str]] = None  # spatial control: one mask image per style, aligned with the content
    style_masks: Optional[list[Optional[str]]] = None  # per style image, the region its style is taken from
    # coarse-to-fine sizes before `size`, e.g. [256]; or sqrt2: from ~128 px, ×√2 per stage
    schedule: Any = dataclasses.field(default_factory=list)
    schedule_steps: Optional[list[int]] = None  # iterations of each schedule stage; None: `steps` each
    preserve_color: ColorMode = ColorMode(_TRANSFER.preserve_color)
    snapshot_every: int = 50  # save snapshots/step_XXXX.png every N iterations; 0: never
    quiet: Optional[bool] = None  # no progress bar; None: quiet in multirun sweeps only
    max_memory_gb: Optional[float] = None  # memory budget of the run; None: the memory available now
    memory_mode: MemoryMode = MemoryMode(_TRANSFER.memory_mode)  # how VGG keeps activations (README: Memory)
    network: NetworkSchema = dataclasses.field(default_factory=NetworkSchema)
    loss: LossSchema = dataclasses.field(default_factory=LossSchema)
    optim: OptimSchema = dataclasses.field(default_factory=OptimSchema)


# --------------------------------------------------------------------------- nstyle-train


@dataclasses.dataclass
class NetSchema:
    width: int = _NET.width  # first conv's channels; 2x and 4x after the two stride-2 convs (paper: 32/64/128)
    blocks: int = _NET.blocks  # residual blocks (paper: 5)
    upsample: str = _NET.upsample  # nearest-neighbour x2 then conv (no checkerboard); "transpose" is the paper's
    # residual: x + z/2, starting as the identity; linear: (z+1)/2; both clipped when applied;
    # tanh: (tanh(z)+1)/2 (model format version 1)
    output: str = _NET.output


@dataclasses.dataclass
class TrainLossSchema:
    network: str = _TRAIN_LOSS.network  # Johnson et al.'s loss network; vgg19 uses relu1_2/2_2/3_4/4_4 for style
    content_layers: Optional[list[str]] = None  # None: [relu2_2]
    style_layers: Optional[list[str]] = None  # None: [relu1_2, relu2_2, relu3_3, relu4_3] (vgg16)
    # target: each layer's term relative to its target's size (weights hold at any crop size);
    # none: mean-squared-error units, as in PyTorch's fast_neural_style (content 1e5, style 1e10, tv 10)
    normalize: bool = _TRAIN_LOSS.normalize
    content_weight: float = _TRAIN_LOSS.content_weight
    style_weight: float = _TRAIN_LOSS.style_weight  # per style layer
    tv_weight: float = _TRAIN_LOSS.tv_weight
    style_size: Optional[int] = _TRAIN_LOSS.style_size  # style image's longest side for its Grams; None: = size
    pooling: Pooling = Pooling(_TRAIN_LOSS.pooling)


@dataclasses.dataclass
class ScheduleSchema:
    lr: float = _SCHEDULE.lr  # Adam, the paper's rate
    schedule: str = _SCHEDULE.schedule  # constant, or cosine (warmup_steps, then decay to lr * final_fraction)
    warmup_steps: int = _SCHEDULE.warmup_steps
    final_fraction: float = _SCHEDULE.final_fraction


@dataclasses.dataclass
class TrainSchema:
    style: Any = _TRAIN["style"]  # style image: a path or builtin:<name>, or a list of them: one network (required)
    data: Optional[str] = _TRAIN["data"]  # folder of training photos, searched recursively (required)
    size: int = _TRAIN["size"]  # training crop side in px (paper: 256); a multiple of 4
    steps: int = _TRAIN["steps"]  # paper: 40k steps at batch 4, about 2 epochs of COCO
    batch: int = _TRAIN["batch"]  # global batch, split over every device (a multiple of the device count)
    seed: int = _TRAIN["seed"]  # one seed fixes the init, the data order, the crops and the flips
    net: NetSchema = dataclasses.field(default_factory=NetSchema)
    loss: TrainLossSchema = dataclasses.field(default_factory=TrainLossSchema)
    optim: ScheduleSchema = dataclasses.field(default_factory=ScheduleSchema)
    crop_scale: list[float] = dataclasses.field(default_factory=lambda: list(_TRAIN["crop_scale"]))
    log_every: int = _TRAIN["log_every"]  # metrics.csv row (means over the interval)
    sample_every: int = _TRAIN["sample_every"]  # stylise the validation images into samples/
    checkpoint_every: int = _TRAIN["checkpoint_every"]
    keep_checkpoints: int = _TRAIN["keep_checkpoints"]
    validation: list[str] = dataclasses.field(default_factory=lambda: list(_TRAIN["validation"]))
    sample_size: int = _TRAIN["sample_size"]  # longest side of the validation stylisations
    prefetch: int = _TRAIN["prefetch"]  # batches decoded ahead in a background thread
    progress: bool = _TRAIN["progress"]
    resume: bool = _TRAIN["resume"]  # continue from checkpoints/ if the run directory has any
    kill_at_step: Optional[int] = _TRAIN["kill_at_step"]  # tests only: SIGKILL the process after this step
    pause_at_step: Optional[int] = _TRAIN["pause_at_step"]  # tests only: after this step, wait until killed


def register() -> None:
    """Put the schemas in Hydra's ConfigStore and let Hydra find nstyle's launcher (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="stylize_schema", node=StylizeSchema)
    cs.store(name="train_schema", node=TrainSchema)
    _expose_launcher_plugin()


def _expose_launcher_plugin() -> None:
    """Hydra instantiates only the launchers it found walking the directories of the
    ``hydra_plugins`` namespace; an editable install maps ``hydra_plugins.nstyle_launcher``
    through an import hook instead of a directory, which that walk does not see."""
    try:
        import hydra_plugins
        import hydra_plugins.nstyle_launcher as plugin
    except ImportError:
        return
    parent = Path(plugin.__file__).resolve().parent.parent
    if all(Path(p).resolve() != parent for p in hydra_plugins.__path__ if Path(p).is_dir()):
        hydra_plugins.__path__.append(str(parent))


# ------------------------------------------------------------------------------ checking


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, (DictConfig, ListConfig)) else x


def check_known_keys(cfg: DictConfig, schema: type, prefix: str = "") -> None:
    """Refuse any key of ``cfg`` that ``schema`` does not define, at any depth (``+key=`` adds
    keys past OmegaConf's struct mode; they would be stored and silently ignored)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in cfg:
        if key == "hydra":
            continue
        if key not in fields:
            raise UserError(f"unknown key '{prefix}{key}'; valid keys here: {', '.join(prefix + k for k in fields)}")
        sub, node = _nested_schema(fields[key]), cfg._get_node(key)
        if sub is not None and isinstance(node, DictConfig):
            check_known_keys(node, sub, prefix=f"{prefix}{key}.")


def unknown_key_message(key: str, schema: type) -> str:
    """ "unknown key 'loss.alpah'; valid keys here: loss.alpha, ..." for a dotted ``key`` of ``schema``."""
    prefix, node = "", schema
    for part in key.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)}
        sub = _nested_schema(fields[part]) if part in fields else None
        if sub is None:
            break
        prefix, node = f"{prefix}{part}.", sub
    names = ", ".join(prefix + f.name for f in dataclasses.fields(node))
    return f"unknown key '{key}'; valid keys here: {names}"


def _nested_schema(field: dataclasses.Field) -> type | None:
    """The schema dataclass a field holds (from its default factory), or None."""
    if field.default_factory is dataclasses.MISSING:
        return None
    value = field.default_factory()
    return type(value) if dataclasses.is_dataclass(value) else None


class Typed(dict):
    """{key: value as typed on the command line} (``loss.beta`` -> ``"-1"``), for messages
    that quote the user's own text rather than OmegaConf's conversion of it."""

    @classmethod
    def from_overrides(cls, overrides: list[str]) -> Typed:
        out = cls()
        for text in overrides:
            key, sep, value = str(text).partition("=")
            if sep:
                out[key.lstrip("+~")] = value
        return out


def check_weight(name: str, value: Any, typed: dict | None = None) -> float:
    """A loss weight as a float, finite and >= 0; the error quotes the value as typed."""
    shown = (typed or {}).get(name, value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected a number, got {shown!r}") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {shown}")
    return v


def _weights(path: str, values: list | None, typed: dict | None) -> list[float] | None:
    if values is None:
        return None
    return [check_weight(f"{path}[{i}]", v, typed) for i, v in enumerate(values)]


def stylize_settings(cfg: DictConfig | StylizeSchema, typed: dict | None = None) -> transfer.TransferSettings:
    """Check every value of an ``nstyle-stylize`` config and build the library's settings.

    ``typed``: the command line's overrides (:class:`Typed`), quoted in messages.
    """
    if isinstance(cfg, DictConfig):
        check_known_keys(cfg, StylizeSchema)
        c: StylizeSchema = OmegaConf.to_object(cfg)
    else:
        c = cfg
    arch = c.network.arch
    if arch not in vgg.ARCH_LAYERS:
        raise UserError(f"network.arch: unknown network '{arch}' (expected one of {', '.join(vgg.ARCH_LAYERS)})")
    style = _plain(c.style)
    styles = (style,) if isinstance(style, str) else tuple(style or ())
    if not all(isinstance(s, str) and s for s in styles):
        raise UserError(f"style: expected a path or a list of paths, got {style!r}")
    loss = _perceptual_loss(c, arch, typed)
    if loss.uses_style and not styles:
        raise UserError("style: no style image given but beta > 0; give style=PATH or set loss.beta=0")
    if c.content is None and loss.uses_content:
        raise UserError("content: no content image given but alpha > 0; give content=PATH or set loss.alpha=0")
    if c.content is None and c.init == "content":
        raise UserError("init=content needs a content image; use init=noise for texture synthesis")
    if c.content is None and c.preserve_color.value != "off":
        raise UserError(f"preserve_color={c.preserve_color.value} needs a content image to take the colours from")
    blend = None
    if c.style_blend is not None:
        try:
            losses.blend_weights(c.style_blend, len(styles))
        except ValueError as e:
            raise UserError(f"style_blend: {e}") from None
        blend = tuple(float(b) for b in c.style_blend)
    masks, style_masks = _masks(c, styles, blend)
    if not (math.isfinite(c.style_scale) and c.style_scale > 0):
        raise UserError(f"style_scale must be > 0, got {c.style_scale}")
    if c.snapshot_every < 0:
        raise UserError(f"snapshot_every must be >= 0 (0: no snapshots), got {c.snapshot_every}")
    sizes, stage_steps = _stages(c)
    return transfer.TransferSettings(
        loss=loss,
        optim=optim_config(c.optim, int(c.steps)),
        arch=arch,
        content=c.content,
        styles=styles if loss.uses_style else (),
        style_blend=blend if loss.uses_style else None,
        style_scale=float(c.style_scale),
        sizes=sizes,
        stage_steps=stage_steps,
        init=c.init,
        preserve_color=c.preserve_color.value,
        seed=int(c.seed),
        memory_mode=c.memory_mode.value,
        masks=tuple(masks) if masks is not None and loss.uses_style else None,
        style_masks=tuple(style_masks) if style_masks is not None and loss.uses_style else None,
    )


def _masks(c: StylizeSchema, styles: tuple[str, ...], blend) -> tuple[list[str] | None, list | None]:
    """``masks`` and ``style_masks`` checked against the style images (spatial control)."""
    masks = _paths("masks", c.masks)
    style_masks = _plain(c.style_masks)
    if masks is not None:
        if len(masks) != len(styles):
            raise UserError(f"masks: {len(styles)} style image(s) need {len(styles)} masks, one each; got {len(masks)}")
        if blend is not None:
            raise UserError(
                "style_blend mixes the styles everywhere; with masks each style has its own region: drop one"
            )
        if c.content is None:
            raise UserError("masks are aligned with the content image; give content=PATH")
    if style_masks is not None:
        if not isinstance(style_masks, list) or len(style_masks) != len(styles):
            raise UserError(f"style_masks: expected a list of {len(styles)} paths or nulls (one per style image)")
        if not all(m is None or (isinstance(m, str) and m) for m in style_masks):
            raise UserError(f"style_masks: expected paths or nulls, got {style_masks!r}")
    return masks, style_masks


def _paths(name: str, value: Any) -> list[str] | None:
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UserError(f"{name}: expected a list of image paths, got {value!r}")
    return value


def _perceptual_loss(c: StylizeSchema, arch: str, typed: dict | None) -> losses.PerceptualLoss:
    """The ``loss`` group as the library's loss, every weight checked as typed."""
    lc = c.loss
    cw = _weights("loss.content_weights", lc.content_weights, typed)
    sw = _weights("loss.style_weights", lc.style_weights, typed)
    cw = cw if cw is not None else [1.0] * len(lc.content_layers)
    if sw is not None and lc.layer_weights.value != losses.LAYER_WEIGHTS[0]:
        raise UserError("loss: give either loss.style_weights or loss.layer_weights, not both")
    sw = sw if sw is not None else list(losses.layer_weights(lc.layer_weights.value, len(lc.style_layers)))
    try:
        loss = losses.PerceptualLoss(
            content_layers=tuple(lc.content_layers),
            content_weights=tuple(cw),
            style_layers=tuple(lc.style_layers),
            style_weights=tuple(sw),
            alpha=check_weight("loss.alpha", lc.alpha, typed),
            beta=check_weight("loss.beta", lc.beta, typed),
            tv_weight=check_weight("loss.tv_weight", lc.tv_weight, typed),
            pooling=c.network.pooling.value,
            style_loss=lc.style_loss.value,
            padding=c.network.padding.value,
            normalize=bool(lc.normalize),
        )
        optimize.check_layers(loss, arch)
    except ValueError as e:
        raise UserError(f"loss: {e}") from None
    if not loss.uses_content and not loss.uses_style:
        raise UserError("loss: both alpha and beta are 0 (or no layers): nothing to optimise")
    return loss


def _stages(c: StylizeSchema) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(sizes, steps) of the coarse-to-fine stages; the last stage is ``size`` with ``steps``."""
    if c.size < 1:
        raise UserError(f"size must be a positive number of pixels, got {c.size}")
    schedule = _schedule(_plain(c.schedule), int(c.size))
    sizes = schedule + (int(c.size),)
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
        raise UserError(f"schedule: sizes must grow and end below size={c.size}, got {list(schedule)}")
    earlier = c.schedule_steps
    if earlier is not None and len(earlier) == 1 and _plain(c.schedule) == SQRT2:
        earlier = list(earlier) * len(schedule)  # one count for every earlier stage of the preset
    if earlier is not None and len(earlier) != len(schedule):
        raise UserError(f"schedule_steps: {len(schedule)} schedule sizes but {len(earlier)} step counts")
    earlier = earlier if earlier is not None else [c.steps] * len(schedule)
    stage_steps = tuple(int(s) for s in earlier) + (int(c.steps),)
    if any(s < 0 for s in stage_steps):
        raise UserError(f"steps must be >= 0, got {list(stage_steps)}")
    return sizes, stage_steps


SQRT2 = "sqrt2"  # schedule preset: transfer.multiscale_sizes


def _schedule(value: Any, size: int) -> tuple[int, ...]:
    """The sizes before ``size``: a list of ints as given, or the √2 preset's."""
    if value == SQRT2:
        return transfer.multiscale_sizes(size)[:-1]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(int(v) for v in value)
    raise UserError(f"schedule: expected a list of sizes in px (e.g. [256]) or {SQRT2}, got {value!r}")


def optim_config(o: OptimSchema, steps: int) -> optimize.OptimConfig:
    """The library's optimiser settings from the ``optim`` group and a step count."""
    try:
        return optimize.OptimConfig(
            name=o.name.value,
            steps=steps,
            lr=o.lr,
            memory=o.memory,
            linesearch=o.linesearch.value,
            max_linesearch_steps=o.max_linesearch_steps,
            project=o.project,
            average=o.average,
        )
    except ValueError as e:
        raise UserError(f"optim: {e}") from None


def train_settings(cfg: DictConfig | TrainSchema, typed: dict | None = None) -> train.TrainConfig:
    """Check every value of an ``nstyle-train`` config and build the library's :class:`TrainConfig`."""
    if isinstance(cfg, DictConfig):
        check_known_keys(cfg, TrainSchema)
        c: TrainSchema = OmegaConf.to_object(cfg)
    else:
        c = cfg
    try:
        net = fastnet.FastNetConfig(
            width=c.net.width, blocks=c.net.blocks, upsample=c.net.upsample, output=c.net.output
        )
    except ValueError as e:
        raise UserError(f"net: {e}") from None
    style = _plain(c.style)
    if style is not None and not isinstance(style, str):
        if not isinstance(style, list) or not style:
            raise UserError(f"style: expected a path or a list of paths, got {style!r}")
        style = tuple(style)
    lc = c.loss
    layers = {}
    for key in ("content_layers", "style_layers"):
        names = getattr(lc, key)
        if names is not None:
            for name in names:
                try:
                    vgg.canonical(name, lc.network if lc.network in vgg.ARCH_LAYERS else "vgg16")
                except ValueError as e:
                    raise UserError(f"loss.{key}: {e}") from None
        layers[key] = tuple(names) if names is not None else None
    weights = {
        k: check_weight(f"loss.{k}", getattr(lc, k), typed) for k in ("content_weight", "style_weight", "tv_weight")
    }
    loss = train.TrainLoss(
        network=lc.network,
        **layers,
        normalize=lc.normalize,
        **weights,
        style_size=lc.style_size,
        pooling=lc.pooling.value,
    )
    optim = train.LRSchedule(
        lr=c.optim.lr,
        schedule=c.optim.schedule,
        warmup_steps=c.optim.warmup_steps,
        final_fraction=c.optim.final_fraction,
    )
    if len(c.crop_scale) != 2:
        raise UserError(f"crop_scale: expected [low, high], got {list(c.crop_scale)}")
    plain = {
        f.name: getattr(c, f.name)
        for f in dataclasses.fields(TrainSchema)
        if f.name not in ("style", "net", "loss", "optim", "crop_scale", "validation")
    }
    return train.TrainConfig(
        **plain,
        style=style,
        net=net,
        loss=loss,
        optim=optim,
        crop_scale=tuple(float(v) for v in c.crop_scale),
        validation=tuple(c.validation),
    )
