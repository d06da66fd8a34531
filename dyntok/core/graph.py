"""A trained model's inference as one traceable graph: tensors in, tensors out, no host round trips.

:meth:`dyntok.core.encoder.TokenDroppingEncoder.forward` reads each layer's kept counts on the host (they
choose between the fused attention kernel and explicit probabilities), which a graph exporter would freeze
into constants. :class:`InferenceGraph` runs the same layers with the counts kept as tensors, so
``torch.onnx.export(..., dynamo=True)`` yields one graph with dynamic batch and sequence axes:

- the kept counts are computed in the graph from each example's real length, as dyntok resolves them
  (:meth:`dyntok.core.lengths.LengthConfig.resolve`, whose shares are integers in millionths, or the hard
  rank gates, :meth:`dyntok.core.gates.RankGates.open_table`);
- layer j ranks its tokens by significance (:func:`dyntok.core.attention.rank_of`) and keeps a rank set per
  example; the batch keeps ``max`` of the counts as slots (a data-dependent size, bounded for the exporter
  by ``torch._check``), each example's kept tokens first in input order, the rest masked;
- Drop-and-Restore writes each kept token's state back to its input position, as the encoder does.

Tokens stay in input order here and in significance order in the encoder; attention does not depend on the
order, so the two agree to float rounding and keep the same tokens (up to exact ties of significance
scores). The graph returns the logits with the executed kept counts and the MACs (:mod:`dyntok.core.macs`),
so a runtime needs nothing of dyntok to report compute.
"""

from __future__ import annotations

import torch
from torch import nn

from dyntok.core.attention import _gather, rank_of
from dyntok.core.encoder import EncoderOutput
from dyntok.core.gates import RankGates
from dyntok.core.lengths import LengthConfig
from dyntok.core.macs import ModelDims, model_macs
from dyntok.core.model import DynTokModel
from dyntok.core.problems import Problem, problem_of
from dyntok.errors import ConfigError

OUTPUTS = ("logits", "kept", "macs", "full_macs")
"""The graph's outputs, in order (span models return ``start_logits`` and ``end_logits`` for ``logits``)."""


def output_names(problem: Problem | str) -> list[str]:
    """The names of :class:`InferenceGraph`'s outputs for a task ``problem``."""
    return problem_of(problem).output_names() + list(OUTPUTS[1:])


class InferenceGraph(nn.Module):
    """A :class:`~dyntok.core.model.DynTokModel` in eval mode with its length configuration inside.

    Args:
        model: the trained task model.
        length_config: per-layer kept counts (ratio or tokens); or None.
        gates: hard rank gates (a gates run's own rule, used when ``length_config`` is None); or None.
            With neither, every token is kept (the full model).

    ``forward(input_ids, attention_mask, token_type_ids=None)`` takes (B, T) int64 tensors (the tokenizer's
    outputs, padded to the batch's longest) and returns, in :data:`OUTPUTS` order:

    - logits: (B, num_labels) classification, (B,) regression; span: (B, T) start and (B, T) end logits
      (padding at the dtype's minimum);
    - kept: (B, L) int64, real tokens each example kept after each layer;
    - macs: (B,) float64 MACs of the whole model for each example (:func:`~dyntok.core.macs.model_macs`);
    - full_macs: (B,) float64, the same for every token kept (the real-length baseline).

    Raises:
        ConfigError: a configuration of another depth than the model.
    """

    def __init__(self, model: DynTokModel, length_config: LengthConfig | None = None,
                 gates: RankGates | None = None) -> None:
        super().__init__()
        L = model.num_layers
        if length_config is not None and length_config.num_layers != L:
            raise ConfigError(f"length configuration {length_config.describe()} has {length_config.num_layers} "
                              f"layers, the model {L}")
        if length_config is None and gates is not None and gates.num_layers != L:
            raise ConfigError(f"rank gates for {gates.num_layers} layers, the model has {L}")
        self.model = model.eval()
        self.length_config = length_config
        self.gates = gates if length_config is None else None
        self.dims = ModelDims.from_encoder(model)
        if length_config is not None:
            drops = [length_config.unit == "tokens" or v < 1.0 for v in length_config.values]
        elif self.gates is not None:
            drops = [j >= self.gates.skip_first for j in range(L)]
        else:
            drops = [False] * L
        if model.restore_mode == "last_layer":
            drops[-1] = False  # every token rejoins before the last layer
        self.drops = drops

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        enc, model = self.model.encoder, self.model
        B, T = input_ids.shape
        full_mask = attention_mask.bool()
        real = full_mask.sum(1)
        if self.length_config is not None:
            counts = self.length_config.resolve(real)
        elif self.gates is not None:
            tables = self.gates.open_table(real, T)
        h = enc.embed(input_ids, token_type_ids)
        mask, present = full_mask, real
        every = torch.arange(T, device=h.device).expand(B, T)  # every input position, in order
        positions = every
        buffer = h if model.restore_mode is not None else None
        kept, inputs = [], []
        for j, p in enumerate(enc._parts):
            if model.restore_mode == "last_layer" and j == enc.num_layers - 1:
                h, mask, positions, present = buffer, full_mask, every, real
            inputs.append(present)
            a, scores = enc._attention(p, h, mask, self.drops[j])
            if self.drops[j]:
                K = mask.size(1)
                ranks = rank_of(scores, mask, positions, model.keep_cls)  # (B, K), padding ranks last
                if self.length_config is not None:
                    keep = ranks < torch.minimum(counts[:, j], present)[:, None]
                else:
                    keep = tables[j].gather(1, ranks) & (ranks < present[:, None])
                present = keep.sum(1)
                kmax = present.max().item()
                torch._check(kmax >= 1)
                torch._check(kmax <= K)
                slot = torch.arange(K, device=h.device)
                # the kept slots first, in input order; then the others, masked
                key = torch.where(keep, slot, slot + K).to(torch.float32)
                index = key.topk(kmax, dim=1, largest=False, sorted=True).indices
                a, positions, mask = _gather(a, index), positions.gather(1, index), keep.gather(1, index)
            kept.append(present)
            h = enc._ffn(p, a)
            if buffer is not None:
                new = torch.where(mask.unsqueeze(-1), h, _gather(buffer, positions))
                buffer = buffer.scatter(1, positions.unsqueeze(-1).expand_as(new), new)
        kept_t, inputs_t = torch.stack(kept, 1), torch.stack(inputs, 1)
        if buffer is not None:
            out = EncoderOutput(buffer, full_mask, every, kept_t, real)
        else:
            out = EncoderOutput(h, mask, positions, kept_t, real)
        logits = model.logits(out, attention_mask)
        macs = model_macs(self.dims, real, kept_t, model.problem, inputs=inputs_t)
        full = model_macs(self.dims, real, real.unsqueeze(1).expand(-1, enc.num_layers), model.problem)
        return *model.problem.split_logits(logits), kept_t, macs, full
