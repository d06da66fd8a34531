"""Evolutionary search: operators, frontier, budget choice, store and resume."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dyntok.errors import ConfigError
from dyntok.evaluation.frontier import (
    Point,
    best_under_budget,
    compare_to_curve,
    near_frontier,
    pareto_frontier,
)
from dyntok.methods.evolution import EvolutionarySearch, SearchStore
from dyntok.methods.genes import constant_ratio_gene, crossover, mutate


def monotone_gene(max_len: int = 64, layers: int = 6):
    return st.lists(st.integers(1, max_len), min_size=layers, max_size=layers).map(
        lambda v: tuple(sorted(v, reverse=True)))


def test_pareto_frontier_hand_made_points():
    pts = [Point((1,), 10, 0.80), Point((2,), 20, 0.85), Point((3,), 15, 0.70), Point((4,), 30, 0.85),
           Point((5,), 5, 0.60), Point((6,), 25, 0.90), Point((7,), 20, 0.84)]
    front = pareto_frontier(pts)
    assert [p.gene for p in front] == [(5,), (1,), (2,), (6,)]


def test_near_frontier_keeps_points_within_the_margin_of_the_cheaper_best():
    pts = [Point((1,), 10, 0.80), Point((2,), 20, 0.85), Point((3,), 15, 0.70), Point((4,), 30, 0.85),
           Point((5,), 5, 0.60), Point((6,), 25, 0.90), Point((7,), 20, 0.84), Point((8,), 12, 0.795)]
    # margin 0: the frontier itself
    assert near_frontier(pts, 0.0) == pareto_frontier(pts)
    # 0.01 below the best at equal or fewer MACs: (8,) at 0.795 <= 0.80 and (7,) at 0.84 <= 0.85
    assert [p.gene for p in near_frontier(pts, 0.01)] == [(5,), (1,), (8,), (2,), (7,), (6,)]
    assert len(near_frontier(pts, 1.0)) == len(pts)


def test_compare_to_curve_counts_points_below_the_envelope():
    curve = [(0.4, 0.80), (0.6, 0.84), (1.0, 0.86)]
    # 0.5: envelope 0.82 -> +0.01; 0.55: 0.83 -> -0.02; 0.3: outside the curve, not compared
    out = compare_to_curve([(0.5, 0.83), (0.55, 0.81), (0.3, 0.9)], curve)
    assert out["compared"] == 2 and out["below"] == 1 and out["below_at"] == [0.55]
    assert out["worst"] == pytest.approx(-0.02)
    assert compare_to_curve([(0.2, 0.5)], curve) == {"compared": 0, "below": 0, "worst": None, "below_at": []}


def test_constant_ratio_gene_is_the_lengthdrop_floor():
    assert constant_ratio_gene(0.8, 4, 100) == (80, 64, 52, 42)
    assert constant_ratio_gene(1.0, 3, 50) == (50, 50, 50)


@given(monotone_gene(), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_mutation_keeps_genes_monotone_and_bounded(gene, prob, seed):
    import random

    child = mutate(gene, prob, 64, random.Random(seed))
    assert all(a >= b for a, b in zip(child, child[1:], strict=False))
    assert 1 <= min(child) and max(child) <= 64
    if prob == 0:
        assert child == gene


@given(monotone_gene(), monotone_gene())
def test_crossover_is_ceil_mean_and_monotone(a, b):
    c = crossover(a, b)
    assert c == tuple(math.ceil((x + y) / 2) for x, y in zip(a, b, strict=True))
    assert all(x >= y for x, y in zip(c, c[1:], strict=False))


def test_best_under_budget():
    front = [Point((1,), 10, 0.8), Point((2,), 20, 0.85), Point((3,), 30, 0.9)]
    assert best_under_budget(front, 25).gene == (2,)
    with pytest.raises(ConfigError, match="cheapest costs 10"):
        best_under_budget(front, 5)


def _problem(calls: list):
    """A deterministic toy objective: more tokens score higher, with a bumpy bonus for deep tokens."""

    def evaluate(gene):
        calls.append(gene)
        return sum(math.log(g) for g in gene) / len(gene) + 0.01 * ((gene[-1] * 7919) % 13)

    def macs(gene):
        return float(64 + sum(gene))

    return evaluate, macs


def _search(store, evaluate, macs, progress=False):
    return EvolutionarySearch(evaluate, macs, num_layers=4, ref_length=32, length_drop_prob=0.35, population=6,
                              iterations=4, mutations=8, crossovers=8, seed=3, store=store, progress=progress)


def test_search_rejects_out_of_bounds_genes_and_caches(tmp_path):
    calls: list = []
    ev, macs = _problem(calls)
    s = _search(SearchStore(tmp_path / "s.jsonl"), ev, macs)
    res = s.run()
    assert len(calls) == len(set(calls)) == res.evaluated  # no gene is evaluated twice
    lo, hi = macs(s.smallest), macs(s.full)
    assert all(lo <= p.macs <= hi for p in res.frontier)
    assert res.frontier[-1].gene == s.full  # nothing beats keeping every token on this objective


class Killed(Exception):
    pass


def test_interrupted_search_resumes_to_the_same_frontier(tmp_path):
    ev, macs = _problem([])
    reference = _search(SearchStore(tmp_path / "ref.jsonl"), ev, macs).run().frontier

    done: list = []

    def dying(gene):
        if len(done) == 25:
            raise Killed
        done.append(gene)
        return ev(gene)

    path = tmp_path / "resume.jsonl"
    with pytest.raises(Killed):
        _search(SearchStore(path), dying, macs).run()
    # a kill while writing leaves half a line: it must be ignored
    with path.open("a") as f:
        f.write('{"gene": [3, 2')
    calls: list = []
    ev2, _ = _problem(calls)
    resumed = _search(SearchStore(path), ev2, macs).run()
    assert resumed.cached >= 25 and not set(calls) & set(done)
    assert [(p.gene, p.score) for p in resumed.frontier] == [(p.gene, p.score) for p in reference]


def test_store_from_another_search_is_refused(tmp_path):
    SearchStore(tmp_path / "s.jsonl", meta={"task": "sst2"}).add(Point((1, 1), 1.0, 0.5))
    with pytest.raises(ConfigError, match="another search"):
        SearchStore(tmp_path / "s.jsonl", meta={"task": "cola"})


def test_initial_population_is_the_authors():
    from dyntok.methods.genes import mean_retention, retention_spaced_genes

    genes = retention_spaced_genes(0.2, 4, 6, 384)
    low = mean_retention(constant_ratio_gene(0.8, 6, 384, 2), 384)
    rets = [mean_retention(g, 384) for g in genes]
    # evenly spaced strictly between the smallest gene's retention and 1 (to the genes' integer rounding)
    for i, r in enumerate(rets, 1):
        assert r == pytest.approx(low + (1 - low) * i / 5, abs=0.01)
    ev, macs = _problem([])
    s = EvolutionarySearch(ev, macs, 6, 384, 0.2, population=4, iterations=0, progress=False)
    assert s.initial_population() == [s.smallest, s.full, *genes]
    assert s.smallest == (308, 247, 198, 159, 128, 103)  # LA-MiniLM's smallest sub-model at p = 0.2
    old = EvolutionarySearch(ev, macs, 6, 384, 0.2, population=4, iterations=0, progress=False, init="ratio")
    assert old.initial_population() == [constant_ratio_gene(0.8 + 0.2 * i / 3, 6, 384, 2) for i in range(4)]


def test_each_iteration_adds_that_many_new_genes_with_distinct_parents(tmp_path, monkeypatch):
    import dyntok.methods.evolution as search

    pairs = []
    real_crossover = search.crossover

    def spy(a, b):
        pairs.append((a, b))
        return real_crossover(a, b)

    monkeypatch.setattr(search, "crossover", spy)
    calls: list = []
    ev, macs = _problem(calls)
    # dyntok's earlier rule: genes new to this search, each scored once
    s = EvolutionarySearch(ev, macs, 4, 32, 0.35, population=6, iterations=3, mutations=5, crossovers=4, seed=1,
                           progress=False, fill="unseen")
    res = s.run()
    assert len(calls) == len(set(calls)) == len(s.initial_population()) + 3 * (5 + 4)
    assert res.evaluated == len(calls) and s.short_iterations == 0
    assert pairs and all(a != b for a, b in pairs)
    assert all(min(g) >= 2 for g in calls)  # the authors' floor
    # dyntok's former fill: that many draws, new or not
    calls2: list = []
    ev2, _ = _problem(calls2)
    few = EvolutionarySearch(ev2, macs, 4, 32, 0.35, population=6, iterations=3, mutations=5, crossovers=4, seed=1,
                             progress=False, fill="attempts").run()
    assert few.evaluated <= len(calls)


def test_an_exhausted_space_stops_at_the_attempt_cap_and_warns(caplog):
    ev, macs = _problem([])
    # two layers of at most 4 tokens: few monotone genes exist at all
    s = EvolutionarySearch(ev, macs, 2, 4, 0.5, population=2, iterations=2, mutations=50, crossovers=50,
                           progress=False, max_attempts=3)
    with caplog.at_level("WARNING", logger="dyntok"):
        s.run()
    assert s.short_iterations > 0 and "exhausted" in caplog.text
