"""The one evaluation step and loop: task metrics, MACs and kept tokens over batches.

Lightning's validation and test steps call :func:`update_metrics` and
:meth:`~dyntok.core.macs.MacsReport.update_from`; :func:`evaluate` is the whole loop for
``dyntok.load(...).evaluate``, ``dyntok.compare`` and anything else outside a Trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from dyntok.core.macs import MacsReport

Batch = dict[str, Any]


def predictions(logits: torch.Tensor, problem: str) -> torch.Tensor:
    """What the task metrics take from the logits: argmax classes (B,) for classification, float values (B,)
    for regression, span start/end logits (B, T, 2) as they are (answers are picked per question when the
    metric is computed)."""
    return logits.float() if problem in ("regression", "span") else logits.argmax(-1)


def update_metrics(metrics, logits: torch.Tensor, batch: Batch, problem: str) -> None:
    """Feed one batch to ``metrics``: :func:`predictions` against the batch's ``labels`` (span tasks: its
    windows' ``index``; the metric maps windows back to questions)."""
    target = batch["index"] if problem == "span" else batch["labels"]
    metrics.update(predictions(logits, problem), target)


@torch.inference_mode()
def evaluate(forward: Callable[[Batch], Any], batches: Iterable[Batch], metrics, macs: MacsReport, problem: str,
             device: torch.device | str = "cpu", transform: Callable[[Batch], Batch] | None = None
             ) -> dict[str, float]:
    """Run ``forward`` over ``batches`` and return the metrics' values with the MACs statistics
    (:meth:`MacsReport.compute`: ``macs_ratio``, ``padded_macs_ratio``, kept tokens, ``examples``).

    ``transform``: changes each batch before the forward (e.g. truncation); MACs are then counted against
    the full model on the batch as it came.
    """
    for batch in batches:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        run = transform(batch) if transform is not None else batch
        out = forward(run)
        update_metrics(metrics, out.logits, run, problem)
        macs.update_from(out.encoder, batch["attention_mask"].sum(1) if transform is not None else None)
    vals = {k: float(v) for k, v in metrics.compute().items()}
    vals.update(macs.compute())
    return vals
