"""Schemas of the ``nstyle-stylize`` configuration, registered in Hydra's ConfigStore.

``conf/config.yaml`` starts its defaults list with ``stylize_schema``; every group file
(``conf/loss/paper.yaml`` …) is merged into the typed nodes below, so a misspelt key or a
value of the wrong type is refused by OmegaConf before anything runs. Value checks Hydra
cannot express (negative weights, unknown layers, an empty style list) are done by
:func:`to_library`, which turns the config into the library's frozen dataclasses — library
code never sees a DictConfig.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from nstyle import losses, optimize, vgg


def job_dirname(override_dirname: str) -> str:
    """A sweep job's directory name from Hydra's ``override_dirname``: path separators become
    ``_``, so ``style=/data/paintings/x.jpg`` names one directory, not a nest of them."""
    return str(override_dirname).replace("/", "_").replace("\\", "_")


# conf/*.yaml name job dirs ${nstyle_dirname:${hydra.job.override_dirname}}; registered on
# import, so a launcher's worker process that unpickles the task has it too
OmegaConf.register_new_resolver("nstyle_dirname", job_dirname, replace=True)

PAPER_STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


class Pooling(enum.Enum):
    avg = "avg"  # Gatys et al.: better gradient flow, smoother results
    max = "max"  # the network as trained


class OptimName(enum.Enum):
    lbfgs = "lbfgs"
    adam = "adam"


class LineSearch(enum.Enum):
    none = "none"
    zoom = "zoom"


class ColorMode(enum.Enum):
    off = "off"
    luminance = "luminance"  # Gatys et al. 2017: transfer on luminance, keep the content's colour
    histogram = "histogram"  # Gatys et al. 2017: recolour the style to the content's colour statistics


@dataclasses.dataclass
class NetworkConfig:
    arch: str = "vgg19"  # vgg19 (Caffe, the paper's) or vgg16 (torchvision)
    pooling: Pooling = Pooling.avg


@dataclasses.dataclass
class LossConfig:
    alpha: float = 1.0  # content weight
    beta: float = 1e3  # style weight; α/β = 1e-3 with METHOD.md's normalisations, as in the paper
    tv_weight: float = 0.0  # total variation (not in the paper)
    content_layers: list[str] = dataclasses.field(default_factory=lambda: ["conv4_2"])
    content_weights: Optional[list[float]] = None  # None: 1 each
    style_layers: list[str] = dataclasses.field(default_factory=lambda: list(PAPER_STYLE_LAYERS))
    style_weights: Optional[list[float]] = None  # None: 1/n each (the paper's w_l = 1/5)


@dataclasses.dataclass
class OptimSchema:
    name: OptimName = OptimName.lbfgs
    lr: Optional[float] = None  # None: 1.0 for L-BFGS (unit quasi-Newton step), 0.02 for Adam
    memory: int = 10  # L-BFGS history
    linesearch: LineSearch = LineSearch.none  # none: one evaluation per iteration
    max_linesearch_steps: int = 20
    project: bool = False  # clip to [0, 1] after every step (for Adam)


@dataclasses.dataclass
class StylizeConfig:
    # stable top-level names (README; checks rely on them)
    content: Optional[str] = "builtin:chelsea"  # path or builtin:NAME; null for texture synthesis
    style: Any = "builtin:ihc"  # a path/builtin, or a list of them (blended)
    size: int = 256  # longest side of the output, px
    steps: int = 200  # iterations (of the last stage, with a schedule)
    seed: int = 0
    overwrite: bool = False  # allow replacing an existing result in the run directory
    # everything else
    init: str = "content"  # content | noise | style | PATH to an image
    style_blend: Optional[list[float]] = None  # one weight per style image; None: equal
    style_scale: float = 1.0  # style image's longest side relative to the output's
    schedule: list[int] = dataclasses.field(default_factory=list)  # coarse-to-fine sizes before `size`, e.g. [256]
    schedule_steps: Optional[list[int]] = None  # iterations of each schedule stage; None: `steps` each
    preserve_color: ColorMode = ColorMode.off
    snapshot_every: int = 50  # save snapshots/step_XXXX.png every N iterations; 0: never
    quiet: Optional[bool] = None  # no progress bar; None: quiet in multirun sweeps only
    max_memory_gb: Optional[float] = None  # activation budget; None: the memory available now
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimSchema = dataclasses.field(default_factory=OptimSchema)


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="stylize_schema", node=StylizeConfig)


@dataclasses.dataclass(frozen=True)
class Settings:
    """A validated run, in the library's own types."""

    loss: losses.PerceptualLoss
    optim: optimize.OptimConfig
    arch: str
    content: Optional[str]
    styles: tuple[str, ...]
    style_blend: Optional[tuple[float, ...]]
    style_scale: float
    sizes: tuple[int, ...]  # stage sizes, the last one is `size`
    stage_steps: tuple[int, ...]
    init: str
    preserve_color: str
    snapshot_every: int
    seed: int


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, (DictConfig, ListConfig)) else x


