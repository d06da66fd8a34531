"""Published numbers come from committed records: ``python -m dyntok.report --publish`` writes them and
``--check`` fails when one differs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dyntok.errors import DataError
from dyntok.evaluation.publish import from_compare, publish

ROOT = Path(__file__).resolve().parents[1]


def _run_record(path: Path, accuracy: float, macs: float, speedup: float, status: str = "ok") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "status": status, "main_metric": "accuracy", "error": None if status == "ok" else "boom",
        "splits": {"test": {"accuracy": accuracy, "macs_ratio": macs, "padded_macs_ratio": macs / 5}},
        "speedup": {"measured_speedup": speedup}, "wall_time_s": 300.0, "versions": {"cpu_model": "Test CPU", "cpu_count": 4}}))


@pytest.fixture
def site(tmp_path):
    """A README with two generated blocks, three seeds of a run, a compare record and the spec."""
    for seed, (acc, macs, speed) in {1: (0.80, 0.50, 1.6), 2: (0.82, 0.52, 1.8), 3: (0.81, 0.48, 1.7)}.items():
        _run_record(tmp_path / "runs" / f"gates_seed{seed}" / "results.json", acc, macs, speed)
    (tmp_path / "compare.json").write_text(json.dumps({"points": [
        {"label": "full model", "config": None, "accuracy": 0.85, "macs_ratio": 1.0, "padded_macs_ratio": 0.2,
         "speedup": 1.0},
        {"label": "gates", "lambda": 2.0, "accuracy": 0.84, "macs_ratio": 0.6, "padded_macs_ratio": 0.12, "speedup": 1.5},
        {"label": "gates", "lambda": 4.0, "accuracy": 0.83, "macs_ratio": 0.45, "padded_macs_ratio": 0.09,
         "speedup": 2.1}]}))
    (tmp_path / "README.md").write_text("# x\n\nMain: <!-- dyntok:main-job:begin -->\n<!-- dyntok:main-job:end --> end.\n\n"
                                        "<!-- dyntok:results:begin -->\nold\n<!-- dyntok:results:end -->\n")
    (tmp_path / "spec.yaml").write_text("""
results:
  file: README.md
  rows:
    - {task: T, what: full model, command: "`a`", source: {compare: compare.json, label: full model}}
    - {task: T, what: gates lambda 4, command: "`b`", source: {compare: compare.json, label: gates, match: {lambda: 4.0}}}
    - {task: T, what: "gates, 3 seeds", command: "`c`", source: {run: "runs/gates_seed*/results.json"}}
main-job:
  file: README.md
  gates: runs/gates_seed*/results.json
  full: runs/full_seed*/results.json
""")
    return tmp_path


def test_publish_writes_every_block_from_its_records_and_check_then_passes(site):
    assert publish(site / "spec.yaml", site, check=True) == [str(site / "README.md")]  # "old" is out of date
    assert publish(site / "spec.yaml", site) == [str(site / "README.md")]
    text = (site / "README.md").read_text()
    assert "| T | full model | `a` | 1 | 85.00 | 1.00 | 0.20 | 1.00x | [1](compare.json) |" in text
    assert "| T | gates lambda 4 | `b` | 1 | 83.00 | 0.45 | 0.090 | 2.10x |" in text
    # three seeds: mean +- sd of the metric, mean MACs ratios, the median speed-up (the runs' own)
    assert "| T | gates, 3 seeds | `c` | 3 | 81.00 +- 1.00 | 0.50 | 0.10 | 1.70x (run's own) |" in text
    assert "Over 3 seeds it reaches 81.00 +- 1.00% accuracy at 0.50x" in text and "4 cores of Test CPU" in text
    assert "`method=full` on the same seeds is not recorded yet" in text
    assert text.startswith("# x\n\nMain: <!-- dyntok:main-job:begin -->") and text.rstrip().endswith("end -->")
    assert publish(site / "spec.yaml", site, check=True) == []


def test_check_fails_when_one_digit_is_changed(site):
    publish(site / "spec.yaml", site)
    readme = site / "README.md"
    readme.write_text(readme.read_text().replace("83.00", "83.01"))
    assert publish(site / "spec.yaml", site, check=True) == [str(readme)]
    assert "83.01" in readme.read_text()  # --check writes nothing


def test_bad_records_are_named(site):
    _run_record(site / "runs" / "gates_seed4" / "results.json", 0.5, 0.5, 1.0, status="failed")
    with pytest.raises(DataError, match="gates_seed4/results.json: the run failed"):
        publish(site / "spec.yaml", site)
    with pytest.raises(DataError, match="2 points with"):
        from_compare(site / "compare.json", "gates")
    (site / "runs" / "gates_seed4" / "results.json").unlink()
    (site / "README.md").write_text("no markers\n")
    with pytest.raises(DataError, match="no generated block 'results'"):
        publish(site / "spec.yaml", site)


def test_the_committed_readme_is_what_its_records_say():
    proc = subprocess.run([sys.executable, "-m", "dyntok.report", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
