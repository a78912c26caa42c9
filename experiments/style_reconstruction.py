"""Style reconstruction per layer subset (Gatys, Ecker, Bethge 2016, Fig. 1, style row).

    python -m experiments.style_reconstruction image=painting.jpg size=256 optim.steps=500 publish=experiments/results

From white noise, optimise an image so that its Gram matrices match the style image's on a
growing subset of layers — {conv1_1}, {conv1_1, conv2_1}, … {conv1_1 … conv5_1}, each layer
weighted 1/|subset| (α = 0, β = 1). The paper's finding: the deeper the subset, the larger
the scale of the structures reproduced, and the more the result looks like the painting
rather than like coloured noise.

The table reports, per subset: the style loss that was optimised (its own subset); the
full-depth style loss (all of ``layers``, w_l = 1/n) and each layer's E_l of the result,
which show that the deep statistics are matched only once their layer is in the subset;
the *correlation length* (px) of the result's luminance — the radius where its
autocorrelation falls to 0.5, a measure of the size of the structures — next to the style
image's; and a Gram distance under VGG16 (torchvision weights, a network that was not
optimised against), per layer (``vgg16_E_relu4_3`` is sensitive to the largest structures)
and averaged. Outputs as in :mod:`experiments.content_reconstruction`.
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

NAME = "style_reconstruction"
PROG = f"python -m experiments.{NAME}"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class StyleReconstructionConfig(_common.ReconstructionSchema):
    image: str = "builtin:hubble_deep_field"
    layers: list = dataclasses.field(default_factory=lambda: ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"])


ConfigStore.instance().store(name=f"{NAME}_schema", node=StyleReconstructionConfig)


def subset_label(subset) -> str:
    return subset[0] if len(subset) == 1 else f"{subset[0]}…{subset[-1]}"


def style_loss_spec(layers, pooling: str):
    from nstyle import losses

    n = len(layers)
    return losses.PerceptualLoss(
        content_layers=(),
        content_weights=(),
        style_layers=tuple(layers),
        style_weights=(1.0 / n,) * n,
        alpha=0.0,
        beta=1.0,
        pooling=pooling,
    )


def run(cfg: StyleReconstructionConfig, out: Path, on_start=None) -> dict:
    """The whole experiment; returns the table rows (also written to ``out``, which the run
    holds locked from its first check to its last write)."""
    with _rundir.hold(out):
        return _run(cfg, Path(out), on_start)


def _run(cfg: StyleReconstructionConfig, out: Path, on_start) -> dict:
    import jax

    from nstyle import optimize

    dest, style, params = _common.setup(cfg, NAME, out, "style.png", on_start)  # style: (H, W, 3)

    # every result is also scored on the full set of layers, with the same fixed evaluator
    full = style_loss_spec(cfg.layers, cfg.pooling)
    full_targets = optimize.prepare_targets(params, full, None, [style], None, batch=1)
    evaluate = optimize.make_evaluate(full)
    full_w = optimize.loss_weights(full, 1)
    style_corr = metrics.correlation_length(style)

    key = jax.random.key(cfg.seed)
    rows, recons, curves, histories = [], [], {}, {}
    for k in range(1, len(cfg.layers) + 1):
        subset = list(cfg.layers[:k])
        label = subset_label(subset)
        t0 = time.perf_counter()
        fingerprint = {"subset": subset, **_common.dump_config(cfg), "publish": None, "overwrite": None, "resume": None}
        r = _common.cached(
            out,
            f"subset_{k}",
            fingerprint,
            cfg.resume,
            lambda: optimize.stylize(
                params,
                style_loss_spec(subset, cfg.pooling),
                content=None,
                styles=[style],
                shape=style.shape[:2],
                init=cfg.init,
                key=key,
                optim=cfg.optim.build(),
            ),
        )
        images.save_image(out / f"recon_{k}_{subset[-1]}.png", r.image)
        total, aux = evaluate(jax.numpy.asarray(r.image[None]), params, full_targets, full_w)
        d16 = metrics.style_distances(r.image, style)  # Gram distances under an independent network
        row = {
            "subset": label,
            "deepest": subset[-1],
            "n_layers": k,
            # what was optimised, mean E_l over the subset, of the saved image (clipped to [0, 1]) ...
            "style_loss": float(np.mean([np.asarray(aux[f"style/{l}"])[0] for l in subset])),
            # ... and of the optimiser's result (its best evaluated iterate), whose pixels may lie outside [0, 1]
            "style_loss_unclipped": r.final["style"],
            "style_loss_all": float(np.asarray(aux["style"])[0]),  # mean E_l over all layers
            **{f"E_{l}": float(np.asarray(aux[f"style/{l}"])[0]) for l in cfg.layers},
            "corr_length_px": metrics.correlation_length(r.image),
            "corr_length_style_px": style_corr,
            **{f"vgg16_E_{l}": v for l, v in d16.items()},
            "vgg16_gram_dist": sum(d16.values()) / len(d16),
            "iterations": r.iterations,
            "evals": r.evals,
            "wall_time_s": r.wall_s,
            "compile_s": r.compile_s,
        }
        rows.append(row)
        recons.append(r.image)
        hist = np.asarray(r.history.get("style", r.history.get("loss", [])), np.float64)
        if len(hist) and hist[0] > 0:
            curves[label] = hist / hist[0]
        histories[label] = r.history
        log.info(
            "%s: style loss %.4g, all-layer loss %.4g, corr length %.2f px (style %.2f), %.1f s",
            label,
            row["style_loss"],
            row["style_loss_all"],
            row["corr_length_px"],
            style_corr,
            time.perf_counter() - t0,
        )

    alls = [r["style_loss_all"] for r in rows]
    falling = all(b <= a for a, b in zip(alls, alls[1:]))
    settings = {
        "image": cfg.image,
        "size": f"{style.shape[1]}×{style.shape[0]}",
        "init": cfg.init,
        "pooling": cfg.pooling,
        "seed": cfg.seed,
        "w_l": "1/|subset|",
        **_common.settings_of(cfg, ["network"]),
    }
    sub = [f"all-layer loss {r['style_loss_all']:.3g}\ncorr. length {r['corr_length_px']:.1f} px" for r in rows]
    fig = figures.image_row(
        [style, *recons],
        ["style image", *[r["subset"] for r in rows]],
        sublabels=[f"corr. length {style_corr:.1f} px", *sub],
        title="Style reconstructions from white noise, Gram matrices of growing layer subsets",
        settings=settings,
    )
    fig_path = figures.save_figure(fig, out / f"{NAME}.png")
    fig = figures.loss_curves(
        curves,
        title="Style loss of the optimised subset (relative to its start)",
        ylabel="style loss / initial",
        settings=settings,
        legend_title="subset",
    )
    curves_path = figures.save_figure(fig, out / f"{NAME}_curves.png")
    csv_path, md_path = _common.write_table(rows, out, NAME)
    _common.write_metrics(
        out,
        {
            "experiment": NAME,
            "config": _common.dump_config(cfg),
            "rows": rows,
            "all_layer_loss_falls_with_depth": falling,
            "corr_length_style_px": style_corr,
            "image_shape": list(style.shape),
            "history": histories,
        },
        seed=cfg.seed,
        params=params,
    )
    for p in _common.publish([csv_path, md_path, fig_path, curves_path], dest):
        log.info("published %s", p)
    return {"rows": rows, "falling": falling, "figure": fig_path, "csv": csv_path}


@command(PROG, exits=True)
def task(dcfg) -> None:
    cfg = OmegaConf.to_object(dcfg)  # the dataclass: library code never sees a DictConfig
    out = _common.run_dir()
    res = run(cfg, out, on_start=lambda: app.write_hydra_files(out, dcfg))
    print(
        collect.to_markdown(
            res["rows"], ["subset", "style_loss", "style_loss_all", "corr_length_px", "vgg16_gram_dist", "wall_time_s"]
        )
    )
    print(f"figure: {res['figure']}")


def main(argv=None) -> None:
    """Console entry: the run directory is created and locked before Hydra starts (see
    :func:`nstyle.cli.app.hydra_main`); a bad override is one line, exit status 2."""
    app.hydra_main(
        PROG, NAME, task, argv, config_dir=Path(__file__).parent / "conf", schema_cls=StyleReconstructionConfig
    )


if __name__ == "__main__":
    main()
