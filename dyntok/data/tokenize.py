"""Tokenization of a split (batched, truncated to ``max_length``) and the on-disk cache of tokenized splits."""

from __future__ import annotations

import json
import os
from itertools import chain
from pathlib import Path

import numpy as np

from dyntok.data.batches import SpanSplit, TokenizedSplit
from dyntok.data.readers import RawSplit
from dyntok.data.squad import SquadExamples, Windows

TOKENIZE_CHUNK = 20_000  # examples per tokenizer call: bounds the memory of Python token lists


def tokenize_split(tok, raw: RawSplit, max_length: int) -> tuple[TokenizedSplit, int]:
    """Tokenize a split (batched, no padding); returns it and how many examples were truncated."""
    with_types = "token_type_ids" in tok.model_input_names
    kw = {"truncation": "longest_first", "return_attention_mask": False, "return_token_type_ids": with_types}
    ids_parts, type_parts, lengths = [], [], []
    truncated = 0
    for start in range(0, len(raw), TOKENIZE_CHUNK):
        texts = [t[start : start + TOKENIZE_CHUNK] for t in raw.texts]
        # one token of headroom tells exactly which examples are longer than max_length
        enc = tok(*texts, max_length=max_length + 1, **kw)
        ids = enc["input_ids"]
        types = enc["token_type_ids"] if with_types else None
        over = [i for i, x in enumerate(ids) if len(x) > max_length]
        if over:
            again = tok(*[[t[i] for i in over] for t in texts], max_length=max_length, **kw)
            for j, i in enumerate(over):
                ids[i] = again["input_ids"][j]
                if with_types:
                    types[i] = again["token_type_ids"][j]
        truncated += len(over)
        lengths += [len(x) for x in ids]
        ids_parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.int32))
        if with_types:
            type_parts.append(np.fromiter(chain.from_iterable(types), dtype=np.int8))
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    flat_types = (np.concatenate(type_parts) if type_parts else np.zeros(0, np.int8)) if with_types else None
    return TokenizedSplit(flat, flat_types, offsets, raw.labels), truncated


def save_cache(path: Path, splits: dict[str, TokenizedSplit], truncated: dict[str, int]) -> None:
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps({"truncated": truncated}))}
    for name, s in splits.items():
        arrays[f"{name}.input_ids"], arrays[f"{name}.offsets"], arrays[f"{name}.labels"] = (
            s.input_ids, s.offsets, s.labels)
        if s.token_type_ids is not None:
            arrays[f"{name}.token_type_ids"] = s.token_type_ids
        if isinstance(s, SpanSplit):
            arrays[f"{name}.char_offsets"], arrays[f"{name}.example_index"] = s.char_offsets, s.example_index
            arrays[f"{name}.examples"] = np.frombuffer(s.examples.to_json().encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none


def load_cache(path: Path) -> tuple[dict[str, TokenizedSplit], dict[str, int]]:
    with np.load(path) as z:
        truncated = json.loads(str(z["meta"]))["truncated"]
        splits = {
            name: TokenizedSplit(z[f"{name}.input_ids"], z[f"{name}.token_type_ids"] if f"{name}.token_type_ids" in z
                                 else None, z[f"{name}.offsets"], z[f"{name}.labels"])
            for name in truncated
        }
        for name, s in splits.items():
            if f"{name}.char_offsets" in z:
                w = Windows(s.input_ids, s.token_type_ids, s.offsets, s.labels, z[f"{name}.char_offsets"],
                            z[f"{name}.example_index"])
                splits[name] = SpanSplit(w, SquadExamples.from_json(z[f"{name}.examples"].tobytes().decode()))
    return splits, truncated
