"""Independent per-code marginals, exact or with the Gaussian mechanism: the honest floor.

Private release (Dwork & Roth 2014, Thm A.1 / the Gaussian mechanism; accounted like every
other mechanism in this project by ``privacy.accountant`` as ``Mechanism(sigma, 1.0, 1)``):
1. clip each patient to at most k codes (a uniformly random k of them, drawn from the OS's
   CSPRNG, k fixed in advance: ``privacy.marginals.clip_codes_secure``);
2. the released vector is (c_1, ..., c_V, n): per-code counts and the patient count. Adding or
   removing one patient changes it by (x_1, ..., x_V, 1) with at most k + 1 ones, so its L2
   sensitivity is Delta_2 = sqrt(k + 1) (add/remove adjacency, the patient as the unit);
3. add N(0, (sigma * Delta_2)^2) to every entry, sigma the noise multiplier calibrated for the
   target (epsilon, delta).
Post-processing (free): counts below ``zero_below_sd`` noise standard deviations are set to 0
(most of the 2,090 public codes never occur; without this each would get a spurious rate), and
p_j = clip(c~_j, 0, n~) / n~. Sampling: every code independently Bernoulli(p_j).
Non-private: exact prevalences (no clipping).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.marginals import clip_codes_secure, noisy_counts, one_way_sensitivity
from fedsynth.simulations.baselines.dp_sgd import plan_privacy


@dataclass
class MarginalsConfig:
    max_codes: int = 8  # k: codes kept per patient before counting (fixed in advance, public)
    zero_below_sd: float = 2.0  # post-processing threshold, in noise standard deviations
    accountant: str = "prv"


def l2_sensitivity(max_codes: int) -> float:
    """Delta_2 of (counts, n) under add/remove of one patient with <= k codes: sqrt(k + 1)."""
    return one_way_sensitivity(max_codes)


class MarginalsSampler:
    """Samples every code independently with probability ``prevalence[j]``."""

    def __init__(self, prevalence: np.ndarray) -> None:
        self.prevalence = np.clip(np.asarray(prevalence, dtype=np.float64), 0.0, 1.0)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.prevalence.size), dtype=np.uint8)
        for start in range(0, n, 8192):
            m = min(8192, n - start)
            out[start:start + m] = rng.random((m, self.prevalence.size)) < self.prevalence
        return out


def private_prevalence(X: np.ndarray, sd: float, cfg: MarginalsConfig) -> np.ndarray:
    """Steps 1-3 and the post-processing of the module docstring for a given noise sd
    (``sd`` = sigma * sqrt(k + 1); the caller accounts for sigma): per-code rates."""
    clipped = clip_codes_secure(X, cfg.max_codes)  # which codes a row keeps: OS randomness
    counts, n_noisy = noisy_counts(clipped, sd)
    counts[counts < cfg.zero_below_sd * sd] = 0.0
    return np.clip(counts, 0.0, None) / max(n_noisy, 1.0)


@dataclass
class MarginalsResult:
    sampler: MarginalsSampler
    privacy: dict[str, object] | None
    train_seconds: float
    noise_sd: float  # standard deviation of the noise on each count (0 when non-private)


def fit_marginals(
    X: np.ndarray,
    epsilon: float | None = None,
    delta: float | None = None,
    cfg: MarginalsConfig | None = None,
    noise_multiplier: float | None = None,
    prior_history: tuple[Mechanism, ...] = (),
    seed: int = 0,
) -> MarginalsResult:
    """Exact prevalences, or the Gaussian-mechanism release above when ``epsilon`` is given
    (``BudgetExceeded`` if a given ``noise_multiplier`` or the prior spend cannot meet it)."""
    cfg = cfg or MarginalsConfig()
    X = np.asarray(X, dtype=np.uint8)
    n = X.shape[0]
    start = time.perf_counter()
    if epsilon is None:
        prev = X.mean(0) if n else np.zeros(X.shape[1])
        return MarginalsResult(MarginalsSampler(prev), None, time.perf_counter() - start, 0.0)
    if delta is None:
        raise ValueError("a private release needs delta")
    plan = plan_privacy(epsilon, delta, max(n, 1), max(n, 1), {"counts": 1}, noise_multiplier,
                        cfg.accountant, prior_history)
    sd = plan.noise_multiplier * l2_sensitivity(cfg.max_codes)
    prev = private_prevalence(X, sd, cfg)
    report = plan.report()
    report["mechanism"] = (f"Gaussian, L2 sensitivity sqrt(k+1) with k={cfg.max_codes} codes per "
                           f"patient, noise sd {sd:.3f} per count")
    return MarginalsResult(MarginalsSampler(prev), report, time.perf_counter() - start, sd)
