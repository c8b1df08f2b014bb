"""Deterministic patient-level train / holdout split."""

from __future__ import annotations

import numpy as np

from fedsynth.common.data.matrix import CodeMatrix


def split_holdout(
    matrix: CodeMatrix, fraction: float = 0.2, seed: int = 0
) -> tuple[CodeMatrix, CodeMatrix]:
    """(train, holdout): a seeded random ``fraction`` of patients held out, by patient row.

    Each patient is in exactly one part; both parts keep the vocabulary and covariates.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = matrix.n_patients
    n_hold = int(round(n * fraction))
    if n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    hold = np.sort(perm[:n_hold])
    train = np.sort(perm[n_hold:])
    return matrix.subset(train), matrix.subset(hold)