def to_library(cfg: DictConfig | StylizeConfig) -> Settings:
    """Check every value and build :class:`Settings`; raises ``ValueError`` with one line."""
    c: StylizeConfig = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
    arch = c.network.arch
    if arch not in vgg.ARCH_LAYERS:
        raise ValueError(f"network.arch: unknown network '{arch}' (expected one of {', '.join(vgg.ARCH_LAYERS)})")

    style = _plain(c.style)
    styles = (style,) if isinstance(style, str) else tuple(style or ())
    if not all(isinstance(s, str) and s for s in styles):
        raise ValueError(f"style: expected a path or a list of paths, got {style!r}")

    lc = c.loss
    cw = lc.content_weights if lc.content_weights is not None else [1.0] * len(lc.content_layers)
    sw = lc.style_weights if lc.style_weights is not None else [1.0 / max(len(lc.style_layers), 1)] * len(lc.style_layers)
    loss = losses.PerceptualLoss(
        content_layers=tuple(lc.content_layers), content_weights=tuple(float(w) for w in cw),
        style_layers=tuple(lc.style_layers), style_weights=tuple(float(w) for w in sw),
        alpha=float(lc.alpha), beta=float(lc.beta), tv_weight=float(lc.tv_weight), pooling=c.network.pooling.value,
    )  # raises ValueError for negative weights, count mismatches
    optimize.check_layers(loss, arch)
    if not loss.uses_content and not loss.uses_style:
        raise ValueError("loss: both alpha and beta are 0 (or no layers): nothing to optimise")
    if loss.uses_style and not styles:
        raise ValueError("style: no style image given but beta > 0; give style=PATH or set loss.beta=0")
    if c.content is None and loss.uses_content:
        raise ValueError("content: no content image given but alpha > 0; give content=PATH or set loss.alpha=0")
    if c.content is None and c.init == "content":
        raise ValueError("init=content needs a content image; use init=noise for texture synthesis")
    if c.content is None and c.preserve_color.value != "off":
        raise ValueError(f"preserve_color={c.preserve_color.value} needs a content image to take the colours from")
    blend = None
    if c.style_blend is not None:
        blend = tuple(float(b) for b in c.style_blend)
        if len(blend) != len(styles):
            raise ValueError(f"style_blend: {len(styles)} style images but {len(blend)} blend weights")
        if any(b < 0 for b in blend) or sum(blend) <= 0:
            raise ValueError(f"style_blend: weights must be >= 0 and not all 0, got {list(blend)}")
    if not c.style_scale > 0:
        raise ValueError(f"style_scale must be > 0, got {c.style_scale}")
    if c.size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {c.size}")
    sizes = tuple(int(s) for s in c.schedule) + (int(c.size),)
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
        raise ValueError(f"schedule: sizes must grow and end below size={c.size}, got {list(c.schedule)}")
    if c.schedule_steps is not None and len(c.schedule_steps) != len(c.schedule):
        raise ValueError(f"schedule_steps: {len(c.schedule)} schedule sizes but {len(c.schedule_steps)} step counts")
    stage_steps = tuple(int(s) for s in (c.schedule_steps if c.schedule_steps is not None else [c.steps] * len(c.schedule))) + (int(c.steps),)
    if any(s < 0 for s in stage_steps):
        raise ValueError(f"steps must be >= 0, got {list(stage_steps)}")
    if c.snapshot_every < 0:
        raise ValueError(f"snapshot_every must be >= 0 (0: no snapshots), got {c.snapshot_every}")
    o = c.optim
    optim = optimize.OptimConfig(name=o.name.value, steps=int(c.steps), lr=o.lr, memory=o.memory,
                                 linesearch=o.linesearch.value, max_linesearch_steps=o.max_linesearch_steps,
                                 project=o.project)
    return Settings(loss=loss, optim=optim, arch=arch, content=c.content, styles=styles if loss.uses_style else (),
                    style_blend=blend if loss.uses_style else None, style_scale=float(c.style_scale), sizes=sizes,
                    stage_steps=stage_steps, init=c.init, preserve_color=c.preserve_color.value,
                    snapshot_every=int(c.snapshot_every), seed=int(c.seed))
