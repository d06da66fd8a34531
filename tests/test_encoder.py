"""The token-dropping encoder: exactness, gather/restore, padding, [CLS], LayerDrop, rank gates."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyntok.core.attention import rank_of, select_tokens, significance_scores
from dyntok.core.lengths import LengthConfig
from dyntok.core.model import DynTokModel


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate clichés from start to finish, and the script is a disaster",
    "dull",
]


def test_no_dropping_matches_huggingface_tiny(tiny_model, tokenizer):
    b = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        ref = tiny_model.encoder.backbone(**b).last_hidden_state
        out = tiny_model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    real = b["attention_mask"].bool()
    assert torch.equal(out.positions, torch.arange(ref.size(1)).expand_as(out.positions))
    assert (ref - out.hidden)[real].abs().max() <= 1e-4


def test_no_dropping_matches_huggingface_minilm(minilm_path, tokenizer):
    model = DynTokModel.from_pretrained(minilm_path, "classification", 2).eval()
    b = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        ref = model.encoder.backbone(**b).last_hidden_state
        out = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    assert (ref - out.hidden)[b["attention_mask"].bool()].abs().max() <= 1e-4


def _reference_drop(model, b, lengths, keep_cls=True):
    """Masking reference: Hugging Face layers called one by one; dropped tokens masked out as keys.

    FFNs are per token, so masking dropped keys from the next layer on must give the kept tokens the same
    states as physically removing them.
    """
    enc = model.encoder
    layers = enc.backbone.encoder.layer
    h = enc.backbone.embeddings(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"])
    mask = b["attention_mask"].bool()
    for j, layer in enumerate(layers):
        ext = (~mask)[:, None, None, :].float() * torch.finfo(torch.float32).min
        a, probs = layer.attention(h, ext)
        s = significance_scores(probs, mask).masked_fill(~mask, float("-inf"))
        if keep_cls:
            s[:, 0] = float("inf")
        new = torch.zeros_like(mask)
        for i in range(mask.size(0)):
            new[i, s[i].topk(int(lengths[i, j])).indices] = True
        mask = new
        h = layer.feed_forward_chunk(a)
    return h, mask


def test_physical_drop_equals_masking_reference(tiny_model, tokenizer):
    tiny_model.encoder.backbone.set_attn_implementation("eager")
    b = _batch(tokenizer, TEXTS)
    cfg = LengthConfig((0.8, 0.5, 0.3), "ratio")
    lengths = cfg.resolve(b["attention_mask"].sum(1))
    with torch.no_grad():
        out = tiny_model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths)
        ref_h, ref_mask = _reference_drop(tiny_model, b, lengths)
    assert torch.equal(out.kept, lengths)
    for i in range(len(TEXTS)):
        kept_pos = out.positions[i][out.mask[i]]
        assert set(kept_pos.tolist()) == set(ref_mask[i].nonzero().flatten().tolist())
        got = out.hidden[i][out.mask[i]]
        want = ref_h[i, kept_pos]
        assert (got - want).abs().max() <= 1e-4


def test_rows_are_independent_of_batch_padding(tiny_model, tokenizer):
    cfg = LengthConfig.constant(0.5, 3, keep_first=1)
    b = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        both = tiny_model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                          lengths=cfg.resolve(b["attention_mask"].sum(1))).logits
        for i, t in enumerate(TEXTS):
            one = _batch(tokenizer, [t])
            alone = tiny_model(one["input_ids"], one["attention_mask"], one["token_type_ids"],
                               lengths=cfg.resolve(one["attention_mask"].sum(1))).logits
            assert (both[i] - alone[0]).abs().max() <= 1e-5


def test_padding_never_kept_and_cls_always_kept(tiny_model, tokenizer):
    b = _batch(tokenizer, TEXTS)
    real = b["attention_mask"].sum(1)
    lengths = LengthConfig((0.6, 0.4, 0.2), "ratio", min_tokens=1).resolve(real)
    with torch.no_grad():
        out = tiny_model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths)
    for i in range(len(TEXTS)):
        pos = out.positions[i][out.mask[i]]
        assert len(pos) == lengths[i, -1]
        assert (pos < real[i]).all(), "a padding position was kept"
        assert pos[0] == 0, "[CLS] not first"
        assert len(set(pos.tolist())) == len(pos)


def test_cls_not_forced_for_span_tasks(tokenizer):
    torch.manual_seed(0)
    from tests.conftest import TINY_BERT

    model = DynTokModel.from_pretrained(None, "span", config=TINY_BERT).eval()
    b = _batch(tokenizer, TEXTS)
    lengths = LengthConfig((0.3, 0.3, 0.3), "ratio", min_tokens=1).resolve(b["attention_mask"].sum(1))
    with torch.no_grad():
        out = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths,
                            keep_cls=False)
        # The [CLS] score under keep_cls=False is whatever attention gave it: check select_tokens directly.
    s = torch.tensor([[0.1, 5.0, 3.0, 2.0]])
    m = torch.ones(1, 4, dtype=torch.bool)
    pos = torch.arange(4)[None]
    idx, _ = select_tokens(s, m, pos, torch.tensor([2]), keep_cls=False)
    assert idx.tolist() == [[1, 2]]
    idx, _ = select_tokens(s, m, pos, torch.tensor([2]), keep_cls=True)
    assert idx.tolist() == [[0, 1]]
    assert out.kept[:, -1].tolist() == lengths[:, -1].tolist()


def test_drop_and_restore_writes_last_state_back(tokenizer):
    torch.manual_seed(0)
    from tests.conftest import TINY_BERT

    model = DynTokModel.from_pretrained(None, "span", config=TINY_BERT).eval()
    b = _batch(tokenizer, TEXTS)
    real = b["attention_mask"].sum(1)
    # Only layer 2 drops: a dropped token's last state is its layer-1 output (no drop before).
    lengths = LengthConfig((1.0, 0.5, 0.5), "ratio").resolve(real)
    with torch.no_grad():
        full = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        one_layer = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                                  skip_layers=[False, True, True])
        dropped = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths,
                                keep_cls=False, restore=False)
        restored = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths,
                                 keep_cls=False, restore=True)
    T = b["input_ids"].size(1)
    assert restored.hidden.shape == full.hidden.shape
    assert torch.equal(restored.positions, torch.arange(T).expand(len(TEXTS), T))
    for i in range(len(TEXTS)):
        kept = set(dropped.positions[i][dropped.mask[i]].tolist())
        for t in range(int(real[i])):
            want = (dropped.hidden[i][dropped.positions[i] == t][0] if t in kept
                    else one_layer.hidden[i, t])
            assert (restored.hidden[i, t] - want).abs().max() <= 1e-5, (i, t, t in kept)


def test_span_model_gives_logits_for_every_position(tokenizer):
    torch.manual_seed(0)
    from tests.conftest import TINY_BERT

    model = DynTokModel.from_pretrained(None, "span", config=TINY_BERT).eval()
    b = _batch(tokenizer, TEXTS)
    lengths = LengthConfig((0.5, 0.3, 0.2), "ratio").resolve(b["attention_mask"].sum(1))
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths)
    assert out.logits.shape == (*b["input_ids"].shape, 2)
    real = b["attention_mask"].bool()
    assert torch.isfinite(out.logits[real]).all()


def test_layerdrop_skips_layers_without_shrinking(tiny_model, tokenizer):
    b = _batch(tokenizer, TEXTS)
    real = b["attention_mask"].sum(1)
    with torch.no_grad():
        emb = tiny_model.encoder.embed(b["input_ids"], b["token_type_ids"])
        out = tiny_model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                                 skip_layers=[True, True, True])
        lengths = LengthConfig((0.5, 0.5, 0.5), "ratio").resolve(real)
        part = tiny_model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths,
                                  skip_layers=[True, False, False])
    assert torch.equal(out.hidden, emb)
    assert torch.equal(part.kept[:, 0], real)  # the skipped layer shrank nothing
    assert torch.equal(part.kept[:, 1], lengths[:, 1])


def test_cls_query_significance_runs_and_drops(tokenizer):
    torch.manual_seed(0)
    from tests.conftest import TINY_BERT

    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT,
                                        significance="cls_query").eval()
    b = _batch(tokenizer, TEXTS)
    lengths = LengthConfig.constant(0.5, 3).resolve(b["attention_mask"].sum(1))
    with torch.no_grad():
        out = model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths)
    assert torch.equal(out.mask.sum(1), lengths[:, -1])


def test_all_ones_rank_gates_change_nothing(tiny_model, tokenizer):
    b = _batch(tokenizer, TEXTS)
    gates = [torch.ones(64)] * 3
    with torch.no_grad():
        a = tiny_model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
        g = tiny_model(b["input_ids"], b["attention_mask"], b["token_type_ids"], rank_gates=gates).logits
    assert (a - g).abs().max() <= 1e-5


def test_significance_scores_hand_case():
    # one head, 3 tokens, third is padding
    probs = torch.tensor([[[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4]]]])
    qmask = torch.tensor([[True, True, False]])
    s = significance_scores(probs, qmask, include_diagonal=True)
    assert torch.allclose(s, torch.tensor([[0.7, 1.3, 0.0]]))
    s = significance_scores(probs, qmask, include_diagonal=False)
    assert torch.allclose(s, torch.tensor([[0.2, 0.5, 0.0]]))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_select_tokens_property(data):
    B = data.draw(st.integers(1, 4))
    K = data.draw(st.integers(2, 12))
    real = [data.draw(st.integers(1, K)) for _ in range(B)]
    mask = torch.tensor([[t < r for t in range(K)] for r in real])
    scores = torch.tensor(data.draw(st.lists(st.lists(st.floats(0, 10), min_size=K, max_size=K),
                                             min_size=B, max_size=B)))
    keep = torch.tensor([data.draw(st.integers(1, r)) for r in real])
    pos = torch.arange(K).expand(B, K)
    idx, new_mask = select_tokens(scores, mask, pos, keep, keep_cls=True)
    ranks = rank_of(scores, mask, pos, keep_cls=True)
    for b in range(B):
        chosen = idx[b][new_mask[b]]
        assert len(chosen) == keep[b]
        assert chosen[0] == 0  # [CLS]
        assert (chosen < real[b]).all()  # never padding
        assert set(ranks[b, chosen].tolist()) == set(range(int(keep[b])))  # exactly the top ranks


def test_bad_lengths_shape_raises(tiny_model, tokenizer):
    from dyntok.errors import ConfigError

    b = _batch(tokenizer, TEXTS)
    with pytest.raises(ConfigError, match="lengths must have shape"):
        tiny_model.encoder(b["input_ids"], b["attention_mask"], lengths=torch.ones(3, 5, dtype=torch.long))


@pytest.mark.parametrize("include_diagonal", [True, False])
@pytest.mark.parametrize("chunk_bytes", [64, 1 << 30])
def test_chunked_attention_equals_one_big_softmax(include_diagonal, chunk_bytes):
    from dyntok.core.attention import attention_with_scores

    torch.manual_seed(0)
    B, H, K, dh = 3, 4, 9, 8
    q, k, v = (torch.randn(B, H, K, dh) for _ in range(3))
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4, [True] * 2 + [False] * 7])
    logits = (q @ k.transpose(-1, -2)) * dh**-0.5
    probs = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min).softmax(-1)
    ctx, scores = attention_with_scores(q, k, v, mask, include_diagonal=include_diagonal, chunk_bytes=chunk_bytes)
    assert torch.allclose(ctx, probs @ v, atol=1e-6)
    assert torch.allclose(scores, significance_scores(probs, mask, include_diagonal), atol=1e-5)


def _span_model(restore: str):
    from tests.conftest import TINY_BERT

    torch.manual_seed(0)
    return DynTokModel.from_pretrained(None, "span", config=TINY_BERT, restore=restore).eval()


def test_last_layer_pickup_runs_the_last_layer_on_every_position(tokenizer):
    """restore="last_layer": dropped tokens rejoin with their last state before the last layer, which then
    equals the last layer run on exactly those states; "output" writes the last states back unchanged."""
    b = _batch(tokenizer, TEXTS)
    real = b["attention_mask"].sum(1)
    lengths = LengthConfig((0.6, 0.4, 0.4), "ratio").resolve(real)
    args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
    pick = _span_model("last_layer")
    with torch.no_grad():
        out = pick.encoder(*args, lengths=lengths, keep_cls=False, restore="last_layer")
        # the states entering the last layer: Drop-and-Restore after two layers
        two = pick.encoder(*args, lengths=lengths, keep_cls=False, restore="output", skip_layers=[False, False, True])
        enc = pick.encoder
        flow = enc.begin(*args)
        flow = type(flow)(**{**flow.__dict__, "h": two.hidden})
        a, _ = enc.attend(2, flow, need_scores=False)
        want = enc._ffn(enc._parts[2], a)
    T = b["input_ids"].size(1)
    assert out.hidden.shape == (len(TEXTS), T, 32)
    assert torch.equal(out.positions, torch.arange(T).expand(len(TEXTS), T))
    mask = b["attention_mask"].bool()
    assert torch.allclose(out.hidden[mask], want[mask], atol=1e-5)
    # the last layer took and kept every real token; the layers before dropped as configured
    assert torch.equal(out.kept[:, 2], real) and torch.equal(out.inputs[:, 2], real)
    assert torch.equal(out.kept[:, :2], lengths[:, :2]) and (lengths[:, 1] < real).all()
    # "output": positions dropped at layer 2 keep their layer-1 state; nothing passes a third layer for them
    with torch.no_grad():
        kept_out = pick.encoder(*args, lengths=lengths, keep_cls=False, restore="output")
    assert torch.equal(kept_out.kept, lengths)
    assert not torch.allclose(kept_out.hidden[mask], out.hidden[mask])


def test_last_layer_pickup_macs_by_hand():
    from dyntok.core.macs import ModelDims, encoder_macs, executed_lengths, length_config_macs

    dims = ModelDims(num_layers=3, hidden=4, intermediate=8, num_heads=2)
    cfg = LengthConfig((6.0, 3.0, 2.0), "tokens", min_tokens=1)
    n = torch.tensor([10])
    inputs, kept = executed_lengths(cfg, n, "last_layer")
    assert inputs.tolist() == [[10, 6, 10]] and kept.tolist() == [[6, 3, 10]]

    def layer(lin: int, lout: int) -> int:  # 4 l d^2 + 2 l^2 d + 2 l' d d_ff
        return 4 * lin * 16 + 2 * lin * lin * 4 + 2 * lout * 4 * 8

    by_hand = layer(10, 6) + layer(6, 3) + layer(10, 10)
    assert float(length_config_macs(dims, cfg, n, restore="last_layer")) == by_hand
    assert float(encoder_macs(dims, n, kept, inputs=inputs)) == by_hand
    assert float(length_config_macs(dims, cfg, n, restore="output")) == layer(10, 6) + layer(6, 3) + layer(3, 2)


def test_encoder_reports_what_ran_for_the_macs_of_both_restore_modes(tokenizer):
    from dyntok.core.macs import ModelDims, encoder_macs, length_config_macs

    b = _batch(tokenizer, TEXTS)
    real = b["attention_mask"].sum(1)
    cfg = LengthConfig((0.7, 0.5, 0.3), "ratio")
    for restore in ("output", "last_layer"):
        model = _span_model(restore)
        dims = ModelDims.from_encoder(model)
        with torch.no_grad():
            out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=cfg.resolve(real))
        executed = encoder_macs(dims, real, out.encoder.kept, inputs=out.encoder.inputs)
        assert torch.equal(executed, length_config_macs(dims, cfg, real, restore=restore))


def test_prefix_cache_gives_the_uncached_logits_exactly(tokenizer):
    """Configurations sharing leading layers reuse them; logits equal the plain forward's bit for bit, for
    classification and for span with both restore modes, cached or not, in any order."""
    import random

    from dyntok.core.prefix_cache import PrefixCache
    from tests.conftest import TINY_BERT

    texts = TEXTS + ["an honest, quiet film that earns every one of its small moments", "no"]
    batches = [dict(_batch(tokenizer, texts[:3])), dict(_batch(tokenizer, texts[3:]))]
    rng = random.Random(0)
    configs = [None, LengthConfig.full(3)]
    for _ in range(40):
        vals = sorted((rng.choice([1.0, 0.9, 0.7, 0.5, 0.3]) for _ in range(3)), reverse=True)
        configs.append(LengthConfig(tuple(vals), "ratio"))
    configs.append(LengthConfig((6.0, 4.0, 2.0), "tokens"))
    torch.manual_seed(0)
    models = [DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT).eval(),
              _span_model("output"), _span_model("last_layer")]
    for model in models:
        for max_bytes in (1 << 30, 20_000, 0):  # room for everything, for a few states, for nothing
            cache = PrefixCache(model, batches, max_bytes)
            for cfg in configs + configs[::-1]:
                for i, b in enumerate(batches):
                    got, enc = cache.logits(i, cfg)
                    real = b["attention_mask"].sum(1)
                    with torch.no_grad():
                        want = model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                                     lengths=cfg.resolve(real) if cfg is not None else None)
                    assert torch.equal(got, want.logits), (model.problem, model.restore, max_bytes, cfg)
                    assert torch.equal(enc.kept, want.encoder.kept)
            if max_bytes == 1 << 30:
                assert cache.layers_reused > cache.layers_run  # most layers were shared
            if max_bytes == 0:
                assert cache.layers_reused == 0


def test_returned_scores_are_the_ones_that_choose_the_kept_tokens(tiny_model, tokenizer):
    b = _batch(tokenizer, TEXTS)
    real = b["attention_mask"].sum(1)
    lengths = torch.stack([real, torch.full_like(real, 3), torch.full_like(real, 3)], 1)  # layer 2 keeps 3
    with torch.no_grad():
        out = tiny_model.encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths,
                                 return_scores=True)
    assert len(out.scores) == 3 and all(s.shape == b["input_ids"].shape for s in out.scores)
    for i in range(len(TEXTS)):
        s = out.scores[1][i]
        assert torch.isinf(s[real[i]:]).all() and torch.isfinite(s[:real[i]]).all()  # padding: -inf
        top = set((s[1:real[i]].topk(2).indices + 1).tolist()) | {0}  # [CLS] and the two most significant
        assert set(out.positions[i][out.mask[i]].tolist()) == top
    assert tiny_model.encoder(b["input_ids"], b["attention_mask"]).scores == []  # only when asked
