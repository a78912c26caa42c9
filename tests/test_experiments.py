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

import nstyle
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

    preset = _compose(exp.NAME, ["debug=tiny"])
    assert preset.size <= 64 and preset.optim.steps <= 20 and len(preset.layers) == 5
    # three of the five layers keep the test short (each layer compiles its own step)
    cfg = _compose(exp.NAME, ["debug=tiny", "layers=[conv1_2,conv3_2,conv5_2]", f"publish={tmp_path / 'results'}"])
    res = exp.run(cfg, tmp_path / "run")
    rows = _rows(tmp_path / "run" / f"{exp.NAME}.csv")
    assert [r["layer"] for r in rows] == cfg.layers
    assert {"layer", "content_loss", "pixel_mse", "psnr_db", "lpips"} <= set(rows[0])
    for r in rows:  # every layer's own loss fell from the noise it started at
        assert 0 < float(r["content_loss_rel"]) < 1
    # even after a few steps the shallowest layer is closer to the pixels than the deepest
    assert float(rows[0]["pixel_mse"]) < float(rows[-1]["pixel_mse"])
    fig = images.load_image(res["figure"])
    assert fig.shape[1] > 150 * (len(cfg.layers) + 1)  # the original and each layer side by side
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

    assert len(_compose(exp.NAME, ["debug=tiny"]).layers) == 5
    # three subsets keep the test short (each subset compiles its own step)
    cfg = _compose(exp.NAME, ["debug=tiny", "image=builtin:brick", "layers=[conv1_1,conv2_1,conv3_1]"])
    res = exp.run(cfg, tmp_path)
    rows = _rows(tmp_path / f"{exp.NAME}.csv")
    assert [int(r["n_layers"]) for r in rows] == [1, 2, 3]
    assert {"subset", "style_loss", "style_loss_all", "corr_length_px", "vgg16_gram_dist"} <= set(rows[0])
    # the deepest layer's statistics are optimised only by the full subset: its E_l is lowest there
    e3 = [float(r["E_conv3_1"]) for r in rows]
    assert e3[-1] < min(e3[:-1])
    assert images.load_image(res["figure"]).shape[1] > 600


def test_reconstruction_bad_input_is_one_line(tmp_path: Path):
    from experiments import _common
    from experiments import content_reconstruction as exp

    cfg = _compose(exp.NAME, ["debug=tiny", "layers=[conv1_2,conv9_9]"])
    with pytest.raises(_common.ExperimentError, match="unknown vgg19 layer 'conv9_9'"):
        exp.run(cfg, tmp_path)
    cfg = _compose(exp.NAME, ["debug=tiny", "optim.memory=0"])
    with pytest.raises(nstyle.UserError, match="L-BFGS memory must be >= 1"):
        exp.run(cfg, tmp_path)
    with pytest.raises(Exception, match="sgd"):
        _compose(exp.NAME, ["optim.name=sgd"])  # not an optimiser the schema knows
    with pytest.raises(Exception, match="sise"):
        _compose(exp.NAME, ["sise=64"])  # the schema refuses a misspelt key
    with pytest.raises(Exception, match="size"):
        _compose(exp.NAME, ["size=big"])  # and a wrong type


