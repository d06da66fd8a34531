"""What every method's LightningModule shares: the task model, metrics, MACs accounting, optimizer.

A method subclasses :class:`TaskModule` and implements ``training_step``; it may override
``inference_forward`` and ``reported_length_config`` (how the trained model infers), ``validation_forward``,
``extra_parameter_groups`` (e.g. gates with their own learning rate) and ``summary`` (method-specific
fields of ``results.json``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import MacsReport, ModelDims
from dyntok.core.model import DynTokModel, ModelOutput
from dyntok.core.problems import Problem, problem_of
from dyntok.data.config import DataConfig
from dyntok.data.tasks import TaskSpec
from dyntok.evaluation.evaluate import update_metrics
from dyntok.evaluation.metrics import task_metrics
from dyntok.methods.config import TrainingConfig
from dyntok.options import split_options

KdDirection = Literal["forward", "reverse"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, problem: Problem | str,
                      direction: KdDirection = "forward") -> torch.Tensor:
    """Distillation loss of student logits towards detached teacher logits: LAT's in-place distillation of
    a sub-model towards the full model, and the gates' optional distillation from the fine-tuned model
    (:meth:`~dyntok.core.problems.Problem.distillation_loss`: KL over classes or over positions, or MSE for
    regression).

    Args:
        student, teacher: logits, (B, C) classification, (B,) regression or (B, T, 2) span start/end.
        direction: ``forward`` = KL(teacher || student), conventional in-place distillation (Yu & Huang
            2019): the student covers the teacher's distribution. ``reverse`` = KL(student || teacher), what
            the original LAT code computes (its ``kl_div`` arguments are swapped).

    Returns:
        scalar, mean over examples (and over start/end for span).

    Raises:
        ConfigError: an unknown ``direction``.
    """
    return problem_of(problem).distillation_loss(student, teacher, direction)


def ranking_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, exclude_first: bool = True
                              ) -> torch.Tensor:
    """Pairwise ranking distillation of significance scores (ToP, Li et al. 2023, Sec. 4.2, distils the
    teacher's last-layer token ranking into every pruning layer with LambdaLoss; this is its plain pairwise
    form, RankNet): for each pair of real tokens (p, q) the teacher ranks p above q,
    log(1 + exp(-(s_p - s_q))), averaged over those pairs.

    Args:
        student: (B, T) significance scores, -inf where no real token is (:attr:`EncoderOutput.scores`).
        teacher: (B, T) the teacher's, same layout; detached here.
        exclude_first: leave position 0 ([CLS], always kept) out of the pairs.

    Returns:
        scalar (0 when no pair exists).
    """
    t = teacher.detach().float()
    real = torch.isfinite(t) & torch.isfinite(student)
    if exclude_first:
        real[:, 0] = False
    above = (t[:, :, None] > t[:, None, :]) & real[:, :, None] & real[:, None, :]  # (B, T, T): p above q
    s = student.float().masked_fill(~real, 0.0)  # no -inf in the differences: their gradients would be NaN
    diff = s[:, :, None] - s[:, None, :]
    return (F.softplus(-diff) * above).sum() / above.sum().clamp(min=1)


class TaskModule(L.LightningModule):
    """Shared Lightning plumbing for a :class:`DynTokModel` on one task.

    ``method_name``: the ``method=`` name (stored in checkpoints; what ``init_from`` and resuming check).
    ``select_best``: test the checkpoint with the best validation metric (True) or the final weights.

    Args:
        model: the task model (encoder + head).
        task: the task's :class:`TaskSpec` (metrics, problem type).
        run_config: the run's resolved config, stored in checkpoints and ``results.json`` (what
            ``dyntok.load`` rebuilds the run from); None outside a run.
        **options: the fields of :attr:`option_classes`: :class:`dyntok.methods.config.TrainingConfig`
            (``lr``, ``weight_decay``, ``warmup_ratio``, ``length_config``: the configuration the trained model
            is tested and served with, or None for the method's own rule) and the method's own (kept as
            :attr:`options`).

    Raises:
        ConfigError: an unknown option, or one out of range (naming its ``method.`` key).
    """

    method_name: str
    select_best = True
    option_classes: tuple[type, ...] = (TrainingConfig,)

    def __init__(self, model: DynTokModel, task: TaskSpec, run_config: dict[str, Any] | None = None,
                 **options: Any) -> None:
        super().__init__()
        self.run_config = run_config
        # frozen models the method reads (a distillation teacher, the search's standard model): a plain dict, so
        # they stay out of the state dict, the optimizer and Lightning's device moves (:meth:`hold`)
        self._held: dict[str, nn.Module] = {}
        self._tok_files: dict[str, bytes] | None = None
        training, *own = split_options(options, self.option_classes, "method")
        self.options = own[0] if own else None
        self.model = model
        self.task = task
        self.lr, self.weight_decay, self.warmup_ratio = training.lr, training.weight_decay, training.warmup_ratio
        self.length_config: LengthConfig | None = (
            LengthConfig.parse(training.length_config, model.num_layers, "length_config")
            if training.length_config is not None else None)
        self.dims = ModelDims.from_encoder(model.encoder, num_labels=model.num_labels)
        self.val_metrics = task_metrics(task, prefix="val/")
        self.test_metrics = nn.ModuleList([task_metrics(task, prefix=f"{s}/") for s in task.test_splits])
        # MACs of the validation and report splits, summed over DDP processes by torchmetrics
        self.val_macs = MacsReport(self.dims, problem=task.problem)
        self.test_macs = nn.ModuleList([MacsReport(self.dims, problem=task.problem) for _ in task.test_splits])
        self.test_results: dict[str, dict[str, float]] = {}

    # ---- forward and loss -------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], lengths: torch.Tensor | None = None, **kw: Any) -> ModelOutput:
        return self.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                          lengths=lengths, **kw)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The problem's loss (:meth:`~dyntok.core.problems.Problem.task_loss`): cross-entropy for
        classification, MSE for regression; span: the mean of the start and end cross-entropies over
        positions (logits (B, T, 2), labels (B, 2))."""
        return self.task.problem.task_loss(logits, labels)

    def split_metrics(self, split: str, datamodule=None, prefix: str = "", sync_on_compute: bool = True):
        """A fresh metric collection for ``split``; span metrics come bound to that split's windows and
        questions from ``datamodule`` (default: the Trainer's). ``sync_on_compute=False``: computed by one
        process alone (no DDP sync, which would wait for the others)."""
        metrics = task_metrics(self.task, prefix, sync_on_compute=sync_on_compute).to(self.device)
        self._bind_span(metrics, split, datamodule)
        return metrics

    def _bind_span(self, metrics, split: str, datamodule=None) -> None:
        if self.task.problem.windowed:
            from dyntok.evaluation.squad import bind_span_metrics

            dm = datamodule if datamodule is not None else self.trainer.datamodule
            bind_span_metrics(metrics, dm.span_features(split))

    def setup(self, stage: str) -> None:
        for rep in (self.val_macs, *self.test_macs):  # the padded baseline's length: the DataModule's
            rep.max_length = self._max_length()
        # Span metrics post-process per question: they need the split's windows and questions.
        if self.task.problem.windowed:
            self._bind_span(self.val_metrics, "validation")
            for split, metrics in zip(self.task.test_splits, self.test_metrics, strict=True):
                self._bind_span(metrics, split)

    def reported_length_config(self) -> LengthConfig | None:
        """The configuration results report: :attr:`length_config`, or what the method's own rule amounts to
        (gates: the learned one at ``max_length``); None for the full model."""
        return self.length_config

    def inference_forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """The forward of this method's own inference rule when no :attr:`length_config` is set: every token;
        methods with a per-example rule (hard gates) override it."""
        return self(batch)

    def infer(self, batch: dict[str, torch.Tensor], length_config: LengthConfig | None = None) -> ModelOutput:
        """The forward this trained model serves with (test split, ``dyntok.load``, the benchmark):
        ``length_config`` when given, else :attr:`length_config`, else :meth:`inference_forward`."""
        cfg = length_config if length_config is not None else self.length_config
        if cfg is not None:
            return self(batch, lengths=cfg.resolve(batch["attention_mask"].sum(1)))
        return self.inference_forward(batch)

    def validation_forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """The forward of validation (checkpoint selection): the full model; methods override."""
        return self(batch)

    # ---- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, torch.Tensor], metrics, macs: MacsReport) -> torch.Tensor:
        out = self.infer(batch) if self.trainer.testing else self.validation_forward(batch)
        loss = self.task_loss(out.logits, batch["labels"])
        update_metrics(metrics, out.logits, batch, self.task.problem)
        macs.update_from(out.encoder)
        return loss

    def _max_length(self) -> int:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        hp = getattr(dm, "hparams", {})
        return int(hp.get("max_length", 0) or DataConfig.max_length)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._eval_step(batch, self.val_metrics, self.val_macs)
        self.log("val/loss", loss, batch_size=batch["input_ids"].size(0), sync_dist=True)

    def _fresh_eval_states(self, *metrics) -> None:
        # reset() gives each metric new state tensors: under ddp_spawn the module's tensors arrive in shared
        # memory, and in-place updates of shared states would add every process's batches into one tensor
        for m in metrics:
            m.reset()

    def on_validation_epoch_start(self) -> None:
        self._fresh_eval_states(self.val_metrics, self.val_macs)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_metrics.reset()
        macs = self.val_macs.compute()  # every process joins the sync, with or without batches of its own
        if macs["examples"]:
            self.log_dict({f"val/{k}": float(v) for k, v in macs.items() if k != "examples"})
        self.val_macs.reset()

    def hold(self, name: str, model: nn.Module) -> nn.Module:
        """Keep ``model``, frozen and in eval mode, as the reference ``name``; returns it. Not trained, not saved,
        not moved by Lightning (move it where it is used)."""
        self._held[name] = model.eval().requires_grad_(False)
        return self._held[name]

    def held(self, name: str) -> nn.Module | None:
        """The reference model :meth:`hold` keeps as ``name``, None when there is none."""
        return self._held.get(name)

    def on_test_start(self) -> None:
        self._fresh_eval_states(*self.test_metrics, *self.test_macs)
        # Under DDP ``after_fit`` may have run on rank zero alone (the LengthDrop search): give every process
        # what rank zero chose (what a checkpoint records, e.g. the length configuration) before testing.
        if self.trainer.world_size > 1:
            state: dict[str, Any] = {}
            if self.trainer.is_global_zero:
                self.on_save_checkpoint(state)
            state = self.trainer.strategy.broadcast(state)
            if not self.trainer.is_global_zero:
                self.on_load_checkpoint(state)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.test_metrics[dataloader_idx], self.test_macs[dataloader_idx])

    def on_test_epoch_end(self) -> None:
        self.test_results = {}
        for i, split in enumerate(self.task.test_splits):
            vals = {k.split("/", 1)[1]: float(v) for k, v in self.test_metrics[i].compute().items()}
            self.test_metrics[i].reset()
            rep = self.test_macs[i]
            macs = rep.compute()
            if macs["examples"]:  # the count over every process (rep.examples is this one's after compute)
                examples = macs.pop("examples")
                vals.update(macs)
                vals["paper_macs_ratio"] = self.paper_macs_ratio()
                vals["examples"] = examples
            rep.reset()
            self.test_results[split] = vals
            # float64: under ddp_spawn these logged values are how the results reach the main process; not
            # synced again (the metrics and MACs above already cover every process)
            self.log_dict({f"{split}/{k}": torch.tensor(v, dtype=torch.float64, device=self.device)
                           for k, v in vals.items()}, add_dataloader_idx=False, rank_zero_only=True)

    def paper_macs_ratio(self, cfg: LengthConfig | None = None, max_length: int | None = None) -> float:
        """The tested configuration's encoder MACs on one input padded to ``max_length`` over the full model's
        there: the papers' count (the LAT code's torchprofile on an all-ones input; PoWER-BERT). It counts
        padding that dyntok never runs; ``padded_macs_ratio`` is what dyntok executes against that baseline.
        ``cfg`` / ``max_length``: another configuration / length (tokens) than the run's."""
        from dyntok.core.macs import length_config_macs

        L = self.model.num_layers
        cfg = cfg or self.reported_length_config() or LengthConfig.full(L)
        n, restore = torch.tensor([max_length or self._max_length()]), self.model.restore_mode
        return float(length_config_macs(self.dims, cfg, n, restore=restore)
                     / length_config_macs(self.dims, LengthConfig.full(L), n, restore=restore))

    def on_train_epoch_end(self) -> None:
        # A logged value is what ddp_spawn hands back to the main process: the step count travels as one.
        self.log("train/steps", float(self.global_step), sync_dist=True)

    # ---- optimisation ----------------------------------------------------------------------------
    def extra_parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups beyond the encoder and head (e.g. gates with their own learning rate); a group's
        ``schedule`` is ``linear`` (warm-up then linear decay, the default) or ``constant``."""
        return []

    def configure_optimizers(self):
        """AdamW over the encoder and head (weight decay except on biases and LayerNorm weights) and the
        method's own groups, each on its ``schedule`` (one ``LambdaLR``)."""
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:  # biases and LayerNorm weights are the 1-D tensors
                (no_decay if p.ndim < 2 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            *self.extra_parameter_groups(),
        ]
        opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "schedule"} for g in groups], lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            total = 1
        warmup = int(self.warmup_ratio * total)

        def linear(step: int) -> float:  # transformers' get_linear_schedule_with_warmup
            if step < warmup:
                return step / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))

        schedules = {"linear": linear, "constant": lambda _step: 1.0}
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [schedules[g.get("schedule", "linear")] for g in groups])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- lifecycle hooks --------------------------------------------------------------------------
    def extra_epochs(self) -> int:
        """Epochs the method trains after ``trainer.max_epochs`` (a second stage); default 0."""
        return 0

    def extra_callbacks(self) -> list[L.Callback]:
        """Callbacks the method needs on the Trainer."""
        return []

    def load_best(self, path: str) -> None:
        """Load the weights of the best checkpoint (by the task's validation metric) before testing."""
        from dyntok.methods.checkpoint import load_file, restore

        restore(self, load_file(path), str(path))

    def on_init_from(self, meta: dict[str, Any]) -> None:
        """Called after ``init_from=`` weights were loaded; ``meta``: the source checkpoint's ``dyntok``
        metadata (its ``method`` name and run config). Default: nothing."""

    def before_fit(self, datamodule: L.LightningDataModule) -> None:
        """Checks that need the data, run before training so a doomed run fails early. Default: nothing."""

    def after_fit(self, trainer: L.Trainer, datamodule: L.LightningDataModule, run_dir) -> None:
        """Work between training and testing (e.g. the LengthDrop search). Default: nothing."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What is needed to use the checkpoint later without the Hydra run around it.
        checkpoint["dyntok"] = {
            "config": self.run_config,
            "method": self.method_name,
            "task": self.task.name,
            "problem": self.task.problem.name,
            "num_labels": self.model.num_labels,
            "num_layers": self.model.num_layers,
            "hidden_size": self.model.encoder.hidden_size,
            # to rebuild the model without its pretrained source (dyntok.load)
            "backbone_config": self.model.encoder.backbone.config.to_dict(),
            "tokenizer_files": self._tokenizer_files(),
            **self.summary(),
        }

    def _tokenizer_files(self) -> dict[str, bytes] | None:
        """The DataModule tokenizer's files (name -> bytes), read once; None without a DataModule."""
        if self._tok_files is None:
            dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            tok = getattr(dm, "tokenizer", None)
            if tok is None:
                return None
            import tempfile
            from pathlib import Path

            with tempfile.TemporaryDirectory() as tmp:
                tok.save_pretrained(tmp)
                self._tok_files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        return self._tok_files

    # ---- reporting -------------------------------------------------------------------------------
    def result_warnings(self, splits: dict[str, dict[str, float]]) -> list[str]:
        """What a reader of the test results must know (logged, and ``warnings`` in ``results.json``), from
        ``splits`` (split -> metrics and MACs ratios). Default: nothing."""
        return []

    def summary(self) -> dict[str, Any]:
        """Method-specific fields for ``results.json`` (learned length configuration, gate statistics)."""
        cfg = self.reported_length_config()
        return {"length_config": cfg.to_dict() if cfg is not None else None}
