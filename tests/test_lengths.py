"""Length configurations: parsing, validation, resolution against real lengths."""

from __future__ import annotations

from fractions import Fraction
from math import ceil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dyntok.core.lengths import PPM, LengthConfig, ceil_share
from dyntok.errors import ConfigError


def test_ratio_resolves_against_real_length():
    cfg = LengthConfig((1.0, 0.5, 0.25), "ratio", min_tokens=2)
    got = cfg.resolve(torch.tensor([10, 3, 1]))
    assert got.tolist() == [[10, 5, 3], [3, 2, 2], [1, 1, 1]]


def test_tokens_clamp_to_real_length():
    cfg = LengthConfig((64, 32, 8), "tokens")
    assert cfg.resolve(torch.tensor([100, 20, 5])).tolist() == [[64, 32, 8], [20, 20, 8], [5, 5, 5]]


@pytest.mark.parametrize(
    ("values", "unit", "match"),
    [
        ((0.5, 0.6), "ratio", "non-increasing"),
        ((1.2, 0.5), "ratio", "outside"),
        ((0.0,), "ratio", "outside"),
        ((10, 2.5), "tokens", "whole number"),
        ((), "ratio", "empty"),
    ],
)
def test_invalid_configs_raise(values, unit, match):
    with pytest.raises(ConfigError, match=match):
        LengthConfig(values, unit)


def test_parse_forms_and_depth_check():
    assert LengthConfig.parse(0.5, 3).values == (0.5, 0.5, 0.5)
    assert LengthConfig.parse("1,0.5,0.5", 3).values == (1.0, 0.5, 0.5)
    assert LengthConfig.parse([64, 32, 16], 3).unit == "tokens"
    assert LengthConfig.parse({"unit": "ratio", "values": [1, 1, 0.4]}, 3).values == (1.0, 1.0, 0.4)
    with pytest.raises(ConfigError, match="search.budget: 2 values given but the encoder has 3 layers"):
        LengthConfig.parse([1, 0.5], 3, key="search.budget")
    with pytest.raises(ConfigError, match="length_config: cannot read"):
        LengthConfig.parse("a,b", 3)


@given(
    st.lists(st.floats(0.01, 1.0), min_size=1, max_size=12).map(lambda v: sorted(v, reverse=True)),
    st.lists(st.integers(1, 512), min_size=1, max_size=8),
    st.integers(1, 4),
)
def test_resolve_is_monotone_and_bounded(ratios, real, min_tokens):
    cfg = LengthConfig(tuple(ratios), "ratio", min_tokens=min_tokens)
    n = torch.tensor(real)
    got = cfg.resolve(n)
    assert got.shape == (len(real), len(ratios))
    assert (got[:, 1:] <= got[:, :-1]).all()
    assert (got <= n[:, None]).all()
    assert (got >= torch.clamp(n, max=min_tokens)[:, None]).all()


@given(st.integers(0, PPM), st.integers(0, 4096))
def test_kept_counts_are_the_exact_ceiling_of_the_share(millionths, n):
    exact = ceil(Fraction(millionths, PPM) * n)
    share = millionths / PPM
    assert ceil_share(share, n) == exact
    assert int(ceil_share(torch.tensor(share), torch.tensor(n))) == exact  # int64 tensors: the same rule


def test_kept_counts_do_not_drift_with_floating_point():
    assert ceil_share(0.3, 100) == 30  # float32 ceil(0.3 * 100) is 31
    lengths = torch.arange(1, 513)
    cfg = LengthConfig(tuple(r / 10 for r in range(9, 0, -1)), "ratio", min_tokens=1)
    exact = [[ceil(Fraction(r, 10) * n) for r in range(9, 0, -1)] for n in range(1, 513)]
    assert cfg.resolve(lengths).tolist() == exact  # every length up to 512, every tenth
