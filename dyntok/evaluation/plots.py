"""Plots of a task metric against compute, one curve per label (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    """matplotlib.pyplot on the headless backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Lay out, write as PNG (creating the folder; ``metadata``: PNG text entries) and close ``fig``; returns
    the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata=metadata)
    _pyplot().close(fig)
    return path


def plot_curves(curves: dict[str, Sequence[tuple[float, float]]], path: str | Path, xlabel: str, ylabel: str,
                title: str = "", xlog: bool = False,
                anchors: dict[str, Sequence[tuple[float, float]]] | None = None) -> Path:
    """One line per label, points sorted by x; ``anchors``: published points, drawn as black stars joined by a
    dashed line, one series per name; saved as PNG (headless backend)."""
    plt = _pyplot()
    many = len(curves) + len(anchors or {}) > 6  # the legend then goes beside the axes, where it hides no point
    fig, ax = plt.subplots(figsize=(10.5 if many else 6.4, 4.8 if many else 4.4), dpi=120)
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10").colors
    markers = "os^Dv<>pPX*h"
    for i, (label, pts) in enumerate(curves.items()):
        pts = sorted(pts)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker=markers[i % len(markers)], ms=4, lw=1.4, label=label, color=colors[i % len(colors)])
    for k, (label, pts) in enumerate((anchors or {}).items()):
        xs, ys = zip(*sorted(pts), strict=True)
        ax.plot(xs, ys, ls="--", lw=1, marker="**PX"[k % 4], ms=9, color="black", label=label)
    if xlog:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_points(points: Sequence[dict[str, Any]], path: str | Path, title: str = "", digest: str = "") -> Path:
    """One marker per point (``what``: its series, ``macs``: real-length MACs ratio, ``metric`` in percent,
    ``sd``: its standard deviation over seeds, drawn as an error bar); the points of one series share a color
    and are joined in MACs order. ``digest`` is stored in the PNG as the text entry ``dyntok-digest`` (what
    ``python -m dyntok.report --check`` compares)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10.5, 4.8), dpi=120)
    series: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        series.setdefault(p["what"], []).append(p)
    colors = plt.get_cmap("tab20" if len(series) > 10 else "tab10").colors
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(pts, key=lambda p: p["macs"])
        ax.errorbar([p["macs"] for p in pts], [p["metric"] for p in pts], yerr=[p["sd"] for p in pts],
                    fmt="-" + "os^Dv<>pPX"[i % 10], ms=6, lw=1, capsize=3, color=colors[i % len(colors)], label=name)
    ax.set_xlabel("MACs ratio at real length (1.0 = full model)")
    ax.set_ylabel("accuracy / F1 (%), mean +- sd over seeds")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path, {"dyntok-digest": digest} if digest else None)


def plot_controller(trace: dict[str, Sequence[tuple[int, float]]], path: str | Path, title: str = "") -> Path:
    """A compute target's trace (:func:`dyntok.evaluation.results.controller_trace`): the MACs ratios
    (expected, hard, the target of the step) on the left axis and the Lagrange multiplier on the right, against
    training steps; saved as PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    styles = {"hard_macs_ratio": ("tab:blue", "-"), "expected_macs_ratio": ("tab:cyan", ":"),
              "target_macs": ("black", "--")}
    for name, (color, ls) in styles.items():
        if trace.get(name):
            xs, ys = zip(*trace[name], strict=True)
            ax.plot(xs, ys, color=color, ls=ls, lw=1.3, label=name.replace("_", " "))
    ax.set_xlabel("training step")
    ax.set_ylabel("MACs ratio")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    right = ax.twinx()
    if trace.get("multiplier"):
        xs, ys = zip(*trace["multiplier"], strict=True)
        right.plot(xs, ys, color="tab:red", lw=1.1, label="multiplier")
    right.set_ylabel("Lagrange multiplier", color="tab:red")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="lower left")
    ax.set_title(title)
    return _save(fig, path)
