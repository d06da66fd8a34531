"""What a trained model's ``predict`` returns, from PyTorch (:mod:`dyntok.methods.predictor`) or ONNX Runtime
(:mod:`dyntok.export`); numpy only, so a service can read it without torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyntok.errors import ConfigError


def split_pairs(texts: Sequence[Any]) -> tuple[list[str], list[str] | None]:
    """Strings, or (first, second) pairs, as a tokenizer's two arguments (seconds None for strings)."""
    if texts and isinstance(texts[0], (tuple, list)):
        return [t[0] for t in texts], [t[1] for t in texts]
    return list(texts), None


def predict_inputs(texts: Sequence[Any], task: str, text_keys: Sequence[str], problem: str, span_hint: str
                   ) -> tuple[list[str], list[str] | None]:
    """``texts`` given to a ``predict``, checked against the task and split as :func:`split_pairs`.

    Raises:
        ConfigError: a span task (``span_hint`` says what to use instead), no texts, or pairs for a
            single-sentence task or the reverse.
    """
    if problem == "span":
        raise ConfigError(f"predict() serves classification and regression; {span_hint}")
    if not texts:
        raise ConfigError("predict() got no texts")
    firsts, seconds = split_pairs(texts)
    if (seconds is not None) != (len(text_keys) == 2):
        want = "(first, second) pairs" if len(text_keys) == 2 else "single strings"
        raise ConfigError(f"task {task} takes {want} ({', '.join(text_keys)})")
    return firsts, seconds


@dataclass
class Predictions:
    """What :meth:`Predictor.predict` returns, one row per input text, in input order.

    Attributes:
        labels: class names (classification; the task's raw label values) or floats (regression).
        probabilities: (N, num_labels) softmax probabilities; (N,) predicted values for regression.
        macs: (N,) MACs each example cost with the checkpoint's length configuration: the whole task model
            (encoder and head, :func:`dyntok.core.macs.model_macs`).
        full_macs: (N,) the same count for the full model at each example's real length (the baseline):
            ``macs / full_macs`` is the MACs ratio, 1.0 for the full model.
        kept: (N, L) tokens kept after each layer.
        input_lengths: (N,) real tokens of each input (after truncation to the task's ``max_length``).
    """

    labels: list[Any]
    probabilities: np.ndarray
    macs: np.ndarray
    full_macs: np.ndarray
    kept: np.ndarray
    input_lengths: np.ndarray

    @classmethod
    def from_logits(cls, logits: np.ndarray, problem: str, label_names: tuple[str, ...] | None, macs: np.ndarray,
                    full_macs: np.ndarray, kept: np.ndarray, input_lengths: np.ndarray) -> Predictions:
        """Predictions from the head's outputs: (N, num_labels) logits (classification: softmax, the label of
        the largest; ``label_names`` or "0", "1", ... by index) or (N,) values (regression); the other
        arguments as the attributes."""
        if problem == "regression":
            return cls(logits.tolist(), logits, macs, full_macs, kept, input_lengths)
        z = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = z / z.sum(-1, keepdims=True)
        names = label_names or tuple(str(i) for i in range(logits.shape[-1]))
        return cls([names[i] for i in probabilities.argmax(-1)], probabilities, macs, full_macs, kept, input_lengths)
