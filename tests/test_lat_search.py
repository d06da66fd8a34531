"""The Length-Adaptive Transformer search as the authors run it: the last-layer gene, the MACs of every caller,
the prefix cache's bound, and the authors' operators (clovaai/length-adaptive-transformer, ``evolution.py``,
``run_glue.py``, ``trainer.py``)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import ModelDims, full_macs, length_config_macs
from dyntok.core.model import DynTokModel
from dyntok.evaluation.frontier import Point, pareto_frontier
from dyntok.methods.evolution import EvolutionarySearch, SearchStore
from dyntok.methods.genes import canonical_gene, constant_ratio_gene, crossover, mutate, search_population
from tests.conftest import TINY_BERT

# ---- 1. restore="last_layer": the last entry is out of the gene's bounds ---------------------------------


def test_last_layer_genes_do_not_freeze_the_layer_before_the_last():
    """The last layer of ``last_layer`` runs every token: its entry sits at the floor, so mutants can lower
    the entry before it (tying it to that entry froze it at the parent's value)."""
    rng = random.Random(0)
    parent = canonical_gene((100, 80, 60, 40, 30, 30), "last_layer", floor=2)
    assert parent == (100, 80, 60, 40, 30, 2)
    seen = {canonical_gene(mutate(parent, 0.5, 128, rng, 2), "last_layer", 2)[-2] for _ in range(20_000)}
    assert min(seen) == 2  # the entry before the last reaches the floor
    # the former rule, a copy of the entry before: that entry could never fall below the parent's
    tied = (100, 80, 60, 40, 30, 30)
    old = {mutate(tied, 0.5, 128, rng, 2)[-2] for _ in range(20_000)}
    assert min(old) == 30
    assert canonical_gene((100, 80, 60, 40, 30, 30), "output", 2) == (100, 80, 60, 40, 30, 30)


def test_a_last_layer_search_reaches_below_the_smallest_gene_before_the_last_layer():
    dims = ModelDims(num_layers=6, hidden=8, intermediate=16, num_heads=2)
    n = torch.tensor([128, 100, 64])

    def macs(g):
        return float(length_config_macs(dims, LengthConfig.from_counts(g, 128, "tokens"), n,
                                        restore="last_layer").mean())

    def evaluate(g):
        return sum(math.log(x) for x in g[:-1]) + 0.3 * math.log(g[0])

    s = EvolutionarySearch(evaluate, macs, 6, 128, 0.2, population=6, iterations=6, mutations=12, crossovers=12,
                           seed=0, progress=False, canonical=lambda g: canonical_gene(g, "last_layer", 2))
    res = s.run()
    assert s.smallest[-1] == 2 and all(p.gene[-1] == 2 for p in res.points)
    assert min(p.gene[-2] for p in res.points) < s.smallest[-2]


# ---- 2. one MACs path: the benchmark counts what a span model with last_layer executed -------------------


def test_bench_counts_the_last_layer_of_a_span_model_on_every_token(tokenizer):
    from dyntok.bench import load_texts, make_batches, run_benchmark

    tok = tokenizer
    torch.manual_seed(0)
    net = DynTokModel.from_pretrained(None, "span", config=TINY_BERT, restore="last_layer")
    run = dict(num_examples=6, batch_size=4, warmup=1, repeats=1, progress=False, include_hf=False)
    rows = {r["name"]: r for r in run_benchmark(net, ["0.5"], ["all_queries"], tokenizer=tok, **run)["rows"]}
    batches = make_batches(tok, load_texts("rotten_tomatoes", 6, 0), 128, 4, False)
    n = torch.cat([b["attention_mask"].sum(1) for b in batches])
    dims = ModelDims.from_encoder(net)
    cfg = LengthConfig.constant(0.5, 3)
    executed = length_config_macs(dims, cfg, n, restore="last_layer").sum() / full_macs(dims, n).sum()
    dropped = length_config_macs(dims, cfg, n, restore="output").sum() / full_macs(dims, n).sum()
    assert executed > dropped + 0.05  # the two counts differ: the test can tell them apart
    assert rows[cfg.describe()]["macs_ratio"] == pytest.approx(float(executed), rel=1e-9)


# ---- 3. the prefix cache holds at most cache_mb ----------------------------------------------------------


@pytest.mark.parametrize("restore", [None, "output", "last_layer"])
def test_prefix_cache_holds_no_more_than_its_bound(tokenizer, restore):
    from dyntok.core.prefix_cache import PrefixCache, held_bytes

    texts = ["a gorgeous, witty, seductive movie that never lets go of you " * 3, "dull", "no",
             "the plot is nothing but boilerplate clichés from start to finish, and the script is a disaster"] * 4
    batches = [dict(tokenizer(texts[i:i + 8], padding=True, return_tensors="pt")) for i in (0, 8)]
    torch.manual_seed(0)
    problem = "classification" if restore is None else "span"
    extra = {"restore": restore} if restore else {}
    model = DynTokModel.from_pretrained(None, problem, 2, config=TINY_BERT, **extra).eval()
    rng = random.Random(0)
    bound = 1_000_000
    cache = PrefixCache(model, batches, bound)
    for _ in range(40):
        cfg = LengthConfig(tuple(sorted((rng.choice([1.0, 0.8, 0.6, 0.4, 0.2]) for _ in range(3)), reverse=True)))
        for i in range(len(batches)):
            _, out = cache.logits(i, cfg)
            assert held_bytes(out) >= out.hidden.numel() * 4  # an encoder output is not free
            assert held_bytes(list(cache._store.values())) <= bound  # each storage once, over all entries
    assert cache.layers_reused > 0  # the bound left room to cache something


# ---- 4. the authors' operators ---------------------------------------------------------------------------


def _toy():
    def evaluate(g):
        return sum(math.log(x) for x in g) / len(g) + 0.01 * ((g[-1] * 7919) % 13)

    def macs(g):
        return float(64 + sum(g))

    return evaluate, macs


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1)), min_size=1, max_size=30))
def test_the_population_is_the_frontier_plus_the_most_expensive_gene(pts):
    points = [Point((i,), m, s) for i, (m, s) in enumerate(pts)]
    pop = search_population(points)
    front = pareto_frontier(points)
    top = max(points, key=lambda p: (p.macs, p.score))
    assert {p.gene for p in front} <= {p.gene for p in pop}
    assert top.gene in {p.gene for p in pop}
    assert len(pop) <= len(front) + 1


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["population", "frontier"]))
def test_operators_keep_bounds_and_draw_distinct_parents(seed, parents):
    evaluate, macs = _toy()
    s = EvolutionarySearch(evaluate, macs, 4, 32, 0.35, population=5, iterations=3, mutations=6, crossovers=6,
                           seed=seed, progress=False, parents=parents)
    res = s.run()
    for p in res.points:
        g = p.gene
        assert all(a >= b for a, b in zip(g, g[1:], strict=False)) and g[0] <= 32 and g[-1] >= 2
        assert macs(s.smallest) - 1e-9 <= p.macs <= macs(s.full) + 1e-9
    pairs = [r.parents for r in s.lineage if r.method == "crossover"]
    assert pairs and all(len(pair) == 2 and pair[0] != pair[1] for pair in pairs)


