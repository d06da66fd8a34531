"""ONNX export: the traceable inference graph, the exported file in ONNX Runtime, the command and the
torch-free predictor, each against dyntok's own PyTorch inference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from dyntok.core.gates import RankGates
from dyntok.core.graph import InferenceGraph, output_names
from dyntok.core.lengths import LengthConfig
from dyntok.core.model import DynTokModel
from tests.conftest import TINY_BERT
from tests.test_run import ROOT, TINY, _run

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def _batch(B: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    """Random ids with [CLS]/[SEP]-like ends and random right padding (row 0 unpadded)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (B, T), generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 101
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _reference(model: DynTokModel, batch, cfg=None, gates=None):
    """dyntok's PyTorch inference: (logits, kept)."""
    kw = {}
    if cfg is not None:
        kw["lengths"] = cfg.resolve(batch["attention_mask"].sum(1))
    elif gates is not None:
        kw["keep_by_rank"] = gates.open_table(batch["attention_mask"].sum(1), batch["input_ids"].size(1))
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kw)
    return out.logits, out.encoder.kept


def _graph_logits(outs, problem):
    return (torch.stack(outs[:2], -1), outs[2]) if problem == "span" else (outs[0], outs[1])


def _model(problem="classification", restore="output"):
    torch.manual_seed(0)
    return DynTokModel.from_pretrained(None, problem, 2, config=TINY_BERT, restore=restore).eval()


def _gates(kind: str) -> RankGates:
    torch.manual_seed(3)
    opts = {"absolute": {}, "relative": {"rank_scale": "relative", "bins": 8},
            "floor": {"rank_scale": "relative", "bins": 8, "min_keep": 0.3}, "skip": {"skip_first": 1}}[kind]
    g = RankGates(3, 64, **opts)
    with torch.no_grad():
        g.theta.uniform_(0.0, 1.0)
    return g


CASES = [
    ("ratio", "classification", "output", LengthConfig((1.0, 0.5, 0.3)), None),
    ("ratio_all", "classification", "output", LengthConfig((0.7, 0.45, 0.2), min_tokens=1), None),
    ("tokens", "classification", "output", LengthConfig((20, 9, 4), "tokens"), None),
    ("full", "classification", "output", None, None),
    ("span_output", "span", "output", LengthConfig((0.7, 0.5, 0.3)), None),
    ("span_last_layer", "span", "last_layer", LengthConfig((0.7, 0.5, 0.3)), None),
    ("regression", "regression", "output", LengthConfig((0.6, 0.6, 0.4)), None),
    *[(f"gates_{k}", "classification", "output", None, k) for k in ("absolute", "relative", "floor", "skip")],
]


@pytest.mark.parametrize("name,problem,restore,cfg,gates", CASES, ids=[c[0] for c in CASES])
def test_graph_matches_the_encoder_in_pytorch(name, problem, restore, cfg, gates):
    model = _model(problem, restore)
    g = _gates(gates) if gates else None
    graph = InferenceGraph(model, cfg, g)
    for seed, (B, T) in enumerate([(1, 9), (4, 31), (6, 64)]):
        batch = _batch(B, T, seed)
        with torch.no_grad():
            logits, kept = _graph_logits(graph(*(batch[k] for k in INPUTS)), problem)
        ref_logits, ref_kept = _reference(model, batch, cfg, g)
        assert torch.equal(kept, ref_kept), (name, B, T)
        real = ref_logits > torch.finfo(ref_logits.dtype).min / 2
        assert torch.allclose(logits[real], ref_logits[real], atol=1e-5), (name, B, T)
        if cfg is not None or g is not None:
            assert (kept[:, -1] < batch["attention_mask"].sum(1)).any() or problem == "span"


