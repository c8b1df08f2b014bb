"""Privacy accounting for Poisson-subsampled Gaussian mechanisms (DP-SGD at one site).

The state is plain data: the list of ``Mechanism(noise_multiplier, sample_rate, steps)`` a site
has ever run (what Opacus keeps in ``accountant.history``). Epsilon is always recomputed from the
whole history, never carried as a running number.

- ``prv``: Opacus' PRV accountant, numerical composition of privacy loss random variables
  (Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy"); the reported
  figure is its upper bound.
- ``rdp``: Opacus' RDP accountant: Renyi DP of the sampled Gaussian (Mironov 2017; Mironov,
  Talwar & Zhang 2019), summed over steps, converted to (eps, delta) with Balle et al. 2020,
  Thm 21. Looser; used as a cross-check.
GDP (central-limit approximation) underestimates and is never used.

A Gaussian mechanism on the full data (e.g. privately estimated code counts) is the special
case ``Mechanism(sigma, sample_rate=1.0, steps=1)`` and composes with the rest of the history.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant

log = logging.getLogger(__name__)

ACCOUNTANTS = ("prv", "rdp")
_SIGMA_MAX = 1e4


@dataclass(frozen=True)
class Mechanism:
    """``steps`` compositions of the Poisson-subsampled Gaussian with std ``noise_multiplier``
    times the sensitivity and sampling probability ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps}")

    def to_dict(self) -> dict[str, float | int]:
        return {
            "noise_multiplier": float(self.noise_multiplier),
            "sample_rate": float(self.sample_rate),
            "steps": int(self.steps),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Mechanism:
        return cls(
            float(data["noise_multiplier"]),  # type: ignore[arg-type]
            float(data["sample_rate"]),  # type: ignore[arg-type]
            int(data["steps"]),  # type: ignore[call-overload]
        )


def default_delta(n_site: int) -> float:
    """delta = 10^-k, the largest power of ten <= min(1e-5, 1/(10 n)): well below 1/n, the level
    at which one record can leak. Rounded down to a decade because a site's delta travels in
    its privacy reports: it then reveals at most the decade of the site's size (k is the
    smallest integer >= 5 with 10^k >= 10 n, computed in integers, so exact)."""
    if int(n_site) != n_site or n_site <= 0:
        raise ValueError(f"n_site must be a positive integer, got {n_site}")
    k = 5
    while 10**k < 10 * int(n_site):
        k += 1
    return float(f"1e-{k}")


def as_mechanism(item: Mechanism | dict | Sequence[float]) -> Mechanism:
    """A Mechanism from itself, a report dict or a (noise_multiplier, sample_rate, steps) tuple."""
    if isinstance(item, Mechanism):
        return item
    if isinstance(item, dict):
        return Mechanism.from_dict(item)
    sigma, q, steps = item
    return Mechanism(float(sigma), float(q), int(steps))


def _merged(history: Iterable[Mechanism]) -> list[tuple[float, float, int]]:
    """History as Opacus tuples, zero-step entries dropped and equal neighbours merged."""
    out: list[tuple[float, float, int]] = []
    for m in map(as_mechanism, history):
        if m.steps == 0:
            continue
        if out and out[-1][0] == m.noise_multiplier and out[-1][1] == m.sample_rate:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(m.steps))
        else:
            out.append((float(m.noise_multiplier), float(m.sample_rate), int(m.steps)))
    return out


def epsilon(history: Sequence[Mechanism], delta: float, accountant: str = "prv") -> float:
    """(eps, delta) of the composition of every mechanism in ``history``.

    ``prv``: Gopi et al. 2021 (upper bound of the FFT composition, eps error 0.01);
    ``rdp``: Mironov 2017 RDP composition + Balle et al. 2020 Thm 21 conversion.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    merged = _merged(history)
    if not merged:
        return 0.0
    return _composed(tuple(merged), float(delta), accountant)


@functools.lru_cache(maxsize=512)
def _composed(merged: tuple[tuple[float, float, int], ...], delta: float,
              accountant: str) -> float:
    """``epsilon``'s computation, memoised: a pure function of the exact merged history, delta
    and accountant (floats compared exactly). A site asks for the same composition several
    times a round (the plan, the budget check, the report, the console) and the next round's
    plan repeats this round's; each PRV call costs about 0.5 s on this project's 2-core
    machine (issue 18)."""
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = list(merged)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # q=1 log(0) in PRV; "optimal order at the edge" in RDP
        eps = float(acc.get_epsilon(delta=delta))
    if not math.isfinite(eps) or eps < 0:
        raise ArithmeticError(f"{accountant} accountant returned eps={eps} for {merged}")
    return eps


def epsilon_both(history: Sequence[Mechanism], delta: float) -> dict[str, float]:
    """PRV (the figure) and RDP (the cross-check), logged side by side."""
    eps_prv = epsilon(history, delta, "prv")
    eps_rdp = epsilon(history, delta, "rdp")
    log.info("epsilon at delta=%.3g: PRV %.4f (reported), RDP %.4f (cross-check)",
             delta, eps_prv, eps_rdp)
    if eps_prv > eps_rdp * 1.02:
        log.warning("PRV epsilon %.4f exceeds RDP %.4f: check the accountants", eps_prv, eps_rdp)
    return {"prv": eps_prv, "rdp": eps_rdp}


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    prior_history: Sequence[Mechanism] = (),
    rel_tol: float = 1e-3,
) -> float:
    """Smallest noise multiplier (within ``rel_tol``) such that the site's whole history, the
    prior spend plus ``steps`` more steps at ``sample_rate``, stays at or below
    ``target_epsilon``. Binary search on the monotone map sigma -> epsilon.

    Raises ``ValueError`` when the prior history alone already reaches the target.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target epsilon must be positive, got {target_epsilon}")
    prior = [as_mechanism(m) for m in prior_history]
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if prior and epsilon(prior, delta, accountant) >= target_epsilon:
        raise ValueError(
            f"the site has already spent epsilon >= {target_epsilon} at delta={delta}"
        )

    def eps_at(sigma: float, acc: str) -> float:
        return epsilon([*prior, Mechanism(sigma, sample_rate, steps)], delta, acc)

    if accountant == "rdp":
        return _search(lambda s: eps_at(s, "rdp"), target_epsilon, 0.1, 1.0, rel_tol)
    # RDP is the faster accountant and (essentially) never below PRV: bracket with it first.
    # Its conversion has a floor (about ln(1/delta)/(max order - 1)): below it, bracket with PRV.
    try:
        hi = _search(lambda s: eps_at(s, "rdp"), target_epsilon, 0.1, 1.0, rel_tol=0.02)
    except ValueError:
        hi = _search(lambda s: eps_at(s, "prv"), target_epsilon, 0.1, 1.0, rel_tol=0.1)
    return _search(lambda s: eps_at(s, "prv"), target_epsilon, hi * 0.7, hi * 1.05, rel_tol)


def _search(
    eps_fn: Callable[[float], float], target: float, lo: float, hi: float, rel_tol: float
) -> float:
    """Binary search for the smallest sigma in a bracket with eps_fn(sigma) <= target."""
    while eps_fn(hi) > target:
        lo, hi = hi, hi * 2
        if hi > _SIGMA_MAX:
            raise ValueError(f"no noise multiplier below {_SIGMA_MAX} reaches eps={target}")
    while lo > 1e-3 and eps_fn(lo) <= target:
        hi, lo = lo, lo / 2
    while (hi - lo) / hi > rel_tol:
        mid = 0.5 * (lo + hi)
        if eps_fn(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