def test_parents_come_from_the_population_as_it_grows():
    """A gene accepted during an iteration parents later draws of that iteration (``parents=population``, the
    authors' ``self.population``); with ``parents=frontier`` only genes of the iteration's start do."""
    evaluate, macs = _toy()
    for parents in ("population", "frontier"):
        s = EvolutionarySearch(evaluate, macs, 4, 32, 0.35, population=5, iterations=3, mutations=10,
                               crossovers=10, seed=0, progress=False, parents=parents)
        s.run()
        accepted: dict[int, set] = {}
        used_new = False
        for r in s.lineage:
            born = accepted.setdefault(r.iteration, set())
            used_new |= any(par in born for par in r.parents)
            born.add(r.gene)
        assert used_new == (parents == "population"), parents


def test_a_gene_is_new_when_it_is_not_in_the_population_and_replays_cost_nothing(tmp_path):
    evaluate, macs = _toy()
    calls: list = []

    def counted(g):
        calls.append(g)
        return evaluate(g)

    s = EvolutionarySearch(counted, macs, 3, 8, 0.5, population=3, iterations=6, mutations=8, crossovers=8,
                           seed=0, progress=False, store=SearchStore(tmp_path / "s.jsonl"))
    res = s.run()
    assert len(calls) == len(set(calls)) == res.evaluated  # nothing scored twice
    assert res.cached > 0  # genes that had left the population came back from the store, unscored
    # dyntok's earlier rule (never evaluated in this search) replays nothing within a run
    s2 = EvolutionarySearch(evaluate, macs, 3, 8, 0.5, population=3, iterations=6, mutations=8, crossovers=8,
                            seed=0, progress=False, fill="unseen", max_attempts=5)
    assert s2.run().cached == 0


def test_the_most_expensive_gene_is_kept_so_crossover_always_has_two_parents():
    def evaluate(g):  # a score that falls with compute: the smallest gene dominates every other
        return -sum(g)

    runs = {}
    for parents in ("population", "frontier"):
        s = EvolutionarySearch(evaluate, lambda g: float(sum(g)), 3, 16, 0.5, population=3, iterations=3,
                               mutations=4, crossovers=4, seed=0, progress=False, parents=parents)
        res = s.run()
        assert len(pareto_frontier(res.points)) == 1
        runs[parents] = sum(r.method == "crossover" for r in s.lineage)
    assert runs["population"] == 3 * 4 and runs["frontier"] == 0


def test_smallest_gene_chain_steps_only_at_layers_that_run():
    assert constant_ratio_gene(0.8, 6, 100, 2) == (80, 64, 52, 42, 34, 28)
    skip = [False, True, False, True, True, False]
    assert constant_ratio_gene(0.8, 6, 100, 2, skip=skip) == (80, 80, 64, 64, 64, 52)
    assert crossover((5, 3), (4, 2)) == (5, 3)  # the authors' (a + b + 1) // 2


