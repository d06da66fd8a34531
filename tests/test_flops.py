"""MACs accounting: hand-computed cases, the papers' BERT-base figures, and a cross-check against
``torch.utils.flop_counter`` on the executed model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import (
    MacsReport,
    ModelDims,
    batch_macs,
    encoder_macs,
    full_macs,
    head_macs,
    length_config_macs,
    model_macs,
    padded_macs,
)
from dyntok.core.model import DynTokModel
from dyntok.errors import ConfigError

TINY = ModelDims(num_layers=2, hidden=4, intermediate=8, num_heads=2, num_labels=3)
BERT_BASE = ModelDims(num_layers=12, hidden=768, intermediate=3072, num_heads=12, vocab=30522)


def test_hand_computed_two_layers():
    # d = 4, d_ff = 8; input 10 tokens, layer 1 keeps 6, layer 2 keeps 3.
    # layer 1: 4*10*16 + 2*100*4 + 2*6*4*8 = 640 + 800 + 384 = 1824
    # layer 2: 4*6*16 + 2*36*4 + 2*3*4*8 = 384 + 288 + 192 = 864
    macs = encoder_macs(TINY, torch.tensor([10]), torch.tensor([[6, 3]]))
    assert macs.dtype == torch.float64
    assert macs.tolist() == [1824 + 864]
    # full at 10 tokens: 2 * (640 + 800 + 640) = 4160
    assert full_macs(TINY, torch.tensor([10])).tolist() == [4160]
    assert padded_macs(TINY, 10, batch_size=2).tolist() == [4160, 4160]


def test_per_example_and_layerdrop():
    lengths, kept = torch.tensor([10, 4]), torch.tensor([[6, 3], [4, 2]])
    macs = encoder_macs(TINY, lengths, kept)
    # second row: layer 1: 4*4*16 + 2*16*4 + 2*4*32 = 256+128+256 = 640; layer 2: 4*4*16+2*16*4+2*2*32 = 512
    assert macs.tolist() == [2688, 640 + 512]
    # LayerDrop skips layer 1: its kept entry repeats the input count and it costs nothing.
    skipped = encoder_macs(TINY, torch.tensor([10]), torch.tensor([[10, 3]]), skipped=[True, False])
    assert skipped.tolist() == [4 * 10 * 16 + 2 * 100 * 4 + 2 * 3 * 32]
    with pytest.raises(ConfigError, match="skipped"):
        encoder_macs(TINY, lengths, kept, skipped=[True])
    with pytest.raises(ConfigError, match="kept"):
        encoder_macs(TINY, lengths, kept[:, :1])


def test_model_macs_heads():
    n, kept = torch.tensor([10]), torch.tensor([[6, 3]])
    assert model_macs(TINY, n, kept, "classification").item() == 2688 + 16 + 4 * 3
    assert model_macs(TINY, n, kept, "regression").item() == 2688 + 16 + 4
    assert model_macs(TINY, n, kept, "span").item() == 2688 + 2 * 4 * 10
    with pytest.raises(ConfigError, match="problem"):
        head_macs(TINY, n, "tagging")


def test_bert_base_matches_papers():
    assert full_macs(BERT_BASE, torch.tensor([384])).item() == pytest.approx(35.33e9, rel=1e-3)
    assert full_macs(BERT_BASE, torch.tensor([128])).item() == pytest.approx(11.17e9, rel=1e-3)
    # LA-MiniLM-L6-H384 full model at 384 tokens: 4.76 GMACs (PAPERS.md table).
    minilm = ModelDims(6, 384, 1536, 12)
    assert full_macs(minilm, torch.tensor([384])).item() == pytest.approx(4.76e9, rel=1e-3)


def test_length_config_macs_and_batch_macs():
    n = torch.tensor([10, 7])
    cfg = LengthConfig((0.6, 0.3))
    expected = encoder_macs(TINY, n, cfg.resolve(n))
    assert torch.equal(length_config_macs(TINY, cfg, n), expected)
    assert length_config_macs(TINY, cfg, n, "classification").tolist() == (expected + 16 + 12).tolist()
    assert torch.equal(length_config_macs(TINY, LengthConfig.full(2), n), full_macs(TINY, n))
    with pytest.raises(ConfigError, match="layers"):
        length_config_macs(TINY, LengthConfig.full(3), n)
    # A padded batch runs both rows at its widest width.
    b = batch_macs(TINY, 10, torch.tensor([[6, 3], [5, 2]]))
    assert b.tolist() == [2688, 2688]


def test_report_accumulates():
    rep = MacsReport(TINY, max_length=20)
    rep.update(torch.tensor([10]), torch.tensor([[6, 3]]))
    rep.update(torch.tensor([10, 10]), torch.tensor([[10, 10], [10, 10]]))
    out = rep.compute()
    executed, full, padded = 2688 + 2 * 4160, 3 * 4160, 3 * full_macs(TINY, torch.tensor([20])).item()
    assert rep.examples == 3
    assert out["macs_per_example"] == pytest.approx(executed / 3)
    assert out["gmacs_per_example"] == pytest.approx(executed / 3 / 1e9)
    assert out["full_macs_per_example"] == pytest.approx(full / 3)
    assert out["macs_ratio"] == pytest.approx(executed / full) == rep.ratio
    assert out["padded_macs_ratio"] == pytest.approx(executed / padded) == rep.padded_ratio
    assert out["macs_reduction"] == pytest.approx(full / executed) == rep.speedup
    # tokens kept after each layer over all 30 input tokens: layer 1 6 + 10 + 10, layer 2 3 + 10 + 10
    assert rep.retention == pytest.approx([26 / 30, 23 / 30])
    assert (out["retention_l1"], out["retention_l2"]) == pytest.approx((26 / 30, 23 / 30))
    assert rep.reduce(lambda t: 2 * t).examples == 6  # summed over two processes holding the same batches
    rep.reset()
    assert math.isnan(rep.compute()["macs_ratio"]) and rep.retention == []
    assert math.isnan(MacsReport(TINY).padded_ratio)
    with pytest.raises(ConfigError, match="problem"):
        MacsReport(TINY, problem="tagging")


def test_report_with_head_counts_baselines_alike():
    rep = MacsReport(TINY, problem="classification")
    rep.update(torch.tensor([10]), torch.tensor([[10, 10]]))
    assert rep.ratio == 1.0
    assert rep.total == 4160 + 16 + 12


lengths_and_kept = st.integers(1, 64).flatmap(
    lambda n: st.lists(st.integers(1, n), min_size=3, max_size=3).map(
        lambda ks: (n, sorted(ks, reverse=True))
    )
)


@settings(max_examples=200, deadline=None)
@given(lengths_and_kept, st.integers(0, 2), st.integers(1, 8))
def test_monotone_in_kept_and_full_when_nothing_dropped(case, layer, bump):
    dims = ModelDims(3, 8, 32, 2)
    n, ks = case
    base = encoder_macs(dims, torch.tensor([n]), torch.tensor([ks])).item()
    # Keep more at one layer (and as many at the earlier ones so the configuration stays monotone).
    more = list(ks)
    more[layer] = min(n, ks[layer] + bump)
    for j in range(layer):
        more[j] = max(more[j], more[layer])
    bigger = encoder_macs(dims, torch.tensor([n]), torch.tensor([more])).item()
    assert bigger >= base
    full = full_macs(dims, torch.tensor([n])).item()
    assert base <= full
    assert encoder_macs(dims, torch.tensor([n]), torch.tensor([[n, n, n]])).item() == full


# --- cross-check against the executed model --------------------------------------------------------------

def _cpu_sdpa_flops(q, k, v, *args, out_shape=None, **kwargs):
    """FLOPs (2 x MACs) of QK^T and AV for the CPU fused kernel, which FlopCounterMode leaves uncounted."""
    b, h, nq, dh = q
    return 2 * (2 * b * h * nq * k[2] * dh)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, num_hidden_layers=3, vocab_size=100)
    return DynTokModel.from_pretrained(None, "classification", 2, config=cfg).eval()


def _measured_and_analytic(model, config, significance, count_sdpa, skip=None):
    model.encoder.significance = significance
    torch.manual_seed(1)
    ids = torch.randint(5, 100, (1, 41))  # batch 1: no padding inflates the executed count
    mask = torch.ones_like(ids)
    lengths = LengthConfig.parse(config, 3).resolve(mask.sum(1))
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops} if count_sdpa else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as fc, torch.inference_mode():
        out = model(ids, mask, lengths=lengths, skip_layers=skip)
    dims = ModelDims.from_encoder(model)
    analytic = model_macs(dims, out.encoder.input_lengths, out.encoder.kept, "classification", skip).item()
    return fc.get_total_flops() / 2, analytic, out.encoder.kept


def test_flop_counter_agrees_when_every_layer_drops(tiny_model):
    """A strictly decreasing schedule with all-query significance: every layer drops, so every layer
    computes explicit probabilities (matmuls FlopCounterMode counts) and no fused kernel runs. (A constant
    ratio such as 0.5 drops in layer 1 only: later layers keep the same count and run the fused kernel.) Counted on both sides:
    Q/K/V/O, QK^T, AV, FFN, pooler, classifier. Counted on neither: LayerNorm, GELU, softmax, biases,
    the significance sums, top-k and gathers (no matmuls)."""
    measured, analytic, kept = _measured_and_analytic(tiny_model, "0.7,0.5,0.3", "all_queries", False)
    assert kept.tolist() == [[29, 21, 13]]
    assert measured == pytest.approx(analytic, rel=0.02)


@pytest.mark.parametrize("significance", ["all_queries", "cls_query"])
@pytest.mark.parametrize("config", ["1", "0.5", "1,0.6,0.3", "30,20,8"])
def test_flop_counter_agrees_for_length_configs(tiny_model, config, significance):
    """Layers that drop nothing (and every layer under ``cls_query``) run the fused SDPA kernel, which
    FlopCounterMode does not count on CPU: we register its QK^T + AV cost so attention is counted the way
    the executed model ran it. ``cls_query`` also computes a [CLS]-row of attention per dropping layer
    (l * d MACs) that the analytic count leaves out: well inside the 2%."""
    measured, analytic, _ = _measured_and_analytic(tiny_model, config, significance, count_sdpa=True)
    assert measured == pytest.approx(analytic, rel=0.02)


def test_flop_counter_agrees_with_layerdrop(tiny_model):
    skip = [False, True, False]
    measured, analytic, kept = _measured_and_analytic(tiny_model, "1,0.6,0.3", "all_queries", True, skip)
    assert kept[0, 1] == 41  # the skipped layer shrank nothing
    assert measured == pytest.approx(analytic, rel=0.02)


def test_fused_kernel_is_invisible_without_registration(tiny_model):
    """Why the registration above is needed: without it the full model's attention scores go uncounted."""
    measured, analytic, _ = _measured_and_analytic(tiny_model, "1", "all_queries", count_sdpa=False)
    assert measured < 0.95 * analytic
