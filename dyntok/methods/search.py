"""The search of a trained LengthDrop model (Kim & Cho 2021, Sec. 3.3), end to end: the search split's
batches, the MACs objective (at each input's real length, or as the papers count, padded), the evolutionary
search (:mod:`dyntok.methods.evolution`) scored through a prefix cache, optional re-scoring, the budget's
choice, measured latency, and the frontier files with the paper's curves.

- Optional **re-scoring** (not in the paper): the genes near the frontier
  (:func:`dyntok.evaluation.frontier.near_frontier`) are scored again on examples the search never saw, and
  the frontier and the budget's choice come from those scores, which are free of the search's selection bias.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dyntok.core.lengths import LengthConfig
from dyntok.errors import ConfigError
from dyntok.evaluation.evaluate import update_metrics
from dyntok.evaluation.frontier import (
    Point,
    best_under_budget,
    compare_to_curve,
    near_frontier,
    pareto_frontier,
)
from dyntok.evaluation.results import format_table
from dyntok.methods.evolution import EvolutionarySearch, SearchResult, SearchStore, progress_bar
from dyntok.methods.genes import Gene, canonical_gene, constant_ratio_gene

log = logging.getLogger("dyntok")


class LengthSearch:
    """The evolutionary search of a trained :class:`dyntok.methods.lengthdrop.LengthDropModule`, end to end:
    batches of the search split, the MACs objective, the search, optional re-scoring, the budget's choice,
    measured latency, and the frontier files (``frontier.json``, ``.tsv``, ``.png``) with the paper's curves.

    MACs, per ``search.budget_baseline``: ``real`` (dyntok's): per example at each input's real length on the
    search split, against the full model there; ``padded`` (the papers' and the LAT code's count, torchprofile
    on an all-ones input): the configuration run on one input padded to ``max_length``, against the full model
    on it. Every frontier row reports both ratios (``macs_ratio``, ``paper_macs_ratio``).

    Args:
        module: the trained LengthDrop module (its model, task, ``search_cfg``, unit and bound).
        datamodule: the run's DataModule.
        run_dir: where the store and frontier files go (None: only :meth:`check_budget`).
        checkpoint: recorded in the store's metadata.
    """

    def __init__(self, module, datamodule, run_dir: str | os.PathLike | None = None,
                 checkpoint: str | None = None) -> None:
        self.m, self.dm, self.s = module, datamodule, module.search_cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.checkpoint = checkpoint
        self.ref = module.max_length
        self.unit = module.length_unit
        self.L = module.model.num_layers
        self.restore = module.model.restore_mode

    # ---- configurations and their compute ---------------------------------------------------------------
    def config(self, gene: Gene) -> LengthConfig:
        return LengthConfig.from_counts(gene, self.ref, self.unit)

    def canonical(self, gene: Gene) -> Gene:
        """The gene as the search keeps it (:func:`~dyntok.methods.genes.canonical_gene`): with
        ``restore="last_layer"`` the last entry is held at the floor, the layer running every token."""
        return canonical_gene(gene, self.restore, self.m.floor)

    def _macs(self, cfg: LengthConfig, lengths: torch.Tensor) -> float:
        from dyntok.core.macs import length_config_macs

        return float(length_config_macs(self.m.dims, cfg, lengths, restore=self.restore).mean())

    def paper_macs(self, cfg: LengthConfig) -> float:
        """MACs of ``cfg`` on one input padded to ``max_length`` (the papers' count)."""
        return self._macs(cfg, torch.tensor([self.ref]))

    def _lengths(self, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return torch.cat([b["attention_mask"].sum(1) for b in batches]).cpu()

    def _batches(self, split: str, max_examples: int | None, min_length: int = 0,
                 skip_examples: int = 0) -> list[dict[str, torch.Tensor]]:
        loader = self.dm.dataloader(split, batch_size=self.s["eval_batch_size"], max_examples=max_examples,
                                    min_length=min_length, skip_examples=skip_examples)
        return [{k: v.to(self.m.device) for k, v in b.items()} for b in loader]

    def objective(self, lengths: torch.Tensor) -> tuple[Callable[[Gene], float], float]:
        """The search's MACs of a gene (``budget_baseline``) and the full model's on the same terms."""
        if self.s["budget_baseline"] == "padded":
            return (lambda g: self.paper_macs(self.config(g))), self.paper_macs(LengthConfig.full(self.L))
        return (lambda g: self._macs(self.config(g), lengths)), self._macs(LengthConfig.full(self.L), lengths)

    def check_budget(self) -> None:
        """Fail before training when no configuration the search may evaluate meets a MACs budget
        (``budget_unit`` ratio or gmacs): the cheapest is the smallest sub-model.

        Raises:
            ConfigError: naming ``method.search.budget`` and the cheapest reachable ratio.
        """
        s = self.s
        if s["budget_unit"] == "ms":
            return
        self.dm.setup("fit")
        loader = self.dm.dataloader(s["split"], batch_size=s["eval_batch_size"], max_examples=s["max_examples"],
                                    min_length=s["min_length"])
        macs, full = self.objective(torch.cat([b["attention_mask"].sum(1) for b in loader]))
        floor = macs(self.canonical(constant_ratio_gene(1 - self.m.p, self.L, self.ref, self.m.floor)))
        budget = float(s["budget"]) * (full if s["budget_unit"] == "ratio" else 1e9)
        if budget < floor * (1 - 1e-9):
            raise ConfigError(
                f"method.search.budget={s['budget']} ({s['budget_unit']}) is below the cheapest configuration "
                f"the search can reach: {floor / full:.3f}x MACs ({floor / 1e9:.4g} GMACs per example, "
                f"{s['budget_baseline']} baseline) on the search split, set by method.length_drop_prob={self.m.p}; "
                "raise the budget or the bound")

    def _scorer(self, batches: list[dict[str, torch.Tensor]], split: str, model=None) -> Callable:
        """LengthConfig -> main metric of ``model`` (default the module's) on ``batches``, through a
        :class:`~dyntok.core.prefix_cache.PrefixCache` bounded by ``search.cache_mb``."""
        from dyntok.core.prefix_cache import PrefixCache

        model = model if model is not None else self.m.model
        metrics = self.m.split_metrics(split, self.dm, sync_on_compute=False)
        cache = PrefixCache(model, batches, int(float(self.s["cache_mb"]) * 2**20))

        def score(cfg: LengthConfig | None) -> float:
            was_training = model.training
            model.eval()
            metrics.reset()
            try:
                with self.precision():
                    for i, b in enumerate(batches):
                        update_metrics(metrics, cache.logits(i, cfg)[0].float(), b, self.m.task.problem)
            finally:
                model.train(was_training)
            return float(metrics.compute()[self.m.task.main_metric])

        score.cache = cache
        return score

    def precision(self):
        """The scoring passes' numeric precision (``search.precision``): ``fp32``, or ``bf16`` under
        ``torch.autocast`` (matrix products in bfloat16: several times faster where the CPU has AMX or
        AVX-512 BF16, or on a GPU; scores may move by an example or two)."""
        import contextlib

        if self.s["precision"] == "bf16":
            return torch.autocast(device_type=self.m.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_bf16(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """With ``search.precision=bf16`` on a CPU without native bfloat16 (no AVX-512 BF16 or AMX), time one
        scoring batch both ways before the search starts and log what bfloat16 will cost (on an AVX2-only CPU
        it is several times slower than float32). Returns the timings (``search`` fields of results.json)."""
        from dyntok.evaluation.timing import bf16_cost, cpu_has_bf16

        if self.s["precision"] != "bf16" or self.m.device.type != "cpu" or cpu_has_bf16() or not batches:
            return {}
        model, was_training = self.m.model, self.m.model.training
        model.eval()
        try:
            cost = bf16_cost(lambda b: model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")), batches[0])
        finally:
            model.train(was_training)
        from dyntok.evaluation.results import cpu_model

        log.warning("method.search.precision=bf16 on %s, which has no AVX-512 BF16 or AMX: one scoring batch takes "
                    "%.0f ms in bfloat16 against %.0f ms in float32 (%.2fx)%s", cpu_model() or "this CPU",
                    cost["bf16_ms"], cost["fp32_ms"], cost["bf16_slowdown"],
                    "; method.search.precision=fp32 is faster here" if cost["bf16_slowdown"] > 1 else "")
        return cost

    def _racer(self, batches: list[dict[str, torch.Tensor]], split: str) -> Callable:
        """(gene, bar) -> (accuracy, finished): racing (``search.racing``, not in the paper). Batches are scored
        in an order spread over their lengths (the loader sorts them by length); from ``racing_start`` of the
        examples on, after every batch, scoring stops when accuracy + ``racing_z`` binomial standard errors
        falls below ``bar`` (the population's best score at equal or fewer MACs): such a gene cannot join the
        frontier. A gene that is not stopped gets exactly the score :meth:`_scorer` gives, from the same single pass.

        Raises:
            ConfigError: the task's main metric is not classification accuracy (naming ``method.search.racing``).
        """
        task = self.m.task
        if task.main_metric != "accuracy":  # a binomial proportion: only classification reports it
            raise ConfigError(f"method.search.racing=true needs a classification task scored by accuracy; "
                              f"{task.name} is scored by {task.main_metric}: set method.search.racing=false")
        from dyntok.core.prefix_cache import PrefixCache

        metrics = self.m.split_metrics(split, self.dm, sync_on_compute=False)
        cache = PrefixCache(self.m.model, batches, int(float(self.s["cache_mb"]) * 2**20))
        order = sorted(range(len(batches)), key=lambda i: (i * 0.6180339887498949) % 1.0)
        total = sum(int(b["labels"].numel()) for b in batches)
        start, z = float(self.s["racing_start"]) * total, float(self.s["racing_z"])
        model = self.m.model

        def score(gene: Gene, bar: float) -> tuple[float, bool]:
            cfg = self.config(gene)
            correct = seen = 0
            was_training = model.training
            model.eval()
            metrics.reset()
            try:
                for i in order:
                    b = batches[i]
                    with self.precision():
                        logits = cache.logits(i, cfg)[0].float()
                    update_metrics(metrics, logits, b, self.m.task.problem)  # the exact score of a gene never stopped
                    correct += int((logits.argmax(-1) == b["labels"]).sum())
                    seen += int(b["labels"].numel())
                    if start <= seen < total:
                        acc = correct / seen
                        # a floor on the variance: a stage of all-right or all-wrong answers is no certainty
                        se = math.sqrt(max(acc * (1 - acc), 0.01) / seen)
                        if acc + z * se < bar:
                            return acc, False
            finally:
                model.train(was_training)
            return float(metrics.compute()[task.main_metric]), True

        score.cache = cache
        return score

    # ---- the search -------------------------------------------------------------------------------------
    def run(self) -> tuple[LengthConfig, dict[str, Any]]:
        """Search, choose under the budget, write the frontier files.

        Returns:
            the chosen configuration and the ``search`` fields of ``results.json``.

        Raises:
            ConfigError: no searched configuration meets the budget.
        """
        s, m = self.s, self.m
        self.dm.setup("fit")
        batches = self._batches(s["split"], s["max_examples"], s["min_length"])
        lengths = self._lengths(batches)
        macs, full_macs = self.objective(lengths)
        store_path = Path(s["store"]) if s["store"] else self.run_dir / "search_store.jsonl"
        meta = {"task": m.task.name, "split": s["split"], "examples": len(lengths), "ref_length": self.ref,
                **({"min_length": s["min_length"]} if s["min_length"] else {}),
                **({"length_unit": self.unit} if self.unit != "ratio" else {}),
                **({"budget_baseline": s["budget_baseline"]} if s["budget_baseline"] != "real" else {}),
                **({"restore": self.restore} if self.restore == "last_layer" else {}),
                "length_drop_prob": m.p}
        if s["precision"] != "fp32":  # other scores: never shared with an fp32 search
            meta["precision"] = s["precision"]
        if s["racing"]:  # racing's scores of stopped genes are partial: never shared with an exact search
            meta.update(racing=True, racing_start=s["racing_start"], racing_z=s["racing_z"])
        store = SearchStore(store_path, meta=meta)
        bf16 = self._check_bf16(batches)
        if s["racing"]:
            score = self._racer(batches, s["split"])
            evaluate = score
        else:
            score = self._scorer(batches, s["split"])
            evaluate = lambda g: score(self.config(g))  # noqa: E731
        search = EvolutionarySearch(
            evaluate, macs, self.L, self.ref, m.p, s["population"], s["iterations"],
            s["mutations"], s["crossovers"], s["mutation_prob"], s["seed"], store, init=s["init"], fill=s["fill"],
            floor=m.floor, canonical=self.canonical, parents=s["parents"], racing=s["racing"])
        result = search.run()
        score.cache.release()  # one cache at a time in the process: search.cache_mb bounds them all
        frontier, rescored = result.frontier, None
        if s["rescore_examples"]:
            batches, frontier, full_macs, rescored = self._rescore(result, store_path, meta)
        # measured latency of every frontier configuration, in this process, on the (last) scoring batches
        latency = {p.gene: m.latency_ms(batches, self.config(p.gene)) for p in frontier}
        full_latency = m.latency_ms(batches, None)
        budget = float(s["budget"])
        if s["budget_unit"] == "ratio":
            best = best_under_budget(frontier, budget * full_macs)
        elif s["budget_unit"] == "gmacs":
            best = best_under_budget(frontier, budget * 1e9)
        else:  # ms (SearchConfig accepts no other unit)
            fits = [p for p in frontier if latency[p.gene] <= budget]
            if not fits:
                raise ConfigError(f"search.budget={budget} ms per example: the fastest searched configuration "
                                  f"takes {min(latency.values()):.3f} ms (full model {full_latency:.3f} ms)")
            best = max(fits, key=lambda p: (p.score, -p.macs))
        cache = score.cache
        chosen = self.config(best.gene)
        paper_full = self.paper_macs(LengthConfig.full(self.L))
        summary = {
            "frontier_size": len(frontier), "search_frontier_size": len(result.frontier), **(rescored or {}),
            "evaluated": result.evaluated, "replayed_from_store": result.cached, "raced": result.raced,
            "racing": s["racing"], "parents": s["parents"], "precision": s["precision"], "seconds": result.seconds,
            **bf16,
            "evals_per_minute": result.evals_per_minute, "store": str(store_path), "search_split": s["split"],
            "search_examples": len(lengths), "search_min_length": s["min_length"], "length_unit": self.unit,
            "init": s["init"], "fill": s["fill"], "short_iterations": search.short_iterations,
            "cache_layers_reused": cache.layers_reused, "cache_layers_run": cache.layers_run,
            "budget": budget, "budget_unit": s["budget_unit"], "budget_baseline": s["budget_baseline"],
            "chosen_gene": list(best.gene), "chosen_search_score": best.score,
            "chosen_macs_ratio": self._macs(chosen, lengths) / self._macs(LengthConfig.full(self.L), lengths),
            "chosen_paper_macs_ratio": self.paper_macs(chosen) / paper_full,
            "chosen_ms_per_example": latency[best.gene], "full_ms_per_example": full_latency,
            "chosen_speedup": full_latency / latency[best.gene],
        }
        log.info("search: %d evaluated (%d stopped early by racing), %d replayed, %.1f evals/min (cache reused %d "
                 "of %d layers); chosen %s (%.3fx MACs at real length, %.3fx padded, %s %.4f on %s)", result.evaluated,
                 result.raced, result.cached, result.evals_per_minute, cache.layers_reused, cache.layers_reused + cache.layers_run,
                 list(best.gene), summary["chosen_macs_ratio"], summary["chosen_paper_macs_ratio"],
                 m.task.main_metric, best.score, s["split"])
        self._write_frontier(frontier, lengths, latency, full_latency, summary)
        return chosen, summary

    def _rescore(self, result: SearchResult, store_path: Path, meta: dict[str, Any]):
        """Score the genes near the search's frontier (``search.rescore_margin``) again on the next
        ``search.rescore_examples`` examples of the search split, which the search never saw; their own
        store makes a rerun replay them.

        Returns:
            the re-scoring batches, the frontier of the new scores, the full model's MACs on those examples
            (the objective's), and summary fields.
        """
        s = self.s
        batches = self._batches(s["split"], s["rescore_examples"], s["min_length"], skip_examples=s["max_examples"])
        lengths = self._lengths(batches)
        macs, full_macs = self.objective(lengths)
        score = self._scorer(batches, s["split"])
        candidates = near_frontier(result.points, float(s["rescore_margin"]))
        store = SearchStore(store_path.with_name(store_path.stem + ".rescore.jsonl"),
                            meta={**meta, "examples": len(lengths), "skip_examples": s["max_examples"]})
        points = []
        bar = progress_bar(len(candidates), "re-score", "gene")
        for p in candidates:
            if p.gene not in store:
                store.add(Point(p.gene, macs(p.gene), score(self.config(p.gene))))
            points.append(store.get(p.gene))
            bar.update(1)
        bar.close()
        score.cache.release()
        frontier = pareto_frontier(points)
        log.info("re-scored %d genes near the search frontier on %d further examples: frontier %d -> %d genes",
                 len(points), len(lengths), len(result.frontier), len(frontier))
        summary = {"rescore_examples": len(lengths), "rescored_genes": len(points),
                   "rescore_margin": float(s["rescore_margin"])}
        return batches, frontier, full_macs, summary

    def _write_frontier(self, frontier: list[Point], lengths: torch.Tensor, latency: dict, full_latency: float,
                        summary: dict[str, Any]) -> None:
        """Frontier TSV/JSON (both MACs ratios, measured latency) and the paper's three curves, scored on the
        first report split: the searched frontier, constant ratios on the LengthDrop model and on the
        standard model it started from (``init_from``)."""
        m = self.m
        full_real = self._macs(LengthConfig.full(self.L), lengths)
        paper_full = self.paper_macs(LengthConfig.full(self.L))
        rows = []
        for p in frontier:
            cfg = self.config(p.gene)
            rows.append({"gene": list(p.gene), "config": cfg.describe(), "length_config": cfg.to_dict(), "macs": p.macs,
                         "macs_ratio": self._macs(cfg, lengths) / full_real,
                         "paper_macs_ratio": self.paper_macs(cfg) / paper_full, "search_score": p.score,
                         "ms_per_example": latency.get(p.gene),
                         "speedup": full_latency / latency[p.gene] if p.gene in latency and full_latency else None})
        curves: dict[str, list[tuple[float, float]]] = {}
        if self.s["curves"]:
            split = m.task.test_splits[0]
            batches = self._batches(split, None)
            test_lengths = self._lengths(batches)
            full = self._macs(LengthConfig.full(self.L), test_lengths)
            own = self._scorer(batches, split)

            def point(cfg: LengthConfig, scorer) -> tuple[float, float]:
                return self._macs(cfg, test_lengths) / full, scorer(cfg)

            for r in rows:
                r["macs_ratio_test"], r[f"{split}_score"] = point(self.config(tuple(r["gene"])), own)
            curves["LengthDrop model, searched"] = [(r["macs_ratio_test"], r[f"{split}_score"]) for r in rows]
            qs = [1 - m.p + m.p * i / 7 for i in range(8)] + [0.5, 0.4, 0.3]
            consts = [self.config(self.canonical(constant_ratio_gene(q, self.L, self.ref, m.floor)))
                      for q in sorted(set(qs))]
            curves["LengthDrop model, constant ratio"] = [point(c, own) for c in consts]
            own.cache.release()  # before the next cache fills: one search.cache_mb for the process
            if m.baseline is not None:
                standard = self._scorer(batches, split, m.baseline)
                curves["standard model, constant ratio"] = [point(c, standard) for c in consts]
                standard.cache.release()
            summary["curves_split"] = split
            searched = curves["LengthDrop model, searched"]
            summary["frontier_vs_curves"] = {
                name: compare_to_curve(searched, curve) for name, curve in curves.items() if curve is not searched}
        run_dir = self.run_dir
        (run_dir / "frontier.json").write_text(json.dumps({"frontier": rows, "curves": curves}, indent=2))
        cols = ["gene", *(k for k in rows[0] if k != "gene")] if rows else ["gene"]
        (run_dir / "frontier.tsv").write_text(format_table(rows, cols, sep="\t") or "gene\n")
        if curves:
            from dyntok.evaluation.plots import plot_curves

            plot_curves(curves, run_dir / "frontier.png", xlabel="MACs ratio (vs full model at real length)",
                        ylabel=f"{m.task.main_metric} ({summary.get('curves_split')})",
                        title=f"{m.task.name}: Length-Adaptive Transformer")
