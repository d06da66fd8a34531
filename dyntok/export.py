"""Export a trained model to ONNX with its length configuration inside, and serve it from ONNX Runtime.

    python -m dyntok.export outputs/sst2/lengthdrop/<run> --out exported/sst2
    python -m dyntok.export <run> --out exported/sst2_half --length-config 1,1,0.5,0.5,0.5,0.5

    >>> from dyntok.export import OnnxPredictor
    >>> OnnxPredictor("exported/sst2").predict(["a gorgeous, witty film"]).labels

``DIR/model.onnx`` (weights in ``model.onnx.data`` beside it) is :class:`dyntok.core.graph.InferenceGraph`:
inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the encoder reads them), int64 of
dynamic batch and sequence size; outputs ``logits`` (span: ``start_logits``, ``end_logits``), ``kept``,
``macs`` and ``full_macs``. The tokenizer's files and ``dyntok_export.json`` (task, labels, ``max_length``,
length configuration, MACs ratio, the parity check of the export, versions) lie beside it.

:class:`OnnxPredictor` needs numpy, onnxruntime and the tokenizer (``transformers``) only: no torch.
Exporting needs the ``export`` extra (``pip install "dyntok[export]"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dyntok.core.problems import Problem, problem_of
from dyntok.errors import ConfigError, DyntokError, user_message
from dyntok.evaluation.predictions import Predictions, predict_inputs, split_pairs

META_FILE = "dyntok_export.json"
MODEL_FILE = "model.onnx"
EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
# sample texts of several lengths for the check every export runs
_PARITY_TEXTS = ("a gorgeous, witty, seductive movie.", "dull.",
                 "the film is strictly routine, with a plot that anyone could predict from the first scene "
                 "and characters that never become more than the sum of their tics.",
                 "it is a funny, heartfelt and surprisingly moving story about growing up.")


def _require(*packages: str) -> None:
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not installed: pip install \"dyntok[export]\" "
                          f"(onnx, onnxruntime and onnxscript at the versions dyntok pins)")


def export(source: str | Path, out: str | Path, length_config: Any = None, trust_checkpoint: bool = False,
           atol: float = 1e-4) -> dict[str, Any]:
    """Export a checkpoint or run folder to ``out`` (see the module docstring) and check the ONNX graph
    against dyntok's PyTorch inference on a few texts.

    Args:
        source: a ``.ckpt`` or a run folder (as :func:`dyntok.load` takes).
        out: the folder to write (created; files of an earlier export are replaced).
        length_config: a configuration to use instead of the checkpoint's own rule (any form
            :meth:`dyntok.core.lengths.LengthConfig.parse` reads: ``0.5``, ``"1,1,0.5,0.5,0.5,0.5"``, ...);
            None keeps the checkpoint's: its searched or given configuration, else a gates run's hard gates,
            else every token.
        atol: the largest difference of logits the check accepts.

    Returns:
        the metadata written to ``dyntok_export.json``.

    Raises:
        ConfigError: the ``export`` extra is missing, or a bad ``length_config``.
        CheckpointError: ``source`` is not a dyntok checkpoint.
        DyntokError: the exported graph disagrees with PyTorch (kept counts differ, or logits by more than
            ``atol``).
    """
    _require(*EXPORT_PACKAGES)
    import dyntok
    from dyntok.core.graph import InferenceGraph, output_names
    from dyntok.core.lengths import LengthConfig

    predictor = dyntok.load(source, trust_checkpoint=trust_checkpoint)
    module, task = predictor.module, predictor.task
    model = module.model.cpu().eval()
    L = model.num_layers
    cfg = LengthConfig.parse(length_config, L, "--length-config") if length_config is not None else module.length_config
    gates = getattr(module, "gates", None) if cfg is None else None
    if cfg is None and gates is None:  # the method's own static configuration (powerbert), None for full
        cfg = module.reported_length_config()
    graph = InferenceGraph(model, cfg, gates).eval()
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.encoder.takes_token_types else [])
    outputs = output_names(task.problem)
    texts = [(t, t) for t in _PARITY_TEXTS] if len(task.text_keys) == 2 else list(_PARITY_TEXTS)
    enc = _tokenize(predictor.tokenizer, texts, predictor.max_length, "pt")
    out = Path(out)
    print(f"exporting {source} -> {out / MODEL_FILE} ({cfg.describe() if cfg else 'hard gates' if gates else 'every token'})",
          flush=True)
    write_onnx(graph, tuple(enc[k] for k in inputs), inputs, outputs, out / MODEL_FILE, predictor.max_length)
    predictor.tokenizer.save_pretrained(str(out))

    reported = cfg or module.reported_length_config()
    meta: dict[str, Any] = {
        "task": task.name, "problem": task.problem.name, "text_keys": list(task.text_keys),
        "labels": list(task.label_names) or None,
        "max_length": predictor.max_length, "inputs": inputs, "outputs": outputs,
        "rule": "length_config" if cfg is not None else "rank_gates" if gates is not None else "full",
        "length_config": reported.to_dict() if reported is not None else None,
        # the papers' count, as results.json's paper_macs_ratio
        "macs_ratio_padded": module.paper_macs_ratio(cfg, predictor.max_length), "source": str(source),
        "versions": _versions(),
    }
    meta["parity"] = _check_parity(out, predictor, cfg, enc, inputs, task.problem, atol)
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def write_onnx(graph, example: tuple, inputs: list[str], outputs: list[str], path: str | Path, max_length: int
               ) -> Path:
    """Export ``graph`` (an :class:`~dyntok.core.graph.InferenceGraph`) to ``path`` with the dynamo exporter,
    weights in ``path.data`` beside it (both replaced if present).

    Args:
        example: (B, T) int64 tensors in ``inputs`` order (B >= 2, so the batch axis stays dynamic).
        inputs, outputs: the graph's input and output names.
        max_length: the longest sequence the graph accepts (tokens).
    """
    import warnings

    import torch
    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    batch, seq = Dim("batch"), Dim("sequence", max=max_length)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and renaming notices
        program = torch.onnx.export(graph.eval(), example, input_names=inputs, output_names=outputs, dynamo=True,
                                    dynamic_shapes={k: {0: batch, 1: seq} for k in inputs}, verbose=False)
        program.save(str(path), external_data=True)
    return path


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on ``path``; ``threads``: intra-op threads (None: every core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _tokenize(tokenizer: Any, texts: list, max_length: int, tensors: str) -> dict[str, Any]:
    """The tokenizer's batch of ``texts`` truncated at ``max_length`` tokens, as dyntok's own batches
    (:func:`dyntok.data.batches.batches_from_texts`) tokenize them, padded to the longest as ``tensors``
    (``pt``, ``np``)."""
    firsts, seconds = split_pairs(texts)
    return tokenizer(firsts, seconds, truncation=True, max_length=max_length, padding=True, return_tensors=tensors)


def _check_parity(out: Path, predictor, length_config, enc: dict[str, Any], inputs: list[str], problem: Problem,
                  atol: float) -> dict[str, Any]:
    """ONNX Runtime on ``enc`` against dyntok's PyTorch inference (:meth:`Predictor.forward`)."""
    import torch

    with torch.no_grad():
        ref = predictor.forward(dict(enc), length_config)
    logits, kept = ref.logits.float().numpy(), ref.encoder.kept.numpy()
    got = session(out / MODEL_FILE).run(None, {k: enc[k].numpy() for k in inputs})
    n = len(problem.output_names())  # the logits' outputs (span: start and end), then the kept counts
    got, got_kept = (got[0] if n == 1 else np.stack(got[:n], -1)), got[n]
    real = logits > np.finfo(np.float32).min / 2  # span logits of padding sit at the dtype's minimum
    diff = float(np.abs(np.where(real, got - logits, 0.0)).max())
    same_kept = bool((got_kept == kept).all())
    if not same_kept or diff > atol:
        raise DyntokError(f"{out / MODEL_FILE}: ONNX Runtime disagrees with dyntok's PyTorch inference on "
                          f"{len(kept)} texts (largest logit difference {diff:.2e}, kept counts equal: {same_kept})")
    return {"texts": len(kept), "max_abs_logit_diff": diff, "same_kept": same_kept}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for p in ("dyntok", "torch", "transformers", *EXPORT_PACKAGES):
        try:
            found[p] = version(p)
        except PackageNotFoundError:
            pass
    return found


