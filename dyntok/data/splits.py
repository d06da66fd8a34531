"""Seeded splits: a generator per purpose, stratified hold-outs (label classes, or target quintiles)."""

from __future__ import annotations

import zlib

import numpy as np

from dyntok.data.readers import RawSplit
from dyntok.data.tasks import TaskSpec


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """A generator per (seed, purpose), so that changing one cap does not move another split."""
    return np.random.default_rng([seed % 2**32, zlib.crc32(purpose.encode())])


def _strata(raw: RawSplit, spec: TaskSpec) -> np.ndarray:
    return spec.problem.strata(raw.labels)


def stratified_pick(strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` examples drawn so that each stratum keeps its share (largest remainder)."""
    classes, counts = np.unique(strata, return_counts=True)
    quota = counts * n / len(strata)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: n - take.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(strata == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def hold_out(raw: RawSplit, spec: TaskSpec, n: int, rng: np.random.Generator) -> tuple[RawSplit, RawSplit]:
    held = stratified_pick(_strata(raw, spec), n, rng)
    rest = np.setdiff1d(np.arange(len(raw)), held)
    return raw.take(rest), raw.take(held)
