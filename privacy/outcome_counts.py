"""Private counts of the outcome beside other columns: a Gaussian mechanism of their own.

For a records model whose schema has an outcome column (``Column.outcome``) the release
measures P two-way tables, one per chosen column c: the number of patients with outcome value
y and value v in c, for every (v, y) of the public tokens. A patient adds at most 1 to one
cell of each table (none where either value is missing), so the concatenated tables move by
at most sqrt(P) in L2 when a patient is added or removed, with no clipping. The release adds
N(0, (z sqrt(P))^2) to every cell (the Gaussian mechanism, Dwork & Roth 2014, App. A),
accounted like the column counts as the q = 1, steps = 1 case of the subsampled Gaussian,
``Mechanism(z, 1.0, 1)``. The exact tables: ``common.model.outcome.pair_tables``.

Which columns: chosen from the released model's own sample before anything is measured
(``common.model.outcome.choose_columns``), so the choice is post-processing of what was
already accounted. What the tables are used for is post-processing too
(``common.model.outcome.fit_outcome``).
"""

from __future__ import annotations

import numpy as np

from fedsynth.privacy.secure_random import gaussian

MECHANISM_NOTE = "outcome pair counts (Gaussian)"


def sensitivity(n_tables: int) -> float:
    """L2 sensitivity of P tables of which a patient adds 1 to at most one cell each."""
    return float(np.sqrt(n_tables))


def release_pair_counts(tables: list[np.ndarray], noise_multiplier: float,
                        rng: np.random.Generator | None = None) -> tuple[list[np.ndarray], float]:
    """(the tables + N(0, (z sqrt(P))^2) per cell, that std). ``rng`` None (every real
    release): noise from the OS CSPRNG; seeded: tests."""
    std = float(noise_multiplier * sensitivity(len(tables)))
    noisy = []
    for t in tables:
        noise = gaussian(t.shape, std) if rng is None else rng.normal(0.0, std, t.shape)
        noisy.append(np.asarray(t, dtype=np.float64) + noise)
    return noisy, std
