"""Rank gates and the bi-modal regularizer (method=gates)."""

from __future__ import annotations

import json

import pytest
import torch

from dyntok.core.gates import RankGates
from dyntok.core.model import DynTokModel
from dyntok.errors import ConfigError
from tests.conftest import TINY_BERT
from tests.test_run import TINY, _run

TEXTS = ["a gorgeous, witty, seductive movie about nothing much", "dull and long"]


def test_closed_gates_train_as_the_physical_drop(tokenizer):
    """Gates closed from rank m in layer 1 (soft form: key weights 0 in later layers) give the same [CLS]
    output and logits as physically keeping the top-m tokens after layer 1."""
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config={**TINY_BERT, "num_hidden_layers": 3}).eval()
    b = tokenizer(TEXTS, padding=True, return_tensors="pt")
    T, m = b["input_ids"].size(1), 3
    gate = torch.ones(T)
    gate[m:] = 0.0
    real = b["attention_mask"].sum(1)
    lengths = torch.stack([real.clamp(max=m)] * 3, dim=1)
    with torch.no_grad():
        plain = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        gated = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], rank_gates=[gate, None, None])
        dropped = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths)
    assert torch.allclose(gated.encoder.cls, dropped.encoder.cls, atol=1e-5)
    assert torch.allclose(gated.logits, dropped.logits, atol=1e-5)
    assert not torch.allclose(plain.encoder.cls, gated.encoder.cls, atol=1e-3)  # closing gates changes the model


def test_a_half_open_gate_halves_the_keys_attention(tokenizer):
    """g = 0.5 on rank k: that key's attention probabilities in the next layer are halved, then renormalised."""
    from dyntok.core.attention import attention_with_scores

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.ones(2, 5, dtype=torch.bool)
    w = torch.ones(2, 5)
    w[:, 2] = 0.5
    ctx, _ = attention_with_scores(q, k, v, mask, key_weight=w)
    p = (q @ k.transpose(-1, -2) / 2).softmax(-1)
    p[..., 2] *= 0.5
    p = p / p.sum(-1, keepdim=True)
    assert torch.allclose(ctx, p @ v, atol=1e-6)


def test_regularizers_hand_computed():
    g = RankGates(num_layers=2, max_length=4, parametrization="clip")
    with torch.no_grad():
        g.theta.copy_(torch.tensor([[1.0, 0.5, 0.0, 1.0], [1.0, 0.25, 0.5, 0.0]]))
    lengths = torch.tensor([4, 2])  # u = [2, 2, 1, 1]
    sparse, bimodal = g.regularizers(lengths, "linear")  # w = [1, 2]
    u = torch.tensor([2.0, 2, 1, 1])
    w = torch.tensor([1.0, 2])
    vals = g.theta.detach()
    weight = w[:, None] * u[None, :]
    assert sparse.item() == pytest.approx(((weight * vals).sum() / weight.sum()).item())
    # by hand: layer1 2*1+2*.5+0+1 = 4; layer2 2*(2+.5+.5+0) = 6; total weight 6 + 12 = 18
    assert sparse.item() == pytest.approx(10 / 18)
    # g(1-g): layer1 2*.25 = .5; layer2 2*(2*.1875 + .25) = 1.25 -> 1.75 / 18
    assert bimodal.item() == pytest.approx(1.75 / 18)
    sparse_u, _ = g.regularizers(lengths, "uniform")
    assert sparse_u.item() == pytest.approx((4 + 3) / 12)
    sparse_r, _ = g.regularizers(lengths, "reverse")  # w = [2, 1]
    assert sparse_r.item() == pytest.approx((2 * 4 + 3) / 18)
    with pytest.raises(ConfigError, match="method.layer_weighting .* got 'quadratic'"):
        g.regularizers(lengths, "quadratic")


def test_gradients_reach_the_gates_only_where_inputs_reach(tokenizer):
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT)
    gates = RankGates(model.num_layers, 64)
    b = tokenizer(TEXTS, padding=True, return_tensors="pt")
    T = b["input_ids"].size(1)
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], rank_gates=gates.training_gates())
    out.logits.sum().backward()
    task_grad = gates.theta.grad.clone()
    # The task reaches every gated layer but the last (only [CLS], whose gate is fixed, leaves it).
    assert task_grad[:-1, 1:T].abs().sum(1).gt(0).all()
    assert task_grad[:, T:].abs().sum() == 0  # ranks no input reached get no gradient
    gates.theta.grad = None
    sparse, _ = gates.regularizers(b["attention_mask"].sum(1))
    sparse.backward()
    assert (gates.theta.grad[:, :T] > 0).all() and gates.theta.grad[:, T:].abs().sum() == 0


