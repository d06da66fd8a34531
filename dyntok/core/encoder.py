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
  is written back to its position, so the final output covers every input position; or (``last_layer``,
  Hou et al. 2022) every dropped token rejoins before the last layer, which runs on all positions.
- **LayerDrop** (Fan et al. 2020): a skipped layer passes its input through and shrinks nothing.
- **Rank gates** (Jeong & Kwak 2021): the token of significance rank k in layer j is scaled by g_j[k].

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` in every layer whose
significance scores are not needed; explicit probabilities only where a layer drops or gates tokens
(:mod:`dyntok.core.attention`). A forward pass is a sequence of steps over a :class:`Flow` (``begin``,
``attend``, ``advance``, ``skip``, ``rejoin``, ``finish``), which the search's prefix cache also runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dyntok.core.architectures import ARCHITECTURES, LayerParts
from dyntok.core.attention import (
    _gather,
    attention_with_scores,
    rank_of,
    rank_table_lengths,
    select_tokens,
    significance_scores,
)
from dyntok.core.lengths import non_increasing
from dyntok.errors import ConfigError

Significance = Literal["all_queries", "cls_query"]


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
            configuration, LayerDrop included); feed it to :func:`dyntok.core.macs.encoder_macs`.
        input_lengths: (B,) long, real input tokens per example.
        alive: with ``rank_gates``, L entries of None (no gate so far) or (B, T) float: each token's
            weight after layer j, the product of the gates it got so far (the soft form of ``kept``,
            differentiable in the gates); empty otherwise.
        inputs: (B, L) long, real tokens entering each layer's attention: ``kept`` of the layer before
            (``input_lengths`` for the first), except that with ``restore="last_layer"`` the last layer takes
            every token; None means exactly that default.
        scores: with ``return_scores``, L entries of None (a skipped layer) or (B, T) float: each token's
            significance score in that layer, at its input position (-inf where no real token is present);
            differentiable. Empty otherwise.
    """

    hidden: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    kept: torch.Tensor
    input_lengths: torch.Tensor
    alive: list[torch.Tensor | None] = field(default_factory=list)
    inputs: torch.Tensor | None = None
    scores: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def cls(self) -> torch.Tensor:
        """(B, d) hidden state of the first input position ([CLS]); needs it to have been kept."""
        first = self.positions[:, 0] == 0
        if not torch.compiler.is_exporting() and not bool(first.all()):  # a graph cannot branch on it
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
        if cfg.model_type not in ARCHITECTURES:
            raise ConfigError(
                f"model type {cfg.model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
            )
        if significance not in ("all_queries", "cls_query"):
            raise ConfigError(f"significance must be 'all_queries' or 'cls_query', got {significance!r}")
        if head_reduce not in ("sum", "mean"):
            raise ConfigError(f"head_reduce must be 'sum' or 'mean', got {head_reduce!r}")
        self.backbone = backbone
        self.model_type = cfg.model_type
        path, adapter, self._token_types = ARCHITECTURES[cfg.model_type]
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

    @property
    def takes_token_types(self) -> bool:
        """Whether :meth:`embed` reads ``token_type_ids`` (BERT: yes; RoBERTa, DistilBERT: no)."""
        return bool(self._token_types)

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
        return_scores: bool = False,
        soft_extract: bool = False,
    ) -> EncoderOutput:
        """Encode, dropping tokens as ``lengths`` (or ``keep_by_rank``) says.

        Args:
            input_ids: (B, T) long.
            attention_mask: (B, T) 0/1, 1 for real tokens (dynamic padding: pad to the batch's longest).
            token_type_ids: (B, T) long or None.
            lengths: (B, L) long kept tokens per example after each layer, from
                :meth:`dyntok.core.lengths.LengthConfig.resolve`; None keeps every token. Values are clamped to
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
            return_scores: compute every layer's significance scores and return them
                (:attr:`EncoderOutput.scores`; e.g. for ranking distillation).
            soft_extract: ``rank_gates`` scale each word vector by its rank's value after the attention
                sub-layer (PoWER-BERT's soft extraction, Goyal et al. 2020, Sec. 3.3) instead of weighting it as
                a key; nothing is removed and ``alive`` stays empty.

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
        all_scores: list[torch.Tensor | None] = []
        for j in range(self.num_layers):
            if skip_layers is not None and skip_layers[j]:
                flow = self.skip(flow, rank_gates is not None)
                all_scores.append(None)
                continue
            if mode == "last_layer" and j == self.num_layers - 1:
                flow = self.rejoin(flow)
            target = host_targets[j] if host_targets is not None and not (
                mode == "last_layer" and j == self.num_layers - 1) else None
            flags = keep_by_rank[j] if keep_by_rank is not None else None
            gate = rank_gates[j] if rank_gates is not None else None
            a, scores = self.attend(j, flow, return_scores or self.drops(flow, target) or gate is not None)
            if return_scores:  # at input positions, before this layer drops any token
                all_scores.append(scores.new_full((B, T), float("-inf")).scatter_reduce(  # amax: padding
                    1, flow.positions, scores.masked_fill(~flow.mask, float("-inf")), "amax"))  # may share positions
            flow = self.advance(j, flow, a, scores, target, keep_cls, flags=flags, gate=gate,
                                track_alive=rank_gates is not None and not soft_extract, soft_extract=soft_extract)
        out = self.finish(flow)
        if return_scores:
            out.scores = all_scores
        return out

    def clamp_lengths(self, lengths: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, L) ``lengths`` as :meth:`forward` runs them: at most the real length, at least 1, non-increasing.

        Raises:
            ConfigError: not of shape (B, L).
        """
        if lengths.shape != (real.size(0), self.num_layers):
            raise ConfigError(f"lengths must have shape ({real.size(0)}, {self.num_layers}), got {tuple(lengths.shape)}")
        return non_increasing(torch.minimum(lengths.to(real.device), real[:, None]).clamp(min=1))

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
                gate: torch.Tensor | None = None, track_alive: bool = False, soft_extract: bool = False) -> Flow:
        """The rest of layer j after :meth:`attend`: gate (the key weight, or with ``soft_extract`` the word
        vector), drop to ``target`` (per example, clamped to the tokens present), feed-forward, restore
        buffer."""
        B = a.size(0)
        key_weight, positions, mask, counts, host_counts = (flow.key_weight, flow.positions, flow.mask,
                                                            flow.counts, flow.host_counts)
        if gate is not None:
            ranks = rank_of(scores, mask, positions, keep_cls)
            g = gate[ranks] if gate.dim() == 1 else gate.gather(1, ranks)
            if keep_cls:
                g = torch.where(positions == 0, torch.ones_like(g), g)
            if soft_extract:
                a = a * g.unsqueeze(-1).to(a.dtype)
            else:
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
        if key_weight is not None or (need_scores and self.significance == "all_queries") or torch.compiler.is_exporting():
            # explicit probabilities: rank gates reweight them, significance scores read them; and in an
            # exported graph, where the fused kernel's decomposition adds two passes over the probabilities
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
