"""Collect a Hydra sweep directory into a table, an image grid and loss curves.

    nstyle-stylize -m experiment=alpha_beta_grid                     # writes multirun/alpha_beta_grid/<time>/...
    nstyle-collect multirun/alpha_beta_grid/<time>                   # -> .../summary/

A *sweep directory* holds one subdirectory per job (named by its overrides, Hydra's
``${hydra.job.override_dirname}``), each with ``.hydra/overrides.yaml``, and, once the job
has finished, ``metrics.json`` and ``result.png``. The collector works on any such
directory, also one that is still being written or whose jobs partly failed: each job is
classified, the good ones are tabulated, the others are listed with the reason, and
nothing is dropped silently.

Job status, from the most to the least certain evidence:

- ``status.json`` written by :class:`nstyle.cli.jobs.JobStatusCallback` (the experiment presets install it
  as a Hydra callback): ``running`` / ``completed`` / ``failed`` with the error message;
  a ``running`` job whose process is gone (same host) is reported as ``died``;
- otherwise ``metrics.json`` present → ``completed``; a job log containing a traceback →
  ``failed``; else ``running`` (cannot tell it from a job killed without a trace);
- ``completed`` but ``metrics.json`` missing or unreadable, or ``result.png`` unreadable → ``failed``.

Jobs the sweep defines but that have not started yet (their directory does not exist) are
counted as ``pending`` from ``multirun.yaml``.

A job submitted to SLURM (``+launcher=slurm``, or ``nstyle-sweep`` with it) has a directory
and a ``status.json`` (``pending``, its SLURM id, its overrides) from its submission on, and
is checked against the scheduler (:mod:`nstyle.cli.slurm`): one whose record says
``pending`` or ``running`` but whose SLURM job ended (cancelled before or while running,
timed out, out of memory) is ``died``, with SLURM's word for it, also on another host.

Outputs (``<sweep>/summary/`` by default, each written atomically, regenerated on each call):
``table.csv``, ``table.md`` (one row per job with its swept values, final content/style
loss, LPIPS to the content image, a style distance to the style image, wall time),
``grid.png`` (results arranged by two swept keys), ``loss_curves.png``, ``status.txt``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import re
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nstyle import _io, images, metrics
from nstyle._errors import UserError
from nstyle.cli import figures, slurm
from nstyle.cli.errors import command
from nstyle.cli.jobs import STATUS_FILE

METRICS_FILE = "metrics.json"
RESULT_FILE = "result.png"
SUMMARY_DIR = "summary"
STATES = ("completed", "failed", "died", "running", "pending")

# keys of the overrides that only say *where* or *how loudly* a job runs: never "swept" axes
_IGNORED_KEYS = {"hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra/launcher", "hydra.launcher.n_jobs"}


class CollectError(UserError, ValueError):
    """A user-facing problem with the sweep directory; one line with the fix."""


# ------------------------------------------------------------------------ scanning


@dataclasses.dataclass
class Job:
    """One job directory of a sweep and what the collector found in it."""

    name: str  # path relative to the sweep directory (Hydra's override_dirname)
    path: Path
    status: str  # one of STATES
    overrides: dict[str, str]  # {key: value} as given to Hydra (leading +/++/~ stripped)
    num: int  # Hydra's job number (order in the sweep); large if unknown
    metrics: dict | None = None
    error: str | None = None
    slurm_job: str | None = None  # the SLURM job that ran it last (status.json), e.g. "120_3"


def _read_yaml(path: Path):
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 -- a half-written yaml is "unknown", never a crash
        return None


def _split_override(text: str) -> tuple[str, str] | None:
    if "=" not in text:
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+~"), value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job_num(path: Path) -> int | None:
    """``hydra.job.num`` from ``.hydra/hydra.yaml`` (read as text: the file is large)."""
    try:
        text = (path / ".hydra" / "hydra.yaml").read_text()
    except OSError:
        return None
    m = re.search(r"^    num: (\d+)$", text, flags=re.M)
    return int(m.group(1)) if m else None


def _log_traceback(path: Path) -> str | None:
    """Last error line of a job's ``*.log`` if it holds a traceback, else None."""
    for log in sorted(path.glob("*.log")):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        if "Traceback (most recent call last)" in text or "Error executing job" in text:
            lines = [l for l in text.strip().splitlines() if l.strip()]
            return lines[-1].strip()[:500] if lines else "traceback in log"
    return None


