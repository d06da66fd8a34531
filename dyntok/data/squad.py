"""SQuAD v1.1 data: reading, the split by article, and the sliding windows the span model reads.

- **Data**: SQuAD v1.1 JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]}``) or the hub dataset ``rajpurkar/squad``. Splits are cut by
  article (title), so no paragraph of a held-out article is seen in training: with the official
  ``train-v1.1.json`` and ``dev-v1.1.json`` (or the hub), ``validation`` is ``validation_size`` of the train
  articles and ``test`` is dev; with one file only (the 44-article ``train-v1.1.subset.json``), ``test`` is 10%
  of its articles and ``validation`` ``validation_size`` of them.
- **Windows** (the convention of Hugging Face ``examples/pytorch/question-answering/run_qa.py``): question
  first, context second, only the context truncated; a long context becomes several windows of at most
  ``max_length`` tokens that overlap by ``doc_stride`` tokens. (The original BERT code, and transformers <= 3
  that the LAT code used, took ``doc_stride`` as the step between windows instead of their overlap.) Labels
  are the first answer's start and end token; a window that does not hold the whole answer is labelled
  (0, 0), its [CLS] token.

Post-processing and the official scores: :mod:`dyntok.evaluation.squad`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from dyntok.data.splits import rng_for
from dyntok.errors import ConfigError, DataError

HUB = ("rajpurkar/squad", "plain_text")
FULL_FILES = ("train-v1.1.json", "dev-v1.1.json")
SUBSET_FILE = "train-v1.1.subset.json"
_CHUNK = 2_000  # questions per tokenizer call: bounds the memory of Python offset lists


# ---- examples ---------------------------------------------------------------------------------------


@dataclass
class SquadExamples:
    """The questions of one split, one entry per question (questions on one paragraph share its context).

    ``answers[i]`` holds the (answer_start, text) pairs of question i; the first is the training label,
    all of them are ground truths for the scores.
    """

    ids: list[str]
    titles: list[str]
    questions: list[str]
    contexts: list[str]
    answers: list[list[tuple[int, str]]]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: Sequence[int] | np.ndarray) -> SquadExamples:
        return SquadExamples(*([getattr(self, f.name)[i] for i in idx] for f in fields(self)))

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, text: str) -> SquadExamples:
        d = json.loads(text)
        d["answers"] = [[(int(s), t) for s, t in a] for a in d["answers"]]
        return cls(**d)


def read_squad_json(path: Path) -> SquadExamples:
    """The questions of a SQuAD v1.1 JSON file, in file order.

    Raises:
        DataError: not JSON, not the SQuAD layout, a question without answers (SQuAD 2.0 unanswerable
            questions are not supported), or an answer whose text is not at its ``answer_start``; the
            message names the file, article and question.
    """
    try:
        doc = json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f'{path}: expected SQuAD v1.1 JSON, an object with a "data" list of articles')
    out = SquadExamples([], [], [], [], [])
    for a, article in enumerate(doc["data"]):
        try:
            title = str(article["title"])
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    where = f"{path}: article {a} ({title!r}), question {qa['id']}"
                    answers = [(int(x["answer_start"]), x["text"]) for x in qa["answers"]]
                    _check_answers(where, context, answers)
                    out.ids.append(str(qa["id"]))
                    out.titles.append(title)
                    out.questions.append(qa["question"])
                    out.contexts.append(context)
                    out.answers.append(answers)
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: article {a}: not in the SQuAD v1.1 layout (missing or bad field {e})") from None
    return out


def _check_answers(where: str, context: str, answers: list[tuple[int, str]]) -> None:
    if not answers:
        raise DataError(f"{where}: no answers (SQuAD 2.0 unanswerable questions are not supported)")
    for start, text in answers:
        if context[start : start + len(text)] != text:
            raise DataError(f"{where}: answer {text!r} is not at character {start} of its context")


def load_squad_hub() -> dict[str, SquadExamples]:
    """``{"train", "validation"}`` of the hub dataset ``rajpurkar/squad``.

    Raises:
        DataError: it cannot be loaded (offline without a cache); the message names both data sources.
    """
    name, config = HUB
    try:
        import datasets

        hub = datasets.load_dataset(name, config)
    except Exception as e:  # offline, no cache, hub down: all lead to the same advice
        raise DataError(
            f"no data for task squad: data.data_dir is not set (a local copy is read from "
            f"<data_dir>/squad/{{{', '.join(FULL_FILES)}}} or <data_dir>/squad/{SUBSET_FILE}, SQuAD v1.1 "
            f"JSON), and the hub dataset {name} could not be loaded: {type(e).__name__}: {' '.join(str(e).split())}"
        ) from None
    out = {}
    for split in ("train", "validation"):
        t = hub[split]
        ex = SquadExamples([], [], [], [], [])
        for i, (qid, title, question, context, ans) in enumerate(
            zip(t["id"], t["title"], t["question"], t["context"], t["answers"], strict=True)
        ):
            answers = [(int(s), x) for s, x in zip(ans["answer_start"], ans["text"], strict=True)]
            _check_answers(f"hub {name} {split} row {i} (question {qid})", context, answers)
            ex.ids.append(qid)
            ex.titles.append(title)
            ex.questions.append(question)
            ex.contexts.append(context)
            ex.answers.append(answers)
        out[split] = ex
    return out


def squad_sources(data_dir: str | None) -> dict[str, Any]:
    """Where SQuAD comes from: ``{"train": path, "test": path}`` (official train and dev files),
    ``{"pool": path}`` (one file to split three ways: the subset, or a train file without dev) or
    ``{"hub": [name, config]}`` (no ``data_dir``).

    Raises:
        DataError: ``data_dir`` is set but holds none of the files.
    """
    if data_dir is None:
        return {"hub": list(HUB)}
    layout = f"<data_dir>/squad/{{{', '.join(FULL_FILES)}}} or <data_dir>/squad/{SUBSET_FILE} (SQuAD v1.1 JSON)"
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data.data_dir={data_dir}: no such folder; expected {layout}")
    folder = root / "squad"
    train, dev, subset = (folder / f for f in (*FULL_FILES, SUBSET_FILE))
    pool = train if train.is_file() else subset
    if not pool.is_file():
        raise DataError(f"{folder}: no SQuAD file; expected {layout}")
    return {"train": str(pool), "test": str(dev)} if dev.is_file() else {"pool": str(pool)}


def split_by_article(examples: SquadExamples, sizes: Sequence[int], rng: np.random.Generator) -> list[SquadExamples]:
    """Cut ``examples`` into parts of ``sizes`` articles each (a seeded draw of titles) and a last part with
    the remaining articles; questions keep their file order inside each part."""
    titles = list(dict.fromkeys(examples.titles))
    order = rng.permutation(len(titles))
    bounds = np.cumsum([0, *sizes])
    groups = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)] + [order[bounds[-1] :]]
    part_of = {titles[t]: k for k, group in enumerate(groups) for t in group}
    rows: list[list[int]] = [[] for _ in groups]
    for i, title in enumerate(examples.titles):
        rows[part_of[title]].append(i)
    return [examples.take(r) for r in rows]


def article_count(size: float | int, total: int, key: str) -> int:
    """Articles of a held-out part: a fraction of ``total`` (at least 1) or a count; ConfigError if none
    would be left for training."""
    n = max(1, round(size * total)) if isinstance(size, float) else int(size)
    if not 1 <= n < total:
        raise ConfigError(f"{key}={size!r} gives {n} of {total} SQuAD articles; need at least 1 and fewer than all")
    return n


# ---- windows ----------------------------------------------------------------------------------------


@dataclass
class Windows:
    """Tokenized windows of one split, flat: window i is tokens ``offsets[i]:offsets[i+1]``.

    Attributes:
        input_ids: int32 (n_tokens,); token_type_ids: int8 (n_tokens,) or None.
        offsets: int64 (N + 1,).
        labels: int64 (N, 2), start and end token of the answer inside the window, (0, 0) if it is not in it.
        char_offsets: int32 (n_tokens, 2), each token's [start, end) characters in its context; -1 for
            tokens outside the context (question, special tokens).
        example_index: int64 (N,), the question (row of the split's :class:`SquadExamples`) of each window.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray | None
    offsets: np.ndarray
    labels: np.ndarray
    char_offsets: np.ndarray
    example_index: np.ndarray


def answer_tokens(char_offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """Start and end token of the characters [start_char, end_char) in one window, as ``run_qa.py`` labels
    them; (0, 0) when the window's context does not hold all of them.

    Args:
        char_offsets: (T, 2) of the window, -1 outside the context (see :class:`Windows`).
    """
    ctx = np.flatnonzero(char_offsets[:, 0] >= 0)
    if len(ctx) == 0:
        return 0, 0
    c = char_offsets[ctx]
    if not (c[0, 0] <= start_char and c[-1, 1] >= end_char):
        return 0, 0
    start = ctx[np.searchsorted(c[:, 0], start_char, side="right") - 1]  # last token starting at or before
    end = ctx[np.searchsorted(c[:, 1], end_char, side="left")]  # first token ending at or after
    return int(start), int(end)


def make_windows(tok, examples: SquadExamples, max_length: int, doc_stride: int) -> Windows:
    """Tokenize questions and contexts into overlapping windows with start/end labels (module docstring).

    Needs a fast tokenizer (character offsets). Padding is left to the collator.

    Raises:
        ConfigError: a question so long that a window has no more than ``doc_stride`` context tokens.
    """
    with_types = "token_type_ids" in tok.model_input_names
    specials = tok.num_special_tokens_to_add(pair=True)
    ids_parts, type_parts, char_parts, lengths, labels, owner = [], [], [], [], [], []
    for first in range(0, len(examples), _CHUNK):
        rows = range(first, min(first + _CHUNK, len(examples)))
        questions = [examples.questions[i].lstrip() for i in rows]
        contexts = [examples.contexts[i] for i in rows]
        q_lens = [len(x) for x in tok(questions, add_special_tokens=False)["input_ids"]]
        longest = int(np.argmax(q_lens)) if q_lens else 0
        if q_lens and max_length - specials - q_lens[longest] <= doc_stride:
            raise ConfigError(
                f"data.doc_stride={doc_stride} must be smaller than the context tokens of a window: question "
                f"{examples.ids[first + longest]} has {q_lens[longest]} tokens, which leaves "
                f"{max_length - specials - q_lens[longest]} of data.max_length={max_length}"
            )
        enc = tok(questions, contexts, truncation="only_second", max_length=max_length, stride=doc_stride,
                  return_overflowing_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                  return_token_type_ids=with_types)
        for w, ids in enumerate(enc["input_ids"]):
            ex = first + enc["overflow_to_sample_mapping"][w]
            offs = np.asarray(enc["offset_mapping"][w], dtype=np.int32).reshape(-1, 2)
            offs[[s != 1 for s in enc.sequence_ids(w)]] = -1
            start, text = examples.answers[ex][0]
            labels.append(answer_tokens(offs, start, start + len(text)))
            owner.append(ex)
            lengths.append(len(ids))
            ids_parts.append(np.asarray(ids, dtype=np.int32))
            char_parts.append(offs)
            if with_types:
                type_parts.append(np.asarray(enc["token_type_ids"][w], dtype=np.int8))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])

    def cat(parts: list[np.ndarray], dtype, shape: tuple[int, ...] = (0,)) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(shape, dtype)

    return Windows(
        input_ids=cat(ids_parts, np.int32),
        token_type_ids=cat(type_parts, np.int8) if with_types else None,
        offsets=offsets,
        labels=np.asarray(labels, dtype=np.int64).reshape(-1, 2),
        char_offsets=cat(char_parts, np.int32, (0, 2)),
        example_index=np.asarray(owner, dtype=np.int64),
    )