def test_hard_inference_drops_exactly_the_closed_ranks(tokenizer):
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT).eval()
    gates = RankGates(model.num_layers, 64, threshold=0.5)
    with torch.no_grad():
        gates.theta.fill_(0.9)
        gates.theta[0, 6:] = 0.1  # layer 1 keeps ranks 0..5
        gates.theta[1, 4:] = 0.2  # layer 2 keeps ranks 0..3 of those
        gates.theta[2, 2:] = 0.3  # layer 3 keeps ranks 0..1
    b = tokenizer(TEXTS, padding=True, return_tensors="pt")
    real = b["attention_mask"].sum(1)
    lengths = gates.hard_lengths(real)
    assert lengths.tolist() == [[min(6, n), min(4, n), min(2, n)] for n in real.tolist()]
    with torch.no_grad():
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=lengths)
    assert torch.equal(out.encoder.kept, lengths)
    assert torch.equal(out.encoder.mask.sum(1), lengths[:, -1])


LONGER = ["a gorgeous, witty, seductive movie about nothing much, and the best of its kind this year",
          "dull and long, with a plot that goes nowhere at all", "fine"]


def train_and_hard_forward(model, gates, tokenizer):
    """Eval-mode logits of the straight-through training forward and of hard physical inference on LONGER."""
    b = tokenizer(LONGER, padding=True, return_tensors="pt")
    real, T = b["attention_mask"].sum(1), b["input_ids"].size(1)
    with torch.no_grad():
        trained = model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                        rank_gates=gates.training_gates(real, T))
        hard = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], keep_by_rank=gates.open_table(real, T))
    return trained, hard, b, real


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", ["absolute", "relative"])
def test_hard_inference_equals_the_straight_through_training_forward(tokenizer, seed, scale):
    """Gates with holes (a closed rank below open ones) in every layer: hard physical inference keeps the
    same tokens as the training forward, so in eval mode both give the same logits and kept counts; the
    top-l_j rule with the same counts keeps other tokens and gives other logits."""
    torch.manual_seed(seed)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT).eval()
    gates = RankGates(model.num_layers, 64, straight_through=True, rank_scale=scale, bins=8)
    with torch.no_grad():
        gates.theta.copy_((torch.rand(gates.theta.shape) < 0.7).float() * 0.8 + 0.1)
    trained, hard, b, real = train_and_hard_forward(model, gates, tokenizer)
    with torch.no_grad():
        top = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], lengths=gates.hard_lengths(real))
    assert torch.equal(hard.encoder.kept, gates.hard_lengths(real))
    assert torch.allclose(trained.logits, hard.logits, atol=1e-5)
    assert torch.allclose(trained.encoder.cls, hard.encoder.cls, atol=1e-5)
    assert not torch.allclose(top.encoder.cls, hard.encoder.cls, atol=1e-3)


def test_token_sparsity_is_the_share_of_tokens_hard_inference_keeps(tokenizer):
    """sparsity=tokens: with hard gates, R_tokens (uniform weights) is the share of token-layers the
    physical inference computes; a gate is charged for every later layer its closing saves."""
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT).eval()
    gates = RankGates(model.num_layers, 64, straight_through=True)
    with torch.no_grad():
        gates.theta.copy_((torch.rand(3, 64) < 0.6).float() * 0.8 + 0.1)
    b = tokenizer(LONGER, padding=True, return_tensors="pt")
    out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], rank_gates=gates.training_gates())
    r = gates.token_sparsity(out.encoder.alive, b["attention_mask"], "uniform")
    real_n, T = b["attention_mask"].sum(1), b["input_ids"].size(1)
    with torch.no_grad():
        hard = model(b["input_ids"], b["attention_mask"], b["token_type_ids"],
                     keep_by_rank=gates.open_table(real_n, T))
    real = b["attention_mask"].sum()
    assert r.item() == pytest.approx(hard.encoder.kept.sum().item() / (3 * real.item()))
    assert r.item() < 1.0
    r.backward()
    grad = gates.theta.grad
    # a layer-1 gate saves up to 3 layers, a layer-3 gate one: the earlier gates get the larger gradients
    assert grad[0].sum() > grad[2].sum() > 0
    linear = gates.token_sparsity(out.encoder.alive, b["attention_mask"], "linear")
    kept = hard.encoder.kept.sum(0).double()
    assert linear.item() == pytest.approx(((kept * torch.tensor([1.0, 2, 3])).sum() / (6 * real)).item())


