"""Evolutionary search over length configurations (Kim & Cho 2021, Sec. 3.3 and Alg. 1; the authors' code,
``length_adaptive_transformer/evolution.py`` and ``run_squad.py``).

A **gene** is a non-increasing tuple (l_1, ..., l_L) of kept tokens at a reference length T_ref
(``data.max_length``). With ``method.length_unit=tokens`` (the authors') it is absolute: an input of n real
tokens keeps min(l_j, n); with ``ratio`` (dyntok's default) it acts as the ratios l_j / T_ref of each input's
real length (see :class:`dyntok.core.lengths.LengthConfig`). Objectives: compute (MACs, lower is better) and task
score (higher is better).

As the authors (the default; dyntok's earlier variants are named options):

- Initial population: the smallest gene (l_j = ceil((1 - p) l_{j-1}), the LengthDrop floor), the full one,
  and ``population`` constant-drop genes whose mean retention sum_j l_j / (L T_ref) is evenly spaced between
  theirs (``init="retention"``; ``"ratio"``: ``population`` genes l_j = ceil(q l_{j-1}), q evenly spaced
  from 1 - p to 1).
- Each iteration keeps the **Pareto frontier** of everything evaluated, then draws mutants (each layer
  resampled with probability ``mutation_prob`` uniformly between its neighbours, so the gene stays monotone;
  the last layer keeps at least ``floor`` = 2 tokens) and crossovers (element-wise ceil of the mean of two
  distinct frontier parents) until ``mutations`` and ``crossovers`` genes new to this search and within
  bounds exist (``fill="new"``; an attempt cap warns when the space is exhausted; ``"attempts"``: exactly
  that many draws, new or not). Genes whose MACs fall outside [smallest, full] are rejected unevaluated.
  (The authors' loop also counts a gene evaluated in an earlier iteration that has left the frontier.)
- Every evaluated gene is appended to a JSON-lines **store**; a rerun replays it (same seed, same genes, no
  re-evaluation), so an interrupted search resumes and ends with the same frontier.
The search of a trained model, with the budget's choice and optional re-scoring:
:class:`dyntok.methods.search.LengthSearch`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from dyntok.errors import ConfigError, DataError
from dyntok.evaluation.frontier import (
    Point,
    pareto_frontier,
)

Gene = tuple[int, ...]
log = logging.getLogger("dyntok")


GENE_FLOOR = 2  # fewest tokens a gene keeps at its last layer (the authors' min_length)


def constant_ratio_gene(q: float, num_layers: int, ref_length: int, floor: int = 1) -> Gene:
    """l_j = max(ceil(q * l_{j-1}), floor), l_0 = ref_length (q = 1 - p: the LengthDrop smallest sub-model)."""
    genes, cur = [], ref_length
    for _ in range(num_layers):
        cur = max(floor, math.ceil(q * cur - 1e-9))
        genes.append(cur)
    return tuple(genes)


def mean_retention(gene: Gene, ref_length: int) -> float:
    """sum_j l_j / (L * T_ref): the share of token-layers kept (the authors' ``approx_ratio``)."""
    return sum(gene) / (len(gene) * ref_length)


def retention_spaced_genes(drop_bound: float, count: int, num_layers: int, ref_length: int,
                           floor: int = GENE_FLOOR) -> list[Gene]:
    """``count`` constant-drop genes (l_j = ceil((1 - x) l_{j-1})) whose :func:`mean_retention` is evenly
    spaced strictly between the smallest gene's (x = ``drop_bound``) and 1, each x found by bisection
    (the authors' ``inverse`` of ``approx_ratio``)."""
    def retention(x: float) -> float:
        return mean_retention(constant_ratio_gene(1 - x, num_layers, ref_length, floor), ref_length)

    lo_r = retention(drop_bound)
    genes = []
    for i in range(1, count + 1):
        want = lo_r + (1 - lo_r) * i / (count + 1)
        lo, hi = 0.0, drop_bound  # retention falls as x grows
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if retention(mid) >= want else (lo, mid)
        genes.append(constant_ratio_gene(1 - lo, num_layers, ref_length, floor))
    return genes


def mutate(gene: Gene, prob: float, ref_length: int, rng: random.Random, floor: int = 1) -> Gene:
    """Resample each layer with probability ``prob`` uniformly in [l_{j+1}, l_{j-1}] (monotone kept; the
    last layer's lower bound is ``floor``, the first's upper bound ``ref_length``)."""
    g = list(gene)
    for j in range(len(g)):
        if rng.random() < prob:
            hi = g[j - 1] if j > 0 else ref_length
            lo = g[j + 1] if j + 1 < len(g) else floor
            g[j] = rng.randint(min(lo, hi), hi)
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
    """The LAT evolutionary search (module docstring).

    Args:
        evaluate: gene -> task score on the search split (higher is better).
        macs: gene -> MACs per example (the objective's, on the search split or at the padded length).
        num_layers: L.
        ref_length: T_ref, tokens a gene's counts are measured against.
        length_drop_prob: p; the smallest gene is the constant-ratio gene q = 1 - p.
        population, iterations, mutations, crossovers, mutation_prob: Alg. 1's sizes (authors' defaults
            20, 100, 30, 30, 0.5; dyntok's config defaults 20, 30, 30, 30, 0.5).
        seed: the search's own RNG seed.
        store: a :class:`SearchStore` (evaluated genes; resume).
        progress: show a progress bar (evaluations done and left).
        init: ``retention`` (authors') or ``ratio`` (module docstring).
        fill: ``new`` (authors': draw until that many new in-bounds genes) or ``attempts`` (that many draws).
        floor: fewest tokens of a gene's last layer (authors' 2).
        max_attempts: draws per wanted gene before ``fill="new"`` gives up on an iteration (with a warning).
        canonical: maps a gene to the one it runs as (e.g. the last entry of ``restore="last_layer"``, which
            runs every token whatever it says), so equivalent genes are evaluated once.

    Raises:
        ConfigError: sizes or options out of range.
    """

    def __init__(self, evaluate: Callable[[Gene], float], macs: Callable[[Gene], float], num_layers: int,
                 ref_length: int, length_drop_prob: float = 0.2, population: int = 20, iterations: int = 30,
                 mutations: int = 30, crossovers: int = 30, mutation_prob: float = 0.5, seed: int = 0,
                 store: SearchStore | None = None, progress: bool = True, init: str = "retention",
                 fill: str = "new", floor: int = GENE_FLOOR, max_attempts: int = 50,
                 canonical: Callable[[Gene], Gene] | None = None) -> None:
        if not 0 < length_drop_prob < 1:
            raise ConfigError(f"search length_drop_prob must be in (0, 1), got {length_drop_prob}")
        if population < 2 or iterations < 0 or mutations < 0 or crossovers < 0:
            raise ConfigError("search.population must be >= 2 and iterations, mutations, crossovers >= 0")
        if init not in ("retention", "ratio"):
            raise ConfigError(f"method.search.init must be 'retention' or 'ratio', got {init!r}")
        if fill not in ("new", "attempts"):
            raise ConfigError(f"method.search.fill must be 'new' or 'attempts', got {fill!r}")
        if not 1 <= floor <= ref_length or max_attempts < 1:
            raise ConfigError(f"search floor must be in [1, {ref_length}] and max_attempts >= 1")
        self.evaluate_fn, self.macs_fn = evaluate, macs
        self.L, self.ref = num_layers, ref_length
        self.p = length_drop_prob
        self.population, self.iterations = population, iterations
        self.mutations, self.crossovers, self.mutation_prob = mutations, crossovers, mutation_prob
        self.rng = random.Random(seed)
        self.store = store or SearchStore(None)
        self.progress = progress
        self.init, self.fill, self.floor, self.max_attempts = init, fill, floor, max_attempts
        self.canonical = canonical or (lambda g: g)
        self.smallest = self.canonical(constant_ratio_gene(1 - length_drop_prob, num_layers, ref_length, floor))
        self.full = self.canonical(tuple([ref_length] * num_layers))
        self._macs_cache: dict[Gene, float] = {}
        self.min_macs, self.max_macs = self._macs(self.smallest), self._macs(self.full)
        self.evaluated = self.cached = 0
        self.short_iterations = 0

    def _macs(self, gene: Gene) -> float:
        if gene not in self._macs_cache:
            self._macs_cache[gene] = float(self.macs_fn(gene))
        return self._macs_cache[gene]

    def in_bounds(self, gene: Gene) -> bool:
        """Whether the gene's MACs lie within [smallest, full]."""
        return self.min_macs - 1e-6 <= self._macs(gene) <= self.max_macs + 1e-6

    def _point(self, gene: Gene) -> Point | None:
        """Evaluate (or replay) a gene; None if its compute is out of bounds."""
        if not self.in_bounds(gene):
            return None
        if gene in self.store:
            self.cached += 1
            return self.store.get(gene)
        p = Point(gene, self._macs(gene), float(self.evaluate_fn(gene)))
        self.store.add(p)
        self.evaluated += 1
        return p

    def initial_population(self) -> list[Gene]:
        """The genes evaluated first (``init``), canonical, without repeats."""
        if self.init == "retention":
            genes = [self.smallest, self.full, *retention_spaced_genes(self.p, self.population, self.L, self.ref,
                                                                       self.floor)]
        else:
            qs = [(1 - self.p) + self.p * i / (self.population - 1) for i in range(self.population)]
            genes = [constant_ratio_gene(q, self.L, self.ref, self.floor) for q in qs]
        return list(dict.fromkeys(self.canonical(g) for g in genes))

    def _mutant(self, parents: Sequence[Gene]) -> Gene:
        return self.canonical(mutate(self.rng.choice(parents), self.mutation_prob, self.ref, self.rng, self.floor))

    def _child(self, parents: Sequence[Gene]) -> Gene | None:
        if len(parents) < 2:
            return None
        a, b = self.rng.sample(list(parents), 2)  # two distinct parents
        return self.canonical(crossover(a, b))

    def _offspring(self, make: Callable[[], Gene | None], wanted: int, points: dict[Gene, Point],
                   consider: Callable[[Gene], None]) -> None:
        """Draw genes with ``make`` until ``wanted`` new in-bounds ones were considered (``fill="new"``, at
        most ``max_attempts`` draws per wanted gene) or for ``wanted`` draws (``fill="attempts"``)."""
        if self.fill == "attempts":
            for _ in range(wanted):
                gene = make()
                if gene is not None:
                    consider(gene)
            return
        found = attempts = 0
        while found < wanted and attempts < wanted * self.max_attempts:
            attempts += 1
            gene = make()
            if gene is None or gene in points or not self.in_bounds(gene):
                continue
            consider(gene)
            found += 1
        if found < wanted:
            self.short_iterations += 1

    def run(self) -> SearchResult:
        start = time.time()
        total = len(self.initial_population()) + self.iterations * (self.mutations + self.crossovers)
        bar = progress_bar(total, "search", "gene", enabled=self.progress)
        points: dict[Gene, Point] = {}

        def consider(gene: Gene) -> None:
            p = self._point(gene)
            bar.update(1)
            bar.set_postfix(evaluated=self.evaluated, replayed=self.cached, refresh=False)
            if p is not None:
                points[gene] = p

        for g in self.initial_population():
            consider(g)
        warned = False
        for _ in range(self.iterations):
            parents = [p.gene for p in pareto_frontier(list(points.values()))]
            self._offspring(partial(self._mutant, parents), self.mutations, points, consider)
            self._offspring(partial(self._child, parents), self.crossovers, points, consider)
            if self.short_iterations and not warned:
                warned = True
                log.warning("search: an iteration found fewer new in-bounds genes than asked for (%d mutations, %d "
                            "crossovers) after %d draws each: the space near the frontier is exhausted",
                            self.mutations, self.crossovers, self.max_attempts)
        bar.close()
        return SearchResult(pareto_frontier(list(points.values())), self.evaluated, self.cached,
                            time.time() - start, list(points.values()))


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar in a terminal; one line every 10% of ``total`` in a log (SLURM, nohup), where a bar that
    redraws in place would print nothing until the end."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=1.0,
                miniters=None if sys.stderr.isatty() else max(1, total // 10))
