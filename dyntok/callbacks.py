"""What keeps long training runs safe: exact resume, atomic checkpoints, a stop on numerical faults.

- :class:`RngState` saves the Python, NumPy and torch random states in every checkpoint, so a run resumed
  mid-epoch draws the same dropout masks, LengthDrop samples and LayerDrop choices as one that never stopped
  (the batch order is replayed by the DataModule, see :meth:`dyntok.data.DynTokDataModule.state_dict`).
- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file and renames it: a run killed while
  saving leaves the previous ``last.ckpt`` whole.
- :class:`FiniteLossGuard` stops training at the first NaN or infinite loss, before the backward pass
  touches the weights, naming the step and the last good checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from dyntok.errors import DyntokError


class NumericalError(DyntokError):
    """The training loss became NaN or infinite."""


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


class StepCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimizer steps (mid-epoch).

    The best-checkpoint callback writes the same file at validation; this one bounds what a killed run
    loses to ``every_n_train_steps`` steps.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        if every_n_train_steps < 1:
            from dyntok.errors import ConfigError

            raise ConfigError(f"checkpoint.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}")
        self.dirpath = str(dirpath)
        self.path = Path(dirpath) / "last.ckpt"
        self.every = every_n_train_steps
        self._saved_at = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step != self._saved_at and not trainer.sanity_checking:
            self._saved_at = step
            trainer.save_checkpoint(self.path, weights_only=False)
