"""Task registry: names, label orders, and metrics that follow the argmax / float convention."""

from __future__ import annotations

import pytest
import torch

from dyntok.data.tasks import TASKS, get_task
from dyntok.errors import ConfigError
from dyntok.evaluation.metrics import task_metrics

GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


def test_registry_has_every_task():
    assert set(TASKS) == {*GLUE, "rotten_tomatoes", "imdb", "squad"}
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.main_metric in spec.metric_names
        expected = {"regression": 1, "span": 2}.get(spec.problem.name, len(spec.label_names))
        assert spec.num_labels == expected
        assert len(spec.text_keys) in (1, 2)
        assert (spec.glue_dir is not None) == (name in GLUE)
        assert (spec.hub is not None) == (name in GLUE or spec.problem.name == "span")
    squad = get_task("squad")
    assert (squad.problem.name, squad.main_metric, squad.hub) == ("span", "f1", ("rajpurkar/squad", "plain_text"))


def test_unknown_task_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown task 'sst3'; choose one of: cola, imdb, mnli,"):
        get_task("sst3")


def test_label_orders_match_the_hub():
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("mnli").test_splits == ("test_matched", "test_mismatched")
    assert get_task("qnli").label_names == ("entailment", "not_entailment")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("wnli").label_names == ("0", "1")
    assert get_task("stsb").problem.name == "regression" and get_task("stsb").label_range == (0.0, 5.0)
    assert get_task("sst2").hub == ("nyu-mll/glue", "sst2") and get_task("sst2").glue_dir == "SST-2"
    assert get_task("mrpc").is_pair and not get_task("cola").is_pair


@pytest.mark.parametrize(
    ("task", "keys"),
    [("cola", {"val/mcc"}), ("sst2", {"val/accuracy"}), ("mrpc", {"val/accuracy", "val/f1"}),
     ("qqp", {"val/accuracy", "val/f1"}), ("stsb", {"val/pearson", "val/spearman"}),
     ("mnli", {"val/accuracy"}), ("imdb", {"val/accuracy"})],
)
def test_metric_keys_carry_the_prefix(task, keys):
    assert set(task_metrics(get_task(task), "val/").keys()) == keys
    assert set(task_metrics(get_task(task)).keys()) == {k.removeprefix("val/") for k in keys}


def test_binary_metrics_on_argmax_predictions():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    preds, target = logits.argmax(-1), torch.tensor([0, 1, 0, 0, 1])  # one false positive
    out = task_metrics(get_task("mrpc"), "test/")(preds, target)
    assert out["test/accuracy"].item() == pytest.approx(0.8)
    assert out["test/f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 1))  # tp=2, fp=1, fn=0
    mcc = task_metrics(get_task("cola"))(preds, target)["mcc"].item()
    tp, tn, fp, fn = 2, 2, 1, 0
    expected = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    assert mcc == pytest.approx(expected)


def test_mnli_accuracy_is_plain_accuracy_not_class_average():
    preds, target = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 0, 2])
    assert task_metrics(get_task("mnli"))(preds, target)["accuracy"].item() == pytest.approx(0.8)


