"""Where each supported Hugging Face architecture keeps a transformer layer's weights.

:class:`~dyntok.core.encoder.TokenDroppingEncoder` runs its own layer loop over these references, so a new
BERT-family architecture needs one adapter here and one ``ARCHITECTURES`` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


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
ARCHITECTURES: dict[str, tuple[str, Callable[[nn.Module, object], LayerParts], bool]] = {
    "bert": ("encoder.layer", _bert_parts, True),
    "roberta": ("encoder.layer", _bert_parts, True),
    "distilbert": ("transformer.layer", _distilbert_parts, False),
}
