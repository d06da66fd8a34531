"""Reliability: a killed run resumes to the same result, numerical faults stop cleanly, checkpoints refuse
the wrong model or method."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from dyntok.core.model import DynTokModel
from dyntok.data.tasks import get_task
from dyntok.errors import CheckpointError, ConfigError, NumericalError
from dyntok.methods.callbacks import (
    AtomicCheckpointIO,
    FiniteLossGuard,
    LastCheckpoint,
    RngState,
)
from dyntok.methods.checkpoint import check_resumable, load_init_weights
from dyntok.methods.full import FullFineTuning
from dyntok.methods.gates import GatesModule
from dyntok.methods.lengthdrop import LengthDropModule
from tests.conftest import TINY_BERT

ROOT = Path(__file__).resolve().parent.parent
# PYTHONPATH: runs load test callbacks (tests.callbacks) through +callbacks.<name>._target_
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                   os.environ.get("PYTHONPATH")]))}
# ~100 optimizer steps of the tiny model, a checkpoint every 4: long enough to be killed in the middle
TRAIN = ["method=full", "model=tiny", "logger=csv", "data.max_train_samples=400", "data.max_eval_samples=40",
         "data.batch_size=8", "trainer.max_epochs=2", "checkpoint.every_n_train_steps=4", "model.dropout=0.1",
         "checkpoint.keep_all=true"]


def _cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "dyntok.run", *args]


def _run_dir(cwd: Path) -> Path:
    dirs = list((cwd / "outputs").glob("*/*/*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def _kill_when(cwd: Path, args: list[str], ready, timeout: float = 240) -> None:
    """Start the command in ``cwd`` and SIGKILL it as soon as ``ready(cwd)`` holds."""
    proc = subprocess.Popen(_cmd(args), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    start = time.time()
    try:
        while not ready(cwd):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() - start < timeout, "the run never reached the kill point"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _last_step(cwd: Path) -> int:
    ckpts = list((cwd / "outputs").glob("*/*/*/checkpoints/last.ckpt"))
    if not ckpts:
        return -1
    try:
        return int(torch.load(ckpts[0], map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001 - a file still being renamed into place
        return -1


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("method", ["full", "lengthdrop"])
def test_sigkill_mid_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path, method):
    args = [*TRAIN, f"method={method}"]
    if method == "lengthdrop":  # LengthDrop + LayerDrop draw from their own RNG; the search is tested below
        args += ["method.search.enabled=false", "method.layer_drop=0.2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    done = subprocess.run(_cmd(args), cwd=whole, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # one last.ckpt, written by the step and the validation checkpoints alike, holding the final step
    ckpts = _run_dir(whole) / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("last*.ckpt")) == ["last.ckpt"]
    assert int(torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"]) == 100

    # killed mid-epoch (a step checkpoint between 4 and the end of epoch 1 = step 50), rerun as it was
    _kill_when(killed, args, lambda cwd: _last_step(cwd) >= 8)
    run_dir = _run_dir(killed)
    assert not (run_dir / "results.json").exists()
    step = int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"])
    assert 8 <= step < 100
    again = subprocess.run(_cmd(args), cwd=killed, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr

    a = json.loads((_run_dir(whole) / "results.json").read_text())
    b = json.loads((run_dir / "results.json").read_text())
    assert _run_dir(whole).name == run_dir.name  # same command line, same run folder
    assert b["train_steps"] == a["train_steps"] == 100
    assert b["splits"] == a["splits"]
    assert b["best_val"] == a["best_val"]
    sa, sb = _state(_run_dir(whole)), _state(run_dir)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:5]


def test_sigkill_mid_search_then_rerun_ends_with_the_same_frontier(tmp_path):
    args = [*TRAIN, "method=lengthdrop", "trainer.max_epochs=1", "data.max_train_samples=80",
            "method.search.population=6", "method.search.iterations=6", "method.search.mutations=6",
            "method.search.crossovers=6", "method.search.max_examples=40", "method.search.split=validation",
            "method.search.budget=1.0"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    done = subprocess.run(_cmd(args), cwd=whole, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    total = len((_run_dir(whole) / "search_store.jsonl").read_text().splitlines())

    def mid_search(cwd: Path) -> bool:
        store = list((cwd / "outputs").glob("*/*/*/search_store.jsonl"))
        return bool(store) and len(store[0].read_text().splitlines()) >= 12

    _kill_when(killed, args, mid_search)
    run_dir = _run_dir(killed)
    assert not (run_dir / "frontier.json").exists()
    assert 12 <= len((run_dir / "search_store.jsonl").read_text().splitlines()) < total
    again = subprocess.run(_cmd(args), cwd=killed, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    fa = json.loads((_run_dir(whole) / "frontier.json").read_text())
    fb = json.loads((run_dir / "frontier.json").read_text())
    timing = ("ms_per_example", "speedup")  # measured latency differs run to run; the rest may not
    assert [{k: v for k, v in r.items() if k not in timing} for r in fb["frontier"]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in fa["frontier"]]
    assert fb["curves"] == fa["curves"]


# ---- resume from every checkpoint a run writes --------------------------------------------------------

GLUE = ROOT / "tests" / "data" / "glue"
# SST-2 excerpt: 54 training sentences in 6 batches an epoch, 2 epochs; a step checkpoint every 3 steps, so
# also at each epoch's last batch (where none may be written: the end-of-epoch one follows validation)
RESUME = ["method=full", "model=tiny", "logger=none", "task=sst2", f"data_dir={GLUE}", "data.batch_size=9", "trainer.max_epochs=2",
          "checkpoint.every_n_train_steps=3", "model.dropout=0.1"]
RESUME_CASES = {
    "full": ["method=full"],
    "full-max_steps": ["method=full", "trainer.max_steps=12", "trainer.max_epochs=-1"],
    "full-mid_epoch_validation": ["method=full", "trainer.val_check_interval=0.5"],
    "gates-max_steps": ["method=gates", "trainer.max_steps=12", "trainer.max_epochs=-1", "method.gate_lr=0.05"],
    "lengthdrop-max_steps": ["method=lengthdrop", "trainer.max_steps=12", "trainer.max_epochs=-1",
                             "method.search.enabled=false", "method.layer_drop=0.2"],
}


def _recorded(overrides: list[str], run_dir: Path, out: Path, ckpt_path: Path | None = None) -> dict:
    """Train in this process with a :class:`tests.callbacks.Recorder`; the results record."""
    from dyntok.methods.train import train
    from tests.test_run import _compose

    rec = ["checkpoint.keep_all=true", "+callbacks.rec._target_=tests.callbacks.Recorder", f"+callbacks.rec.out={out}",
           f"+callbacks.rec.checkpoints={run_dir / 'checkpoints'}"]
    return train(_compose([*overrides, *rec, *([f"ckpt_path={ckpt_path}"] if ckpt_path else [])]), run_dir)


def _validations(out: Path) -> list[dict]:
    path = out / "validations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_every_checkpoint_the_run_writes_is_exact(tmp_path, case):
    """Resumed from each checkpoint file as it stood when written (step, validation, end of epoch, best),
    the run trains the same batches and validates at the same steps, to the same weights and results."""
    import shutil

    overrides = [*RESUME, *RESUME_CASES[case]]
    run_dir = tmp_path / "run"
    ref = _recorded(overrides, run_dir, tmp_path / "ref")
    ref_weights = _state(run_dir)
    ref_validations = _validations(tmp_path / "ref")
    assert len(ref_validations) == (4 if "mid_epoch" in case else 2)
    shutil.move(run_dir, tmp_path / "ref_run")
    snapshots = sorted(p for p in (tmp_path / "ref").iterdir() if p.is_dir())
    kinds = {n.split("-")[0].removesuffix(".ckpt") for s in snapshots for n in json.loads((s / "new.json").read_text())}
    assert kinds == {"last", "best"}, kinds
    assert len(snapshots) >= 4
    for snap in snapshots:
        done = int(snap.name.split("-")[1])  # validations run when it was written
        for name in json.loads((snap / "new.json").read_text()):
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(snap, run_dir / "checkpoints", ignore=shutil.ignore_patterns("new.json"))
            out = tmp_path / f"resumed-{snap.name}-{name}"
            got = _recorded(overrides, run_dir, out, run_dir / "checkpoints" / name)
            where = f"resumed from {snap.name}/{name}"
            assert _validations(out) == ref_validations[done:], where
            assert got["train_steps"] == ref["train_steps"], where
            assert got["splits"] == ref["splits"], where
            assert got["best_val"] == ref["best_val"], where
            assert Path(got["best_checkpoint"]).name == Path(ref["best_checkpoint"]).name, where
            weights = _state(run_dir)
            assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights), where


@pytest.mark.parametrize(("extra", "kill"), [
    # iteration-based training killed just after the end-of-epoch checkpoint of epoch 1 (step 50)
    (["trainer.max_steps=100"], ["+callbacks.kill.step=50", "+callbacks.kill.hook=train_epoch_end"]),
    # killed after the checkpoint of epoch 2's mid-epoch validation (step 75), before the next training step
    (["trainer.val_check_interval=0.5"], ["+callbacks.kill.step=75", "+callbacks.kill.hook=train_batch_start"]),
], ids=["after_epoch_end_checkpoint", "after_validation_checkpoint"])
def test_sigkill_after_an_epoch_or_validation_checkpoint_then_rerun_matches(tmp_path, extra, kill):
    def args(run: str, *more: str) -> list[str]:
        return [*TRAIN, "method=full", *extra, f"hydra.run.dir={tmp_path / run}",
                "+callbacks.rec._target_=tests.callbacks.Recorder", "+callbacks.rec.snapshots=false",
                f"+callbacks.rec.out={tmp_path / run / 'record'}",
                f"+callbacks.rec.checkpoints={tmp_path / run / 'checkpoints'}", *more]

    done = subprocess.run(_cmd(args("whole")), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = subprocess.run(_cmd(args("killed", "+callbacks.kill._target_=tests.callbacks.KillAt", *kill)),
                            env=ENV, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "killed"
    assert not (run_dir / "results.json").exists()
    step = int(kill[0].split("=")[1])
    assert int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]) == step
    before = _validations(run_dir / "record")
    again = subprocess.run(_cmd(args("killed")), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((run_dir / "results.json").read_text())
    assert b["train_steps"] == a["train_steps"] == 100
    assert b["splits"] == a["splits"] and b["best_val"] == a["best_val"]
    assert Path(b["best_checkpoint"]).name == Path(a["best_checkpoint"]).name
    # every validation of the uninterrupted run, once, before the kill or after the rerun
    whole = _validations(tmp_path / "whole" / "record")
    assert _validations(run_dir / "record") == whole and before == whole[:len(before)] and before
    sa, sb = _state(tmp_path / "whole"), _state(run_dir)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:5]


# ---- numerical faults ----------------------------------------------------------------------------


class _NaNAt(FullFineTuning):
    """Full fine-tuning whose loss turns NaN at one step."""

    def __init__(self, *args, nan_step: int, **kw):
        super().__init__(*args, **kw)
        self.nan_step = nan_step

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == self.nan_step else loss


def _tiny_module(cls=FullFineTuning, **kw):
    task = get_task("sst2")
    model = DynTokModel.from_pretrained(None, task.problem, task.num_labels, config=TINY_BERT)
    return cls(model, task, lr=1e-3, **kw)


def _batches(n: int = 8, b: int = 4, t: int = 12):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(5, 100, (b, t), generator=g), "attention_mask": torch.ones(b, t, dtype=torch.long),
             "token_type_ids": torch.zeros(b, t, dtype=torch.long), "labels": torch.randint(0, 2, (b,), generator=g)}
            for _ in range(n)]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    module = _tiny_module(_NaNAt, nan_step=5)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FiniteLossGuard(), RngState(), LastCheckpoint(tmp_path, 2)],
                        plugins=[AtomicCheckpointIO()], default_root_dir=str(tmp_path))
    with pytest.raises(NumericalError, match=r"loss is nan at step 5 .*last\.ckpt"):
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_batches(), batch_size=None))
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the NaN step never reached the weights
    assert not list(tmp_path.glob("*.tmp"))


def test_step_checkpoint_rejects_a_bad_interval(tmp_path):
    from dyntok.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoint.every_n_train_steps"):
        LastCheckpoint(tmp_path, 0)


# ---- checkpoints into the wrong model or method --------------------------------------------------


def _save(module, path: Path, model_name: str = "tiny", init_from: Path | None = None) -> Path:
    module.run_config = {"model": {"name": model_name}, **({"init_from": str(init_from)} if init_from else {})}
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_full_checkpoint_initialises_gates_and_lengthdrop(tmp_path):
    full = _save(_tiny_module(), tmp_path / "full.ckpt")
    gates = _tiny_module(GatesModule, regularizer={"lambda": 1.0, "mu": 0.1}, max_length=16)
    load_init_weights(gates, full, "tiny")
    ld = _tiny_module(LengthDropModule)
    ld.on_init_from(load_init_weights(ld, full, "tiny"))
    assert ld.baseline is not None  # the standard model of the constant-ratio curve


def test_lengthdrop_from_lengthdrop_keeps_the_original_standard_model(tmp_path, caplog):
    full_module = _tiny_module()
    full = _save(full_module, tmp_path / "full.ckpt")
    ld = _tiny_module(LengthDropModule)
    ld.on_init_from(load_init_weights(ld, full, "tiny"))
    with torch.no_grad():  # LengthDrop training moved the weights away from the standard model
        for p in ld.model.parameters():
            p.add_(1.0)
    _save(ld, tmp_path / "ld.ckpt", init_from=full)

    def standard_model_of(ckpt: Path):
        module = _tiny_module(LengthDropModule)
        module.on_init_from(load_init_weights(module, ckpt, "tiny"))
        return module

    again = standard_model_of(tmp_path / "ld.ckpt")
    for (name, a), b in zip(again.baseline.state_dict().items(), full_module.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the method=full weights, not the LengthDrop ones
    assert not torch.equal(next(again.model.parameters()), next(again.baseline.parameters()))
    # trained on in a second LengthDrop run: the chain of init_from leads back to the same full model
    third = standard_model_of(_save(again, tmp_path / "ld_more.ckpt", init_from=tmp_path / "ld.ckpt"))
    for (name, a), b in zip(third.baseline.state_dict().items(), full_module.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a source that is gone: no standard curve, and a warning that says why
    _save(ld, tmp_path / "ld2.ckpt", init_from=tmp_path / "gone")
    lone = _tiny_module(LengthDropModule)
    with caplog.at_level("WARNING", logger="dyntok"):
        lone.on_init_from(load_init_weights(lone, tmp_path / "ld2.ckpt", "tiny"))
    assert lone.baseline is None and "no standard-model constant-ratio curve" in caplog.text


def test_another_method_or_model_is_refused(tmp_path):
    gates_ckpt = _save(_tiny_module(GatesModule, regularizer={"lambda": 1.0, "mu": 0.1}, max_length=16),
                       tmp_path / "gates.ckpt")
    with pytest.raises(CheckpointError, match="method=gates checkpoint cannot initialise method=lengthdrop"):
        load_init_weights(_tiny_module(LengthDropModule), gates_ckpt, "tiny")
    with pytest.raises(CheckpointError, match="method=gates cannot resume method=full"):
        check_resumable(gates_ckpt, _tiny_module(), "tiny")
    with pytest.raises(CheckpointError, match="model=tiny, this run has model=minilm"):
        check_resumable(gates_ckpt, _tiny_module(GatesModule, regularizer={"lambda": 1.0, "mu": 0.1},
                                                 max_length=16), "minilm")
    same = _tiny_module(GatesModule, regularizer={"lambda": 1.0, "mu": 0.1}, max_length=16)
    with pytest.raises(CheckpointError, match="holds weights only"):  # no optimizer or loop state to resume
        check_resumable(gates_ckpt, same, "tiny")
    state = torch.load(gates_ckpt, weights_only=True)
    torch.save({**state, "optimizer_states": [], "loops": {}}, tmp_path / "resumable.ckpt")
    check_resumable(tmp_path / "resumable.ckpt", same, "tiny")


# ---- using a checkpoint after training --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("tiny_run")
    args = ["method=full", "model=tiny", "logger=csv", "data.max_train_samples=64", "data.max_eval_samples=40",
            "trainer.max_epochs=1", "data.batch_size=16", "checkpoint.keep_all=true"]
    proc = subprocess.run(_cmd(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _run_dir(cwd)


def test_load_predict_gives_probabilities_labels_and_macs(tiny_run):
    import dyntok

    model = dyntok.load(tiny_run)
    texts = ["a gorgeous, witty, seductive movie", "dull and long", "the plot is thin but the acting is fine"]
    out = model.predict(texts, batch_size=2)
    assert out.probabilities.shape == (3, 2)
    assert out.probabilities.sum(1) == pytest.approx(1.0, abs=1e-5)
    assert set(out.labels) <= set(model.task.label_names)
    assert (out.macs > 0).all() and (out.input_lengths == [len(model.tokenizer(t)["input_ids"]) for t in texts]).all()
    # the full model keeps every token: it costs its own baseline (both count encoder and head)
    assert (out.kept == out.input_lengths[:, None]).all() and np.array_equal(out.macs, out.full_macs)
    # a length configuration drops tokens, costs less, and comes back in input order
    half = model.predict(texts[::-1], length_config=0.5)
    assert (half.macs[::-1] < out.macs).all() and np.array_equal(half.full_macs[::-1], out.full_macs)
    assert (half.kept[::-1][:, 0] == np.ceil(out.input_lengths * 0.5)).all()
    with pytest.raises(ConfigError, match="single strings"):
        model.predict([("a", "b")])


def test_evaluate_reproduces_the_runs_test_metrics(tiny_run):
    import dyntok

    rec = json.loads((tiny_run / "results.json").read_text())
    model = dyntok.load(Path(rec["best_checkpoint"]))
    vals = model.evaluate("test")
    assert vals["accuracy"] == pytest.approx(rec["splits"]["test"]["accuracy"])
    assert vals["examples"] == rec["splits"]["test"]["examples"]
    assert vals["macs_ratio"] == pytest.approx(1.0)
    proc = subprocess.run([sys.executable, "-m", "dyntok.api", str(tiny_run), "--split", "validation",
                           "--length-config", "[1, 0.5, 0.5]"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = json.loads(proc.stdout)
    assert cli["split"] == "validation" and cli["macs_ratio"] < 1.0
    bad = subprocess.run([sys.executable, "-m", "dyntok.api", str(tiny_run), "--split", "dev"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown split 'dev'" in bad.stderr


def test_run_checkpoint_picks_what_the_run_tested(tmp_path):
    import json as _json

    from dyntok.methods.checkpoint import run_checkpoint

    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("best-5.ckpt", "last.ckpt"):
        (ckpts / name).write_bytes(b"")
    # no results.json: the best checkpoint
    assert run_checkpoint(run) == ckpts / "best-5.ckpt"
    # results.json says the final weights were tested: the newest last file (last-v1 of older runs)
    os.utime(ckpts / "last.ckpt", (1, 1))
    (ckpts / "last-v1.ckpt").write_bytes(b"")
    (run / "results.json").write_text(_json.dumps({"tested_weights": "final"}))
    assert run_checkpoint(run) == ckpts / "last-v1.ckpt"
    (run / "results.json").write_text(_json.dumps({"tested_weights": "best",
                                                  "best_checkpoint": str(ckpts / "best-5.ckpt")}))
    assert run_checkpoint(run) == ckpts / "best-5.ckpt"
    # final.ckpt wins over everything
    (ckpts / "final.ckpt").write_bytes(b"")
    assert run_checkpoint(run) == ckpts / "final.ckpt"
    # a run whose checkpoints folder is a symlink (reused from another run)
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoints").symlink_to(ckpts)
    assert run_checkpoint(other) == other / "checkpoints" / "final.ckpt"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run_checkpoint(tmp_path / "empty")


def test_another_runs_rank_gates_drive_inference(tiny_run, tmp_path):
    import dyntok
    from dyntok.core.gates import RankGates

    model = dyntok.load(tiny_run)
    L = model.module.model.num_layers
    gates = RankGates(L, 64, fixed_first=True)
    with torch.no_grad():
        gates.theta[1, 3:] = 0.0  # layer 2 keeps ranks 0-2
        gates.theta[2, 5] = 0.0   # a hole at rank 5 in layer 3 (unreachable once layer 2 keeps 3)
    texts = ["a gorgeous, witty, seductive movie about nothing much", "dull and long", "fine"]
    out = model.predict(texts, length_config=gates)
    full = model.predict(texts)
    expected = gates.hard_lengths(torch.as_tensor(out.input_lengths))
    assert (out.kept == expected.numpy()).all() and (out.kept[:, 1] <= 3).all()
    assert (out.macs[:2] < full.macs[:2]).all()
    with pytest.raises(ConfigError, match="rank gates for 2 layers"):
        model.predict(texts, length_config=RankGates(2, 64))
    # the command line takes a gates run's gates: on that run's own model they reproduce its test results
    cwd = tmp_path / "gates_run"
    cwd.mkdir()
    args = ["model=tiny", "logger=csv", "data.max_train_samples=64", "data.max_eval_samples=40",
            "trainer.max_epochs=1", "data.batch_size=16", "method=gates", "regularizer.lambda=0.5",
            "regularizer.mu=0.1", "method.gate_lr=0.3"]
    proc = subprocess.run(_cmd(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gates_run = _run_dir(cwd)
    rec = json.loads((gates_run / "results.json").read_text())["splits"]["test"]
    assert rec["macs_ratio"] < 1.0
    for target in (gates_run, tiny_run):
        proc = subprocess.run([sys.executable, "-m", "dyntok.api", str(target), "--gates-from", str(gates_run)],
                              env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        cli = json.loads(proc.stdout)
        assert cli["gates_from"] == str(gates_run) and cli["macs_ratio"] < 1.0
        if target == gates_run:
            assert cli["accuracy"] == pytest.approx(rec["accuracy"])
            assert cli["macs_ratio"] == pytest.approx(rec["macs_ratio"])
    bad = subprocess.run([sys.executable, "-m", "dyntok.api", str(tiny_run), "--gates-from", str(tiny_run)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a method=gates checkpoint" in bad.stderr
