"""A compute target for rank gates (``method.target_macs``): lambda becomes a Lagrange multiplier steered to a
MACs ratio, and the gates are cut to that ratio before they freeze.

The multiplier follows the target by dual ascent (CoFi, Xia et al. 2022, Eq. 6; ToP, Li et al. 2023) on the
MACs of all training inputs; the cut (:meth:`MacsTarget.calibrate`) makes the hard inference rule meet the
target, not only the training batches' expectation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dyntok.core.gates import RankGates

# (real lengths (N,), inputs per length (N,)) -> their MACs ratio under the gates' hard rule
RatioFn = Callable[[torch.Tensor, torch.Tensor], float]


class MacsTarget:
    """The state of a compute target: the multiplier, the baseline MACs of the batches seen, the real lengths
    of the training inputs seen and the cut made. Options as :class:`dyntok.methods.config.GatesConfig`'s
    ``target_*`` and ``multiplier_lr`` keys.

    Args:
        target: MACs ratio in (0, 1].
        lr: dual ascent step (``multiplier_lr``).
        warmup: share of the first stage over which the target falls from 1 (``target_warmup``).
        min_length: the cut counts the inputs of at least this many tokens (``target_min_length``).
        max_length: longest input expected, in tokens (lengths beyond it are counted too).
    """

    def __init__(self, target: float, lr: float, warmup: float, min_length: int, max_length: int) -> None:
        self.target, self.lr, self.warmup, self.min_length = target, lr, warmup, min_length
        self.multiplier = 0.0
        self.base_seen = torch.zeros(2, dtype=torch.float64)  # (sum of the batches' baseline MACs, batches)
        self.length_counts = torch.zeros(max_length + 1, dtype=torch.float64)  # training inputs per real length
        self.calibration: dict[str, float] = {}

    def current(self, progress: float | None) -> float:
        """The ratio aimed at when ``progress`` of the first stage is done: 1 - (1 - target) * min(1, t /
        warmup) (CoFi's Lagrangian warm-up: the multiplier does not wind up while gates travel to the
        threshold); the target itself when progress is unknown (None)."""
        if not self.warmup or progress is None:
            return self.target
        return 1.0 - (1.0 - self.target) * min(1.0, progress / self.warmup)

    def step(self, excess: float, base: float) -> float:
        """Dual ascent on the target as an equality: the multiplier moves by ``lr * excess / b``, excess = the
        batch's MACs - target * its baseline MACs (``base``), b the mean baseline MACs of the batches so far.
        Summed over batches this is the gap of the total ratio, so batches of short inputs, which gates can
        barely shorten, weigh as little as the MACs they cost. It turns negative below the target, which
        pushes gates open again. Returns the new value."""
        self.base_seen += torch.tensor([base, 1.0], dtype=torch.float64)
        self.multiplier += self.lr * excess / float(self.base_seen[0] / self.base_seen[1])
        return self.multiplier

    def count(self, real: torch.Tensor) -> None:
        """Add a batch's (B,) real lengths to :attr:`length_counts`."""
        counts = torch.bincount(real.detach().long().cpu(), minlength=self.length_counts.numel())
        if counts.numel() > self.length_counts.numel():
            grow = counts.numel() - self.length_counts.numel()
            self.length_counts = torch.cat([self.length_counts, torch.zeros(grow, dtype=torch.float64)])
        self.length_counts += counts.to(torch.float64)

    @torch.no_grad()
    def calibrate(self, gates: RankGates, ratio: RatioFn, counts: torch.Tensor | None = None) -> dict[str, float]:
        """Open the first k gates of an order and close the rest (:meth:`RankGates.snap_`), k chosen so the
        hard MACs ratio over the training inputs' real lengths (``counts``, default :attr:`length_counts`;
        those of at least ``min_length`` tokens) is nearest the target; the ratio grows with k, so k is found
        by bisection.

        The order: gate value, highest first (the evidence training gathered: the gates the multiplier pushed
        lowest close first, as CoFi's deterministic masks keep the top scores up to the expected count); among
        equal values (gates the bi-modal term settled at 0 or 1) the lower significance rank, then the earlier
        layer, first.

        Args:
            gates: the rank gates to cut (snapped in place).
            ratio: the MACs ratio of (lengths, inputs per length) under the gates' hard rule as they stand
                (:meth:`dyntok.methods.gates.GatesModule.hard_macs_ratio`).
            counts: training inputs per real length.

        Returns (also :attr:`calibration`): the gates left open, and the hard ratio before and after on those
        lengths.

        Raises:
            RuntimeError: no training input (of at least ``min_length`` tokens) was counted.
        """
        counts = self.length_counts if counts is None else counts
        lengths = counts.nonzero().squeeze(1)
        lengths = lengths[lengths >= self.min_length]
        if lengths.numel() == 0:
            raise RuntimeError(f"gates: no training input of at least method.target_min_length={self.min_length} "
                               "tokens seen: nothing to cut the MACs target on")
        weights = counts[lengths]

        before = ratio(lengths, weights)
        g = gates.values().detach().cpu()
        layer = torch.arange(g.size(0))[:, None].expand_as(g).flatten()
        rank = torch.arange(g.size(1))[None, :].expand_as(g).flatten()
        order = torch.arange(g.numel())
        for key, descending in ((layer, False), (rank, False), (g.flatten(), True)):  # stable: the last key leads
            order = order[torch.sort(key[order], descending=descending, stable=True).indices]
        ratios: dict[int, float] = {}

        def snap(k: int) -> None:
            open_ = torch.zeros(g.numel(), dtype=torch.bool)
            open_[order[:k]] = True
            gates.snap_(open_.view_as(g))

        def ratio_at(k: int) -> float:
            if k not in ratios:
                snap(k)
                ratios[k] = ratio(lengths, weights)
            return ratios[k]

        lo, hi = 0, g.numel()  # the fewest open gates reaching the target
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ratio_at(mid) >= self.target else (mid + 1, hi)
        best = min((k for k in (lo - 1, lo) if k >= 0), key=lambda k: abs(ratio_at(k) - self.target))
        snap(best)
        self.calibration = {"open_gates": best, "ratio_before": before, "ratio_after": ratios[best]}
        return self.calibration

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, so a resumed run continues the same dual ascent and cut."""
        return {"multiplier": self.multiplier, "base_seen": self.base_seen.tolist(),
                "length_counts": self.length_counts.tolist(), "calibration": dict(self.calibration)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multiplier = float(state["multiplier"])
        self.base_seen = torch.tensor(state["base_seen"], dtype=torch.float64)
        self.length_counts = torch.tensor(state["length_counts"], dtype=torch.float64)
        self.calibration = dict(state["calibration"])
