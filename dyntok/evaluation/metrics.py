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

import torch
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr
from torchmetrics.utilities import dim_zero_cat


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
