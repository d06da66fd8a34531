"""Task registry: names, label orders, and metrics that follow the argmax / float convention."""

from __future__ import annotations

import pytest
import torch

from dyntok.errors import ConfigError
from dyntok.tasks import TASKS, get_task

GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


def test_registry_has_every_task():
    assert set(TASKS) == {*GLUE, "rotten_tomatoes", "imdb", "squad"}
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.main_metric in spec.metric_names
        expected = {"regression": 1, "span": 2}.get(spec.problem, len(spec.label_names))
        assert spec.num_labels == expected
        assert len(spec.text_keys) in (1, 2)
        assert (spec.glue_dir is not None) == (name in GLUE)
        assert (spec.hub is not None) == (name in GLUE or spec.problem == "span")
    squad = get_task("squad")
    assert (squad.problem, squad.main_metric, squad.hub) == ("span", "f1", ("rajpurkar/squad", "plain_text"))


def test_unknown_task_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown task 'sst3'; choose one of: cola, imdb, mnli,"):
        get_task("sst3")


def test_label_orders_match_the_hub():
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("mnli").test_splits == ("test_matched", "test_mismatched")
    assert get_task("qnli").label_names == ("entailment", "not_entailment")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("wnli").label_names == ("0", "1")
    assert get_task("stsb").problem == "regression" and get_task("stsb").label_range == (0.0, 5.0)
    assert get_task("sst2").hub == ("nyu-mll/glue", "sst2") and get_task("sst2").glue_dir == "SST-2"
    assert get_task("mrpc").is_pair and not get_task("cola").is_pair


@pytest.mark.parametrize(
    ("task", "keys"),
    [("cola", {"val/mcc"}), ("sst2", {"val/accuracy"}), ("mrpc", {"val/accuracy", "val/f1"}),
     ("qqp", {"val/accuracy", "val/f1"}), ("stsb", {"val/pearson", "val/spearman"}),
     ("mnli", {"val/accuracy"}), ("imdb", {"val/accuracy"})],
)
def test_metric_keys_carry_the_prefix(task, keys):
    assert set(get_task(task).metrics("val/").keys()) == keys
    assert set(get_task(task).metrics().keys()) == {k.removeprefix("val/") for k in keys}


def test_binary_metrics_on_argmax_predictions():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    preds, target = logits.argmax(-1), torch.tensor([0, 1, 0, 0, 1])  # one false positive
    out = get_task("mrpc").metrics("test/")(preds, target)
    assert out["test/accuracy"].item() == pytest.approx(0.8)
    assert out["test/f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 1))  # tp=2, fp=1, fn=0
    mcc = get_task("cola").metrics()(preds, target)["mcc"].item()
    tp, tn, fp, fn = 2, 2, 1, 0
    expected = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    assert mcc == pytest.approx(expected)


def test_mnli_accuracy_is_plain_accuracy_not_class_average():
    preds, target = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 0, 2])
    assert get_task("mnli").metrics()(preds, target)["accuracy"].item() == pytest.approx(0.8)


def test_regression_metrics_on_float_predictions():
    preds = torch.tensor([0.5, 1.0, 2.5, 4.0])
    target = torch.tensor([1.0, 2.0, 3.0, 4.5])
    out = get_task("stsb").metrics()(preds, target)
    expected = torch.corrcoef(torch.stack([preds, target]))[0, 1]
    assert out["pearson"].item() == pytest.approx(expected.item(), abs=1e-5)
    assert out["spearman"].item() == pytest.approx(1.0)
