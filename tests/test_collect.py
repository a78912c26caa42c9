"""The sweep collector on a synthetic sweep directory: finished, failed, still-running,
killed and not-yet-started jobs, and a half-written metrics file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nstyle import images
from nstyle.cli import collect, jobs


def _job(
    sweep: Path,
    overrides: dict,
    num: int,
    *,
    status: dict | None = None,
    metrics: dict | str | None = None,
    result: bool = False,
    log: str | None = None,
) -> Path:
    name = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()] + ["size=32"])
    )
    (d / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    name: stylize\n    id: '{num}'\n    num: {num}\n")
    (d / ".hydra" / "config.yaml").write_text("content: builtin:chelsea\nstyle: builtin:brick\nsize: 32\n")
    if status is not None:
        (d / jobs.STATUS_FILE).write_text(json.dumps(status))
    if metrics is not None:
        (d / collect.METRICS_FILE).write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    if result:
        rng = np.random.default_rng(num)
        images.save_image(d / collect.RESULT_FILE, rng.random((24, 32, 3), dtype=np.float32))
    if log is not None:
        (d / "stylize.log").write_text(log)
    return d


def _metrics(c: float, s: float, n: int = 5) -> dict:
    hist = list(np.geomspace(1e4, c + s, n))
    return {
        "final": {"content": c, "style": s, "total": c + s},
        "history": {"total": hist},
        "iterations": n,
        "evals": n + 1,
        "wall_time_s": 1.5,
    }


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    s = tmp_path / "sweep"
    s.mkdir()
    # the sweep defines 2 × 3 = 6 jobs; 5 have started
    (s / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "size": 32,
                "hydra": {
                    "sweeper": {"params": {"loss.beta": "1,10"}},
                    "overrides": {"task": ["+experiment=x", "init=noise,content,style"]},
                },
            }
        )
    )
    _job(
        s, {"loss.beta": 1, "init": "noise"}, 0, status={"status": "completed"}, metrics=_metrics(2.0, 3.0), result=True
    )
    _job(s, {"loss.beta": 1, "init": "content"}, 1, metrics=_metrics(4.0, 5.0), result=True)  # no callback: legacy
    _job(
        s,
        {"loss.beta": 1, "init": "style"},
        2,
        status={"status": "failed", "error": "ImageError: style.jpg: no such file"},
    )
    _job(
        s,
        {"loss.beta": 10, "init": "noise"},
        3,
        status={"status": "running", "pid": __import__("os").getpid(), "host": __import__("socket").gethostname()},
        metrics='{"final": {"cont',
    )  # being written
    _job(
        s,
        {"loss.beta": 10, "init": "content"},
        4,
        status={"status": "running", "pid": _dead_pid(), "host": __import__("socket").gethostname()},
    )
    # a job without the callback that crashed: only its log says so
    _job(s, {"loss.beta": 10, "init": "style"}, 5, log="Traceback (most recent call last):\n  ...\nValueError: boom\n")
    return s


def test_scan_classifies_every_job(sweep: Path):
    jobs = collect.scan(sweep)
    assert [j.num for j in jobs] == [0, 1, 2, 3, 4, 5]
    assert [j.status for j in jobs] == ["completed", "completed", "failed", "running", "died", "failed"]
    assert "no such file" in jobs[2].error and "boom" in jobs[5].error
    assert collect.swept_keys(jobs, sweep) == ["loss.beta", "init"]
    assert collect.expected_jobs(sweep) == 6


def test_collect_writes_table_grid_and_curves_without_dropping_good_jobs(sweep: Path, tmp_path: Path):
    (sweep / "init=noise,loss.beta=10").rename(sweep / "tmp")  # make one job not started yet
    import shutil

    shutil.rmtree(sweep / "tmp")
    s = collect.summarize(sweep, evaluate=False)
    assert s.counts == {"completed": 2, "failed": 2, "died": 1, "running": 0, "pending": 1}
    with open(s.files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    good = {r["init"]: r for r in rows if r["status"] == "completed"}
    assert float(good["noise"]["content_loss"]) == 2.0 and float(good["content"]["style_loss"]) == 5.0
    assert {r["status"] for r in rows} == {"completed", "failed", "died"}
    assert "no such file" in next(r["error"] for r in rows if r["init"] == "style" and r["loss.beta"] == "1")
    md = s.files["md"].read_text()
    assert md.count("\n") == 2 + 5 and "| failed |" in md
    for key in ("grid", "curves"):
        img = images.load_image(s.files[key])
        assert img.shape[0] > 200 and img.shape[1] > 300
    assert "1 pending" in s.report() and "died" in s.report()


def test_collect_cli_reports_and_strict_exit(sweep: Path, tmp_path: Path, capsys):
    out = tmp_path / "summary"
    assert collect.main([str(sweep), "--out", str(out), "--no-eval"]) == 0
    text = capsys.readouterr().out
    assert "2 completed" in text and "failed" in text and (out / "table.csv").exists()
    assert collect.main([str(sweep), "--out", str(out), "--no-eval", "--strict"]) == 1


def test_collect_cli_bad_input_is_one_line(tmp_path: Path, capsys, sweep: Path):
    assert collect.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    assert collect.main([str(sweep), "--no-eval", "--rows", "loss.gamma"]) == 2
    assert "not an override" in capsys.readouterr().err


def test_empty_sweep_dir_reports_no_jobs(tmp_path: Path):
    s = collect.summarize(tmp_path, evaluate=False)
    assert s.jobs == [] and (tmp_path / "summary" / "status.txt").exists()


def test_value_labels():
    assert collect.value_label("loss.style_layers", "[conv1_1,conv2_1,conv3_1]") == "conv1_1…conv3_1"
    assert collect.value_label("loss.style_layers", "[conv1_1]") == "conv1_1"
    assert collect.value_label("optim", "adam") == "adam"


def _fake_slurm(bin_dir: Path, squeue: dict[str, str], sacct: dict[str, str]) -> None:
    """``squeue`` and ``sacct`` stand-ins that answer from fixed tables, the way SLURM 22 does
    (``squeue -j`` fails with "Invalid job id" when it knows none of the ids)."""
    bin_dir.mkdir()
    for name, table, fail in (("squeue", squeue, True), ("sacct", sacct, False)):
        script = bin_dir / name
        script.write_text(
            "#!" + sys.executable + "\n"
            "import sys\n"
            f"table = {table!r}\n"
            "ids = sys.argv[sys.argv.index('-j') + 1].split(',')\n"
            "rows = [f'{i}|{table[i]}' for i in ids if i in table]\n"
            f"if not rows and {fail}:\n"
            "    sys.exit('slurm_load_jobs error: Invalid job id specified')\n"
            "print('\\n'.join(rows))\n"
        )
        script.chmod(0o755)


def test_slurm_jobs_are_classified_by_what_slurm_says(tmp_path: Path, monkeypatch):
    s = tmp_path / "sweep"
    s.mkdir()
    other = {"host": "another-node", "pid": 1}  # a host where no pid can be checked
    _job(s, {"seed": 0}, 0, status={"status": "running", "slurm_job": "7_0", **other})
    _job(s, {"seed": 1}, 1, status={"status": "running", "slurm_job": "7_1", **other})
    _job(s, {"seed": 2}, 2, status={"status": "pending", "slurm_job": "7_2", **other})
    # submitted, never started: only the launcher's record, no .hydra/
    (s / "seed=3").mkdir()
    (s / "seed=3" / jobs.STATUS_FILE).write_text(
        json.dumps({"status": "pending", "slurm_job": "7_3", "overrides": ["seed=3"], "num": 3, **other})
    )
    _job(s, {"seed": 4}, 4, status={"status": "running", "slurm_job": "7_4", **other})
    _fake_slurm(
        tmp_path / "bin",
        squeue={"7_0": "RUNNING", "7_1": "CANCELLED", "7_2": "PENDING"},
        sacct={"7_4": "OUT_OF_MEMORY"},  # long finished: only the accounting database remembers it
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{__import__('os').environ['PATH']}")
    by_num = {j.num: j for j in collect.scan(s)}
    assert [by_num[n].status for n in range(5)] == ["running", "died", "pending", "died", "died"]
    assert "CANCELLED" in by_num[1].error and "OUT_OF_MEMORY" in by_num[4].error
    assert "cancelled before it started" in by_num[3].error and by_num[3].overrides == {"seed": "3"}
    summary = collect.summarize(s, evaluate=False)
    assert summary.counts["died"] == 3 and "7_3" in summary.report()
    # without SLURM to ask, the records stand
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert [j.status for j in collect.scan(s)] == ["running", "running", "pending", "pending", "running"]
