"""The token-dropping encoder both methods share (plain PyTorch, no Lightning).

It runs the weights of a Hugging Face BERT-family encoder (BERT, MiniLM, RoBERTa, DistilBERT) with its
own layer loop, so that tokens can be physically removed between layers:

- **Significance score** of token t at layer j (PoWER-BERT, Goyal et al. 2020, Sec. 3.2):
  S_j(t) = sum_h sum_q A^(j)_h[q, t], over real queries q; the diagonal (q = t) kept as in the LAT code or
  left out as in PoWER-BERT; ``cls_query`` uses the [CLS] row alone (cheap, see ``significance``).
- **Drop** after layer j's attention sub-layer (residual + LayerNorm), before its feed-forward block:
  attention runs on the l_{j-1} tokens that came in, the FFN on the l_j kept ones. The kept tokens are the
  top-l_j by S_j; [CLS] is always kept for sequence classification (``keep_cls``).
- **Drop-and-Restore** (Kim & Cho 2021, Sec. 4): a dropped token keeps the last layer output it had and
  is written back to its position, so the final output covers every input position.
- **LayerDrop** (Fan et al. 2020): a skipped layer passes its input through and shrinks nothing.
- **Rank gates** (Jeong & Kwak 2021): the token of significance rank k in layer j is scaled by g_j[k].

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` in every layer whose
significance scores are not needed; explicit probabilities only where a layer drops or gates tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dyntok.errors import ConfigError

Significance = Literal["all_queries", "cls_query"]


@dataclass
class LayerParts:
    """References to one transformer layer's weights (owned by the wrapped Hugging Face model)."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    ln_attn: nn.LayerNorm
    ffn_in: nn.Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    ffn_out: nn.Linear
    ln_ffn: nn.LayerNorm
    dropout: nn.Dropout
    attn_dropout_p: float


def _bert_parts(layer: nn.Module, cfg) -> LayerParts:
    a = layer.attention
    return LayerParts(
        q=a.self.query, k=a.self.key, v=a.self.value, o=a.output.dense, ln_attn=a.output.LayerNorm,
        ffn_in=layer.intermediate.dense, act=layer.intermediate.intermediate_act_fn,
        ffn_out=layer.output.dense, ln_ffn=layer.output.LayerNorm, dropout=layer.output.dropout,
        attn_dropout_p=cfg.attention_probs_dropout_prob,
    )


def _distilbert_parts(layer: nn.Module, cfg) -> LayerParts:
    a = layer.attention
    return LayerParts(
        q=a.q_lin, k=a.k_lin, v=a.v_lin, o=a.out_lin, ln_attn=layer.sa_layer_norm,
        ffn_in=layer.ffn.lin1, act=layer.ffn.activation, ffn_out=layer.ffn.lin2,
        ln_ffn=layer.output_layer_norm, dropout=layer.ffn.dropout, attn_dropout_p=cfg.attention_dropout,
    )


# model_type -> (path to the layer list, layer adapter, embeddings accept token_type_ids)
_ARCHS: dict[str, tuple[str, Callable[[nn.Module, object], LayerParts], bool]] = {
    "bert": ("encoder.layer", _bert_parts, True),
    "roberta": ("encoder.layer", _bert_parts, True),
    "distilbert": ("transformer.layer", _distilbert_parts, False),
}


Restore = Literal["output", "last_layer"]


