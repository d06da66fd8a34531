"""SQuAD v1.1 span question answering: reading, article splits, sliding windows, post-processing, scores.

- **Data**: SQuAD v1.1 JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]}``) or the hub dataset ``rajpurkar/squad``. Splits are cut by
  article (title), so no paragraph of a held-out article is seen in training.
- **Windows** (the convention of Hugging Face ``examples/pytorch/question-answering/run_qa.py``): question
  first, context second, only the context truncated; a long context becomes several windows of at most
  ``max_length`` tokens that overlap by ``doc_stride`` tokens. (The original BERT code, and transformers <= 3
  that the LAT code used, took ``doc_stride`` as the step between windows instead of their overlap.) Labels
  are the first answer's start and end token; a window that does not hold the whole answer is labelled
  (0, 0), its [CLS] token.
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

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

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

    @classmethod
    def concat(cls, parts: Sequence[SquadExamples]) -> SquadExamples:
        return cls(*([x for p in parts for x in getattr(p, f.name)] for f in fields(cls)))


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
