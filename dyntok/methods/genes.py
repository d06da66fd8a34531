"""Genes of the Length-Adaptive Transformer's evolutionary search (Kim & Cho 2021, Sec. 3.3) and the operators
on them, each beside its source in the authors' code (github:clovaai/length-adaptive-transformer,
``length_adaptive_transformer/evolution.py`` and the search loop of ``run_glue.py``); the loop that applies
them, the store and the budget's choice: :mod:`dyntok.methods.evolution`.

A gene is a non-increasing tuple (l_1, ..., l_L) of kept tokens at a reference length T_ref.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from dyntok.core.lengths import ceil_share
from dyntok.evaluation.frontier import Point, pareto_frontier

Gene = tuple[int, ...]
GENE_FLOOR = 2  # fewest tokens a gene keeps at its last layer (the authors' min_length)


def constant_ratio_gene(q: float, num_layers: int, ref_length: int, floor: int = 1,
                        skip: Sequence[bool] | None = None) -> Gene:
    """l_j = max(ceil(q * l_{j-1}), floor), l_0 = ref_length (q = 1 - p: the LengthDrop smallest sub-model);
    a layer ``skip`` marks (LayerDrop) keeps its input length, so the chain steps only at layers that run (the
    authors' ``sample_length_configuration`` with a ``layer_config``)."""
    genes, cur = [], ref_length
    for j in range(num_layers):
        if skip is None or not skip[j]:
            cur = max(floor, ceil_share(q, cur))
        genes.append(cur)
    return tuple(genes)


def canonical_gene(gene: Gene, restore: str | None, floor: int) -> Gene:
    """The gene as the search keeps it. ``restore="last_layer"``: the last layer runs on every token whatever
    its entry says, so the entry is held at ``floor``; it then bounds nothing (a copy of the entry before it
    would be the lower bound of that entry in :func:`mutate`, which could then never fall)."""
    return (*gene[:-1], floor) if restore == "last_layer" and len(gene) > 1 else tuple(gene)


def search_population(points: Sequence[Point]) -> list[Point]:
    """The parents of an iteration: the Pareto frontier of ``points`` plus the most expensive point (highest
    MACs, then score), as the authors' ``Evolution.pareto_frontier`` always keeps the last gene; sorted by MACs."""
    front = pareto_frontier(points)
    if points:
        top = max(points, key=lambda p: (p.macs, p.score))
        if top.gene not in {p.gene for p in front}:
            front.append(top)
    return front


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


def authors_code_genes(drop_bound: float, count: int, num_layers: int, ref_length: int,
                       floor: int = GENE_FLOOR) -> list[Gene]:
    """``count`` constant-drop genes as the authors' code draws them (``run_glue.py``: ``inverse(r)`` for r in
    ``np.linspace(approx_ratio(p), 1, count + 2)[1:-1]``), with ``approx_ratio`` as written there: fixed at
    12 layers x 384 tokens whatever the model. Each drop ratio x makes a gene as their
    ``sample_length_configuration(length_drop_ratio=x)``: l_j = max(ceil(l_{j-1} (1 - x)), floor) in floating
    point, at this model's ``num_layers`` and ``ref_length``. At other shapes than 12 x 384 the genes' mean
    retention is not evenly spaced."""
    def approx_ratio(x: float, n: int = 12, length: int = 384) -> float:
        total, i = 0, length
        for _ in range(n):
            i = math.ceil(i * (1 - x))
            total += i
        return total / (n * length)

    def inverse(r: float) -> float:
        lo, hi = 0.0, 1.0
        while hi - lo > 1e-12:
            c = (lo + hi) / 2
            lo, hi = (c, hi) if r <= approx_ratio(c) else (lo, c)
        return lo

    def gene(x: float) -> Gene:
        out, length = [], ref_length
        for _ in range(num_layers):
            length = max(math.ceil(length * (1 - x)), floor)
            out.append(length)
        return tuple(out)

    lo_r = approx_ratio(drop_bound)
    return [gene(inverse(lo_r + (1 - lo_r) * i / (count + 1))) for i in range(1, count + 1)]


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
    """Element-wise (x + y + 1) // 2, the ceiling of the mean, of two monotone genes (monotone again)."""
    return tuple((x + y + 1) // 2 for x, y in zip(a, b, strict=True))
