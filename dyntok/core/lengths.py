"""Length configurations: how many tokens each encoder layer keeps.

One type serves the gates, LengthDrop, the evolutionary search, the compute counter and the benchmark.

A length configuration (l_1, ..., l_L) gives the number of tokens kept after layer j's attention
sub-layer (PoWER-BERT, Goyal et al. 2020; Length-Adaptive Transformer, Kim & Cho 2021, Sec. 3).
dyntok stores it in one of two units:

- ``ratio``: l_j = ceil(r_j * n) for an example of n real (unpadded) tokens. Inputs of different real
  lengths in one batch each keep their own share; padding never counts. Every such count in dyntok is
  :func:`ceil_share`: integer arithmetic on the share in millionths, so training, MACs accounting, the search
  and any other runtime that repeats it in int64 agree on every length (floating point does not: fp32
  ceil(0.3 * 100) is 31).
- ``tokens``: l_j = min(c_j, n) absolute tokens, as the original LAT code counts them.

Either way the resolved counts are clamped to [min(min_tokens, n), n] and made non-increasing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dyntok.errors import ConfigError

Unit = Literal["ratio", "tokens"]

PPM = 1_000_000
"""Shares are counted in millionths."""


def ceil_share(share: float | torch.Tensor, n: int | torch.Tensor) -> int | torch.Tensor:
    """ceil(share * n) tokens, exactly: the share rounded to millionths s, then (s * n + 10^6 - 1) // 10^6 in
    integers (int64 for tensors; no overflow below 9e12 tokens).

    Args:
        share: a float, or a float tensor broadcastable with ``n``.
        n: tokens, an int or a long tensor.

    Returns:
        an int, or a long tensor of the broadcast shape.
    """
    s = torch.round(share.to(torch.float64) * PPM).long() if torch.is_tensor(share) else round(float(share) * PPM)
    return (s * n + PPM - 1) // PPM


def non_increasing(counts: torch.Tensor) -> torch.Tensor:
    """(B, L) the running minimum along the layers: each count at most the one before.

    A loop over the L columns rather than ``torch.cummin``, which ONNX has no operator for.
    """
    cols = [counts[:, 0]]
    for j in range(1, counts.size(1)):
        cols.append(torch.minimum(cols[-1], counts[:, j]))
    return torch.stack(cols, dim=1)


@dataclass(frozen=True)
class LengthConfig:
    """Per-layer kept-token counts (``unit="tokens"``) or retention ratios (``unit="ratio"``).

    Attributes:
        values: one entry per encoder layer, non-increasing; ratios in (0, 1], token counts >= 1.
        unit: ``"ratio"`` (of each example's real length) or ``"tokens"`` (absolute).
        min_tokens: floor on kept tokens (the LAT code keeps >= 2); never above the real length.

    Raises:
        ConfigError: on construction, when values are empty, out of range or increasing.
    """

    values: tuple[float, ...]
    unit: Unit = "ratio"
    min_tokens: int = 2

    def __post_init__(self) -> None:
        vals = tuple(float(v) for v in self.values)
        object.__setattr__(self, "values", vals)
        if self.unit not in ("ratio", "tokens"):
            raise ConfigError(f"length configuration unit must be 'ratio' or 'tokens', got {self.unit!r}")
        if not vals:
            raise ConfigError("length configuration is empty: give one value per encoder layer")
        for j, v in enumerate(vals):
            if self.unit == "ratio" and not (0.0 < v <= 1.0):
                raise ConfigError(f"length configuration layer {j + 1}: ratio {v} is outside (0, 1]")
            if self.unit == "tokens" and (v < 1 or v != int(v)):
                raise ConfigError(f"length configuration layer {j + 1}: {v} is not a whole number of tokens >= 1")
        for j in range(1, len(vals)):
            if vals[j] > vals[j - 1] + 1e-9:
                raise ConfigError(
                    f"length configuration must be non-increasing over layers: layer {j + 1} keeps "
                    f"{vals[j]:g} > layer {j} keeps {vals[j - 1]:g} ({self.describe()})"
                )
        if self.min_tokens < 1:
            raise ConfigError(f"min_tokens must be >= 1, got {self.min_tokens}")

    @property
    def num_layers(self) -> int:
        return len(self.values)

    @classmethod
    def full(cls, num_layers: int) -> LengthConfig:
        """Keep every token at every layer (the full model)."""
        return cls((1.0,) * num_layers, "ratio")

    @classmethod
    def constant(cls, ratio: float, num_layers: int, keep_first: int = 0) -> LengthConfig:
        """Keep ``ratio`` of the real length at every layer after the first ``keep_first`` (kept whole)."""
        return cls(tuple(1.0 if j < keep_first else ratio for j in range(num_layers)), "ratio")

    @classmethod
    def parse(cls, obj: Any, num_layers: int, key: str = "length_config") -> LengthConfig:
        """Build from a config value: a float (constant ratio), a list, a comma string or a dict.

        A list of ints > 1 or a dict with ``unit: tokens`` means absolute tokens, otherwise ratios.

        Raises:
            ConfigError: naming ``key`` when the value cannot be read or has the wrong depth.
        """
        if isinstance(obj, LengthConfig):
            cfg = obj
        else:
            try:
                cfg = cls._from_obj(obj, num_layers)
            except ConfigError as e:
                raise ConfigError(f"{key}: {e}") from None
            except (TypeError, ValueError) as e:
                raise ConfigError(
                    f"{key}: cannot read {obj!r} as a length configuration ({e}); expected a ratio, "
                    f"a list of {num_layers} ratios or token counts, or {{unit: ..., values: [...]}}"
                ) from None
        if cfg.num_layers != num_layers:
            raise ConfigError(
                f"{key}: {cfg.num_layers} values given but the encoder has {num_layers} layers"
            )
        return cfg

    @classmethod
    def _from_obj(cls, obj: Any, num_layers: int) -> LengthConfig:
        if isinstance(obj, int | float) and not isinstance(obj, bool):
            return cls.constant(float(obj), num_layers)
        if isinstance(obj, str):
            obj = [float(x) for x in obj.replace(" ", "").split(",") if x]
            if len(obj) == 1:
                return cls.constant(obj[0], num_layers)
        if hasattr(obj, "keys"):
            return cls(tuple(obj["values"]), obj.get("unit", "ratio"), int(obj.get("min_tokens", 2)))
        vals = [float(v) for v in obj]
        unit: Unit = "tokens" if any(v > 1.0 for v in vals) else "ratio"
        return cls(tuple(vals), unit)

    @classmethod
    def from_counts(cls, counts: Sequence[int], ref_length: int, unit: Unit = "ratio") -> LengthConfig:
        """Per-layer token counts at a reference length of ``ref_length`` tokens (a search gene, a LengthDrop
        sub-model) as a configuration of ``unit``: absolute (``tokens``, at least 2 kept, as the LAT code) or
        the ratios count / ``ref_length`` of each input's own length (``ratio``, at least 1 kept).

        Raises:
            ConfigError: counts that are not a valid configuration (increasing, < 1), or an unknown unit.
        """
        if unit == "tokens":
            return cls(tuple(float(c) for c in counts), "tokens", min_tokens=2)
        if unit != "ratio":
            raise ConfigError(f"length configuration unit must be 'ratio' or 'tokens', got {unit!r}")
        return cls(tuple(min(1.0, c / ref_length) for c in counts), "ratio", min_tokens=1)

    def resolve(self, real_lengths: torch.Tensor) -> torch.Tensor:
        """Per-example kept counts.

        Args:
            real_lengths: (B,) long, real tokens per example (specials included, padding not).

        Returns:
            (B, L) long, non-increasing along L, each in [min(min_tokens, n), n].
        """
        n = real_lengths.to(torch.long).unsqueeze(1)
        vals = torch.tensor(self.values, dtype=torch.float64, device=n.device).unsqueeze(0)
        if self.unit == "ratio":
            counts = ceil_share(vals, n)
        else:
            counts = vals.to(torch.long).expand(n.size(0), -1)
        floor = torch.clamp(n, max=self.min_tokens)
        counts = torch.maximum(torch.minimum(counts, n), floor)
        return non_increasing(counts)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``ratio[1, 1, .5, .5, .4, .4]``."""
        if self.unit == "ratio":
            body = ", ".join(f"{v:.3g}" for v in self.values)
        else:
            body = ", ".join(str(int(v)) for v in self.values)
        return f"{self.unit}[{body}]"

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "values": list(self.values), "min_tokens": self.min_tokens}
