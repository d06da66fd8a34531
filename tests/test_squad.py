"""SQuAD v1.1: windows and labels, the article split, the official scores, post-processing, Drop-and-Restore
on span windows, and tiny end-to-end runs (full fine-tuning and LengthDrop with its search)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from dyntok.core.lengths import LengthConfig
from dyntok.core.model import DynTokModel
from dyntok.data import DynTokDataModule, SpanSplit
from dyntok.data.squad import answer_tokens, read_squad_json
from dyntok.data.tasks import get_task
from dyntok.errors import ConfigError, DataError
from dyntok.evaluation.metrics import task_metrics
from dyntok.evaluation.squad import (
    SpanFeatures,
    SquadMetric,
    best_spans,
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_scores,
)
from tests.conftest import TINY_BERT
from tests.test_run import TINY, _run

DATA = Path(__file__).parent / "data"
SUBSET = DATA / "squad" / "train-v1.1.subset.json"
SMALL = {"max_length": 128, "doc_stride": 32}  # several windows per paragraph


@pytest.fixture(scope="module")
def dm(minilm_path) -> DynTokDataModule:
    d = DynTokDataModule("squad", minilm_path, data_dir=str(DATA), **SMALL)
    d.setup()
    return d


def _fold(text: str) -> str:
    """What the uncased WordPiece tokenizer keeps of a text: lower case, no accents, no spaces."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if not unicodedata.combining(c) and not c.isspace())


# ---- windows and labels ------------------------------------------------------------------------------


def test_windows_label_the_answer_or_cls(dm):
    tok = dm.tokenizer
    for split in dm.split_names:
        data: SpanSplit = dm.dataset(split)
        ex = data.examples
        labelled = set()
        for w in range(len(data)):
            a, b = data.offsets[w], data.offsets[w + 1]
            ids, chars = data.input_ids[a:b], data.char_offsets[a:b]
            q = int(data.example_index[w])
            start_char, text = ex.answers[q][0]
            s, e = data.labels[w].tolist()
            ctx = chars[:, 0] >= 0
            assert ids[0] == tok.cls_token_id and len(ids) <= SMALL["max_length"]
            if (s, e) == (0, 0):  # the window's context does not hold the whole answer
                first, last = np.flatnonzero(ctx)[[0, -1]]
                assert not (chars[first, 0] <= start_char and chars[last, 1] >= start_char + len(text))
                continue
            labelled.add(q)
            assert ctx[s] and ctx[e] and s <= e
            assert ex.contexts[q][chars[s, 0] : chars[e, 1]] == text  # exactly the answer characters
            assert _fold(tok.decode(ids[s : e + 1].tolist())) == _fold(text)  # its tokens decode back to it
        assert labelled == set(range(len(ex))), split  # every answer lies whole in some window


def test_long_contexts_make_overlapping_windows(dm):
    data = dm.dataset("test")
    per_question = np.bincount(data.example_index)
    assert per_question.min() >= 1 and per_question.max() >= 2
    q = int(np.argmax(per_question))
    first, second = np.flatnonzero(data.example_index == q)[:2]
    c1 = data.char_offsets[data.offsets[first] : data.offsets[first + 1]]
    c2 = data.char_offsets[data.offsets[second] : data.offsets[second + 1]]
    shared = set(map(tuple, c1[c1[:, 0] >= 0])) & set(map(tuple, c2[c2[:, 0] >= 0]))
    assert len(shared) == SMALL["doc_stride"]  # consecutive windows share doc_stride context tokens


def test_answer_tokens_hand_case():
    # [CLS] q ? [SEP] The cat sat . [SEP]; context "The cat sat."
    chars = np.array([[-1, -1], [-1, -1], [-1, -1], [-1, -1], [0, 3], [4, 7], [8, 11], [11, 12], [-1, -1]])
    assert answer_tokens(chars, 4, 11) == (5, 6)  # "cat sat"
    assert answer_tokens(chars, 5, 7) == (5, 5)  # "at", inside one token
    assert answer_tokens(chars, 8, 13) == (0, 0)  # runs past the window's context