def test_graph_reports_the_macs_dyntok_counts():
    from dyntok.core.macs import ModelDims, model_macs

    model, cfg = _model(), LengthConfig((1.0, 0.5, 0.3))
    batch = _batch(5, 40, 7)
    with torch.no_grad():
        _, kept, macs, full = InferenceGraph(model, cfg)(*(batch[k] for k in INPUTS))
    n = batch["attention_mask"].sum(1)
    dims = ModelDims.from_encoder(model)
    # kept as dyntok's PyTorch path resolves it, and the count written out (not model_macs, which the graph uses):
    # layer j: 4 d^2 per token entering attention, 2 d per attended pair, 2 d f per token kept; head d^2 + 2 d
    ref_kept = cfg.resolve(n)
    assert torch.equal(kept, ref_kept)
    d, f = dims.hidden, dims.intermediate

    def count(k: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([n[:, None], k[:, :-1]], 1).double()
        return (4 * prev * d * d + 2 * prev * prev * d + 2 * k.double() * d * f).sum(1) + d * d + d * 2

    assert torch.allclose(macs.double(), count(ref_kept))
    assert torch.allclose(full.double(), count(n[:, None].expand(-1, 3)))
    assert torch.allclose(macs.double(), model_macs(dims, n, kept, "classification"))
    assert bool((macs < full).all())


def test_graph_refuses_a_configuration_of_another_depth():
    from dyntok.errors import ConfigError

    with pytest.raises(ConfigError, match="has 2 layers, the model 3"):
        InferenceGraph(_model(), LengthConfig((1.0, 0.5)))


def _export(graph, problem: str, path) -> str:
    from torch.export import Dim

    ex = _batch(2, 12, 0)
    b, s = Dim("batch"), Dim("sequence", max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(graph, tuple(ex[k] for k in INPUTS), input_names=INPUTS,
                                 output_names=output_names(problem), dynamo=True, verbose=False,
                                 dynamic_shapes={k: {0: b, 1: s} for k in INPUTS})
    prog.save(str(path), external_data=True)
    return str(path)


ONNX_CASES = [c for c in CASES if c[0] in ("ratio", "tokens", "span_output", "span_last_layer", "gates_floor")]


@pytest.mark.parametrize("name,problem,restore,cfg,gates", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_exported_graph_matches_pytorch_in_onnx_runtime(name, problem, restore, cfg, gates, tmp_path):
    """Batch sizes and lengths other than the example's, random padding: one graph serves them all."""
    ort = pytest.importorskip("onnxruntime")
    model = _model(problem, restore)
    g = _gates(gates) if gates else None
    sess = ort.InferenceSession(_export(InferenceGraph(model, cfg, g), problem, tmp_path / "m.onnx"))
    assert [i.name for i in sess.get_inputs()] == INPUTS
    assert [o.name for o in sess.get_outputs()] == output_names(problem)
    for seed, (B, T) in enumerate([(1, 5), (1, 100), (3, 17), (8, 64), (2, 200)]):
        batch = _batch(B, T, 10 + seed)
        outs = sess.run(None, {k: v.numpy() for k, v in batch.items()})
        logits, kept = _graph_logits([torch.from_numpy(o) for o in outs], problem)
        ref_logits, ref_kept = _reference(model, batch, cfg, g)
        assert torch.equal(kept, ref_kept), (name, B, T)
        real = ref_logits > torch.finfo(ref_logits.dtype).min / 2
        assert torch.allclose(logits[real], ref_logits[real], atol=1e-5), (name, B, T)


# ---- the command, on checkpoints of tiny runs --------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs: full (its configuration given at export), gates (its own hard gates), LengthDrop with a
    test-time configuration in its checkpoint, and PoWER-BERT (its extracted configuration)."""
    root = tmp_path_factory.mktemp("export_runs")
    specs = {"full": TINY,
             "gates": [*TINY, "method=gates", "regularizer.lambda=20", "method.gate_lr=0.5"],
             "lengthdrop": [*TINY, "method=lengthdrop", "method.length_config=[1,0.6,0.4]", "method.search.enabled=false"],
             "powerbert": [*TINY, "method=powerbert", "method.regularizer_lambda=0.5", "method.retention_lr=0.05",
                           "task.max_length=32"]}
    for name, args in specs.items():
        proc = _run(args, root / name)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    return root


TEXTS = ["a gorgeous, witty, seductive movie .", "dull", "it is not that funny , and the plot drags on and on .",
         "the performances are wonderful but the script lets them down at every turn , sadly ."]


def _export_cmd(run, out, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dyntok.export", str(run), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


@pytest.mark.parametrize("name,extra", [("full", ["--length-config", "1,0.5,0.5"]), ("gates", []),
                                        ("lengthdrop", []), ("powerbert", [])])
def test_export_command_and_onnx_predictor_match_dyntok_load(runs, name, extra, tmp_path):
    import dyntok
    from dyntok.export import META_FILE, OnnxPredictor

    proc = _export_cmd(runs / name, tmp_path / "out", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "matches PyTorch" in proc.stdout
    meta = json.loads((tmp_path / "out" / META_FILE).read_text())
    assert meta["rule"] == {"gates": "rank_gates"}.get(name, "length_config")
    assert meta["parity"]["same_kept"] and meta["inputs"] == INPUTS
    assert (tmp_path / "out" / "model.onnx.data").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()
    onnx_pred = OnnxPredictor(tmp_path / "out", threads=1).predict(TEXTS, batch_size=3)
    ref = dyntok.load(runs / name).predict(TEXTS, batch_size=2, length_config=extra[1] if extra else None)
    assert onnx_pred.labels == ref.labels
    np.testing.assert_allclose(onnx_pred.probabilities, ref.probabilities, atol=1e-5)
    np.testing.assert_array_equal(onnx_pred.kept, ref.kept)
    np.testing.assert_allclose(onnx_pred.macs, ref.macs)
    np.testing.assert_allclose(onnx_pred.full_macs, ref.full_macs)
    np.testing.assert_array_equal(onnx_pred.input_lengths, ref.input_lengths)
    if name != "powerbert":  # its tiny run's configuration (tokens at N = 32) is longer than these texts
        assert (onnx_pred.macs < onnx_pred.full_macs).any()


def test_onnx_predictor_runs_without_torch(runs, tmp_path):
    """A service depends on onnxruntime and the tokenizer: the predictor never imports torch."""
    assert _export_cmd(runs / "lengthdrop", tmp_path / "out").returncode == 0
    code = ("import sys; sys.modules['torch'] = None\n"
            "from dyntok.export import OnnxPredictor\n"
            f"p = OnnxPredictor({str(tmp_path / 'out')!r}).predict(['fine', 'a long and tedious film .'])\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print(p.labels, p.kept.tolist())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[[" in proc.stdout


def test_export_errors_name_what_is_missing(runs, tmp_path, monkeypatch):
    import importlib.util

    from dyntok.errors import ConfigError
    from dyntok.export import OnnxPredictor, export

    with pytest.raises(ConfigError, match="no exported model"):
        OnnxPredictor(tmp_path)
    with pytest.raises(ConfigError, match="--length-config: 2 values given but the encoder has 3 layers"):
        export(runs / "full", tmp_path / "bad", "1,0.5")
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real_find(n, *a))
    with pytest.raises(ConfigError, match=r'onnxscript not installed: pip install "dyntok\[export\]"'):
        export(runs / "full", tmp_path / "x")


# ---- real MiniLM, real SST-2 sentences ---------------------------------------------------------------------

@pytest.mark.slow
def test_minilm_on_sst2_sentences_matches_in_onnx_runtime(minilm_path, tokenizer, tmp_path):
    """Logits within 1e-4, identical labels and kept counts, for several configurations, batch sizes and
    padded batches (the SST-2 dev excerpt shipped with the tests)."""
    import csv

    ort = pytest.importorskip("onnxruntime")
    rows = list(csv.DictReader(open(ROOT / "tests/data/glue/SST-2/dev.tsv"), delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [r["sentence"] for r in rows]
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(minilm_path, "classification", 2).eval()
    for k, cfg in enumerate([LengthConfig((1, 1, 0.5, 0.5, 0.5, 0.5)), LengthConfig((1, 0.8, 0.6, 0.4, 0.3, 0.2)),
                             LengthConfig((40, 30, 20, 20, 10, 10), "tokens")]):
        sess = ort.InferenceSession(_export(InferenceGraph(model, cfg), "classification", tmp_path / f"m{k}.onnx"))
        for bs in (1, 7, 16):
            for start in range(0, len(sentences), bs * 3):
                enc = tokenizer(sentences[start:start + bs], truncation=True, max_length=128, padding=True,
                                return_tensors="pt")
                outs = sess.run(None, {n: enc[n].numpy() for n in INPUTS})
                ref_logits, ref_kept = _reference(model, dict(enc), cfg)
                np.testing.assert_allclose(outs[0], ref_logits.numpy(), atol=1e-4)
                assert (outs[0].argmax(-1) == ref_logits.numpy().argmax(-1)).all()
                np.testing.assert_array_equal(outs[1], ref_kept.numpy())
