"""``method=lengthdrop``: the Length-Adaptive Transformer (Kim & Cho 2021, arXiv 2010.07003).

Training (Sec. 3.1-3.2; the authors' ``run_squad.py``), every step: the full model on the task loss; the
smallest sub-model and ``num_sandwich`` LengthDrop sub-models on distillation towards the detached full-model
outputs (sandwich rule + in-place distillation); all losses divided by ``num_sandwich + 2``. LayerDrop skips
layers of the full model and of every sub-model, the smallest too (``method.layer_drop_smallest``); a skipped
layer keeps its input length, so the length chain advances only at layers that run.

After training, the evolutionary search (:class:`dyntok.methods.search.LengthSearch`) finds the score/MACs Pareto
frontier on a split carved from the training data, and the best configuration under ``search.budget`` is used
for the test split.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from dyntok.core.lengths import LengthConfig, ceil_share
from dyntok.methods.base import TaskModule, distillation_loss
from dyntok.methods.checkpoint import method_of
from dyntok.methods.config import LengthDropConfig, TrainingConfig
from dyntok.methods.genes import GENE_FLOOR, constant_ratio_gene
from dyntok.methods.search import LengthSearch

log = logging.getLogger("dyntok")


class LengthDropModule(TaskModule):
    """LengthDrop training with the sandwich rule, then the evolutionary search.

    Options: :class:`dyntok.methods.config.LengthDropConfig` (``length_drop_prob`` p, ``length_unit``,
    ``max_length``, ``layer_drop``, ``num_sandwich``, ``kd_direction``, ``finetune_epochs``, and ``search``:
    :class:`~dyntok.methods.config.SearchConfig`) and :class:`~dyntok.methods.config.TrainingConfig`'s; a
    ``length_config`` there tests that configuration instead of searching.

    Raises:
        ConfigError: an option out of range (names its ``method.`` key).
    """

    method_name = "lengthdrop"
    option_classes = (TrainingConfig, LengthDropConfig)

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        o: LengthDropConfig = self.options
        self.p = o.length_drop_prob
        self.length_unit = o.length_unit
        self.max_length = o.max_length
        self.layer_drop = o.layer_drop
        self.layer_drop_smallest = o.layer_drop_smallest
        self.num_sandwich = o.num_sandwich
        self.kd_direction = o.kd_direction
        self.finetune_epochs = o.finetune_epochs
        self.search_cfg = asdict(o.search)
        self.explicit_config = self.length_config is not None
        self.rng = random.Random(0)
        self.search_summary: dict[str, Any] = {}

    @property
    def baseline(self) -> nn.Module | None:
        """The standard model (``init_from``'s method=full source) of the search's constant-ratio curve."""
        return self.held("baseline")

    # ---- sampling ----------------------------------------------------------------------------------
    @property
    def floor(self) -> int:
        """Fewest tokens a sampled layer keeps (the authors' min_length 2 in token mode)."""
        return GENE_FLOOR if self.length_unit == "tokens" else 1

    def ref_length(self, real: torch.Tensor) -> int:
        """l_0 of this batch's sub-models: ``max_length`` (tokens) or the longest real input (ratio)."""
        return self.max_length if self.length_unit == "tokens" else int(real.max())

    def sample_lengths(self, ref_length: int, skip: list[bool] | None = None) -> LengthConfig:
        """A LengthDrop sub-model: l_j ~ UniformInt[ceil((1-p) l_{j-1}), l_{j-1}], l_0 = ``ref_length``,
        drawn only at the layers that run; a layer ``skip`` marks keeps its input length (the authors'
        ``sample_length_configuration`` with a layer configuration)."""
        cur, counts = ref_length, []
        for j in range(self.model.num_layers):
            if skip is None or not skip[j]:
                cur = max(self.floor, self.rng.randint(ceil_share(1 - self.p, cur), cur))
            counts.append(cur)
        return LengthConfig.from_counts(counts, ref_length, self.length_unit)

    def smallest(self, ref_length: int, skip: list[bool] | None = None) -> LengthConfig:
        """The smallest sub-model: l_j = ceil((1-p) l_{j-1}) at every layer that runs (``skip``: LayerDrop)."""
        counts = constant_ratio_gene(1 - self.p, self.model.num_layers, ref_length, self.floor, skip)
        return LengthConfig.from_counts(counts, ref_length, self.length_unit)

    def sample_skip(self) -> list[bool] | None:
        """LayerDrop: each layer skipped with probability ``layer_drop``; never all of them."""
        if self.layer_drop == 0:
            return None
        skip = [self.rng.random() < self.layer_drop for _ in range(self.model.num_layers)]
        if all(skip):
            skip[self.rng.randrange(len(skip))] = False
        return skip

    def sandwich(self, ref_length: int) -> list[tuple[LengthConfig, list[bool] | None]]:
        """The sub-models of one step with their LayerDrop (layers drawn first, then lengths along the layers
        that run): the smallest (LayerDrop too unless ``layer_drop_smallest`` is false), then ``num_sandwich``
        random ones (the authors' ``trainer.py``, ``sample_layer_configuration`` then
        ``sample_length_configuration``)."""
        skip = self.sample_skip() if self.layer_drop_smallest else None
        subs = [(self.smallest(ref_length, skip), skip)]
        for _ in range(self.num_sandwich):
            skip = self.sample_skip()
            subs.append((self.sample_lengths(ref_length, skip), skip))
        return subs

    # ---- training ----------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # Reproducible sampling that also survives a resume from a checkpoint.
        self.rng = random.Random(hash((self.global_step, self.current_epoch, 1234)) & 0xFFFFFFFF)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        bs = batch["input_ids"].size(0)
        if self.current_epoch < self.finetune_epochs:
            loss = self.task_loss(self(batch).logits, batch["labels"])
            self.log("train/loss", loss, prog_bar=True, batch_size=bs)
            return loss
        real = batch["attention_mask"].sum(1)
        full = self(batch, skip_layers=self.sample_skip())
        full_loss = self.task_loss(full.logits, batch["labels"])
        teacher = full.logits.detach()
        kd = []
        for cfg, skip in self.sandwich(self.ref_length(real)):
            out = self(batch, lengths=cfg.resolve(real), skip_layers=skip)
            kd.append(distillation_loss(out.logits, teacher, self.task.problem, self.kd_direction))
        loss = (full_loss + sum(kd)) / (len(kd) + 1)
        self.log_dict({"train/loss": loss, "train/full_loss": full_loss, "train/kd_smallest": kd[0]},
                      prog_bar=True, batch_size=bs)
        return loss

    # ---- evaluation --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lengthdrop_rng"] = self.rng.getstate()  # mid-epoch resume samples what was next

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "lengthdrop_rng" in checkpoint:
            self.rng.setstate(checkpoint["lengthdrop_rng"])
        meta = checkpoint.get("dyntok") or {}
        if self.length_config is None and meta.get("length_config"):
            self.length_config = LengthConfig.parse(meta["length_config"], self.model.num_layers)

    # ---- search ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def latency_ms(self, batches: list[dict[str, torch.Tensor]], cfg: LengthConfig | None, repeats: int = 2) -> float:
        """Milliseconds per example of ``cfg`` over ``batches`` (the best of ``repeats`` timed passes)."""
        from dyntok.evaluation.timing import best_pass_ms

        was_training = self.model.training
        self.model.eval()

        def forward(b: dict[str, torch.Tensor]) -> None:
            lengths = None if cfg is None else cfg.resolve(b["attention_mask"].sum(1))
            self.model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), lengths=lengths)

        try:
            return best_pass_ms(forward, batches, repeats, self.device)
        finally:
            self.model.train(was_training)

    def before_fit(self, datamodule) -> None:
        """Fail before training when the search could never meet its MACs budget
        (:meth:`dyntok.methods.search.LengthSearch.check_budget`)."""
        if self.length_config is None and self.search_cfg["enabled"]:
            LengthSearch(self, datamodule).check_budget()

    def after_fit(self, trainer, datamodule, run_dir) -> None:
        """Search the frontier on the search split and test the configuration chosen under the budget."""
        if self.length_config is not None or not self.search_cfg["enabled"] or not trainer.is_global_zero:
            return
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", None)
        self.length_config, self.search_summary = LengthSearch(self, datamodule, run_dir, checkpoint).run()

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["search"] = self.search_summary or None
        out["lengthdrop"] = {"length_drop_prob": self.p, "length_unit": self.length_unit, "layer_drop": self.layer_drop,
                             "layer_drop_smallest": self.layer_drop_smallest,
                             "num_sandwich": self.num_sandwich, "kd_direction": self.kd_direction}
        return out

    def on_init_from(self, meta: dict[str, Any]) -> None:
        """From a LengthDrop checkpoint, the configuration it chose is kept only when this run does not
        search (``method.search.enabled=false``): new training or a new budget needs a new search.

        Keep the standard fine-tuned model for the constant-ratio comparison curve: the ``method=full``
        model just loaded or, from a LengthDrop checkpoint, the ``method=full`` run it started from (its
        ``init_from``, followed back through further LengthDrop runs); without one the curve is left out
        (a warning says so)."""
        if not self.explicit_config and self.length_config is not None and self.search_cfg["enabled"]:
            log.info("init_from chose %s; searching again (method.search.enabled=false keeps it)",
                     self.length_config.describe())
            self.length_config = None
        if method_of(meta) == "full":
            self.hold("baseline", copy.deepcopy(self.model))
            return
        from dyntok.errors import CheckpointError
        from dyntok.methods.checkpoint import model_weights, read_checkpoint

        # Follow init_from back through LengthDrop runs (trained on in stages) to the method=full one.
        source, state, seen = (meta.get("config") or {}).get("init_from"), None, set()
        while source and str(source) not in seen and len(seen) < 16:
            seen.add(str(source))
            try:
                state = read_checkpoint(source)
            except CheckpointError as e:
                state, source = None, f"{source} ({e})"
                break
            if method_of(state["dyntok"]) == "full":
                break
            source, state = (state["dyntok"].get("config") or {}).get("init_from"), None
        if state is None:
            log.warning("init_from is a LengthDrop checkpoint whose method=full source (%s) cannot be read: "
                        "no standard-model constant-ratio curve", source)
            return
        baseline = copy.deepcopy(self.model)
        baseline.load_state_dict(model_weights(state))
        self.hold("baseline", baseline)
