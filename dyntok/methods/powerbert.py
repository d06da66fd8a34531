"""``method=powerbert``: PoWER-BERT's configuration search and re-training (Goyal et al., ICML 2020), the
reference both implemented papers build on, as its code (IBM/PoWER-BERT ``training.py``) runs it:

1. **Configuration search** (``trainer.max_epochs``): after each layer's attention sub-layer, the word
   vector of significance rank k is scaled by the retention value r_j[k] in [0, 1] (soft extraction;
   [CLS] ranks first), and loss = task + lambda * sum_j j * sum_k r_j[k] (unnormalised, over all N =
   ``max_length`` ranks). Retention values have their own learning rate; both warm up and decay linearly.
2. **Configuration**: l_j = int(sum_k r_j[k]) (at least 1), made non-increasing: one static configuration
   in absolute tokens at the padded length N (``LengthConfig`` of unit ``tokens``; an input of n < l_j
   tokens keeps all n).
3. **Re-training** (``method.retrain_epochs``): hard extraction at that configuration, the retention
   values frozen; the final weights are tested with it.

Its own method rather than a preset of ``method=gates``: it shares the rank gates (:class:`RankGates` holds
the retention values, clipped to [0, 1]) and the encoder's rank-indexed gating, but scales word vectors
instead of key weights, sums an unnormalised regularizer, and reads its configuration from the retention
mass instead of a threshold; as options of the gates those would have been three more branches there.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from dyntok.core.gates import RankGates
from dyntok.core.lengths import LengthConfig
from dyntok.core.model import ModelOutput
from dyntok.methods.base import TaskModule
from dyntok.methods.config import PowerBertConfig, TrainingConfig

log = logging.getLogger("dyntok")


class PowerBertModule(TaskModule):
    """Soft extraction with retention values, then re-training with hard extraction (module docstring).

    Options (:class:`dyntok.methods.config.PowerBertConfig`, with
    :class:`~dyntok.methods.config.TrainingConfig`'s): ``regularizer_lambda``, ``retention_lr``,
    ``max_length`` (N), ``retrain_epochs``. ``length_config`` (the common option) replaces the extracted
    configuration for testing and serving.

    Raises:
        ConfigError: an option out of range (names its ``method.`` key).
    """

    method_name = "powerbert"
    select_best = False
    option_classes = (TrainingConfig, PowerBertConfig)

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        o: PowerBertConfig = self.options
        self.lam, self.retention_lr, self.retrain_epochs = o.regularizer_lambda, o.retention_lr, o.retrain_epochs
        self.retention = RankGates(self.model.num_layers, o.max_length, "clip", 1.0, straight_through=False,
                                   fixed_first=self.model.keep_cls)
        self.extracted: LengthConfig | None = None  # set at the start of re-training

    def retention_configuration(self) -> LengthConfig:
        """l_j = int(sum_k r_j[k]), at least 1, non-increasing over layers, in tokens (their
        ``get_configuration``)."""
        counts: list[int] = []
        for mass in self.retention.values().detach().sum(1).tolist():
            c = max(int(mass), 1)
            counts.append(min(c, counts[-1]) if counts else c)
        return LengthConfig(tuple(float(c) for c in counts), "tokens", min_tokens=1)

    def regularizer(self) -> torch.Tensor:
        """sum_j j * sum_k r_j[k], j = 1..L (unnormalised)."""
        r = self.retention.values()
        j = torch.arange(1, r.size(0) + 1, device=r.device, dtype=r.dtype)
        return (j * r.sum(1)).sum()

    def search_epochs(self) -> int | None:
        """Epochs of the configuration search (``trainer.max_epochs`` less the re-training); None without a
        trainer."""
        if self._trainer is None or not self.trainer.max_epochs or self.trainer.max_epochs < 0:
            return None
        return self.trainer.max_epochs - self.retrain_epochs

    @torch.no_grad()
    def extract(self) -> LengthConfig:
        """End the search: fix the configuration and freeze the retention values."""
        self.extracted = self.retention_configuration()
        self.retention.theta.requires_grad_(False)
        log.info("powerbert: configuration %s (tokens at N = %d) from epoch %d", self.extracted.describe(),
                 self.retention.max_length, self.current_epoch)
        return self.extracted

    def on_train_epoch_start(self) -> None:
        epochs = self.search_epochs()
        if self.extracted is None and self.retrain_epochs and epochs is not None and self.current_epoch >= epochs:
            self.extract()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        real = batch["attention_mask"].sum(1)
        bs = real.numel()
        if self.extracted is not None:  # re-training: hard extraction
            out = self(batch, lengths=self.extracted.resolve(real))
            loss = self.task_loss(out.logits, batch["labels"])
            self.log_dict({"train/loss": loss, "train/task_loss": loss}, prog_bar=True, batch_size=bs)
            return loss
        gates = self.retention.training_gates(real, batch["input_ids"].size(1))
        out = self(batch, rank_gates=gates, soft_extract=True)
        task = self.task_loss(out.logits, batch["labels"])
        reg = self.regularizer()
        loss = task + self.lam * reg
        self.log_dict({"train/loss": loss, "train/task_loss": task, "train/retention": reg}, prog_bar=True,
                      batch_size=bs)
        return loss

    def optimizer_step(self, *args: Any, **kw: Any) -> None:
        super().optimizer_step(*args, **kw)
        self.retention.project_()  # clipped to [0, 1], as their retention weights

    def extra_parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.retention.theta], "lr": self.retention_lr, "weight_decay": 0.0,
                 "schedule": "linear"}]

    def extra_epochs(self) -> int:
        return self.retrain_epochs

    def on_train_end(self) -> None:
        if self.extracted is None:  # no re-training stage: the search's configuration is the result
            self.extract()

    def current_configuration(self) -> LengthConfig:
        """What inference runs: ``length_config`` if given, else the extracted configuration (during the
        search, the one the retention values give now)."""
        return self.length_config or self.extracted or self.retention_configuration()

    def inference_forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Hard extraction at :meth:`current_configuration`."""
        return self(batch, lengths=self.current_configuration().resolve(batch["attention_mask"].sum(1)))

    def validation_forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        return self.inference_forward(batch)

    def reported_length_config(self) -> LengthConfig:
        return self.current_configuration()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["powerbert_extracted"] = None if self.extracted is None else self.extracted.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        ext = checkpoint.get("powerbert_extracted")
        self.extracted = None if ext is None else LengthConfig.parse(ext, self.model.num_layers, "powerbert_extracted")
        if self.extracted is not None:
            self.retention.theta.requires_grad_(False)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        values = self.retention.values().detach()
        out["powerbert"] = {"lambda": self.lam, "retention_lr": self.retention_lr, "retrain_epochs": self.retrain_epochs,
                            "max_length": self.retention.max_length,
                            "retention_mass": [round(v, 3) for v in values.sum(1).tolist()],
                            "configuration": self.current_configuration().to_dict(),
                            "search_epochs": self.search_epochs()}
        return out