def _classify(path: Path) -> tuple[str, dict | None, str | None]:
    status_data = _io.read_json(path / STATUS_FILE)
    metrics_path = path / METRICS_FILE
    metrics = _io.read_json(metrics_path) if metrics_path.exists() else None
    if status_data is not None:
        status = status_data.get("status")
        if status == "failed":
            return "failed", metrics, str(status_data.get("error", "failed (no message)"))
        if status == "pending":  # submitted, not started (nstyle-sweep on SLURM)
            return "pending", metrics, None
        if status == "running":
            pid, host = status_data.get("pid"), status_data.get("host")
            if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
                return "died", metrics, f"process {pid} ended without finishing the job"
            return "running", metrics, None
        if status == "completed":
            if metrics is None:
                why = "metrics.json unreadable" if metrics_path.exists() else "metrics.json missing"
                return "failed", None, f"job returned but {why}"
            return "completed", metrics, None
    if metrics is not None:
        return "completed", metrics, None
    if metrics_path.exists():  # present but unparsable: being written, or broken
        return "running", None, "metrics.json incomplete"
    tb = _log_traceback(path)
    if tb is not None:
        return "failed", None, tb
    return "running", None, None


def _is_job_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / STATUS_FILE).exists() or (path / METRICS_FILE).exists()


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory under ``sweep_dir`` (override names with '/' nest: walk the tree)."""
    out = []
    for root, dirs, _files in os.walk(sweep_dir):
        here = Path(root)
        if here != sweep_dir and _is_job_dir(here):
            out.append(here)
            dirs[:] = []  # a job's own subfolders (snapshots, .hydra) are not jobs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here == sweep_dir and d == SUMMARY_DIR))
    return out


def scan(sweep_dir: str | os.PathLike) -> list[Job]:
    """Classify every job directory of ``sweep_dir``, in Hydra's job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise CollectError(f"{sweep_dir}: no such directory; give the sweep directory (hydra.sweep.dir) of a multirun")
    if not sweep_dir.is_dir():
        raise CollectError(f"{sweep_dir}: not a directory; give the sweep directory (hydra.sweep.dir) of a multirun")
    jobs = []
    for path in find_job_dirs(sweep_dir):
        record = _io.read_json(path / STATUS_FILE)
        record = record if isinstance(record, dict) else {}
        raw = _read_yaml(path / ".hydra" / "overrides.yaml")
        if raw is None:  # submitted, not started: the launcher's record names the job
            raw = record.get("overrides")
        overrides = {}
        if isinstance(raw, list):
            for item in raw:
                kv = _split_override(str(item))
                if kv is not None:
                    overrides[kv[0]] = kv[1]
        status, metrics, error = _classify(path)
        if status == "completed" and (path / RESULT_FILE).exists():
            try:
                images.load_image(path / RESULT_FILE)
            except images.ImageError as e:
                status, error = "failed", f"{RESULT_FILE} unreadable: {e}"
        num = _job_num(path)
        if num is None and isinstance(record.get("num"), int):
            num = record["num"]
        jobs.append(
            Job(
                name=str(path.relative_to(sweep_dir)),
                path=path,
                status=status,
                overrides=overrides,
                num=num if num is not None else 10**9,
                metrics=metrics,
                error=error,
                slurm_job=str(record["slurm_job"]) if record.get("slurm_job") else None,
            )
        )
    jobs = _with_slurm_states(jobs)
    jobs.sort(key=lambda j: (j.num, j.name))
    return jobs


def _with_slurm_states(jobs: list[Job]) -> list[Job]:
    """``jobs`` corrected by what SLURM says of the ones it ran (a ``slurm_job`` in ``status.json``)."""
    waiting = [j for j in jobs if j.status in ("running", "pending", "died") and j.slurm_job]
    states = slurm.states(j.slurm_job for j in waiting) if waiting else {}
    for j in waiting:
        state = states.get(j.slurm_job)
        if slurm.ended(state):
            j.status, j.error = "died", f"SLURM job {j.slurm_job} {slurm.describe(state)}"
    return jobs


