"""Trainable rank gates and the bi-modal regularizer (Jeong & Kwak 2021, arXiv 2102.09727).

The paper states the method briefly; this is a reconstruction from it and PoWER-BERT (Goyal et al. 2020),
with every choice a constructor argument:

- **Mask matching**: layer j sorts its tokens by significance; the token of rank k leaves layer j with
  weight g_j[k]. In every later layer its attention probability as a key is multiplied by the product of its
  gates so far and the row renormalised: weight 0 is exactly the physical removal done at inference, 1 is
  no change. (Scaling the token's vector instead, as PoWER-BERT's soft extraction does, is undone by the
  next LayerNorm: a gate of 0.05 still passed the whole token on, and hard inference fell to chance.)
- **Straight-through** (default): the forward pass uses the hard gates (g > threshold), so training sees
  what inference does; gradients reach the soft values, also of closed gates (a dropped token's key weight
  still has a gradient), so a gate can reopen.
- **Sparsity** (an L1 variant): R_sparse = sum_j w_j sum_k u_k g_j[k] / sum_j w_j sum_k u_k, where u_k is the
  number of examples in the batch that have a token of rank k (so gates no input reaches cost nothing, and
  R_sparse is the layer-weighted share of tokens kept: lambda means the same at any length or depth).
  At g = 1 the gradients of lambda * R_sparse and mu * R_bimodal are lambda and -mu (same weights): gates
  start closing only where lambda > mu.
  w_j = j (``layer_weighting="linear"``, PoWER-BERT: deeper layers pay more), 1 (``"uniform"``) or
  L - j + 1 (``"reverse"``: early layers pay more, as a token they drop is spared by every later layer).
  Or (``GatesModule`` ``sparsity="tokens"``) the same L1 on the masks the tokens see:
  :meth:`RankGates.token_sparsity`, the share of tokens present after each layer, which MACs follow.
- **Bi-modal** term (Srinivas et al. 2017): R_bimodal = the same usage-weighted mean of g (1 - g): zero at 0
  and 1, largest at 0.5, so gates are pushed to a decision. Under straight-through the task gradient flips
  sign where a gate crosses the threshold, and gates settle there; mu is therefore ramped in late in
  training (``GatesModule`` ``mu_ramp``) and large (300 on SST-2), so the pull away from 0.5 wins.
- **Inference** is hard and physical: layer j keeps the tokens whose rank k has g_j[k] > threshold, so
  l_j = #{k < l_{j-1} : g_j[k] > threshold}, l_0 = the real length (non-increasing by construction), and
  the encoder gathers the rest away. These are exactly the tokens the straight-through training forward
  keeps (a closed gate below an open one drops its rank there too), and tokens gated out in training leave
  the significance scores' queries as they leave the sequence at inference: in eval mode the training
  forward and hard inference give the same logits.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dyntok.core.lengths import LengthConfig, ceil_share
from dyntok.errors import ConfigError


class RankGates(nn.Module):
    """Gate vectors g_j in [0, 1]^G, one per layer, indexed by significance rank.

    Args:
        num_layers: L, encoder depth.
        max_length: T_max, the longest input (``data.max_length``) in tokens.
        rank_scale: ``absolute`` (G = T_max gates: the token of rank k meets g_j[k], whatever the input's
            length; the reconstruction's default) or ``relative`` (G = ``bins`` gates over the share of
            the input: the token of rank k in an input of n real tokens meets g_j[floor(k G / n)], so a gate
            means "the same share of the tokens" in a phrase of 8 tokens and a sentence of 50, and every
            gate is trained by inputs of every length).
        bins: G with ``rank_scale="relative"``.
        parametrization: ``clip`` (raw values clipped to [0, 1] after every step, initialised to ``init``;
            PoWER-BERT's retention parameters) or ``sigmoid`` (g = sigmoid(theta), theta initialised to
            logit(``init``)).
        init: initial gate value in (0, 1].
        straight_through: training forward uses the hard gates (g > threshold) with the soft gradient.
        threshold: a gate above it keeps its rank at inference.
        skip_first: the first ``skip_first`` layers carry no gates and keep every token (their
            significance scores have seen the least context, so dropping there costs most).
        fixed_first: rank 0 is always kept ([CLS] in classification): its gate is neither regularised
            nor counted in the statistics.
        min_keep: a floor on each gated layer, as a share of the input's real tokens: ranks below
            ceil(min_keep * n) are kept whatever their gates say, in training and at inference, and are not
            charged by R_sparse (0: no floor). Not in the paper; LengthDrop's length bound plays this role.

    Raises:
        ConfigError: on an unknown parametrization or out-of-range value.
    """

    def __init__(
        self,
        num_layers: int,
        max_length: int,
        parametrization: Literal["clip", "sigmoid"] = "clip",
        init: float = 1.0,
        straight_through: bool = True,
        threshold: float = 0.5,
        skip_first: int = 0,
        fixed_first: bool = False,
        rank_scale: Literal["absolute", "relative"] = "absolute",
        bins: int = 20,
        min_keep: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= min_keep < 1.0:
            raise ConfigError(f"method.min_keep must be in [0, 1), got {min_keep}")
        if rank_scale not in ("absolute", "relative"):
            raise ConfigError(f"method.rank_scale must be 'absolute' or 'relative', got {rank_scale!r}")
        if rank_scale == "relative" and bins < 1:
            raise ConfigError(f"method.rank_bins must be >= 1, got {bins}")
        if parametrization not in ("clip", "sigmoid"):
            raise ConfigError(f"method.parametrization must be 'clip' or 'sigmoid', got {parametrization!r}")
        if not 0.0 < init <= 1.0:
            raise ConfigError(f"method.gate_init must be in (0, 1], got {init}")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"method.threshold must be in (0, 1), got {threshold}")
        if not 0 <= skip_first < num_layers:
            raise ConfigError(f"method.skip_first must be in [0, {num_layers - 1}], got {skip_first}")
        self.parametrization = parametrization
        self.straight_through = straight_through
        self.threshold = threshold
        self.skip_first = skip_first
        self.num_layers = num_layers
        self.fixed_first = fixed_first
        self.rank_scale = rank_scale
        self.max_length = max_length
        self.min_keep = float(min_keep)
        n, G = num_layers - skip_first, (max_length if rank_scale == "absolute" else bins)
        if parametrization == "clip":
            theta = torch.full((n, G), float(init))
        else:
            p = min(init, 1 - 1e-3)
            theta = torch.full((n, G), float(torch.logit(torch.tensor(p))))
        self.theta = nn.Parameter(theta)
        # How often each gate was reached in training: decides which gates the statistics are over.
        self.register_buffer("usage", torch.zeros(G, dtype=torch.float64))

    @property
    def num_gates(self) -> int:
        """G, gates per layer."""
        return self.theta.size(1)

    def gate_index(self, real_lengths: torch.Tensor, width: int) -> torch.Tensor:
        """(B, width) long: the gate each rank r < width of each input meets (r itself, or floor(r G / n))."""
        r = torch.arange(width, device=real_lengths.device)
        if self.rank_scale == "absolute":
            return r.clamp(max=self.num_gates - 1).expand(real_lengths.size(0), width)
        n = real_lengths.clamp(min=1)[:, None]
        return torch.div(r[None, :] * self.num_gates, n, rounding_mode="floor").clamp(max=self.num_gates - 1)

    def floor_mask(self, real_lengths: torch.Tensor, width: int) -> torch.Tensor | None:
        """(B, width) bool: ranks below ceil(min_keep * n), kept whatever their gates say; None without a floor."""
        if self.min_keep == 0.0:
            return None
        floor = ceil_share(self.min_keep, real_lengths.long())
        return torch.arange(width, device=real_lengths.device)[None, :] < floor[:, None]

    def values(self) -> torch.Tensor:
        """(L_gated, T_max) soft gate values in [0, 1]."""
        if self.parametrization == "clip":
            return self.theta.clamp(0.0, 1.0)
        return torch.sigmoid(self.theta)

    @torch.no_grad()
    def project_(self) -> None:
        """Clip raw values to [0, 1] (call after each optimizer step; no-op for ``sigmoid``)."""
        if self.parametrization == "clip":
            self.theta.clamp_(0.0, 1.0)

    @torch.no_grad()
    def snap_(self, open_: torch.Tensor) -> None:
        """Set every gate to 1 where ``open_`` (bool, (L_gated, G)) is True and to 0 elsewhere (a sigmoid
        gate to sigmoid(+-20)): the hard rule then keeps exactly these ranks, and soft equals hard."""
        if open_.shape != self.theta.shape:
            raise ValueError(f"snap_: expected a {tuple(self.theta.shape)} table, got {tuple(open_.shape)}")
        on = 1.0 if self.parametrization == "clip" else 20.0
        self.theta.copy_(torch.where(open_.to(self.theta.device), on, 0.0 if self.parametrization == "clip" else -on))

    def training_gates(self, real_lengths: torch.Tensor | None = None, width: int | None = None
                       ) -> list[torch.Tensor | None]:
        """Per-layer gates for :meth:`TokenDroppingEncoder.forward` ``rank_gates`` (None = ungated):
        (G,) vectors, or with ``real_lengths`` (B,) and ``width`` (the batch's T) (B, width) tables of the
        gate each rank meets (needed for ``relative`` and ``min_keep``; 1 under the floor)."""
        g = self.values()
        if self.straight_through:
            hard = (g > self.threshold).to(g.dtype)
            g = hard + g - g.detach()
        if real_lengths is None:
            if self.rank_scale == "relative" or self.min_keep > 0:
                raise ValueError("relative rank gates and a min_keep floor need real_lengths and width")
            return [None] * self.skip_first + list(g.unbind(0))
        idx = self.gate_index(real_lengths, width)
        tables = [row[idx] for row in g.unbind(0)]
        floor = self.floor_mask(real_lengths, width)
        if floor is not None:
            tables = [t.masked_fill(floor, 1.0) for t in tables]
        return [None] * self.skip_first + tables

    @torch.no_grad()
    def open_table(self, real_lengths: torch.Tensor, width: int) -> list[torch.Tensor | None]:
        """Per layer, a (B, width) bool table: rank r of input b is kept (its gate is above the threshold;
        rank 0 and the ranks under the ``min_keep`` floor always); None for the ``skip_first`` layers.
        :meth:`TokenDroppingEncoder.forward` ``keep_by_rank``: hard inference."""
        open_ = self.values() > self.threshold
        idx = self.gate_index(real_lengths, width)
        floor = self.floor_mask(real_lengths, width)
        tables = []
        for row in open_:
            t = row[idx]
            t[:, 0] = True
            if floor is not None:
                t |= floor
            tables.append(t)
        return [None] * self.skip_first + tables

    def batch_open_table(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor | None]:
        """:meth:`open_table` of a collated batch (real lengths from its ``attention_mask``, width from its
        ``input_ids``): the ``keep_by_rank`` of hard inference."""
        return self.open_table(batch["attention_mask"].sum(1), batch["input_ids"].size(1))

    def _usage_weights(self, real_lengths: torch.Tensor) -> torch.Tensor:
        """(G,) u_k: tokens in the batch that meet gate k (absolute: examples with a token of rank k)."""
        width = int(real_lengths.max()) if real_lengths.numel() else 1
        idx = self.gate_index(real_lengths, width)
        real = torch.arange(width, device=real_lengths.device)[None, :] < real_lengths[:, None]
        if self.fixed_first:
            real[:, 0] = False  # [CLS] is kept whatever its gate says
        floor = self.floor_mask(real_lengths, width)
        if floor is not None:
            real &= ~floor  # so are the ranks under the floor: their gates decide nothing
        u = torch.zeros(self.num_gates, dtype=self.theta.dtype, device=self.theta.device)
        return u.index_add_(0, idx[real].to(u.device), torch.ones_like(idx[real], dtype=u.dtype, device=u.device))

    def layer_weights(self, weighting: Literal["linear", "uniform", "reverse"]) -> torch.Tensor:
        """(L_gated,) w_j of the gated layers j = skip_first + 1 .. L: j, 1 or L - j + 1.

        Raises:
            ConfigError: another ``weighting`` (names ``method.layer_weighting``).
        """
        if weighting not in ("linear", "uniform", "reverse"):
            raise ConfigError(f"method.layer_weighting must be 'linear', 'uniform' or 'reverse', got {weighting!r}")
        j = torch.arange(self.skip_first + 1, self.num_layers + 1, dtype=self.theta.dtype, device=self.theta.device)
        if weighting == "linear":
            return j
        return self.num_layers + 1 - j if weighting == "reverse" else torch.ones_like(j)

    def regularizers(
        self, real_lengths: torch.Tensor, weighting: Literal["linear", "uniform", "reverse"] = "linear"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R_sparse, R_bimodal), both scalars in [0, 1] and [0, 0.25].

        Args:
            real_lengths: (B,) real tokens of the batch's examples.
        """
        g = self.values()
        u = self._usage_weights(real_lengths)
        if self.training:
            self.usage += u.detach().to(self.usage.dtype)
        w = self.layer_weights(weighting)
        weight = w[:, None] * u[None, :]
        total = weight.sum().clamp(min=1.0)
        sparse = (weight * g).sum() / total
        bimodal = (weight * g * (1 - g)).sum() / total
        return sparse, bimodal

    def token_sparsity(
        self, alive: list[torch.Tensor | None], attention_mask: torch.Tensor,
        weighting: Literal["linear", "uniform", "reverse"] = "uniform",
    ) -> torch.Tensor:
        """R_tokens in [0, 1]: the layer-weighted share of real tokens still present after each gated layer,
        sum_j w_j sum_t a_j(t) / (sum_j w_j * real tokens), with a_j(t) the product of the gates token t got
        up to layer j (:attr:`EncoderOutput.alive`). An L1 variant on the masks the tokens see rather than
        on the gate vectors: with uniform weights it is the share of token-layers computed (what MACs
        follow), and a gate that closes early is charged for every later layer it saves, while gates of
        tokens already gone cost nothing.

        Args:
            alive: L entries, None or (B, T); attention_mask: (B, T) 0/1.
        """
        real = attention_mask.to(self.theta.dtype)
        w = self.layer_weights(weighting)
        gated = alive[self.skip_first:]
        total = (w.sum() * real.sum()).clamp(min=1.0)
        kept = sum(wj * ((a * real).sum() if a is not None else real.sum()) for wj, a in zip(w, gated, strict=True))
        return kept / total

    @torch.no_grad()
    def hard_lengths(self, real_lengths: torch.Tensor) -> torch.Tensor:
        """(B, L) kept tokens per layer at inference: l_j = #{k < l_{j-1} : the gate rank k meets > threshold}.

        Rank 0 ([CLS] in classification) always counts, so at least one token stays.
        """
        from dyntok.core.attention import rank_table_lengths

        real = real_lengths.long()
        if self.rank_scale == "absolute":
            real = real.clamp(max=self.max_length)
        width = max(int(real.max()), 1) if real.numel() else 1
        return rank_table_lengths(self.open_table(real, width), real)

    @torch.no_grad()
    def length_config(self, reference_length: int) -> LengthConfig:
        """The learned configuration as ratios of ``reference_length`` tokens (for reports)."""
        n = torch.tensor([reference_length])
        counts = self.hard_lengths(n)[0].tolist()
        return LengthConfig(tuple(c / reference_length for c in counts), "ratio", min_tokens=1)

    @torch.no_grad()
    def stats(self, tol: float = 0.05) -> dict[str, float]:
        """Share of gates (at ranks reached in training) within ``tol`` of 0 or 1, and share open."""
        g = self.values()
        used = self.usage > 0
        if not bool(used.any()):
            used = torch.ones_like(used)
        g = g[:, used]
        bimodal = ((g <= tol) | (g >= 1 - tol)).double().mean().item()
        return {"gate_bimodal_share": bimodal, "gate_open_share": (g > self.threshold).double().mean().item(),
                "gate_mean": g.double().mean().item()}