def test_batches_of_windows(dm):
    batch = next(iter(dm.dataloader("validation", batch_size=8)))
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].dtype == torch.long and batch[key].shape == batch["input_ids"].shape
    assert batch["labels"].shape == (8, 2) and batch["labels"].dtype == torch.long
    assert batch["index"].shape == (8,) and batch["index"].dtype == torch.long
    ds = dm.dataset("validation")
    for row, w in enumerate(batch["index"].tolist()):
        assert batch["labels"][row].tolist() == ds.labels[w].tolist()
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == ds.input_ids[ds.offsets[w] : ds.offsets[w + 1]].tolist()


# ---- splits and caps ----------------------------------------------------------------------------------


def test_split_by_article_subset_file(dm):
    titles = {s: set(dm.dataset(s).examples.titles) for s in dm.split_names}
    assert [len(t) for t in titles.values()] == [1, 1, 1]  # 3 articles: 10% rounds up to one each
    assert not (titles["train"] & titles["validation"] or titles["train"] & titles["test"]
                or titles["validation"] & titles["test"])
    assert sum(len(dm.dataset(s).examples) for s in dm.split_names) == len(read_squad_json(SUBSET)) == 93
    again = DynTokDataModule("squad", dm.hparams.tokenizer, data_dir=str(DATA), **SMALL)
    assert {s: set(again.dataset(s).examples.ids) for s in dm.split_names} == \
        {s: set(dm.dataset(s).examples.ids) for s in dm.split_names}  # seeded


def test_official_files_make_dev_the_test_split(minilm_path, tmp_path):
    doc = json.loads(SUBSET.read_text())
    (tmp_path / "squad").mkdir()
    train = {"data": doc["data"][:2], "version": "1.1"}
    (tmp_path / "squad" / "train-v1.1.json").write_text(json.dumps(train))
    (tmp_path / "squad" / "dev-v1.1.json").write_text(json.dumps({"data": doc["data"][2:], "version": "1.1"}))
    d = DynTokDataModule("squad", minilm_path, data_dir=str(tmp_path), **SMALL)
    titles = {s: set(d.dataset(s).examples.titles) for s in d.split_names}
    assert titles["test"] == {doc["data"][2]["title"]}
    assert titles["train"] | titles["validation"] == {a["title"] for a in doc["data"][:2]}
    assert len(titles["train"]) == len(titles["validation"]) == 1


def test_caps_count_questions_and_keep_all_their_windows(minilm_path):
    d = DynTokDataModule("squad", minilm_path, data_dir=str(DATA), max_train_samples=7, max_eval_samples=5, **SMALL)
    assert len(d.dataset("train").examples) == 7
    assert len(d.dataset("validation").examples) == len(d.dataset("test").examples) == 5
    full = DynTokDataModule("squad", minilm_path, data_dir=str(DATA), **SMALL).dataset("test")
    capped = d.dataset("test")
    for q, qid in enumerate(capped.examples.ids):  # the same windows as without the cap
        k = full.examples.ids.index(qid)
        assert (capped.example_index == q).sum() == (full.example_index == k).sum()
    # a loader's max_examples counts questions too, and keeps the split's window numbering
    loader = d.dataloader("test", max_examples=2)
    assert loader.dataset.num_examples == 2
    ids = sorted(i for b in loader for i in b["index"].tolist())
    assert ids == sorted(np.flatnonzero(np.isin(capped.example_index, np.unique(loader.dataset.example_index))))


