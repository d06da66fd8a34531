"""``method=lengthdrop``: the Length-Adaptive Transformer (Kim & Cho 2021, arXiv 2010.07003).

Training (Sec. 3.1-3.2), every step: the full model on the task loss; the smallest sub-model and
``num_sandwich`` LengthDrop sub-models on distillation towards the detached full-model outputs (sandwich
rule + in-place distillation); all losses divided by ``num_sandwich + 2``. LayerDrop in every pass.

After training, the evolutionary search (:mod:`dyntok.search`) finds the accuracy/MACs Pareto frontier
on a split carved from the training data, and the best configuration under ``search.budget`` is used for
the test split.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import torch

from dyntok.errors import ConfigError
from dyntok.lengths import LengthConfig
from dyntok.methods.base import KdDirection, TaskModule, distillation_loss
from dyntok.search import (
    EvolutionarySearch,
    Gene,
    Point,
    SearchStore,
    best_under_budget,
    compare_to_curve,
    constant_ratio_gene,
    gene_to_config,
)

log = logging.getLogger("dyntok")


SEARCH_DEFAULTS: dict[str, Any] = {
    "enabled": True, "split": "validation", "max_examples": 1000, "population": 20, "iterations": 30,
    "mutations": 30, "crossovers": 30, "mutation_prob": 0.5, "seed": 0, "store": None,
    "budget": 0.4, "budget_unit": "ratio", "eval_batch_size": 128, "curves": True, "min_length": 0,
    "rescore_examples": 0, "rescore_margin": 0.01,
}


class LengthDropModule(TaskModule):
    """LengthDrop training with the sandwich rule, then the evolutionary search.

    Args:
        length_drop_prob: p, the LengthDrop ratio bound: l_j ~ UniformInt[ceil((1-p) l_{j-1}), l_{j-1}].
            The paper's 0.2 floors a 12-layer BERT at ~0.33x MACs but a 6-layer MiniLM only at ~0.53x; 0.35
            floors MiniLM near 0.33x, so 0.4x budgets lie inside the trained range.
        layer_drop: probability of skipping each layer in every training pass (at least one layer runs).
        num_sandwich: n random sub-models per step besides the full and the smallest one.
        kd_direction: ``forward`` (default, conventional) or ``reverse`` (original code's quirk).
        finetune_epochs: first epochs of plain full-model fine-tuning (both stages from one command);
            0 when starting from a fine-tuned checkpoint (``init_from=``).
        length_config: a fixed configuration for the test split instead of searching (any form
            :meth:`LengthConfig.parse` reads), or None.
        search: options of the evolutionary search (keys of ``SEARCH_DEFAULTS``); ``rescore_examples`` > 0
            scores the genes within ``rescore_margin`` of the frontier again on that many further examples
            of the search split and takes the frontier and the budget's choice from those scores.
        Other arguments: :class:`TaskModule`.
    """

    def __init__(self, *args: Any, length_drop_prob: float = 0.35, layer_drop: float = 0.2, num_sandwich: int = 2,
                 kd_direction: KdDirection = "forward", finetune_epochs: int = 0,
                 length_config: Any = None, search: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if not 0.0 < length_drop_prob < 1.0:
            raise ConfigError(f"method.length_drop_prob must be in (0, 1), got {length_drop_prob}")
        if not 0.0 <= layer_drop < 1.0:
            raise ConfigError(f"method.layer_drop must be in [0, 1), got {layer_drop}")
        if num_sandwich < 0:
            raise ConfigError(f"method.num_sandwich must be >= 0, got {num_sandwich}")
        if kd_direction not in ("forward", "reverse"):
            raise ConfigError(f"method.kd_direction must be 'forward' or 'reverse', got {kd_direction!r}")
        self.p = length_drop_prob
        self.layer_drop = layer_drop
        self.num_sandwich = num_sandwich
        self.kd_direction = kd_direction
        self.finetune_epochs = finetune_epochs
        unknown = set(search or {}) - set(SEARCH_DEFAULTS)
        if unknown:
            raise ConfigError(f"method.search: unknown keys {sorted(unknown)}; known: {sorted(SEARCH_DEFAULTS)}")
        self.search_cfg = {**SEARCH_DEFAULTS, **(search or {})}
        unit, budget = self.search_cfg["budget_unit"], float(self.search_cfg["budget"])
        if unit not in ("ratio", "gmacs", "ms"):
            raise ConfigError(f"method.search.budget_unit must be 'ratio', 'gmacs' or 'ms', got {unit!r}")
        if budget <= 0 or (unit == "ratio" and budget > 1):
            raise ConfigError(f"method.search.budget={budget} out of range for budget_unit={unit} "
                              "(ratio: (0, 1]; gmacs and ms: > 0)")
        rescore = int(self.search_cfg["rescore_examples"])
        if rescore < 0 or (rescore and self.search_cfg["max_examples"] is None):
            raise ConfigError(f"method.search.rescore_examples={rescore}: must be >= 0, and > 0 needs "
                              "method.search.max_examples (the re-scoring examples follow those)")
        if float(self.search_cfg["rescore_margin"]) < 0:
            raise ConfigError(f"method.search.rescore_margin must be >= 0, got {self.search_cfg['rescore_margin']}")
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
    def sample_lengths(self, ref_length: int) -> LengthConfig:
        """A LengthDrop sub-model: l_j ~ UniformInt[ceil((1-p) l_{j-1}), l_{j-1}], l_0 = ``ref_length``,
        as ratios of ``ref_length`` (the batch's longest real input, as LAT samples at its input length)."""
        cur, vals = ref_length, []
        for _ in range(self.model.num_layers):
            cur = self.rng.randint(math.ceil((1 - self.p) * cur - 1e-9), cur)
            vals.append(cur / ref_length)
        return LengthConfig(tuple(vals), "ratio", min_tokens=1)

    def smallest(self, ref_length: int) -> LengthConfig:
        """The smallest sub-model: l_j = ceil((1-p) l_{j-1})."""
        return gene_to_config(constant_ratio_gene(1 - self.p, self.model.num_layers, ref_length), ref_length)

    def sample_skip(self) -> list[bool] | None:
        """LayerDrop: each layer skipped with probability ``layer_drop``; never all of them."""
        if self.layer_drop == 0:
            return None
        skip = [self.rng.random() < self.layer_drop for _ in range(self.model.num_layers)]
        if all(skip):
            skip[self.rng.randrange(len(skip))] = False
        return skip

    def sandwich_configs(self, ref_length: int) -> list[LengthConfig]:
        """The sub-models of one step: the smallest, then ``num_sandwich`` random ones."""
        return [self.smallest(ref_length)] + [self.sample_lengths(ref_length) for _ in range(self.num_sandwich)]

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
        for cfg in self.sandwich_configs(int(real.max())):
            out = self(batch, lengths=cfg.resolve(real), skip_layers=self.sample_skip())
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
        """Task main metric of ``model`` (default: this one) on pre-collated batches with ``cfg``.

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

    def _batches(self, datamodule, split: str, max_examples: int | None,
                 min_length: int = 0, skip_examples: int = 0) -> list[dict[str, torch.Tensor]]:
        loader = datamodule.dataloader(split, batch_size=self.search_cfg["eval_batch_size"],
                                       max_examples=max_examples, min_length=min_length,
                                       skip_examples=skip_examples)
        return [{k: v.to(self.device) for k, v in b.items()} for b in loader]

    def before_fit(self, datamodule) -> None:
        """Fail before training when the search could never meet a MACs budget (``budget_unit`` ratio or
        gmacs): the cheapest gene it may evaluate is the smallest sub-model, ``1 - p`` at every layer.

        Raises:
            ConfigError: naming ``method.search.budget`` and the cheapest reachable ratio.
        """
        s = self.search_cfg
        if self.test_config is not None or not s["enabled"] or s["budget_unit"] == "ms":
            return
        from dyntok.flops import length_config_macs

        datamodule.setup("fit")
        ref = int(datamodule.hparams.max_length)
        L = self.model.num_layers
        lengths = self._search_lengths(datamodule)
        full = float(length_config_macs(self.dims, LengthConfig.full(L), lengths).mean())
        floor = float(length_config_macs(self.dims, self.smallest(ref), lengths).mean())
        budget = float(s["budget"]) * (full if s["budget_unit"] == "ratio" else 1e9)
        if budget < floor * (1 - 1e-9):
            raise ConfigError(
                f"method.search.budget={s['budget']} ({s['budget_unit']}) is below the cheapest configuration "
                f"the search can reach: {floor / full:.3f}x MACs ({floor / 1e9:.4g} GMACs per example) on the "
                f"search split, set by method.length_drop_prob={self.p}; raise the budget or the bound")

    def _search_lengths(self, datamodule) -> torch.Tensor:
        """(N,) long: real lengths of the search split's examples (tokens, specials included)."""
        s = self.search_cfg
        loader = datamodule.dataloader(s["split"], batch_size=s["eval_batch_size"],
                                       max_examples=s["max_examples"], min_length=s["min_length"])
        return torch.cat([b["attention_mask"].sum(1) for b in loader])

    def after_fit(self, trainer, datamodule, run_dir) -> None:
        """Search the frontier on the search split, pick the configuration under the budget."""
        s = self.search_cfg
        if self.test_config is not None or not s["enabled"] or not trainer.is_global_zero:
            return
        from dyntok.flops import length_config_macs

        datamodule.setup("fit")
        ref = int(datamodule.hparams.max_length)
        L = self.model.num_layers
        batches = self._batches(datamodule, s["split"], s["max_examples"], s["min_length"])
        metrics = self.split_metrics(s["split"], datamodule, sync_on_compute=False)
        lengths = torch.cat([b["attention_mask"].sum(1) for b in batches]).cpu()
        full_macs = float(length_config_macs(self.dims, LengthConfig.full(L), lengths).mean())

        def macs(gene: Gene) -> float:
            return float(length_config_macs(self.dims, gene_to_config(gene, ref), lengths).mean())

        store_path = Path(s["store"]) if s["store"] else Path(run_dir) / "search_store.jsonl"
        meta = {"task": self.task.name, "split": s["split"], "examples": len(lengths), "ref_length": ref,
                **({"min_length": s["min_length"]} if s["min_length"] else {}),
                "length_drop_prob": self.p, "checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None)}
        store = SearchStore(store_path, meta={k: v for k, v in meta.items() if k != "checkpoint"})
        search = EvolutionarySearch(
            lambda g: self.score(batches, gene_to_config(g, ref), metrics=metrics), macs, L, ref, self.p,
            s["population"], s["iterations"], s["mutations"], s["crossovers"], s["mutation_prob"], s["seed"], store,
        )
        result = search.run()
        frontier, rescored = result.frontier, None
        if s["rescore_examples"]:
            batches, frontier, full_macs, rescored = self._rescore(datamodule, result, store_path, meta, ref)
        # Measured latency of every frontier configuration, in this process, on the search batches.
        latency = {p.gene: self.latency_ms(batches, gene_to_config(p.gene, ref)) for p in frontier}
        full_latency = self.latency_ms(batches, None)
        budget = float(s["budget"])
        if s["budget_unit"] == "ratio":
            best = best_under_budget(frontier, budget * full_macs)
        elif s["budget_unit"] == "gmacs":
            best = best_under_budget(frontier, budget * 1e9)
        else:  # ms (the constructor accepts no other unit)
            fits = [p for p in frontier if latency[p.gene] <= budget]
            if not fits:
                raise ConfigError(f"search.budget={budget} ms per example: the fastest searched configuration "
                                  f"takes {min(latency.values()):.3f} ms (full model {full_latency:.3f} ms)")
            best = max(fits, key=lambda p: (p.score, -p.macs))
        self.test_config = gene_to_config(best.gene, ref)
        self.search_summary = {
            "frontier_size": len(frontier), "search_frontier_size": len(result.frontier), **(rescored or {}), "evaluated": result.evaluated, "replayed_from_store": result.cached,
            "seconds": result.seconds, "evals_per_minute": result.evals_per_minute, "store": str(store_path),
            "search_split": s["split"], "search_examples": len(lengths), "search_min_length": s["min_length"],
            "budget": budget,
            "budget_unit": s["budget_unit"], "chosen_gene": list(best.gene), "chosen_search_score": best.score,
            "chosen_macs_ratio": best.macs / full_macs, "chosen_ms_per_example": latency[best.gene],
            "full_ms_per_example": full_latency, "chosen_speedup": full_latency / latency[best.gene],
        }
        log.info("search: %d evaluated, %d replayed, %.1f evals/min; chosen %s (%.3fx MACs, %s %.4f on %s)",
                 result.evaluated, result.cached, result.evals_per_minute, list(best.gene), best.macs / full_macs,
                 self.task.main_metric, best.score, s["split"])
        self._write_frontier(run_dir, frontier, full_macs, ref, datamodule, latency, full_latency)

    def _rescore(self, datamodule, result, store_path: Path, meta: dict[str, Any], ref: int):
        """Score the genes near the search's frontier (``search.rescore_margin``) again on the next
        ``search.rescore_examples`` examples of the search split, which the search never saw; their own
        store makes a rerun replay them.

        Returns:
            the re-scoring batches, the frontier of the new scores, the full model's MACs per example on
            those examples, and summary fields.
        """
        from tqdm.auto import tqdm

        from dyntok.flops import length_config_macs
        from dyntok.search import near_frontier, pareto_frontier

        s = self.search_cfg
        batches = self._batches(datamodule, s["split"], s["rescore_examples"], s["min_length"],
                                skip_examples=s["max_examples"])
        metrics = self.split_metrics(s["split"], datamodule, sync_on_compute=False)
        lengths = torch.cat([b["attention_mask"].sum(1) for b in batches]).cpu()
        L = self.model.num_layers
        full_macs = float(length_config_macs(self.dims, LengthConfig.full(L), lengths).mean())
        candidates = near_frontier(result.points, float(s["rescore_margin"]))
        store = SearchStore(store_path.with_name(store_path.stem + ".rescore.jsonl"),
                            meta={**{k: v for k, v in meta.items() if k != "checkpoint"}, "examples": len(lengths),
                                  "skip_examples": s["max_examples"]})
        points = []
        for p in tqdm(candidates, desc="re-score", unit="gene"):
            if p.gene not in store:
                cfg = gene_to_config(p.gene, ref)
                store.add(Point(p.gene, float(length_config_macs(self.dims, cfg, lengths).mean()),
                                self.score(batches, cfg, metrics=metrics)))
            points.append(store.get(p.gene))
        frontier = pareto_frontier(points)
        log.info("re-scored %d genes near the search frontier on %d further examples: frontier %d -> %d genes",
                 len(points), len(lengths), len(result.frontier), len(frontier))
        summary = {"rescore_examples": len(lengths), "rescored_genes": len(points),
                   "rescore_margin": float(s["rescore_margin"])}
        return batches, frontier, full_macs, summary

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

    def _write_frontier(self, run_dir, frontier: list[Point], full_macs: float, ref: int, datamodule,
                        latency: dict | None = None, full_latency: float | None = None) -> None:
        """Frontier TSV/JSON (with measured latency) and the paper's three curves, scored on the first
        report split."""
        from dyntok.flops import length_config_macs

        run_dir = Path(run_dir)
        latency = latency or {}
        rows = [{"gene": list(p.gene), "config": gene_to_config(p.gene, ref).describe(), "macs": p.macs,
                 "macs_ratio": p.macs / full_macs, "search_score": p.score,
                 "ms_per_example": latency.get(p.gene), "speedup": (full_latency / latency[p.gene])
                 if p.gene in latency and full_latency else None} for p in frontier]
        curves: dict[str, list[tuple[float, float]]] = {}
        if self.search_cfg["curves"]:
            split = self.task.test_splits[0]
            batches = self._batches(datamodule, split, None)
            metrics = self.split_metrics(split, datamodule, sync_on_compute=False)
            lengths = torch.cat([b["attention_mask"].sum(1) for b in batches]).cpu()
            L = self.model.num_layers
            full = float(length_config_macs(self.dims, LengthConfig.full(L), lengths).mean())

            def point(cfg: LengthConfig, model=None) -> tuple[float, float]:
                m = float(length_config_macs(self.dims, cfg, lengths).mean())
                return m / full, self.score(batches, cfg, model, metrics)

            for r in rows:
                r["macs_ratio_test"], r[f"{split}_score"] = point(gene_to_config(tuple(r["gene"]), ref))
            curves["LengthDrop model, searched"] = [(r["macs_ratio_test"], r[f"{split}_score"]) for r in rows]
            qs = [1 - self.p + self.p * i / 7 for i in range(8)] + [0.5, 0.4, 0.3]
            consts = [gene_to_config(constant_ratio_gene(q, L, ref), ref) for q in sorted(set(qs))]
            curves["LengthDrop model, constant ratio"] = [point(c) for c in consts]
            if self.baseline is not None:
                curves["standard model, constant ratio"] = [point(c, self.baseline) for c in consts]
            self.search_summary["curves_split"] = split
            # where the searched frontier stands against each constant-ratio curve on the report split
            searched = curves["LengthDrop model, searched"]
            self.search_summary["frontier_vs_curves"] = {
                name: compare_to_curve(searched, curve) for name, curve in curves.items() if curve is not searched}
        (run_dir / "frontier.json").write_text(json.dumps({"frontier": rows, "curves": curves}, indent=2))
        cols = [k for k in rows[0] if k != "gene"] if rows else []
        lines = ["\t".join(["gene", *cols])] + ["\t".join([",".join(map(str, r["gene"])),
                                                         *(str(r[c]) for c in cols)]) for r in rows]
        (run_dir / "frontier.tsv").write_text("\n".join(lines) + "\n")
        if curves:
            from dyntok.report import plot_curves

            plot_curves(curves, run_dir / "frontier.png", xlabel="MACs ratio (vs full model at real length)",
                        ylabel=f"{self.task.main_metric} ({self.search_summary.get('curves_split')})",
                        title=f"{self.task.name}: Length-Adaptive Transformer")

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["search"] = self.search_summary or None
        out["lengthdrop"] = {"length_drop_prob": self.p, "layer_drop": self.layer_drop,
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