def read_squad_splits(sources: dict[str, Any], validation_size: float | int, seed: int) -> dict[str, SquadExamples]:
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
    rng = rng_for(seed, "squad/articles")
    if test is not None:
        validation, train = split_by_article(pool, [n_val], rng)
        return {"train": train, "validation": validation, "test": test}
    n_test = article_count(0.1, articles, "the SQuAD test share")
    if n_val + n_test >= articles:
        raise ConfigError(f"data.validation_size={validation_size!r}: {n_val} validation and {n_test} test articles "
                          f"leave none of the {articles} for training")
    validation, test, train = split_by_article(pool, [n_val, n_test], rng)
    return {"train": train, "validation": validation, "test": test}


@dataclass(frozen=True)
class SpanFeatures:
    """What post-processing needs to turn one split's window logits into answers.

    Attributes:
        example_index: (N,) int64, the question of each window.
        token_offsets: (N + 1,) int64, window i's tokens are rows ``token_offsets[i]:token_offsets[i+1]`` of
            ``char_offsets``.
        char_offsets: (n_tokens, 2) int32, characters of each token in its context, -1 outside the context.
        contexts: per question, its context.
        answers: per question, its ground-truth answer texts.
        max_answer_length: longest answer, in tokens.
        n_best: start and end candidates per window.
    """

    example_index: np.ndarray
    token_offsets: np.ndarray
    char_offsets: np.ndarray
    contexts: Sequence[str]
    answers: Sequence[Sequence[str]]
    max_answer_length: int = 30
    n_best: int = 20

    def context_mask(self, index: np.ndarray, width: int) -> np.ndarray:
        """(B, width) bool: which positions of windows ``index`` (B,) are context tokens."""
        first = self.token_offsets[index]
        n = self.token_offsets[index + 1] - first
        pos = np.arange(width)
        rows = first[:, None] + np.minimum(pos[None, :], np.maximum(n[:, None] - 1, 0))
        return (self.char_offsets[rows, 0] >= 0) & (pos[None, :] < n[:, None])

    def answer_text(self, window: int, start: int, end: int) -> str:
        """The context characters from token ``start`` to token ``end`` (inclusive) of ``window``."""
        base = self.token_offsets[window]
        a, b = self.char_offsets[base + start, 0], self.char_offsets[base + end, 1]
        return self.contexts[self.example_index[window]][a:b]
