"""``method=full``: standard fine-tuning, every token kept (the reference)."""

from __future__ import annotations

import torch

from dyntok.methods.base import TaskModule


class FullFineTuning(TaskModule):
    """Fine-tune encoder and head on the task loss; evaluation runs the full model."""

    method_name = "full"

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        loss = self.task_loss(out.logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss
