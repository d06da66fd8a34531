"""The side-by-side benchmark (python -m dyntok.compare) on tiny runs of every method."""

from __future__ import annotations

import json

import pytest

from dyntok.compare import _goals, main
from dyntok.evaluation.frontier import envelope_at
from tests.test_run import TINY, _run


def test_interpolation_between_baseline_points():
    curve = [(1.0, 0.9), (0.5, 0.7), (0.25, 0.5)]
    assert envelope_at(curve, 0.75) == pytest.approx(0.8)
    assert envelope_at(curve, 0.5) == pytest.approx(0.7)
    assert envelope_at(curve, 0.1) is None  # outside the baseline's range: no claim either way


def test_baseline_is_the_upper_envelope_where_schedules_cross():
    # two extraction schedules crossing at 0.5x: each comparison is against the better one there
    curve = [(1.0, 0.9), (0.6, 0.45), (0.3, 0.2), (0.7, 0.88), (0.4, 0.5), (0.95, 0.91)]
    assert envelope_at(curve, 0.6) == pytest.approx(0.5 + 0.38 / 3 * 2)  # on 0.4 -> 0.7, not the 0.6x point
    assert envelope_at(curve, 0.35) == pytest.approx(0.35)
    assert envelope_at(curve, 0.98) == pytest.approx(0.91)  # full (1.0, 0.9) is beaten by a cheaper point


def test_goals_name_what_is_met_and_what_is_not():
    pts = [
        {"method": "full", "macs_ratio": 1.0, "accuracy": 0.86, "delta": 0.0, "macs_reduction": 1.0},
        {"method": "extraction", "macs_ratio": 0.6, "accuracy": 0.85, "delta": -1.0, "macs_reduction": 1 / 0.6},
        {"method": "extraction", "macs_ratio": 0.3, "accuracy": 0.70, "delta": -16.0, "macs_reduction": 1 / 0.3},
        {"method": "gates", "macs_ratio": 0.38, "accuracy": 0.855, "delta": -0.5, "macs_reduction": 1 / 0.38,
         "speedup": 2.2, "speed_share": 2.2 * 0.38},
        {"method": "lengthdrop", "macs_ratio": 0.5, "accuracy": 0.78, "delta": -8.0, "macs_reduction": 2.0,
         "speedup": 1.5, "speed_share": 0.75},
    ]
    lines = _goals(pts, "accuracy", {"full": 100.0, "gates": 120.0, "lengthdrop": 350.0})
    text = "\n".join(lines)
    assert "MET      gates: >= 2.5x fewer MACs" in text
    assert "MET      gates: measured speed-up" in text  # 2.2 / 2.63 = 0.84
    assert "MET      gates above extraction at every equal-MACs point: 1 of 1" in text
    assert "NOT MET  lengthdrop: >= 2.5x fewer MACs" in text and "no point within 1 point" in text
    assert "NOT MET  lengthdrop above extraction" in text  # 0.78 < 0.85 - 0.15 * 0.1 / 0.3 = 0.80
    assert "NO DATA  gates above truncation" in text  # no truncation points: no claim
    assert "MET      gates training step <= 1.3x method=full: 1.20x" in text
    assert "NOT MET  lengthdrop training step <= 3.0x method=full: 3.50x" in text
    assert "NOT RUN" not in text
    # IMDB's goal is 4x: the same gates point (2.63x) no longer meets it
    strict = "\n".join(_goals(pts, "accuracy", {"full": 100.0}, reduction=4.0))
    assert "NOT MET  gates: >= 4x fewer MACs" in strict and "best within 1 point: 2.63x" in strict


