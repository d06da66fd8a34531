"""A checkpoint written by an earlier layout of the package still loads and evaluates to the same numbers."""
import json
from pathlib import Path

import numpy as np
import pytest

import dyntok

HERE = Path(__file__).parent / "data" / "checkpoints"
RECORDED = json.loads((HERE / "recorded_45cc2ce.json").read_text())


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_old_checkpoint_evaluates_as_recorded(name):
    rec = RECORDED[name]
    pred = dyntok.load(HERE / f"{name}.ckpt")
    got = pred.evaluate("test")
    assert set(got) == set(rec["test"])
    for key, want in rec["test"].items():
        assert got[key] == pytest.approx(want, rel=1e-6, abs=1e-9), key
    probs = pred.predict(rec["texts"]).probabilities
    np.testing.assert_allclose(probs, np.array(rec["probabilities"]), rtol=0, atol=1e-6)