class OnnxPredictor:
    """An exported model served by ONNX Runtime: ``OnnxPredictor(DIR).predict(texts)``.

    Args:
        path: a folder written by :func:`export`.
        threads: ONNX Runtime intra-op threads (None: its default, every core).

    Raises:
        ConfigError: ``path`` holds no export, or onnxruntime is not installed.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        _require("onnxruntime")
        from transformers import AutoTokenizer

        self.path = Path(path)
        meta_file = self.path / META_FILE
        if not meta_file.is_file() or not (self.path / MODEL_FILE).is_file():
            raise ConfigError(f"{self.path}: no exported model ({MODEL_FILE} and {META_FILE}); "
                              "write one with python -m dyntok.export <run> --out DIR")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        self.session = session(self.path / MODEL_FILE, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.inputs: list[str] = self.meta["inputs"]

    def run(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs (module docstring) on one tokenized batch: (B, T) int64 arrays by input name."""
        return self.session.run(None, {k: np.asarray(batch[k], dtype=np.int64) for k in self.inputs})

    def predict(self, texts: list[str] | list[tuple[str, str]], batch_size: int = 64) -> Predictions:
        """As :meth:`dyntok.methods.predictor.Predictor.predict`: labels, probabilities, MACs, kept counts.

        Batches are sorted by length (less padding); the results come back in input order.

        Raises:
            ConfigError: as :meth:`dyntok.methods.predictor.Predictor.predict` (a span model, no texts, a
                text that is empty, not a string or not valid Unicode, pairs where strings are expected or the
                reverse, ``batch_size`` < 1).
        """
        problem = problem_of(self.meta["problem"])
        firsts, seconds = predict_inputs(texts, self.meta["task"], self.meta["text_keys"], problem,
                                         "run span models with run()", batch_size)
        n = len(firsts)
        # tokenized once, as dyntok's own batches are; each batch is padded from it
        enc = self.tokenizer(firsts, seconds, truncation=True, max_length=self.meta["max_length"])
        lengths = np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        parts: dict[int, list[np.ndarray]] = {}
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="np")
            for i, row in zip(idx, zip(*self.run(batch), strict=True), strict=True):
                parts[int(i)] = list(row)
        logits, kept, macs, full = (np.stack([parts[i][c] for i in range(n)]) for c in range(4))
        return Predictions.from_logits(logits, problem, tuple(self.meta["labels"] or ()) or None, macs, full, kept,
                                       lengths)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dyntok.export", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a dyntok checkpoint (.ckpt) or run folder")
    p.add_argument("--out", required=True, help="folder to write model.onnx, the tokenizer and dyntok_export.json")
    p.add_argument("--length-config", default=None,
                   help="a configuration instead of the checkpoint's own: a ratio, or one value per layer")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="also load a checkpoint holding more than tensors and plain data (it could run code)")
    args = p.parse_args(argv)
    try:
        meta = export(args.source, args.out, args.length_config, args.trust_checkpoint)
    except DyntokError as e:
        print(f"dyntok: error: {user_message(e, '--trust-checkpoint')}", file=sys.stderr)
        return 2
    par = meta["parity"]
    print(f"wrote {Path(args.out) / MODEL_FILE} ({meta['rule']}; MACs ratio padded to {meta['max_length']}: "
          f"{meta['macs_ratio_padded']:.3f}); ONNX Runtime "
          f"matches PyTorch on {par['texts']} texts (logits within {par['max_abs_logit_diff']:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