def expected_members(sweep_dir: str | os.PathLike) -> list[list[str]] | None:
    """The swept overrides of each job the sweep defines, in job order, from ``multirun.yaml``
    (None if it cannot tell)."""
    conf = _read_yaml(Path(sweep_dir) / "multirun.yaml")
    if not isinstance(conf, dict):
        return None
    hydra = conf.get("hydra") or {}
    params = ((hydra.get("sweeper") or {}).get("params")) or {}
    task = ((hydra.get("overrides") or {}).get("task")) or []
    try:
        from nstyle.cli.sweep import expand, split_sweep

        _fixed, sweeps = split_sweep([str(t) for t in task], {str(k): str(v) for k, v in params.items()})
    except Exception:  # noqa: BLE001 -- an exotic sweeper: just do not count pending jobs
        return None
    return [m.overrides for m in expand(sweeps)]


def expected_jobs(sweep_dir: str | os.PathLike) -> int | None:
    """Number of jobs the sweep defines, from ``multirun.yaml`` (None if it cannot tell)."""
    members = expected_members(sweep_dir)
    return None if members is None else len(members)


def swept_keys(jobs: Sequence[Job], sweep_dir: str | os.PathLike | None = None) -> list[str]:
    """Override keys whose value differs between jobs (or that the sweep declares), in order."""
    order: dict[str, None] = {}
    for j in jobs:
        for k in j.overrides:
            order.setdefault(k, None)
    keys = [k for k in order if k not in _IGNORED_KEYS and len({j.overrides.get(k) for j in jobs}) > 1]
    if sweep_dir is not None:  # declared sweeps count even while only one of their values has run
        conf = _read_yaml(Path(sweep_dir) / "multirun.yaml")
        params = (
            (((conf or {}).get("hydra") or {}).get("sweeper") or {}).get("params") or {}
            if isinstance(conf, dict)
            else {}
        )
        cli = (
            (((conf or {}).get("hydra") or {}).get("overrides") or {}).get("task") or []
            if isinstance(conf, dict)
            else []
        )
        declared = [str(k) for k in params] + [k for t in cli if (k := _sweep_key(str(t)))]
        for k in declared:
            k = k.lstrip("+~")
            if k not in keys and k in order and k not in _IGNORED_KEYS:
                keys.append(k)
    return keys


def _sweep_key(text: str) -> str | None:
    """The key of a command-line override if it is a sweep (``a=1,2``), else None."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        (o,) = OverridesParser.create().parse_overrides([text])
        return o.get_key_element() if o.is_sweep_override() else None
    except Exception:  # noqa: BLE001 -- unparsable: not a sweep we can name
        return None


# ------------------------------------------------------------------------- metrics


def _get(d: Mapping | None, *paths: str):
    """First present value among dotted ``paths`` in nested dict ``d``."""
    for p in paths:
        cur: Any = d
        for part in p.split("."):
            if isinstance(cur, Mapping) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None:
            return cur
    return None


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def metrics_row(metrics: Mapping | None) -> dict[str, float | None]:
    """The numbers every stylisation's ``metrics.json`` provides, under stable column names."""
    m = metrics or {}
    return {
        "content_loss": _num(_get(m, "final.content", "final_content_loss", "content_loss", "losses.content")),
        "style_loss": _num(_get(m, "final.style", "final_style_loss", "style_loss", "losses.style")),
        "total_loss": _num(_get(m, "final_loss", "final.loss", "final.total", "final_total_loss", "total_loss")),
        "iterations": _num(_get(m, "iterations", "steps", "final.iterations")),
        "evals": _num(_get(m, "evals", "evaluations", "loss_evaluations", "final.evals")),
        "wall_time_s": _num(_get(m, "wall_s", "wall_time_s", "wall_time", "time.wall_s", "timing.wall_s")),
    }


