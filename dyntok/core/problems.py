"""Task problem types as objects: what differs between classification, regression and span extraction (start
and end of an answer in a context, SQuAD) is asked of the problem, never switched on its name.

Each problem owns: the head's width and where it reads (the pooled [CLS] state or every position), whether
[CLS] is always kept and whether dropped tokens are restored (Drop-and-Restore, Kim & Cho 2021, Sec. 3.2), the
head's MACs, the exported graph's outputs, what metrics take from the logits and the batch, the task loss and
the distillation loss, and the labels' dtype. :func:`problem_of` maps a name to its object (the one registry).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dyntok.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch


class Problem(ABC):
    """A task's problem type (subclasses below); ``str()`` is its name, as configs and records spell it."""

    name: ClassVar[str]
    pooled: ClassVar[bool] = True
    """The head reads the pooled [CLS] state (else every position's state)."""
    label_dtype: ClassVar[type] = np.int64
    """dtype of the labels the readers store."""
    windowed: ClassVar[bool] = False
    """Inputs are overlapping windows of a longer context (``data.doc_stride``), answers located in them."""

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"problem_of({self.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # one object per name, also after pickling
        return problem_of, (self.name,)

    @property
    def keeps_cls(self) -> bool:
        """[CLS] is never dropped (the pooled head reads it)."""
        return self.pooled

    @abstractmethod
    def head_outputs(self, num_labels: int) -> int:
        """Width of the head's linear layer."""

    def read_label(self, where: str, raw: str, label_names: Sequence[str],
                   label_range: tuple[float, float] | None) -> int | float:
        """A label as a data file spells it (``raw``), as the model trains on it.

        Raises:
            DataError: a label the task does not have (naming ``where``).
        """
        if raw not in label_names:
            allowed = ", ".join(repr(n) for n in label_names)
            raise DataError(f"{where}: label {raw!r} is not one of {allowed}")
        return list(label_names).index(raw)

    def check_label(self, where: str, label: int | float, num_labels: int) -> None:
        """Refuse a label index out of range (hub data, labels already indices).

        Raises:
            DataError: naming ``where``.
        """
        if not 0 <= label < num_labels:
            raise DataError(f"{where}: label {label} is not in 0..{num_labels - 1}")

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """What a stratified split keeps the shares of: the labels themselves."""
        return labels

    def restore(self, restore: str) -> str | None:
        """How the encoder restores dropped tokens (``model.restore``), None where no head reads them."""
        return None

    def head_macs(self, hidden: int, num_labels: int, input_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) float64 MACs after the encoder for inputs of ``input_lengths`` real tokens: pooler d^2 on [CLS]
        and the classifier d * outputs, or (span) a start/end layer 2 * d on every real position."""
        import torch

        n = input_lengths.to(torch.float64).cpu()
        return torch.full_like(n, hidden * hidden + hidden * self.head_outputs(num_labels))

    def finish_logits(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head's raw output as the task model returns it (shapes in :class:`~dyntok.core.model.ModelOutput`)."""
        return logits

    def output_names(self) -> list[str]:
        """Names of the logits among an exported graph's outputs."""
        return ["logits"]

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The logits as the exported graph's outputs named by :meth:`output_names`."""
        return (logits,)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """What the task metrics take from the logits."""
        return logits.float()

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the task metrics compare the predictions with."""
        return batch["labels"]

    @abstractmethod
    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The fine-tuning loss, a scalar."""

    def readable(self, outputs: np.ndarray, label_names: Sequence[str] | None) -> tuple[list[Any], np.ndarray]:
        """What ``predict()`` returns per example from the head's (N, ...) outputs: (labels or values, the
        probabilities or values as an array).

        Raises:
            ConfigError: a problem ``predict()`` does not serve (span: use ``evaluate``).
        """
        raise ConfigError(f"predict() serves classification and regression, not {self.name}")

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor, direction: str = "forward"
                          ) -> torch.Tensor:
        """Distillation of student logits towards detached teacher logits, mean over examples: KL between the
        softmax distributions, ``forward`` = KL(teacher || student) (Yu & Huang 2019), ``reverse`` =
        KL(student || teacher) (what the original LAT code computes).

        Raises:
            ConfigError: an unknown ``direction`` (naming ``method.kd_direction``).
        """
        from torch.nn import functional as F

        log_s = F.log_softmax(student.float(), -1)
        log_t = F.log_softmax(teacher.detach().float(), -1)
        if direction == "forward":
            return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
        if direction == "reverse":
            return F.kl_div(log_t, log_s, log_target=True, reduction="batchmean")
        raise ConfigError(f"method.kd_direction must be 'forward' or 'reverse', got {direction!r}")