def test_cache_round_trip(minilm_path, tmp_path, dm):
    d1 = DynTokDataModule("squad", minilm_path, data_dir=str(DATA), cache_dir=str(tmp_path), **SMALL)
    d1.setup()
    assert len(list(tmp_path.glob("squad-*.npz"))) == 1
    d2 = DynTokDataModule("squad", minilm_path, data_dir=str(DATA), cache_dir=str(tmp_path), **SMALL)
    d2.setup()
    for s in dm.split_names:
        a, b = dm.dataset(s), d2.dataset(s)
        assert isinstance(b, SpanSplit) and b.examples == a.examples
        for key in ("input_ids", "token_type_ids", "offsets", "labels", "char_offsets", "example_index"):
            assert np.array_equal(getattr(a, key), getattr(b, key)), key
    other = DynTokDataModule("squad", minilm_path, data_dir=str(DATA), cache_dir=str(tmp_path), max_length=128,
                             doc_stride=48)
    other.setup()
    assert len(list(tmp_path.glob("squad-*.npz"))) == 2  # doc_stride is part of the key


# ---- bad input ------------------------------------------------------------------------------------------


def _broken(tmp_path: Path, edit) -> Path:
    doc = json.loads(SUBSET.read_text())
    edit(doc)
    (tmp_path / "squad").mkdir(parents=True)
    (tmp_path / "squad" / "train-v1.1.subset.json").write_text(json.dumps(doc))
    return tmp_path


def test_bad_data_names_file_and_question(minilm_path, tmp_path):
    qa = json.loads(SUBSET.read_text())["data"][0]["paragraphs"][1]["qas"][2]

    def shift(doc):
        doc["data"][0]["paragraphs"][1]["qas"][2]["answers"][0]["answer_start"] += 3

    root = _broken(tmp_path / "a", shift)
    with pytest.raises(DataError, match=rf"train-v1.1.subset.json: article 0 .*question {qa['id']}: "
                                        r"answer .* is not at character"):
        DynTokDataModule("squad", minilm_path, data_dir=str(root)).setup()

    def unanswerable(doc):
        doc["data"][1]["paragraphs"][0]["qas"][0]["answers"] = []

    with pytest.raises(DataError, match="no answers .*SQuAD 2.0"):
        DynTokDataModule("squad", minilm_path, data_dir=str(_broken(tmp_path / "b", unanswerable))).setup()
    (tmp_path / "c" / "squad").mkdir(parents=True)
    with pytest.raises(DataError, match="no SQuAD file; expected <data_dir>/squad/"):
        DynTokDataModule("squad", minilm_path, data_dir=str(tmp_path / "c")).setup()
    (tmp_path / "c" / "squad" / "train-v1.1.subset.json").write_text("{not json")
    with pytest.raises(DataError, match="not a JSON file"):
        DynTokDataModule("squad", minilm_path, data_dir=str(tmp_path / "c")).setup()


def test_doc_stride_must_leave_room(minilm_path):
    with pytest.raises(ConfigError, match="data.doc_stride=120"):
        DynTokDataModule("squad", minilm_path, data_dir=str(DATA), max_length=128, doc_stride=120).setup()
    with pytest.raises(ConfigError, match="data.doc_stride=100 must be smaller .* question"):
        DynTokDataModule("squad", minilm_path, data_dir=str(DATA), max_length=128, doc_stride=100).setup()
    with pytest.raises(ConfigError, match="data.train_min_length=20: span tasks"):
        DynTokDataModule("squad", minilm_path, data_dir=str(DATA), train_min_length=20)