def test_compare_measures_every_method_on_tiny_runs(tmp_path):
    runs = tmp_path / "runs"
    short = [*TINY, "data.max_train_samples=64"]
    assert _run(short, runs / "full").returncode == 0
    assert _run([*short, "train=false", f"init_from={runs / 'full'}", "eval_length_config=[1,0.5,0.5]",
                 "label=extraction"], runs / "extract").returncode == 0
    assert _run([*short, "method=gates", f"init_from={runs / 'full'}", "regularizer.lambda=5"],
                runs / "gates").returncode == 0
    ld = ["method=lengthdrop", f"init_from={runs / 'full'}", "method.search.population=4", "method.search.iterations=1",
          "method.search.mutations=2", "method.search.crossovers=2", "method.search.max_examples=16",
          "method.search.budget=1.0", "method.search.curves=false"]
    proc = _run([*short, *ld], runs / "lengthdrop")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a LengthDrop run without a search (a given configuration): measured as the one point it tested
    proc = _run([*short, "method=lengthdrop", "train=false", f"init_from={runs / 'lengthdrop'}",
                 "method.length_config=0.5", "label=fixed"], runs / "lengthdrop_fixed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "docs" / "bench"
    assert main([str(runs), "--out", str(out), "--truncate", "4", "8", "--repeats", "1", "--train-steps", "3",
                 "--no-memory"]) == 0
    data = json.loads(out.with_name("bench.json").read_text())
    fixed = [p for p in data["points"] if p["label"] == "fixed"]
    assert len(fixed) == 1 and fixed[0]["method"] == "lengthdrop" and fixed[0]["macs_ratio"] < 0.9
    # memory, in a fresh process: the resident model, data and framework, and what evaluating adds
    from dyntok.compare import _inference_memory
    from dyntok.methods.checkpoint import run_checkpoint

    mem = _inference_memory(str(run_checkpoint(runs / "full")), "test", None, 8, 16)
    assert mem["rss_mb"] > 100 and 0 <= mem["inference_mb"] < mem["rss_mb"]
    methods = {p["method"] for p in data["points"]}
    assert {"full", "truncation", "extraction", "lengthdrop"} <= methods and methods & {"gates", "gates (mu=0)"}
    full = next(p for p in data["points"] if p["method"] == "full")
    assert full["macs_ratio"] == pytest.approx(1.0) and full["speedup"] == pytest.approx(1.0)
    trunc4 = next(p for p in data["points"] if p.get("k") == 4)
    assert trunc4["macs_ratio"] < next(p for p in data["points"] if p.get("k") == 8)["macs_ratio"] < 1.0
    extraction = next(p for p in data["points"] if p["method"] == "extraction")
    assert extraction["macs_ratio"] < 1.0
    # the extraction run's own evaluation and this one agree on the same weights, split and configuration
    rec = json.loads((runs / "extract" / "results.json").read_text())
    assert extraction["accuracy"] == pytest.approx(rec["splits"]["test"]["accuracy"])
    assert set(data["train_step_ms"]) == {"full", "gates", "lengthdrop"}
    md = out.with_suffix(".md").read_text()
    assert "python -m dyntok.compare" in md and "gates" in md and "Goals:" in md
    assert out.with_suffix(".png").stat().st_size > 1000 and (out.parent / "bench_speed.png").exists()


def test_each_extraction_schedule_and_recipe_is_its_own_curve(tmp_path):
    from dyntok.compare import curve_name, plot_points

    pts = [{"method": "full", "label": "full model", "macs_ratio": 1.0, "accuracy": 0.9, "speedup": 1.0},
           {"method": "extraction", "label": "extraction (constant ratio)", "macs_ratio": 0.5, "accuracy": 0.89,
            "speedup": 1.9},
           {"method": "extraction", "label": "extraction (layers 1-2 whole)", "macs_ratio": 0.51, "accuracy": 0.87,
            "speedup": 1.9},
           {"method": "gates", "label": "gates (mu=300)", "macs_ratio": 0.3, "accuracy": 0.88, "speedup": 2.5}]
    assert [curve_name(p) for p in pts] == ["full", "extraction (constant ratio)",
                                            "extraction (layers 1-2 whole)", "gates (mu=300)"]
    plot_points(pts, "accuracy", tmp_path / "bench", "sst2 (test)", "cpu")
    assert (tmp_path / "bench.png").stat().st_size > 1000 and (tmp_path / "bench_speed.png").stat().st_size > 1000
