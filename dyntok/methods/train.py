"""Fit and test one configuration: DataModule + model + method -> Lightning Trainer -> ``results.json``.

What ``python -m dyntok.run`` does for each job, callable without Hydra's command line (``train(cfg, run_dir)``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dyntok.errors import ConfigError
from dyntok.methods.build import build_method, build_model, instantiate

log = logging.getLogger("dyntok")


def hydra_run_dir() -> Path:
    """The output folder of the Hydra job running now."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _logger(cfg: DictConfig):
    if cfg.logger is None or cfg.logger.get("_target_") is None:
        return False
    if "WandbLogger" in cfg.logger._target_:
        os.environ.setdefault("WANDB_SILENT", "true")
    return instantiate(cfg.logger)


def _quiet_libraries() -> None:
    """One log line per event: Lightning's own handler would repeat what Hydra's root handler prints."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Fit and test as ``cfg`` says; returns the results record (also written to ``results.json``).

    ``run_dir``: where checkpoints and results go (default: the Hydra run's output folder).
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dyntok.data.tasks import get_task
    from dyntok.evaluation.results import environment, flat_rows, format_table, write_results
    from dyntok.methods.callbacks import (
        AtomicCheckpointIO,
        EpochEndResume,
        FiniteLossGuard,
        LastCheckpoint,
        LogProgress,
        RngState,
    )
    from dyntok.methods.checkpoint import check_resumable, load_file, load_init_weights, restore
    from dyntok.methods.config import CheckpointConfig, SpeedupConfig
    from dyntok.options import build_options

    _quiet_libraries()
    start = time.time()
    run_dir = Path(run_dir) if run_dir is not None else hydra_run_dir()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task = get_task(cfg.task.name)
    dm = instantiate(cfg.data)
    dm.check_sources()  # missing data fails before the model loads
    _preset_lambda_yields_to_target(cfg)
    model = build_model(cfg.model, task)
    module = build_method(cfg, model, task, OmegaConf.to_container(cfg, resolve=True))
    trust = bool(cfg.get("trust_checkpoint", False))
    if cfg.init_from:
        module.on_init_from(load_init_weights(module, cfg.init_from, cfg.model.name, trust))

    # checked before training: a bad value fails at once
    ckpt_opts = build_options(CheckpointConfig, OmegaConf.to_container(cfg.checkpoint), "checkpoint")
    speed_opts = build_options(SpeedupConfig, OmegaConf.to_container(cfg.speedup), "speedup")
    ckpt_dir = run_dir / "checkpoints"
    monitor = f"val/{task.main_metric}"
    # best-*.ckpt only: last.ckpt (the resume point) is LastCheckpoint's alone
    ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="max", filename="best-{step}",
                              save_top_k=ckpt_opts.save_top_k, save_last=False,
                              auto_insert_metric_name=False, enable_version_counter=False)
    callbacks = [FiniteLossGuard(), RngState(), EpochEndResume(), ckpt_cb, *module.extra_callbacks()]
    if ckpt_opts.save_last:
        callbacks.append(LastCheckpoint(ckpt_dir, ckpt_opts.every_n_train_steps))
    # the user's own (callbacks.<name>._target_=...), after dyntok's
    callbacks += [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    kw = _trainer_kwargs(cfg)
    if module.extra_epochs():
        if not isinstance(kw.get("max_epochs"), int) or kw["max_epochs"] <= 0:
            raise ConfigError(f"a second stage of {module.extra_epochs()} epochs (method.retrain_epochs) needs "
                              f"trainer.max_epochs > 0, got {kw.get('max_epochs')}")
        kw["max_epochs"] += module.extra_epochs()
    if _log_progress(cfg.get("progress", "auto")):  # no terminal (SLURM, nohup): lines in the log, no bar
        kw["enable_progress_bar"] = False
        callbacks.append(LogProgress())
    trainer = L.Trainer(**kw, logger=_logger(cfg), callbacks=callbacks,
                        plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir))
    ckpt_path = cfg.ckpt_path
    if ckpt_path is None and cfg.resume and (ckpt_dir / "last.ckpt").exists():
        ckpt_path = str(ckpt_dir / "last.ckpt")
        log.info("resuming from %s", ckpt_path)
    earlier = _finished_record(run_dir) if cfg.train and cfg.resume and ckpt_path is None else None
    if earlier is not None:  # trained and tested before, its checkpoints pruned to final.ckpt: test that again
        log.info("%s: this run finished before (results.json); testing its final.ckpt again (resume=false "
                 "trains afresh)", run_dir)
        restore(module, load_file(ckpt_dir / "final.ckpt", trust), str(ckpt_dir / "final.ckpt"), strict=False)
    fit = cfg.train and earlier is None
    if ckpt_path is not None:
        check_resumable(ckpt_path, module, cfg.model.name, trust)  # also refuses what would run code
    module.before_fit(dm)
    if fit:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    elif not cfg.init_from and earlier is None:
        log.warning("train=false without init_from: evaluating untrained weights")

    best = ckpt_cb.best_model_path or None
    if best and module.select_best and fit:
        module.load_best(best)
    module.after_fit(trainer, dm, run_dir)
    if fit:
        # The model as tested (best or final weights, and the length configuration chosen or learned):
        # what dyntok.load(<run dir>) and the benchmark read.
        trainer.save_checkpoint(ckpt_dir / "final.ckpt", weights_only=True)
    splits: dict[str, dict[str, float]] = {}
    if cfg.test:
        trainer.test(module, datamodule=dm, verbose=False)
        # ddp_spawn: the test ran in worker processes; its logged metrics came back
        splits = module.test_results or {s: _logged(trainer, f"{s}/") for s in task.test_splits}
    speed: dict[str, Any] = {}
    if cfg.test and speed_opts.enabled:
        if trainer.world_size > 1:
            log.info("speedup: not measured under DDP (time a checkpoint with python -m dyntok.compare)")
        else:
            speed = {"split": task.test_splits[0], **measure_speedup(module, dm, task.test_splits[0], speed_opts)}
    notes = module.result_warnings(splits)
    for note in notes:
        log.warning("%s", note)
    record = {
        "task": task.name,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "label": cfg.get("label") or cfg.method.name,
        "status": "ok",
        "seed": cfg.seed,
        "overrides": _overrides(),
        "main_metric": task.main_metric,
        "splits": splits,
        "speedup": speed or None,
        "best_val": _best_score(ckpt_cb, best),
        "best_checkpoint": best,
        "tested_weights": "best" if best and module.select_best and fit else "final",
        **module.summary(),
        "warnings": notes,
        "train_steps": int(trainer.global_step) or int(trainer.callback_metrics.get("train/steps", 0)),
        "wall_time_s": time.time() - start,
        "threads": torch.get_num_threads(),
        "versions": environment(),
        "config": module.run_config,
    }
    if earlier is not None:  # what the training run recorded (its training, its search)
        record.update({k: earlier.get(k) for k in ("best_val", "best_checkpoint", "tested_weights", "train_steps",
                                                     "pruned_checkpoints")})
        record.update({k: v for k, v in earlier.items() if record.get(k) is None and k != "path"})
    if fit and trainer.is_global_zero and not ckpt_opts.keep_all:
        record["pruned_checkpoints"] = _prune_checkpoints(ckpt_dir)
    if trainer.is_global_zero:
        path = write_results(run_dir, record)
        cols = ["task", "method", "split", *task.metric_names, "gmacs_per_example", "macs_ratio",
                "padded_macs_ratio", "paper_macs_ratio", "measured_speedup", "examples"]
        rows = [{**r, **(speed if r.get("split") == speed.get("split") else {})} for r in flat_rows([record])]
        print(f"\n{format_table(rows, cols)}\n\nresults: {path}")
    return record


def _overrides() -> list[str] | None:
    """The Hydra job's own overrides (one job of a multirun: its values, not the sweep's), None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``results.json`` of a run in ``run_dir`` that trained, tested and kept only ``final.ckpt`` (its other
    checkpoints pruned), else None."""
    import json

    from dyntok.evaluation.results import RESULTS_FILE

    ckpts = run_dir / "checkpoints"
    if not (ckpts / "final.ckpt").is_file() or any(ckpts.glob("last*.ckpt")) or not (run_dir / RESULTS_FILE).is_file():
        return None
    try:
        rec = json.loads((run_dir / RESULTS_FILE).read_text())
    except ValueError:
        return None
    return rec if rec.get("status") == "ok" and "pruned_checkpoints" in rec else None


def _prune_checkpoints(ckpt_dir: Path) -> list[str]:
    """Delete ``best-*.ckpt`` and ``last*.ckpt`` once ``final.ckpt`` holds the tested model
    (``checkpoint.keep_all=false``); returns the names deleted."""
    if not (ckpt_dir / "final.ckpt").is_file():
        return []
    gone = sorted([*ckpt_dir.glob("best-*.ckpt"), *ckpt_dir.glob("last*.ckpt")])
    for p in gone:
        p.unlink()
    if gone:
        log.info("kept %s only (checkpoint.keep_all=true keeps %s)", ckpt_dir / "final.ckpt", ", ".join(p.name for p in gone))
    return [p.name for p in gone]


def _preset_lambda_yields_to_target(cfg: DictConfig) -> None:
    """``method.target_macs`` alone: the regularizer preset's lambda (the default group's, e.g. 2.5) yields to
    the target's multiplier (set to 0). A lambda given on the command line (``regularizer=...`` or
    ``regularizer.lambda=...``) stays, and the method refuses the pair; so does any lambda outside a Hydra
    run, where what the command line said is unknown."""
    from hydra.core.hydra_config import HydraConfig

    node = cfg.get("method") or {}
    lam = (cfg.get("regularizer") or {}).get("lambda")
    if node.get("target_macs") is None or not lam or not HydraConfig.initialized():
        return
    given = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    if given & {"regularizer", "regularizer.lambda", "method.regularizer", "method.regularizer.lambda"}:
        return
    log.info("method.target_macs=%s: the regularizer preset's lambda %s yields to the target's multiplier",
             node.target_macs, lam)
    cfg.regularizer["lambda"] = 0.0


def measure_speedup(module, datamodule, split: str, opts) -> dict[str, float]:
    """Time the tested model (:meth:`~dyntok.methods.base.TaskModule.infer`) against the same weights running
    every token, on ``opts.max_examples`` examples of ``split``, in turns (:func:`~dyntok.evaluation.timing.race_ms`).

    Returns:
        ``ms_per_example`` and ``full_ms_per_example`` (ms, the fastest of ``opts.repeats`` passes each),
        ``measured_speedup`` (their ratio, full / tested) and ``timed_examples``. ``opts``: a
        :class:`~dyntok.methods.config.SpeedupConfig`.
    """
    import torch

    from dyntok.evaluation.timing import race_ms

    was_training = module.training
    module.eval()
    batches = [{k: v.to(module.device) if torch.is_tensor(v) else v for k, v in b.items()}
               for b in datamodule.dataloader(split, max_examples=opts.max_examples)]
    try:
        ms = race_ms({"tested": module.infer, "full": module}, batches, opts.repeats, module.device)
    finally:
        module.train(was_training)
    log.info("speedup on %s: %.3f ms/example tested, %.3f full: %.2fx", split, ms["tested"], ms["full"],
             ms["full"] / ms["tested"])
    return {"ms_per_example": ms["tested"], "full_ms_per_example": ms["full"],
            "measured_speedup": ms["full"] / ms["tested"],
            "timed_examples": sum(int(b["input_ids"].size(0)) for b in batches)}


def _log_progress(progress: str) -> bool:
    """``progress``: ``bar`` (Lightning's progress bar), ``log`` (:class:`dyntok.methods.callbacks.LogProgress` lines)
    or ``auto`` (the bar in a terminal, lines otherwise).

    Raises:
        ConfigError: another value (names ``progress``).
    """
    if progress not in ("auto", "bar", "log"):
        raise ConfigError(f"progress must be 'auto', 'bar' or 'log', got {progress!r}")
    return progress == "log" or (progress == "auto" and not sys.stderr.isatty())


_SPAWN = {"ddp": "ddp_spawn", "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true"}


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` for ``L.Trainer``, made safe for DDP inside a Hydra multirun.

    Plain ``ddp`` starts ranks > 0 by re-running this command line, which in a multirun (``-m``) re-runs the
    whole sweep. There, unless SLURM started the ranks (submitit with ``tasks_per_node`` = devices), the
    strategy becomes ``ddp_spawn``. The DataModule shards its own batches: Lightning must not add a sampler.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.fabric.plugins.environments import SLURMEnvironment

    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    kw["use_distributed_sampler"] = False
    strategy, devices = kw.get("strategy", "auto"), kw.get("devices", "auto")
    several = kw.get("num_nodes", 1) > 1 or (
        len(devices) > 1 if isinstance(devices, list) else devices not in (1, "1", "auto"))
    if strategy == "auto" and several:
        strategy = "ddp"  # what Lightning picks for several devices
    if (strategy in _SPAWN and several and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
            and not SLURMEnvironment.detect()):
        log.info("multirun: trainer.strategy=%s runs as %s (plain ddp would re-run the sweep in each rank)",
                 kw.get("strategy", "auto"), _SPAWN[strategy])
        kw["strategy"] = _SPAWN[strategy]
    return kw


def _logged(trainer, prefix: str) -> dict[str, float]:
    """The metrics logged under ``prefix`` (``test/``), without it; ``examples`` as an int."""
    vals = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    if "examples" in vals:
        vals["examples"] = int(vals["examples"])
    return vals


def _best_score(ckpt_cb, best: str | None) -> float | None:
    """The monitored validation score of the best checkpoint."""
    if ckpt_cb.best_model_score is not None:
        return float(ckpt_cb.best_model_score)
    if best:  # ddp_spawn hands the main process the best path only; the checkpoint records the score
        from dyntok.methods.checkpoint import load_file

        state = load_file(best)
        score = state.get("callbacks", {}).get(ckpt_cb.state_key, {}).get("best_model_score")
        return float(score) if score is not None else None
    return None
