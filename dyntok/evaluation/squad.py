"""SQuAD v1.1 post-processing and the official scores, as a torchmetrics metric over window logits.

- **Post-processing** (as ``run_qa.py``'s ``postprocess_qa_predictions`` for v1.1): in every window the
  ``n_best`` highest start and end logits over context tokens; each pair with start <= end and at most
  ``max_answer_length`` tokens scores start + end logit; a question's answer is the best pair over all its
  windows, cut out of the context through the tokens' character offsets. One difference: positions outside
  the context are masked before the top-``n_best`` is taken (``run_qa.py`` takes it over all positions and
  then drops them), so they cannot use up candidate slots.
- **Scores**: exact match and F1 exactly as the official evaluation script for SQuAD v1.1 defines them
  (``evaluate-v1.1.py``, Rajpurkar et al. 2016, distributed at https://rajpurkar.github.io/SQuAD-explorer/):
  answers normalised (lower case, punctuation and the articles a/an/the removed, whitespace collapsed), F1 over
  bags of tokens, the maximum over the ground-truth answers, averaged over questions. dyntok reports them as
  fractions in [0, 1], like its other metrics; the script prints 100 times these.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from dyntok.data.squad import SpanFeatures

# ---- the official scores ------------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (evaluate-v1.1.py)."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-bag F1 of two answers after :func:`normalize_answer` (evaluate-v1.1.py)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """Equal after :func:`normalize_answer` (evaluate-v1.1.py)."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def squad_scores(predictions: Sequence[str], ground_truths: Sequence[Sequence[str]]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` averaged over questions, each the max over its ground truths, in [0, 1]
    (evaluate-v1.1.py's ``evaluate`` divided by 100); NaN for no questions."""
    n = len(predictions)
    if n == 0:
        return {"exact_match": float("nan"), "f1": float("nan")}
    em = sum(max(exact_match_score(p, g) for g in gts) for p, gts in zip(predictions, ground_truths, strict=True))
    f1 = sum(max(f1_score(p, g) for g in gts) for p, gts in zip(predictions, ground_truths, strict=True))
    return {"exact_match": em / n, "f1": f1 / n}


# ---- post-processing and the metric ---------------------------------------------------------------------


def best_spans(logits: torch.Tensor, context: torch.Tensor, max_answer_length: int = 30,
               n_best: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best answer span of each window (module docstring).

    Args:
        logits: (B, T, 2) start and end logits.
        context: (B, T) bool, context tokens (answers may start and end only there).

    Returns:
        start, end (B,) long token positions and score (B,) float, start + end logit; -inf (and
        positions 0) where no pair is valid.
    """
    neg = float("-inf")
    s = logits[..., 0].float().masked_fill(~context, neg)
    e = logits[..., 1].float().masked_fill(~context, neg)
    k = min(n_best, s.size(1))
    sv, si = s.topk(k, dim=1)
    ev, ei = e.topk(k, dim=1)
    score = sv[:, :, None] + ev[:, None, :]  # (B, k starts, k ends)
    length = ei[:, None, :] - si[:, :, None] + 1
    ok = (length >= 1) & (length <= max_answer_length) & torch.isfinite(score)
    best, flat = score.masked_fill(~ok, neg).flatten(1).max(1)  # first maximum: start rank, then end rank
    start = si.gather(1, (flat // k)[:, None]).squeeze(1)
    end = ei.gather(1, (flat % k)[:, None]).squeeze(1)
    valid = torch.isfinite(best)
    return start.where(valid, 0), end.where(valid, 0), best


class SquadMetric(torchmetrics.Metric):
    """Exact match and F1 of SQuAD v1.1 over the questions of one split, from window logits.

    :meth:`bind` the split's :class:`SpanFeatures` first. ``update(logits (B, T, 2), index (B,))`` keeps the
    best span of each window (``index`` = window number in the split); ``compute()`` picks each question's
    best span over its windows, cuts the text out of the context and scores it (:func:`squad_scores`) over
    every question at least one of whose windows was seen. States are concatenated across DDP processes.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("window", "start", "end", "score"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.features: SpanFeatures | None = None

    def bind(self, features: SpanFeatures) -> SquadMetric:
        """Use ``features`` (the windows and questions of the split this metric scores)."""
        self.features = features
        return self

    def _bound(self) -> SpanFeatures:
        if self.features is None:
            raise RuntimeError("SquadMetric is not bound to a split: call bind(datamodule.span_features(split))")
        return self.features

    def update(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        f = self._bound()
        mask = f.context_mask(index.cpu().numpy(), logits.size(1))
        start, end, score = best_spans(logits, torch.from_numpy(mask).to(logits.device), f.max_answer_length,
                                       f.n_best)
        self.window.append(index.long())
        self.start.append(start)
        self.end.append(end)
        self.score.append(score)

    def answers(self) -> dict[int, str]:
        """This process's predicted answer per question seen (question row -> text; "" if no valid span)."""
        f = self._bound()
        if isinstance(self.window, list) and not self.window:
            return {}
        cols = [dim_zero_cat(x).cpu().numpy() for x in (self.window, self.start, self.end, self.score)]
        window, start, end, score = cols
        best: dict[int, tuple[float, int]] = {}
        seen: dict[int, str] = {}
        for k in np.argsort(window, kind="stable"):  # window order: ties go to the earlier window
            q = int(f.example_index[window[k]])
            seen.setdefault(q, "")
            if np.isfinite(score[k]) and (q not in best or score[k] > best[q][0]):
                best[q] = (float(score[k]), int(k))
        for q, (_, k) in best.items():
            seen[q] = f.answer_text(int(window[k]), int(start[k]), int(end[k]))
        return seen

    def compute(self) -> dict[str, torch.Tensor]:
        f = self._bound()
        answers = self.answers()
        qs = sorted(answers)
        scores = squad_scores([answers[q] for q in qs], [f.answers[q] for q in qs])
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in scores.items()}


def bind_span_metrics(metrics: torchmetrics.MetricCollection, features: SpanFeatures) -> torchmetrics.MetricCollection:
    """Bind every :class:`SquadMetric` of ``metrics`` to ``features``; returns ``metrics``."""
    for m in metrics.values(copy_state=False):
        if isinstance(m, SquadMetric):
            m.bind(features)
    return metrics
