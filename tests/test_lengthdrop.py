"""LengthDrop training: sampling, sandwich rule, distillation direction, an end-to-end run with search."""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyntok.core.model import DynTokModel
from dyntok.data.tasks import get_task
from dyntok.methods.lengthdrop import LengthDropModule, distillation_loss
from tests.conftest import TINY_BERT
from tests.test_run import TINY, _run


def _ceil(share: float, n: int) -> int:
    """ceil(share * n) on the share in millionths, as dyntok counts kept tokens (ceil_share)."""
    return math.ceil(Fraction(round(share * 1_000_000), 1_000_000) * n)


def _module(**kw) -> LengthDropModule:
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT)
    return LengthDropModule(model=model, task=get_task("sst2"), **kw)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 512), st.floats(0.05, 0.9), st.integers(0, 10**6))
def test_lengthdrop_samples_stay_within_the_ratio_bound(ref, p, seed):
    m = _module(length_drop_prob=p)
    m.rng = random.Random(seed)
    cfg = m.sample_lengths(ref)
    counts = [round(v * ref) for v in cfg.values]
    prev = ref
    for c in counts:
        assert _ceil(1 - p, prev) <= c <= prev
        prev = c
    small = [round(v * ref) for v in m.smallest(ref).values]
    assert all(s <= c for s, c in zip(small, counts, strict=True))  # nothing is smaller than the smallest


