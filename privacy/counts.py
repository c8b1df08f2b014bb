"""Private per-code counts (Gaussian mechanism) and what is derived from them.

Each patient's 0/1 row is scaled to L2 norm at most ``clip``, so adding or removing one patient
moves the count vector by at most ``clip`` in L2 (the sensitivity), and N(0, (z clip)^2) is
added to every code's count (Dwork & Roth 2014, App. A). It is accounted as the q = 1,
steps = 1 case of the subsampled Gaussian: ``Mechanism(z, 1.0, 1)``. Everything computed from
the noisy counts is post-processing: which codes are modelled (``keep_codes``) and the
prevalences the model's prior and output step use.
"""

from __future__ import annotations

import numpy as np

KEEP_STD = 3.0  # a code is modelled when its noisy count exceeds this many noise std
MIN_CODES = 2


def private_counts(X: np.ndarray, clip: float, noise_multiplier: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Gaussian mechanism on per-code counts: rows scaled to L2 norm <= clip (sensitivity clip),
    plus N(0, (noise_multiplier clip)^2) per code."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.sqrt(X.sum(axis=1))  # 0/1 rows: L2 norm = sqrt(number of codes)
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    counts = scale @ X
    return counts + rng.normal(0.0, noise_multiplier * clip, size=counts.shape)


def keep_codes(noisy: np.ndarray, noise_std: float) -> np.ndarray:
    """Indices of the codes to model: noisy count > KEEP_STD noise std (at least MIN_CODES, the
    largest counts)."""
    keep = np.flatnonzero(noisy > KEEP_STD * noise_std)
    if len(keep) < MIN_CODES:
        keep = np.sort(np.argsort(-noisy, kind="stable")[:MIN_CODES])
    return keep
