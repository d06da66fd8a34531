"""Evolutionary search over length configurations (Kim & Cho 2021, Sec. 3.3 and Alg. 1; the authors' code,
``length_adaptive_transformer/evolution.py`` and ``run_squad.py``).

A **gene** is a non-increasing tuple (l_1, ..., l_L) of kept tokens at a reference length T_ref
(``data.max_length``). With ``method.length_unit=tokens`` (the authors') it is absolute: an input of n real
tokens keeps min(l_j, n); with ``ratio`` (dyntok's default) it acts as the ratios l_j / T_ref of each input's
real length (see :class:`dyntok.lengths.LengthConfig`). Objectives: compute (MACs, lower is better) and task
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
- Optional **re-scoring** (not in the paper): the genes near the frontier (:func:`near_frontier`) are
  scored again on examples the search never saw, and the frontier and the budget's choice come from those
  scores, which are free of the search's selection bias.
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

import torch

from dyntok.errors import ConfigError, DataError
from dyntok.lengths import LengthConfig

Gene = tuple[int, ...]
log = logging.getLogger("dyntok")


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


def gene_to_config(gene: Gene, ref_length: int, unit: str = "ratio") -> LengthConfig:
    """The :class:`LengthConfig` a gene stands for: absolute tokens (``unit="tokens"``, at least
    :data:`GENE_FLOOR` kept) or ratios of ``ref_length``."""
    if unit == "tokens":
        return LengthConfig(tuple(float(g) for g in gene), "tokens", min_tokens=GENE_FLOOR)
    return LengthConfig(tuple(min(1.0, g / ref_length) for g in gene), "ratio", min_tokens=1)


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
        from tqdm.auto import tqdm

        start = time.time()
        total = len(self.initial_population()) + self.iterations * (self.mutations + self.crossovers)
        # a bar in a terminal; one line every 10% in a log (SLURM, nohup), where the bar would stay silent
        bar = tqdm(total=total, desc="search", unit="gene", disable=not self.progress, mininterval=1.0,
                   miniters=max(1, total // 10) if not _isatty() else None)
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


def _isatty() -> bool:
    import sys

    return sys.stderr.isatty()


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


# ---- the search of a trained LengthDrop model --------------------------------------------------------------

SEARCH_DEFAULTS: dict[str, Any] = {
    "enabled": True, "split": "validation", "max_examples": 1000, "population": 20, "iterations": 30,
    "mutations": 30, "crossovers": 30, "mutation_prob": 0.5, "seed": 0, "store": None,
    "budget": 0.4, "budget_unit": "ratio", "budget_baseline": "real", "eval_batch_size": 128, "curves": True,
    "min_length": 0, "rescore_examples": 0, "rescore_margin": 0.01, "init": "retention", "fill": "new",
    "cache_mb": 1024,
}


def check_search_options(search: dict[str, Any]) -> dict[str, Any]:
    """``method.search`` with its defaults filled in (:data:`SEARCH_DEFAULTS`).

    Raises:
        ConfigError: an unknown key or a value out of range (names the ``method.search.`` key).
    """
    unknown = set(search) - set(SEARCH_DEFAULTS)
    if unknown:
        raise ConfigError(f"method.search: unknown keys {sorted(unknown)}; known: {sorted(SEARCH_DEFAULTS)}")
    s = {**SEARCH_DEFAULTS, **search}
    unit, budget = s["budget_unit"], float(s["budget"])
    if unit not in ("ratio", "gmacs", "ms"):
        raise ConfigError(f"method.search.budget_unit must be 'ratio', 'gmacs' or 'ms', got {unit!r}")
    if budget <= 0 or (unit == "ratio" and budget > 1):
        raise ConfigError(f"method.search.budget={budget} out of range for budget_unit={unit} "
                          "(ratio: (0, 1]; gmacs and ms: > 0)")
    if s["budget_baseline"] not in ("real", "padded"):
        raise ConfigError(f"method.search.budget_baseline must be 'real' or 'padded', got {s['budget_baseline']!r}")
    rescore = int(s["rescore_examples"])
    if rescore < 0 or (rescore and s["max_examples"] is None):
        raise ConfigError(f"method.search.rescore_examples={rescore}: must be >= 0, and > 0 needs "
                          "method.search.max_examples (the re-scoring examples follow those)")
    if float(s["rescore_margin"]) < 0:
        raise ConfigError(f"method.search.rescore_margin must be >= 0, got {s['rescore_margin']}")
    if float(s["cache_mb"]) < 0:
        raise ConfigError(f"method.search.cache_mb must be >= 0, got {s['cache_mb']}")
    for key, choices in (("init", ("retention", "ratio")), ("fill", ("new", "attempts"))):
        if s[key] not in choices:
            raise ConfigError(f"method.search.{key} must be one of {', '.join(choices)}, got {s[key]!r}")
    return s


class LengthSearch:
    """The evolutionary search of a trained :class:`dyntok.methods.lengthdrop.LengthDropModule`, end to end:
    batches of the search split, the MACs objective, the search, optional re-scoring, the budget's choice,
    measured latency, and the frontier files (``frontier.json``, ``.tsv``, ``.png``) with the paper's curves.

    MACs, per ``search.budget_baseline``: ``real`` (dyntok's): per example at each input's real length on the
    search split, against the full model there; ``padded`` (the papers' and the LAT code's count, torchprofile
    on an all-ones input): the configuration run on one input padded to ``max_length``, against the full model
    on it. Every frontier row reports both ratios (``macs_ratio``, ``paper_macs_ratio``).

    Args:
        module: the trained LengthDrop module (its model, task, ``search_cfg``, unit and bound).
        datamodule: the run's DataModule.
        run_dir: where the store and frontier files go (None: only :meth:`check_budget`).
        checkpoint: recorded in the store's metadata.
    """

    def __init__(self, module, datamodule, run_dir: str | os.PathLike | None = None,
                 checkpoint: str | None = None) -> None:
        self.m, self.dm, self.s = module, datamodule, module.search_cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint = checkpoint
        self.ref = module.max_length
        self.unit = module.length_unit
        self.L = module.model.num_layers
        self.restore = module.model.restore_mode

    # ---- configurations and their compute ---------------------------------------------------------------
    def config(self, gene: Gene) -> LengthConfig:
        return gene_to_config(gene, self.ref, self.unit)

    def canonical(self, gene: Gene) -> Gene:
        """The gene as it runs: with ``restore="last_layer"`` the last layer takes every token, so its entry is
        set to the one before (equivalent genes collapse)."""
        return (*gene[:-1], gene[-2]) if self.restore == "last_layer" and len(gene) > 1 else gene

    def _macs(self, cfg: LengthConfig, lengths: torch.Tensor) -> float:
        from dyntok.flops import length_config_macs

        return float(length_config_macs(self.m.dims, cfg, lengths, restore=self.restore).mean())

    def paper_macs(self, cfg: LengthConfig) -> float:
        """MACs of ``cfg`` on one input padded to ``max_length`` (the papers' count)."""
        return self._macs(cfg, torch.tensor([self.ref]))

    def _lengths(self, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([b["attention_mask"].sum(1) for b in batches]).cpu()

    def _batches(self, split: str, max_examples: int | None, min_length: int = 0,
                 skip_examples: int = 0) -> list[dict[str, torch.Tensor]]:
        loader = self.dm.dataloader(split, batch_size=self.s["eval_batch_size"], max_examples=max_examples,
                                    min_length=min_length, skip_examples=skip_examples)
        return [{k: v.to(self.m.device) for k, v in b.items()} for b in loader]

    def objective(self, lengths: torch.Tensor) -> tuple[Callable[[Gene], float], float]:
        """The search's MACs of a gene (``budget_baseline``) and the full model's on the same terms."""
        if self.s["budget_baseline"] == "padded":
            return (lambda g: self.paper_macs(self.config(g))), self.paper_macs(LengthConfig.full(self.L))
        return (lambda g: self._macs(self.config(g), lengths)), self._macs(LengthConfig.full(self.L), lengths)

    def check_budget(self) -> None:
        """Fail before training when no configuration the search may evaluate meets a MACs budget
        (``budget_unit`` ratio or gmacs): the cheapest is the smallest sub-model.

        Raises:
            ConfigError: naming ``method.search.budget`` and the cheapest reachable ratio.
        """
        s = self.s
        if s["budget_unit"] == "ms":
            return
        self.dm.setup("fit")
        loader = self.dm.dataloader(s["split"], batch_size=s["eval_batch_size"], max_examples=s["max_examples"],
                                    min_length=s["min_length"])
        macs, full = self.objective(torch.cat([b["attention_mask"].sum(1) for b in loader]))
        floor = macs(self.canonical(constant_ratio_gene(1 - self.m.p, self.L, self.ref, self.m.floor)))
        budget = float(s["budget"]) * (full if s["budget_unit"] == "ratio" else 1e9)
        if budget < floor * (1 - 1e-9):
            raise ConfigError(
                f"method.search.budget={s['budget']} ({s['budget_unit']}) is below the cheapest configuration "
                f"the search can reach: {floor / full:.3f}x MACs ({floor / 1e9:.4g} GMACs per example, "
                f"{s['budget_baseline']} baseline) on the search split, set by method.length_drop_prob={self.m.p}; "
                "raise the budget or the bound")

    def _scorer(self, batches: list[dict[str, torch.Tensor]], split: str, model=None) -> Callable:
        """LengthConfig -> main metric of ``model`` (default the module's) on ``batches``, through a
        :class:`~dyntok.prefix_cache.PrefixCache` bounded by ``search.cache_mb``."""
        from dyntok.prefix_cache import PrefixCache

        model = model if model is not None else self.m.model
        metrics = self.m.split_metrics(split, self.dm, sync_on_compute=False)
        cache = PrefixCache(model, batches, int(float(self.s["cache_mb"]) * 2**20))

        def score(cfg: LengthConfig | None) -> float:
            was_training = model.training
            model.eval()
            metrics.reset()
            try:
                for i, b in enumerate(batches):
                    self.m.update_metrics(metrics, cache.logits(i, cfg)[0], b)
            finally:
                model.train(was_training)
            return float(metrics.compute()[self.m.task.main_metric])

        score.cache = cache
        return score

    # ---- the search -------------------------------------------------------------------------------------
    def run(self) -> tuple[LengthConfig, dict[str, Any]]:
        """Search, choose under the budget, write the frontier files.

        Returns:
            the chosen configuration and the ``search`` fields of ``results.json``.

        Raises:
            ConfigError: no searched configuration meets the budget.
        """
        s, m = self.s, self.m
        self.dm.setup("fit")
        batches = self._batches(s["split"], s["max_examples"], s["min_length"])
        lengths = self._lengths(batches)
        macs, full_macs = self.objective(lengths)
        store_path = Path(s["store"]) if s["store"] else self.run_dir / "search_store.jsonl"
        meta = {"task": m.task.name, "split": s["split"], "examples": len(lengths), "ref_length": self.ref,
                **({"min_length": s["min_length"]} if s["min_length"] else {}),
                **({"length_unit": self.unit} if self.unit != "ratio" else {}),
                **({"budget_baseline": s["budget_baseline"]} if s["budget_baseline"] != "real" else {}),
                **({"restore": self.restore} if self.restore == "last_layer" else {}),
                "length_drop_prob": m.p}
        store = SearchStore(store_path, meta=meta)
        score = self._scorer(batches, s["split"])
        search = EvolutionarySearch(
            lambda g: score(self.config(g)), macs, self.L, self.ref, m.p, s["population"], s["iterations"],
            s["mutations"], s["crossovers"], s["mutation_prob"], s["seed"], store, init=s["init"], fill=s["fill"],
            floor=m.floor, canonical=self.canonical)
        result = search.run()
        frontier, rescored = result.frontier, None
        if s["rescore_examples"]:
            batches, frontier, full_macs, rescored = self._rescore(result, store_path, meta)
        # measured latency of every frontier configuration, in this process, on the (last) scoring batches
        latency = {p.gene: m.latency_ms(batches, self.config(p.gene)) for p in frontier}
        full_latency = m.latency_ms(batches, None)
        budget = float(s["budget"])
        if s["budget_unit"] == "ratio":
            best = best_under_budget(frontier, budget * full_macs)
        elif s["budget_unit"] == "gmacs":
            best = best_under_budget(frontier, budget * 1e9)
        else:  # ms (check_search_options accepts no other unit)
            fits = [p for p in frontier if latency[p.gene] <= budget]
            if not fits:
                raise ConfigError(f"search.budget={budget} ms per example: the fastest searched configuration "
                                  f"takes {min(latency.values()):.3f} ms (full model {full_latency:.3f} ms)")
            best = max(fits, key=lambda p: (p.score, -p.macs))
        cache = score.cache
        chosen = self.config(best.gene)
        paper_full = self.paper_macs(LengthConfig.full(self.L))
        summary = {
            "frontier_size": len(frontier), "search_frontier_size": len(result.frontier), **(rescored or {}),
            "evaluated": result.evaluated, "replayed_from_store": result.cached, "seconds": result.seconds,
            "evals_per_minute": result.evals_per_minute, "store": str(store_path), "search_split": s["split"],
            "search_examples": len(lengths), "search_min_length": s["min_length"], "length_unit": self.unit,
            "init": s["init"], "fill": s["fill"], "short_iterations": search.short_iterations,
            "cache_layers_reused": cache.layers_reused, "cache_layers_run": cache.layers_run,
            "budget": budget, "budget_unit": s["budget_unit"], "budget_baseline": s["budget_baseline"],
            "chosen_gene": list(best.gene), "chosen_search_score": best.score,
            "chosen_macs_ratio": self._macs(chosen, lengths) / self._macs(LengthConfig.full(self.L), lengths),
            "chosen_paper_macs_ratio": self.paper_macs(chosen) / paper_full,
            "chosen_ms_per_example": latency[best.gene], "full_ms_per_example": full_latency,
            "chosen_speedup": full_latency / latency[best.gene],
        }
        log.info("search: %d evaluated, %d replayed, %.1f evals/min (cache reused %d of %d layers); chosen %s "
                 "(%.3fx MACs at real length, %.3fx padded, %s %.4f on %s)", result.evaluated, result.cached,
                 result.evals_per_minute, cache.layers_reused, cache.layers_reused + cache.layers_run,
                 list(best.gene), summary["chosen_macs_ratio"], summary["chosen_paper_macs_ratio"],
                 m.task.main_metric, best.score, s["split"])
        self._write_frontier(frontier, lengths, latency, full_latency, summary)
        return chosen, summary

    def _rescore(self, result: SearchResult, store_path: Path, meta: dict[str, Any]):
        """Score the genes near the search's frontier (``search.rescore_margin``) again on the next
        ``search.rescore_examples`` examples of the search split, which the search never saw; their own
        store makes a rerun replay them.

        Returns:
            the re-scoring batches, the frontier of the new scores, the full model's MACs on those examples
            (the objective's), and summary fields.
        """
        from tqdm.auto import tqdm

        s = self.s
        batches = self._batches(s["split"], s["rescore_examples"], s["min_length"], skip_examples=s["max_examples"])
        lengths = self._lengths(batches)
        macs, full_macs = self.objective(lengths)
        score = self._scorer(batches, s["split"])
        candidates = near_frontier(result.points, float(s["rescore_margin"]))
        store = SearchStore(store_path.with_name(store_path.stem + ".rescore.jsonl"),
                            meta={**meta, "examples": len(lengths), "skip_examples": s["max_examples"]})
        points = []
        for p in tqdm(candidates, desc="re-score", unit="gene", mininterval=1.0,
                      miniters=None if _isatty() else max(1, len(candidates) // 10)):
            if p.gene not in store:
                store.add(Point(p.gene, macs(p.gene), score(self.config(p.gene))))
            points.append(store.get(p.gene))
        frontier = pareto_frontier(points)
        log.info("re-scored %d genes near the search frontier on %d further examples: frontier %d -> %d genes",
                 len(points), len(lengths), len(result.frontier), len(frontier))
        summary = {"rescore_examples": len(lengths), "rescored_genes": len(points),
                   "rescore_margin": float(s["rescore_margin"])}
        return batches, frontier, full_macs, summary

    def _write_frontier(self, frontier: list[Point], lengths: torch.Tensor, latency: dict, full_latency: float,
                        summary: dict[str, Any]) -> None:
        """Frontier TSV/JSON (both MACs ratios, measured latency) and the paper's three curves, scored on the
        first report split: the searched frontier, constant ratios on the LengthDrop model and on the
        standard model it started from (``init_from``)."""
        m = self.m
        full_real = self._macs(LengthConfig.full(self.L), lengths)
        paper_full = self.paper_macs(LengthConfig.full(self.L))
        rows = []
        for p in frontier:
            cfg = self.config(p.gene)
            rows.append({"gene": list(p.gene), "config": cfg.describe(), "macs": p.macs,
                         "macs_ratio": self._macs(cfg, lengths) / full_real,
                         "paper_macs_ratio": self.paper_macs(cfg) / paper_full, "search_score": p.score,
                         "ms_per_example": latency.get(p.gene),
                         "speedup": full_latency / latency[p.gene] if p.gene in latency and full_latency else None})
        curves: dict[str, list[tuple[float, float]]] = {}
        if self.s["curves"]:
            split = m.task.test_splits[0]
            batches = self._batches(split, None)
            test_lengths = self._lengths(batches)
            full = self._macs(LengthConfig.full(self.L), test_lengths)
            own = self._scorer(batches, split)
            standard = self._scorer(batches, split, m.baseline) if m.baseline is not None else None

            def point(cfg: LengthConfig, scorer) -> tuple[float, float]:
                return self._macs(cfg, test_lengths) / full, scorer(cfg)

            for r in rows:
                r["macs_ratio_test"], r[f"{split}_score"] = point(self.config(tuple(r["gene"])), own)
            curves["LengthDrop model, searched"] = [(r["macs_ratio_test"], r[f"{split}_score"]) for r in rows]
            qs = [1 - m.p + m.p * i / 7 for i in range(8)] + [0.5, 0.4, 0.3]
            consts = [self.config(self.canonical(constant_ratio_gene(q, self.L, self.ref, m.floor)))
                      for q in sorted(set(qs))]
            curves["LengthDrop model, constant ratio"] = [point(c, own) for c in consts]
            if standard is not None:
                curves["standard model, constant ratio"] = [point(c, standard) for c in consts]
            summary["curves_split"] = split
            searched = curves["LengthDrop model, searched"]
            summary["frontier_vs_curves"] = {
                name: compare_to_curve(searched, curve) for name, curve in curves.items() if curve is not searched}
        run_dir = self.run_dir
        (run_dir / "frontier.json").write_text(json.dumps({"frontier": rows, "curves": curves}, indent=2))
        cols = [k for k in rows[0] if k != "gene"] if rows else []
        lines = ["\t".join(["gene", *cols])] + ["\t".join([",".join(map(str, r["gene"])),
                                                         *(str(r[c]) for c in cols)]) for r in rows]
        (run_dir / "frontier.tsv").write_text("\n".join(lines) + "\n")
        if curves:
            from dyntok.report import plot_curves

            plot_curves(curves, run_dir / "frontier.png", xlabel="MACs ratio (vs full model at real length)",
                        ylabel=f"{m.task.main_metric} ({summary.get('curves_split')})",
                        title=f"{m.task.name}: Length-Adaptive Transformer")
