"""Matplotlib figures for experiments: image rows, image grids and loss curves.

Every figure carries a title, labelled axes and the settings that produced it, written
on the figure itself, so a PNG copied out of its run directory still says what it shows::

    fig = image_row([original, *recons], ["original", "conv1_2", ...],
                    title="Content reconstructions", settings={"size": 256, "steps": 500})
    save_figure(fig, "out/content_reconstruction.png")

Figures are built with the object-oriented API on the non-interactive Agg canvas (no
pyplot state, safe in worker processes and threads). Images are (H, W, 3) RGB in [0, 1];
``None`` stands for a missing image (a failed or still-running job) and is drawn as a
labelled blank cell.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nstyle import _io

SETTINGS_FONTSIZE = 7.5


def settings_text(settings: Mapping[str, object] | None, width: int = 150) -> str:
    """``{"size": 256, "steps": 500}`` -> ``"size=256  steps=500"`` wrapped to ``width`` chars."""
    if not settings:
        return ""
    parts = [f"{k}={_fmt(v)}" for k, v in settings.items()]
    return "\n".join(textwrap.wrap("   ".join(parts), width=width, break_on_hyphens=False))


def _fmt(v: object) -> str:
    if isinstance(v, (str, Path)) and Path(str(v)).is_absolute():
        return Path(str(v)).name  # a file of this machine: its name says what it is, its folder is private
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _footer(fig: Figure, settings: Mapping[str, object] | None, width_chars: int) -> float:
    """Write the settings at the bottom of ``fig``; return the fraction of height it uses."""
    text = settings_text(settings, width=width_chars)
    if not text:
        return 0.02
    lines = text.count("\n") + 1
    fig.text(0.01, 0.005, text, fontsize=SETTINGS_FONTSIZE, family="monospace", va="bottom", ha="left", color="0.25")
    return min(0.4, (lines * SETTINGS_FONTSIZE * 1.45 + 6) / 72.0 / fig.get_figheight())


def _show(ax, image: np.ndarray | None, missing: str = "missing", shape: tuple[int, int] | None = None) -> None:
    """Draw ``image``; a ``None`` becomes a grey panel of ``shape`` labelled ``missing``."""
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        h, w = shape or (1, 1)
        ax.imshow(np.full((h, w, 3), 0.92, np.float32))  # keeps the panel's aspect like its neighbours
        ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3")
        return
    ax.imshow(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0), interpolation="lanczos")


def _shape_of(images: Sequence[np.ndarray | None]) -> tuple[int, int] | None:
    return next((tuple(np.shape(i)[:2]) for i in images if i is not None), None)


def image_row(
    images: Sequence[np.ndarray | None],
    labels: Sequence[str],
    *,
    title: str,
    settings: Mapping[str, object] | None = None,
    sublabels: Sequence[str] | None = None,
    xlabel: str | None = None,
    panel_in: float = 2.3,
) -> Figure:
    """Images side by side, each with a label above and optional lines of numbers below."""
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    shape = _shape_of(images)
    panel_h = panel_in * (shape[0] / shape[1] if shape else 1.0)
    width = panel_in * n + 0.4
    footer_lines = settings_text(settings, width=int(16 * panel_in * n)).count("\n") + 1 if settings else 0
    sub_lines = max((s.count("\n") + 1 for s in sublabels), default=0) if sublabels is not None else 0
    # heights in inches: title + labels above; sublabels, x label and settings below
    top_in = 0.75
    below_in = 0.12 + 0.17 * sub_lines + (0.25 if xlabel else 0.0) + footer_lines * SETTINGS_FONTSIZE * 1.45 / 72.0
    height = panel_h + top_in + below_in
    fig = _new_figure(width, height)
    _footer(fig, settings, width_chars=int(16 * panel_in * n))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, (ax, img, lab) in enumerate(zip(axes, images, labels)):
        _show(ax, img, shape=shape)
        ax.set_title(lab, fontsize=10)
        if sublabels is not None:
            ax.set_xlabel(sublabels[i], fontsize=8)
    fig.suptitle(title, fontsize=12, y=1.0 - 0.1 / height, va="top")
    if xlabel:
        fig.supxlabel(
            xlabel, fontsize=9, y=(footer_lines * SETTINGS_FONTSIZE * 1.45 / 72.0 + 0.05) / height, va="bottom"
        )
    fig.subplots_adjust(
        left=0.2 / width, right=1 - 0.2 / width, top=1 - top_in / height, bottom=below_in / height, wspace=0.04
    )
    return fig


def image_grid(
    cells: Sequence[Sequence[np.ndarray | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str,
    row_title: str = "",
    col_title: str = "",
    settings: Mapping[str, object] | None = None,
    missing: Sequence[Sequence[str]] | None = None,
    panel_in: float = 2.0,
) -> Figure:
    """A rows × cols grid of images; ``missing[r][c]`` labels a ``None`` cell (e.g. "FAILED")."""
    rows, cols = len(cells), max((len(r) for r in cells), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("image_grid needs at least one row and one column")
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"grid is {rows}×{cols} but got {len(row_labels)} row and {len(col_labels)} column labels")
    left_in = 0.9
    shape = _shape_of([i for row in cells for i in row])
    panel_h = panel_in * (shape[0] / shape[1] if shape else 1.0)  # panels keep the images' aspect
    fig = _new_figure(left_in + panel_in * cols + 0.2, panel_h * rows + 1.7)
    bottom = _footer(fig, settings, width_chars=int(16 * (panel_in * cols + 1)))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            img = cells[r][c] if c < len(cells[r]) else None
            label = missing[r][c] if missing is not None and img is None else "missing"
            _show(axes[r][c], img, label, shape)
            if r == 0:
                axes[r][c].set_title(col_labels[c], fontsize=9)
            if c == 0:
                axes[r][c].set_ylabel(row_labels[r], fontsize=9)
    w, h = fig.get_figwidth(), fig.get_figheight()
    fig.suptitle(title, fontsize=12, y=1.0 - 0.08 / h, va="top")
    top = 1.0 - (0.95 if col_title else 0.65) / h
    if col_title:
        fig.text(0.5 * (left_in / w + 1.0), top + 0.3 / h, col_title, ha="center", va="bottom", fontsize=10)
    if row_title:
        fig.text(0.12 / w, 0.5 * (top + bottom + 0.02), row_title, rotation=90, ha="left", va="center", fontsize=10)
    fig.subplots_adjust(left=left_in / w, right=1 - 0.2 / w, top=top, bottom=bottom + 0.02, wspace=0.03, hspace=0.03)
    return fig


def loss_curves(
    curves: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    ylabel: str = "loss",
    xlabel: str = "iteration",
    settings: Mapping[str, object] | None = None,
    logy: bool = True,
    legend_title: str | None = None,
) -> Figure:
    """One line per run: ``{label: values}`` or ``{label: (steps, values)}``.

    Non-finite and (with ``logy``) non-positive values are dropped rather than plotted,
    so a run that diverged still shows where it was before.
    """
    n = max(1, len(curves))
    ncol_legend = 1 if n <= 12 else 2
    fig = _new_figure(7.5 + 1.6 * ncol_legend, 4.6)
    bottom = _footer(fig, settings, width_chars=120)
    ax = fig.add_subplot(1, 1, 1)
    cmap = _colormap(n)
    for i, (label, data) in enumerate(curves.items()):
        if isinstance(data, tuple) and len(data) == 2:
            x, y = np.asarray(data[0], dtype=float), np.asarray(data[1], dtype=float)
        else:
            y = np.asarray(data, dtype=float)
            x = np.arange(1, len(y) + 1, dtype=float)
        keep = np.isfinite(y) & ((y > 0) if logy else True)
        if keep.any():
            ax.plot(x[keep], y[keep], label=label, color=cmap[i], lw=1.3)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    if curves:
        ax.legend(
            fontsize=7,
            ncol=ncol_legend,
            title=legend_title,
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
        )
    fig.subplots_adjust(left=0.09, right=0.98 - 0.2 * ncol_legend - 0.02, top=0.9, bottom=bottom + 0.12)
    return fig


def _colormap(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    if n <= 10:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (format from the extension) atomically."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    return _io.atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
