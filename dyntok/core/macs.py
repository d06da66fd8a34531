"""Compute accounting in multiply-accumulates (MACs, the unit the LAT code calls "FLOPs").

Per example and per layer j (PoWER-BERT, Goyal et al. 2020; Kim & Cho 2021, Sec. 5), for l_0 real input
tokens and l_j tokens kept after layer j's attention sub-layer:

    MACs_j = 4 * l_{j-1} * d^2          Q, K, V and output projections, on the tokens that came in
           + 2 * l_{j-1}^2 * d          QK^T and AV
           + 2 * l_j * d * d_ff         feed-forward, on the kept tokens

BERT-base: 35.33 G at 384 tokens, 11.17 G at 128. What is *not* counted: biases, LayerNorms, GELU, softmax,
residual adds, the significance sums (additions over the probabilities), the [CLS]-row attention of
``cls_query`` significance (l_{j-1} * d per dropping layer, under 1/(2 l) of the attention cost),
top-k and gathers, and padding: every count is at each example's real length, so a batch padded to its
longest executes more than it is charged (see :func:`batch_macs` for what a padded batch executed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchmetrics

from dyntok.core.lengths import LengthConfig
from dyntok.core.problems import Problem, problem_of
from dyntok.errors import ConfigError


@dataclass(frozen=True)
class ModelDims:
    """The sizes the MACs formula needs.

    Attributes:
        num_layers: encoder layers L.
        hidden: hidden size d.
        intermediate: feed-forward size d_ff.
        num_heads: attention heads (the count does not depend on it; kept for reports).
        vocab: vocabulary size (embedding lookups cost 0 MACs; kept for reports), or None.
        num_labels: outputs of the classification head (1 for regression).
    """

    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    vocab: int | None = None
    num_labels: int = 2

    @classmethod
    def from_encoder(cls, enc: Any, num_labels: int = 2) -> ModelDims:
        """From a :class:`dyntok.core.encoder.TokenDroppingEncoder`, or a :class:`dyntok.core.model.DynTokModel`
        (whose ``num_labels`` then wins)."""
        if hasattr(enc, "encoder") and hasattr(enc, "num_labels"):
            enc, num_labels = enc.encoder, enc.num_labels
        return cls(
            num_layers=enc.num_layers,
            hidden=enc.hidden_size,
            intermediate=enc.intermediate_size,
            num_heads=enc.num_heads,
            vocab=getattr(enc.config, "vocab_size", None),
            num_labels=num_labels,
        )


def _check(dims: ModelDims, input_lengths: torch.Tensor, kept: torch.Tensor) -> None:
    if input_lengths.dim() != 1 or kept.dim() != 2 or kept.shape != (input_lengths.numel(), dims.num_layers):
        raise ConfigError(
            f"MACs: expected input_lengths (B,) and kept (B, {dims.num_layers}), got "
            f"{tuple(input_lengths.shape)} and {tuple(kept.shape)}"
        )


def encoder_macs(
    dims: ModelDims,
    input_lengths: torch.Tensor,
    kept: torch.Tensor,
    skipped: Sequence[bool] | None = None,
    inputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encoder MACs per example (module docstring formula).

    Args:
        dims: model sizes.
        input_lengths: (B,) real input tokens l_0.
        kept: (B, L) tokens kept after each layer's attention (``EncoderOutput.kept``); layer j's
            attention runs on ``kept[:, j-1]`` (``input_lengths`` for the first), its FFN on ``kept[:, j]``.
        skipped: L bools, True for a layer skipped by LayerDrop: it costs 0 (its ``kept`` entry repeats
            the previous count, so the next layer's input is right as it is).
        inputs: (B, L) tokens entering each layer's attention (``EncoderOutput.inputs``) where they are not
            the previous layer's ``kept``: the last layer of ``restore="last_layer"`` runs on every token.

    Returns:
        (B,) float64 MACs.
    """
    _check(dims, input_lengths, kept)
    d, f = float(dims.hidden), float(dims.intermediate)
    k = kept.to(torch.float64).cpu()
    if inputs is not None:
        prev = inputs.to(torch.float64).cpu()
    else:
        prev = torch.cat([input_lengths.to(torch.float64).cpu().unsqueeze(1), k[:, :-1]], dim=1)
    per_layer = 4 * prev * d * d + 2 * prev * prev * d + 2 * k * d * f  # (B, L)
    if skipped is not None:
        if len(skipped) != dims.num_layers:
            raise ConfigError(f"skipped has {len(skipped)} entries, the encoder has {dims.num_layers} layers")
        run = torch.tensor([not s for s in skipped], dtype=torch.float64)
        per_layer = per_layer * run
    return per_layer.sum(1)


def head_macs(dims: ModelDims, input_lengths: torch.Tensor, problem: Problem | str) -> torch.Tensor:
    """(B,) MACs after the encoder, as the task's problem counts them
    (:meth:`~dyntok.core.problems.Problem.head_macs`: the pooler and classifier on [CLS], or a start/end layer
    on every real position).

    Raises:
        ConfigError: an unknown ``problem``.
    """
    return problem_of(problem).head_macs(dims.hidden, dims.num_labels, input_lengths)


