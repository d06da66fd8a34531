"""Bad input ends in one clear error naming what is wrong; nothing is lost (search stores, checkpoints)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dyntok.errors import CheckpointError, ConfigError, DataError
from tests.test_run import TINY, _compose, _run

# ---- the search store survives a writer killed between any two bytes ----------------------------------


def _store_points(path: Path) -> dict:
    from dyntok.methods.evolution import SearchStore

    return SearchStore(path, meta={"task": "t"}).points


@pytest.mark.parametrize("cut", [1, 7, 20, -2, -1])
def test_search_store_reruns_twice_after_a_torn_record(tmp_path, cut):
    from dyntok.evaluation.frontier import Point
    from dyntok.methods.evolution import SearchStore

    path = tmp_path / "search_store.jsonl"
    store = SearchStore(path, meta={"task": "t"})
    store.add(Point((10, 8, 6), 1.0e9, 0.8))
    record = (json.dumps({"gene": [9, 7, 5], "macs": 0.9e9, "score": 0.79}) + "\n").encode()
    with path.open("ab") as f:  # the writer killed after `cut` bytes of its record
        f.write(record[:cut])
    for gene in ((8, 6, 4), (7, 5, 3)):  # two restarts, each appending a record
        store = SearchStore(path, meta={"task": "t"})
        store.add(Point(gene, 0.8e9, 0.7))
    points = _store_points(path)
    whole = cut == -1  # all but the newline: the record itself was written
    assert set(points) == {(10, 8, 6), (8, 6, 4), (7, 5, 3), *([(9, 7, 5)] if whole else [])}
    assert all(json.loads(line) for line in path.read_text().splitlines())  # every line is a record


def test_a_torn_meta_file_is_named(tmp_path):
    from dyntok.methods.evolution import SearchStore

    path = tmp_path / "search_store.jsonl"
    SearchStore(path, meta={"task": "t"})
    path.write_text("")
    path.with_suffix(".meta.json").write_text('{"task": ')
    with pytest.raises(DataError, match="search_store.meta.json: not JSON"):
        SearchStore(path, meta={"task": "t"})
    assert not list(tmp_path.glob("*.tmp"))


# ---- predict() input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    import dyntok

    run = tmp_path_factory.mktemp("bad_input") / "run"
    proc = _run(TINY, run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dyntok.load(run)


def test_a_bare_string_is_one_text(predictor):
    out = predictor.predict("a fine film")
    assert len(out.labels) == 1 and out.probabilities.shape == (1, 2)
    assert out.labels == predictor.predict(["a fine film"]).labels


@pytest.mark.parametrize(("texts", "kw", "match"), [
    ([""], {}, r"texts\[0\] is empty"),
    (["fine", "   "], {}, r"texts\[1\] is empty"),
    ([None], {}, r"texts\[0\] is NoneType"),
    ([3], {}, r"texts\[0\] is int"),
    (["ok", "bad \ud800 text"], {}, r"texts\[1\] is not valid Unicode"),
    (["ok"], {"batch_size": 0}, "batch_size must be an integer >= 1"),
    ([("a", "b")], {}, "takes single strings"),
    (b"bytes", {}, "texts must be a list"),
    ([], {}, "got no texts"),
])
def test_bad_predict_input_is_one_clear_error(predictor, texts, kw, match):
    with pytest.raises(ConfigError, match=match):
        predictor.predict(texts, **kw)


def test_onnx_and_pytorch_predictors_check_input_alike():
    from dyntok.evaluation.predictions import predict_inputs

    assert predict_inputs("one text", "sst2", ("sentence",), "classification", "") == (["one text"], None)
    assert predict_inputs([("a", "b")], "mrpc", ("sentence1", "sentence2"), "classification", "") == (["a"], ["b"])
    with pytest.raises(ConfigError, match=r"texts\[0\]\[1\] is empty"):
        predict_inputs([("a", "")], "mrpc", ("sentence1", "sentence2"), "classification", "")


# ---- one `dyntok: error:` line --------------------------------------------------------------------------


def _one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and lines and lines[-1].startswith("dyntok: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]


@pytest.mark.parametrize(("override", "key"), [("regularizer.lambda=abc", "regularizer.lambda=abc"),
                                                ("regularizer.mu=[1]", "regularizer.mu"),
                                                ("method.gate_lr=abc", "method.gate_lr=abc"),
                                                ("data.batch_size=abc", "data.batch_size=abc"),
                                                ("speedup.repeats=x", "speedup.repeats=x")])
def test_a_wrongly_typed_override_is_one_line(tmp_path, override, key):
    line = _one_error_line(_run(["method=gates", override], tmp_path / "run"))
    assert key in line
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("bad_ckpt") / "run"
    proc = _run([*TINY, "checkpoint.keep_all=true"], run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_bad_checkpoints_are_one_line_each(tiny_run, tmp_path):
    empty, text = tmp_path / "empty.ckpt", tmp_path / "notes.ckpt"
    empty.write_bytes(b"")
    text.write_text("hello, this is not a checkpoint\n")
    cases = {str(tiny_run / "checkpoints" / "final.ckpt"): "holds weights only",
             str(empty): "the file is empty (0 bytes)", str(text): "not a PyTorch checkpoint"}
    for path, why in cases.items():
        run = tmp_path / Path(path).stem
        line = _one_error_line(_run([*TINY, f"ckpt_path={path}"], run))
        assert why in line and path in line and "trust_checkpoint" not in line, line
        rec = json.loads((run / "results.json").read_text())  # the failure is a record, with its provenance
        assert rec["status"] == "failed" and rec["error"] == line.removeprefix("dyntok: error: ")
        assert rec["overrides"][-1] == f"ckpt_path={path}" and rec["seed"] == 42
        assert {"git_commit", "git_dirty", "command", "cpu_model"} <= set(rec["versions"])
    again = tmp_path / "again"
    again.mkdir()
    (again / "results.json").write_text((tiny_run / "results.json").read_text())
    _one_error_line(_run([*TINY, f"ckpt_path={empty}"], again))
    assert (again / "results.json").read_text() == (tiny_run / "results.json").read_text()  # the good one stays
    from dyntok.methods.checkpoint import load_file

    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_file(text, trust_checkpoint=True)  # a text file is no question of trust


def test_a_header_only_tsv_names_the_file(tmp_path):
    from dyntok.data.readers import read_glue_tsv
    from dyntok.data.tasks import get_task

    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(DataError, match=f"{path}: no data rows .the file has a header only"):
        read_glue_tsv(path, get_task("sst2"))


# ---- smaller frictions ----------------------------------------------------------------------------------


def test_a_target_alone_overrides_the_preset_lambda_and_an_explicit_lambda_is_refused(tmp_path):
    gates = [o for o in TINY if not o.startswith("method=")] + ["method=gates", "speedup.enabled=false"]
    proc = _run([*gates, "method.target_macs=0.5"], tmp_path / "alone")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert rec["config"]["regularizer"]["lambda"] == 0 and rec["config"]["method"]["target_macs"] == 0.5
    line = _one_error_line(_run([*gates, "method.target_macs=0.5", "regularizer.lambda=2"], tmp_path / "both"))
    assert "method.target_macs=0.5 and regularizer.lambda=2.0 are both set" in line


def test_a_tested_ratio_far_from_the_target_is_reported(caplog):
    from dyntok.core.model import DynTokModel
    from dyntok.data.tasks import get_task
    from dyntok.methods.gates import GatesModule
    from tests.conftest import TINY_BERT

    task = get_task("sst2")
    model = DynTokModel.from_pretrained(None, task.problem, task.num_labels, config=TINY_BERT)
    module = GatesModule(model, task, regularizer={"lambda": 0.0, "mu": 0.0}, target_macs=0.5)
    notes = module.result_warnings({"test": {"macs_ratio": 0.616, "padded_macs_ratio": 0.1}})
    assert len(notes) == 1 and "misses method.target_macs=0.5" in notes[0] and "method.target_min_length" in notes[0]
    assert module.result_warnings({"test": {"macs_ratio": 0.53}}) == []
    plain = GatesModule(model, task, regularizer={"lambda": 2.5, "mu": 300.0})
    assert plain.result_warnings({"test": {"macs_ratio": 0.9}}) == []


def test_train_false_init_from_tests_with_the_sources_configuration(tmp_path):
    src = _run([*TINY, "eval_length_config=0.5", "speedup.enabled=false"], tmp_path / "src")
    assert src.returncode == 0, src.stderr[-3000:]
    again = _run([*TINY, "train=false", f"init_from={tmp_path / 'src'}", "speedup.enabled=false"], tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (json.loads((tmp_path / r / "results.json").read_text())["splits"]["test"] for r in ("src", "again"))
    assert a["macs_ratio"] < 0.9 and b["macs_ratio"] == pytest.approx(a["macs_ratio"])
    assert b["accuracy"] == pytest.approx(a["accuracy"])
    import dyntok

    assert dyntok.load(tmp_path / "src").length_config is not None  # the same rule as dyntok.load


def test_hydras_compose_api_finds_the_schemas_on_its_own():
    code = ("from hydra import compose, initialize_config_module\n"
            "with initialize_config_module('dyntok.conf', version_base='1.3'):\n"
            "    print(compose('config', overrides=['method=lengthdrop']).method.name)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "lengthdrop", proc.stderr[-2000:]


def test_missing_data_fails_before_the_model_is_built(monkeypatch):
    import dyntok.methods.train as train_mod

    def built(*a, **k):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(train_mod, "build_model", built)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _compose(["task=mnli", "model=tiny", "logger=csv", "data.cache_dir=null"])
    with pytest.raises(DataError, match="no data for task mnli: data.data_dir is not set"):
        train_mod.train(cfg, Path("/nonexistent-run-dir"))


def test_bf16_on_a_cpu_without_it_is_timed_and_reported(monkeypatch, caplog, tiny_model):
    import dyntok.evaluation.timing as timing
    from dyntok.methods.search import LengthSearch

    monkeypatch.setattr(timing, "cpu_has_bf16", lambda: False)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 100, (4, 16), generator=g), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    fake = SimpleNamespace(s={"precision": "bf16"}, m=SimpleNamespace(device=torch.device("cpu"), model=tiny_model))
    with caplog.at_level(logging.WARNING, logger="dyntok"):
        cost = LengthSearch._check_bf16(fake, [batch])
    assert set(cost) == {"fp32_ms", "bf16_ms", "bf16_slowdown"} and cost["bf16_slowdown"] > 0
    assert "no AVX-512 BF16 or AMX" in caplog.text
    fake.s["precision"] = "fp32"
    assert LengthSearch._check_bf16(fake, [batch]) == {}
    assert timing.cpu_has_bf16() is False
    monkeypatch.undo()
    assert timing.cpu_has_bf16() in (True, False, None)


def test_a_finished_run_keeps_final_ckpt_and_a_rerun_tests_it_again(tmp_path):
    first = _run([*TINY, "speedup.enabled=false"], tmp_path / "run")
    assert first.returncode == 0, first.stderr[-3000:]
    a = json.loads((tmp_path / "run" / "results.json").read_text())
    again = _run([*TINY, "speedup.enabled=false"], tmp_path / "run")
    assert again.returncode == 0 and "finished before" in again.stdout + again.stderr, again.stderr[-3000:]
    b = json.loads((tmp_path / "run" / "results.json").read_text())
    assert b["splits"]["test"]["accuracy"] == a["splits"]["test"]["accuracy"]
    assert b["train_steps"] == a["train_steps"] and b["pruned_checkpoints"] == a["pruned_checkpoints"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["final.ckpt"]


def test_one_cache_bound_for_the_whole_search(tmp_path, monkeypatch):
    """search.cache_mb bounds every prefix cache of the process together: the search's, the re-scoring's
    and the curves' caches never hold more than it at once."""
    from dyntok.core import prefix_cache
    from dyntok.methods.train import train

    live, peak = [], [0]
    init, put = prefix_cache.PrefixCache.__init__, prefix_cache.PrefixCache._put

    def tracked_init(self, *a, **k):
        init(self, *a, **k)
        live.append(self)

    def tracked_put(self, key, value):
        put(self, key, value)
        peak[0] = max(peak[0], sum(c._bytes for c in live))

    monkeypatch.setattr(prefix_cache.PrefixCache, "__init__", tracked_init)
    monkeypatch.setattr(prefix_cache.PrefixCache, "_put", tracked_put)
    bound_mb = 0.05
    search = ["method=lengthdrop", "method.search.population=4", "method.search.iterations=1",
              "method.search.mutations=2", "method.search.crossovers=2", "method.search.max_examples=16",
              "method.search.rescore_examples=8", "method.search.rescore_margin=1.0", "method.search.budget=0.9",
              f"method.search.cache_mb={bound_mb}", "speedup.enabled=false"]
    tiny = [o for o in TINY if not o.startswith(("method=", "logger="))]
    train(_compose([*tiny, "logger=none", *search]), tmp_path / "run")
    assert len(live) >= 3  # search, re-scoring, curves
    assert 0 < peak[0] <= bound_mb * 2**20