def test_sandwich_step_runs_full_smallest_and_random_submodels(tokenizer):
    m = _module(num_sandwich=2, layer_drop=0.0)
    b = tokenizer(["a fine film", "long boring and far too slow for anyone to enjoy it"], padding=True,
                  return_tensors="pt")
    batch = {**b, "labels": torch.tensor([1, 0])}
    real = b["attention_mask"].sum(1)
    seen = []
    forward = m.forward

    def spy(batch, lengths=None, **kw):
        seen.append(None if lengths is None else lengths.clone())
        return forward(batch, lengths=lengths, **kw)

    m.forward = spy
    m.rng = random.Random(7)
    twin = _module(num_sandwich=2, layer_drop=0.0)
    twin.rng = random.Random(7)
    expected = [c.resolve(real) for c, _ in twin.sandwich(int(real.max()))]
    m.rng = random.Random(7)
    loss = m.training_step(batch, 0)
    assert seen[0] is None  # the full model first, on the task loss
    assert len(seen) == 4
    for got, want in zip(seen[1:], expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(seen[1], m.smallest(int(real.max())).resolve(real))
    loss.backward()
    assert m.model.head.weight.grad is not None


def test_distillation_direction():
    s = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    t = torch.tensor([[0.5, 0.2, 0.1]])
    ps, pt = s.softmax(-1), t.softmax(-1)
    fwd = (pt * (pt.log() - ps.log())).sum()
    rev = (ps * (ps.log() - pt.log())).sum()
    assert distillation_loss(s, t, "classification", "forward").item() == pytest.approx(fwd.item(), rel=1e-5)
    assert distillation_loss(s, t, "classification", "reverse").item() == pytest.approx(rev.item(), rel=1e-5)
    assert fwd.item() != pytest.approx(rev.item())
    t2 = t.clone().requires_grad_(True)
    distillation_loss(s, t2, "classification", "reverse").backward()
    assert s.grad is not None and t2.grad is None  # the teacher is detached
    assert distillation_loss(s, s.detach(), "classification").item() == pytest.approx(0.0, abs=1e-7)


def test_span_distillation_is_over_positions():
    s = torch.randn(2, 7, 2)
    assert distillation_loss(s, s, "span").item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(s, torch.randn(2, 7, 2), "span").item() > 0


@pytest.mark.parametrize("kw", [{"length_drop_prob": 0.0}, {"layer_drop": 1.0}, {"kd_direction": "sideways"},
                                {"search": {"budgte": 0.4}}, {"search": {"budget": 1.5}},
                                {"search": {"budget": 0.0, "budget_unit": "gmacs"}},
                                {"search": {"budget_unit": "flops"}}])
def test_bad_options_raise(kw):
    from dyntok.errors import ConfigError

    with pytest.raises(ConfigError):
        _module(**kw)


def test_lengthdrop_run_searches_and_reports_the_chosen_configuration(tmp_path):
    search = ["method.search.population=4", "method.search.iterations=2", "method.search.mutations=3",
              "method.search.crossovers=3", "method.search.max_examples=16", "method.search.budget=0.9"]
    proc = _run([*TINY, "method=lengthdrop", "method.finetune_epochs=0", *search], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    rec = json.loads((run / "results.json").read_text())
    assert rec["method"] == "lengthdrop" and rec["search"]["evaluated"] > 0
    assert len(rec["length_config"]["values"]) == 3
    assert rec["search"]["chosen_macs_ratio"] <= 0.9 + 1e-9
    assert rec["splits"]["test"]["macs_ratio"] < 1.0
    front = json.loads((run / "frontier.json").read_text())
    assert front["frontier"] and "LengthDrop model, constant ratio" in front["curves"]
    vs = rec["search"]["frontier_vs_curves"]["LengthDrop model, constant ratio"]
    assert 0 <= vs["below"] <= vs["compared"] <= len(front["frontier"])
    assert all(r["ms_per_example"] > 0 and r["speedup"] > 0 for r in front["frontier"])
    assert rec["search"]["full_ms_per_example"] > 0
    assert (run / "frontier.png").stat().st_size > 1000 and (run / "frontier.tsv").exists()
    assert (run / "search_store.jsonl").exists()


def test_rescoring_takes_the_frontier_from_fresh_examples(tmp_path):
    """rescore_examples: the genes near the search frontier are scored on examples the search did not use,
    and the frontier written and the configuration chosen come from those scores."""
    search = ["method.search.population=4", "method.search.iterations=2", "method.search.mutations=3",
              "method.search.crossovers=3", "method.search.max_examples=8", "method.search.budget=0.9",
              "method.search.rescore_examples=8", "method.search.rescore_margin=1.0", "method.search.curves=false"]
    proc = _run([*TINY, "method=lengthdrop", *search], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    rec = json.loads((run / "results.json").read_text())["search"]
    searched = [json.loads(x) for x in (run / "search_store.jsonl").read_text().splitlines()]
    rescored = {tuple(r["gene"]): r for r in map(json.loads, (run / "search_store.rescore.jsonl").read_text().splitlines())}
    assert rec["rescore_examples"] == 8 and rec["rescored_genes"] == len(rescored)
    # margin 1.0 takes every in-bounds gene the search scored
    assert set(rescored) <= {tuple(r["gene"]) for r in searched} and len(rescored) >= rec["search_frontier_size"]
    front = json.loads((run / "frontier.json").read_text())["frontier"]
    assert [r["search_score"] for r in front] == [rescored[tuple(r["gene"])]["score"] for r in front]
    assert rec["chosen_search_score"] == rescored[tuple(rec["chosen_gene"])]["score"]
    bad = _run([*TINY, "method=lengthdrop", *search[:-3], "method.search.rescore_examples=-1"], tmp_path / "bad")
    assert bad.returncode == 2 and "method.search.rescore_examples=-1" in bad.stderr


def test_latency_budget_picks_the_best_configuration_that_is_fast_enough(tmp_path):
    search = ["method.search.population=4", "method.search.iterations=1", "method.search.mutations=2",
              "method.search.crossovers=2", "method.search.max_examples=16", "method.search.budget_unit=ms",
              "method.search.budget=1000", "method.search.curves=false"]
    proc = _run([*TINY, "method=lengthdrop", *search], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    front = json.loads((tmp_path / "run" / "frontier.json").read_text())["frontier"]
    best = max(front, key=lambda r: r["search_score"])
    assert rec["search"]["chosen_search_score"] == best["search_score"]  # every point fits in 1 s
    assert rec["search"]["chosen_ms_per_example"] <= 1000
    tight = _run([*TINY, "method=lengthdrop", *search[:-2], "method.search.budget=1e-6", "method.search.curves=false"],
                 tmp_path / "tight")
    assert tight.returncode == 2 and "ms per example: the fastest searched configuration" in tight.stderr
    # the search split's length filter reaches the search: no example that long, a clear error
    long = _run([*TINY, "method=lengthdrop", *search, "method.search.min_length=1000"], tmp_path / "long")
    assert long.returncode == 2 and "min_length=1000: no validation example" in long.stderr


def test_unreachable_macs_budget_fails_before_training(tmp_path):
    # p = 0.35 floors a 3-layer model well above 0.1x: the search could never meet the budget
    proc = _run([*TINY, "method=lengthdrop", "method.length_drop_prob=0.35", "method.search.budget=0.1"],
                tmp_path / "run")
    assert proc.returncode == 2
    assert "method.search.budget=0.1 (ratio) is below the cheapest configuration" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training step was spent


def test_from_a_lengthdrop_run_a_new_search_runs_unless_disabled(tmp_path):
    search = ["method.search.population=4", "method.search.iterations=1", "method.search.mutations=2",
              "method.search.crossovers=2", "method.search.max_examples=16", "method.search.curves=false"]
    first = _run([*TINY, "method=lengthdrop", *search, "method.search.budget=0.8"], tmp_path / "a")
    assert first.returncode == 0, first.stderr[-3000:]
    chosen = json.loads((tmp_path / "a" / "results.json").read_text())["length_config"]
    # another budget on the trained model: the search runs again, it does not reuse the old choice
    again = _run([*TINY, "method=lengthdrop", "train=false", f"init_from={tmp_path / 'a'}", *search,
                  "method.search.budget=1.0"], tmp_path / "b")
    assert again.returncode == 0, again.stderr[-3000:]
    rec = json.loads((tmp_path / "b" / "results.json").read_text())
    assert rec["search"] is not None and rec["search"]["budget"] == 1.0
    # no search: the loaded run's configuration is what is tested
    keep = _run([*TINY, "method=lengthdrop", "train=false", f"init_from={tmp_path / 'a'}",
                 "method.search.enabled=false"], tmp_path / "c")
    assert keep.returncode == 0, keep.stderr[-3000:]
    rec = json.loads((tmp_path / "c" / "results.json").read_text())
    assert rec["search"] is None and rec["length_config"] == chosen


# ---- the authors' token mode and LayerDrop --------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(8, 512), st.floats(0.05, 0.6), st.floats(0.0, 0.9), st.integers(0, 10**6))
def test_token_mode_sampling_is_bounded_monotone_and_steps_only_where_layers_run(max_length, p, drop, seed):
    m = _module(length_drop_prob=p, length_unit="tokens", max_length=max_length, layer_drop=drop)
    m.rng = random.Random(seed)
    full = m.sample_skip()  # the full model's LayerDrop, as a training step draws it first
    for cfg, skip in m.sandwich(m.ref_length(torch.tensor([3, 5]))):
        assert cfg.unit == "tokens" and cfg.min_tokens == 2
        counts = [int(v) for v in cfg.values]
        prev = max_length  # l_0 is the padded length, whatever the batch holds
        for j, c in enumerate(counts):
            if skip is not None and skip[j]:
                assert c == prev  # a skipped layer keeps its input length
            else:  # one step of the chain, never two
                assert max(2, _ceil(1 - p, prev)) <= c <= prev
            prev = c
    smallest, skip = m.sandwich(max_length)[0]  # LayerDrop too (the authors'): its chain steps where layers run
    assert (skip is None) == (drop == 0)
    want, cur = [], max_length
    for j in range(3):
        if skip is None or not skip[j]:
            cur = max(2, _ceil(1 - p, cur))
        want.append(cur)
    assert [int(v) for v in smallest.values] == want
    assert full is None or not all(full)
    m.layer_drop_smallest = False  # dyntok's earlier rule: the smallest runs every layer
    smallest, none = m.sandwich(max_length)[0]
    assert none is None and [int(v) for v in smallest.values] == _chain(max_length, p, 3)


def _chain(l0: int, p: float, layers: int) -> list[int]:
    out, cur = [], l0
    for _ in range(layers):
        cur = max(2, _ceil(1 - p, cur))
        out.append(cur)
    return out


def test_token_mode_keeps_min_of_count_and_real_length():
    m = _module(length_unit="tokens", max_length=64, length_drop_prob=0.5)
    cfg = m.smallest(64)  # 32, 16, 8
    assert [int(v) for v in cfg.values] == [32, 16, 8]
    kept = cfg.resolve(torch.tensor([64, 20, 10, 1]))
    assert kept.tolist() == [[32, 16, 8], [20, 16, 8], [10, 10, 8], [1, 1, 1]]


def test_layerdrop_in_the_ratio_unit_also_steps_only_where_layers_run():
    m = _module(length_drop_prob=0.5, layer_drop=0.0)
    m.rng = random.Random(1)
    cfg = m.sample_lengths(100, skip=[False, True, False])
    c = [round(v * 100) for v in cfg.values]
    assert c[1] == c[0] and _ceil(0.5, c[1]) <= c[2] <= c[1]
