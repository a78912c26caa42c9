"""Content reconstruction per layer (Gatys, Ecker, Bethge 2016, Fig. 1, content row).

    python -m experiments.content_reconstruction size=256 optim.steps=500 publish=experiments/results

From white noise, optimise an image so that its VGG19 response at ONE layer matches the
content image's (α = 1, β = 0), for each of ``layers`` (conv1_2 … conv5_2 by default).
The paper's finding: lower layers reproduce the image almost exactly; higher layers keep
the objects and their arrangement but lose the exact pixel values — the pixel error grows
with depth while the image stays recognisable.

Writes into the run directory (``outputs/experiments/content_reconstruction/<time>/``):
``original.png``, ``recon_<layer>.png``, ``content_reconstruction.png`` (the figure),
``content_reconstruction_curves.png`` (loss curves), ``content_reconstruction.csv`` /
``.md`` (per layer: final content loss, pixel MSE, PSNR, LPIPS to the original) and
``metrics.json`` (histories, timings, settings). ``debug=tiny`` runs it in seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from experiments import _common
from nstyle import _rundir, images, metrics
from nstyle.cli import app, collect, figures
from nstyle.cli.errors import command

NAME = "content_reconstruction"
PROG = f"python -m experiments.{NAME}"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class ContentReconstructionConfig(_common.ReconstructionSchema):
    layers: list = dataclasses.field(default_factory=lambda: ["conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2"])


ConfigStore.instance().store(name=f"{NAME}_schema", node=ContentReconstructionConfig)


def reconstruct(params, target: np.ndarray, layer: str, cfg: ContentReconstructionConfig, key):
    """Match only ``layer``'s content features of ``target`` (H, W, 3), starting from noise."""
    from nstyle import losses, optimize

    loss = losses.PerceptualLoss(
        content_layers=(layer,),
        content_weights=(1.0,),
        style_layers=(),
        style_weights=(),
        alpha=1.0,
        beta=0.0,
        pooling=cfg.pooling,
    )
    return optimize.stylize(params, loss, content=target, styles=[], init=cfg.init, key=key, optim=cfg.optim.build())


def content_loss_of(params, image: np.ndarray, target: np.ndarray, layer: str, pooling: str) -> float:
    """½ Σ (F − P)² at ``layer`` of ``image`` against ``target`` (both (H, W, 3))."""
    import jax.numpy as jnp

    from nstyle import losses, vgg

    f = vgg.features(params, jnp.asarray(np.stack([image, target])), (layer,), pooling)[layer]  # (2, h, w, N)
    return float(np.asarray(losses.content_loss(f[:1], f[1:]))[0])


def run(cfg: ContentReconstructionConfig, out: Path, on_start=None) -> dict:
    """The whole experiment; returns the table rows (also written to ``out``, which the run
    holds locked from its first check to its last write)."""
    with _rundir.hold(out):
        return _run(cfg, Path(out), on_start)


