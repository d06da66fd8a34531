"""``method=gates``: trainable rank gates with a bi-modal regularizer (Jeong & Kwak 2021).

loss = task_loss + lambda * R_sparse + mu * R_bimodal (see :mod:`dyntok.core.gates`); gates have their own
learning rate. Validation and test run the hard gates with physical token removal, so the checkpoint's
reported accuracy and MACs are what inference costs: a layer keeps exactly the tokens of the ranks whose
gate is open, the tokens the straight-through training forward keeps.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from dyntok.core.gates import RankGates
from dyntok.core.lengths import LengthConfig
from dyntok.core.model import ModelOutput
from dyntok.errors import ConfigError
from dyntok.methods.base import TaskModule, distillation_loss, ranking_distillation_loss
from dyntok.methods.config import GatesConfig, TrainingConfig
from dyntok.methods.target import MacsTarget

log = logging.getLogger("dyntok")


class GatesModule(TaskModule):
    """Fine-tune encoder, head and rank gates jointly (one stage).

    The final weights are tested, not the best-by-accuracy checkpoint: lambda sets the trade-off, and an
    earlier checkpoint with more gates open would undo it.

    Options (:class:`dyntok.methods.config.GatesConfig`, their units and defaults; with
    :class:`~dyntok.methods.config.TrainingConfig`'s): ``regularizer`` ``{lambda, mu}`` from the regularizer
    group; ``gate_lr`` and ``gate_lr_schedule`` (the gates' own learning rate); ``max_length`` (T_max, ranks
    gated); ``rank_scale``, ``rank_bins``, ``parametrization``, ``gate_init``, ``straight_through``,
    ``threshold``, ``skip_first``, ``min_keep`` (:class:`~dyntok.core.gates.RankGates`);
    ``layer_weighting`` (w_j of R_sparse: :meth:`RankGates.layer_weights`); ``freeze_gates_steps``;
    ``target_macs``, ``target_baseline``, ``target_warmup``, ``multiplier_lr`` (a compute target in place of
    lambda: :class:`~dyntok.methods.target.MacsTarget`); ``retrain_epochs`` (a second stage with
    the gates frozen: :meth:`freeze_gates`);
    ``mu_ramp`` ([start, end] shares of the training steps: mu is 0 until start, grows linearly to its value at
    end and stays: the gates first find what to keep under lambda alone, then the growing bi-modal pull settles
    every gate at 0 or 1 while the encoder still trains); ``sparsity`` (``gates``: R_sparse on the gate vectors,
    :meth:`RankGates.regularizers`; ``tokens``: the same L1 on the masks the tokens see,
    :meth:`RankGates.token_sparsity`); ``distill`` (alpha: task term = (1 - alpha) task_loss + alpha
    KL(teacher || student) from the frozen ``init_from`` model at full length; not in the paper);
    ``rank_distill`` (ranking distillation of the significance order from the same teacher, ToP).

    Raises:
        ConfigError: an option out of range (names the config key); ``distill`` or ``rank_distill`` > 0
            without ``init_from`` (raised before training).
    """

    method_name = "gates"
    select_best = False
    option_classes = (TrainingConfig, GatesConfig)

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        o: GatesConfig = self.options
        self.lam, self.mu = float(o.regularizer.get("lambda", 0.0)), float(o.regularizer.get("mu", 0.0))
        self.distill, self.rank_distill = float(o.distill), float(o.rank_distill)
        self.sparsity = o.sparsity
        self.gate_lr = o.gate_lr
        self.layer_weighting = o.layer_weighting
        self.freeze_gates_steps = o.freeze_gates_steps
        self.mu_ramp = (float(o.mu_ramp[0]), float(o.mu_ramp[1]))
        self.target_baseline, self.target_freeze, self.retrain_epochs = o.target_baseline, o.target_freeze, o.retrain_epochs
        # the compute target's multiplier, lengths seen and cut (None: lambda is fixed); saved in checkpoints
        self.target = None if o.target_macs is None else MacsTarget(
            o.target_macs, o.multiplier_lr, o.target_warmup, o.target_min_length, o.max_length)
        self.gates_frozen = False  # set 0/1 and frozen at target_freeze (a target) or in the second stage
        self.gates = RankGates(self.model.num_layers, o.max_length, o.parametrization, o.gate_init,
                               o.straight_through, o.threshold, o.skip_first, fixed_first=self.model.keep_cls,
                               rank_scale=o.rank_scale, bins=o.rank_bins, min_keep=o.min_keep)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        real = batch["attention_mask"].sum(1)
        if self.gates.rank_scale == "absolute" and real.max() > self.gates.max_length:
            raise ConfigError(f"inputs of {int(real.max())} tokens exceed method.max_length={self.gates.max_length}")
        if not self.gates_frozen and (self.stage_progress() or 0.0) >= self.freeze_point():
            self.freeze_gates()
        self.gates.theta.requires_grad_(not self.gates_frozen and self.global_step >= self.freeze_gates_steps)
        if self.target is not None and not self.gates_frozen:
            self.target.count(real)
        ranks = self.rank_distill > 0 and not self.gates_frozen
        out = self(batch, rank_gates=self.gates.training_gates(real, batch["input_ids"].size(1)), return_scores=ranks)
        task = self.task_loss(out.logits, batch["labels"])
        if self.distill > 0 or ranks:
            with torch.no_grad():
                teacher = self.teacher.to(self.device)(batch["input_ids"], batch["attention_mask"],
                                                       batch.get("token_type_ids"), return_scores=ranks)
        if self.distill > 0:
            kd = distillation_loss(out.logits, teacher.logits, self.task.problem)
            self.log("train/kd_loss", kd, batch_size=batch["input_ids"].size(0))
            task = (1 - self.distill) * task + self.distill * kd
        if ranks:  # the teacher's last-layer order, taught to every gated layer (ToP)
            gated = out.encoder.scores[self.gates.skip_first:]
            rank = torch.stack([ranking_distillation_loss(s, teacher.encoder.scores[-1]) for s in gated]).mean()
            self.log("train/rank_distill_loss", rank, batch_size=batch["input_ids"].size(0))
            task = task + self.rank_distill * rank
        sparse, bimodal = self.gates.regularizers(real, self.layer_weighting)
        if self.sparsity == "tokens":
            sparse = self.gates.token_sparsity(out.encoder.alive, batch["attention_mask"], self.layer_weighting)
        mu = self.current_mu()
        bs = batch["input_ids"].size(0)
        if self.target is not None:  # logged in the frozen phase too: the trace shows what the cut costs
            with torch.no_grad():
                expected = self.expected_macs_ratio(out.encoder.alive, batch["attention_mask"])
                hard, base = self.hard_macs(real)
            target = self.target.current(self.stage_progress())
            self.log_dict({"train/multiplier": self.target.multiplier, "train/expected_macs_ratio": expected,
                           "train/hard_macs_ratio": hard / base, "train/target_macs": target}, batch_size=bs)
        if self.gates_frozen:
            loss = task
        elif self.target is not None:  # the multiplier is lambda, steered by the MACs the batch costs
            loss = task + self.target.multiplier * sparse + mu * bimodal
            self.target.step(float(hard - target * base), float(base))
        else:
            loss = task + self.lam * sparse + mu * bimodal
        self.log_dict({"train/loss": loss, "train/task_loss": task, "train/r_sparse": sparse,
                       "train/r_bimodal": bimodal}, prog_bar=True, batch_size=bs)
        self.log("train/mu", mu, batch_size=bs)
        return loss

    def _batch_macs(self, real: torch.Tensor, kept: torch.Tensor, weights: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(MACs, baseline MACs), two scalars: the encoder MACs of ``kept`` (B, L) tokens per layer, and the full
        model's on ``target_baseline``; ``weights`` (B,): how many inputs each row stands for (default 1)."""
        from dyntok.core.macs import encoder_macs, full_macs, padded_macs

        n = real.to(torch.float64)
        base = full_macs(self.dims, n) if self.target_baseline == "real" else \
            padded_macs(self.dims, self.gates.max_length, n.numel())
        w = torch.ones_like(n) if weights is None else weights.to(torch.float64).cpu()
        return (encoder_macs(self.dims, n, kept) * w).sum(), (base * w).sum()

    def _macs_ratio(self, real: torch.Tensor, kept: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """MACs over baseline MACs of :meth:`_batch_macs`."""
        macs, base = self._batch_macs(real, kept, weights)
        return macs / base

    def expected_macs_ratio(self, alive: list[torch.Tensor | None], attention_mask: torch.Tensor) -> torch.Tensor:
        """The batch's MACs ratio (scalar, differentiable in the gates) with layer j keeping sum_t a_j(t)
        tokens, a_j the product of the gates token t met up to layer j (:attr:`EncoderOutput.alive`, (B, T)).
        Under straight-through gates its value is the hard ratio of inference; its gradient the soft one."""
        mask = attention_mask.to(torch.float64)
        real = mask.sum(1)
        kept, prev = [], real
        for a in alive:  # a layer without gates keeps what the one before it kept
            prev = prev if a is None else (a.to(torch.float64) * mask).sum(1)
            kept.append(prev)
        return self._macs_ratio(real, torch.stack(kept, 1))

    @torch.no_grad()
    def hard_macs(self, real: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_batch_macs` of inputs of these (B,) real lengths under the hard inference rule
        (:meth:`RankGates.hard_lengths`); ``weights`` (B,): how many inputs each length stands for."""
        return self._batch_macs(real, self.gates.hard_lengths(real).to(torch.float64), weights)

    def hard_macs_ratio(self, real: torch.Tensor, weights: torch.Tensor | None = None) -> float:
        """MACs over baseline MACs of :meth:`hard_macs`."""
        macs, base = self.hard_macs(real, weights)
        return float(macs / base)

    def stage_progress(self) -> float | None:
        """Share of the first stage done: training steps so far over the steps of its epochs (the configured
        ``trainer.max_epochs``; > 1 in the ``retrain_epochs`` stage); None when the trainer cannot say (none
        attached, or no finite length)."""
        if self._trainer is None:
            return None
        total, epochs = self.trainer.estimated_stepping_batches, self.trainer.max_epochs
        if not math.isfinite(total) or total <= 0 or not epochs or epochs <= 0:
            return None
        return self.global_step / (total * (epochs - self.retrain_epochs) / epochs)

    def freeze_point(self) -> float:
        """The share of the first stage at which the gates freeze: ``target_freeze`` with a target, its end
        with ``retrain_epochs``, never otherwise (inf)."""
        if self.target is not None:
            return self.target_freeze
        return 1.0 if self.retrain_epochs else math.inf

    @torch.no_grad()
    def freeze_gates(self) -> None:
        """End the gates' training: with a target, cut them to it (:meth:`MacsTarget.calibrate`, on the
        training lengths counted by every DDP rank); else set them to their hard values (no decision changes).
        Either way they are frozen from here on."""
        if self.target is not None:
            counts = self.target.length_counts
            if self._trainer is not None and self.trainer.world_size > 1:
                counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum").cpu()
            cal = self.target.calibrate(self.gates, self.hard_macs_ratio, counts)
            log.info("gates: cut to %d open gates: hard MACs ratio %.3f -> %.3f on the training lengths (target %g)",
                     cal["open_gates"], cal["ratio_before"], cal["ratio_after"], self.target.target)
        else:
            self.gates.snap_(self.gates.values() > self.gates.threshold)
        self.gates_frozen = True
        self.gates.theta.requires_grad_(False)
        log.info("gates: set to 0/1 and frozen at step %d", self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["gates_frozen"] = self.gates_frozen
        if self.target is not None:  # a resumed run continues the same dual ascent
            checkpoint["gates_target"] = self.target.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.gates_frozen = bool(checkpoint.get("gates_frozen", False))
        if self.target is not None and "gates_target" in checkpoint:
            self.target.load_state_dict(checkpoint["gates_target"])

    def current_mu(self) -> float:
        """mu at this step: 0 before ``mu_ramp[0]`` of the first stage, linear up to ``mu_ramp[1]``, then constant."""
        start, end = self.mu_ramp
        t = self.stage_progress()
        if end == 0 or t is None:
            return self.mu
        return self.mu * min(1.0, max(0.0, (t - start) / max(end - start, 1e-9)))

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen fine-tuned model (``init_from``) that distillation reads, None without distillation."""
        return self.held("teacher")

    def on_init_from(self, meta: dict[str, Any]) -> None:
        if self.distill > 0 or self.rank_distill > 0:
            self.hold("teacher", copy.deepcopy(self.model))

    def before_fit(self, datamodule) -> None:
        for key, weight in (("distill", self.distill), ("rank_distill", self.rank_distill)):
            if weight > 0 and self.teacher is None:
                raise ConfigError(f"method.{key}={weight} needs a fine-tuned teacher: set init_from=<a "
                                  f"method=full run or checkpoint>, or method.{key}=0")

    def extra_epochs(self) -> int:
        return self.retrain_epochs

    def on_train_end(self) -> None:
        if self.target is not None and not self.gates_frozen:
            self.freeze_gates()  # one stage: the cut meeting the target is the last step
        self.warn_if_no_gate_closed()

    def warn_if_no_gate_closed(self) -> bool:
        """Log a warning (and return True) when lambda > 0 but every gate reached in training is still open.

        Adam normalises the gates' gradients, so lambda decides which way a gate moves, and ``gate_lr``
        times the steps before ``mu_ramp`` locks the gates decides how far: too small a product leaves every
        gate above the threshold whatever lambda is (SST-2: ``gate_lr=1e-3`` with ``mu_ramp=[0.3, 0.6]``).
        """
        if self.lam <= 0 or self.gates.stats()["gate_open_share"] < 1.0:
            return False
        log.warning("gates: no gate closed in training (regularizer.lambda=%g, method.gate_lr=%g, method.mu_ramp=%s):"
                    " every token is kept. Adam moves each gate by about gate_lr a step whatever lambda is, so raise"
                    " method.gate_lr or start method.mu_ramp later", self.lam, self.gate_lr, list(self.mu_ramp))
        return True

    def optimizer_step(self, *args: Any, **kw: Any) -> None:
        super().optimizer_step(*args, **kw)
        # Clip right after the step, before any checkpoint is written: a resumed run continues identically.
        self.gates.project_()

    def inference_forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Hard gates, physically: layer j keeps exactly the tokens whose rank has an open gate."""
        return self(batch, keep_by_rank=self.gates.batch_open_table(batch))

    def validation_forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        return self.inference_forward(batch)

    def reported_length_config(self) -> LengthConfig:
        """:attr:`length_config`, else the learned configuration at ``max_length`` tokens (hard gates)."""
        return self.length_config or self.gates.length_config(self.gates.max_length)

    def extra_parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.gates.theta], "lr": self.gate_lr, "weight_decay": 0.0,
                 "schedule": self.options.gate_lr_schedule}]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log_dict({f"val/{k}": v for k, v in self.gates.stats().items()})
        logger = self.logger
        if isinstance(logger, WandbLogger):
            import wandb

            g = self.gates.values().detach().cpu()
            logger.experiment.log({f"gates/layer_{j + 1 + self.gates.skip_first}": wandb.Histogram(g[j].numpy())
                                   for j in range(g.size(0))} | {"trainer/global_step": self.global_step})

    # a tested MACs ratio this far from method.target_macs is reported
    TARGET_TOLERANCE = 0.05

    def result_warnings(self, splits: dict[str, dict[str, float]]) -> list[str]:
        """With a compute target: each report split whose MACs ratio (on ``target_baseline``) misses
        ``method.target_macs`` by more than :attr:`TARGET_TOLERANCE` (the cut meets it on the training inputs'
        lengths, not on longer or shorter test inputs)."""
        if self.target is None:
            return []
        key = "macs_ratio" if self.target_baseline == "real" else "padded_macs_ratio"
        out = []
        for split, vals in splits.items():
            ratio = vals.get(key)
            if ratio is not None and abs(ratio - self.target.target) > self.TARGET_TOLERANCE:
                out.append(f"{split}: MACs ratio {ratio:.3f} ({key}) misses method.target_macs={self.target.target:g} "
                           f"by more than {self.TARGET_TOLERANCE}: the gates were cut to the target on the training "
                           "inputs' lengths; method.target_min_length (tokens) makes the cut count only inputs as "
                           "long as the tested ones (SST-2: 15)")
        return out

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["gates"] = {
            "lambda": self.lam, "mu": self.mu, "distill": self.distill, **self.gates.stats(),
            "target_macs": None if self.target is None else self.target.target, "target_baseline": self.target_baseline,
            "multiplier": None if self.target is None else self.target.multiplier,
            "calibration": None if self.target is None else self.target.calibration,
            "retrain_epochs": self.retrain_epochs,
            "values": self.gates.values().detach().cpu().tolist(),
            "rank_scale": self.gates.rank_scale,
            # per gated layer, the gates above the threshold (ranks, or share bins with rank_scale=relative)
            "open_gates": [(row > self.gates.threshold).nonzero().squeeze(1).tolist() for row in self.gates.values()],
            "usage": self.gates.usage.cpu().tolist(),
        }
        return out