def loss_history(metrics: Mapping | None, term: str = "total") -> list[float] | None:
    """The per-iteration history of one loss term, from a few plausible layouts."""
    h = _get(metrics, "history", "loss_history")
    if isinstance(h, Mapping):
        v = h.get(term) or h.get(f"loss/{term}") or (h.get("loss") if term == "total" else None)
        return [float(x) for x in v] if isinstance(v, list) else None
    if isinstance(h, list) and h:
        if isinstance(h[0], Mapping):
            vals = [_num(r.get(term, r.get("loss") if term == "total" else None)) for r in h]
            return [v for v in vals if v is not None] or None
        return [float(x) for x in h]
    return None


# ---------------------------------------------------------------- image evaluation


class Evaluator:
    """LPIPS to the content image and :func:`nstyle.metrics.style_distance` to the style image."""

    def __init__(self, lpips_net: str = "vgg16"):
        self.lpips_net = lpips_net
        self._cache: dict = {}

    def _load(self, spec: str, shape: tuple[int, int] | None, side: int | None) -> np.ndarray:
        key = (spec, shape, side)
        if key not in self._cache:
            img = images.load_image(spec)
            img = images.resize(img, shape) if shape is not None else images.resize_longest(img, side) if side else img
            self._cache[key] = img
        return self._cache[key]

    def lpips(self, a: np.ndarray, b: np.ndarray) -> float:
        from nstyle.lpips import lpips_distance

        return float(np.asarray(lpips_distance(a[None], b[None], net=self.lpips_net))[0])

    def style_distance(self, image: np.ndarray, style: np.ndarray) -> float:
        return metrics.style_distance(image, style)

    def evaluate(self, job: Job) -> dict[str, float | None]:
        """``lpips_content`` and ``style_distance`` of the job's result (None where not possible)."""
        out: dict[str, float | None] = {"lpips_content": None, "style_distance": None}
        result_path = job.path / RESULT_FILE
        if not result_path.exists():
            return out
        cfg = _read_yaml(job.path / ".hydra" / "config.yaml")
        cfg = cfg if isinstance(cfg, dict) else {}
        result = images.load_image(result_path)
        shape = result.shape[:2]
        content, style = cfg.get("content"), cfg.get("style")
        if isinstance(content, str) and content:
            try:
                out["lpips_content"] = self.lpips(result, self._load(content, shape, None))
            except Exception as e:  # noqa: BLE001 -- a missing input file must not stop the table
                job.error = job.error or f"lpips: {e}"
        if isinstance(style, (list, tuple)):
            style = style[0] if style else None
        if isinstance(style, str) and style:
            try:
                out["style_distance"] = self.style_distance(result, self._load(style, None, max(shape)))
            except Exception as e:  # noqa: BLE001
                job.error = job.error or f"style distance: {e}"
        return out


# ------------------------------------------------------------------------ outputs


def value_label(key: str, value: str) -> str:
    """A short label for a swept value: a layer list shows its deepest layer."""
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        items = [x.strip().strip("'\"") for x in v[1:-1].split(",") if x.strip()]
        if items and all(re.fullmatch(r"(conv|relu)\d_\d", x) for x in items):
            return items[0] if len(items) == 1 else f"{items[0]}…{items[-1]}"
    return v


def key_label(key: str) -> str:
    return {
        "loss.alpha": "α",
        "loss.beta": "β",
        "loss.style_layers": "style layers (w_l = 1/n)",
        "loss.content_layers": "content layer",
        "network.pooling": "VGG pooling",
        "optim": "optimiser",
        "init": "initial image",
    }.get(key, key)


def _sort_values(values: Iterable[str]) -> list[str]:
    """Keep sweep order (job order) — that is the order the user wrote."""
    return list(dict.fromkeys(values))


def alpha_over_beta(job: Job) -> float | None:
    """α/β of a job, from its composed config (``loss.alpha`` / ``loss.beta``)."""
    cfg = _read_yaml(job.path / ".hydra" / "config.yaml")
    loss = cfg.get("loss") if isinstance(cfg, dict) else None
    if not isinstance(loss, dict):
        return None
    a, b = _num(loss.get("alpha")), _num(loss.get("beta"))
    return a / b if a is not None and b else None


