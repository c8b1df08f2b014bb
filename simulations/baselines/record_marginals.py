"""Independent DP marginals on whole records: every schema column and every code on its own.

The floor a records generator has to beat on association and on the downstream task (issue 16):
it keeps each column's distribution and nothing of how the columns go together.

Release (the Gaussian mechanism, Dwork & Roth 2014, Thm A.1; adjacency: add/remove one
patient; every draw from the OS's CSPRNG, ``privacy.secure_random``):

1. **Column histograms.** Each of the C schema columns gets a histogram over its PUBLIC domain:
   the schema's categories, or for a numeric column the token bins of
   ``common.data.record_tokens.token_layout`` (fixed by the schema's bounds alone), plus one
   cell for a missing value. Every patient lands in exactly one cell of every column, so adding
   or removing one patient changes C counts by 1: L2 sensitivity sqrt(C). Each count gets
   N(0, (sigma sqrt(C))^2).
2. **Codes.** ``dp_marginals.private_prevalence``: each patient clipped to k codes, the vector
   (c_1..c_V, n) with sensitivity sqrt(k + 1), N(0, (sigma sqrt(k + 1))^2) per entry.

One noise multiplier sigma for both, calibrated by ``privacy.accountant`` (through
``dp_sgd.plan_privacy``) so that the two releases, ``Mechanism(sigma, 1.0, 1)`` each (phases
``histograms`` and ``codes``), compose to the target (epsilon, delta).

Post-processing (free): noisy counts below ``zero_below_sd`` noise sd are set to 0, the rest
clipped at 0 and normalised per column (a column left with nothing becomes uniform over its
values). Sampling: every column independently from its histogram (a bin's value uniform inside
it, like ``tokens_to_table``), every code independently Bernoulli(p_j). Non-private: the exact
histograms and prevalences.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.data.record_tokens import TokenLayout, records_to_tokens, tokens_to_table
from fedsynth.common.data.schema import Schema
from fedsynth.privacy import secure_random
from fedsynth.privacy.accountant import Mechanism
from fedsynth.simulations.baselines.dp_marginals import (
    MarginalsConfig,
    MarginalsSampler,
    l2_sensitivity,
    private_prevalence,
)
from fedsynth.simulations.baselines.dp_sgd import plan_privacy


@dataclass
class RecordMarginalsConfig:
    codes: MarginalsConfig = field(default_factory=MarginalsConfig)  # k, threshold, accountant
    zero_below_sd: float = 2.0  # histogram cells below this many noise sd are set to 0


def histogram_sensitivity(n_columns: int) -> float:
    """Delta_2 of the C column histograms (one cell per column per patient): sqrt(C)."""
    return math.sqrt(n_columns)


def column_histograms(table: pd.DataFrame, layout: TokenLayout) -> list[np.ndarray]:
    """Per column of ``layout``: counts over its tokens, then the missing values' count."""
    tokens = records_to_tokens(table, layout)
    out = []
    for g in layout.groups:
        block = tokens[:, g.start:g.stop]
        out.append(np.r_[block.sum(0, dtype=np.float64), len(table) - block.sum()])
    return out


def normalised(counts: np.ndarray, floor: float) -> np.ndarray:
    """Post-processing of one noisy histogram: below ``floor`` -> 0, then a distribution
    (uniform over the non-missing cells when nothing is left)."""
    c = np.where(counts < floor, 0.0, np.clip(counts, 0.0, None))
    if c.sum() <= 0:
        c = np.r_[np.ones(len(counts) - 1), 0.0]
    return c / c.sum()


def decode_columns(values: list[np.ndarray], layout: TokenLayout, schema: Schema,
                   seed: int = 0) -> pd.DataFrame:
    """The table of per-column cell indices (``values[i]`` over group i's tokens, its last
    index = missing), typed like ``load_records``' table (a bin's value uniform inside it,
    ``tokens_to_table``)."""
    n = len(values[0]) if values else 0
    scores = np.zeros((n, layout.n_tokens), dtype=np.float32)
    rows = np.arange(n)
    for g, idx in zip(layout.groups, values, strict=True):
        ok = idx < len(g.labels)
        scores[rows[ok], g.start + idx[ok]] = 1.0
    table = tokens_to_table(scores, layout, schema, seed=seed)
    for g, idx in zip(layout.groups, values, strict=True):
        miss = idx >= len(g.labels)
        if miss.any():
            table[g.name] = table[g.name].mask(miss)
    return table


