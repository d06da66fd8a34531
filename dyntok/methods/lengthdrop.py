"""``method=lengthdrop``: the Length-Adaptive Transformer (Kim & Cho 2021, arXiv 2010.07003).

Training (Sec. 3.1-3.2; the authors' ``run_squad.py``), every step: the full model on the task loss; the
smallest sub-model and ``num_sandwich`` LengthDrop sub-models on distillation towards the detached full-model
outputs (sandwich rule + in-place distillation); all losses divided by ``num_sandwich + 2``. LayerDrop skips
layers of the full model and of the random sub-models; a skipped layer keeps its input length, so the length
chain advances only at layers that run. The smallest sub-model runs every layer.

After training, the evolutionary search (:class:`dyntok.search.LengthSearch`) finds the score/MACs Pareto
frontier on a split carved from the training data, and the best configuration under ``search.budget`` is used
for the test split.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from typing import Any

import torch

from dyntok.errors import ConfigError
from dyntok.lengths import LengthConfig
from dyntok.methods.base import KdDirection, TaskModule, distillation_loss
from dyntok.search import GENE_FLOOR, LengthSearch, check_search_options, constant_ratio_gene

log = logging.getLogger("dyntok")


class LengthDropModule(TaskModule):
    """LengthDrop training with the sandwich rule, then the evolutionary search.

    Args:
        length_drop_prob: p, the LengthDrop ratio bound: l_j ~ UniformInt[ceil((1-p) l_{j-1}), l_{j-1}].
            The paper's 0.2 floors a 12-layer BERT at ~0.33x MACs but a 6-layer MiniLM only at ~0.53x; 0.35
            floors MiniLM near 0.33x, so 0.4x budgets lie inside the trained range.
        length_unit: ``ratio`` (dyntok's default: l_0 is the batch's longest real input and every example
            keeps the sampled share of its own real length) or ``tokens`` (the authors': l_0 = ``max_length``,
            the padded length, and an input of n real tokens keeps min(l_j, n), at least 2); the search's genes
            follow the same unit.
        max_length: the padded input length (``task.max_length``): l_0 of ``tokens`` and the genes' reference.
        layer_drop: probability of skipping each layer (full model and random sub-models; at least one runs).
        num_sandwich: n random sub-models per step besides the full and the smallest one.
        kd_direction: ``forward`` (default, conventional) or ``reverse`` (the original code's quirk).
        finetune_epochs: first epochs of plain full-model fine-tuning (both stages from one command);
            0 when starting from a fine-tuned checkpoint (``init_from=``).
        length_config: a fixed configuration for the test split instead of searching (any form
            :meth:`LengthConfig.parse` reads), or None.
        search: options of the evolutionary search (:data:`dyntok.search.SEARCH_DEFAULTS`).
        Other arguments: :class:`TaskModule`.

    Raises:
        ConfigError: an option out of range (names its ``method.`` key).
    """

    def __init__(self, *args: Any, length_drop_prob: float = 0.35, length_unit: str = "ratio",
                 max_length: int | None = None, layer_drop: float = 0.2, num_sandwich: int = 2,
                 kd_direction: KdDirection = "forward", finetune_epochs: int = 0,
                 length_config: Any = None, search: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if not 0.0 < length_drop_prob < 1.0:
            raise ConfigError(f"method.length_drop_prob must be in (0, 1), got {length_drop_prob}")
        if length_unit not in ("ratio", "tokens"):
            raise ConfigError(f"method.length_unit must be 'ratio' or 'tokens', got {length_unit!r}")
        if max_length is None:
            max_length = int(self.model.encoder.config.max_position_embeddings)
        if int(max_length) < GENE_FLOOR:
            raise ConfigError(f"method.max_length must be >= {GENE_FLOOR}, got {max_length}")
        if not 0.0 <= layer_drop < 1.0:
            raise ConfigError(f"method.layer_drop must be in [0, 1), got {layer_drop}")
        if num_sandwich < 0:
            raise ConfigError(f"method.num_sandwich must be >= 0, got {num_sandwich}")
        if kd_direction not in ("forward", "reverse"):
            raise ConfigError(f"method.kd_direction must be 'forward' or 'reverse', got {kd_direction!r}")
        self.p = length_drop_prob
        self.length_unit = length_unit
        self.max_length = int(max_length)
        self.layer_drop = layer_drop
        self.num_sandwich = num_sandwich
        self.kd_direction = kd_direction
        self.finetune_epochs = finetune_epochs
        self.search_cfg = check_search_options(search or {})
        self.test_config: LengthConfig | None = (
            LengthConfig.parse(length_config, self.model.num_layers, "method.length_config")
            if length_config is not None else None
        )
        self.explicit_config = length_config is not None
        self.rng = random.Random(0)
        self.search_summary: dict[str, Any] = {}
        # The standard model (init_from) for the constant-ratio curve; kept out of the state dict.
        object.__setattr__(self, "baseline", None)

    # ---- sampling ----------------------------------------------------------------------------------
    @property
    def floor(self) -> int:
        """Fewest tokens a sampled layer keeps (the authors' min_length 2 in token mode)."""
        return GENE_FLOOR if self.length_unit == "tokens" else 1

    def ref_length(self, real: torch.Tensor) -> int:
        """l_0 of this batch's sub-models: ``max_length`` (tokens) or the longest real input (ratio)."""
        return self.max_length if self.length_unit == "tokens" else int(real.max())

    def counts_to_config(self, counts: list[int] | tuple[int, ...], ref_length: int) -> LengthConfig:
        """Per-layer token counts at l_0 = ``ref_length`` as a :class:`LengthConfig` of this unit."""
        if self.length_unit == "tokens":
            return LengthConfig(tuple(float(c) for c in counts), "tokens", min_tokens=GENE_FLOOR)
        return LengthConfig(tuple(c / ref_length for c in counts), "ratio", min_tokens=1)

    def sample_lengths(self, ref_length: int, skip: list[bool] | None = None) -> LengthConfig:
        """A LengthDrop sub-model: l_j ~ UniformInt[ceil((1-p) l_{j-1}), l_{j-1}], l_0 = ``ref_length``,
        drawn only at the layers that run; a layer ``skip`` marks keeps its input length (the authors'
        ``sample_length_configuration`` with a layer configuration)."""
        cur, counts = ref_length, []
        for j in range(self.model.num_layers):
            if skip is None or not skip[j]:
                cur = max(self.floor, self.rng.randint(math.ceil((1 - self.p) * cur - 1e-9), cur))
            counts.append(cur)
        return self.counts_to_config(counts, ref_length)

    def smallest(self, ref_length: int) -> LengthConfig:
        """The smallest sub-model: l_j = ceil((1-p) l_{j-1}) at every layer."""
        return self.counts_to_config(constant_ratio_gene(1 - self.p, self.model.num_layers, ref_length, self.floor),
                                     ref_length)

    def sample_skip(self) -> list[bool] | None:
        """LayerDrop: each layer skipped with probability ``layer_drop``; never all of them."""
        if self.layer_drop == 0:
            return None
        skip = [self.rng.random() < self.layer_drop for _ in range(self.model.num_layers)]
        if all(skip):
            skip[self.rng.randrange(len(skip))] = False
        return skip

    def sandwich(self, ref_length: int) -> list[tuple[LengthConfig, list[bool] | None]]:
        """The sub-models of one step with their LayerDrop: the smallest (every layer runs), then
        ``num_sandwich`` random ones (layers drawn first, then lengths along the layers that run)."""
        subs = [(self.smallest(ref_length), None)]
        for _ in range(self.num_sandwich):
            skip = self.sample_skip()
            subs.append((self.sample_lengths(ref_length, skip), skip))
        return subs

    def sandwich_configs(self, ref_length: int) -> list[LengthConfig]:
        """The length configurations of :meth:`sandwich`."""
        return [cfg for cfg, _ in self.sandwich(ref_length)]

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
    def eval_length_config(self) -> LengthConfig | None:
        return self.test_config

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lengthdrop_rng"] = self.rng.getstate()  # mid-epoch resume samples what was next

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "lengthdrop_rng" in checkpoint:
            self.rng.setstate(checkpoint["lengthdrop_rng"])
        meta = checkpoint.get("dyntok") or {}
        if self.test_config is None and meta.get("length_config"):
            self.test_config = LengthConfig.parse(meta["length_config"], self.model.num_layers)

    # ---- search ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, batches: list[dict[str, torch.Tensor]], cfg: LengthConfig | None, model=None,
              metrics=None) -> float:
        """Task main metric of ``model`` (default: this one) on pre-collated batches with ``cfg`` (uncached;
        the search scores through :class:`dyntok.prefix_cache.PrefixCache`).

        ``metrics``: the collection to fill (reset first, built with ``sync_on_compute=False``), default a fresh
        ``task.metrics()``; span tasks pass one bound to the batches' split (:meth:`TaskModule.split_metrics`).
        """
        model = model or self.model
        was_training = model.training
        model.eval()
        # scored by one process alone: no DDP sync (it would wait forever)
        metrics = metrics if metrics is not None else self.task.metrics(sync_on_compute=False).to(self.device)
        metrics.reset()
        for b in batches:
            lengths = cfg.resolve(b["attention_mask"].sum(1)) if cfg is not None else None
            out = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), lengths=lengths)
            self.update_metrics(metrics, out.logits, b)
        model.train(was_training)
        return float(metrics.compute()[self.task.main_metric])

    @torch.inference_mode()
    def latency_ms(self, batches: list[dict[str, torch.Tensor]], cfg: LengthConfig | None, repeats: int = 2) -> float:
        """Milliseconds per example of ``cfg`` over ``batches`` (the best of ``repeats`` timed passes)."""
        from dyntok.bench import best_pass_ms

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
        (:meth:`dyntok.search.LengthSearch.check_budget`)."""
        if self.test_config is None and self.search_cfg["enabled"]:
            LengthSearch(self, datamodule).check_budget()

    def after_fit(self, trainer, datamodule, run_dir) -> None:
        """Search the frontier on the search split and test the configuration chosen under the budget."""
        if self.test_config is not None or not self.search_cfg["enabled"] or not trainer.is_global_zero:
            return
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", None)
        self.test_config, self.search_summary = LengthSearch(self, datamodule, run_dir, checkpoint).run()

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["search"] = self.search_summary or None
        out["lengthdrop"] = {"length_drop_prob": self.p, "length_unit": self.length_unit, "layer_drop": self.layer_drop,
                             "num_sandwich": self.num_sandwich, "kd_direction": self.kd_direction}
        return out

    def on_init_from(self, meta: dict[str, Any]) -> None:
        """From a LengthDrop checkpoint, the configuration it chose is kept only when this run does not
        search (``method.search.enabled=false``): new training or a new budget needs a new search.

        Keep the standard fine-tuned model for the constant-ratio comparison curve: the ``method=full``
        model just loaded or, from a LengthDrop checkpoint, the ``method=full`` run it started from (its
        ``init_from``, followed back through further LengthDrop runs); without one the curve is left out
        (a warning says so)."""
        if not self.explicit_config and self.test_config is not None and self.search_cfg["enabled"]:
            log.info("init_from chose %s; searching again (method.search.enabled=false keeps it)",
                     self.test_config.describe())
            self.test_config = None
        if meta.get("method") == "FullFineTuning":
            object.__setattr__(self, "baseline", copy.deepcopy(self.model).eval())
            return
        from dyntok.checkpoint import model_weights, read_checkpoint
        from dyntok.errors import CheckpointError

        # Follow init_from back through LengthDrop runs (trained on in stages) to the method=full one.
        source, state, seen = (meta.get("config") or {}).get("init_from"), None, set()
        while source and str(source) not in seen and len(seen) < 16:
            seen.add(str(source))
            try:
                state = read_checkpoint(source)
            except CheckpointError as e:
                state, source = None, f"{source} ({e})"
                break
            if state["dyntok"].get("method") == "FullFineTuning":
                break
            source, state = (state["dyntok"].get("config") or {}).get("init_from"), None
        if state is None:
            log.warning("init_from is a LengthDrop checkpoint whose method=full source (%s) cannot be read: "
                        "no standard-model constant-ratio curve", source)
            return
        baseline = copy.deepcopy(self.model)
        baseline.load_state_dict(model_weights(state))
        object.__setattr__(self, "baseline", baseline.eval())
