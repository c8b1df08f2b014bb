"""Accountant: epsilon against an independent computation, calibration, default delta."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp

from fedsynth.privacy.accountant import (
    Mechanism,
    calibrate_noise,
    default_delta,
    epsilon,
    epsilon_both,
)


def rdp_sampled_gaussian(q: float, sigma: float, alpha: int) -> float:
    """Independent: RDP of the Poisson-subsampled Gaussian at integer order alpha
    (Mironov, Talwar & Zhang 2019, Thm 11 / Sec. 3.3):
    RDP = 1/(alpha-1) log sum_k C(alpha,k) (1-q)^(alpha-k) q^k exp((k^2-k)/(2 sigma^2))."""
    k = np.arange(alpha + 1)
    log_binom = gammaln(alpha + 1) - gammaln(k + 1) - gammaln(alpha - k + 1)
    with np.errstate(divide="ignore"):
        log_terms = (log_binom + (alpha - k) * np.log1p(-q) if q < 1 else
                     np.where(k == alpha, 0.0, -np.inf))
    log_terms = log_terms + k * math.log(q) + (k * k - k) / (2 * sigma**2)
    return float(logsumexp(log_terms)) / (alpha - 1)


def rdp_by_integration(q: float, sigma: float, alpha: float) -> float:
    """Independent, any real order: RDP(alpha) = 1/(alpha-1) log E_{z~N(0,s^2)}
    [((1-q) + q exp((2z-1)/(2 s^2)))^alpha] (Mironov, Talwar & Zhang 2019, eq. for A_alpha),
    by the trapezoid rule in log space on a fine grid."""
    z = np.linspace(-40 * sigma, 40 * sigma + alpha, 60_001)
    log_ratio = np.logaddexp(math.log1p(-q) if q < 1 else -np.inf,
                             math.log(q) + (2 * z - 1) / (2 * sigma**2))
    log_f = -(z**2) / (2 * sigma**2) - math.log(sigma * math.sqrt(2 * math.pi)) + alpha * log_ratio
    log_int = logsumexp(log_f) + math.log(z[1] - z[0])
    return float(log_int) / (alpha - 1)


ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def independent_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Independent: RDP composition over steps, then Balle et al. 2020 Thm 21:
    eps = RDP(a) + ln((a-1)/a) - (ln delta + ln a)/(a-1), minimised over the orders a."""
    best = math.inf
    for a in ORDERS:
        rdp = sum(steps * rdp_by_integration(q, s, a) for s, q, steps in history)
        eps = rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize("alpha", [2, 5, 17])
def test_integration_matches_integer_order_formula(alpha: int) -> None:
    for q, sigma in [(0.0256, 1.0), (0.2, 2.0), (1.0, 3.0)]:
        exact = rdp_sampled_gaussian(q, sigma, alpha)
        assert rdp_by_integration(q, sigma, alpha) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize(
    "history",
    [
        [(1.0, 0.0256, 1950)],
        [(1.85, 1 / 28, 1120)],
        [(1.2, 0.01, 500), (0.9, 0.05, 300), (8.0, 1.0, 1)],
    ],
)
def test_rdp_matches_independent_computation(history: list[tuple[float, float, int]]) -> None:
    mech = [Mechanism(*h) for h in history]
    ours = epsilon(mech, 1e-5, "rdp")
    ref = independent_epsilon(history, 1e-5)
    assert ours == pytest.approx(ref, rel=0.01)


def test_prv_below_rdp_and_close() -> None:
    both = epsilon_both([Mechanism(1.0, 0.0256, 1950)], 1e-5)
    assert both["prv"] == pytest.approx(7.36, abs=0.02)  # measured value in the notes
    assert both["rdp"] == pytest.approx(8.02, abs=0.02)
    assert both["prv"] <= both["rdp"] <= both["prv"] * 1.15


