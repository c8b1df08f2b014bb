"""Empirical epsilon bounds: known values, an independent computation, validity by simulation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from fedsynth.privacy.bounds import (
    clopper_pearson_epsilon,
    gdp_epsilon_estimate,
    one_run_epsilon,
    one_run_p_value,
)


def test_clopper_pearson_check_value() -> None:
    # 1000 in / 1000 out canaries, TPR 0.30 at FPR 0.01, alpha 0.05 -> about 2.70
    assert clopper_pearson_epsilon(300, 700, 10, 990, alpha=0.05) == pytest.approx(2.70, abs=0.01)


def _cp_independent(tp: int, fn: int, fp: int, tn: int, alpha: float, delta: float) -> float:
    """Same bound through scipy's exact two-sided binomial interval (upper end = one-sided a/2)."""
    fpr_ub = stats.binomtest(fp, fp + tn).proportion_ci(1 - alpha, method="exact").high
    fnr_ub = stats.binomtest(fn, tp + fn).proportion_ci(1 - alpha, method="exact").high
    out = [0.0]
    if 1 - fnr_ub - delta > 0:
        out.append(math.log((1 - fnr_ub - delta) / fpr_ub))
    if 1 - fpr_ub - delta > 0:
        out.append(math.log((1 - fpr_ub - delta) / fnr_ub))
    return max(out)


@pytest.mark.parametrize(
    ("tp", "fn", "fp", "tn", "delta"),
    [(300, 700, 10, 990, 0.0), (50, 50, 3, 97, 1e-5), (10, 90, 10, 90, 0.0), (95, 5, 40, 60, 0.01)],
)
def test_clopper_pearson_matches_independent(tp: int, fn: int, fp: int, tn: int, delta: float):
    got = clopper_pearson_epsilon(tp, fn, fp, tn, alpha=0.05, delta=delta)
    assert got == pytest.approx(_cp_independent(tp, fn, fp, tn, 0.05, delta), abs=1e-6)


def test_clopper_pearson_no_signal_is_zero() -> None:
    assert clopper_pearson_epsilon(50, 50, 50, 50) == 0.0


def test_one_run_check_value() -> None:
    # m = 1000, r = 100, v = 90, delta 0, alpha 0.05 -> about 1.63
    assert one_run_epsilon(1000, 100, 90, alpha=0.05, delta=0.0) == pytest.approx(1.63, abs=0.01)


def _tail_exact(r: int, v: int, eps: float) -> float:
    q = Fraction(math.exp(eps)).limit_denominator(10**12)
    q = q / (1 + q)
    return float(sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1)))


def test_one_run_matches_exact_binomial_sum() -> None:
    eps = one_run_epsilon(1000, 100, 90)
    # Independently: exact binomial tail with rational arithmetic just below / above the bound.
    assert _tail_exact(100, 90, eps - 0.005) < 0.05 < _tail_exact(100, 90, eps + 0.005)


def test_one_run_delta_term_only_loosens() -> None:
    base = one_run_epsilon(1000, 100, 90, delta=0.0)
    with_delta = one_run_epsilon(1000, 100, 90, delta=1e-5)
    assert with_delta < base
    assert one_run_p_value(base, 1000, 100, 90, 1e-5) > one_run_p_value(base, 1000, 100, 90, 0.0)


def test_one_run_chance_level_is_zero() -> None:
    assert one_run_epsilon(1000, 100, 50) == 0.0


def test_bounds_are_valid_for_randomized_response() -> None:
    """A mechanism that is exactly eps-DP (randomized response on membership) must give
    eps_lb <= eps in at least ~1 - alpha of runs (Monte Carlo check of validity)."""
    eps_true = 1.0
    q = math.exp(eps_true) / (1 + math.exp(eps_true))
    rng = np.random.default_rng(0)
    trials, exceed_one_run, exceed_cp = 200, 0, 0
    for _ in range(trials):
        v = int(rng.binomial(500, q))
        exceed_one_run += one_run_epsilon(500, 500, v) > eps_true
        tp = int(rng.binomial(500, q))
        fp = int(rng.binomial(500, 1 - q))
        exceed_cp += clopper_pearson_epsilon(tp, 500 - tp, fp, 500 - fp) > eps_true
    assert exceed_one_run <= 0.05 * trials + 5
    assert exceed_cp <= 0.05 * trials + 5


def test_gdp_estimate_inverts_the_gaussian_tradeoff() -> None:
    # For mu-GDP with mu = 1, FNR at FPR 0.05 is Phi(PhiInv(0.95) - 1); the estimate must match
    # the (eps, delta) curve of mu = 1 (Dong, Roth & Su 2019, Cor. 2.13).
    mu = 1.0
    fpr = 0.05
    fnr = float(stats.norm.cdf(stats.norm.ppf(1 - fpr) - mu))
    eps = gdp_epsilon_estimate(fpr, fnr, delta=1e-5)
    delta = stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
    assert delta == pytest.approx(1e-5, rel=1e-3)
    assert gdp_epsilon_estimate(0.5, 0.5) == 0.0
    assert gdp_epsilon_estimate(0.0, 0.0) == 50.0  # perfect separation: capped, no crash


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        one_run_epsilon(10, 20, 5)
    with pytest.raises(ValueError):
        clopper_pearson_epsilon(1, 1, 1, 1, alpha=0.0)