def test_gated_out_tokens_leave_the_significance_queries(tokenizer):
    """Layer 2 ranks its tokens by the attention of the tokens still present: a token gated out after
    layer 1 no longer adds its attention row to the scores (it is gone at inference)."""
    from dyntok.core.attention import attention_with_scores

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    mask = torch.ones(1, 4, dtype=torch.bool)
    w = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    _, scores = attention_with_scores(q, k, v, mask, key_weight=w)
    keep = torch.tensor([0, 1, 3])
    _, ref = attention_with_scores(q[:, :, keep], k[:, :, keep], v[:, :, keep], mask[:, keep])
    assert torch.allclose(scores[:, keep], ref, atol=1e-6)
    assert scores[0, 2].abs().item() < 1e-6


def test_relative_gates_index_the_share_of_the_input():
    """rank_scale=relative: rank k of an n-token input meets gate floor(k G / n); the same open share keeps
    the same share of a short and a long input, and usage counts tokens per gate."""
    gates = RankGates(2, 128, rank_scale="relative", bins=4, fixed_first=True)
    assert gates.theta.shape == (2, 4)
    real = torch.tensor([4, 8, 2])
    assert gates.gate_index(real, 8).tolist() == [[0, 1, 2, 3, 3, 3, 3, 3], [0, 0, 1, 1, 2, 2, 3, 3],
                                                  [0, 2, 3, 3, 3, 3, 3, 3]]
    with torch.no_grad():
        gates.theta[0, 2:] = 0.0  # layer 1 keeps the top half of every input
        gates.theta[1, 1:] = 0.0  # layer 2 keeps the top quarter of the input (rank 0 always)
    assert gates.hard_lengths(real).tolist() == [[2, 1], [4, 2], [1, 1]]
    # tokens meeting each gate, [CLS] (rank 0) left out: n=4 -> 1,2,3; n=8 -> 0,1,1,2,2,3,3; n=2 -> 2
    assert gates._usage_weights(real).tolist() == [1.0, 3.0, 4.0, 3.0]
    with pytest.raises(ValueError, match="real_lengths"):
        gates.training_gates()


def test_hard_lengths_are_non_increasing_even_if_gates_are_not():
    gates = RankGates(3, 16)
    with torch.no_grad():
        gates.theta.fill_(1.0)
        gates.theta[0, 3:] = 0.0  # layer 1 keeps 3
    lengths = gates.hard_lengths(torch.tensor([10]))
    assert lengths.tolist() == [[3, 3, 3]]  # later layers cannot grow back


def test_skip_first_layers_keep_every_token():
    gates = RankGates(3, 16, skip_first=1)
    with torch.no_grad():
        gates.theta.fill_(0.0)
    assert gates.training_gates()[0] is None
    assert gates.hard_lengths(torch.tensor([10])).tolist() == [[10, 1, 1]]


def test_min_keep_floor_keeps_a_share_of_each_input_and_is_not_charged(tokenizer):
    gates = RankGates(3, 16, min_keep=0.25, fixed_first=True)
    with torch.no_grad():
        gates.theta.fill_(0.0)
        gates.theta[0, :] = 1.0  # layer 1 keeps everything; layers 2-3 keep only the floor
    real = torch.tensor([10, 4, 1])
    # ceil(0.25 n): 3, 1, 1 tokens
    assert gates.hard_lengths(real).tolist() == [[10, 3, 3], [4, 1, 1], [1, 1, 1]]
    table = gates.training_gates(real, 10)[1]
    assert table[0].tolist() == [1.0] * 3 + [0.0] * 7 and table[1, 0].item() == 1.0
    # R_sparse charges only ranks above the floor (and not rank 0, fixed): u = [0, 0, 0, 1 x 7]
    sparse, _ = gates.regularizers(real, "uniform")
    assert sparse.item() == pytest.approx(7 / 21)  # layer 1 open, layers 2-3 closed
    with pytest.raises(ValueError, match="min_keep floor need real_lengths"):
        gates.training_gates()
    # the training forward keeps the floor too: the same logits as the hard inference
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT).eval()
    gates = RankGates(model.num_layers, 64, straight_through=True, min_keep=0.3)
    with torch.no_grad():
        gates.theta.fill_(0.1)
    trained, hard, _, real = train_and_hard_forward(model, gates, tokenizer)
    floor = torch.ceil(0.3 * real).long()
    assert torch.equal(hard.encoder.kept, floor[:, None].expand(-1, model.num_layers))
    assert torch.allclose(trained.logits, hard.logits, atol=1e-5)