def test_epsilon_composes_and_history_merges() -> None:
    one = epsilon([Mechanism(1.0, 0.02, 600)], 1e-5, "rdp")
    split = epsilon([Mechanism(1.0, 0.02, 200)] * 3, 1e-5, "rdp")
    assert split == pytest.approx(one, rel=1e-9)
    assert epsilon([Mechanism(1.0, 0.02, 1200)], 1e-5) > epsilon([Mechanism(1.0, 0.02, 600)], 1e-5)
    assert epsilon([], 1e-5) == 0.0


def test_calibration_hits_target_and_accounts_prior_spend() -> None:
    q, steps, delta = 1 / 28, 1120, 1e-5
    sigma = calibrate_noise(3.0, delta, q, steps)
    eps = epsilon([Mechanism(sigma, q, steps)], delta)
    assert 2.97 <= eps <= 3.0
    assert sigma == pytest.approx(1.85, abs=0.02)  # issue's measured lead
    prior = [Mechanism(1.5, q, 500)]
    sigma2 = calibrate_noise(3.0, delta, q, steps, prior_history=prior)
    assert sigma2 > sigma
    assert epsilon([*prior, Mechanism(sigma2, q, steps)], delta) <= 3.0
    with pytest.raises(ValueError):
        calibrate_noise(1.0, delta, q, steps, "rdp", prior_history=[Mechanism(0.8, q, 2000)])


def test_calibration_rdp() -> None:
    sigma = calibrate_noise(5.0, 1e-5, 0.05, 400, accountant="rdp")
    assert 4.95 <= epsilon([Mechanism(sigma, 0.05, 400)], 1e-5, "rdp") <= 5.0


def test_default_delta() -> None:
    assert default_delta(1000) == 1e-5
    assert default_delta(10_000) == 1e-5
    assert default_delta(10_001) == 1e-6  # 1/(10 n) just below 1e-5: the next decade down
    assert default_delta(200_000) == 1e-7  # 5e-7 rounded down: only the decade of n shows
    assert default_delta(1_000_000) == 1e-7
    assert default_delta(50) == 1e-5
    for n in (1, 7, 9_999, 12_345, 99_999, 100_000, 123_456_789):  # independent: floats
        d = default_delta(n)
        assert d <= min(1e-5, 1 / (10 * n)) < 10 * d
        assert math.log10(d) == round(math.log10(d))
    # two sites of different size in the same decade get the same delta
    assert default_delta(20_000) == default_delta(90_000)


def test_mechanism_validation() -> None:
    with pytest.raises(ValueError):
        Mechanism(0.0, 0.1, 10)
    with pytest.raises(ValueError):
        Mechanism(1.0, 1.5, 10)
    m = Mechanism(1.1, 0.2, 3)
    assert Mechanism.from_dict(m.to_dict()) == m


def test_calibration_below_the_rdp_conversion_floor() -> None:
    """A single full-data Gaussian (q=1, 1 step) at eps=0.1: RDP cannot certify it, PRV can."""
    sigma = calibrate_noise(0.1, 1e-5, 1.0, 1)
    assert 0.099 <= epsilon([Mechanism(sigma, 1.0, 1)], 1e-5) <= 0.1


def test_memoised_epsilon_equals_a_fresh_computation() -> None:
    """The cache (issue 18) returns exactly what Opacus computes afresh, per history, delta and
    accountant; a repeated composition is served from it."""
    from opacus.accountants import PRVAccountant

    from fedsynth.privacy import accountant as acc_mod

    history = [Mechanism(1.3, 0.01, 300), Mechanism(2.0, 1.0, 1)]
    acc_mod._composed.cache_clear()
    first = epsilon(history, 1e-5)
    hits = acc_mod._composed.cache_info().hits
    assert epsilon(history, 1e-5) == first
    assert acc_mod._composed.cache_info().hits == hits + 1
    fresh = PRVAccountant()
    fresh.history = [(1.3, 0.01, 300), (2.0, 1.0, 1)]
    assert first == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-12)
    assert epsilon(history, 1e-6) > first  # delta is part of the key
    assert epsilon(history, 1e-5, "rdp") > first  # and the accountant
    assert epsilon([*history, Mechanism(2.0, 1.0, 1)], 1e-5) > first  # and the history
