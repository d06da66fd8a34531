"""The Pareto frontier of (compute, score) points and how points stand against a baseline's curve.

Used by the LengthDrop search (Kim & Cho 2021, Alg. 1 keeps the frontier of everything evaluated), by the
budget's choice, and by ``dyntok.compare``'s above-the-baseline goals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dyntok.errors import ConfigError


@dataclass(frozen=True)
class Point:
    """One evaluated configuration: its gene (per-layer token counts at the reference length, see
    :meth:`dyntok.core.lengths.LengthConfig.from_counts`), its MACs per example and its task score."""

    gene: tuple[int, ...]
    macs: float
    score: float



def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both objectives (fewer or equal MACs and higher or equal score,
    one strictly), sorted by MACs. Ties on both keep the first seen."""
    best: list[Point] = []
    for p in sorted(points, key=lambda p: (p.macs, -p.score)):
        if not best or p.score > best[-1].score:
            best.append(p)
    return best



def near_frontier(points: Sequence[Point], margin: float) -> list[Point]:
    """Points scoring at most ``margin`` below the best score at equal or fewer MACs (the frontier itself
    at ``margin=0``), sorted by MACs: the candidates worth re-scoring on fresh examples, since a frontier
    picked on one sample of examples holds the genes that were lucky on it."""
    out, best = [], -math.inf
    for p in sorted(points, key=lambda p: (p.macs, -p.score)):
        best = max(best, p.score)
        if p.score >= best - margin:
            out.append(p)
    return out



def envelope_at(curve: Sequence[tuple[float, float]], x: float) -> float | None:
    """A baseline's metric at MACs ratio x: linear along the upper envelope of its (MACs ratio, metric)
    points, i.e. their Pareto frontier, so where two schedules cross the better one counts (None outside
    the range)."""
    pts = [(p.macs, p.score) for p in pareto_frontier([Point((), x0, y0) for x0, y0 in curve])]
    if pts and max(curve)[0] > pts[-1][0]:  # dearer dominated points: the envelope stays flat up to them
        pts.append((max(curve)[0], pts[-1][1]))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None



def compare_to_curve(points: Sequence[tuple[float, float]], curve: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """How (MACs ratio, score) ``points`` stand against a curve's upper envelope at their MACs ratios.

    Returns:
        ``compared`` (points inside the curve's range), ``below`` (how many score under it), ``worst``
        (the most negative point minus envelope, or the smallest margin when none is below; None without
        a comparable point) and ``below_at`` (the MACs ratios of the points below).
    """
    diffs = [(x, y - e) for x, y in points if (e := envelope_at(curve, x)) is not None]
    below = [x for x, d in diffs if d < 0]
    return {"compared": len(diffs), "below": len(below), "worst": min((d for _, d in diffs), default=None),
            "below_at": sorted(below)}



def best_under_budget(frontier: Sequence[Point], max_macs: float) -> Point:
    """The highest-scoring frontier point with MACs <= ``max_macs``.

    Raises:
        ConfigError: no point is that cheap (says the cheapest there is).
    """
    ok = [p for p in frontier if p.macs <= max_macs * (1 + 1e-9)]
    if not ok:
        cheapest = min(frontier, key=lambda p: p.macs)
        raise ConfigError(
            f"search.budget: no searched configuration costs <= {max_macs:.4g} MACs per example; the cheapest "
            f"costs {cheapest.macs:.4g} (raise the budget or the length-drop ratio bound)"
        )
    return max(ok, key=lambda p: (p.score, -p.macs))
