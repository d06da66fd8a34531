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


def test_a_failed_run_is_reported_as_failed_not_averaged(site):
    _run_record(site / "runs" / "gates_seed4" / "results.json", 0.5, 0.5, 1.0, status="failed")
    publish(site / "spec.yaml", site)
    text = (site / "README.md").read_text()
    assert "| T | gates, 3 seeds | `c` | 3 (1 failed) | 81.00 +- 1.00 | 0.50 |" in text  # seed 4 is not in the mean
    assert "Over 3 seeds it reaches 81.00 +- 1.00%" in text
    for seed in (1, 2, 3):
        _run_record(site / "runs" / f"gates_seed{seed}" / "results.json", 0.5, 0.5, 1.0, status="failed")
    (site / "README.md").write_text("<!-- dyntok:results:begin -->\n<!-- dyntok:results:end -->\n")
    spec = (site / "spec.yaml").read_text()
    (site / "spec.yaml").write_text(spec[:spec.index("main-job:")])
    publish(site / "spec.yaml", site)
    assert "| T | gates, 3 seeds | `c` | 0 (4 failed) | failed: boom | - | - | - |" in (site / "README.md").read_text()


def test_bad_records_are_named(site):
    with pytest.raises(DataError, match="2 points with"):
        from_compare(site / "compare.json", "gates")
    (site / "README.md").write_text("no markers\n")
    with pytest.raises(DataError, match="no generated block 'results'"):
        publish(site / "spec.yaml", site)


def test_a_page_table_with_its_reference_plot_pending_rows_and_a_failure_log(site):
    (site / "docs").mkdir()
    page = site / "docs" / "page.md"
    page.write_text("# page\n<!-- dyntok:page:begin -->\n<!-- dyntok:page:end -->\n")
    for seed, acc in {1: 0.84, 2: 0.86}.items():
        _run_record(site / "runs" / f"full_seed{seed}" / "results.json", acc, 1.0, 1.0)
    (site / "search.log").write_text("loading\ndyntok: error: method.search.budget=0.6 is below the cheapest: 0.654x\n")
    (site / "spec.yaml").write_text("""
page:
  file: docs/page.md
  plot: docs/page.png
  title: T on 2 seeds
  rows:
    - {id: full, task: T, what: full, command: "`f`", source: {run: "runs/full_seed*/results.json"}}
    - {task: T, what: gates, command: "`c`", reference: full, source: {run: "runs/gates_seed*/results.json"}}
    - {task: T, what: target, command: "`t`", reference: full, pending: "script.sh target",
       source: {run: "runs/target_seed*/results.json"}}
    - {task: T, what: "searched at 0.6", command: "`s`", source: {log: search.log}}
""")
    assert publish(site / "spec.yaml", site) == [str(site / "docs" / "page.png"), str(page)]
    text = page.read_text()
    assert "| T | full | `f` | 2 | 85.00 +- 1.41 | - | 1.00 |" in text
    assert "| T | gates | `c` | 3 | 81.00 +- 1.00 | -4.00 | 0.50 |" in text  # the difference of the means
    assert "| T | target | `t` | 0 | not run yet | - | - | - | - | -" in text
    assert "| T | searched at 0.6 | `s` | 0 (1 failed) | failed: method.search.budget=0.6 is below the cheapest: " \
           "0.654x | - | - | - | - | [1](../search.log) |" in text
    assert publish(site / "spec.yaml", site, check=True) == []
    _run_record(site / "runs" / "target_seed1" / "results.json", 0.83, 0.4, 2.0)  # a new record: table and plot
    assert publish(site / "spec.yaml", site, check=True) == [str(site / "docs" / "page.png"), str(page)]
    spec = (site / "spec.yaml").read_text()
    (site / "spec.yaml").write_text(spec.replace("reference: full, source", "reference: fulll, source"))
    with pytest.raises(DataError, match="reference 'fulll' is no earlier row's id"):
        publish(site / "spec.yaml", site)


