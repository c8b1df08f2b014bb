"""Private counts of the record columns' values: a Gaussian mechanism of their own.

A patient's record is one token per schema column (``common.data.record_tokens``; none for a
missing value), so its token vector has at most G ones for G columns and L2 norm at most
sqrt(G): adding or removing a patient moves the vector of per-token counts by at most sqrt(G)
in L2, with no clipping. The release adds N(0, (z sqrt(G))^2) to every token count (the
Gaussian mechanism, Dwork & Roth 2014, App. A), accounted like the code counts as the q = 1,
steps = 1 case of the subsampled Gaussian, ``Mechanism(z, 1.0, 1)``; a federation sums the
sites' releases (``privacy.counts.combine``).

Post-processing (``column_prevalence``): each column's distribution over its public tokens is
its noisy counts floored at 0 and normalised within the column (uniform when none is
positive); it is the records model's prior and calibration target.
"""

from __future__ import annotations

import numpy as np

from fedsynth.privacy.counts import NoisyCounts
from fedsynth.privacy.secure_random import gaussian

MECHANISM_NOTE = "record column counts (Gaussian)"


def sensitivity(groups: tuple[int, ...]) -> float:
    """L2 sensitivity of the per-token counts: sqrt(number of columns)."""
    return float(np.sqrt(len(groups)))


def release_column_counts(T: np.ndarray, groups: tuple[int, ...], noise_multiplier: float,
                          rng: np.random.Generator | None = None) -> NoisyCounts:
    """sum_i t_i + N(0, (z sqrt(G))^2 I) over the (n, sum(groups)) 0/1 tokens ``T`` (at most
    one per group and row; checked). ``size``: the mean of the columns' noisy totals (post-
    processing). ``rng`` None (every real release): noise from the OS CSPRNG; seeded: tests."""
    T = np.asarray(T, dtype=np.float64)
    if T.ndim != 2 or T.shape[1] != sum(groups):
        raise ValueError(f"tokens have shape {T.shape}, the groups {sum(groups)} columns")
    starts = np.cumsum((0, *groups[:-1]))
    if len(T) and (np.add.reduceat(T, starts, axis=1) > 1).any():
        raise ValueError("a record has more than one token in a column")
    std = float(noise_multiplier * sensitivity(groups))
    exact = T.sum(axis=0)
    noise = gaussian(exact.shape, std) if rng is None else rng.normal(0.0, std, exact.shape)
    noisy = exact + noise
    size = float(np.add.reduceat(noisy, starts).mean()) if len(groups) else 0.0
    return NoisyCounts(noisy, size, std)


def column_prevalence(noisy: NoisyCounts, groups: tuple[int, ...]) -> np.ndarray:
    """(sum(groups),) each column's token distribution: max(c, 0) normalised within the
    column, uniform when no count is positive."""
    c = np.maximum(np.asarray(noisy.counts, dtype=np.float64), 0.0)
    out = np.empty_like(c)
    start = 0
    for k in groups:
        block = c[start:start + k]
        total = block.sum()
        out[start:start + k] = block / total if total > 0 else 1.0 / k
        start += k
    return out
