"""A checkpoint is data: loading one never runs code from it, by any path, unless the user vouches for it."""

from __future__ import annotations

import os

import pytest
import torch

from tests.test_run import TINY, _run


class _Payload:
    """Unpickling this calls os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("safety") / "run"
    proc = _run(TINY, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _poisoned(tiny_run, tmp_path):
    """The tiny run's last checkpoint with one extra entry that runs a command when unpickled."""
    from dyntok.methods.checkpoint import load_file

    state = load_file(tiny_run / "checkpoints" / "last.ckpt")  # dyntok's own checkpoints load as plain data
    marker = tmp_path / "ran"
    state["extra"] = _Payload(marker)
    path = tmp_path / "poisoned.ckpt"
    torch.save(state, path)
    return path, marker


def test_every_loading_path_refuses_a_pickled_callable(tiny_run, tmp_path):
    import dyntok
    from dyntok.bench import load_checkpoint
    from dyntok.core.model import DynTokModel
    from dyntok.errors import CheckpointError
    from dyntok.methods.checkpoint import read_checkpoint

    path, marker = _poisoned(tiny_run, tmp_path)
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        dyntok.load(path)
    from tests.conftest import TINY_BERT

    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT), str(path))
    for args in (["train=false", f"init_from={path}"], [f"ckpt_path={path}"]):
        proc = _run([*TINY, *args], tmp_path / f"run_{len(args)}")
        assert proc.returncode == 2 and "refused to load" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()  # nothing ran
    # a user who vouches for the file gets it, payload and all
    dyntok.load(path, trusted=True)
    assert marker.exists()


def test_dyntoks_own_checkpoints_load_as_plain_data(tiny_run):
    from dyntok.methods.checkpoint import load_file

    for ckpt in (tiny_run / "checkpoints").glob("*.ckpt"):
        assert "state_dict" in load_file(ckpt)