def model_macs(
    dims: ModelDims,
    input_lengths: torch.Tensor,
    kept: torch.Tensor,
    problem: Problem | str,
    skipped: Sequence[bool] | None = None,
    inputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) float64 MACs of the whole task model: embeddings (lookups and adds: 0 MACs; their LayerNorm is
    not counted either) + :func:`encoder_macs` + :func:`head_macs`."""
    return encoder_macs(dims, input_lengths, kept, skipped, inputs) + head_macs(dims, input_lengths, problem)


def full_macs(dims: ModelDims, input_lengths: torch.Tensor) -> torch.Tensor:
    """(B,) encoder MACs with every token kept at each example's real length (the honest baseline)."""
    n = input_lengths.to(torch.long).cpu()
    return encoder_macs(dims, n, n.unsqueeze(1).expand(-1, dims.num_layers))


def padded_macs(dims: ModelDims, max_length: int, batch_size: int = 1) -> torch.Tensor:
    """(batch_size,) encoder MACs of the full model on inputs padded to ``max_length`` (the papers'
    baseline; a ratio against it counts dropped padding as savings)."""
    return full_macs(dims, torch.full((batch_size,), int(max_length), dtype=torch.long))


def batch_macs(dims: ModelDims, padded_length: int, kept: torch.Tensor, inputs: torch.Tensor | None = None
               ) -> torch.Tensor:
    """(B,) encoder MACs a padded batch executed: the encoder runs every row at the batch's widest
    width, T = ``padded_length`` in, then ``kept.max(0)`` after each layer (what wall-clock follows);
    ``inputs`` as in :func:`encoder_macs` (a layer that takes every position again runs at width T)."""
    B = kept.size(0)
    width = kept.max(0).values.unsqueeze(0).expand_as(kept)
    T = torch.full((B,), int(padded_length))
    if inputs is not None:
        # a layer taking more tokens than the one before kept runs on the whole padded width again
        again = (inputs.cpu() > torch.cat([T.unsqueeze(1), kept.cpu()[:, :-1]], 1)).any(0)
        width = torch.where(again.unsqueeze(0), T.unsqueeze(1), width)
        ins = torch.cat([T.unsqueeze(1), width[:, :-1]], 1)
        ins = torch.where(again.unsqueeze(0), T.unsqueeze(1), ins)
        return encoder_macs(dims, T, width, inputs=ins)
    return encoder_macs(dims, T, width)