def _run(cfg: ContentReconstructionConfig, out: Path, on_start) -> dict:
    import jax

    dest, original, params = _common.setup(cfg, NAME, out, "original.png", on_start)  # original: (H, W, 3)

    key = jax.random.key(cfg.seed)
    rows, recons, curves, histories = [], [], {}, {}
    for layer in cfg.layers:
        t0 = time.perf_counter()
        fingerprint = {"layer": layer, **_common.dump_config(cfg), "publish": None, "overwrite": None, "resume": None}
        r = _common.cached(
            out, f"layer_{layer}", fingerprint, cfg.resume, lambda: reconstruct(params, original, layer, cfg, key)
        )  # the same noise for every layer
        images.save_image(out / f"recon_{layer}.png", r.image)
        hist = np.asarray(r.history.get("content", r.history.get("loss", [])), np.float64)
        clipped = content_loss_of(params, r.image, original, layer, cfg.pooling)  # the saved image, in [0, 1]
        row = {
            "layer": layer,
            "content_loss": clipped,
            "content_loss_rel": clipped / hist[0] if len(hist) and hist[0] > 0 else None,
            "content_loss_unclipped": r.final[
                "content"
            ],  # the optimiser's result, its best evaluated iterate (pixels unconstrained)
            "pixel_mse": metrics.pixel_mse(r.image, original),
            "psnr_db": metrics.psnr(r.image, original),
            "lpips": _common.lpips(r.image, original, cfg.lpips_net),
            "iterations": r.iterations,
            "evals": r.evals,
            "wall_time_s": r.wall_s,
            "compile_s": r.compile_s,
        }
        rows.append(row)
        recons.append(r.image)
        if len(hist):
            curves[layer] = hist / hist[0]  # scales differ by orders of magnitude across layers
        histories[layer] = r.history
        log.info(
            "%s: content loss %.4g, MSE %.5f, PSNR %.2f dB, LPIPS %s (%.1f s)",
            layer,
            row["content_loss"],
            row["pixel_mse"],
            row["psnr_db"],
            row["lpips"],
            time.perf_counter() - t0,
        )

    mses = [r["pixel_mse"] for r in rows]
    rising = all(b >= a for a, b in zip(mses, mses[1:]))
    if not rising:
        log.warning("pixel MSE does not rise monotonically with depth: %s", [f"{m:.4g}" for m in mses])
    settings = {
        "image": cfg.image,
        "size": f"{original.shape[1]}×{original.shape[0]}",
        "init": cfg.init,
        "pooling": cfg.pooling,
        "seed": cfg.seed,
        **_common.settings_of(cfg, ["network"]),
    }
    sub = [
        f"MSE {r['pixel_mse']:.4f}  PSNR {r['psnr_db']:.1f} dB"
        + (f"\nLPIPS {r['lpips']:.3f}" if r["lpips"] is not None else "")
        for r in rows
    ]
    fig = figures.image_row(
        [original, *recons],
        ["original", *cfg.layers],
        sublabels=["", *sub],
        title="Content reconstructions from white noise, one VGG layer each",
        settings=settings,
    )
    fig_path = figures.save_figure(fig, out / f"{NAME}.png")
    fig = figures.loss_curves(
        curves,
        title="Content loss during reconstruction (relative to its start)",
        ylabel="content loss / initial",
        settings=settings,
        legend_title="layer",
    )
    curves_path = figures.save_figure(fig, out / f"{NAME}_curves.png")
    csv_path, md_path = _common.write_table(rows, out, NAME)
    _common.write_metrics(
        out,
        {
            "experiment": NAME,
            "config": _common.dump_config(cfg),
            "rows": rows,
            "pixel_mse_rises_with_depth": rising,
            "image_shape": list(original.shape),
            "history": histories,
        },
        seed=cfg.seed,
        params=params,
    )
    published = _common.publish([csv_path, md_path, fig_path, curves_path], dest)
    for p in published:
        log.info("published %s", p)
    return {"rows": rows, "rising": rising, "figure": fig_path, "csv": csv_path}


@command(PROG, exits=True)
def task(dcfg) -> None:
    cfg = OmegaConf.to_object(dcfg)  # the dataclass: library code never sees a DictConfig
    out = _common.run_dir()
    res = run(cfg, out, on_start=lambda: app.write_hydra_files(out, dcfg))
    print(collect.to_markdown(res["rows"], ["layer", "content_loss", "pixel_mse", "psnr_db", "lpips", "wall_time_s"]))
    print(f"figure: {res['figure']}")


def main(argv=None) -> None:
    """Console entry: the run directory is created and locked before Hydra starts (see
    :func:`nstyle.cli.app.hydra_main`); a bad override is one line, exit status 2."""
    app.hydra_main(
        PROG, NAME, task, argv, config_dir=Path(__file__).parent / "conf", schema_cls=ContentReconstructionConfig
    )


if __name__ == "__main__":
    main()
