"""Each experiment's debug preset end to end, the sweep configs, and the launchers.

Real VGG19 weights, tiny images (debug=tiny: 40 px, a few L-BFGS steps).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nstyle import images

ROOT = Path(__file__).resolve().parents[1]
EXP_CONF = ROOT / "experiments" / "conf"


def _compose(name: str, overrides: list[str]):
    import importlib

    importlib.import_module(f"experiments.{name}")  # registers the schema in the ConfigStore
    with initialize_config_dir(config_dir=str(EXP_CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name=name, overrides=overrides))


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_content_reconstruction_debug_end_to_end(tmp_path: Path):
    from experiments import content_reconstruction as exp

    cfg = _compose(exp.NAME, ["debug=tiny", f"publish={tmp_path / 'results'}"])
    assert cfg.size <= 64 and cfg.optim.steps <= 20 and len(cfg.layers) == 5
    res = exp.run(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run" / f"{exp.NAME}.csv")
    assert [r["layer"] for r in rows] == cfg.layers
    assert {"layer", "content_loss", "pixel_mse", "psnr_db", "lpips"} <= set(rows[0])
    for r in rows:  # every layer's own loss fell from the noise it started at
        assert 0 < float(r["content_loss_rel"]) < 1
    # even after a few steps the shallowest layer is closer to the pixels than the deepest
    assert float(rows[0]["pixel_mse"]) < float(rows[-1]["pixel_mse"])
    fig = images.load_image(res["figure"])
    assert fig.shape[1] > 1000  # six panels side by side
    for layer in cfg.layers:
        assert images.load_image(tmp_path / "run" / f"recon_{layer}.png").shape == (27, 40, 3)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]["conv1_2"]["content"]) == cfg.optim.steps
    published = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert published == sorted([f"{exp.NAME}{s}" for s in (".csv", ".md", ".png", "_curves.png")])
    # publishing again without overwrite=true is refused before any work
    with pytest.raises(ValueError, match="overwrite=true"):
        exp.run(cfg, tmp_path / "run2")
    # resume reuses the finished layers: same numbers, no optimisation
    cfg.resume, cfg.publish = True, None
    again = exp.run(cfg, tmp_path / "run")
    assert [r["content_loss"] for r in again["rows"]] == [r["content_loss"] for r in res["rows"]]


@pytest.mark.slow
def test_style_reconstruction_debug_end_to_end(tmp_path: Path):
    from experiments import style_reconstruction as exp

    cfg = _compose(exp.NAME, ["debug=tiny", "image=builtin:brick"])
    res = exp.run(cfg, tmp_path)
    rows = _rows(tmp_path / f"{exp.NAME}.csv")
    assert [int(r["n_layers"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {"subset", "style_loss", "style_loss_all", "corr_length_px", "vgg16_gram_dist"} <= set(rows[0])
    # the deepest layer's statistics are optimised only by the full subset: its E_l is lowest there
    e5 = [float(r["E_conv5_1"]) for r in rows]
    assert e5[-1] < min(e5[:-1])
    assert images.load_image(res["figure"]).shape[1] > 1000


def test_reconstruction_bad_input_is_one_line(tmp_path: Path):
    from experiments import _common
    from experiments import content_reconstruction as exp

    cfg = _compose(exp.NAME, ["debug=tiny", "layers=[conv1_2,conv9_9]"])
    with pytest.raises(_common.ExperimentError, match="unknown vgg19 layer 'conv9_9'"):
        exp.run(cfg, tmp_path)
    cfg = _compose(exp.NAME, ["debug=tiny", "optim.name=sgd"])
    with pytest.raises(_common.ExperimentError, match="unknown optimiser 'sgd'"):
        exp.run(cfg, tmp_path)
    with pytest.raises(Exception, match="sise"):
        _compose(exp.NAME, ["sise=64"])  # the schema refuses a misspelt key
    with pytest.raises(Exception, match="size"):
        _compose(exp.NAME, ["size=big"])  # and a wrong type


def test_correlation_length_measures_structure_size():
    from experiments import _metrics

    rng = np.random.default_rng(0)
    noise = rng.random((96, 96, 3))
    stripes = np.repeat(np.repeat((np.indices((96, 96))[1] // 8 % 2).astype(float)[..., None], 3, -1), 1, 0)
    assert _metrics.correlation_length(noise) < 1.0
    assert 2.0 < _metrics.correlation_length(stripes) < 8.0
    assert _metrics.psnr(noise, noise) == float("inf")
    assert abs(_metrics.pixel_mse(noise, noise + 0.1) - 0.01) < 1e-9