def executed_lengths(cfg: LengthConfig, input_lengths: torch.Tensor, restore: str | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, kept), each (B, L): the tokens entering and leaving each layer when ``cfg`` runs on inputs of
    these real lengths, as :meth:`dyntok.core.encoder.TokenDroppingEncoder.forward` executes it
    (``restore="last_layer"``: the last layer takes and keeps every token)."""
    n = input_lengths.to(torch.long).cpu()
    kept = cfg.resolve(n)
    inputs = torch.cat([n.unsqueeze(1), kept[:, :-1]], dim=1)
    if restore == "last_layer":
        kept = torch.cat([kept[:, :-1], n.unsqueeze(1)], dim=1)
        inputs = torch.cat([inputs[:, :-1], n.unsqueeze(1)], dim=1)
    return inputs, kept


def length_config_macs(
    dims: ModelDims, cfg: LengthConfig, input_lengths: torch.Tensor, problem: Problem | str | None = None,
    restore: str | None = None,
) -> torch.Tensor:
    """(B,) MACs of running ``cfg`` on inputs of these real lengths (:func:`executed_lengths`): encoder only,
    or the whole model when ``problem`` is given.

    Raises:
        ConfigError: ``cfg`` has another depth than the model.
    """
    if cfg.num_layers != dims.num_layers:
        raise ConfigError(f"length configuration {cfg.describe()} has {cfg.num_layers} layers, model {dims.num_layers}")
    inputs, kept = executed_lengths(cfg, input_lengths, restore)
    if problem is None:
        return encoder_macs(dims, input_lengths, kept, inputs=inputs)
    return model_macs(dims, input_lengths, kept, problem, inputs=inputs)


class MacsReport(torchmetrics.Metric):
    """Accumulates MACs over evaluation batches, against both baselines, as a torchmetrics metric: its sums
    are states reduced over DDP processes on ``compute()``.

    Args:
        dims: model sizes.
        max_length: the padded length of the papers' baseline; None leaves the padded ratio out (NaN).
        problem: count the task head too (:func:`model_macs`); None counts the encoder only, as the
            papers do (BERT-base 35.33 G at 384 tokens, LA-MiniLM 4.76 G). Baselines count the same parts.
        **kwargs: torchmetrics' (e.g. ``sync_on_compute=False`` for one process alone).

    Raises:
        ConfigError: an unknown ``problem``.
    """

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, dims: ModelDims, max_length: int | None = None, problem: Problem | str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        problem = problem_of(problem) if problem is not None else None  # raises ConfigError naming a bad one
        self.dims, self.max_length, self.problem = dims, max_length, problem
        zero = torch.zeros((), dtype=torch.float64)
        for name in ("total", "total_full", "total_padded", "examples_f", "input_tokens"):
            self.add_state(name, default=zero.clone(), dist_reduce_fx="sum")
        # (L,) real tokens kept after each layer, summed over the examples
        self.add_state("kept_tokens", default=torch.zeros(dims.num_layers, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, input_lengths: torch.Tensor, kept: torch.Tensor, skipped: Sequence[bool] | None = None,
               inputs: torch.Tensor | None = None, full_lengths: torch.Tensor | None = None) -> None:
        """Add a batch: (B,) real input lengths and the encoder's (B, L) executed kept counts (and the tokens
        entering each layer, ``EncoderOutput.inputs``, where that is not the previous layer's kept count).
        ``full_lengths``: (B,) the full model's input lengths where they differ from what the encoder ran on
        (truncated inputs count against their whole length); default ``input_lengths``."""
        n = input_lengths.detach().cpu()
        whole = n if full_lengths is None else full_lengths.detach().cpu()
        dev = self.total.device
        self.total += float(encoder_macs(self.dims, n, kept.detach().cpu(), skipped, inputs).sum()) + self._head(n)
        self.total_full += float(full_macs(self.dims, whole).sum()) + self._head(whole)
        if self.max_length is not None:
            padded = torch.full_like(n, self.max_length)
            self.total_padded += float(full_macs(self.dims, padded).sum()) + self._head(padded)
        self.examples_f += n.numel()
        self.input_tokens += float(n.sum())
        self.kept_tokens += kept.detach().to(device=dev, dtype=torch.float64).sum(0)

    def update_from(self, out: Any, full_lengths: torch.Tensor | None = None) -> None:
        """Add a batch as the encoder executed it, from its :class:`~dyntok.core.encoder.EncoderOutput`
        (``input_lengths``, ``kept`` and ``inputs``): the one way evaluation, prediction and the benchmark count
        MACs, so a layer that ran on more tokens than the one before kept (``restore="last_layer"``) counts.
        ``full_lengths``: as in :meth:`update`."""
        self.update(out.input_lengths, out.kept, inputs=out.inputs, full_lengths=full_lengths)

    def _head(self, n: torch.Tensor) -> float:
        return head_macs(self.dims, n, self.problem).sum().item() if self.problem else 0.0

    def reduce(self, sum_fn: Callable[[torch.Tensor], torch.Tensor], device: Any = None) -> MacsReport:
        """Replace the totals by their sum over processes with ``sum_fn`` (all-reduces a float64 tensor on
        ``device``); returns self. In a Trainer ``compute()`` does this by itself. MACs are whole numbers, so
        float64 sums are exact below 2**53 (9e15 MACs in all)."""
        names = ("total", "total_full", "total_padded", "examples_f", "input_tokens")
        t = torch.cat([torch.stack([getattr(self, n) for n in names]).cpu(), self.kept_tokens.cpu()]).to(device)
        out = sum_fn(t).cpu()
        for k, n in enumerate(names):
            setattr(self, n, out[k].to(self.total.device))
        self.kept_tokens = out[len(names):].to(self.total.device)
        return self

    @property
    def examples(self) -> int:
        return int(self.examples_f)

    @property
    def macs_per_example(self) -> float:
        return float(self.total) / self.examples if self.examples else float("nan")

    @property
    def ratio(self) -> float:
        """Executed / full model at real lengths (<= 1)."""
        return float(self.total / self.total_full) if self.total_full else float("nan")

    @property
    def padded_ratio(self) -> float:
        """Executed / full model padded to ``max_length``; NaN without ``max_length``."""
        return float(self.total / self.total_padded) if self.total_padded else float("nan")

    @property
    def speedup(self) -> float:
        """MACs reduction, full (real lengths) / executed: a compute ratio, not a measured speed-up."""
        return float(self.total_full / self.total) if self.total else float("nan")

    @property
    def retention(self) -> list[float]:
        """(L,) share of the real input tokens kept after each layer, over all examples (the executed
        length configuration as ratios; LayerDrop and per-example rules such as hard gates included)."""
        return (self.kept_tokens / self.input_tokens).tolist() if self.input_tokens else []

    def compute(self) -> dict[str, float]:
        """Plain numbers, ready to log (``retention_l<j>``: :attr:`retention` of layer j, 1-based; ``examples``:
        how many, an int). Under DDP they cover every process; the attributes read afterwards are this
        process's own again (torchmetrics unsyncs after ``compute``)."""
        n = self.examples
        return {
            "macs_per_example": self.macs_per_example,
            "gmacs_per_example": self.macs_per_example / 1e9,
            "full_macs_per_example": float(self.total_full) / n if n else float("nan"),
            "macs_ratio": self.ratio,
            "padded_macs_ratio": self.padded_ratio,
            "macs_reduction": self.speedup,
            "padded_macs_reduction": 1.0 / self.padded_ratio if self.total_padded else float("nan"),
            **{f"retention_l{j + 1}": r for j, r in enumerate(self.retention)},
            "examples": n,
        }
