"""Scale-out: exact evaluation under DDP, DDP inside a Hydra multirun, the launcher configs, the W&B sweeps.

The DDP tests run 2 CPU processes (gloo) with the tiny model; every ``python -m dyntok.run`` is a
subprocess, as in tests/test_run.py.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import dyntok.run  # noqa: F401  (registers the typed config nodes the YAML files extend)
from dyntok.core.macs import MacsReport, ModelDims
from dyntok.data import BucketBatchSampler, SortedBatchSampler
from dyntok.data.tasks import get_task
from dyntok.errors import ConfigError
from tests.test_data import GLUE
from tests.test_run import CONF, ROOT, TINY, _run

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
# 25 test examples in batches of 4: 2 processes get 13 and 12 examples, 4 and 3 batches (uneven on purpose).
# Gates start closed (0.45 < threshold 0.5), so the test drops tokens and the MACs are not the full model's.
GATES = [*TINY, "data.max_eval_samples=25", "data.eval_batch_size=4", "method=gates", "method.gate_init=0.45"]
TWO_CPUS = ["trainer.accelerator=cpu", "trainer.devices=2"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# ---- sharding and summing, in process ---------------------------------------------------------------


def test_sorted_eval_batches_shard_every_example_exactly_once():
    lengths = np.random.default_rng(0).integers(3, 60, size=103)
    shards = [[i for b in SortedBatchSampler(lengths, 8, num_replicas=3, rank=r) for i in b] for r in range(3)]
    assert sorted(itertools.chain(*shards)) == list(range(103))  # no duplicate, none dropped
    assert sorted(len(s) for s in shards) == [34, 34, 35]
    for s in shards:
        assert np.all(np.diff(lengths[s]) <= 0)  # still longest first within a process
    assert list(SortedBatchSampler(lengths, 8, 1, 0)) == list(SortedBatchSampler(lengths, 8))


def test_bucket_batches_give_every_process_the_same_number_of_steps():
    lengths = np.arange(95) % 31
    ranks = [BucketBatchSampler(lengths, 10, seed=0, chunk_batches=3, num_replicas=2, rank=r) for r in (0, 1)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 5  # 10 batches in all
    assert set(itertools.chain(*batches[0], *batches[1])) == set(range(95))
    single = list(BucketBatchSampler(lengths, 10, seed=0, chunk_batches=3))
    assert sorted(map(tuple, single)) == sorted(map(tuple, batches[0] + batches[1]))


def test_datamodule_shards_its_loaders_under_a_ddp_trainer(minilm_path):
    from dyntok.data import DynTokDataModule

    def loaders(rank: int):
        dm = DynTokDataModule("mrpc", minilm_path, data_dir=str(GLUE), eval_batch_size=8, batch_size=8)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        return dm

    test = [[i for b in loaders(r).test_dataloader() for i in b["index"].tolist()] for r in (0, 1)]
    assert sorted(test[0] + test[1]) == list(range(40)) and len(test[0]) == len(test[1]) == 20
    train = [loaders(r).train_dataloader() for r in (0, 1)]
    assert len(train[0]) == len(train[1])  # the same number of steps in every process
    seen = {i for dl in train for b in dl for i in b["index"].tolist()}
    assert seen == set(range(len(train[0].dataset)))

    small = DynTokDataModule("mrpc", minilm_path, data_dir=str(GLUE), max_eval_samples=1)
    small.trainer = SimpleNamespace(world_size=2, global_rank=0)
    with pytest.raises(ConfigError, match="fewer than the 2 DDP processes"):
        small.test_dataloader()


def test_macs_report_sums_over_processes():
    dims = ModelDims(num_layers=2, hidden=4, intermediate=8, num_heads=1)
    n, kept = torch.tensor([10, 7, 5]), torch.tensor([[6, 3], [7, 2], [5, 5]])
    whole = MacsReport(dims, max_length=12, problem="classification")
    whole.update(n, kept)
    parts = [MacsReport(dims, max_length=12, problem="classification") for _ in range(2)]
    parts[0].update(n[:1], kept[:1])
    parts[1].update(n[1:], kept[1:])
    sent = []
    for p in parts:  # what each process contributes to the all-reduce
        copy.deepcopy(p).reduce(lambda t: sent.append(t) or t)
    for p in parts:  # what an all-reduce (sum) gives every process
        p.reduce(lambda t: sent[0] + sent[1])
        assert p.compute() == whole.compute() and p.examples == 3
        assert p.retention == pytest.approx([18 / 22, 10 / 22])
    assert MacsReport(dims).reduce(lambda t: t).examples == 0  # single process: unchanged


# ---- DDP on 2 CPU processes --------------------------------------------------------------------------


def test_ddp_evaluation_equals_single_process(tmp_path):
    """Train and test under plain ddp; evaluate the same best checkpoint with 1 process and with ddp_spawn."""
    trained = tmp_path / "train"
    proc = _run([*GATES, *TWO_CPUS, "trainer.strategy=ddp", "checkpoint.keep_all=true"], trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _results(trained)
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    # rank zero wrote them, once: best, last, and final (what was tested)
    assert len(ckpts) == 3 and {"last.ckpt", "final.ckpt"} <= set(ckpts) and rec["best_checkpoint"]
    assert rec["train_steps"] == 2  # 48 examples, 2 processes x 16 per batch: ceil(24 / 16) steps each

    tested = rec["best_checkpoint"] if rec["tested_weights"] == "best" else trained / "checkpoints" / "last.ckpt"
    evaluate = [*GATES, "train=false", f"init_from={tested}"]
    runs = {"1 process": [], "ddp_spawn": [*TWO_CPUS, "trainer.strategy=ddp_spawn"]}
    splits = {}
    for name, extra in runs.items():
        proc = _run([*evaluate, *extra], tmp_path / name.replace(" ", "_"))
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        splits[name] = _results(tmp_path / name.replace(" ", "_"))["splits"]
    single = splits["1 process"]["test"]
    assert single["examples"] == 25 and single["macs_ratio"] < 0.9  # tokens were dropped
    assert rec["splits"] == splits["1 process"]  # ddp: metric, example count and MACs, exactly
    assert splits["ddp_spawn"] == splits["1 process"]


@pytest.mark.slow
def test_ddp_lengthdrop_search_on_rank_zero_reaches_every_process(tmp_path):
    """Rank zero alone searches (after_fit); the other process tests the configuration it chose."""
    search = ["method=lengthdrop", "method.search.population=4", "method.search.iterations=2",
              "method.search.mutations=4", "method.search.crossovers=4", "method.search.curves=false",
              "method.search.budget=0.6"]
    base = [o for o in GATES if not o.startswith("method")] + search
    trained = tmp_path / "train"
    proc = _run([*base, *TWO_CPUS, "trainer.strategy=ddp", "checkpoint.keep_all=true"], trained, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _results(trained)
    tested = rec["best_checkpoint"] if rec["tested_weights"] == "best" else trained / "checkpoints" / "last.ckpt"
    evaluate = [*base, "train=false", f"init_from={tested}"]
    for name, extra in {"single": [], "ddp": [*TWO_CPUS, "trainer.strategy=ddp"]}.items():
        proc = _run([*evaluate, *extra], tmp_path / name, timeout=150)
        assert proc.returncode == 0, proc.stderr[-3000:]
        other = _results(tmp_path / name)
        assert other["length_config"] == rec["length_config"] and other["splits"] == rec["splits"], name


def _multirun(args: list[str], sweep_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyntok.run", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env())


def _check_multirun(proc: subprocess.CompletedProcess, sweep_dir: Path, tmp_path: Path) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    # plain ddp would start rank 1 with the whole `-m` command line: a second sweep, its jobs listed again
    assert len(re.findall(r"#0 : ", out)) == 1 and len(re.findall(r"#1 : ", out)) == 1, out[-3000:]
    assert "#2 : " not in out
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    # each job's own log (the local launcher's jobs print to .submitit/ files, not to this output)
    assert ["runs as ddp_spawn" in (p / "run.log").read_text() for p in jobs] == [True, True]
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    records = [_results(p) for p in jobs]
    assert [len(list(p.rglob("results.json"))) for p in jobs] == [1, 1]
    assert sorted(r["gates"]["lambda"] for r in records) == [0.1, 0.5]
    for r in records:
        assert r["status"] == "ok" and r["splits"]["test"]["examples"] == 24
        assert r["train_steps"] == 2 and r["best_val"] is not None  # handed back from the spawned workers

    report = subprocess.run([sys.executable, "-m", "dyntok.report", str(sweep_dir), "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT, env=_env())
    assert report.returncode == 0, report.stderr[-2000:]
    table = (tmp_path / "r.md").read_text()
    assert "lambda=0.1," in table and "lambda=0.5," in table, table


def test_multirun_with_ddp_runs_each_job_once_and_reports(tmp_path):
    """`-m` over two lambdas, each job DDP on 2 CPU processes (switched to ddp_spawn), then the report."""
    sweep = tmp_path / "multirun"
    proc = _multirun([*TINY, *TWO_CPUS, "trainer.strategy=ddp", "method=gates", "regularizer.lambda=0.1,0.5"],
                     sweep)
    _check_multirun(proc, sweep, tmp_path)


@pytest.mark.slow
def test_multirun_on_the_local_launcher(tmp_path):
    """The same through hydra/launcher=local (submitit's local executor: each job its own process)."""
    sweep = tmp_path / "multirun"
    proc = _multirun(["hydra/launcher=local", *TINY, *TWO_CPUS, "trainer.strategy=ddp", "method=gates",
                      "regularizer.lambda=0.1,0.5"], sweep)
    _check_multirun(proc, sweep, tmp_path)
    assert (sweep / ".submitit").is_dir()


# ---- launcher configs -------------------------------------------------------------------------------


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_launcher_configs_compose_with_tasks_per_node_equal_to_devices():
    local = OmegaConf.to_container(_compose(["hydra/launcher=local"]).hydra.launcher, resolve=True)
    assert local["_target_"].endswith("submitit_launcher.LocalLauncher") and local["tasks_per_node"] == 1
    cfg = _compose(["hydra/launcher=slurm", "device=multi_gpu", "trainer.devices=4", "+trainer.num_nodes=2",
                    "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90", "hydra.launcher.mem_gb=200",
                    "hydra.launcher.cpus_per_task=6"])
    slurm = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert slurm["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (slurm["partition"], slurm["nodes"], slurm["gpus_per_node"], slurm["tasks_per_node"]) == ("gpu", 2, 4, 4)
    assert (slurm["timeout_min"], slurm["mem_gb"], slurm["cpus_per_task"]) == (90, 200, 6)


def test_slurm_launcher_writes_one_task_per_device(tmp_path, monkeypatch):
    """The real plugin's parameter mapping up to the sbatch file (a fake `srun` on PATH; nothing submitted)."""
    import hydra.utils
    import submitit

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")

    class Submitted(Exception):
        pass

    def capture(self, fn, *args):
        raise Submitted(self._executor._make_submission_file_text("python -u -m submitit.core._submit x", "u"))

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    cfg = _compose(["hydra/launcher=slurm", "device=multi_gpu", "trainer.devices=2",
                    "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(Submitted) as sbatch:
        launcher.launch([["regularizer.lambda=0.1"], ["regularizer.lambda=0.5"]], initial_job_idx=0)
    text = str(sbatch.value)
    for line in ("#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2", "#SBATCH --partition=gpu",
                 "#SBATCH --nodes=1", "#SBATCH --time=720", "#SBATCH --mem=64GB", "#SBATCH --cpus-per-task=8"):
        assert line in text, text


# ---- W&B sweeps -------------------------------------------------------------------------------------


def _sweeps():
    with warnings.catch_warnings():  # sweeps 0.2.0 imports pydantic v1-style config
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def grid(sweep_cfg: dict) -> list[dict]:
    """Every run the sweep engine proposes, as the agent receives them: {param: {"value": v}}."""
    sweeps = _sweeps()
    runs = []
    while (run := sweeps.next_run(sweep_cfg, runs)) is not None:
        run.state = sweeps.RunState.finished
        runs.append(run)
    return [r.config for r in runs]


def agent_command(sweep_cfg: dict, args: dict) -> list[str]:
    """The command `wandb agent` runs for one proposed run (``wandb_agent.Agent._command_run``, not Windows)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": args})
    sweep_vars.update(interpreter=["python"], program=[sweep_cfg["program"]], env=["/usr/bin/env"])
    command = []
    for c in map(str, create_sweep_command(list(sweep_cfg["command"]))):
        command += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return command


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_file_is_valid_and_expands_into_hydra_commands(path):
    cfg = yaml.safe_load(path.read_text())
    assert _sweeps().schema_violations_from_proposed_config(cfg) == []
    assert cfg["command"][:5] == ["${env}", "${interpreter}", "-m", "dyntok.run", "${args_no_hyphens}"]
    params = cfg["parameters"]
    swept = {k: v["values"] for k, v in params.items() if "values" in v}
    fixed = {k: v["value"] for k, v in params.items() if "value" in v}
    runs = grid(cfg)
    assert len(runs) == np.prod([len(v) for v in swept.values()])
    seen = set()
    for args in runs:
        command = agent_command(cfg, args)
        assert command[:4] == ["/usr/bin/env", "python", "-m", "dyntok.run"]
        overrides = command[4:-1]
        assert sorted(overrides) == sorted(f"{k}={v['value']}" for k, v in args.items())
        assert command[-1].startswith("hydra.run.dir=outputs/sweeps/${oc.env:WANDB_SWEEP_ID,local}/")
        seen.add(tuple(args[k]["value"] for k in swept))
        composed = _compose(command[4:])  # Hydra takes every override as the agent passes it
        choices = composed.hydra.runtime.choices  # config groups: method=gates picks conf/method/gates.yaml
        for k, v in {**fixed, **{k: args[k]["value"] for k in swept}}.items():
            assert (choices[k] if k in choices else OmegaConf.select(composed, k)) == v, k
        task = get_task(composed.task.name)
        assert cfg["metric"]["name"] == f"{task.test_splits[0]}/{task.main_metric}"  # a key the run logs
    assert seen == set(itertools.product(*swept.values()))


def test_a_gates_sweep_command_runs_with_the_tiny_model(tmp_path):
    """One command of sweeps/gates_lambda.yaml as the agent starts it (`/usr/bin/env python`, W&B run id in
    the environment), plus the tiny overrides; it writes results.json into the sweep's run folder."""
    cfg = yaml.safe_load((ROOT / "sweeps" / "gates_lambda.yaml").read_text())
    args = next(a for a in grid(cfg) if a["task"]["value"] == "rotten_tomatoes")
    tiny = [o for o in TINY if not o.startswith(("logger=", "method="))] + ["logger.mode=offline", "device=cpu"]
    env = _env(WANDB_SWEEP_ID="testsweep", WANDB_RUN_ID="run0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([*agent_command(cfg, args), *tiny], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "sweeps" / "testsweep").glob("*_run0")
    rec = _results(run_dir)
    assert rec["method"] == "gates" and rec["gates"]["lambda"] == args["regularizer.lambda"]["value"]
    assert 0.0 <= rec["splits"]["test"]["accuracy"] <= 1.0


def test_plot_curves_puts_a_long_legend_beside_the_axes(tmp_path):
    import matplotlib.pyplot as plt

    from dyntok.evaluation.plots import plot_curves

    def curves(n):
        return {f"run {i}": [(0.1 * k, 0.5 + 0.01 * i + 0.02 * k) for k in range(1, 5)] for i in range(n)}

    few = plt.imread(plot_curves(curves(3), tmp_path / "few.png", "MACs ratio", "accuracy"))
    many = plt.imread(plot_curves(curves(12), tmp_path / "many.png", "MACs ratio", "accuracy"))
    assert few.shape[1] < 2 * few.shape[0]
    assert many.shape[1] > 2 * many.shape[0]  # the figure widens to hold the legend at the right
