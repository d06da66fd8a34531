"""GLUE's metrics where torchmetrics differs from GLUE's own scorer in degenerate cases.

GLUE scores with scikit-learn (``matthews_corrcoef``, ``f1_score``) and SciPy (``pearsonr``, ``spearmanr``).
torchmetrics 1.9 agrees with them except where a correlation is undefined (a constant side):

- Matthews correlation: for constant predictions, or labels of a single class, scikit-learn returns 0.0;
  torchmetrics' binary metric returns 0.13 on 10 examples (0.0256 on CoLA dev) and 1.0 when predictions
  and labels are all one class. A collapsed classifier is common on CoLA and under heavy token dropping,
  so the figure matters.
- Spearman correlation: for constant predictions SciPy returns NaN (undefined); torchmetrics returns 0.0.

Pearson (NaN for a constant side in both), accuracy and F1 (0.0 without positives in both) agree and come
from torchmetrics as they are.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torchmetrics
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr
from torchmetrics.utilities import dim_zero_cat

from dyntok.errors import ConfigError


def matthews_from_confusion(confmat: torch.Tensor) -> torch.Tensor:
    """Matthews correlation coefficient of a (C, C) confusion matrix (rows: true class, columns: predicted),
    the multiclass form of Gorodkin (2004) as ``sklearn.metrics.matthews_corrcoef`` computes it:

        (c * s - t . p) / sqrt((s^2 - p . p) (s^2 - t . t))

    with c correct predictions, s examples, t and p the true and predicted counts per class; 0.0 where a
    factor under the root is 0 (a constant side). Returns a float64 scalar.
    """
    c = confmat.to(torch.float64)
    t, p = c.sum(1), c.sum(0)
    s, correct = c.sum(), c.trace()
    cov_tp = correct * s - t @ p
    cov_pp = s * s - p @ p
    cov_tt = s * s - t @ t
    denom = cov_pp * cov_tt
    return torch.where(denom > 0, cov_tp / denom.clamp(min=1).sqrt(), torch.zeros_like(denom))


class MatthewsCorrCoef(tmc.MulticlassConfusionMatrix):
    """Matthews correlation as GLUE scores it (:func:`matthews_from_confusion`), for 2 or more classes.

    ``update(preds, target)``: int class indices (B,), as every classification metric here. The state is
    torchmetrics' confusion matrix, summed over DDP processes.
    """

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(num_classes=num_classes, **kwargs)

    def compute(self) -> torch.Tensor:
        return matthews_from_confusion(super().compute())


class SpearmanCorrCoef(tmr.SpearmanCorrCoef):
    """Spearman's rank correlation (average ranks for ties, as ``scipy.stats.spearmanr``); NaN where the
    predictions or the targets are constant, as SciPy (torchmetrics returns 0.0 there)."""

    def compute(self) -> torch.Tensor:
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        if preds.numel() < 2 or bool((preds == preds[0]).all()) or bool((target == target[0]).all()):
            return torch.tensor(float("nan"))
        return super().compute()


def task_metrics(task, prefix: str = "", sync_on_compute: bool = True) -> torchmetrics.MetricCollection:
    """A fresh collection of ``task``'s metrics (a :class:`~dyntok.data.tasks.TaskSpec`), keyed ``prefix +
    name`` (e.g. ``"val/accuracy"``).

    ``sync_on_compute=False`` for metrics one process computes alone (e.g. the search on rank zero), which
    must not wait for the other DDP ranks.

    Inputs follow :mod:`dyntok.data.tasks`' convention: classification ``preds`` int (B,) from
    ``argmax(-1)`` and ``target`` long (B,); regression ``preds`` and ``target`` float (B,). Binary F1 and MCC
    treat label index 1 as the positive class (GLUE convention).

    Raises:
        ConfigError: the task asks for a metric its problem type does not have.
    """
    metrics = _METRICS[task.problem.name](task, sync_on_compute=sync_on_compute)
    return torchmetrics.MetricCollection(metrics, prefix=prefix)


def _classification(spec, **kw) -> dict[str, torchmetrics.Metric]:
    """GLUE's scorer's value in every case, degenerate ones included (module docstring); binary metrics take
    int preds in {0, 1} as they are (no threshold on probabilities)."""
    binary = spec.num_labels == 2
    build = {"accuracy": lambda: tmc.BinaryAccuracy(**kw) if binary else
             # micro average = plain accuracy; torchmetrics' multiclass default is macro
             tmc.MulticlassAccuracy(num_classes=spec.num_labels, average="micro", **kw),
             "mcc": lambda: MatthewsCorrCoef(num_classes=spec.num_labels, **kw)}
    if binary:
        build["f1"] = lambda: tmc.BinaryF1Score(**kw)
    return {name: _pick(spec, build, name)() for name in spec.metric_names}


def _regression(spec, **kw) -> dict[str, torchmetrics.Metric]:
    def spearman() -> torchmetrics.Metric:
        with warnings.catch_warnings():  # it keeps all preds; fine for STS-B's 1,500 pairs
            warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save")
            return SpearmanCorrCoef(**kw)

    build = {"pearson": lambda: tmr.PearsonCorrCoef(**kw), "spearman": spearman}
    return {name: _pick(spec, build, name)() for name in spec.metric_names}


def _span(spec, **kw) -> dict[str, torchmetrics.Metric]:
    """One metric post-processes the windows and reports all of its names (exact match, F1)."""
    from dyntok.evaluation.squad import SquadMetric

    return {"squad": SquadMetric(**kw)}


def _pick(spec, build: dict[str, Any], name: str) -> Any:
    if name not in build:
        raise ConfigError(f"task {spec.name!r}: no metric {name!r} for a {spec.problem} task")
    return build[name]


# each problem's metrics, by the problem's name
_METRICS = {"classification": _classification, "regression": _regression, "span": _span}