def test_straight_through_forward_is_hard_gradient_soft():
    gates = RankGates(1, 4, straight_through=True)
    with torch.no_grad():
        gates.theta.copy_(torch.tensor([[0.9, 0.6, 0.4, 0.1]]))
    g = gates.training_gates()[0]
    assert g.tolist() == [1.0, 1.0, 0.0, 0.0]
    g.sum().backward()
    assert torch.equal(gates.theta.grad, torch.ones(1, 4))


def test_bimodal_share_counts_gates_near_zero_or_one():
    gates = RankGates(1, 4)
    with torch.no_grad():
        gates.theta.copy_(torch.tensor([[1.0, 0.97, 0.5, 0.02]]))
    gates.usage += 1
    assert gates.stats()["gate_bimodal_share"] == pytest.approx(0.75)


@pytest.mark.parametrize("kw", [{"parametrization": "tanh"}, {"init": 0.0}, {"threshold": 1.0}, {"skip_first": 3},
                                {"min_keep": 1.0}, {"min_keep": -0.1}])
def test_bad_gate_options_raise(kw):
    with pytest.raises(ConfigError):
        RankGates(3, 16, **kw)


@pytest.mark.parametrize("scale", ["absolute", "relative"])
def test_gates_training_run_writes_learned_configuration(tmp_path, scale):
    proc = _run([*TINY, "method=gates", "regularizer.lambda=0.5", "regularizer.mu=0.1", "method.gate_lr=0.3",
                 f"method.rank_scale={scale}"], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["method"] == "gates"
    assert len(rec["length_config"]["values"]) == 3
    assert 0.0 <= rec["gates"]["gate_bimodal_share"] <= 1.0
    test = rec["splits"]["test"]
    # a strong lambda with a high gate learning rate must have closed some gates within 3 steps
    assert test["macs_ratio"] < 1.0
    assert rec["gates"]["gate_mean"] < 1.0
    assert rec["gates"]["rank_scale"] == scale and len(rec["gates"]["open_gates"]) == 3
    # the measured retention per layer is non-increasing and below 1 somewhere
    kept = [test[f"retention_l{j}"] for j in (1, 2, 3)]
    assert kept == sorted(kept, reverse=True) and kept[-1] < 1.0


def _gates_module(**kw):
    from dyntok.data.tasks import get_task
    from dyntok.methods.gates import GatesModule

    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT)
    return GatesModule(model=model, task=get_task("sst2"),
                       **{"regularizer": {"lambda": 0.0, "mu": 0.0}, "max_length": 32, **kw})


def test_distillation_pulls_the_gated_student_towards_the_frozen_fine_tuned_model(tokenizer):
    from dyntok.methods.base import distillation_loss

    module = _gates_module(distill=1.0)
    with pytest.raises(ConfigError, match="method.distill=1.0 needs a fine-tuned teacher"):
        module.before_fit(None)
    module.on_init_from({"method": "FullFineTuning"})  # the weights just loaded become the teacher
    module.before_fit(None)
    b = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"), labels=torch.tensor([1, 0]))
    module.eval()  # no dropout: with every gate open the student is the teacher
    assert module.training_step(b, 0).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        module.model.head.weight[0].add_(0.5)  # the student moves away; the teacher is a copy, it stays
    loss = module.training_step(b, 0)
    with torch.no_grad():
        student = module(b).logits
        teacher = module.teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
    assert loss.item() > 1e-4 and loss.item() == pytest.approx(distillation_loss(student, teacher, "classification").item())
    loss.backward()
    assert module.model.head.weight.grad is not None
    assert all(p.grad is None for p in module.teacher.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())  # never saved in checkpoints
    with pytest.raises(ConfigError, match="method.distill"):
        _gates_module(distill=1.5)


