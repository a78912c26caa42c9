"""The experiments of the beyond-the-paper options, end to end at their debug sizes (32–48 px,
3 iterations, one pair): each writes its table, figure and metrics.json and publishes them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nstyle import images


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_style_losses_debug_end_to_end(tmp_path: Path):
    from experiments import style_losses as exp

    assert exp.main(["--debug", "--out", str(tmp_path / "run"), "--publish", str(tmp_path / "pub")]) == 0
    rows = _rows(tmp_path / "run" / "style_losses.csv")
    assert [r["variant"] for r in rows] == ["(content image)", "gram (paper)", "gram", "meanstd", "w2"]
    assert {"lpips", "gram_dist", "gram_rel", "meanstd_dist", "meanstd_rel", "optimize_s", "wall_s"} <= set(rows[1])
    assert float(rows[0]["gram_rel"]) == 1.0 and all(float(r["gram_rel"]) < 1.0 for r in rows[1:])
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == [
        "style_losses.csv",
        "style_losses.md",
        "style_losses.png",
    ]
    # a rerun into the same directory reuses every finished run
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").glob("*__*.png")}
    exp.main(["--debug", "--out", str(tmp_path / "run")])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").glob("*__*.png")} == before


@pytest.mark.slow
def test_spatial_control_debug_end_to_end(tmp_path: Path):
    from experiments import spatial_control as exp

    fig = tmp_path / "docs" / "spatial.png"
    assert exp.main(["--debug", "--out", str(tmp_path / "run"), "--figure", str(fig)]) == 0
    rows = _rows(tmp_path / "run" / "spatial_control.csv")
    assert [r["variant"] for r in rows] == ["blend", "masks"]
    assert {"left→A", "left→B", "right→A", "right→B", "own/other", "lpips"} <= set(rows[0])
    masks = sorted((tmp_path / "run").glob("*_mask_*.png"))
    left, right = (images.load_image(m)[..., 0] for m in masks)
    np.testing.assert_allclose(left + right, 1.0, atol=2 / 255)  # the two regions cover the image
    assert images.load_image(fig).shape[1] <= 1400
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["settings"]["size"] == 32


def test_spatial_control_masks_ramp_between_the_halves():
    from experiments.spatial_control import masks_for

    left, right = masks_for((4, 10))
    assert left[0, 0] == 1 and left[0, -1] == 0 and 0 < left[0, 5] < 1
    np.testing.assert_allclose(left + right, 1.0)


@pytest.mark.slow
def test_loss_normalization_debug_end_to_end(tmp_path: Path):
    from experiments import loss_normalization as exp

    assert exp.main(["--debug", "--out", str(tmp_path / "run")]) == 0
    rows = _rows(tmp_path / "run" / "loss_normalization.csv")
    assert [(r["size"], r["variant"]) for r in rows] == [
        ("32", "paper"),
        ("32", "normalized"),
        ("48", "paper"),
        ("48", "normalized"),
    ]
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["summary"]
    assert [s["weights"] for s in summary] == ["paper", "normalized"]
