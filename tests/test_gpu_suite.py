"""benchmarks/gpu_suite.py checks its inputs and runs every section on tiny inputs (--dry-run),
so the suite is ready the moment a GPU is lent; the timings themselves are never tested."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_suite_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "suite.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["dry_run"] and res["device"]["platform"]
    sections = res["sections"]
    assert set(sections) == {"peak", "loss", "lbfgs", "train", "infer"}
    (prec,) = res["precisions"]
    assert sections["loss"][prec]["32"]["tflops"] > 0 and "share_of_achieved_peak" in sections["loss"][prec]["32"]
    assert sections["lbfgs"][prec]["steps"] == 3 and sections["lbfgs"][prec]["final_loss"] > 0
    assert sections["train"][prec]["2"]["images_per_s"] > 0
    assert sections["infer"][prec]["32"]["median_s"] > 0
    # an existing results file is never overwritten silently
    again = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_suite.py"),
            "--dry-run",
            "--out",
            str(out),
            "--sections",
            "peak",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode != 0 and "--overwrite" in again.stderr