class RecordMarginalsSampler:
    """Samples every column (``probs[i]``: over group i's tokens, then missing) and every code
    independently."""

    def __init__(self, layout: TokenLayout, schema: Schema, probs: list[np.ndarray],
                 codes: MarginalsSampler) -> None:
        self.layout, self.schema, self.probs, self.codes = layout, schema, probs, codes

    def sample_records(self, n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
        """(table typed like ``load_records``' table, (n, V) 0/1 codes)."""
        rng = np.random.default_rng([int(seed) % 2**63, 0x4D41])
        values = [rng.choice(len(p), size=n, p=p) for p in self.probs]
        return (decode_columns(values, self.layout, self.schema, seed),
                self.codes.sample(n, seed=seed))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """The codes only (the codes benchmark's ``Sampler``)."""
        return self.codes.sample(n, seed=seed)


@dataclass
class RecordMarginalsResult:
    sampler: RecordMarginalsSampler
    privacy: dict[str, Any] | None
    train_seconds: float
    histogram_sd: float  # noise sd on each histogram cell (0: non-private)
    codes_sd: float  # noise sd on each code count (0: non-private)


def fit_record_marginals(
    table: pd.DataFrame,
    codes: np.ndarray,
    layout: TokenLayout,
    schema: Schema,
    epsilon: float | None = None,
    delta: float | None = None,
    cfg: RecordMarginalsConfig | None = None,
    noise_multiplier: float | None = None,
    prior_history: tuple[Mechanism, ...] = (),
) -> RecordMarginalsResult:
    """Exact marginals, or the release of the module docstring at (epsilon, delta)
    (``BudgetExceeded`` when a given ``noise_multiplier`` or the prior spend cannot meet it)."""
    cfg = cfg or RecordMarginalsConfig()
    X = np.asarray(codes, dtype=np.uint8)
    n, C = len(table), len(layout.groups)
    start = time.perf_counter()
    hists = column_histograms(table, layout)
    if epsilon is None:
        probs = [normalised(h, 0.0) for h in hists]
        prev = X.mean(0) if n else np.zeros(X.shape[1])
        sampler = RecordMarginalsSampler(layout, schema, probs, MarginalsSampler(prev))
        return RecordMarginalsResult(sampler, None, time.perf_counter() - start, 0.0, 0.0)
    if delta is None:
        raise ValueError("a private release needs delta")
    phases = {"histograms": 1, "codes": 1} if X.shape[1] else {"histograms": 1}
    plan = plan_privacy(epsilon, delta, max(n, 1), max(n, 1), phases, noise_multiplier,
                        cfg.codes.accountant, prior_history)
    sigma = plan.noise_multiplier
    sd_h = sigma * histogram_sensitivity(C)
    probs = [normalised(h + secure_random.gaussian(len(h), sd_h), cfg.zero_below_sd * sd_h)
             for h in hists]
    sd_c = sigma * l2_sensitivity(cfg.codes.max_codes) if X.shape[1] else 0.0
    prev = private_prevalence(X, sd_c, cfg.codes) if X.shape[1] else np.zeros(0)
    report = plan.report()
    report["mechanism"] = (
        f"Gaussian, noise multiplier {sigma:.4g}: {C} column histograms (L2 sensitivity "
        f"sqrt({C}), noise sd {sd_h:.3f} per cell) and code counts (k={cfg.codes.max_codes} "
        f"codes per patient, L2 sensitivity sqrt(k+1), noise sd {sd_c:.3f} per count)")
    sampler = RecordMarginalsSampler(layout, schema, probs, MarginalsSampler(prev))
    return RecordMarginalsResult(sampler, report, time.perf_counter() - start, sd_h, sd_c)