def build_rows(jobs: Sequence[Job], keys: Sequence[str], evaluator: Evaluator | None) -> list[dict]:
    rows = []
    ratio = any(k in ("loss.alpha", "loss.beta") for k in keys)
    for j in jobs:
        row: dict[str, Any] = {"job": j.name, "status": j.status}
        if ratio:
            row["alpha/beta"] = alpha_over_beta(j)
        for k in keys:
            row[k] = j.overrides.get(k, "")
        row.update(metrics_row(j.metrics))
        hist = loss_history(j.metrics)
        # final / initial total loss: > 1 means the optimisation made the image worse (diverged)
        row["loss_ratio"] = (
            (row["total_loss"] / hist[0]) if hist and hist[0] and row["total_loss"] is not None else None
        )
        if row["loss_ratio"] is not None and row["loss_ratio"] > 1 and j.status == "completed":
            j.error = j.error or f"final loss {row['loss_ratio']:.3g}× the initial one: the optimisation diverged"
        if evaluator is not None and j.status == "completed":
            row.update(evaluator.evaluate(j))
        else:
            row.update({"lpips_content": None, "style_distance": None})
        row["error"] = j.error or ""
        rows.append(row)
    return rows


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0].keys())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def to_markdown(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no jobs)\n"
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _settings(jobs: Sequence[Job], keys: Sequence[str]) -> dict[str, str]:
    """Overrides shared by every job (the fixed settings of the sweep), for figure footers."""
    if not jobs:
        return {}
    common = dict(jobs[0].overrides)
    for j in jobs[1:]:
        common = {k: v for k, v in common.items() if j.overrides.get(k) == v}
    return {k: v for k, v in common.items() if k not in keys and k not in _IGNORED_KEYS}


def grid_figure(
    jobs: Sequence[Job], rows_key: str | None, cols_key: str | None, *, title: str, settings: Mapping[str, object]
):
    """Results arranged by two swept keys (either may be None: one row / one column)."""
    rv = _sort_values(j.overrides.get(rows_key, "") for j in jobs) if rows_key else [""]
    cv = _sort_values(j.overrides.get(cols_key, "") for j in jobs) if cols_key else [""]
    cells: list[list] = [[None] * len(cv) for _ in rv]
    missing = [["not run"] * len(cv) for _ in rv]
    for j in jobs:
        r = rv.index(j.overrides.get(rows_key, "")) if rows_key else 0
        c = cv.index(j.overrides.get(cols_key, "")) if cols_key else 0
        result = j.path / RESULT_FILE
        if j.status == "completed" and result.exists():
            try:
                cells[r][c] = images.load_image(result)
                continue
            except Exception:  # noqa: BLE001 -- a half-written PNG shows as missing
                pass
        missing[r][c] = j.status.upper()

    def labels(key, values):
        if key in ("loss.alpha", "loss.beta"):  # the paper's axis is the ratio α/β
            out = []
            for v in values:
                r = next((alpha_over_beta(j) for j in jobs if j.overrides.get(key) == v), None)
                out.append(f"α/β = {r:.0e}" if r is not None else value_label(key, v))
            return out
        return [value_label(key or "", v) for v in values]

    def title_of(key):
        return ("α/β" if key in ("loss.alpha", "loss.beta") else key_label(key)) if key else ""

    return figures.image_grid(
        cells,
        labels(rows_key, rv),
        labels(cols_key, cv),
        title=title,
        row_title=title_of(rows_key),
        col_title=title_of(cols_key),
        settings=settings,
        missing=missing,
    )


@dataclasses.dataclass
class Summary:
    sweep_dir: Path
    out_dir: Path
    jobs: list[Job]
    rows: list[dict]
    keys: list[str]
    counts: dict[str, int]
    files: dict[str, Path]

    def report(self) -> str:
        c = self.counts
        dirs = sum(1 for j in self.jobs if j.path.is_dir())
        head = f"{self.sweep_dir}: {dirs} job dirs — " + ", ".join(
            f"{c[s]} {s}" for s in STATES if c[s] or s == "completed"
        )
        lines = [head]
        for j in self.jobs:
            if j.status != "completed" or j.error:
                lines.append(f"  {j.status:9s} {j.name}" + (f": {j.error}" if j.error else ""))
        if self.files:
            lines.append("wrote " + ", ".join(str(p) for p in self.files.values()))
        return "\n".join(lines)


