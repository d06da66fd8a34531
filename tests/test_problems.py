"""Problem types are objects that own what differs between classification, regression and span extraction;
no module branches on a problem's name."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dyntok.core.problems import PROBLEMS, problem_of
from dyntok.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def test_a_name_maps_to_one_object_and_a_bad_name_is_named():
    for name, problem in PROBLEMS.items():
        assert problem_of(name) is problem is problem_of(problem) and str(problem) == name
        assert pickle.loads(pickle.dumps(problem)) is problem  # one object per name, also after a round trip
    with pytest.raises(ConfigError, match="problem must be one of classification, regression, span, got 'tagging'"):
        problem_of("tagging")


def test_each_problem_owns_its_head_targets_labels_and_outputs():
    cls, reg, span = (PROBLEMS[n] for n in ("classification", "regression", "span"))
    assert (cls.head_outputs(3), reg.head_outputs(3), span.head_outputs(3)) == (3, 1, 2)
    assert cls.keeps_cls and reg.keeps_cls and not span.keeps_cls
    assert (cls.restore("last_layer"), span.restore("last_layer")) == (None, "last_layer")
    n = torch.tensor([10.0, 4.0])
    assert cls.head_macs(8, 3, n).tolist() == [8 * 8 + 8 * 3] * 2 and span.head_macs(8, 3, n).tolist() == [160, 64]
    batch = {"labels": torch.tensor([1, 0]), "index": torch.tensor([7, 8])}
    assert torch.equal(cls.targets(batch), batch["labels"]) and torch.equal(span.targets(batch), batch["index"])
    assert cls.predictions(torch.tensor([[0.1, 0.9], [2.0, 1.0]])).tolist() == [1, 0]
    labels, probs = cls.readable(np.array([[0.0, 1.0]]), ("neg", "pos"))
    assert labels == ["pos"] and probs.sum() == pytest.approx(1.0)
    assert reg.readable(np.array([2.5]), None)[0] == [2.5]
    with pytest.raises(ConfigError, match="predict"):
        span.readable(np.zeros((1, 4, 2)), None)
    assert reg.read_label("f:3", "4.5", (), (0.0, 5.0)) == 4.5
    with pytest.raises(DataError, match="f:3: label '7' is not a number in"):
        reg.read_label("f:3", "7", (), (0.0, 5.0))
    assert cls.read_label("f:4", "b", ("a", "b"), None) == 1
    assert len(set(reg.strata(np.linspace(0, 5, 50)).tolist())) == 5
    assert span.output_names() == ["start_logits", "end_logits"] and cls.output_names() == ["logits"]


def test_no_module_branches_on_a_problem_name():
    branch = re.compile(r"problem(\.name)?\s*(==|!=|in\s*\()")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "dyntok").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert hits == []
