"""Evolutionary search over length configurations (Kim & Cho 2021, Sec. 3.3 and Alg. 1; the authors' code,
github:clovaai/length-adaptive-transformer, ``length_adaptive_transformer/evolution.py`` (the ``Evolution``
class) and the search loop of ``run_glue.py`` / ``run_squad.py``).

A **gene** is a non-increasing tuple (l_1, ..., l_L) of kept tokens at a reference length T_ref
(``data.max_length``). With ``method.length_unit=tokens`` (the authors') it is absolute: an input of n real
tokens keeps min(l_j, n); with ``ratio`` (dyntok's default) it acts as the ratios l_j / T_ref of each input's
real length (see :class:`dyntok.core.lengths.LengthConfig`). Objectives: compute (MACs, lower is better) and task
score (higher is better). With ``model.restore=last_layer`` the last layer runs on every token, so a gene's last
entry is no choice: it is held at the floor (:func:`~dyntok.methods.genes.canonical_gene`) and bounds nothing.

The operators, as the authors' (default) and dyntok's earlier variants (named options):

- **Initial population** (``run_glue.py``: ``lower_gene``, ``upper_gene``, ``inverse(approx_ratio(...))``): the
  smallest gene (l_j = ceil((1 - p) l_{j-1}), the LengthDrop floor), the full one, and ``population``
  constant-drop genes whose mean retention sum_j l_j / (L T_ref) is evenly spaced between theirs
  (``init="retention"``, the default: the authors' rule for this model's L and T_ref). Their code computes the
  retention at 12 layers x 384 tokens whatever the model (``approx_ratio``'s defaults), so at other shapes its
  genes are spaced unevenly (at 12 x 384 the two give the same genes): ``"authors_code"`` reproduces it as
  written (:func:`~dyntok.methods.genes.authors_code_genes`).
  ``"ratio"``: ``population`` genes l_j = ceil(q l_{j-1}), q evenly spaced in [1 - p, 1] (dyntok's earlier one).
- **Population** (``Evolution.pareto_frontier``): at each iteration's start, the Pareto frontier of the
  population plus its most expensive gene (kept whatever it scores, so crossover always has two parents):
  :func:`~dyntok.methods.genes.search_population`. Of two genes with equal MACs the better one stays; the authors' code meant the
  same (``del frontier[-1]`` on a tie) but compares a MACs count with a gene's first entry, so there both
  stay. The reported frontier (``frontier.json``) is the Pareto frontier, without the most expensive gene.
- **Parents** (``Evolution.mutate`` / ``crossover``: ``random.choice(self.population)``): drawn from the
  population as it grows during the iteration, every accepted gene joining it at once (``parents="population"``);
  ``"frontier"``: from the Pareto frontier alone, fixed at the iteration's start (dyntok's earlier rule).
- **Mutation** (``Evolution.mutate``): each layer resampled with probability ``mutation_prob`` uniformly in
  [l_{j+1} of the parent, l_{j-1} of the mutant] (the first layer's upper bound T_ref, the last layer's lower
  bound ``floor`` = 2, the authors' ``min_length``), so the gene stays monotone: :func:`~dyntok.methods.genes.mutate`.
- **Crossover** (``Evolution.crossover``): two distinct parents (``random.sample(population, 2)``), element-wise
  (a + b + 1) // 2, the ceiling of the mean: :func:`~dyntok.methods.genes.crossover`.
- **Offspring** (``run_glue.py``: ``while k < mutation_size: if trainer.mutate(...): k += 1``): draws go on
  until ``mutations`` (then ``crossovers``) genes were accepted: in bounds and not in the current population
  (``fill="population"``; a gene scored before, even in an earlier run, is replayed from the store at no cost).
  ``"unseen"``: not evaluated before in this search (dyntok's earlier rule); ``"attempts"``: exactly that many
  draws. An attempt cap (``max_attempts``, 50 draws per wanted gene; the authors' loop has none and would spin
  forever) ends an iteration with a warning when the space is exhausted.
- **Bounds** (``Evolution.add_gene``: ``lower_constraint`` / ``upper_constraint``): genes whose MACs fall
  outside [smallest, full] are rejected unevaluated.
- **Racing** (not in the paper; ``racing=True``): the evaluator also gets the population's envelope at the
  gene's MACs (the best score at equal or fewer MACs) and may stop scoring once the gene cannot reach it
  (:meth:`dyntok.methods.search.LengthSearch` scores the examples in stages).

Every evaluated gene is appended to a JSON-lines **store**; a rerun replays it (same seed, same genes, no
re-evaluation), so an interrupted search resumes and ends with the same frontier.
The search of a trained model, with the budget's choice and optional re-scoring:
:class:`dyntok.methods.search.LengthSearch`.

The gene operators live in :mod:`dyntok.methods.genes`; this module holds the resumable store and the loop
that applies them under the gene bounds and the acceptance rule.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from dyntok.errors import ConfigError, DataError
from dyntok.evaluation.frontier import Point, pareto_frontier
from dyntok.methods.config import LengthDropConfig, SearchConfig
from dyntok.methods.genes import (
    GENE_FLOOR,
    Gene,
    authors_code_genes,
    constant_ratio_gene,
    crossover,
    mutate,
    retention_spaced_genes,
    search_population,
)

log = logging.getLogger("dyntok")


class SearchStore:
    """Evaluated genes in a JSON-lines file, one ``{"gene", "macs", "score"}`` per line (``"raced": true`` for a
    gene whose scoring racing stopped early: its score is that of the examples scored).

    A half-written last line (the process was killed while writing) is cut off before anything is appended,
    so a later record starts on a line of its own; ``<store>.meta.json`` (the search that wrote the store) is
    replaced atomically.

    Raises:
        DataError: a line other than the last is not a search record, or the meta file is not JSON (names the
            file and line).
        ConfigError: the store was written by another search (its meta differs from ``meta``).
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
                try:
                    old = json.loads(meta_path.read_text())
                except ValueError:
                    raise DataError(f"{meta_path}: not JSON (a torn write); delete it together with {self.path} to "
                                    "search afresh") from None
                if old != json.loads(json.dumps(meta)):
                    raise ConfigError(
                        f"search store {self.path} was written by another search ({old}); use a new "
                        f"search.store or delete it"
                    )
            tmp = meta_path.with_name(meta_path.name + ".tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, meta_path)
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (a torn record, or nothing)
        for i, line in enumerate(complete, 1):
            if line.strip():
                self._add_line(line, i, torn_ok=False)
        if tail.strip() and self._add_line(tail, len(lines), torn_ok=True):
            with self.path.open("ab") as f:  # a whole record that lost its newline: end its line
                f.write(b"\n")
        elif tail:
            with self.path.open("r+b") as f:  # a torn record: cut it, so the next one starts a line
                f.truncate(len(data) - len(tail))

    def _add_line(self, line: bytes, number: int, torn_ok: bool) -> bool:
        try:
            rec = json.loads(line)
            p = Point(tuple(rec["gene"]), float(rec["macs"]), float(rec["score"]))
        except (ValueError, KeyError, TypeError):
            if torn_ok:
                return False
            raise DataError(f"{self.path}:{number}: not a JSON search record "
                            '({"gene": [...], "macs": ..., "score": ...})') from None
        self.points[p.gene] = p
        return True

    def __contains__(self, gene: Gene) -> bool:
        return gene in self.points

    def get(self, gene: Gene) -> Point:
        return self.points[gene]

    def add(self, p: Point, raced: bool = False) -> None:
        self.points[p.gene] = p
        if self.path is not None:
            rec = {"gene": list(p.gene), "macs": p.macs, "score": p.score, **({"raced": True} if raced else {})}
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                os.fsync(f.fileno())


@dataclass
class SearchResult:
    """``frontier``: the Pareto frontier of ``points``, every in-bounds gene the run considered.

    ``evaluated``: genes scored in this run; ``cached``: genes replayed from the store (an earlier run, or a gene
    that left the population and came back); ``raced``: of the scored genes, those racing stopped early."""

    frontier: list[Point]
    evaluated: int
    cached: int
    seconds: float
    points: list[Point] = field(default_factory=list)
    raced: int = 0

    @property
    def evals_per_minute(self) -> float:
        return 60 * self.evaluated / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Birth:
    """How a gene joined the population: ``method`` ``initial``, ``mutation`` or ``crossover``, its
    ``parents`` and the ``iteration`` (0 for the initial population), as the authors' store records them."""

    iteration: int
    method: str
    parents: tuple[Gene, ...]
    gene: Gene


class EvolutionarySearch:
    """The LAT evolutionary search (module docstring).

    Args:
        evaluate: gene -> task score on the search split (higher is better); with ``racing``, (gene, bar) ->
            (score, finished), where ``bar`` is the population's best score at equal or fewer MACs (-inf if
            none) and ``finished`` False says scoring stopped early because the gene could not reach it.
        macs: gene -> MACs per example (the objective's, on the search split or at the padded length).
        num_layers: L.
        ref_length: T_ref, tokens a gene's counts are measured against.
        length_drop_prob: p; the smallest gene is the constant-ratio gene q = 1 - p.
        population, iterations, mutations, crossovers, mutation_prob: Alg. 1's sizes (authors' defaults
            20, 100, 30, 30, 0.5; dyntok's: :class:`~dyntok.methods.config.SearchConfig`'s).
        seed: the search's own RNG seed.
        store: a :class:`SearchStore` (evaluated genes; resume).
        progress: show a progress bar (genes considered).
        init: ``retention`` (authors') or ``ratio`` (module docstring).
        parents: ``population`` (authors': the growing population) or ``frontier`` (the Pareto frontier of
            every gene considered, fixed at the iteration's start, without the most expensive gene).
        fill: ``population`` (authors': draw until that many accepted genes, new to the population),
            ``unseen`` (new to this search) or ``attempts`` (that many draws).
        floor: fewest tokens of a gene's last layer (authors' 2).
        max_attempts: draws per wanted gene before an iteration gives up (with a warning).
        canonical: maps a gene to the one it runs as (:func:`~dyntok.methods.genes.canonical_gene`), so equivalent genes are one.
        racing: pass the envelope to ``evaluate`` (see ``evaluate``).

    Raises:
        ConfigError: sizes or options out of range.
    """

    # the defaults are the config's (one place: dyntok.methods.config)
    def __init__(self, evaluate: Callable[..., Any], macs: Callable[[Gene], float], num_layers: int,
                 ref_length: int, length_drop_prob: float = LengthDropConfig.length_drop_prob,
                 population: int = SearchConfig.population, iterations: int = SearchConfig.iterations,
                 mutations: int = SearchConfig.mutations, crossovers: int = SearchConfig.crossovers,
                 mutation_prob: float = SearchConfig.mutation_prob, seed: int = SearchConfig.seed,
                 store: SearchStore | None = None, progress: bool = True, init: str = SearchConfig.init,
                 fill: str = SearchConfig.fill, floor: int = GENE_FLOOR, max_attempts: int = 50,
                 canonical: Callable[[Gene], Gene] | None = None, parents: str = SearchConfig.parents,
                 racing: bool = SearchConfig.racing) -> None:
        if not 0 < length_drop_prob < 1:
            raise ConfigError(f"search length_drop_prob must be in (0, 1), got {length_drop_prob}")
        if population < 2 or iterations < 0 or mutations < 0 or crossovers < 0:
            raise ConfigError("search.population must be >= 2 and iterations, mutations, crossovers >= 0")
        if init not in ("retention", "authors_code", "ratio"):
            raise ConfigError(f"method.search.init must be 'retention', 'authors_code' or 'ratio', got {init!r}")
        if fill not in ("population", "unseen", "attempts"):
            raise ConfigError(f"method.search.fill must be 'population', 'unseen' or 'attempts', got {fill!r}")
        if parents not in ("population", "frontier"):
            raise ConfigError(f"method.search.parents must be 'population' or 'frontier', got {parents!r}")
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
        self.parents, self.racing = parents, racing
        self.canonical = canonical or (lambda g: g)
        self.smallest = self.canonical(constant_ratio_gene(1 - length_drop_prob, num_layers, ref_length, floor))
        self.full = self.canonical(tuple([ref_length] * num_layers))
        self._macs_cache: dict[Gene, float] = {}
        self.min_macs, self.max_macs = self._macs(self.smallest), self._macs(self.full)
        self.evaluated = self.cached = self.raced = 0
        self.short_iterations = 0
        self.lineage: list[Birth] = []

    def _macs(self, gene: Gene) -> float:
        if gene not in self._macs_cache:
            self._macs_cache[gene] = float(self.macs_fn(gene))
        return self._macs_cache[gene]

    def in_bounds(self, gene: Gene) -> bool:
        """Whether the gene's MACs lie within [smallest, full]."""
        return self.min_macs - 1e-6 <= self._macs(gene) <= self.max_macs + 1e-6

    def _point(self, gene: Gene, bar: float) -> Point:
        """Score (or replay) an in-bounds gene; ``bar``: the population's envelope at its MACs (racing)."""
        if gene in self.store:
            self.cached += 1
            return self.store.get(gene)
        finished = True
        if self.racing:
            score, finished = self.evaluate_fn(gene, bar)
        else:
            score = self.evaluate_fn(gene)
        p = Point(gene, self._macs(gene), float(score))
        self.store.add(p, raced=not finished)
        self.evaluated += 1
        self.raced += not finished
        return p

    def initial_population(self) -> list[Gene]:
        """The genes evaluated first (``init``), canonical, without repeats."""
        if self.init in ("retention", "authors_code"):
            spaced = retention_spaced_genes if self.init == "retention" else authors_code_genes
            genes = [self.smallest, self.full, *spaced(self.p, self.population, self.L, self.ref, self.floor)]
        else:
            qs = [(1 - self.p) + self.p * i / (self.population - 1) for i in range(self.population)]
            genes = [constant_ratio_gene(q, self.L, self.ref, self.floor) for q in qs]
        return list(dict.fromkeys(self.canonical(g) for g in genes))

    def run(self) -> SearchResult:
        start = time.time()
        total = len(self.initial_population()) + self.iterations * (self.mutations + self.crossovers)
        bar = progress_bar(total, "search", "gene", enabled=self.progress)
        points: dict[Gene, Point] = {}  # every in-bounds gene considered
        population: list[Gene] = []

        def envelope(gene: Gene) -> float:
            m = self._macs(gene)
            return max((points[g].score for g in population if points[g].macs <= m + 1e-6), default=-math.inf)

        def accept(gene: Gene, iteration: int, method: str, parents: tuple[Gene, ...]) -> bool:
            """Consider one drawn gene; True when it joins the population (the authors' ``add_gene``)."""
            if not self.in_bounds(gene):
                return False
            if (self.fill == "population" and gene in population) or (self.fill == "unseen" and gene in points):
                return False
            points[gene] = self._point(gene, envelope(gene) if self.racing else -math.inf)
            bar.update(1)
            bar.set_postfix(evaluated=self.evaluated, replayed=self.cached, refresh=False)
            if gene in population:  # fill="attempts" draws genes it has already
                return False
            population.append(gene)
            self.lineage.append(Birth(iteration, method, parents, gene))
            return True

        for g in self.initial_population():
            accept(g, 0, "initial", ())
        warned = False
        for it in range(1, self.iterations + 1):
            population[:] = [p.gene for p in search_population([points[g] for g in population])]
            if self.parents == "population":
                pool = population
            else:  # dyntok's earlier parents: the frontier of everything evaluated, fixed for the iteration
                pool = [p.gene for p in pareto_frontier(list(points.values()))]
            self._offspring(partial(self._mutant, pool, it, accept), self.mutations)
            self._offspring(partial(self._child, pool, it, accept), self.crossovers)
            if self.short_iterations and not warned:
                warned = True
                log.warning("search: an iteration found fewer new in-bounds genes than asked for (%d mutations, %d "
                            "crossovers) after %d draws each: the space near the frontier is exhausted",
                            self.mutations, self.crossovers, self.max_attempts)
        bar.close()
        return SearchResult(pareto_frontier(list(points.values())), self.evaluated, self.cached,
                            time.time() - start, list(points.values()), self.raced)

    def _mutant(self, pool: list[Gene], it: int, accept: Callable[..., bool]) -> bool:
        parent = self.rng.choice(pool)
        gene = self.canonical(mutate(parent, self.mutation_prob, self.ref, self.rng, self.floor))
        return accept(gene, it, "mutation", (parent,))

    def _child(self, pool: list[Gene], it: int, accept: Callable[..., bool]) -> bool:
        if len(pool) < 2:
            return False
        a, b = self.rng.sample(pool, 2)  # two distinct parents
        return accept(self.canonical(crossover(a, b)), it, "crossover", (a, b))

    def _offspring(self, make: Callable[[], bool], wanted: int) -> None:
        """Draw with ``make`` until ``wanted`` genes were accepted (at most ``max_attempts`` draws per wanted
        gene), or for exactly ``wanted`` draws (``fill="attempts"``)."""
        if self.fill == "attempts":
            for _ in range(wanted):
                make()
            return
        found = attempts = 0
        while found < wanted and attempts < wanted * self.max_attempts:
            attempts += 1
            found += make()
        if found < wanted:
            self.short_iterations += 1


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar in a terminal; one line every 10% of ``total`` in a log (SLURM, nohup), where a bar that
    redraws in place would print nothing until the end."""
    import sys

    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=1.0)
    # a fixed step: tqdm's monitor thread would otherwise drop miniters to 1 after maxinterval
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=1.0,
                miniters=max(1, total // 10), maxinterval=float("inf"))