class Classification(Problem):
    """One of ``num_labels`` classes from the pooled [CLS] state; logits (B, C), labels int (B,)."""

    name = "classification"

    def head_outputs(self, num_labels: int) -> int:
        return num_labels

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def readable(self, outputs: np.ndarray, label_names: Sequence[str] | None) -> tuple[list[Any], np.ndarray]:
        """The label of the largest logit (``label_names`` or "0", "1", ... by index) and the softmax (N, C)."""
        z = np.exp(outputs - outputs.max(-1, keepdims=True))
        probabilities = z / z.sum(-1, keepdims=True)
        names = label_names or tuple(str(i) for i in range(outputs.shape[-1]))
        return [names[i] for i in probabilities.argmax(-1)], probabilities

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.cross_entropy(logits.float(), labels)


class Regression(Problem):
    """One value from the pooled [CLS] state (STS-B); logits and labels float (B,)."""

    name = "regression"
    label_dtype = np.float32

    def head_outputs(self, num_labels: int) -> int:
        return 1

    def read_label(self, where: str, raw: str, label_names: Sequence[str],
                   label_range: tuple[float, float] | None) -> float:
        """The target as a number within ``label_range``.

        Raises:
            DataError: not a number, or out of range (naming ``where``).
        """
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        lo, hi = label_range or (-math.inf, math.inf)
        if not lo <= value <= hi:  # also catches nan
            raise DataError(f"{where}: label {raw!r} is not a number in [{lo:g}, {hi:g}]")
        return value

    def check_label(self, where: str, label: int | float, num_labels: int) -> None:
        """Any number."""

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """Five quantile bins of the target."""
        edges = np.quantile(labels, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, labels, side="right")

    def finish_logits(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        return F.mse_loss(logits.float(), labels.float())

    def readable(self, outputs: np.ndarray, label_names: Sequence[str] | None) -> tuple[list[Any], np.ndarray]:
        """The (N,) values, as a list and as the array."""
        return outputs.tolist(), outputs

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor, direction: str = "forward"
                          ) -> torch.Tensor:
        """Mean squared error to the teacher's values (``direction`` has no meaning here)."""
        from torch.nn import functional as F

        return F.mse_loss(student.float(), teacher.detach().float())


class Span(Problem):
    """Start and end of an answer: a start/end logit per position (B, T, 2), padding at the dtype's minimum;
    labels (B, 2). Every position's final state is read, so dropped tokens are restored."""

    name = "span"
    pooled = False
    windowed = True

    def head_outputs(self, num_labels: int) -> int:
        return 2

    def restore(self, restore: str) -> str | None:
        return restore

    def head_macs(self, hidden: int, num_labels: int, input_lengths: torch.Tensor) -> torch.Tensor:
        import torch

        return 2 * float(hidden) * input_lengths.to(torch.float64).cpu()

    def finish_logits(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pad = ~attention_mask.bool()
        import torch

        return logits.masked_fill(pad.unsqueeze(-1), torch.finfo(logits.dtype).min)

    def output_names(self) -> list[str]:
        return ["start_logits", "end_logits"]

    def split_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return logits[..., 0], logits[..., 1]

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        """The windows' ``index``: the span metric maps windows back to their questions."""
        return batch["index"]

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean of the start and end cross-entropies over positions."""
        from torch.nn import functional as F

        return (F.cross_entropy(logits[..., 0].float(), labels[:, 0])
                + F.cross_entropy(logits[..., 1].float(), labels[:, 1])) / 2

    def distillation_loss(self, student: torch.Tensor, teacher: torch.Tensor, direction: str = "forward"
                          ) -> torch.Tensor:
        """One distribution over positions per start and end: (B, T, 2) -> (2B, T), then the KL."""
        flat = [x.float().transpose(1, 2).reshape(-1, x.size(1)) for x in (student, teacher)]
        return super().distillation_loss(*flat, direction=direction)


PROBLEMS: dict[str, Problem] = {p.name: p for p in (Classification(), Regression(), Span())}


def problem_of(problem: str | Problem) -> Problem:
    """The problem object of a name (or the object itself).

    Raises:
        ConfigError: an unknown name.
    """
    if isinstance(problem, Problem):
        return problem
    try:
        return PROBLEMS[problem]
    except (KeyError, TypeError):
        raise ConfigError(f"problem must be one of {', '.join(PROBLEMS)}, got {problem!r}") from None
