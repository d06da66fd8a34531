"""method=powerbert: soft extraction scales word vectors by their rank's retention value; the configuration
is int(sum r) per layer, non-increasing; re-training and testing keep exactly those counts."""

from __future__ import annotations

import json

import pytest
import torch

from dyntok.core.lengths import LengthConfig
from dyntok.data.tasks import get_task
from dyntok.methods.powerbert import PowerBertModule
from tests.test_run import TINY, _run


def _module(tiny_model, **options):
    return PowerBertModule(tiny_model, get_task("rotten_tomatoes"), max_length=16, **options)


def test_soft_extraction_scales_each_vector_by_its_rank_value(tiny_model, tokenizer):
    """Layer 1 with retention r: the FFN input of the token of rank k is r[k] times the attention output."""
    enc = tiny_model.encoder
    b = tokenizer(["a fine film with a long and winding plot"], return_tensors="pt")
    gate = torch.linspace(1.0, 0.1, b["input_ids"].size(1))
    seen = {}

    def grab(module, inp, out):
        seen.setdefault("x", inp[0])

    hook = enc._parts[0].ffn_in.register_forward_hook(grab)
    with torch.no_grad():
        enc(b["input_ids"], b["attention_mask"], b["token_type_ids"], rank_gates=[gate, None, None], soft_extract=True)
        flow = enc.begin(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        a, scores = enc.attend(0, flow, True)
    hook.remove()
    from dyntok.core.attention import rank_of

    ranks = rank_of(scores, flow.mask, flow.positions, True)
    want = gate[ranks]
    want[:, 0] = 1.0  # [CLS] ranks first and is kept whole in classification
    assert torch.allclose(seen["x"], a * want.unsqueeze(-1), atol=1e-6)
    # the key weights are untouched: nothing is removed, no soft mask is tracked
    with torch.no_grad():
        out = enc(b["input_ids"], b["attention_mask"], b["token_type_ids"], rank_gates=[gate, None, None],
                  soft_extract=True)
    assert out.alive == [] and torch.equal(out.kept[0], torch.full((3,), b["input_ids"].size(1)))


def test_configuration_is_the_retention_mass_made_non_increasing(tiny_model):
    m = _module(tiny_model)
    with torch.no_grad():
        m.retention.theta.copy_(torch.tensor([[1.0] * 10 + [0.45] * 6, [0.5] * 16, [1.0] * 12 + [0.0] * 4]))
    cfg = m.retention_configuration()
    # masses 12.7, 8.0, 12.0 -> 12, 8, min(12, 8)
    assert cfg.unit == "tokens" and cfg.values == (12.0, 8.0, 8.0)
    with torch.no_grad():
        m.retention.theta.zero_()
    assert m.retention_configuration().values == (1.0, 1.0, 1.0)  # at least one token
    assert torch.isclose(m.regularizer(), torch.tensor(0.0))
    with torch.no_grad():
        m.retention.theta.fill_(1.0)
    assert torch.isclose(m.regularizer(), torch.tensor(16.0 * (1 + 2 + 3)))  # sum_j j * sum_k r_j[k]


def test_hard_stage_keeps_exactly_the_extracted_counts(tiny_model, tokenizer):
    m = _module(tiny_model).eval()
    with torch.no_grad():
        m.retention.theta.copy_(torch.tensor([[1.0] * 9 + [0.0] * 7, [1.0] * 5 + [0.0] * 11, [1.0] * 3 + [0.0] * 13]))
    m.extract()
    assert m.extracted == LengthConfig((9.0, 5.0, 3.0), "tokens", min_tokens=1)
    assert not m.retention.theta.requires_grad
    b = tokenizer(["a fine film with a long and winding plot that goes nowhere", "dull"], padding=True,
                  return_tensors="pt")
    with torch.no_grad():
        out = m.inference_forward(dict(b))
    n = b["attention_mask"].sum(1)
    assert out.encoder.kept[0].tolist() == [9, 5, 3]
    assert out.encoder.kept[1].tolist() == [min(int(n[1]), c) for c in (9, 5, 3)]


def test_options_are_checked_by_key(tiny_model):
    from dyntok.errors import ConfigError

    with pytest.raises(ConfigError, match="method.retention_lr"):
        _module(tiny_model, retention_lr=0.0)


def test_two_stage_run_end_to_end(tmp_path):
    """Search then re-training through python -m dyntok.run; the test split runs the extracted configuration."""
    run = tmp_path / "run"
    proc = _run([*TINY, "method=powerbert", "method.regularizer_lambda=0.5", "method.retention_lr=0.05",
                 "method.retrain_epochs=1", "task.max_length=32"], run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((run / "results.json").read_text())
    pb = rec["powerbert"]
    cfg = pb["configuration"]
    assert cfg["unit"] == "tokens"
    counts = [int(v) for v in cfg["values"]]
    assert counts == sorted(counts, reverse=True) and counts[0] <= 32
    assert counts == [max(1, min(int(m), *[int(x) for x in pb["retention_mass"][:j + 1]])) for j, m in
                      enumerate(pb["retention_mass"])]
    assert counts[-1] < 32  # the regularizer moved the retention values
    assert rec["splits"]["test"]["padded_macs_ratio"] < 1.0
    import dyntok

    pred = dyntok.load(run).predict(["a fine film with a long and winding plot that goes nowhere at all"])
    assert pred.kept[0].tolist() == [min(int(pred.input_lengths[0]), c) for c in counts]
