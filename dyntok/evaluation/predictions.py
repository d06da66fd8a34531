"""What a trained model's ``predict`` returns, from PyTorch (:mod:`dyntok.methods.predictor`) or ONNX Runtime
(:mod:`dyntok.export`); numpy only, so a service can read it without torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dyntok.core.problems import Problem, problem_of
from dyntok.errors import ConfigError


def split_pairs(texts: Sequence[Any]) -> tuple[list[str], list[str] | None]:
    """Strings, or (first, second) pairs, as a tokenizer's two arguments (seconds None for strings)."""
    if texts and isinstance(texts[0], (tuple, list)):
        return [t[0] for t in texts], [t[1] for t in texts]
    return list(texts), None


def _text(value: Any, where: str) -> str:
    """One text of a ``predict`` call, checked as the data readers check theirs (non-empty, valid Unicode)."""
    if not isinstance(value, str):
        raise ConfigError(f"predict(): {where} is {type(value).__name__} {value!r:.40}, expected a string")
    if not value.strip():
        raise ConfigError(f"predict(): {where} is empty (the data readers refuse empty text too)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"predict(): {where} is not valid Unicode ({e.reason} at character {e.start})") from None
    return value


def predict_inputs(texts: str | Sequence[Any], task: str, text_keys: Sequence[str], problem: Problem | str,
                   span_hint: str,
                   batch_size: int = 1) -> tuple[list[str], list[str] | None]:
    """``texts`` given to a ``predict``, checked against the task and split as :func:`split_pairs`: a list of
    strings (a bare string is one text) or of (first, second) pairs; ``batch_size``: the call's batch size.

    Raises:
        ConfigError: a span task (``span_hint`` says what to use instead), no texts, a text that is not a
            non-empty valid Unicode string (naming its index), pairs for a single-sentence task or the reverse,
            or ``batch_size`` < 1.
    """
    if problem_of(problem).windowed:  # a context to window and an answer to locate: evaluate() does that
        raise ConfigError(f"predict() serves classification and regression; {span_hint}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"predict(): batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, dict)) or not isinstance(texts, Sequence):
        raise ConfigError(f"predict(): texts must be a list of strings or of (first, second) pairs, got "
                          f"{type(texts).__name__}")
    if not texts:
        raise ConfigError("predict() got no texts")
    pairs = len(text_keys) == 2
    firsts: list[str] = []
    seconds: list[str] = []
    for i, t in enumerate(texts):
        if isinstance(t, (tuple, list)) != pairs or (pairs and len(t) != 2):
            want = "(first, second) pairs" if pairs else "single strings"
            raise ConfigError(f"predict(): task {task} takes {want} ({', '.join(text_keys)}); texts[{i}] is "
                              f"{type(t).__name__} {t!r:.60}")
        if pairs:
            firsts.append(_text(t[0], f"texts[{i}][0]"))
            seconds.append(_text(t[1], f"texts[{i}][1]"))
        else:
            firsts.append(_text(t, f"texts[{i}]"))
    return firsts, seconds if pairs else None


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
    def from_logits(cls, logits: np.ndarray, problem: Problem | str, label_names: tuple[str, ...] | None, macs: np.ndarray,
                    full_macs: np.ndarray, kept: np.ndarray, input_lengths: np.ndarray) -> Predictions:
        """Predictions from the head's outputs: (N, num_labels) logits (classification: softmax, the label of
        the largest; ``label_names`` or "0", "1", ... by index) or (N,) values (regression); the other
        arguments as the attributes."""
        labels, values = problem_of(problem).readable(logits, label_names)
        return cls(labels, values, macs, full_macs, kept, input_lengths)