def test_hub_fallback_offline_names_both_ways(minilm_path, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(DataError) as info:
        DynTokDataModule("squad", minilm_path).setup()
    msg = str(info.value)
    assert "data.data_dir" in msg and "<data_dir>/squad/{train-v1.1.json, dev-v1.1.json}" in msg
    assert "train-v1.1.subset.json" in msg and "rajpurkar/squad" in msg and "\n" not in msg


def test_hub_splits_by_article_and_dev_is_test(minilm_path, monkeypatch):
    import datasets

    ex = read_squad_json(SUBSET)

    def table(rows):
        return datasets.Dataset.from_dict({
            "id": [ex.ids[i] for i in rows], "title": [ex.titles[i] for i in rows],
            "context": [ex.contexts[i] for i in rows], "question": [ex.questions[i] for i in rows],
            "answers": [{"text": [t for _, t in ex.answers[i]], "answer_start": [s for s, _ in ex.answers[i]]}
                        for i in rows],
        })

    first_two = [i for i, t in enumerate(ex.titles) if t != ex.titles[-1]]
    last = [i for i, t in enumerate(ex.titles) if t == ex.titles[-1]]

    def fake_load(name, config):
        assert (name, config) == ("rajpurkar/squad", "plain_text")
        return datasets.DatasetDict({"train": table(first_two), "validation": table(last)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = DynTokDataModule("squad", minilm_path, **SMALL)
    assert set(d.dataset("test").examples.ids) == {ex.ids[i] for i in last}
    assert len(set(d.dataset("train").examples.titles)) == len(set(d.dataset("validation").examples.titles)) == 1


# ---- the official scores, by hand -------------------------------------------------------------------------


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("U.S.-led") == "usled"


@pytest.mark.parametrize(
    ("prediction", "truth", "em", "f1"),
    [
        ("A Cat.", "cat", True, 1.0),
        ("the cat sat", "cat sat on mat", False, 2 / 3),  # P = 2/2, R = 2/4
        ("x x y", "x y y", False, 2 / 3),  # bags: x 1 and y 1 in common, P = R = 2/3
        ("Denver", "Broncos", False, 0.0),
        ("", "cat", False, 0.0),
        ("the", "a", True, 0.0),  # both normalise to nothing: the script's EM 1, F1 0
    ],
)
def test_exact_match_and_f1_hand_cases(prediction, truth, em, f1):
    assert exact_match_score(prediction, truth) is em
    assert f1_score(prediction, truth) == pytest.approx(f1)


def test_scores_take_the_best_ground_truth_and_average_questions():
    out = squad_scores(["Denver Broncos", "in 1858", "cat"], [["Broncos", "Denver Broncos"], ["1858"], ["dog"]])
    assert out["exact_match"] == pytest.approx(1 / 3)  # 1 + 0 + 0
    assert out["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)  # "in 1858" vs "1858": P 1/2, R 1 -> 2/3


# ---- post-processing and the metric ------------------------------------------------------------------------


def _features(max_answer_length=30, n_best=20) -> SpanFeatures:
    """Two questions on "The cat sat on the mat." (tokens The/cat/sat/on/the/mat/.): question 0 has two windows
    (positions 2-5 hold context tokens 0-3 and 2-5), question 1 one window (positions 2-8 hold all 7)."""
    ctx = [(0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), (22, 23)]
    pad = [(-1, -1)] * 2
    w0 = pad + ctx[0:4] + [(-1, -1)]
    w1 = pad + ctx[2:6] + [(-1, -1)]
    w2 = pad + ctx + [(-1, -1)]
    chars = np.array(w0 + w1 + w2, dtype=np.int32)
    context = "The cat sat on the mat."
    return SpanFeatures(np.array([0, 0, 1]), np.array([0, 7, 14, 24]), chars, [context, context],
                        [["the mat"], ["cat", "a cat"]], max_answer_length, n_best)


def _logits(T: int, start: dict[int, float], end: dict[int, float]) -> torch.Tensor:
    x = torch.zeros(T, 2)
    for p, v in start.items():
        x[p, 0] = v
    for p, v in end.items():
        x[p, 1] = v
    return x


def test_best_spans_respects_order_length_and_context():
    T = 10
    ctx = torch.zeros(1, T, dtype=torch.bool)
    ctx[0, 3:9] = True
    # the top start (9) and the top end (2) lie outside the context; the end at 4 comes before the best start
    x = _logits(T, {9: 50.0, 5: 4.0, 3: 3.0}, {2: 40.0, 4: 2.5, 6: 2.0, 7: 1.0})[None]
    start, end, score = best_spans(x, ctx, max_answer_length=30)
    assert (start.item(), end.item(), score.item()) == (5, 6, 6.0)  # (5, 4) would score 6.5; (3, 4) 5.5
    start, end, score = best_spans(x, ctx, max_answer_length=1)  # one-token answers only
    assert (start.item(), end.item(), score.item()) == (5, 5, 4.0)
    start, end, score = best_spans(x, torch.zeros(1, T, dtype=torch.bool))
    assert score.item() == float("-inf") and (start.item(), end.item()) == (0, 0)  # nothing valid


def test_metric_picks_the_best_window_and_cuts_text_by_offsets():
    f = _features()
    m = SquadMetric().bind(f)
    T = 10
    # question 0: window 0 offers "cat" (positions 3..3, score 5), window 1 "the mat" (positions 4..5, score 7)
    # question 1: "The cat" (positions 2..3)
    logits = torch.stack([
        _logits(T, {3: 3.0}, {3: 2.0}),
        _logits(T, {4: 4.0}, {5: 3.0}),
        _logits(T, {2: 6.0}, {3: 6.0}),
    ])
    m.update(logits[:2], torch.tensor([0, 1]))
    m.update(logits[2:], torch.tensor([2]))
    assert m.answers() == {0: "the mat", 1: "The cat"}
    out = m.compute()
    assert out["exact_match"].item() == pytest.approx(1.0)  # "The cat" == "a cat" after normalisation
    assert out["f1"].item() == pytest.approx(1.0)


def test_metric_scores_only_the_questions_it_saw():
    m = SquadMetric().bind(_features())
    m.update(_logits(10, {3: 9.0}, {3: 9.0})[None], torch.tensor([1]))  # question 0 only: "on"
    out = m.compute()
    assert out["exact_match"].item() == 0.0 and out["f1"].item() == 0.0
    assert m.answers() == {0: "on"}


def test_task_metrics_collection_keys_and_binding():
    metrics = task_metrics(get_task("squad"), "val/")
    with pytest.raises(RuntimeError, match="not bound"):
        metrics.update(torch.zeros(1, 10, 2), torch.tensor([0]))
    from dyntok.evaluation.squad import bind_span_metrics

    bind_span_metrics(metrics, _features())
    metrics.update(_logits(10, {2: 1.0}, {3: 1.0})[None], torch.tensor([2]))
    out = metrics.compute()
    assert set(out) == {"val/exact_match", "val/f1"}


def test_oracle_logits_score_one_on_real_windows(dm):
    """Logits peaked at every labelled window's start/end give back every answer exactly."""
    features = dm.span_features("test")
    m = SquadMetric().bind(features)
    for batch in dm.dataloader("test", batch_size=16):
        B, T = batch["input_ids"].shape
        logits = torch.zeros(B, T, 2)
        rows = torch.arange(B)
        logits[rows, batch["labels"][:, 0], 0] = 10.0
        logits[rows, batch["labels"][:, 1], 1] = 10.0  # (0, 0) windows: [CLS] is not context, no effect
        m.update(logits, batch["index"])
    out = m.compute()
    assert out["exact_match"].item() == 1.0 and out["f1"].item() == 1.0


# ---- Drop-and-Restore on span windows -------------------------------------------------------------------


def test_dropped_answer_tokens_keep_their_last_state_and_get_logits(dm):
    torch.manual_seed(0)
    model = DynTokModel.from_pretrained(None, "span", config=TINY_BERT).eval()
    batch = next(iter(dm.dataloader("validation", batch_size=16)))
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    lengths = LengthConfig((4, 4, 4), "tokens", min_tokens=1).resolve(mask.sum(1))  # 4 tokens after layer 1
    with torch.no_grad():
        kept = model.encoder(ids, mask, types, lengths=lengths, keep_cls=False, restore=False)
        out = model(ids, mask, types, lengths=lengths)
        emb = model.encoder.embed(ids, types)
        want = model.head(emb)  # dropped at layer 1: the last state they had is their embedding
    real = mask.bool()
    assert out.logits.shape == (*ids.shape, 2) and torch.isfinite(out.logits[real]).all()
    assert (out.logits[~real] == torch.finfo(out.logits.dtype).min).all()
    dropped_answers = 0
    for i in range(len(ids)):
        s, e = batch["labels"][i].tolist()
        if (s, e) == (0, 0):
            continue
        still = set(kept.positions[i][kept.mask[i]].tolist())
        for t in range(s, e + 1):
            if t not in still:
                dropped_answers += 1
                assert torch.allclose(out.logits[i, t], want[i, t], atol=1e-5)
    assert dropped_answers > 0


# ---- end to end ---------------------------------------------------------------------------------------------

SQUAD = ["task=squad", f"data_dir={DATA}", "task.max_length=128", "task.doc_stride=32"]


def _check_results(run: Path, method: str) -> dict:
    rec = json.loads((run / "results.json").read_text())
    assert rec["status"] == "ok" and rec["task"] == "squad" and rec["method"] == method
    assert rec["main_metric"] == "f1"
    test = rec["splits"]["test"]
    assert 0.0 <= test["exact_match"] <= test["f1"] + 1e-9 <= 1.0 + 1e-9
    assert test["examples"] > 24  # windows: the 24 test questions need more than one each at 128 tokens
    return rec


def test_full_fine_tuning_run(tmp_path):
    proc = _run([*TINY, *SQUAD], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _check_results(tmp_path / "run", "full")
    assert rec["splits"]["test"]["macs_ratio"] == pytest.approx(1.0)
    assert "| squad | full | test |" in proc.stdout


@pytest.mark.parametrize("variant", [[], ["model.restore=last_layer", "method.length_unit=tokens",
                                          "method.search.budget_baseline=padded", "method.length_drop_prob=0.3"]],
                         ids=["ratio-output", "tokens-last_layer-padded_budget"])
def test_lengthdrop_run_with_search(tmp_path, variant):
    search = ["method.search.population=4", "method.search.iterations=1", "method.search.mutations=2",
              "method.search.crossovers=2", "method.search.max_examples=6", "method.search.budget=0.9",
              "method.search.curves=false"]
    proc = _run([*TINY, *SQUAD, "method=lengthdrop", *search, *variant], tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _check_results(tmp_path / "run", "lengthdrop")
    ratio = "chosen_paper_macs_ratio" if variant else "chosen_macs_ratio"
    assert rec["search"]["evaluated"] > 0 and rec["search"][ratio] <= 0.9 + 1e-9
    assert rec["splits"]["test"]["macs_ratio"] < 1.0
    if variant:  # absolute token counts, the last entry held at the floor (the last layer runs every token)
        assert rec["length_config"]["unit"] == "tokens"
        gene = rec["search"]["chosen_gene"]
        assert gene[-1] == 2 and all(g == int(g) for g in gene)
    store = [json.loads(line) for line in (tmp_path / "run" / "search_store.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["score"] <= 1.0 for r in store)  # genes scored by F1


def test_shipped_excerpt_is_small_and_real():
    assert SUBSET.stat().st_size < 40_000
    doc = json.loads(SUBSET.read_text())
    assert doc["version"] == "1.1" and len(doc["data"]) == 3
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "train-v1.1.subset.json"
    if not shared.exists():
        pytest.skip("the shared SQuAD subset is not on this machine")
    full = {a["title"]: a for a in json.loads(shared.read_text())["data"]}
    for article in doc["data"]:  # each paragraph is the source's, in order
        source = full[article["title"]]["paragraphs"]
        assert article["paragraphs"] == source[: len(article["paragraphs"])]