def test_regression_metrics_on_float_predictions():
    preds = torch.tensor([0.5, 1.0, 2.5, 4.0])
    target = torch.tensor([1.0, 2.0, 3.0, 4.5])
    out = task_metrics(get_task("stsb"))(preds, target)
    expected = torch.corrcoef(torch.stack([preds, target]))[0, 1]
    assert out["pearson"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert out["spearman"].item() == pytest.approx(1.0)


# ---- GLUE's scorer (scikit-learn / SciPy) in degenerate cases ------------------------------------------


def _score(task: str, preds, target) -> dict[str, float]:
    out = task_metrics(get_task(task))(torch.as_tensor(preds), torch.as_tensor(target))
    return {k: v.item() for k, v in out.items()}


@pytest.mark.parametrize(("preds", "target"), [
    ([1] * 10, [0, 1, 1, 0, 1, 0, 0, 1, 1, 1]),  # constant predictions: torchmetrics 1.9 says 0.129
    ([0, 1, 1, 0, 1, 0, 0, 1, 1, 1], [1] * 10),  # labels of one class
    ([1] * 6, [1] * 6),                          # both constant: torchmetrics says 1.0
    ([0] * 6, [0] * 6),
])
def test_matthews_correlation_is_zero_where_glue_says_so(preds, target):
    assert _score("cola", preds, target)["mcc"] == 0.0


def test_matthews_correlation_by_hand_binary_and_multiclass():
    # binary: tp=3 tn=2 fp=1 fn=2 -> (3*2 - 1*2) / sqrt(4 * 5 * 3 * 4)
    preds, target = [1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 0, 0]
    assert _score("cola", preds, target)["mcc"] == pytest.approx(4 / (4 * 5 * 3 * 4) ** 0.5, abs=1e-12)
    from dyntok.evaluation.metrics import MatthewsCorrCoef

    # 3 classes, confusion [[2,1,0],[0,1,1],[1,0,1]]: c=4 s=7 t=(3,2,2) p=(3,2,2)
    # (4*7 - 17) / sqrt((49 - 17) * (49 - 17)) = 11 / 32
    m = MatthewsCorrCoef(num_classes=3)
    m.update(torch.tensor([0, 0, 1, 1, 2, 2, 0]), torch.tensor([0, 0, 0, 1, 1, 2, 2]))
    assert m.compute().item() == pytest.approx(11 / 32, abs=1e-12)
    assert MatthewsCorrCoef(num_classes=3)(torch.zeros(5, dtype=torch.long), torch.tensor([0, 1, 2, 0, 1])).item() == 0.0


def test_f1_without_positives_is_zero():
    assert _score("mrpc", [0, 0, 0, 0], [0, 0, 0, 0])["f1"] == 0.0
    assert _score("mrpc", [0, 0, 0, 0], [0, 1, 0, 1])["f1"] == 0.0


def test_correlations_of_constant_regression_outputs_are_undefined():
    import math

    out = _score("stsb", [2.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert math.isnan(out["pearson"]) and math.isnan(out["spearman"])  # SciPy: nan for a constant input
    # ties take average ranks: ranks (1, 2.5, 2.5, 4.5, 4.5) against (1..5): hand value 0.9486832980505138
    out = _score("stsb", [1.0, 2.0, 2.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert out["spearman"] == pytest.approx(3 / 10**0.5, abs=1e-6)


def test_glue_metrics_equal_scikit_learn_and_scipy_on_random_predictions():
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    labels = st.lists(st.integers(0, 1), min_size=2, max_size=40)

    @settings(max_examples=60, deadline=None)
    @given(labels, st.data())
    def binary(target, data):
        preds = data.draw(st.lists(st.integers(0, 1), min_size=len(target), max_size=len(target)))
        out = _score("mrpc", preds, target)
        assert out["f1"] == pytest.approx(sk.f1_score(target, preds, zero_division=0.0), abs=1e-6)
        assert out["accuracy"] == pytest.approx(sk.accuracy_score(target, preds), abs=1e-6)
        assert _score("cola", preds, target)["mcc"] == pytest.approx(sk.matthews_corrcoef(target, preds), abs=1e-9)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(0, 2), min_size=2, max_size=40), st.data())
    def multiclass(target, data):
        from dyntok.evaluation.metrics import MatthewsCorrCoef

        preds = data.draw(st.lists(st.integers(0, 2), min_size=len(target), max_size=len(target)))
        got = MatthewsCorrCoef(num_classes=3)(torch.tensor(preds), torch.tensor(target)).item()
        assert got == pytest.approx(sk.matthews_corrcoef(target, preds), abs=1e-9)

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 10)), min_size=3, max_size=30))
    def regression(pairs):
        import math
        import warnings

        preds, target = [float(a) / 2 for a, _ in pairs], [float(b) / 2 for _, b in pairs]
        out = _score("stsb", preds, target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SciPy warns on a constant input
            want = {"pearson": stats.pearsonr(preds, target).statistic, "spearman": stats.spearmanr(preds, target).statistic}
        for k, v in want.items():
            assert (math.isnan(out[k]) and math.isnan(v)) or out[k] == pytest.approx(v, abs=1e-4), (k, out[k], v)

    binary()
    multiclass()
    regression()


def test_metrics_built_for_one_process_do_not_sync():
    for m in task_metrics(get_task("cola"), sync_on_compute=False).values():
        assert m.sync_on_compute is False and m._to_sync is False