@dataclass
class EncoderOutput:
    """What :meth:`TokenDroppingEncoder.forward` returns.

    Attributes:
        hidden: (B, K, d) final hidden states; K = T (every position, in order) with Drop-and-Restore,
            else the tokens still kept after the last layer, in significance order ([CLS] first).
        mask: (B, K) bool, True for real kept tokens.
        positions: (B, K) long, each row's original position (index into the input's T).
        kept: (B, L) long, real tokens each example kept after each layer (the executed length
            configuration, LayerDrop included); feed it to :func:`dyntok.flops.encoder_macs`.
        input_lengths: (B,) long, real input tokens per example.
        alive: with ``rank_gates``, L entries of None (no gate so far) or (B, T) float: each token's
            weight after layer j, the product of the gates it got so far (the soft form of ``kept``,
            differentiable in the gates); empty otherwise.
        inputs: (B, L) long, real tokens entering each layer's attention: ``kept`` of the layer before
            (``input_lengths`` for the first), except that with ``restore="last_layer"`` the last layer takes
            every token; None means exactly that default.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    kept: torch.Tensor
    input_lengths: torch.Tensor
    alive: list[torch.Tensor | None] = field(default_factory=list)
    inputs: torch.Tensor | None = None

    @property
    def cls(self) -> torch.Tensor:
        """(B, d) hidden state of the first input position ([CLS]); needs it to have been kept."""
        first = self.positions[:, 0] == 0
        if not bool(first.all()):
            raise RuntimeError("[CLS] was dropped: use keep_cls=True for sequence classification")
        return self.hidden[:, 0]


@dataclass(frozen=True)
class Flow:
    """The tokens of one batch in flight between two layers (one step of :meth:`TokenDroppingEncoder.forward`;
    the search's prefix cache keeps these, so nothing here is changed in place).

    Attributes:
        h: (B, K, d) states of the tokens present; mask: (B, K) bool, real ones; positions: (B, K) long.
        counts: (B,) long real tokens present, also on the host as ``host_counts``.
        real: (B,) long real input tokens; attention_mask: (B, T) the input's.
        buffer: (B, T, d) every position's latest state (Drop-and-Restore), or None.
        key_weight: (B, K) product of the rank gates so far (training with gates), or None.
        kept, inputs: per layer so far, (B,) tokens kept after it and entering it.
        alive: per layer so far, ``key_weight`` after it (rank gates only).
    """

    h: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    counts: torch.Tensor
    host_counts: tuple[int, ...]
    real: torch.Tensor
    attention_mask: torch.Tensor
    buffer: torch.Tensor | None = None
    key_weight: torch.Tensor | None = None
    kept: tuple[torch.Tensor, ...] = ()
    inputs: tuple[torch.Tensor, ...] = ()
    alive: tuple[torch.Tensor | None, ...] = ()


def significance_scores(
    probs: torch.Tensor,
    query_mask: torch.Tensor,
    include_diagonal: bool = True,
    head_reduce: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Attention each key receives, S(t) = sum_h sum_q A_h[q, t] (PoWER-BERT, Eq. 2).

    Args:
        probs: (B, H, Q, T) attention probabilities (rows sum to 1 over T).
        query_mask: (B, Q) bool; padding queries are left out of the sum.
        include_diagonal: keep the q = t term (LAT code) or leave it out (PoWER-BERT); only meaningful
            when Q == T.
        head_reduce: ``sum`` or ``mean`` over heads (a constant factor: the ranking is the same).

    Returns:
        (B, T) float scores; padding keys score ~0 and are ranked last by :func:`select_tokens`.
    """
    p = probs * query_mask[:, None, :, None].to(probs.dtype)
    s = p.sum(dim=2)  # (B, H, T)
    if not include_diagonal and probs.size(2) == probs.size(3):
        s = s - torch.diagonal(p, dim1=2, dim2=3)
    return s.sum(1) if head_reduce == "sum" else s.mean(1)


ATTN_CHUNK_BYTES = 4 << 20  # per chunk of probabilities on CPU: about the L2 cache


def attention_with_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    dropout_p: float = 0.0,
    training: bool = False,
    include_diagonal: bool = True,
    head_reduce: Literal["sum", "mean"] = "sum",
    chunk_bytes: int | None = None,
    key_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit attention that also returns significance scores, in cache-sized (batch x head) chunks.

    The same numbers as ``softmax(Q K^T / sqrt(dh) + mask) @ V`` and :func:`significance_scores`, but
    no (B, H, K, K) probability tensor is materialised: each chunk's probabilities stay near
    ``chunk_bytes`` (CPU: 4 MiB; CUDA: one chunk), and the scores are one matmul with the query mask.
    On IMDB at 512 tokens this made the all-queries path 2.6x faster than one big tensor.

    Args:
        q, k, v: (B, H, K, dh); mask: (B, K) bool, True for real tokens.
        key_weight: (B, K) in [0, 1] or None: each key's attention probability is multiplied by its
            weight and the row renormalised (weight 0 = the key is gone, 1 = untouched; the soft form of
            token removal that rank gates train through); each query's row counts in the scores with the
            same weight.

    Returns:
        context (B, H, K, dh) and scores (B, K).
    """
    B, H, Q, dh = q.shape
    K = k.size(2)
    n = B * H
    bias = torch.zeros(B, 1, K, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~mask[:, None, :], torch.finfo(q.dtype).min).repeat_interleave(H, 0)
    qmask = mask.to(q.dtype)
    if key_weight is not None:
        # a gated-out token is no query at inference either: its row leaves the scores (no gradient: a rank)
        qmask = qmask * key_weight.detach().to(q.dtype)
    qmask = qmask[:, None, :].repeat_interleave(H, 0)  # (n, 1, Q)
    kw = key_weight.to(q.dtype)[:, None, :].repeat_interleave(H, 0) if key_weight is not None else None
    qf, kt, vf = q.reshape(n, Q, dh), k.reshape(n, K, dh).transpose(1, 2), v.reshape(n, K, dh)
    if chunk_bytes is None:
        chunk_bytes = ATTN_CHUNK_BYTES if q.device.type == "cpu" else 1 << 62
    step = max(1, chunk_bytes // (Q * K * q.element_size()))
    ctxs, cols = [], []
    for i in range(0, n, step):
        sl = slice(i, i + step)
        probs = torch.baddbmm(bias[sl], qf[sl], kt[sl], alpha=dh**-0.5).softmax(-1)
        if kw is not None:
            probs = probs * kw[sl]
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
        col = torch.bmm(qmask[sl], probs)  # (c, 1, K): attention received from real queries
        if not include_diagonal and Q == K:
            col = col - (torch.diagonal(probs, dim1=1, dim2=2) * qmask[sl].squeeze(1)).unsqueeze(1)
        cols.append(col)
        ctxs.append(torch.bmm(F.dropout(probs, dropout_p, training), vf[sl]))
    ctx = torch.cat(ctxs).view(B, H, Q, dh)
    scores = torch.cat(cols).view(B, H, K)
    return ctx, scores.sum(1) if head_reduce == "sum" else scores.mean(1)


def significance_order(
    scores: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep_cls: bool
) -> torch.Tensor:
    """(B, K) indices from most to least significant: padding last, [CLS] first if ``keep_cls``.

    The sort is stable, so ties go to the earlier index; selection and gate ranks share this one order.
    """
    s = scores.masked_fill(~mask, float("-inf"))
    if keep_cls:
        s = s.masked_fill(positions == 0, float("inf"))
    return s.argsort(dim=1, descending=True, stable=True)


def select_tokens(
    scores: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, keep_cls: bool,
    flags: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the tokens to keep: top-``keep`` per row by significance, or the tokens of flagged ranks.

    Args:
        scores: (B, K) significance of the current tokens.
        mask: (B, K) bool, real tokens.
        positions: (B, K) original positions (position 0 is [CLS]).
        keep: (B,) long, tokens to keep per row (<= real tokens in that row); with ``flags``, the number of
            flagged ranks of the row.
        keep_cls: rank the [CLS] token first so it is always kept.
        flags: (B, K) bool or None: row b keeps its token of significance rank r where ``flags[b, r]``
            (rank gates open at r); None keeps ranks 0..keep-1.

    Returns:
        index (B, K') long into the current K (K' = keep.max(), in descending significance) and the new
        (B, K') bool mask (True for the first keep[b] entries of row b).
    """
    k_new = int(keep.max())
    order = significance_order(scores, mask, positions, keep_cls)
    if flags is not None:  # flagged ranks first, each group in rank order
        order = order.gather(1, (~flags).to(torch.int8).argsort(dim=1, stable=True))
    index = order[:, :k_new]
    new_mask = torch.arange(k_new, device=keep.device)[None, :] < keep[:, None]
    return index, new_mask


def rank_table_lengths(tables: Sequence[torch.Tensor | None], real: torch.Tensor) -> torch.Tensor:
    """(B, L) kept tokens per layer when layer j keeps the ranks flagged in ``tables[j]``:
    l_j = #{r < l_{j-1} : table_j[b, r]} (at least 1), l_0 = ``real``; a None table keeps every token.

    Args:
        tables: L entries of None or a (T',) / (B, T') bool table, T' >= the longest input.
        real: (B,) long real input lengths.
    """
    cur, out = real, []
    for t in tables:
        if t is not None:
            t = t.to(real.device).expand(real.size(0), -1)
            cum = torch.cat([torch.zeros_like(t[:, :1], dtype=torch.long), t.long().cumsum(1)], dim=1)
            cur = cum.gather(1, cur[:, None]).squeeze(1).clamp(min=1)
        out.append(cur)
    return torch.stack(out, dim=1)


def rank_of(scores: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep_cls: bool) -> torch.Tensor:
    """(B, K) long significance rank of every token (0 = most significant; padding ranks last)."""
    order = significance_order(scores, mask, positions, keep_cls)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.size(1), device=order.device).expand_as(order))
    return ranks


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, K, ...) gathered along dim 1 by index (B, K')."""
    if x.dim() == 2:
        return x.gather(1, index)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def _restore_mode(restore: bool | str | None) -> Restore | None:
    if restore is True:
        return "output"
    if restore in (False, None):
        return None
    if restore not in ("output", "last_layer"):
        raise ConfigError(f"model.restore must be 'output' or 'last_layer', got {restore!r}")
    return restore


class TokenDroppingEncoder(nn.Module):
    """A Hugging Face BERT-family encoder run layer by layer with token dropping.

    Args:
        backbone: a ``transformers`` ``BertModel``, ``RobertaModel`` or ``DistilBertModel`` (its weights
            are used as they are; ``state_dict`` keys stay Hugging Face's under ``backbone.``).
        significance: ``all_queries`` (attention received from every real query; exact PoWER-BERT/LAT
            scores, needs explicit probabilities) or ``cls_query`` (attention from the [CLS] query alone;
            one extra O(T d) row per layer, the rest through the fused kernel; an approximation).
        include_diagonal: keep A[t, t] in the sum (LAT code: True; PoWER-BERT: False).
        head_reduce: ``sum`` or ``mean`` over heads.

    Raises:
        ConfigError: for an architecture other than BERT, RoBERTa or DistilBERT, or an unknown option.
    """

    def __init__(
        self,
        backbone: nn.Module,
        significance: Significance = "all_queries",
        include_diagonal: bool = True,
        head_reduce: Literal["sum", "mean"] = "sum",
    ) -> None:
        super().__init__()
        cfg = backbone.config
        if cfg.model_type not in _ARCHS:
            raise ConfigError(
                f"model type {cfg.model_type!r} is not supported; supported: {', '.join(sorted(_ARCHS))}"
            )
        if significance not in ("all_queries", "cls_query"):
            raise ConfigError(f"significance must be 'all_queries' or 'cls_query', got {significance!r}")
        if head_reduce not in ("sum", "mean"):
            raise ConfigError(f"head_reduce must be 'sum' or 'mean', got {head_reduce!r}")
        self.backbone = backbone
        self.model_type = cfg.model_type
        path, adapter, self._token_types = _ARCHS[cfg.model_type]
        layers = backbone.get_submodule(path)
        self._parts = [adapter(layer, cfg) for layer in layers]
        self.num_layers = len(self._parts)
        self.hidden_size = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.dim
        self.num_heads = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_heads
        self.intermediate_size = getattr(cfg, "intermediate_size", None) or cfg.hidden_dim
        self.head_dim = self.hidden_size // self.num_heads
        self.significance = significance
        self.include_diagonal = include_diagonal
        self.head_reduce = head_reduce

    @property
    def config(self):
        return self.backbone.config

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """(B, T) ids -> (B, T, d) embeddings through the backbone's own embedding module."""
        if self._token_types:
            return self.backbone.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return self.backbone.embeddings(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        keep_cls: bool = True,
        restore: bool | Restore = False,
        skip_layers: Sequence[bool] | None = None,
        rank_gates: Sequence[torch.Tensor | None] | None = None,
        keep_by_rank: Sequence[torch.Tensor | None] | None = None,
    ) -> EncoderOutput:
        """Encode, dropping tokens as ``lengths`` (or ``keep_by_rank``) says.

        Args:
            input_ids: (B, T) long.
            attention_mask: (B, T) 0/1, 1 for real tokens (dynamic padding: pad to the batch's longest).
            token_type_ids: (B, T) long or None.
            lengths: (B, L) long kept tokens per example after each layer, from
                :meth:`dyntok.lengths.LengthConfig.resolve`; None keeps every token. Values are clamped to
                [1, tokens present] and to non-increasing order (:meth:`clamp_lengths`).
            keep_cls: always keep position 0 (sequence classification); False for span tasks.
            restore: Drop-and-Restore (Kim & Cho 2021, Sec. 4), the output then has all T positions in input
                order: ``"output"`` (or True) writes each dropped token's last state back at the end, as the
                LAT code; ``"last_layer"`` lets every dropped token rejoin, with its last state, before the last
                layer, which runs on all positions (the pick-up of Hou et al. 2022, "Token Dropping for
                Efficient BERT Pretraining"), so every position leaves the encoder through the last layer; the
                configuration's last entry is then moot. False: no restore.
            skip_layers: L bools, True skips that layer (LayerDrop); a skipped layer keeps every token.
            rank_gates: L entries of None or a (T_max,) gate vector or (B, T_max) per-row table: the
                token of significance rank k leaves layer j with weight g[k] (g[b, k]; Jeong & Kwak 2021): in
                later layers its attention probability as a key is multiplied by the product of its gates so
                far (0 = dropped, as the physical gather at inference; 1 = kept). Tokens whose weight is 0 are
                also left out of the queries the significance scores sum over, as they are gone at inference.
                T_max must be >= T.
            keep_by_rank: L entries of None (keep every token) or a (T',) / (B, T') bool table: layer j
                keeps exactly the tokens whose significance rank r is flagged in row b,
                l_j = #{r < l_{j-1} : table[b, r]} (:func:`rank_table_lengths`); the hard inference of rank
                gates (the tokens the training forward weights by 1). T' >= T. Not with ``lengths``.

        Returns:
            :class:`EncoderOutput`.

        Raises:
            ConfigError: ``lengths`` of the wrong shape, both ``lengths`` and ``keep_by_rank``, or tables too
                short; an unknown ``restore``.
        """
        mode = _restore_mode(restore)
        B, T = input_ids.shape
        real = attention_mask.bool().sum(1)
        if keep_by_rank is not None:
            if lengths is not None:
                raise ConfigError("give lengths or keep_by_rank, not both")
            if len(keep_by_rank) != self.num_layers:
                raise ConfigError(f"keep_by_rank must have {self.num_layers} entries, got {len(keep_by_rank)}")
            if any(t is not None and t.size(-1) < T for t in keep_by_rank):
                raise ConfigError(f"keep_by_rank tables must cover the {T} input positions")
            lengths = rank_table_lengths(keep_by_rank, real)
        # targets live on the host too (one sync per forward): whether a layer drops anything decides
        # between explicit probabilities and the fused kernel
        host_targets = self.clamp_lengths(lengths, real).t().tolist() if lengths is not None else None
        flow = self.begin(input_ids, attention_mask, token_type_ids, restore=mode is not None,
                          host_counts=host_targets is not None or mode == "last_layer")
        for j in range(self.num_layers):
            if skip_layers is not None and skip_layers[j]:
                flow = self.skip(flow, rank_gates is not None)
                continue
            if mode == "last_layer" and j == self.num_layers - 1:
                flow = self.rejoin(flow)
            target = host_targets[j] if host_targets is not None and not (
                mode == "last_layer" and j == self.num_layers - 1) else None
            flags = keep_by_rank[j] if keep_by_rank is not None else None
            gate = rank_gates[j] if rank_gates is not None else None
            a, scores = self.attend(j, flow, self.drops(flow, target) or gate is not None)
            flow = self.advance(j, flow, a, scores, target, keep_cls, flags=flags, gate=gate,
                                track_alive=rank_gates is not None)
        return self.finish(flow)

    def clamp_lengths(self, lengths: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, L) ``lengths`` as :meth:`forward` runs them: at most the real length, at least 1, non-increasing.

        Raises:
            ConfigError: not of shape (B, L).
        """
        if lengths.shape != (real.size(0), self.num_layers):
            raise ConfigError(f"lengths must have shape ({real.size(0)}, {self.num_layers}), got {tuple(lengths.shape)}")
        return torch.cummin(torch.minimum(lengths.to(real.device), real[:, None]).clamp(min=1), 1).values

    # ---- the steps of a forward pass (also run one by one by the search's prefix cache) ------------------

    def begin(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
              restore: bool = False, host_counts: bool = True) -> Flow:
        """The embedded batch before the first layer; ``restore`` keeps the Drop-and-Restore buffer;
        ``host_counts=False`` skips copying the real lengths to the host (nothing will be dropped)."""
        B, T = input_ids.shape
        mask = attention_mask.bool()
        real = mask.sum(1)
        h = self.embed(input_ids, token_type_ids)
        positions = torch.arange(T, device=h.device).expand(B, T)
        host = tuple(real.tolist()) if host_counts else ()
        return Flow(h, mask, positions, real, host, real, mask, buffer=h if restore else None)

    @staticmethod
    def drops(flow: Flow, target: Sequence[int] | None) -> bool:
        """Whether a layer with these per-example targets removes any token of ``flow``."""
        return target is not None and any(t < c for t, c in zip(target, flow.host_counts, strict=True))

    def attend(self, j: int, flow: Flow, need_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layer j's attention sub-layer on ``flow``: (B, K, d) and, if ``need_scores``, (B, K) significance."""
        return self._attention(self._parts[j], flow.h, flow.mask, need_scores, flow.key_weight)

    def advance(self, j: int, flow: Flow, a: torch.Tensor, scores: torch.Tensor | None,
                target: Sequence[int] | None, keep_cls: bool, flags: torch.Tensor | None = None,
                gate: torch.Tensor | None = None, track_alive: bool = False) -> Flow:
        """The rest of layer j after :meth:`attend`: gate, drop to ``target`` (per example, clamped to the
        tokens present), feed-forward, restore buffer."""
        B = a.size(0)
        key_weight, positions, mask, counts, host_counts = (flow.key_weight, flow.positions, flow.mask,
                                                            flow.counts, flow.host_counts)
        if gate is not None:
            ranks = rank_of(scores, mask, positions, keep_cls)
            g = gate[ranks] if gate.dim() == 1 else gate.gather(1, ranks)
            if keep_cls:
                g = torch.where(positions == 0, torch.ones_like(g), g)
            key_weight = g if key_weight is None else key_weight * g
        if self.drops(flow, target):
            t_j = tuple(min(t, c) for t, c in zip(target, host_counts, strict=True))
            new_counts = torch.tensor(t_j, device=counts.device, dtype=counts.dtype)
            if flags is not None:
                K = mask.size(1)
                flags = flags.to(a.device).expand(B, -1)[:, :K] & (
                    torch.arange(K, device=a.device)[None, :] < counts[:, None])
            index, mask = select_tokens(scores, mask, positions, new_counts, keep_cls, flags)
            a = _gather(a, index)
            positions = positions.gather(1, index)
            counts, host_counts = new_counts, t_j
        h = self._ffn(self._parts[j], a)
        buffer = flow.buffer
        if buffer is not None:
            old = _gather(buffer, positions)
            new = torch.where(mask.unsqueeze(-1), h, old)
            buffer = buffer.scatter(1, positions.unsqueeze(-1).expand_as(new), new)
        return replace(flow, h=h, mask=mask, positions=positions, counts=counts, host_counts=host_counts,
                       buffer=buffer, key_weight=key_weight, kept=(*flow.kept, counts),
                       inputs=(*flow.inputs, flow.counts), alive=(*flow.alive, key_weight) if track_alive else ())

    @staticmethod
    def skip(flow: Flow, track_alive: bool = False) -> Flow:
        """A layer skipped by LayerDrop: nothing runs, every token stays."""
        return replace(flow, kept=(*flow.kept, flow.counts), inputs=(*flow.inputs, flow.counts),
                       alive=(*flow.alive, flow.key_weight) if track_alive else ())

    @staticmethod
    def rejoin(flow: Flow) -> Flow:
        """Every dropped token back, with its last state, in input order (before the last layer,
        ``restore="last_layer"``)."""
        B, T = flow.attention_mask.shape
        positions = torch.arange(T, device=flow.h.device).expand(B, T)
        return replace(flow, h=flow.buffer, mask=flow.attention_mask, positions=positions, counts=flow.real,
                       host_counts=tuple(flow.real.tolist()), key_weight=None)

    @staticmethod
    def finish(flow: Flow) -> EncoderOutput:
        """The :class:`EncoderOutput` of a flow that went through every layer."""
        kept, inputs = torch.stack(flow.kept, dim=1), torch.stack(flow.inputs, dim=1)
        if flow.buffer is not None:
            B, T = flow.attention_mask.shape
            full = torch.arange(T, device=flow.h.device).expand(B, T)
            return EncoderOutput(flow.buffer, flow.attention_mask, full, kept, flow.real, list(flow.alive), inputs)
        return EncoderOutput(flow.h, flow.mask, flow.positions, kept, flow.real, list(flow.alive), inputs)

    def _attention(
        self, p: LayerParts, h: torch.Tensor, mask: torch.Tensor, need_scores: bool,
        key_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention sub-layer with residual and LayerNorm; also significance scores if asked.

        h: (B, K, d), mask: (B, K) bool, key_weight: (B, K) or None (rank gates, see
        :func:`attention_with_scores`). Returns (B, K, d) and (B, K) scores or None.
        """
        B, K, _ = h.shape
        H, dh = self.num_heads, self.head_dim

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(B, K, H, dh).transpose(1, 2)

        q, k, v = heads(p.q(h)), heads(p.k(h)), heads(p.v(h))
        drop_p = p.attn_dropout_p if self.training else 0.0
        scores = None
        if key_weight is not None or (need_scores and self.significance == "all_queries"):
            # explicit probabilities: rank gates reweight them, significance scores read them
            ctx, scores = attention_with_scores(q, k, v, mask, drop_p, self.training, self.include_diagonal,
                                                self.head_reduce, key_weight=key_weight)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=drop_p)
        if need_scores and self.significance == "cls_query":
            # [CLS] query row only: O(K d) extra, the fused kernel does the rest.
            row = (q[:, :, :1] @ k.transpose(-1, -2)) * dh**-0.5
            row = row.masked_fill(~mask[:, None, None, :], torch.finfo(row.dtype).min).softmax(-1)
            if key_weight is not None:
                row = row * key_weight[:, None, None, :].to(row.dtype)
                row = row / row.sum(-1, keepdim=True).clamp_min(1e-12)
            scores = significance_scores(row, mask[:, :1], True, self.head_reduce)
        ctx = ctx.transpose(1, 2).reshape(B, K, H * dh)
        out = p.ln_attn(p.dropout(p.o(ctx)) + h)
        return out, scores

    @staticmethod
    def _ffn(p: LayerParts, a: torch.Tensor) -> torch.Tensor:
        return p.ln_ffn(p.dropout(p.ffn_out(p.act(p.ffn_in(a)))) + a)