def test_warns_when_lambda_closed_no_gate(caplog):
    module = _gates_module(gate_lr=1e-3)
    module.lam = 3.0
    module.gates.usage[1:] = 1.0  # ranks 1.. reached in training
    with caplog.at_level("WARNING", logger="dyntok"):
        assert module.warn_if_no_gate_closed()
    assert "no gate closed" in caplog.text and "method.gate_lr=0.001" in caplog.text
    caplog.clear()
    with torch.no_grad():
        module.gates.theta[-1, 5] = 0.2  # one gate closed: lambda did act
    assert not module.warn_if_no_gate_closed() and not caplog.text
    module.lam = 0.0
    with torch.no_grad():
        module.gates.theta.fill_(1.0)
    assert not module.warn_if_no_gate_closed()  # no sparsity asked for, nothing to warn about


def test_gates_module_rejects_an_unknown_layer_weighting_when_built():
    with pytest.raises(ConfigError, match="method.layer_weighting .* got 'quadratic'"):
        _gates_module(layer_weighting="quadratic")


# ---- the compute target (method.target_macs): a Lagrange multiplier by dual ascent ----------------------


def test_the_multiplier_rises_above_the_target_and_falls_below_it():
    module = _gates_module(target_macs=0.5, multiplier_lr=0.1)
    ups = [module.target.step(0.3, 1.0) for _ in range(5)]  # ratio 0.8 against 0.5
    assert ups == sorted(ups) and ups[-1] == pytest.approx(0.15)
    downs = [module.target.step(-0.2, 1.0) for _ in range(10)]  # below the target: the pressure eases ...
    assert downs == sorted(downs, reverse=True) and downs[-1] == pytest.approx(-0.05)  # ... then reverses


def test_the_multiplier_weighs_a_batch_by_the_macs_it_costs():
    cheap, costly = _gates_module(target_macs=0.5, multiplier_lr=0.1), _gates_module(target_macs=0.5, multiplier_lr=0.1)
    for m in (cheap, costly):
        m.target.step(0.3 * 10.0, 10.0)  # a batch of long inputs, 0.3 above the target
    step_cheap = cheap.target.step(0.3 * 1.0, 1.0) - 0.03  # short inputs, the same ratio gap
    step_costly = costly.target.step(0.3 * 10.0, 10.0) - 0.03
    assert step_cheap == pytest.approx(0.1 * 0.3 / 5.5) and step_costly == pytest.approx(0.03)  # mean baseline 5.5, 10


def test_the_expected_ratio_is_the_hard_one_under_straight_through_gates(tokenizer):
    module = _gates_module(target_macs=0.5)
    with torch.no_grad():
        module.gates.theta.data[1:, 4:] = 0.0  # layers 2-3 close every rank from 4 on
    batch = tokenizer(["a gorgeous, witty, seductive movie about nothing much", "dull and long"], padding=True,
                      return_tensors="pt")
    real = batch["attention_mask"].sum(1)
    module.train()
    out = module(dict(batch), rank_gates=module.gates.training_gates(real, batch["input_ids"].size(1)))
    expected = module.expected_macs_ratio(out.encoder.alive, batch["attention_mask"])
    assert float(expected.detach()) == pytest.approx(module.hard_macs_ratio(real)) and float(expected.detach()) < 0.9
    expected.backward()  # differentiable in the gates: the soft gradient reaches them
    assert module.gates.theta.grad is not None and module.gates.theta.grad.abs().sum() > 0


def test_the_multiplier_survives_a_checkpoint():
    module = _gates_module(target_macs=0.5)
    module.target.step(3.0, 1.0)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    again = _gates_module(target_macs=0.5)
    again.on_load_checkpoint(ckpt)
    assert module.target.multiplier > 0 and again.target.multiplier == pytest.approx(module.target.multiplier)


