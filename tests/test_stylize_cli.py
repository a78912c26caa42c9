"""``nstyle-stylize``: run directories, sweeps, reproducibility and every bad input.

Three tests start the real console script in a subprocess (run + refusal to overwrite, a
``-m`` sweep of two tiny jobs, Hydra's own error for a misspelt key); the rest compose the
same config in-process with Hydra's compose API and call the same task function.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from PIL import Image

from nstyle import color, images
from nstyle.cli import app, schema, stylize

SCRIPT = str(Path(sys.executable).parent / "nstyle-stylize")


def cli(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def compose_cfg(*overrides, out_dir=None):
    schema.register()
    with initialize_config_dir(config_dir=str(app.conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    if out_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out_dir)
    return cfg


def run_inprocess(out_dir, *overrides):
    """What ``nstyle-stylize OVERRIDES hydra.run.dir=out_dir`` does, without a new process."""
    cfg = compose_cfg(*overrides, out_dir=out_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra does before calling the task
    return stylize.main(cfg)


def read_png(path):
    return np.asarray(Image.open(path))


def error_line(capsys, out_dir, *overrides):
    with pytest.raises(SystemExit) as e:
        run_inprocess(out_dir, *overrides)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nstyle-stylize: error: ") and "\n" not in err, err
    return err


# ------------------------------------------------------------------- real command line


def test_run_dir_holds_result_metrics_snapshots_and_config_and_is_reproducible(tmp_path, vgg19):
    out = tmp_path / "run"
    p = cli("debug=tiny", "seed=1", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    for f in (
        "result.png",
        "metrics.json",
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "snapshots/step_0005.png",
        "snapshots/step_0010.png",
    ):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 10 and m["evals"] == 10 and m["evals_per_iter"] == 1.0
    assert m["stopped_reason"] == "steps" and m["seed"] == 1
    assert m["weights"]["checksum"] == vgg19.checksum and m["weights"]["arch"] == "vgg19"
    assert {"jax", "jaxlib", "optax", "flax", "numpy", "nstyle", "python"} <= set(m["versions"])
    assert m["device"]["platform"] and m["compile_s"] > 0 and m["wall_s"] > 0
    for term in ("loss", "content", "style", "style/conv1_1", "style/conv5_1", "content/conv4_2"):
        assert len(m["history"][term]) == 10, term
    assert m["final_loss"] < m["history"]["loss"][0]
    assert m["inputs"]["content"]["sha256"] and m["inputs"]["styles"][0]["spec"] == "builtin:ihc"
    result = read_png(out / "result.png")
    assert result.shape == (32, 48, 3)  # chelsea's aspect at size=48

    # the same directory again: refused before Hydra touches it, one line, no traceback
    before = (out / ".hydra" / "config.yaml").stat().st_mtime_ns
    p = cli("debug=tiny", "seed=2", f"hydra.run.dir={out}")
    assert p.returncode == 2
    assert p.stderr.strip().startswith("nstyle-stylize: error: ") and "already holds a result" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert (out / ".hydra" / "config.yaml").stat().st_mtime_ns == before

    # same config and seed in another process: the same pixels; overwrite=true replaces it
    assert np.isfinite(run_inprocess(tmp_path / "again", "debug=tiny", "seed=1"))
    np.testing.assert_array_equal(read_png(tmp_path / "again" / "result.png"), result)
    run_inprocess(out, "debug=tiny", "seed=1", "overwrite=true", "steps=3")
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 3


def test_sweep_composes_and_runs_two_tiny_jobs(tmp_path):
    from nstyle import images

    style = tmp_path / "inputs" / "style.png"  # a path override: its "/" must not nest job dirs
    style.parent.mkdir()
    images.save_image(style, images.load_image("builtin:ihc", 32))
    sweep = tmp_path / "sweep"
    p = cli("-m", "debug=tiny", "steps=3", "loss.beta=100,10000", f"style={style}", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr
    jobs = sorted((d.name for d in sweep.iterdir() if d.is_dir()), key=len)
    # each job dir is named by its overrides (hydra.job.override_dirname), one level deep
    tail = "style=" + str(style).replace("/", "_")
    assert jobs == [f"debug=tiny,loss.beta=100,steps=3,{tail}", f"debug=tiny,loss.beta=10000,steps=3,{tail}"]
    tmp_path = sweep
    losses = []
    for j in jobs:
        assert (tmp_path / j / "result.png").is_file() and (tmp_path / j / ".hydra" / "config.yaml").is_file()
        m = json.loads((tmp_path / j / "metrics.json").read_text())
        assert m["iterations"] == 3
        losses.append(m["final_loss"])
    assert losses[0] < losses[1]  # β = 1e4 weighs the style 100× more

    # a job of a SLURM sweep run again (nstyle's launcher skips completed records; a job whose
    # record was lost still holds a finished result) skips itself; a half-written one runs again
    from nstyle.cli import stylize

    first, second = (sweep / j for j in jobs)
    assert stylize.finished_result(first)["final_loss"] == losses[0]
    (second / "metrics.json").unlink()  # killed between its two result files
    assert stylize.finished_result(second) is None


def test_misspelt_key_is_one_clear_hydra_error(tmp_path):
    p = cli("debug=tiny", "loss.alpah=1", f"hydra.run.dir={tmp_path / 'x'}")
    assert p.returncode != 0
    assert "alpah" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "x" / "result.png").exists()


# ---------------------------------------------------------------------------- in-process


def test_wrong_type_fails_while_composing():
    with pytest.raises(Exception, match="steps"):
        compose_cfg("steps=many")
    with pytest.raises(Exception, match="pooling"):
        compose_cfg("network.pooling=median")


def test_every_config_composes():
    for group, names in (
        ("experiment", ["demo_texture", "demo_content_only"]),
        ("optim", ["adam", "lbfgs"]),
        ("network", ["vgg16", "vgg19"]),
        ("debug", ["tiny"]),
    ):
        for name in names:
            schema.stylize_settings(_without_hydra(compose_cfg(f"{group}={name}")))
    s = schema.stylize_settings(_without_hydra(compose_cfg()))
    assert s.loss.alpha / s.loss.beta == pytest.approx(1e-3)  # the paper's α/β
    assert s.loss.content_layers == ("conv4_2",) and s.loss.style_weights == (0.2,) * 5
    assert s.loss.pooling == "avg" and s.optim.name == "lbfgs" and s.init == "content"


def _without_hydra(cfg):
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_texture_synthesis_and_content_only_runs(tmp_path):
    run_inprocess(tmp_path / "tex", "experiment=demo_texture", "debug=tiny", "style=builtin:coffee")
    m = json.loads((tmp_path / "tex" / "metrics.json").read_text())
    assert m["inputs"]["content"] is None and m["final"]["content"] == 0.0
    assert m["final"]["style"] < m["history"]["style"][0] / 3
    assert read_png(tmp_path / "tex" / "result.png").shape == (32, 48, 3)  # coffee's aspect

    run_inprocess(tmp_path / "rec", "experiment=demo_content_only", "debug=tiny", "loss.content_layers=[conv2_2]")
    m = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert m["inputs"]["styles"] == [] and m["final"]["style"] == 0.0
    assert m["final"]["content"] < m["history"]["content"][0] / 3


def test_blend_histogram_colour_and_coarse_to_fine(tmp_path):
    out = tmp_path / "c2f"
    run_inprocess(
        out,
        "debug=tiny",
        "style=[builtin:ihc,builtin:coffee]",
        "style_blend=[0.7,0.3]",
        "preserve_color=histogram",
        "schedule=[32]",
        "schedule_steps=[4]",
        "steps=4",
        "snapshot_every=0",
    )
    m = json.loads((out / "metrics.json").read_text())
    assert [st["size"] for st in m["stages"]] == [32, 48] and m["iterations"] == 8
    assert [st["shape"] for st in m["stages"]] == [[21, 32], [32, 48]]
    assert len(m["history"]["loss"]) == 8 and len(m["inputs"]["styles"]) == 2
    assert not (out / "snapshots").exists()


def test_luminance_transfer_keeps_content_colours_and_converts_odd_files(tmp_path):
    # an RGBA content and a 16-bit greyscale style go through images.py's conversions
    rgb = images.load_image("builtin:chelsea", 64)
    Image.fromarray(np.dstack([images.to_uint8(rgb), np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(
        tmp_path / "c.png"
    )
    grey = (images.load_image("builtin:ihc", 64).mean(-1) * 65535).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "s.png")
    out = tmp_path / "lum"
    run_inprocess(
        out,
        "debug=tiny",
        f"content={tmp_path / 'c.png'}",
        f"style={tmp_path / 's.png'}",
        "preserve_color=luminance",
        "size=32",
        "steps=4",
    )
    result = read_png(out / "result.png").astype(np.float32) / 255
    content = images.resize(images.load_image(tmp_path / "c.png"), result.shape[:2])
    # the result's chroma (I, Q of YIQ) is the content's, up to 8-bit rounding and clipping
    iq = lambda x: color.rgb_to_yiq(x)[..., 1:]  # noqa: E731
    assert np.abs(iq(result) - iq(content)).mean() < 0.01


@pytest.fixture
def broken_files(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image at all")
    full = tmp_path / "full.png"
    Image.fromarray(images.to_uint8(images.load_image("builtin:chelsea", 64))).save(full)
    data = full.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    return tmp_path


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["content=/no/such/photo.jpg"], "/no/such/photo.jpg"),
        (["style=builtin:nosuch"], "builtin:nosuch"),
        (["content={d}/notes.jpg"], "notes.jpg"),
        (["style={d}/truncated.png"], "truncated.png"),
        (["size=8"], "too small"),
        (["size=48", "style_scale=0.1"], "too small"),
        (["size=4000", "max_memory_gb=1"], "would fit"),
        (["loss.style_layers=[conv1_1,conv9_9]"], "conv9_9"),
        (["loss.content_layers=[fc7]"], "fc7"),
        (["loss.beta=-1"], "loss.beta must be a finite number >= 0, got -1"),
        (["loss.style_weights=[1,1,1,1,-1]"], "loss.style_weights[4] must be a finite number >= 0"),
        (["style=[builtin:ihc,builtin:coffee]", "style_blend=[1,-1]"], "style_blend"),
        (["loss.alpha=0", "loss.beta=0"], "nothing to optimise"),
        (["content=null"], "no content image"),
        (["init={d}/missing.png"], "missing.png"),
        (["schedule=[64]"], "schedule"),
    ],
)
def test_bad_input_is_one_line_error_without_traceback(capsys, broken_files, overrides, expected):
    overrides = [o.format(d=broken_files) for o in overrides]
    err = error_line(capsys, broken_files / "out", "debug=tiny", *overrides)
    assert expected in err
    assert not (broken_files / "out" / "result.png").exists()


def test_existing_result_is_never_overwritten_silently(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.png").write_bytes(b"precious")
    err = error_line(capsys, out, "debug=tiny")
    assert "already holds a result" in err and "overwrite=true" in err
    assert (out / "result.png").read_bytes() == b"precious"


def test_nonfinite_loss_stops_keeps_last_good_image_and_says_so(capsys, tmp_path):
    out = tmp_path / "nan"
    # an absurd Adam step overflows the loss at the 2nd evaluation (one layer: cheap to compile)
    loss = run_inprocess(
        out,
        "debug=tiny",
        "optim=adam",
        "optim.lr=1e30",
        "optim.project=false",
        "loss.content_layers=[conv1_1]",
        "loss.style_layers=[conv1_1]",
    )
    err = capsys.readouterr().err
    assert "NaN/inf" in err and "last image with a finite loss" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_reason"] == "nonfinite" and m["iterations"] == 2
    assert np.isfinite(loss) and m["final_loss"] == loss
    # the content image it started from, not the overflowed one
    start = images.to_uint8(images.load_image("builtin:chelsea", 48))
    np.testing.assert_array_equal(read_png(out / "result.png"), start)
