"""Gaussian releases of one- and two-way code marginals of 0/1 patient rows (MST's measurements).

Both releases bound each patient's contribution by keeping at most k of its codes (a uniformly
random k, chosen with OS randomness: ``clip_codes_secure``), k public and fixed in advance, and
add N(0, (sigma * Delta_2)^2) to every entry (the Gaussian mechanism, Dwork & Roth 2014,
Thm A.1), every draw from ``privacy.secure_random``; accounted as ``Mechanism(sigma, 1.0, 1)``
(the q = 1, one-step case of the subsampled Gaussian). Adjacency: add/remove one patient.

- **One-way** (``release_one_way``): the vector (c_1..c_V, n) of the clipped rows. One patient
  adds (x_1..x_V, 1) with at most k + 1 ones: Delta_2 = sqrt(k + 1).
- **Two-way** (``release_pairs``): the co-counts c_ij, i < j, of the codes ``cols`` (any list,
  e.g. chosen by a coordinator), each patient clipped to k of its codes *within* ``cols``. One
  patient adds 1 to the c_ij of each pair of its kept codes, at most k (k - 1) / 2 of them:
  Delta_2 = sqrt(k (k - 1) / 2), whatever ``cols`` is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsynth.privacy import secure_random


def one_way_sensitivity(k: int) -> float:
    """Delta_2 of (c_1..c_V, n) with at most k codes per patient: sqrt(k + 1)."""
    return math.sqrt(k + 1)


def pair_sensitivity(k: int) -> float:
    """Delta_2 of the co-counts (c_ij)_{i<j} with at most k codes per patient:
    sqrt(k (k - 1) / 2)."""
    return math.sqrt(k * (k - 1) / 2)


def clip_codes_secure(X: np.ndarray, k: int) -> np.ndarray:
    """Keep a uniformly random k of each patient's codes (the k largest of i.i.d. secure
    Gaussian keys: every k-subset equally likely); rows with <= k codes as they are."""
    X = np.asarray(X, dtype=np.uint8)
    over = np.flatnonzero(X.sum(1) > k)
    if over.size == 0:
        return X
    out = X.copy()
    for i in over:
        codes = np.flatnonzero(out[i])
        keys = secure_random.gaussian(codes.size)
        out[i, codes[np.argsort(keys)[:-k]]] = 0
    return out


def noisy_counts(Xc: np.ndarray, sd: float) -> tuple[np.ndarray, float]:
    """(c_1..c_V) + noise and n + noise, N(0, sd^2) each from the OS CSPRNG (sd 0: exact)."""
    noise = secure_random.gaussian(Xc.shape[1] + 1, sd) if sd > 0 else np.zeros(Xc.shape[1] + 1)
    return Xc.sum(0, dtype=np.float64) + noise[:-1], float(Xc.shape[0] + noise[-1])


def pair_counts(Xc: np.ndarray) -> np.ndarray:
    """The co-counts c_ij, i < j, of 0/1 rows, in ``np.triu_indices(K, 1)`` order (one product)."""
    Xf = np.asarray(Xc, dtype=np.float64)
    C = Xf.T @ Xf
    return C[np.triu_indices(C.shape[0], 1)]


@dataclass
class OneWay:
    """A one-way release: noisy per-code counts, noisy size, the noise std of each entry."""

    counts: np.ndarray
    size: float
    noise_std: float


@dataclass
class Pairs:
    """A two-way release: noisy co-counts of ``cols`` (triu order) and the noise std."""

    cols: np.ndarray
    counts: np.ndarray
    noise_std: float


def release_one_way(X: np.ndarray, k: int, sigma: float) -> OneWay:
    """One-way marginals (module docstring): clip to k, count, add N(0, (sigma sqrt(k+1))^2)."""
    sd = sigma * one_way_sensitivity(k)
    counts, size = noisy_counts(clip_codes_secure(X, k), sd)
    return OneWay(counts, size, sd)


def release_pairs(X: np.ndarray, cols: np.ndarray, k: int, sigma: float) -> Pairs:
    """Two-way marginals of ``cols`` (module docstring): clip each row to k codes within
    ``cols``, count every pair, add N(0, (sigma sqrt(k(k-1)/2))^2) to each co-count."""
    cols = np.asarray(cols, dtype=np.int64)
    if cols.size < 2 or len(np.unique(cols)) != cols.size:
        raise ValueError("two-way marginals need at least two distinct codes")
    exact = pair_counts(clip_codes_secure(np.asarray(X)[:, cols], k))
    sd = sigma * pair_sensitivity(k)
    return Pairs(cols, exact + secure_random.gaussian(exact.shape, sd), sd)