def test_the_committed_readme_is_what_its_records_say(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dyntok.report", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import re
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("<!-- dyntok:results:begin -->"):readme.index("<!-- dyntok:results:end -->")]
    digit = re.search(r"\| (\d+)\.(\d)(\d) \+- ", block)  # the first mean +- sd of the results table
    changed = block[:digit.start(3)] + str((int(digit.group(3)) + 1) % 10) + block[digit.end(3):]
    (tmp_path / "README.md").write_text(readme.replace(block, changed))
    assert publish(tmp_path / "docs" / "benchmarks" / "published.yaml", tmp_path, check=True) == [
        str(tmp_path / "README.md")]


def test_every_point_of_a_compare_record_is_a_row_and_a_missing_reference_says_so(site):
    (site / "README.md").write_text("<!-- dyntok:all:begin -->\n<!-- dyntok:all:end -->\n"
                                    "<!-- dyntok:ref:begin -->\n<!-- dyntok:ref:end -->\n")
    (site / "spec.yaml").write_text("""
all: {file: README.md, points_of: compare.json, task: T, command: "`cmp`"}
ref:
  file: README.md
  rows:
    - {id: long, task: T, what: full trained as long, command: "`f`", pending: "x.sh full",
       source: {run: "runs/full_seed*/results.json"}}
    - {task: T, what: gates, command: "`c`", reference: long, source: {run: "runs/gates_seed*/results.json"}}
""")
    publish(site / "spec.yaml", site)
    text = (site / "README.md").read_text()
    assert "| T | full model | `cmp` | 1 | 85.00 | 1.00 |" in text
    assert "| T | gates, lambda 2 | `cmp` | 1 | 84.00 | 0.60 | 0.12 | 1.50x |" in text
    assert "| T | gates, lambda 4 | `cmp` | 1 | 83.00 | 0.45 |" in text
    assert "| T | gates | `c` | 3 | 81.00 +- 1.00 | reference not run yet | 0.50 |" in text


def test_every_committed_run_record_says_where_it_comes_from():
    records = sorted((ROOT / "docs").rglob("results.json"))
    assert records
    for path in records:
        rec = json.loads(path.read_text())
        env = rec["versions"]
        assert "seed" in rec and len(env["git_commit"]) == 40 and {"git_dirty", "command"} <= set(env), path
        assert env["cpu_model"] and env["cpu_count"], path
        if env["git_dirty"] is None or env["command"] is None:  # written before runs recorded them: said so
            assert "recorded before runs wrote their command line" in rec["provenance"], path


def test_the_main_job_sentence_gives_the_recorded_install_time(site):
    (site / "install.json").write_text(json.dumps({"what": "fresh venv", "wall_time_s": 222.0,
                                                   "versions": {"cpu_model": "Test CPU", "cpu_count": 4}}))
    spec = (site / "spec.yaml").read_text()
    (site / "spec.yaml").write_text(spec + "  install: install.json\n")
    publish(site / "spec.yaml", site)
    assert "The install above took 3.7 minutes on 4 cores of Test CPU (fresh venv; record: `install.json`)." in \
        (site / "README.md").read_text()


def test_the_papers_count_is_a_column_where_asked_and_not_recorded_where_missing(site):
    for seed in (1, 2, 3):
        path = site / "runs" / f"gates_seed{seed}" / "results.json"
        rec = json.loads(path.read_text())
        rec["splits"]["test"]["paper_macs_ratio"] = 0.4 + seed / 100
        path.write_text(json.dumps(rec))
    (site / "README.md").write_text("<!-- dyntok:t:begin -->\n<!-- dyntok:t:end -->\n")
    (site / "spec.yaml").write_text("""
t:
  file: README.md
  papers_count: true
  rows:
    - {task: T, what: full, command: "`a`", source: {compare: compare.json, label: full model}}
    - {task: T, what: gates, command: "`c`", source: {run: "runs/gates_seed*/results.json"}}
""")
    publish(site / "spec.yaml", site)
    text = (site / "README.md").read_text()
    assert "| MACs ratio, padded | MACs ratio, papers' count |" in text
    assert "| T | full | `a` | 1 | 85.00 | 1.00 | 0.20 | not recorded | 1.00x |" in text
    assert "| T | gates | `c` | 3 | 81.00 +- 1.00 | 0.50 | 0.10 | 0.42 | 1.70x (run's own) |" in text
