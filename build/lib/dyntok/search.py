"""Evolutionary search over length configurations (Kim & Cho 2021, Sec. 3.3 and Alg. 1).

A **gene** is a non-increasing tuple (l_1, ..., l_L) of kept tokens at a reference length T_ref
(``data.max_length``); it acts as the ratios l_j / T_ref of each example's real length (see
:class:`dyntok.lengths.LengthConfig`). Objectives: compute (MACs on the search split, lower is better)
and task score (higher is better).

- Initial population: ``population`` constant-ratio genes l_j = ceil(q * l_{j-1}), q spread evenly from
  1 - p (the LengthDrop floor, the smallest sub-model) to 1 (the full model).
- Each iteration keeps the **Pareto frontier** of everything evaluated, then adds ``mutations`` mutants
  (each layer resampled with probability ``mutation_prob`` uniformly between its neighbours, so the gene
  stays monotone) and ``crossovers`` children (element-wise ceil of the mean of two frontier parents).
- Genes whose MACs fall outside [smallest, full] are rejected without evaluation.
- Every evaluated gene is appended to a JSON-lines **store**; a rerun replays it (same seed, same genes, no
  re-evaluation), so an interrupted search resumes and ends with the same frontier.
- Optional **re-scoring** (not in the paper): the genes near the frontier (:func:`near_frontier`) are
  scored again on examples the search never saw, and the frontier and the budget's choice come from those
  scores, which are free of the search's selection bias.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyntok.errors import ConfigError, DataError
from dyntok.lengths import LengthConfig

Gene = tuple[int, ...]


@dataclass(frozen=True)
class Point:
    """One evaluated gene: its MACs per example (on the search split) and task score."""

    gene: Gene
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


def constant_ratio_gene(q: float, num_layers: int, ref_length: int) -> Gene:
    """l_j = ceil(q * l_{j-1}), l_0 = ref_length (q = 1 - p gives the LengthDrop smallest sub-model)."""
    genes, cur = [], ref_length
    for _ in range(num_layers):
        cur = max(1, math.ceil(q * cur - 1e-9))
        genes.append(cur)
    return tuple(genes)


def gene_to_config(gene: Gene, ref_length: int) -> LengthConfig:
    return LengthConfig(tuple(min(1.0, g / ref_length) for g in gene), "ratio", min_tokens=1)


def mutate(gene: Gene, prob: float, ref_length: int, rng: random.Random) -> Gene:
    """Resample each layer with probability ``prob`` uniformly in [l_{j+1}, l_{j-1}] (monotone kept)."""
    g = list(gene)
    for j in range(len(g)):
        if rng.random() < prob:
            hi = g[j - 1] if j > 0 else ref_length
            lo = g[j + 1] if j + 1 < len(g) else 1
            g[j] = rng.randint(lo, hi)
    return tuple(g)


def crossover(a: Gene, b: Gene) -> Gene:
    """Element-wise ceil of the mean of two monotone genes (monotone again)."""
    return tuple(math.ceil((x + y) / 2) for x, y in zip(a, b, strict=True))


class SearchStore:
    """Evaluated genes in a JSON-lines file, one ``{"gene", "macs", "score"}`` per line.

    A half-written last line (the process was killed while writing) is ignored.

    Raises:
        DataError: a line other than the last is not valid JSON (names file and line).
    """

    def __init__(self, path: str | os.PathLike | None, meta: dict[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.points: dict[Gene, Point] = {}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta_path = self.path.with_suffix(".meta.json")
        if meta is not None:
            if meta_path.exists() and self.path.exists():
                old = json.loads(meta_path.read_text())
                if old != json.loads(json.dumps(meta)):
                    raise ConfigError(
                        f"search store {self.path} was written by another search ({old}); use a new "
                        f"search.store or delete it"
                    )
            meta_path.write_text(json.dumps(meta))
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for i, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines):
                        break
                    raise DataError(f"{self.path}:{i}: not a JSON search record") from None
                p = Point(tuple(rec["gene"]), float(rec["macs"]), float(rec["score"]))
                self.points[p.gene] = p

    def __contains__(self, gene: Gene) -> bool:
        return gene in self.points

    def get(self, gene: Gene) -> Point:
        return self.points[gene]

    def add(self, p: Point) -> None:
        self.points[p.gene] = p
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"gene": list(p.gene), "macs": p.macs, "score": p.score}) + "\n")
                f.flush()
                os.fsync(f.fileno())


@dataclass
class SearchResult:
    """``frontier``: the Pareto frontier of ``points``, every in-bounds gene the run considered."""

    frontier: list[Point]
    evaluated: int
    cached: int
    seconds: float
    points: list[Point] = field(default_factory=list)

    @property
    def evals_per_minute(self) -> float:
        return 60 * self.evaluated / self.seconds if self.seconds > 0 else float("inf")


class EvolutionarySearch:
    """The LAT evolutionary search.

    Args:
        evaluate: gene -> task score on the search split (higher is better).
        macs: gene -> MACs per example on the search split.
        num_layers: L.
        ref_length: T_ref, tokens a gene's counts are measured against.
        length_drop_prob: p; the smallest gene is the constant-ratio gene q = 1 - p.
        population, iterations, mutations, crossovers, mutation_prob: Alg. 1's sizes (paper defaults
            20, 30, 30, 30, 0.5).
        seed: the search's own RNG seed.
        store: a :class:`SearchStore` (evaluated genes; resume).
        progress: show a progress bar (evaluations done and left).
    """

    def __init__(self, evaluate: Callable[[Gene], float], macs: Callable[[Gene], float], num_layers: int,
                 ref_length: int, length_drop_prob: float = 0.2, population: int = 20, iterations: int = 30,
                 mutations: int = 30, crossovers: int = 30, mutation_prob: float = 0.5, seed: int = 0,
                 store: SearchStore | None = None, progress: bool = True) -> None:
        if not 0 < length_drop_prob < 1:
            raise ConfigError(f"search length_drop_prob must be in (0, 1), got {length_drop_prob}")
        if population < 2 or iterations < 0 or mutations < 0 or crossovers < 0:
            raise ConfigError("search.population must be >= 2 and iterations, mutations, crossovers >= 0")
        self.evaluate_fn, self.macs_fn = evaluate, macs
        self.L, self.ref = num_layers, ref_length
        self.p = length_drop_prob
        self.population, self.iterations = population, iterations
        self.mutations, self.crossovers, self.mutation_prob = mutations, crossovers, mutation_prob
        self.rng = random.Random(seed)
        self.store = store or SearchStore(None)
        self.progress = progress
        self.smallest = constant_ratio_gene(1 - length_drop_prob, num_layers, ref_length)
        self.full = tuple([ref_length] * num_layers)
        self._macs_cache: dict[Gene, float] = {}
        self.min_macs, self.max_macs = self._macs(self.smallest), self._macs(self.full)
        self.evaluated = self.cached = 0

    def _macs(self, gene: Gene) -> float:
        if gene not in self._macs_cache:
            self._macs_cache[gene] = float(self.macs_fn(gene))
        return self._macs_cache[gene]

    def _point(self, gene: Gene) -> Point | None:
        """Evaluate (or replay) a gene; None if its compute is out of bounds."""
        m = self._macs(gene)
        if not (self.min_macs - 1e-6 <= m <= self.max_macs + 1e-6):
            return None
        if gene in self.store:
            self.cached += 1
            return self.store.get(gene)
        p = Point(gene, m, float(self.evaluate_fn(gene)))
        self.store.add(p)
        self.evaluated += 1
        return p

    def initial_population(self) -> list[Gene]:
        qs = [(1 - self.p) + self.p * i / (self.population - 1) for i in range(self.population)]
        return [constant_ratio_gene(q, self.L, self.ref) for q in qs]

    def run(self) -> SearchResult:
        from tqdm.auto import tqdm

        start = time.time()
        total = self.population + self.iterations * (self.mutations + self.crossovers)
        bar = tqdm(total=total, desc="search", unit="gene", disable=not self.progress)
        points: dict[Gene, Point] = {}

        def consider(gene: Gene) -> None:
            p = self._point(gene)
            bar.update(1)
            bar.set_postfix(evaluated=self.evaluated, cached=self.cached)
            if p is not None:
                points[gene] = p

        for g in self.initial_population():
            consider(g)
        for _ in range(self.iterations):
            parents = pareto_frontier(list(points.values()))
            genes = [p.gene for p in parents]
            for _ in range(self.mutations):
                consider(mutate(self.rng.choice(genes), self.mutation_prob, self.ref, self.rng))
            for _ in range(self.crossovers):
                a, b = self.rng.choice(genes), self.rng.choice(genes)
                consider(crossover(a, b))
        bar.close()
        return SearchResult(pareto_frontier(list(points.values())), self.evaluated, self.cached,
                            time.time() - start, list(points.values()))


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
