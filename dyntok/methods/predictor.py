"""Using a trained checkpoint: ``dyntok.load(path).predict(texts)``, and evaluating it on any split.

A dyntok checkpoint carries what this needs: the run's config, the backbone's architecture, the tokenizer's
files and the method's state (gates, or the length configuration the search chose). Nothing is downloaded.

    >>> import dyntok
    >>> model = dyntok.load("outputs/sst2/gates/<run>/checkpoints/last.ckpt")
    >>> out = model.predict(["a gorgeous, witty film", "dull and long"])
    >>> out.labels, out.probabilities.shape, out.macs   # classes, (2, num_labels), MACs per example
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import MacsReport, model_macs
from dyntok.data.batches import batches_from_texts
from dyntok.data.config import DataConfig
from dyntok.errors import CheckpointError, ConfigError
from dyntok.evaluation.evaluate import evaluate
from dyntok.evaluation.predictions import Predictions, predict_inputs
from dyntok.methods.checkpoint import read_checkpoint


class Predictor:
    """A trained model ready for inference with its learned or searched length configuration.

    Build it with :func:`load`. ``length_config`` overrides the checkpoint's configuration (a ratio, a
    per-layer list or a :class:`~dyntok.core.lengths.LengthConfig`); ``None`` uses the checkpoint's own.
    """

    def __init__(self, module, tokenizer, meta: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.module = module.to(device).eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.task = module.task
        self.device = torch.device(device)
        self.config: dict[str, Any] = meta.get("config") or {}
        self.max_length = int((self.config.get("task") or {}).get("max_length") or DataConfig.max_length)

    @property
    def length_config(self) -> LengthConfig | None:
        """The configuration the checkpoint infers with (None: every token, or per-example gate lengths)."""
        return self.module.reported_length_config()

    def forward(self, batch: dict[str, torch.Tensor], length_config=None):
        """The module's :meth:`~dyntok.methods.base.TaskModule.infer` on a collated batch, with
        ``length_config`` (any form :meth:`LengthConfig.parse` reads) or the checkpoint's own rule.

        ``length_config`` may also be a :class:`~dyntok.core.gates.RankGates`, e.g. another gates run's
        ``dyntok.load(ckpt).module.gates``: this model then runs with those hard gates (layer j keeps the
        ranks, by this model's significance scores, whose gate is open), which separates what a learned
        configuration is worth from how well that run's encoder adapted to it.

        Raises:
            ConfigError: a bad ``length_config``, or rank gates for another depth.
        """
        from dyntok.core.gates import RankGates

        L = self.module.model.num_layers
        if isinstance(length_config, RankGates):
            if length_config.num_layers != L:
                raise ConfigError(f"length_config: rank gates for {length_config.num_layers} layers, the model has {L}")
            return self.module(batch, keep_by_rank=length_config.to(self.device).batch_open_table(batch))
        cfg = None
        if length_config is not None:
            cfg = LengthConfig.parse(length_config, L, "length_config")
        return self.module.infer(batch, cfg)

    @torch.inference_mode()
    def predict(self, texts: str | list[str] | list[tuple[str, str]], batch_size: int = 64,
                length_config: Any = None) -> Predictions:
        """Classify (or score) ``texts``: strings (a bare string is one text), or (first, second) pairs for
        sentence-pair tasks.

        Batches are sorted by length (less padding); the results come back in input order.

        Raises:
            ConfigError: a span task (use :meth:`evaluate`), pairs for a single-sentence task or the
                reverse, no texts, a text that is empty, not a string or not valid Unicode, ``batch_size`` < 1,
                or a bad ``length_config``.
        """
        firsts, seconds = predict_inputs(texts, self.task.name, self.task.text_keys, self.task.problem,
                                         "evaluate span QA with evaluate()", batch_size)
        n = len(firsts)
        batches, n_tok = batches_from_texts(self.tokenizer, firsts, seconds, self.max_length, batch_size)
        dims, problem = self.module.dims, self.task.problem
        L = self.module.model.num_layers
        logits: list[np.ndarray | None] = [None] * n
        macs, full, kept = np.zeros(n), np.zeros(n), np.zeros((n, L), dtype=np.int64)
        for batch in batches:
            idx = batch.pop("index").numpy()
            out = self.forward({k: v.to(self.device) for k, v in batch.items()}, length_config)
            n, k_ = out.encoder.input_lengths.cpu(), out.encoder.kept.cpu()
            m = model_macs(dims, n, k_, problem, inputs=out.encoder.inputs).numpy()
            f = model_macs(dims, n, n.unsqueeze(1).expand(-1, L), problem).numpy()
            z = out.logits.float().cpu().numpy()
            for row, i in enumerate(idx):
                logits[i], macs[i], full[i], kept[i] = z[row], m[row], f[row], k_[row].numpy()
        return Predictions.from_logits(np.stack(logits), problem, self.task.label_names or None, macs, full, kept,
                                       n_tok)

    def datamodule(self, data_dir: str | None = None):
        """The run's :class:`~dyntok.data.DynTokDataModule` (its ``data`` config, this tokenizer), reading
        ``data_dir`` instead of the run's when given."""
        from dyntok.data import DynTokDataModule

        data_cfg = {k: v for k, v in (self.config.get("data") or {}).items() if k != "_target_"}
        if data_dir is not None:
            data_cfg["data_dir"] = data_dir
        dm = DynTokDataModule(**data_cfg)
        dm.use_tokenizer(self.tokenizer)
        return dm

    def evaluate(self, split: str = "test", data_dir: str | None = None, batch_size: int | None = None,
                 length_config: Any = None, max_examples: int | None = None, datamodule=None,
                 batches: list[dict[str, torch.Tensor]] | None = None, transform=None) -> dict[str, float]:
        """The task metrics and MACs (:func:`dyntok.evaluation.evaluate.evaluate`) of this checkpoint on one
        split of its task (any split the DataModule has: ``train``, ``validation``, ``test``, ...), with its
        length configuration. ``datamodule``: one from :meth:`datamodule` to reuse across calls (else a new
        one reads ``data_dir``); ``batches``: that split's batches, already loaded; ``transform``: a change to
        each batch before the forward (e.g. truncation; MACs still count against the whole input).

        Raises:
            ConfigError / DataError: an unknown split, or data that cannot be found (give ``data_dir``).
        """
        dm = datamodule if datamodule is not None else self.datamodule(data_dir)
        metrics = self.module.split_metrics(split, dm, prefix="").to(self.device)
        rep = MacsReport(dims=self.module.dims, max_length=self.max_length, problem=self.task.problem)
        if batches is None:
            batches = dm.dataloader(split, batch_size=batch_size, max_examples=max_examples)
        return evaluate(lambda b: self.forward(b, length_config), batches, metrics, rep, self.task.problem,
                        self.device, transform)


# what a tokenizer's save_pretrained writes: plain names (no folder, no leading dot) of these kinds
_TOKENIZER_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.(json|txt|model|jinja|tiktoken)")


def tokenizer_files_checked(files: dict[Any, Any], path: str) -> dict[str, bytes]:
    """A checkpoint's ``tokenizer_files`` (name -> bytes), each name a plain file name a tokenizer writes.

    Raises:
        CheckpointError: a name with a folder, ``..``, a leading dot or another kind of file, or contents
            that are not bytes (naming ``path`` and the entry); nothing is written then.
    """
    for name, data in files.items():
        if not isinstance(name, str) or not _TOKENIZER_FILE.fullmatch(name) or ".." in name:
            raise CheckpointError(f"{path}: refused: tokenizer file name {name!r} is not a plain tokenizer file name "
                                  "(letters, digits, '_', '-', '.', ending .json, .txt, .model, .jinja or .tiktoken)")
        if not isinstance(data, bytes):
            raise CheckpointError(f"{path}: tokenizer file {name!r} holds {type(data).__name__}, expected bytes")
    return files


def _tokenizer_from(meta: dict[str, Any], path: str):
    """The tokenizer a checkpoint stores (its files, written to a temporary folder removed at once), else the
    one its run config names."""
    from transformers import AutoTokenizer

    files = meta.get("tokenizer_files")
    if files:
        files = tokenizer_files_checked(files, path)
        with tempfile.TemporaryDirectory(prefix="dyntok-tokenizer-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            return AutoTokenizer.from_pretrained(tmp)  # a fast tokenizer holds everything in memory
    from dyntok.core.model import resolve_pretrained

    name = ((meta.get("config") or {}).get("model") or {}).get("tokenizer")
    if not name:
        raise CheckpointError(f"{path}: checkpoint carries no tokenizer (files or name)")
    return AutoTokenizer.from_pretrained(resolve_pretrained(name))


def load(path: str | Path, device: str | torch.device = "cpu", trust_checkpoint: bool = False) -> Predictor:
    """Load a dyntok checkpoint (a ``.ckpt`` file, or a run folder: its best, else last checkpoint).

    The model is rebuilt from the architecture stored in the checkpoint, so no pretrained weights are
    downloaded; the tokenizer comes from the files stored with it. Only dyntok's own methods are built (the
    method name the checkpoint records), and only plain tokenizer file names are accepted.

    Raises:
        UntrustedCheckpointError: the file holds more than tensors and plain data (``trust_checkpoint=True``
            loads it anyway).
        CheckpointError: not a dyntok checkpoint, one without its run config, or one naming a method or
            tokenizer file dyntok does not accept.
    """
    from omegaconf import OmegaConf

    from dyntok.data.tasks import get_task
    from dyntok.methods.build import build_method, build_model
    from dyntok.methods.checkpoint import restore, stored_run_config

    state = read_checkpoint(path, trust_checkpoint)
    meta = state["dyntok"]
    cfg = OmegaConf.create(stored_run_config(state))
    tokenizer = _tokenizer_from(meta, state["path"])  # checked before anything is built
    task = get_task(meta["task"])
    # the architecture stored in the checkpoint (none in the oldest ones: the pretrained source it names)
    model = build_model(cfg.model, task, backbone_config=meta.get("backbone_config"))
    module = build_method(cfg, model, task)
    restore(module, state, state["path"], strict=False)
    return Predictor(module, tokenizer, meta, device)
