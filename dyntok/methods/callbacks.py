"""What keeps long training runs safe: exact resume, atomic checkpoints, a stop on numerical faults.

- :class:`RngState` saves the Python, NumPy and torch random states in every checkpoint, so a run resumed
  mid-epoch draws the same dropout masks, LengthDrop samples and LayerDrop choices as one that never stopped
  (the batch order is replayed by the DataModule, see :meth:`dyntok.data.DynTokDataModule.state_dict`).
- :class:`LastCheckpoint` writes ``last.ckpt``, the resume point: every N steps inside an epoch, after every
  validation, and at every epoch's end.
- :class:`EpochEndResume` makes a checkpoint written at an epoch's end resume at the next epoch's start.
- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file and renames it: a run killed while
  saving leaves the previous ``last.ckpt`` whole.
- :class:`LogProgress` reports progress as log lines where no terminal shows a progress bar.
- :class:`FiniteLossGuard` stops training at the first NaN or infinite loss, before the backward pass
  touches the weights, naming the step and the last good checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from dyntok.errors import NumericalError

log = logging.getLogger("dyntok")


class RngState(L.Callback):
    """Checkpoints carry the random number generators' states; resuming restores them."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain lists and tuples: the checkpoint stays loadable with torch.load(weights_only=True)
        state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        random.setstate(state["python"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class EpochEndResume(L.Callback):
    """A checkpoint written at the end of an epoch resumes at the start of the next epoch.

    Lightning writes end-of-epoch checkpoints inside ``on_train_epoch_end``, after the fit loop counted the
    epoch processed but before it counted it completed. Restored as it is, iteration-based training
    (``trainer.max_steps`` set) takes the epoch for unfinished, finishes it a second time (counting it
    twice: the next epoch's batches are those of the one after, and ``max_epochs`` stops the run an epoch
    early). Here the restored fit loop counts that epoch completed, so the next one begins as in a run that
    never stopped (epoch-based training reaches the same state by itself).
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress")
        if not progress:
            return
        total = progress["total"]
        if not total["ready"] == total["started"] == total["processed"] == total["completed"] + 1:
            return
        loop = checkpoint["loops"]["fit_loop"]
        for part in ("total", "current"):
            progress[part]["completed"] = progress[part]["processed"]
        # the epoch loop as it stands before an epoch's first batch: the epoch's own counts at zero
        for key in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress"):
            if key in loop:
                loop[key]["current"] = dict.fromkeys(loop[key]["current"], 0)
        if "epoch_loop.batch_progress" in loop:
            loop["epoch_loop.batch_progress"]["is_last_batch"] = False
        for tracker in (loop.get("epoch_loop.automatic_optimization.optim_progress") or {}).get("optimizer", {}).values():
            tracker["current"] = dict.fromkeys(tracker["current"], 0)
        if "epoch_loop.val_loop.batch_progress" in loop:  # validation batches are counted per epoch
            loop["epoch_loop.val_loop.batch_progress"]["total"] = dict.fromkeys(
                loop["epoch_loop.val_loop.batch_progress"]["total"], 0)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<path>.tmp``, then an atomic rename onto ``<path>``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class FiniteLossGuard(L.Callback):
    """Raise :class:`NumericalError` when the loss about to be backpropagated is not finite.

    The weights are not updated with that loss, so every checkpoint on disk stays good. The message names
    the step, the epoch and the newest ``last.ckpt`` (the rerun resumes from it).
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        paths = [Path(cb.dirpath) / "last.ckpt" for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        last = next((str(p) for p in paths if p.exists()), "")
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
        raise NumericalError(
            f"training loss is {loss.detach().float().item()} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}); the weights were not updated; {where}. "
            "Try a lower method.lr or model.lr, or trainer.gradient_clip_val."
        )


class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt``, the checkpoint a rerun of the same command resumes from.

    It is written every ``every_n_train_steps`` optimizer steps inside an epoch (None: never), after every
    validation that runs inside an epoch, and at the end of every epoch, after the epoch's validation and
    best checkpoint. Never after a batch that a validation or the epoch's end follows: restored from there,
    Lightning takes that validation (and its best checkpoint) for done and skips it; the checkpoint written
    after the validation stands for that step instead. A killed run loses at most ``every_n_train_steps``
    steps.

    Raises:
        ConfigError: ``every_n_train_steps`` < 1 (names ``checkpoint.every_n_train_steps``).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            from dyntok.errors import ConfigError

            raise ConfigError(f"checkpoint.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        self.dirpath = str(dirpath)
        self.path = Path(dirpath) / "last.ckpt"
        self.every = every_n_train_steps

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    @staticmethod
    def _at_epoch_end(trainer: L.Trainer) -> bool:
        return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    @staticmethod
    def _validation_follows(trainer: L.Trainer) -> bool:
        # Lightning's own rule (private API): restored from a checkpoint written at this point, it would
        # count the validation due after this batch as done and skip it
        loop = trainer.fit_loop
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # where a validation or the epoch's end follows, the checkpoint written there stands for this step
        if (self.every and trainer.global_step % self.every == 0 and not self._at_epoch_end(trainer)
                and not self._validation_follows(trainer)):
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not self._at_epoch_end(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


class LogProgress(L.Callback):
    """Progress as log lines, for output that is not a terminal (SLURM, nohup), where a progress bar prints
    nothing until it ends: a line when training starts, then every ``every_s`` seconds (and at each epoch's
    end) with the step, the share done, the speed, the time left and the last training loss; a line per
    validation and test.
    """

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._start = self._last = 0.0
        self._start_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._start = self._last = time.time()
        self._start_step = trainer.global_step
        total = trainer.estimated_stepping_batches
        log.info("training: %s steps (%s epochs), from step %d", total, trainer.max_epochs, trainer.global_step)

    def _line(self, trainer: L.Trainer) -> str:
        import math
        import time

        now = time.time()
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        rate = (step - self._start_step) / max(now - self._start, 1e-9)
        left = (total - step) / rate if rate > 0 and math.isfinite(total) else float("nan")
        loss = trainer.callback_metrics.get("train/loss")
        share = f" ({100 * step / total:.0f}%)" if math.isfinite(total) and total > 0 else ""
        eta = f", {left / 60:.1f} min left" if math.isfinite(left) else ""
        return (f"epoch {trainer.current_epoch + 1} step {step}/{total}{share}, {rate:.2f} steps/s{eta}"
                + (f", loss {float(loss):.4f}" if loss is not None else ""))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        import time

        if time.time() - self._last >= self.every_s:
            self._last = time.time()
            log.info("%s", self._line(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log.info("end of epoch: %s", self._line(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        keys = [*(f"val/{m}" for m in pl_module.task.metric_names), "val/loss", "val/macs_ratio"]
        got = trainer.callback_metrics
        log.info("validation at step %d: %s", trainer.global_step,
                 ", ".join(f"{k[4:]} {float(got[k]):.4f}" for k in keys if k in got))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log.info("testing on %s", ", ".join(pl_module.task.test_splits))