@pytest.mark.parametrize(("kw", "key"), [
    ({"target_macs": 0.0}, "method.target_macs"),
    ({"target_macs": 1.5}, "method.target_macs"),
    ({"target_macs": 0.5, "regularizer": {"lambda": 2.5, "mu": 0.0}}, "regularizer.lambda"),
    ({"target_macs": 0.5, "straight_through": False}, "method.straight_through"),
    ({"target_baseline": "mean"}, "method.target_baseline"),
    ({"target_macs": 0.5, "target_warmup": 1.5}, "method.target_warmup"),
    ({"retrain_epochs": -1}, "method.retrain_epochs"),
    ({"target_macs": 0.5, "target_freeze": 0.0}, "method.target_freeze"),
    ({"target_macs": 0.5, "target_min_length": -1}, "method.target_min_length"),
])
def test_a_bad_target_names_its_key(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _gates_module(**kw)


def test_the_cut_meets_the_target_on_the_training_lengths_and_closes_the_lowest_gates_first():
    module = _gates_module(target_macs=0.4, max_length=32)
    torch.manual_seed(1)
    with torch.no_grad():
        module.gates.theta.uniform_(0.2, 0.9)  # gates in flight, on both sides of the threshold
    module.target.count(torch.randint(4, 33, (200,)))
    cal = module.target.calibrate(module.gates, module.hard_macs_ratio)
    assert cal["ratio_after"] == pytest.approx(0.4, abs=0.03) and cal["ratio_before"] != cal["ratio_after"]
    g = module.gates.values()
    assert set(g.unique().tolist()) <= {0.0, 1.0}  # soft equals hard from here on
    lengths = module.target.length_counts.nonzero().squeeze(1)
    again = module.hard_macs_ratio(lengths, module.target.length_counts[lengths])
    assert again == pytest.approx(cal["ratio_after"])


def test_the_cut_can_meet_the_target_on_the_longer_inputs_only():
    short, long_ = _gates_module(target_macs=0.5, max_length=64), _gates_module(target_macs=0.5, max_length=64,
                                                                                  target_min_length=20)
    for m in (short, long_):
        m.target.count(torch.cat([torch.full((300,), 6), torch.full((100,), 40)]))  # mostly phrases
        m.target.calibrate(m.gates, m.hard_macs_ratio)
    forty = torch.tensor([40])
    on_long = [m.hard_macs_ratio(forty) for m in (short, long_)]
    assert on_long[1] == pytest.approx(0.5, abs=0.03) and abs(on_long[0] - 0.5) > 0.03
    with pytest.raises(RuntimeError, match="method.target_min_length=50"):
        m = _gates_module(target_macs=0.5, max_length=64, target_min_length=50)
        m.target.calibrate(m.gates, m.hard_macs_ratio)


def test_settled_gates_are_cut_from_the_highest_ranks():
    module = _gates_module(target_macs=0.6, max_length=32)  # every gate at 1: only the tie-break can decide
    module.target.count(torch.randint(8, 33, (100,)))
    assert module.target.calibrate(module.gates, module.hard_macs_ratio)["ratio_after"] == pytest.approx(0.6, abs=0.03)
    opened = module.gates.values() > 0.5
    for row in opened:  # per layer, a prefix of ranks stays open
        k = int(row.sum())
        assert row[:k].all() and not row[k:].any()
    assert opened.sum(1).tolist() == sorted(opened.sum(1).tolist(), reverse=True)  # earlier layers keep as many


def test_the_cut_keeps_the_ordering_the_gates_learned():
    module = _gates_module(target_macs=0.6, max_length=16)
    with torch.no_grad():
        module.gates.theta.copy_(torch.linspace(0.05, 0.95, module.gates.theta.numel()).view_as(module.gates.theta))
    before = module.gates.values().clone()
    module.target.count(torch.full((10,), 16))
    module.target.calibrate(module.gates, module.hard_macs_ratio)
    opened = module.gates.values() > 0.5
    assert before[opened].min() > before[~opened].max()  # every open gate had a higher value than every closed one


def test_a_target_run_ends_at_its_target_with_the_hard_rule(tmp_path):
    run = tmp_path / "run"
    proc = _run([*TINY, "method=gates", "regularizer.lambda=0", "method.target_macs=0.5", "data.max_train_samples=160",
                 "data.max_eval_samples=120", "trainer.max_epochs=2", "method.target_freeze=0.5",
                 "method.retrain_epochs=1", "trainer.log_every_n_steps=1", "speedup.enabled=false"], run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((run / "results.json").read_text())
    assert rec["splits"]["test"]["macs_ratio"] == pytest.approx(0.5, abs=0.03)
    gates = rec["gates"]
    assert gates["calibration"]["ratio_after"] == pytest.approx(0.5, abs=0.03) and gates["retrain_epochs"] == 1
    assert "frozen at step 10" in proc.stdout + proc.stderr  # 10 steps an epoch: frozen half-way through 2
    from dyntok.report import main as report

    assert report([str(run), "--controller", str(tmp_path / "trace")]) == 0  # the per-step log, plotted
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert (tmp_path / "trace.png").stat().st_size > 0 and len(trace["multiplier"]) == 30  # every step
    assert len({v for _, v in trace["multiplier"][10:]}) == 1  # frozen from step 10: the multiplier rests
    targets = [v for _, v in trace["target_macs"]]
    assert targets[0] == pytest.approx(1.0) and targets == sorted(targets, reverse=True)  # warmed up from 1
    assert targets[-1] == pytest.approx(0.5)
    assert report([str(tmp_path / "nowhere"), "--controller", str(tmp_path / "x")]) == 2


def test_one_stage_target_runs_cut_the_gates_when_training_ends():
    module = _gates_module(target_macs=0.5)
    with torch.no_grad():
        module.gates.theta.uniform_(0.3, 0.8)
    module.target.count(torch.randint(5, 30, (64,)))
    module.on_train_end()
    assert module.gates_frozen and not module.gates.theta.requires_grad
    assert module.target.calibration["ratio_after"] == pytest.approx(0.5, abs=0.03)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    again = _gates_module(target_macs=0.5)
    again.on_load_checkpoint(ckpt)  # a resumed second stage keeps the gates frozen and the lengths counted
    assert again.gates_frozen and again.target.calibration == module.target.calibration
    assert torch.equal(again.target.length_counts, module.target.length_counts)


def test_a_second_stage_needs_epochs(tmp_path):
    proc = _run([*TINY, "method=gates", "method.retrain_epochs=1", "trainer.max_epochs=-1", "trainer.max_steps=3"],
                tmp_path / "run", timeout=120)
    assert proc.returncode != 0 and "method.retrain_epochs" in proc.stderr, proc.stderr[-2000:]


def test_ranking_distillation_prefers_the_teachers_order():
    from dyntok.methods.base import ranking_distillation_loss

    teacher = torch.tensor([[9.0, 3.0, 2.0, 1.0, float("-inf")]])  # position 0 ([CLS]) and padding left out
    same = torch.tensor([[0.0, 3.0, 2.0, 1.0, float("-inf")]], requires_grad=True)
    reverse = torch.tensor([[0.0, 1.0, 2.0, 3.0, float("-inf")]])
    loss = ranking_distillation_loss(same, teacher)
    assert float(loss.detach()) < float(ranking_distillation_loss(reverse, teacher))
    loss.backward()
    assert same.grad[0, 1] < 0 < same.grad[0, 3] and same.grad[0, 0] == 0  # widens the teacher's gaps
    assert float(ranking_distillation_loss(same, torch.ones_like(teacher)).detach()) == 0.0  # ties: no pair


def test_ranking_distillation_needs_a_teacher_and_trains_the_significance_scores(tokenizer):
    from dyntok.methods.base import ranking_distillation_loss

    module = _gates_module(rank_distill=1.0)
    with pytest.raises(ConfigError, match="method.rank_distill=1.0 needs a fine-tuned teacher"):
        module.before_fit(None)
    module.on_init_from({"method": "full"})
    module.before_fit(None)
    with torch.no_grad():  # a student whose order differs from the teacher's
        for p in module.model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    real = b["attention_mask"].sum(1)
    out = module(b, rank_gates=module.gates.training_gates(real, b["input_ids"].size(1)), return_scores=True)
    with torch.no_grad():
        teacher = module.teacher(b["input_ids"], b["attention_mask"], b.get("token_type_ids"), return_scores=True)
    loss = ranking_distillation_loss(out.encoder.scores[1], teacher.encoder.scores[-1])
    loss.backward()
    grads = [p.grad for n, p in module.model.named_parameters() if "query" in n and p.grad is not None]
    assert float(loss.detach()) > 0 and grads and any(g.abs().sum() > 0 for g in grads)
