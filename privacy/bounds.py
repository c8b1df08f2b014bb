"""Empirical lower bounds on epsilon from membership guesses (privacy auditing).

Each function is the formula of its paper, short enough to read against it:

- ``clopper_pearson_epsilon``: Jagielski, Ullman & Oprea 2020 (Auditing Differentially Private
  Machine Learning), with Clopper-Pearson intervals on the false positive / negative rates.
- ``one_run_epsilon``: Steinke, Nasr & Jagielski 2023 (Privacy Auditing with One (1) Training
  Run), Theorem 3 / Proposition 5 with the delta term.
- ``gdp_epsilon_estimate``: Nasr et al. 2023 (Tight Auditing of DP-SGD), an *estimate* via
  mu-Gaussian DP, not a bound.
"""

from __future__ import annotations

import math

from scipy import optimize, stats

_EPS_MAX = 50.0


def _rate_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound on a rate: BetaInv(1 - alpha; k + 1, n - k)."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - alpha, k + 1, n - k))


def clopper_pearson_epsilon(
    tp: int, fn: int, fp: int, tn: int, alpha: float = 0.05, delta: float = 0.0
) -> float:
    """Lower bound on epsilon, holding with confidence 1 - alpha (Jagielski et al. 2020).

    FPR_ub = ub(FP, N_out, alpha/2), FNR_ub = ub(FN, N_in, alpha/2), TPR_lb = 1 - FNR_ub;
    eps_lb = max(0, ln((TPR_lb - delta) / FPR_ub), ln((1 - FPR_ub - delta) / FNR_ub)).
    An (eps, delta)-DP mechanism satisfies TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta.
    """
    _check_alpha_delta(alpha, delta)
    counts = (tp, fn, fp, tn)
    if any(c < 0 for c in counts):
        raise ValueError(f"counts must be non-negative, got {counts}")
    fpr_ub = _rate_upper(fp, fp + tn, alpha / 2)
    fnr_ub = _rate_upper(fn, tp + fn, alpha / 2)
    tpr_lb = 1.0 - fnr_ub
    candidates = [0.0]
    if tpr_lb - delta > 0 and fpr_ub > 0:
        candidates.append(math.log((tpr_lb - delta) / fpr_ub))
    if 1.0 - fpr_ub - delta > 0 and fnr_ub > 0:
        candidates.append(math.log((1.0 - fpr_ub - delta) / fnr_ub))
    return max(candidates)


def one_run_p_value(eps: float, m: int, r: int, v: int, delta: float = 0.0) -> float:
    """Steinke et al. 2023: with q = e^eps / (1 + e^eps) and T(k) = P[Bin(r, q) >= k],
    p(eps) = T(v) + 2 m delta max_{i=1..v} (T(v - i) - T(v)) / i.
    Under (eps, delta)-DP, P[at least v of r guesses right] <= p(eps)."""
    q = 1.0 / (1.0 + math.exp(-eps))
    tail_v = float(stats.binom.sf(v - 1, r, q))  # P[Bin >= v]
    p = tail_v
    if delta > 0 and v > 0:
        best = max((float(stats.binom.sf(v - i - 1, r, q)) - tail_v) / i for i in range(1, v + 1))
        p += 2.0 * m * delta * best
    return min(p, 1.0)


def one_run_epsilon(m: int, r: int, v: int, alpha: float = 0.05, delta: float = 0.0) -> float:
    """Largest eps rejected at level alpha from one run: sup{eps : p(eps) < alpha} (Steinke, Nasr &
    Jagielski 2023). m canaries each included with probability 1/2, r guesses, v of them right."""
    _check_alpha_delta(alpha, delta)
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got m={m}, r={r}, v={v}")
    if r == 0 or one_run_p_value(0.0, m, r, v, delta) >= alpha:
        return 0.0
    if one_run_p_value(_EPS_MAX, m, r, v, delta) < alpha:
        return _EPS_MAX
    # p(eps) increases with eps: bisect for the boundary.
    lo, hi = 0.0, _EPS_MAX
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if one_run_p_value(mid, m, r, v, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def gdp_epsilon_estimate(fpr: float, fnr: float, delta: float = 1e-5) -> float:
    """Estimate (not a bound) via Gaussian DP (Nasr et al. 2023):
    mu = PhiInv(1 - FPR) - PhiInv(FNR);
    solve delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) for eps.
    """
    fpr = min(max(fpr, 1e-12), 1 - 1e-12)
    fnr = min(max(fnr, 1e-12), 1 - 1e-12)
    mu = float(stats.norm.ppf(1 - fpr) - stats.norm.ppf(fnr))
    if mu <= 0:
        return 0.0

    def gap(eps: float) -> float:
        return (
            stats.norm.cdf(-eps / mu + mu / 2)
            - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2)
            - delta
        )

    if gap(0.0) <= 0:
        return 0.0
    if gap(_EPS_MAX) > 0:  # (near-)perfect separation: beyond the range we report
        return _EPS_MAX
    hi = 1.0
    while gap(hi) > 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, min(hi, _EPS_MAX)))


def _check_alpha_delta(alpha: float, delta: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
