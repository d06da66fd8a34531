"""Tokenized splits, the padding of batches, and the samplers that order them.

A batch is a dict of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) long, padded
on the right to the longest example of the batch; ``labels`` (B,) long (classification), float32
(regression) or (B, 2) long (span start/end); ``index`` (B,) long, each example's position in its split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dyntok.data.splits import rng_for
from dyntok.data.squad import SquadExamples, Windows


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
    question of each window and the questions themselves (:class:`dyntok.data.squad.Windows`).

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

    ``pad_token_id``: an id, or a tokenizer (its pad id; 0 where it has none: padded positions are masked
    out, so any id works).

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) long (token types are zeros when the
    tokenizer has none), ``labels`` (B,) long or float32 (``regression=True``), ``index`` (B,) long.
    """

    def __init__(self, pad_token_id: Any, regression: bool = False):
        if not isinstance(pad_token_id, int):
            pad_token_id = getattr(pad_token_id, "pad_token_id", None)
            pad_token_id = 0 if pad_token_id is None else pad_token_id
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


def batches_from_texts(tokenizer: Any, firsts: list[str], seconds: list[str] | None, max_length: int,
                       batch_size: int, sort_by_length: bool = True) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """Tokenise raw texts (pairs when ``seconds`` is given), truncating at ``max_length`` tokens, and cut them
    into batches padded by :class:`PadCollator`, longest first when ``sort_by_length`` (less padding).

    Returns:
        the batches (``index`` holds each example's position in ``firsts``; ``labels`` are zeros), and the
        (N,) real token count of every input, in input order.
    """
    enc = tokenizer(list(firsts), None if seconds is None else list(seconds), truncation=True, max_length=max_length)
    lengths = np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(lengths))
    collate, types = PadCollator(tokenizer), enc.get("token_type_ids")
    batches = [collate([{"input_ids": enc["input_ids"][i], "labels": 0, "index": int(i),
                         "token_type_ids": types[i] if types is not None else None}
                        for i in order[start : start + batch_size]])
               for start in range(0, len(order), batch_size)]
    return batches, lengths


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
        rng = rng_for(self.seed, f"buckets/{self.epoch}")
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