def test_correlation_length_measures_structure_size():
    from nstyle import metrics as _metrics

    rng = np.random.default_rng(0)
    noise = rng.random((96, 96, 3))
    stripes = np.repeat(np.repeat((np.indices((96, 96))[1] // 8 % 2).astype(float)[..., None], 3, -1), 1, 0)
    assert _metrics.correlation_length(noise) < 1.0
    assert 2.0 < _metrics.correlation_length(stripes) < 8.0
    assert _metrics.psnr(noise, noise) == float("inf")
    assert abs(_metrics.pixel_mse(noise, noise + 0.1) - 0.01) < 1e-9


# ------------------------------------------------------------------------------- sweeps

CONF = ROOT / "conf"
SWEEPS = ["alpha_beta_grid", "ablation_pooling", "ablation_content_layer", "ablation_init", "ablation_optimizer"]


def _compose_stylize(overrides: list[str]):
    from nstyle.cli import schema as config_mod

    config_mod.register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_presets_compose_and_expand(name: str):
    from nstyle.cli import schema as config_mod
    from nstyle.cli import sweep as batched

    cfg = _compose_stylize([f"experiment={name}"])
    assert str(cfg.hydra.sweep.dir).startswith(f"multirun/{name}/")
    assert (
        OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
        == "${nstyle_dirname:${hydra.job.override_dirname}}"
    )
    assert cfg.hydra.callbacks.job_status._target_ == "nstyle.cli.jobs.JobStatusCallback"
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    fixed, sweeps = batched.split_sweep([], params)
    members = batched.expand(sweeps)
    for m in members:  # every job of the sweep is a valid run
        job = batched.task_config(_compose_stylize([f"experiment={name}", *m.overrides]))
        config_mod.stylize_settings(job)
    if name == "alpha_beta_grid":
        assert len(members) == 20
        groups = batched.group_members(members)
        assert len(groups) == 5 and all(len(g) == 4 for g in groups)  # one batch per style depth
        job = _compose_stylize([f"experiment={name}", *members[0].overrides])
        assert job.hydra.job.override_dirname == "loss.beta=100000.0,loss.style_layers=[conv1_1]"
    else:
        assert 2 <= len(members) <= 4


def test_command_line_sweep_replaces_the_preset():
    from nstyle.cli import sweep as batched

    fixed, sweeps = batched.split_sweep(
        ["loss.beta=1,2", "size=32"], {"loss.beta": "1e5,1e4,1e3", "init": "noise,content"}
    )
    assert fixed == ["size=32"]
    assert sweeps == [["loss.beta=1", "loss.beta=2"], ["init=noise", "init=content"]]


def test_slurm_launcher_config_composes_without_launching():
    from hydra.utils import instantiate

    cfg = _compose_stylize(["experiment=alpha_beta_grid", "+launcher=slurm", "hydra.launcher.partition=gpu"])
    lc = cfg.hydra.launcher
    assert lc._target_ == "hydra_plugins.nstyle_launcher.slurm.SlurmLauncher"  # submitit's, extended
    assert lc.partition == "gpu" and lc.gpus_per_node is None and lc.array_parallelism >= 20  # CPU-only clusters too
    assert str(lc.submitit_folder).endswith("/.submitit/%j")
    launcher = instantiate(lc)  # builds the plugin object; nothing is submitted
    assert type(launcher).__name__ == "SlurmLauncher"
    joblib = _compose_stylize(["experiment=alpha_beta_grid", "+launcher=joblib"]).hydra.launcher
    assert joblib._target_.endswith("joblib_launcher.JoblibLauncher") and joblib.n_jobs == 2


# cheap jobs for launching for real: shallow layers compile and run in a second or two
TINY_BASE = ["debug=tiny", "size=32", "steps=3", "loss.content_layers=[conv1_2]"]
TINY = [*TINY_BASE, "loss.style_layers=[conv1_1]"]


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_and_collector_reads_them(tmp_path: Path):
    import subprocess
    import sys

    from nstyle.cli import collect, jobs

    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "nstyle.cli.stylize",
        "-m",
        "experiment=ablation_optimizer",
        "+launcher=joblib",
        f"hydra.sweep.dir={sweep}",
        *TINY,
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Joblib" in r.stdout + r.stderr  # it went through the joblib launcher
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())  # one dir per job, named by its overrides
    assert len(names) == 2 and "optim=adam" in names[0] and "optim=lbfgs" in names[1]
    s = collect.summarize(sweep, cols_key="optim")
    assert s.counts["completed"] == 2 and s.counts["pending"] == 0
    for row in s.rows:
        assert row["content_loss"] > 0 and row["style_loss"] > 0 and row["wall_time_s"] > 0
        assert 0 <= row["lpips_content"] < 1 and row["style_distance"] > 0
    for j in s.jobs:  # the callback of the preset marked them
        assert json.loads((j.path / jobs.STATUS_FILE).read_text())["status"] == "completed"


@pytest.mark.slow
def test_batched_sweep_matches_one_by_one(tmp_path: Path):
    from nstyle.cli import collect, stylize
    from nstyle.cli import schema as config_mod
    from nstyle.cli import sweep as batched

    sweep = tmp_path / "sweep"
    argv = ["experiment=alpha_beta_grid", f"hydra.sweep.dir={sweep}", *TINY, "loss.beta=1e2,1e4"]
    assert batched.main(argv) == 0
    s = collect.summarize(sweep, evaluate=False)
    assert s.counts["completed"] == 2
    assert [j.overrides["loss.beta"] for j in s.jobs] == ["100.0", "10000.0"]
    assert s.jobs[0].name.startswith("loss.beta=100.0,")  # named by the overrides, as a multirun names them
    m = json.loads((s.jobs[1].path / "metrics.json").read_text())
    assert m["batch"] == 2 and len(m["history"]["loss"]) == 3
    # the member's result is the result of running it alone with nstyle-stylize
    cfg = batched.task_config(_compose_stylize(["experiment=alpha_beta_grid", *TINY, "loss.beta=1e4"]))
    alone = stylize.run(config_mod.stylize_settings(cfg), tmp_path / "alone")
    a = images.load_image(tmp_path / "alone" / "result.png")
    b = images.load_image(s.jobs[1].path / "result.png")
    assert np.abs(a - b).max() <= 2 / 255
    assert abs(m["final_loss"] - alone["final_loss"]) <= 1e-3 * alone["final_loss"]
    # a second call finds every member done and runs nothing
    assert batched.main(argv) == 0


@pytest.mark.slow
def test_alpha_beta_grid_experiment_debug_end_to_end(tmp_path: Path, capsys):
    from experiments import alpha_beta_grid

    pub = tmp_path / "results"
    argv = [
        "--batched",
        "--sweep-dir",
        str(tmp_path / "sweep"),
        "--publish",
        str(pub),
        *TINY_BASE,
        "loss.style_layers=[conv1_1],[conv1_1,conv2_1]",
    ]
    assert alpha_beta_grid.main(argv) == 0
    rows = _rows(pub / "alpha_beta_grid.csv")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"completed"}
    assert sorted({float(r["alpha/beta"]) for r in rows}) == [1e-5, 1e-4, 1e-3, 1e-2]
    assert images.load_image(pub / "alpha_beta_grid.png").shape[0] > 400
    assert alpha_beta_grid.main(argv) == 2  # publishing again: refused in one line before any work
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("python -m experiments.alpha_beta_grid: error: ") and "--overwrite" in err
