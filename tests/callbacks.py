"""Callbacks the reliability tests add to real runs (``+callbacks.<name>._target_=tests.callbacks.<Class>``).

Both subclass Lightning's ``Checkpoint``, so the Trainer calls them after its checkpoint callbacks in each
hook: whatever dyntok wrote in that hook is on disk when they look.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint


class Recorder(Checkpoint):
    """Keeps the checkpoint folder as it stands each time a hook wrote to it: ``<out>/NNN-V/`` (V: validations
    run so far) holds a copy of every checkpoint file then present, and ``new.json`` the names written in
    that hook (``snapshots=False``: none). Appends each validation's step and loss to
    ``<out>/validations.jsonl``."""

    def __init__(self, out: str, checkpoints: str, snapshots: bool = True) -> None:
        self.out, self.checkpoints, self.snapshots = Path(out), Path(checkpoints), snapshots
        self.out.mkdir(parents=True, exist_ok=True)
        self.validations = 0
        self.seen: dict[str, tuple[int, int]] = {}

    def _snapshot(self) -> None:
        if not self.snapshots:
            return
        new = []
        for f in sorted(self.checkpoints.glob("*.ckpt")):
            st = f.stat()
            if self.seen.get(f.name) != (st.st_ino, st.st_mtime_ns):  # written anew (atomic rename)
                self.seen[f.name] = (st.st_ino, st.st_mtime_ns)
                new.append(f.name)
        if new:
            snap = self.out / f"{len(list(self.out.glob('[0-9]*'))):03d}-{self.validations}"
            shutil.copytree(self.checkpoints, snap)
            (snap / "new.json").write_text(json.dumps(new))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._snapshot()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        with open(self.out / "validations.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "loss": float(trainer.callback_metrics["val/loss"])})
                    + "\n")
        self._snapshot()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snapshot()


class KillAt(Checkpoint):
    """SIGKILL this process in hook ``hook`` (``train_epoch_end`` or ``train_batch_start``) once
    ``trainer.global_step == step``: right after that hook's checkpoints, or before the next step."""

    def __init__(self, step: int, hook: str) -> None:
        if hook not in ("train_epoch_end", "train_batch_start"):
            raise ValueError(f"hook must be train_epoch_end or train_batch_start, got {hook!r}")
        self.step, self.hook = step, hook

    def _maybe_kill(self, trainer: L.Trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_kill(trainer, "train_epoch_end")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._maybe_kill(trainer, "train_batch_start")
