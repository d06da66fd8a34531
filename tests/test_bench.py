"""The latency benchmark's plumbing on a tiny random model (no timing assertions: speed is measured by
running ``python -m dyntok.bench``, not here)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from dyntok.bench import (
    DEFAULT_MODEL,
    load_checkpoint,
    load_texts,
    main,
    make_batches,
    run_benchmark,
)
from dyntok.core.model import DynTokModel, resolve_pretrained
from dyntok.errors import CheckpointError, ConfigError, DataError, DyntokError
from dyntok.evaluation.timing import best_pass_ms

TINY = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=2)
SMALL_RUN = dict(num_examples=6, batch_size=4, warmup=1, repeats=2, progress=False)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DynTokModel.from_pretrained(None, "classification", 2, config=TINY)


@pytest.fixture(scope="module")
def result(tiny, tokenizer):
    return run_benchmark(tiny, ["0.5", "1,0.5"], ["both"], tokenizer=tokenizer, **SMALL_RUN)


def test_one_row_per_config_and_significance_plus_full_and_hf(result):
    names = [r["name"] for r in result["rows"]]
    assert names[:2] == ["hf_sdpa", "full"]
    assert len(names) == 2 + 2 * 2
    assert {r["significance"] for r in result["rows"][2:]} == {"all_queries", "cls_query"}
    assert json.loads(json.dumps(result))["rows"][2]["length_config"]["values"] == [0.5, 0.5]
    for key in ("torch", "threads", "device", "cpu_model"):
        assert key in result["env"]
    assert result["settings"]["num_examples"] == 6 and result["settings"]["num_batches"] == 2


def test_ratios_are_full_over_row_of_measured_numbers(result):
    rows = result["rows"]
    full = next(r for r in rows if r["kind"] == "full")
    hf = rows[0]
    for r in rows:
        t = np.asarray(r["times_ms"])
        assert t.shape == (2, 2)  # repeats x batches
        assert r["p50_ms"] == pytest.approx(np.percentile(t, 50), rel=1e-3)
        assert r["speedup"] == pytest.approx(full["p50_ms"] / r["p50_ms"])
        assert r["speedup_per_macs_reduction"] == pytest.approx(r["speedup"] / r["macs_reduction"])
    assert full["speedup"] == 1.0
    assert result["overhead_vs_hf"] == pytest.approx(full["p50_ms"] / hf["p50_ms"] - 1)


def test_macs_reduction(result):
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["full"]["macs_reduction"] == pytest.approx(1.0)
    assert rows["hf_sdpa"]["gmacs_per_example"] == pytest.approx(rows["full"]["gmacs_per_example"])
    half = rows["ratio[0.5, 0.5] all_queries"]
    assert half["macs_reduction"] > 1.5
    assert half["padded_macs_reduction"] > half["macs_reduction"]  # Rotten Tomatoes is far below 128 tokens
    assert half["batch_macs_reduction"] > 1.0
    assert 1.0 < rows["ratio[1, 0.5] cls_query"]["macs_reduction"] < half["macs_reduction"]


def test_bad_configs_give_clear_errors(tiny, tokenizer):
    with pytest.raises(ConfigError, match=r"--configs\[0\] 'abc'.*cannot read"):
        run_benchmark(tiny, ["abc"], tokenizer=tokenizer, **SMALL_RUN)
    with pytest.raises(ConfigError, match="non-increasing"):
        run_benchmark(tiny, ["0.5,0.7"], tokenizer=tokenizer, **SMALL_RUN)
    with pytest.raises(ConfigError, match="3 values given but the encoder has 2 layers"):
        run_benchmark(tiny, ["1,0.5,0.5"], tokenizer=tokenizer, **SMALL_RUN)
    with pytest.raises(DyntokError, match="significance"):
        run_benchmark(tiny, ["0.5"], ["attention"], tokenizer=tokenizer, **SMALL_RUN)
    with pytest.raises(DataError, match="--data"):
        load_texts("sst2")  # type: ignore[arg-type]


def test_batches_pad_to_longest(tokenizer):
    texts = load_texts("rotten_tomatoes", 5, seed=1)
    assert texts == load_texts("rotten_tomatoes", 5, seed=1) and len(texts) == 5
    batches = make_batches(tokenizer, texts, max_length=16, batch_size=2, sort_by_length=True)
    assert [b["input_ids"].size(0) for b in batches] == [2, 2, 1]
    lens = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    assert lens == sorted(lens, reverse=True) and max(lens) <= 16
    for b in batches:
        assert int(b["attention_mask"].sum(1).max()) == b["input_ids"].size(1)


def test_checkpoint_loads_with_prefixes(tiny, tmp_path):
    torch.manual_seed(1)
    other = DynTokModel.from_pretrained(None, "classification", 2, config=TINY)
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tiny.state_dict().items()}}, path)
    info = load_checkpoint(other, str(path))
    assert info["matched"] == info["model_tensors"]
    assert torch.equal(other.head.weight, tiny.head.weight)
    torch.save({"state_dict": {"foo.bar": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="no encoder weight"):
        load_checkpoint(other, str(path))


def test_cli_writes_json(tiny, tokenizer, tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny.encoder.backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "bench.json"
    args = ["--model", str(folder), "--configs", "0.5", "--num-examples", "4", "--batch-size", "2",
            "--repeats", "1", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved["rows"]] == ["hf_sdpa", "full", "ratio[0.5, 0.5]"]
    assert saved["env"]["threads"] == 1
    assert "speed-up" in capsys.readouterr().out
    assert main([*args, "--configs", "1,2,3"]) == 2
    assert "error: --configs[0]" in capsys.readouterr().err


def test_best_pass_ms_takes_the_fastest_pass_per_example():
    import time

    calls = []

    def forward(b):  # the first pass is slow (a busy machine), later passes fast
        calls.append(b)
        time.sleep(0.03 if len(calls) <= 2 else 0.002)

    batches = [{"input_ids": torch.zeros(3, 4)}, {"input_ids": torch.zeros(2, 4)}]
    ms = best_pass_ms(forward, batches, repeats=3)
    assert len(calls) == 6  # every batch once per pass
    assert 2 * 2.0 / 5 <= ms < 2 * 30.0 / 5  # two fast calls over 5 examples, not the slow pass
    with pytest.raises(ValueError, match="repeats >= 1"):
        best_pass_ms(forward, batches, repeats=0)


def test_race_ms_times_forwards_in_turns_per_example():
    from dyntok.evaluation.timing import race_ms

    order = []

    def timed(name, seconds):
        def forward(b):
            order.append(name)
            time.sleep(seconds)
        return forward

    batches = [{"input_ids": torch.zeros(4, 4)}]
    ms = race_ms({"slow": timed("slow", 0.02), "fast": timed("fast", 0.004)}, batches, repeats=2)
    assert order == ["slow", "fast", "slow", "fast"]  # turns, pass by pass
    assert ms["slow"] >= 20 / 4 and ms["fast"] < ms["slow"] / 2  # per example, each its own clock


def test_peak_memory_counts_what_the_call_allocates_not_what_was_resident():
    from dyntok.evaluation.timing import peak_memory_mb

    try:
        peak_memory_mb(lambda: None)
    except OSError:
        pytest.skip("no /proc/self/clear_refs here")
    resident = torch.ones(64 * 2**20 // 4)  # 64 MB already resident before the call: not counted
    before, peak = peak_memory_mb(lambda: torch.ones(256 * 2**20 // 4).sum())  # 256 MB while it runs
    assert peak - before > 200
    before, peak = peak_memory_mb(lambda: None)
    assert peak - before < 50 and before > 64
    del resident
