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
from dyntok.core.problems import Problem, problem_of

Batch = dict[str, Any]


def update_metrics(metrics, logits: torch.Tensor, batch: Batch, problem: Problem | str) -> None:
    """Feed one batch to ``metrics``: the problem's predictions (argmax classes (B,), float values (B,), span
    start/end logits (B, T, 2) as they are) against its targets (the batch's ``labels``; span tasks: its
    windows' ``index``, which the metric maps back to questions)."""
    problem = problem_of(problem)
    metrics.update(problem.predictions(logits), problem.targets(batch))


@torch.inference_mode()
def evaluate(forward: Callable[[Batch], Any], batches: Iterable[Batch], metrics, macs: MacsReport, problem: Problem | str,
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
