"""A loaded run predicts with the length configuration its own test used, whichever way the run set it."""

from __future__ import annotations

import json

import pytest

from tests.test_run import TINY, _run

SEARCH = ["method.search.population=4", "method.search.iterations=1", "method.search.mutations=2",
          "method.search.crossovers=2", "method.search.max_examples=16", "method.search.budget=0.9",
          "method.search.curves=false"]
WAYS = {
    "eval_length_config": ["eval_length_config=0.5"],
    "method.length_config": ["method=lengthdrop", "method.length_config=[1,0.6,0.4]"],
    "search": ["method=lengthdrop", *SEARCH],
    "gates": ["method=gates", "regularizer.lambda=50", "method.mu_ramp=[0,0]"],
}


@pytest.mark.parametrize("way", list(WAYS))
def test_loaded_run_evaluates_as_its_test(tmp_path, way):
    import dyntok

    run = tmp_path / "run"
    proc = _run([*TINY, *WAYS[way]], run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = json.loads((run / "results.json").read_text())["splits"]["test"]
    got = dyntok.load(run).evaluate("test")
    assert got["examples"] == test["examples"]
    assert got["macs_ratio"] == pytest.approx(test["macs_ratio"], rel=1e-9)
    assert got["accuracy"] == pytest.approx(test["accuracy"], abs=1e-9)
    if way != "gates":  # gates may keep every token of a tiny model; the others drop by construction
        assert test["macs_ratio"] < 1.0
