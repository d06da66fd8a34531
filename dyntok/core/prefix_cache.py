"""Scoring many length configurations on the same batches, computing what they share once.

The evolutionary search runs ~1,800 configurations over one fixed set of batches. Per batch, two
configurations whose per-example kept counts agree on layers 1..k run those layers identically: the same
tokens enter layer k+1 in the same states. Every configuration shares the first layer's attention
sub-layer (all tokens come in), and on short inputs a ratio configuration resolves to the same counts as
its neighbours for several layers. :class:`PrefixCache` keeps, per batch, the flow of tokens after each
layer and the attention output of the next, keyed by the resolved counts so far, and evicts the least
recently used beyond ``max_bytes``. It calls the encoder's own steps (:meth:`TokenDroppingEncoder.attend`,
:meth:`~TokenDroppingEncoder.advance`) with the same arguments as its ``forward``, so the logits are the
uncached ones exactly (tested).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from dyntok.core.lengths import LengthConfig


def held_bytes(value: Any) -> int:
    """Bytes of tensor storage ``value`` keeps alive: every tensor it reaches through dataclasses
    (:class:`~dyntok.core.encoder.Flow`, :class:`~dyntok.core.encoder.EncoderOutput`), tuples, lists and dicts,
    each storage counted once and whole (a view holds its base)."""
    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, tuple | list):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    walk(value)
    return sum(seen.values())


class PrefixCache:
    """Logits of a :class:`dyntok.core.model.DynTokModel` (in eval mode) on fixed ``batches`` under any length
    configuration, reusing the layers configurations share (module docstring).

    Args:
        model: the task model; it must not change while the cache lives.
        batches: collated batches (``input_ids``, ``attention_mask``, ``token_type_ids``), on the model's device.
        max_bytes: bound on the tensor storage the cached entries hold (bytes, :func:`held_bytes` of each
            entry; storage shared by two entries counts twice, so the bound holds); 0 caches nothing.

    Attributes:
        layers_run: layers computed (feed-forward at least); layers_reused: whole layers taken from the cache;
        attention_reused: attention sub-layers taken from the cache for a layer that then ran.
    """

    def __init__(self, model, batches: Sequence[dict[str, torch.Tensor]], max_bytes: int = 1 << 30) -> None:
        self.model, self.batches, self.max_bytes = model, list(batches), int(max_bytes)
        self._store: OrderedDict[tuple, Any] = OrderedDict()
        self._bytes = 0
        self.layers_run = self.layers_reused = self.attention_reused = 0

    def release(self) -> None:
        """Drop every cached entry (the counters stay): the memory goes back before another cache fills."""
        self._store.clear()
        self._bytes = 0

    def _get(self, key: tuple) -> Any:
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        return None

    def _put(self, key: tuple, value: Any) -> None:
        size = held_bytes(value)
        if size > self.max_bytes:
            return
        self._store[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self._bytes -= held_bytes(old)

    @torch.inference_mode()
    def logits(self, i: int, config: LengthConfig | None) -> tuple[torch.Tensor, Any]:
        """Logits and :class:`~dyntok.core.encoder.EncoderOutput` of batch ``i`` under ``config`` (None: every
        token), as ``model(batch, lengths=config.resolve(real))`` gives them."""
        model, b = self.model, self.batches[i]
        enc = model.encoder
        mask = b["attention_mask"]
        real = mask.sum(1)
        if config is None:
            out = model(b["input_ids"], mask, b.get("token_type_ids"))
            return out.logits, out.encoder
        lengths = enc.clamp_lengths(config.resolve(real), real)
        L, mode = enc.num_layers, model.restore_mode
        host = lengths.t().tolist()
        key_of = lengths.cpu().numpy()
        done = self._get((i, "out", key_of.tobytes()))
        if done is not None:
            self.layers_reused += L
            return done
        # the deepest layer whose output this configuration shares with one already run
        start, flow = 0, None
        for k in range(L, 0, -1):
            flow = self._get((i, "flow", k, key_of[:, :k].tobytes()))
            if flow is not None:
                start = k
                break
        if flow is None:
            flow = self._get((i, "begin"))
            if flow is None:
                flow = enc.begin(b["input_ids"], mask, b.get("token_type_ids"), restore=mode is not None)
                self._put((i, "begin"), flow)
        self.layers_reused += start
        for j in range(start, L):
            last = mode == "last_layer" and j == L - 1
            if last:
                flow = enc.rejoin(flow)
            target = None if last else host[j]
            need = enc.drops(flow, target)
            akey = (i, "attn", j, key_of[:, :j].tobytes(), need)
            attn = self._get(akey)
            if attn is None:
                attn = enc.attend(j, flow, need)
                self._put(akey, attn)
            else:
                self.attention_reused += 1
            self.layers_run += 1
            flow = enc.advance(j, flow, *attn, target, model.keep_cls)
            self._put((i, "flow", j + 1, key_of[:, :j + 1].tobytes()), flow)
        out = enc.finish(flow)
        result = (model.logits(out, mask), out)
        self._put((i, "out", key_of.tobytes()), result)
        return result
