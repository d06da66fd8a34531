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
    proc = _run([*TINY, "checkpoint.keep_all=true"], run)
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
    with pytest.raises(CheckpointError, match="trust_checkpoint=True"):
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
    dyntok.load(path, trust_checkpoint=True)
    assert marker.exists()


def test_dyntoks_own_checkpoints_load_as_plain_data(tiny_run):
    from dyntok.methods.checkpoint import load_file

    for ckpt in (tiny_run / "checkpoints").glob("*.ckpt"):
        assert "state_dict" in load_file(ckpt)


# ---- a checkpoint that loads as plain data but names files or classes -------------------------------------


def _crafted(tiny_run, tmp_path, name: str = "final.ckpt", **changes):
    """The tiny run's checkpoint ``name`` with ``changes`` applied to its ``dyntok`` metadata, saved under
    ``tmp_path/crafted/checkpoints`` beside a copy of the run's results.json (a run folder compare reads)."""
    import json

    from dyntok.methods.checkpoint import load_file

    state = load_file(tiny_run / "checkpoints" / name)
    for key, value in changes.items():
        if key == "tokenizer_files":
            state["dyntok"]["tokenizer_files"].update(value)
        elif key == "method_target":
            state["dyntok"]["config"]["method"]["_target_"] = value
        else:
            state["dyntok"][key] = value
    run = tmp_path / "crafted"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(state, run / "checkpoints" / name)
    rec = json.loads((tiny_run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**rec, "best_checkpoint": None, "tested_weights": "final"}))
    return run / "checkpoints" / name


def test_tokenizer_file_names_cannot_leave_the_temporary_folder_on_any_loading_path(tiny_run, tmp_path, monkeypatch):
    import tempfile

    import dyntok
    from dyntok import api, compare, export
    from dyntok.bench import load_checkpoint
    from dyntok.core.model import DynTokModel
    from dyntok.errors import CheckpointError
    from tests.conftest import TINY_BERT

    scratch = tmp_path / "tmp"  # the temporary folder every loading path writes under
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    absolute = tmp_path / "absolute.json"
    for i, bad in enumerate(("../escaped.json", str(absolute), "sub/dir.json", "..", ".hidden.json", "x.pth")):
        ckpt = _crafted(tiny_run, tmp_path / f"case{i}", tokenizer_files={bad: b"import os"})
        with pytest.raises(CheckpointError, match="tokenizer file name"):
            dyntok.load(ckpt)
        with pytest.raises(SystemExit) as ex:
            api.main([str(ckpt)])
        assert ex.value.code == 2
        assert export.main([str(ckpt), "--out", str(tmp_path / "onnx")]) == 2
        assert compare.main([str(ckpt.parent.parent), "--no-memory"]) == 2
        load_checkpoint(DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT), str(ckpt))
    last = _crafted(tiny_run, tmp_path / "last", "last.ckpt", tokenizer_files={"../escaped.json": b"x"})
    for args in (["train=false", f"init_from={ckpt}"], [f"ckpt_path={last}"]):
        proc = _run([*TINY, *args], tmp_path / f"run_{args[-1][:4]}", env={"TMPDIR": str(scratch)})
        assert proc.returncode == 0, proc.stderr[-2000:]  # weights only: the tokenizer files are not used
    assert not list(tmp_path.rglob("escaped.json")) and not absolute.exists() and not list(tmp_path.rglob("dir.json"))
    assert not list(tmp_path.rglob("x.pth")) and not list(tmp_path.rglob(".hidden.json"))
    assert not list(scratch.iterdir())  # and nothing is left in the temporary folder


def test_load_leaves_no_temporary_folder(tiny_run, tmp_path, monkeypatch):
    import tempfile

    import dyntok

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pred = dyntok.load(tiny_run)
    assert not list(tmp_path.iterdir())
    assert len(pred.predict(["a fine film", "dull"]).labels) == 2
    assert pred.datamodule().tokenizer is pred.tokenizer  # evaluation tokenizes with the checkpoint's tokenizer


@pytest.mark.parametrize("change", [{"method_target": "this.Nothing"}, {"method": "this"},
                                    {"method_target": "dyntok.methods.gates.GatesModule"}])
def test_a_checkpoint_cannot_choose_the_class_or_module_it_builds(tiny_run, tmp_path, change):
    import subprocess
    import sys

    ckpt = _crafted(tiny_run, tmp_path, **change)
    code = ("import sys, dyntok\nfrom dyntok.errors import CheckpointError\ntry:\n    dyntok.load(sys.argv[1])\n"
            "except CheckpointError as e:\n    print('refused:', e)\nprint('imported this:', 'this' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=120).stdout
    assert "refused:" in out and "dyntok loads only its own methods" in out or "builds" in out, out
    assert "imported this: False" in out, out


def test_each_tool_names_its_own_opt_in(tiny_run, tmp_path, capsys):
    from dyntok import api, compare, export

    path, marker = _poisoned(tiny_run, tmp_path)
    with pytest.raises(SystemExit):
        api.main([str(path)])
    assert "pass --trust-checkpoint" in capsys.readouterr().err
    assert export.main([str(path), "--out", str(tmp_path / "onnx")]) == 2
    assert "pass --trust-checkpoint" in capsys.readouterr().err
    run = path.parent / "runs" / "full"
    (run / "checkpoints").mkdir(parents=True)
    path.rename(run / "checkpoints" / "final.ckpt")
    (run / "results.json").write_text((tiny_run / "results.json").read_text())
    assert compare.main([str(run.parent), "--no-memory"]) == 2
    assert "pass --trust-checkpoint" in capsys.readouterr().err
    proc = _run([*TINY, "train=false", f"init_from={run / 'checkpoints' / 'final.ckpt'}"], tmp_path / "r")
    assert proc.returncode == 2 and "pass trust_checkpoint=true" in proc.stderr
    assert not marker.exists()
