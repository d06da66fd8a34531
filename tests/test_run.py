"""The Hydra app: every shipped config composes, a tiny model trains end to end, bad input fails clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import dyntok.run  # noqa: F401  (registers the typed config nodes the YAML files extend)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "dyntok" / "conf"
GLUE = ROOT / "tests" / "data" / "glue"
TINY = ["method=full", "model=tiny", "logger=csv", "data.max_train_samples=48", "data.max_eval_samples=24",
        "trainer.max_epochs=1", "data.batch_size=16"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group", ["method", "task", "model", "regularizer", "device", "logger"])
def test_every_option_composes_and_resolves(group):
    options = group_options(group)
    assert options, f"no options in conf/{group}"
    for opt in options:
        cfg = _compose([f"{group}={opt}", "logger.save_dir=/tmp"] if group == "logger" and opt != "none"
                       else [f"{group}={opt}"])
        for key in ("method", "task", "model", "regularizer", "trainer", "data"):
            OmegaConf.to_container(cfg[key], resolve=True)
        assert cfg.task.name in group_options("task")


def test_every_method_and_task_instantiates_against_the_code():
    """Method configs name real classes and only arguments they take; task names exist in the registry."""
    from dyntok.core.model import DynTokModel
    from dyntok.data.tasks import get_task
    from dyntok.methods.build import build_method
    from tests.conftest import TINY_BERT

    for task_name in group_options("task"):
        get_task(task_name)
    for method in group_options("method"):
        cfg = _compose([f"method={method}", "model=tiny"])
        task = get_task("sst2")
        model = DynTokModel.from_pretrained(None, task.problem, task.num_labels, config=TINY_BERT)
        module = build_method(cfg, model, task)
        assert module.task is task


def _run(args: list[str], run_dir: Path, timeout: int = 300, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "dyntok.run", *args, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_tiny_model_trains_end_to_end_and_writes_results(tmp_path):
    proc = _run(TINY, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["status"] == "ok" and rec["task"] == "rotten_tomatoes" and rec["method"] == "full"
    test = rec["splits"]["test"]
    assert 0.0 <= test["accuracy"] <= 1.0
    assert test["examples"] == 24
    assert test["macs_ratio"] == pytest.approx(1.0)  # the full model drops nothing
    assert test["padded_macs_ratio"] < 1.0  # short sentences are far below the padded length
    assert rec["versions"]["torch"] and rec["config"]["model"]["name"] == "tiny"
    # the record says what produced it: commit, dirty flag, seed, command and overrides, time, machine
    v = rec["versions"]
    assert len(v["git_commit"]) == 40 and isinstance(v["git_dirty"], bool)
    assert v["command"].startswith("python -m dyntok.run ") and "data.max_train_samples=48" in v["command"]
    assert rec["seed"] == 42 and "data.max_train_samples=48" in rec["overrides"]
    assert v["cpu_count"] >= 1 and "accelerator" in v and rec["wall_time_s"] > 0
    assert "| rotten_tomatoes | full | test |" in proc.stdout
    # once tested, the run keeps the tested model only (checkpoint.keep_all=false)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["final.ckpt"]
    assert set(rec["pruned_checkpoints"]) == {"last.ckpt", f"{Path(rec['best_checkpoint']).name}"}
    speed = rec["speedup"]  # timed on the report split: the tested model against every token
    assert speed["split"] == "test" and speed["timed_examples"] == 24
    assert speed["measured_speedup"] == pytest.approx(speed["full_ms_per_example"] / speed["ms_per_example"])


def test_a_token_dropping_run_prints_its_measured_speedup(tmp_path):
    proc = _run([*TINY, "method=gates", "eval_length_config=0.3", "speedup.max_examples=8", "speedup.repeats=1"],
                tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["speedup"]["timed_examples"] == 8 and rec["splits"]["test"]["macs_ratio"] < 0.7
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| task |"))
    assert "measured_speedup" in header


def test_a_bad_speedup_option_names_its_key(tmp_path):
    proc = _run([*TINY, "speedup.repeats=0"], tmp_path / "run", timeout=120)
    assert proc.returncode == 2 and "speedup.repeats" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_the_default_wandb_logger_runs_offline_without_warnings(tmp_path):
    proc = _run([*TINY, "logger=wandb", "trainer.max_steps=2"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "wandb" / "latest-run").exists()
    assert "anonymous setting" not in proc.stdout + proc.stderr


def test_glue_pair_regression_task_from_data_dir(tmp_path):
    proc = _run([*TINY, "task=stsb", f"data_dir={GLUE}"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = json.loads((tmp_path / "run" / "results.json").read_text())["splits"]["test"]
    assert {"pearson", "spearman"} <= set(test)


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("task=nope", "Available options in 'task'"),
        ("method=nope", "Available options in 'method'"),
        ("model=nope", "Available options in 'model'"),
    ],
)
def test_unknown_choice_lists_the_options(tmp_path, override, expect):
    proc = _run([*TINY, override], tmp_path / "run", timeout=120)
    assert proc.returncode != 0
    assert expect in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        (["task=sst2", "data_dir=/no/such/folder"], "/no/such/folder"),
        (["data.max_length=4"], "data.max_length"),
        (["method=gates", "regularizer.lambda=-1"], "regularizer.lambda"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, overrides, expect):
    proc = _run([*TINY, *overrides], tmp_path / "run", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("dyntok: error:")]
    assert len(err) == 1 and expect in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_malformed_tsv_names_file_and_line(tmp_path):
    bad = tmp_path / "glue" / "SST-2"
    bad.mkdir(parents=True)
    (bad / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbroken row without label\n")
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\t0\n")
    proc = _run([*TINY, "task=sst2", f"data_dir={tmp_path / 'glue'}"], tmp_path / "run", timeout=120)
    assert proc.returncode == 2
    assert "SST-2/train.tsv:3: expected 2 tab-separated columns" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_real_minilm_on_a_real_slice(tmp_path):
    """The real MiniLM, 1,000 real Rotten Tomatoes training sentences: learns well above chance."""
    proc = _run(["logger=csv", "data.max_train_samples=1000", "data.max_eval_samples=200", "trainer.max_epochs=2",
                 "method.lr=1e-4"], tmp_path / "run", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = json.loads((tmp_path / "run" / "results.json").read_text())["splits"]["test"]
    assert test["accuracy"] > 0.65


def test_progress_shows_as_log_lines_when_the_output_is_a_file(tmp_path):
    # the output goes to a pipe here (as under SLURM or nohup): lines in the log instead of a silent bar
    proc = _run([*TINY, "trainer.max_steps=3"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "training: 3 steps" in log and "end of epoch: epoch 1 step 3/3 (100%)" in log
    assert "validation at step 3: accuracy" in log and "testing on test" in log
    bad = _run([*TINY, "progress=loud"], tmp_path / "bad")
    assert bad.returncode == 2 and "progress must be 'auto', 'bar' or 'log'" in bad.stderr
