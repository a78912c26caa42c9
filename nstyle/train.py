"""Train a FastNet for one style on a folder of photos (Johnson et al. 2016).

    nstyle-train style=starry.jpg data=/data/coco/train2014 size=256 steps=40000 batch=4 seed=0
    nstyle-train train/experiment=debug style=builtin:chelsea data=DIR      # tiny, seconds

The Hydra run directory holds ``checkpoints/``, ``metrics.csv`` (loss terms every
``log_every`` steps), ``loss.png``, ``samples/`` (the fixed validation images stylised every
``sample_every`` steps), ``model.npz`` (the exported network, see :mod:`nstyle.fastnet`) and
``metrics.json``. Running the same command with ``hydra.run.dir=`` an existing run resumes
it from its last checkpoint: same step, optimiser state, data order and RNG, so the result
equals an uninterrupted run.

Library entry point: :func:`train` takes a :class:`TrainConfig` dataclass and a directory.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nstyle import _xla, checkpoint, data, fastnet, images, losses, runinfo, vgg, weights

log = logging.getLogger("nstyle.train")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Johnson et al.'s layers for VGG16; for VGG19 the same positions (last ReLU of blocks 1-4)
DEFAULT_LAYERS = {
    "vgg16": (("relu2_2",), ("relu1_2", "relu2_2", "relu3_3", "relu4_3")),
    "vgg19": (("relu2_2",), ("relu1_2", "relu2_2", "relu3_4", "relu4_4")),
}


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass
class NetConfig:
    width: int = 32  # paper: 32 (then 64, 128)
    blocks: int = 5  # paper: 5 residual blocks
    upsample: str = "nearest"  # "nearest" + conv (no checkerboard) or "transpose" (the paper's)


@dataclasses.dataclass
class LossConfig:
    """Loss weights in mean-squared-error units, as in PyTorch's fast_neural_style example.

    That example uses the same torchvision VGG16 and input normalisation as nstyle, so its
    weights carry over: content_weight · mean((F − P)²) + style_weight · Σ_l mean((G_l − A_l)²)
    with G = F Fᵀ / (N·M), + tv_weight · mean over pixels of (∂x² + ∂y²). See
    :func:`perceptual_loss_for` for the exact conversion to METHOD.md's sums.
    """

    network: str = "vgg16"  # "vgg16" (Johnson et al.) or "vgg19"
    content_layers: Optional[list] = None  # None: the network's default (relu2_2)
    style_layers: Optional[list] = None  # None: relu1_2, relu2_2, relu3_3, relu4_3 (VGG16)
    content_weight: float = 1e5
    style_weight: float = 1e10
    tv_weight: float = 0.0
    style_size: Optional[int] = None  # longest side of the style image for its Gram targets; None: size
    pooling: str = "max"  # the loss network as trained


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3  # Adam, as in the paper
    schedule: str = "constant"  # "constant" or "cosine" (warmup then cosine decay to lr·final_fraction)
    warmup_steps: int = 0
    final_fraction: float = 0.1


@dataclasses.dataclass
class TrainConfig:
    style: Optional[str] = None  # style image path or builtin:<name> (required)
    data: Optional[str] = None  # folder of training photos (required)
    size: int = 256  # training crop side (px); a multiple of 4
    steps: int = 40000  # paper: 40k steps of batch 4 ≈ 2 epochs of COCO
    batch: int = 4  # global batch, split over all devices
    seed: int = 0
    net: NetConfig = dataclasses.field(default_factory=NetConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    crop_scale: list = dataclasses.field(default_factory=lambda: [0.6, 1.0])  # crop side / shorter side
    log_every: int = 20
    sample_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validation: list = dataclasses.field(default_factory=lambda: ["builtin:chelsea", "builtin:astronaut", "builtin:coffee"])
    sample_size: int = 256  # longest side of the validation stylisations
    prefetch: int = 2  # batches prepared ahead by the loader thread
    progress: bool = True
    resume: bool = True  # continue from checkpoints/ in the run directory if there are any
    kill_at_step: Optional[int] = None  # tests only: SIGKILL this process right after this step


class UserError(ValueError):
    """A problem with the command line or the files it names; printed as one line."""


# ----------------------------------------------------------------------------- loss


def perceptual_loss_for(cfg: LossConfig, size: int, params: vgg.VGGParams) -> tuple[losses.PerceptualLoss, float]:
    """Turn MSE-unit weights into a :class:`losses.PerceptualLoss` (METHOD.md sums) for ``size`` crops.

    With N_l channels and M_l positions at layer l:
      content  w_c · Σ(F−P)²/(N M)           = (2 w_c / (N M)) · ½Σ(F−P)²       -> content weight 2 w_c/(N M)
      style    w_s · Σ(G/(NM) − A/(NM))²/N²  = (4 w_s / N²) · Σ(G/M−Â)²/(4N²)   -> style weight 4 w_s / N²
      TV       w_tv · tv / (3 H W)                                             -> tv weight w_tv / (3 H W)
    E.g. at 256 px the VGG16 content weight is 2e5 / (128·128²) ≈ 0.095, and the style weights
    are 9.8e6, 2.4e6, 6.1e5, 1.5e5 for relu1_2 … relu4_3. Returns ``(loss, tv_scale)``.
    """
    if cfg.network not in DEFAULT_LAYERS:
        raise UserError(f"loss.network must be vgg16 or vgg19, got '{cfg.network}'")
    content_layers = tuple(cfg.content_layers or DEFAULT_LAYERS[cfg.network][0])
    style_layers = tuple(cfg.style_layers or DEFAULT_LAYERS[cfg.network][1])
    try:
        shapes = jax.eval_shape(lambda x: vgg.features(params, x, content_layers + style_layers, cfg.pooling),
                                jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    except ValueError as e:
        raise UserError(str(e)) from None
    cw = tuple(2.0 * cfg.content_weight / (s.shape[3] * s.shape[1] * s.shape[2]) for s in (shapes[l] for l in content_layers))
    sw = tuple(4.0 * cfg.style_weight / shapes[l].shape[3] ** 2 for l in style_layers)
    tv = cfg.tv_weight / (3.0 * size * size)
    loss = losses.PerceptualLoss(content_layers=content_layers, content_weights=cw, style_layers=style_layers,
                                 style_weights=sw, alpha=1.0, beta=1.0, tv_weight=tv, pooling=cfg.pooling)
    return loss, tv


# ----------------------------------------------------------------------------- step


class TrainState(NamedTuple):
    params: Any  # FastNet parameters, nested dict
    opt_state: Any  # optax Adam state (same tree as params, twice, plus counts)
    step: jax.Array  # () int32, steps taken so far


def make_optimizer(cfg: OptimConfig, steps: int) -> optax.GradientTransformation:
    if cfg.schedule == "constant":
        lr = cfg.lr
    elif cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 0), max(steps, cfg.warmup_steps + 1),
                                                end_value=cfg.lr * cfg.final_fraction)
    else:
        raise UserError(f"optim.schedule must be 'constant' or 'cosine', got '{cfg.schedule}'")
    return optax.adam(lr)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over the batch axis of all (or the given) devices."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), ("data",))


def make_train_step(net: fastnet.FastNetConfig, loss: losses.PerceptualLoss, optimizer: optax.GradientTransformation,
                    loss_params: vgg.VGGParams, style: dict, mesh: Mesh):
    """``train_step(state, batch, key) -> (state, metrics)``, jitted, data-parallel over ``mesh``.

    ``batch`` (B, H, W, 3) is split over the mesh's 'data' axis; params and optimiser state
    are replicated, so XLA inserts the gradient all-reduce. ``state`` is donated. The step's
    randomness (a horizontal flip per image) is ``fold_in(key, state.step)``, so a resumed
    run draws the same numbers.
    """
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P("data"))

    def step_fn(frozen, state: TrainState, batch: jax.Array, key: jax.Array):
        loss_params, style = frozen
        rng = jax.random.fold_in(key, state.step)
        flip = jax.random.bernoulli(rng, 0.5, (batch.shape[0],))
        batch = jnp.where(flip[:, None, None, None], batch[:, :, ::-1, :], batch)  # (B, H, W, 3)
        # the content target is the input itself; VGG is frozen
        content = jax.lax.stop_gradient(losses.content_targets(loss_params, batch, loss))

        def objective(params):
            out = fastnet.apply(net, params, batch)  # (B, H, W, 3)
            total, aux = losses.perceptual_loss(loss_params, out, losses.Targets(content, style), loss)
            return jnp.mean(total), aux

        (value, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value, "content": jnp.mean(aux["content"]), "style": jnp.mean(aux["style"]),
                   "tv": loss.tv_weight * jnp.mean(aux["tv"]), "grad_norm": optax.global_norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    jitted = _xla.jit(step_fn, donate_argnums=(1,), in_shardings=(replicated, replicated, split, replicated),
                      out_shardings=(replicated, replicated))
    frozen = jax.device_put((vgg.with_backward_kernels(loss_params, loss.layers), style), replicated)
    return functools.partial(jitted, frozen)


def init_state(net: fastnet.FastNetConfig, optimizer: optax.GradientTransformation, key: jax.Array,
               mesh: Mesh | None = None) -> TrainState:
    """Fresh state, replicated over ``mesh``; one jitted call (eager init compiles op by op)."""
    def build(key):
        params = fastnet.FastNet(net).init(key, jnp.zeros((1, 32, 32, 3), jnp.float32))["params"]
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    out = None if mesh is None else NamedSharding(mesh, P())
    return jax.jit(build, out_shardings=out)(key)


def shard_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Host batch -> global array split over 'data'. Multi-host: ``batch`` is this process's slice."""
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.make_array_from_process_local_data(sharding, batch)