def summarize(
    sweep_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    rows_key: str | None = None,
    cols_key: str | None = None,
    evaluate: bool = True,
    lpips_net: str = "vgg16",
    title: str | None = None,
) -> Summary:
    """Scan ``sweep_dir`` and write its table, grid and loss curves into ``out_dir``."""
    sweep_dir = Path(sweep_dir)
    jobs = scan(sweep_dir)
    keys = swept_keys(jobs, sweep_dir)
    for k in (rows_key, cols_key):
        if k is not None and k not in keys and not any(k in j.overrides for j in jobs):
            raise CollectError(
                f"--rows/--cols key '{k}' is not an override of any job; swept keys: {', '.join(keys) or 'none'}"
            )
    counts = {s: sum(1 for j in jobs if j.status == s) for s in STATES}
    expected = expected_jobs(sweep_dir)
    counts["pending"] += max(0, expected - len(jobs)) if expected is not None else 0
    out = Path(out_dir) if out_dir is not None else sweep_dir / SUMMARY_DIR
    files: dict[str, Path] = {}
    evaluator = Evaluator(lpips_net) if evaluate else None
    rows = build_rows(jobs, keys, evaluator)
    summary = Summary(sweep_dir, out, jobs, rows, keys, counts, files)
    if not jobs:
        _io.write_text(out / "status.txt", summary.report() + "\n")
        files["status"] = out / "status.txt"
        return summary
    _io.write_text(out / "table.csv", to_csv(rows))
    files["csv"] = out / "table.csv"
    md_cols = [c for c in rows[0] if c not in ("job",)]
    _io.write_text(out / "table.md", to_markdown(rows, md_cols))
    files["md"] = out / "table.md"
    if rows_key is None and cols_key is None:
        rows_key = keys[0] if keys else None
        cols_key = keys[1] if len(keys) > 1 else None
    settings = _settings(jobs, keys)
    name = title or sweep_dir.resolve().name
    if len(keys) > 2:
        settings = {**settings, "note": f"grid shows {rows_key} × {cols_key}; other swept keys overlap — see table"}
    fig = grid_figure(jobs, rows_key, cols_key, title=f"{name}: results", settings=settings)
    files["grid"] = figures.save_figure(fig, out / "grid.png")
    curves = {}
    for j in jobs:
        h = loss_history(j.metrics)
        if h:
            label = ", ".join(f"{key_label(k)}={value_label(k, j.overrides.get(k, ''))}" for k in keys) or j.name
            curves[label] = h
    if curves:
        fig = figures.loss_curves(curves, title=f"{name}: total loss per run", settings=settings)
        files["curves"] = figures.save_figure(fig, out / "loss_curves.png")
    files["status"] = out / "status.txt"
    _io.write_text(out / "status.txt", summary.report() + "\n")
    return summary


@command("nstyle-collect")
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nstyle-collect", description="Tabulate and plot a Hydra sweep directory.")
    p.add_argument("sweep_dir", help="the multirun sweep directory (hydra.sweep.dir)")
    p.add_argument("--out", default=None, help=f"output folder (default: SWEEP_DIR/{SUMMARY_DIR})")
    p.add_argument("--rows", default=None, help="swept key for the grid's rows (default: the first swept key)")
    p.add_argument("--cols", default=None, help="swept key for the grid's columns (default: the second)")
    p.add_argument("--no-eval", action="store_true", help="skip LPIPS and the style distance (no network needed)")
    p.add_argument("--lpips-net", default="vgg16", choices=("vgg16", "alexnet"))
    p.add_argument("--title", default=None)
    p.add_argument("--strict", action="store_true", help="exit 1 if any job failed or died")
    args = p.parse_args(argv)
    s = summarize(
        args.sweep_dir,
        args.out,
        rows_key=args.rows,
        cols_key=args.cols,
        evaluate=not args.no_eval,
        lpips_net=args.lpips_net,
        title=args.title,
    )
    print(s.report())
    return 1 if args.strict and (s.counts["failed"] or s.counts["died"]) else 0


if __name__ == "__main__":
    sys.exit(main())