# ---- 5. racing -------------------------------------------------------------------------------------------


def test_racing_stops_only_genes_that_cannot_reach_the_bar_and_scores_the_rest_exactly(tokenizer):
    from dyntok.data.tasks import get_task
    from dyntok.errors import ConfigError
    from dyntok.methods.lengthdrop import LengthDropModule
    from dyntok.methods.search import LengthSearch

    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT)
    m = LengthDropModule(model=model, task=get_task("sst2"), max_length=64,
                         search={"racing": True, "racing_start": 0.25, "racing_z": 3.0})
    words = "a gorgeous witty seductive dull boring film plot script never quite works".split()
    rng = random.Random(0)
    batches = []
    for _ in range(4):
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) for _ in range(8)]
        b = dict(tokenizer(texts, padding=True, return_tensors="pt"))
        b["labels"] = torch.tensor([rng.randint(0, 1) for _ in texts])
        batches.append(b)
    search = LengthSearch(m, None)
    race, exact = search._racer(batches, "validation"), search._scorer(batches, "validation")
    gene = (40, 30, 20)
    score, finished = race(gene, -math.inf)
    assert finished and score == exact(search.config(gene))
    score, finished = race(gene, 0.0)
    assert finished  # no accuracy is below 0: nothing to stop
    score, finished = race(gene, 1.5)  # unreachable: stopped at the first look, after 25% of the examples
    assert not finished and 0.0 <= score <= 1.0
    m.task = get_task("cola")  # Matthews correlation: not a mean of per-example outcomes
    with pytest.raises(ConfigError, match="method.search.racing"):
        search._racer(batches, "validation")


def test_bf16_scoring_runs_under_autocast_and_stays_close(tokenizer):
    from dyntok.data.tasks import get_task
    from dyntok.errors import ConfigError
    from dyntok.methods.lengthdrop import LengthDropModule
    from dyntok.methods.search import LengthSearch

    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT)
    texts = ["a gorgeous, witty, seductive movie", "dull", "the plot is nothing but boilerplate clichés"] * 8
    b = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    b["labels"] = torch.tensor([1, 0, 0] * 8)
    scores = {}
    for precision in ("fp32", "bf16"):
        m = LengthDropModule(model=model, task=get_task("sst2"), max_length=64, search={"precision": precision})
        search = LengthSearch(m, None)
        seen = []
        real_logits = model.logits

        def spy(out, mask, real_logits=real_logits, seen=seen):
            logits = real_logits(out, mask)
            seen.append(logits.dtype)  # the task head's matrix product ran in bfloat16 under autocast
            return logits

        model.logits = spy
        try:
            scores[precision] = search._scorer([b], "validation")(search.config((20, 12, 6)))
        finally:
            model.logits = real_logits
        assert seen[-1] == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert abs(scores["bf16"] - scores["fp32"]) <= 2 / len(texts)  # an example or two at most
    with pytest.raises(ConfigError, match="method.search.precision"):
        LengthDropModule(model=model, task=get_task("sst2"), search={"precision": "fp16"})


def _their_initial_genes(p: float, count: int, layers: int, length: int) -> list[tuple[int, ...]]:
    """``run_glue.py``'s initial population as its code runs (``approx_ratio`` with its 12 x 384 defaults,
    ``inverse``, ``sample_length_configuration(length_drop_ratio=...)``, ``min_length`` 2)."""
    import numpy as np

    def approx_ratio(x, n=12, size=384):
        s, i = 0, size
        for _ in range(n):
            i = int(np.ceil(i * (1 - x)))
            s += i
        return s / (n * size)

    def inverse(x):
        lo, hi = 0, 1
        while hi - lo > 1e-12:
            c = (lo + hi) / 2
            lo, hi = (c, hi) if x <= approx_ratio(c) else (lo, c)
        return lo

    def gene(ratio):
        out, cur = (), length
        for _ in range(layers):
            cur = max(int(np.ceil(cur * (1 - ratio))), 2)
            out += (cur,)
        return out

    return [gene(inverse(r)) for r in np.linspace(approx_ratio(p), 1, count + 2)[1:-1]]


def test_the_initial_population_is_the_authors_at_their_shape_and_their_code_at_any_other():
    from dyntok.methods.genes import authors_code_genes, retention_spaced_genes

    theirs = _their_initial_genes(0.2, 20, 12, 384)
    assert retention_spaced_genes(0.2, 20, 12, 384, 2) == theirs == authors_code_genes(0.2, 20, 12, 384, 2)
    small = _their_initial_genes(0.35, 20, 6, 128)
    assert authors_code_genes(0.35, 20, 6, 128, 2) == small
    assert len(set(retention_spaced_genes(0.35, 20, 6, 128, 2)) & set(small)) < 5  # the rule, not their code
    search = EvolutionarySearch(lambda g: 0.5, lambda g: float(sum(g)), num_layers=6, ref_length=128,
                                length_drop_prob=0.35, init="authors_code")
    assert search.initial_population()[2:] == [g for g in small if g not in search.initial_population()[:2]]