# ----------------------------------------------------------------------------- outputs


CSV_FIELDS = ("step", "loss", "content", "style", "tv", "grad_norm", "images_per_s", "time_s")


def _truncate_csv(path: Path, upto: int) -> None:
    """Drop rows logged after step ``upto`` (a killed run logged past its last checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= upto]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_losses(csv_path: Path, png_path: Path) -> None:
    """Loss terms against step, log scale, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key in ("loss", "content", "style", "tv"):
        vals = [float(r[key]) for r in rows]
        if max(vals) > 0:
            ax.plot(steps, vals, label=key, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted loss (mean per image)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)


def _grid(rows: list[list[np.ndarray]], pad: int = 4) -> np.ndarray:
    """Rows of (h, w, 3) images, each row one height -> one white-padded (H, W, 3) image."""
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
        out += [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=1.0), np.ones((pad, width, 3), np.float32)]
    return np.concatenate(out[:-1], axis=0)


# ----------------------------------------------------------------------------- training


def _check(cfg: TrainConfig) -> None:
    if not cfg.style:
        raise UserError("no style image; add style=PATH (an image file or builtin:<name>)")
    if not cfg.data:
        raise UserError("no training data; add data=DIR (a folder of photos, e.g. COCO train2014)")
    if cfg.size < 16 or cfg.size % 4:
        raise UserError(f"size={cfg.size}: use a multiple of 4 of at least 16 (the network halves twice)")
    if cfg.steps < 1 or cfg.batch < 1:
        raise UserError(f"steps={cfg.steps}, batch={cfg.batch}: both must be >= 1")
    n = jax.device_count()
    if cfg.batch % n:
        raise UserError(f"batch={cfg.batch} does not split over {n} devices; use a multiple of {n}")
    lo, hi = (float(v) for v in cfg.crop_scale)
    if not 0 < lo <= hi <= 1:
        raise UserError(f"crop_scale={list(cfg.crop_scale)}: need 0 < low <= high <= 1")
    for name in ("log_every", "sample_every", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be >= 1")


def train(cfg: TrainConfig, workdir: str | os.PathLike) -> dict:
    """Train (or resume) in ``workdir``; returns the summary also written to ``metrics.json``."""
    _check(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        style_img = images.load_image(cfg.style, max_side=cfg.loss.style_size or cfg.size)  # (Hs, Ws, 3)
        val = [images.load_image(v, max_side=cfg.sample_size) for v in cfg.validation]
    except images.ImageError as e:
        raise UserError(str(e)) from None
    try:
        folder = data.ImageFolder.scan(cfg.data)
    except data.DataError as e:
        raise UserError(str(e)) from None
    try:
        net = fastnet.FastNetConfig(width=cfg.net.width, blocks=cfg.net.blocks, upsample=cfg.net.upsample)
    except ValueError as e:
        raise UserError(f"net: {e}") from None
    loss_params = weights.load(cfg.loss.network)
    loss, _ = perceptual_loss_for(cfg.loss, cfg.size, loss_params)
    style = losses.style_targets(loss_params, [jnp.asarray(style_img[None])], loss)  # {layer: (1, N, N)}
    optimizer = make_optimizer(cfg.optim, cfg.steps)
    mesh = make_mesh()
    split = NamedSharding(mesh, P("data"))
    train_step = make_train_step(net, loss, optimizer, loss_params, style, mesh)

    init_key, step_key = jax.random.split(jax.random.key(cfg.seed))
    state = init_state(net, optimizer, init_key, mesh)
    ckpt_dir = workdir / "checkpoints"
    csv_path = workdir / "metrics.csv"
    start = 0
    if not cfg.resume and checkpoint.all_steps(ckpt_dir):
        raise UserError(f"{ckpt_dir} already holds checkpoints and resume=false; use a new hydra.run.dir "
                        f"(or resume=true to continue that run)")
    last = checkpoint.latest(ckpt_dir) if cfg.resume else None
    if last is not None:
        tree, info = checkpoint.restore(last, like=state._asdict())
        for key in ("seed", "batch", "size"):
            if info.get("config", {}).get(key) != getattr(cfg, key):
                raise UserError(f"{workdir}: its checkpoints were made with {key}={info['config'].get(key)}, "
                                f"not {getattr(cfg, key)}; use the same {key} or a new run directory")
        if info.get("data", {}).get("digest") != folder.digest:
            log.warning("the data folder changed since the checkpoint: batches after step %d differ from the original run", info["step"])
        state = TrainState(**tree)
        start = int(state.step)
        if start > cfg.steps:
            raise UserError(f"{last} is at step {start}, past steps={cfg.steps}; give steps>={start}")
        log.info("resuming from %s (step %d)", last.name, start)
        _truncate_csv(csv_path, start)
    elif csv_path.exists():  # starting afresh in a used directory: the old log is not this run's
        _truncate_csv(csv_path, 0)
    state = jax.device_put(state, NamedSharding(mesh, P()))

    if jax.process_count() > 1:
        shard = (jax.process_index(), jax.process_count())
    else:
        shard = (0, 1)
    batches = data.Batches(folder, cfg.size, cfg.batch, cfg.seed, start=start * cfg.batch,
                           scale=tuple(cfg.crop_scale), shard=shard)
    loader = data.Prefetch(lambda: shard_batch(batches.next_batch(), split), depth=cfg.prefetch)

    val_batches = [jnp.asarray(v[None]) for v in val]
    stylise = _xla.jit(lambda p, x: fastnet.stylise(net, p, x))
    samples_dir = workdir / "samples"

    def save_samples(step: int, params) -> Path:
        outs = [np.asarray(stylise(params, v))[0] for v in val_batches]
        return images.save_image(samples_dir / f"step_{step:07d}.png", _grid([val, outs]))

    def ckpt_info(step: int) -> dict:
        return {"config": {"seed": cfg.seed, "batch": cfg.batch, "size": cfg.size},
                "data": {"samples_seen": step * cfg.batch, "digest": folder.digest, "files": len(folder),
                         "skipped_files": batches.skipped},
                "rng": {"seed": cfg.seed, "step_key": "fold_in(split(key(seed))[1], step)"},
                "fastnet": dataclasses.asdict(net), "time": time.time()}

    new_csv = not csv_path.exists()
    csv_file = open(csv_path, "a", newline="")
    writer = csv.DictWriter(csv_file, CSV_FIELDS)
    if new_csv:
        writer.writeheader()
    pending: list[dict] = []
    t_last, t0 = time.perf_counter(), time.perf_counter()
    last_row: dict = {}
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)
    try:
        for step in range(start, cfg.steps):
            batch = loader.next()
            state, metrics = train_step(state, batch, step_key)
            pending.append(metrics)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                host = jax.device_get(pending)  # one sync per log interval
                now = time.perf_counter()
                row = {k: float(np.mean([m[k] for m in host])) for k in ("loss", "content", "style", "tv", "grad_norm")}
                row.update(step=done, images_per_s=len(host) * cfg.batch / max(now - t_last, 1e-9), time_s=now - t0)
                if not np.isfinite(row["loss"]):
                    raise FloatingPointError(f"loss became {row['loss']} at step {done}; lower optim.lr or the loss weights")
                writer.writerow(row)
                csv_file.flush()
                pending, t_last, last_row = [], now, row
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.3g}", content=f"{row['content']:.3g}", style=f"{row['style']:.3g}",
                                    tv=f"{row['tv']:.2g}", img_s=f"{row['images_per_s']:.1f}", refresh=False)
            if bar is not None:
                bar.update(1)
            if done % cfg.sample_every == 0 or done == cfg.steps:
                save_samples(done, state.params)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint.save(ckpt_dir, done, state._asdict(), ckpt_info(done), keep=cfg.keep_checkpoints)
                plot_losses(csv_path, workdir / "loss.png")
            if cfg.kill_at_step is not None and done == cfg.kill_at_step:
                csv_file.flush()
                os.kill(os.getpid(), signal.SIGKILL)  # a crash: no cleanup, nothing flushed but what is on disk
    finally:
        loader.close()
        csv_file.close()
        if bar is not None:
            bar.close()

    if not last_row and csv_path.exists():  # nothing trained in this process: report the log's last row
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        last_row = {k: float(v) for k, v in rows[-1].items()} if rows else {}
    if not (samples_dir / f"step_{cfg.steps:07d}.png").exists():  # e.g. resumed at the last step
        save_samples(cfg.steps, state.params)
    params = jax.device_get(state.params)
    model_meta = {"style": str(cfg.style), "steps": cfg.steps, "size": cfg.size, "batch": cfg.batch, "seed": cfg.seed,
                  "loss_network": cfg.loss.network, "checkpoint": str(checkpoint.path_for(ckpt_dir, cfg.steps).name)}
    fastnet.export_model(workdir / "model.npz", net, params, model_meta)
    plot_losses(csv_path, workdir / "loss.png")
    summary = {
        "steps": cfg.steps, "resumed_from_step": start, "final": last_row,
        "images_per_s": last_row.get("images_per_s"),
        "devices": jax.device_count(), "platform": jax.devices()[0].platform,
        "data": {"folder": folder.root, "files": len(folder), "ignored_non_images": folder.ignored,
                 "skipped_unreadable": batches.skipped},
        "model": "model.npz", "fastnet": dataclasses.asdict(net), "param_count": fastnet.param_count(params),
        "loss": {"network": cfg.loss.network, "content_layers": list(loss.content_layers),
                 "style_layers": list(loss.style_layers), "weights_checksum": loss_params.checksum},
        "run": runinfo.collect(params=loss_params, seed=cfg.seed),
    }
    runinfo.write_json_atomic(workdir / "metrics.json", summary)
    return summary


# ----------------------------------------------------------------------------- CLI


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    _register()

    # an absolute path: relative ones resolve as a Python module when run as a console script
    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="train")
    def run(dcfg) -> float:
        import logging

        logging.getLogger("jax").setLevel(logging.WARNING)  # Hydra logs INFO; jax's backend probing is noise
        cfg: TrainConfig = OmegaConf.to_object(dcfg)
        workdir = Path(HydraConfig.get().runtime.output_dir)
        from nstyle import _xla

        _xla.persistent_cache()  # a resumed or repeated run reuses the compiled train step
        try:
            summary = train(cfg, workdir)
        except (UserError, checkpoint.CheckpointError, weights.WeightsError) as e:
            print(f"nstyle-train: error: {e}", file=sys.stderr)
            sys.exit(2)
        print(f"nstyle-train: wrote {workdir / 'model.npz'} (final loss {summary['final'].get('loss', float('nan')):.4g})")
        return float(summary["final"].get("loss", float("nan")))

    run()


if __name__ == "__main__":
    main()
