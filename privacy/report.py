"""Privacy-report dicts: the same shape for every site and every command.

Every site report has ``epsilon``, ``delta``, ``accountant`` (``prv`` | ``rdp``) and ``history``
(the list of ``{"noise_multiplier", "sample_rate", "steps"}`` the site ran), so that anyone can
recompute epsilon from the report with a standard accountant. The release report of a federation
is (max_k eps_k, max_k delta_k): FedAvg, the server and the sampler are post-processing of DP
updates from sites holding disjoint patients (parallel composition), never a sum or a mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from privacy.accountant import Mechanism, epsilon

RELEASE_ASSUMPTION = (
    "each patient's records are at one site only (sites hold disjoint patients); a patient "
    "present at several sites composes over those sites' epsilons"
)
GUARANTEE = "record-level (patient) DP-SGD with Poisson sampling at each site"


def site_report(
    site: str | None,
    history: Sequence[Mechanism],
    delta: float,
    budget: float | None = None,
    accountant: str = "prv",
    cross_check: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The privacy report of one site: epsilon recomputed from its whole history."""
    eps = epsilon(history, delta, accountant)
    report: dict[str, Any] = {
        "epsilon": eps,
        "delta": float(delta),
        "accountant": accountant,
        "history": [m.to_dict() for m in history],
        "site": site,
        "guarantee": GUARANTEE,
        "budget": budget,
        "epsilon_left": None if budget is None else max(0.0, budget - eps),
    }
    if cross_check:
        other = "rdp" if accountant == "prv" else "prv"
        report[f"epsilon_{other}"] = epsilon(history, delta, other)
    if extra:
        report.update(extra)
    return report


def release_report(site_reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Guarantee of the released (aggregated) model: the maximum over sites, per patient."""
    if not site_reports:
        raise ValueError("no site reports")
    accountants = {r["accountant"] for r in site_reports}
    return {
        "epsilon": max(float(r["epsilon"]) for r in site_reports),
        "delta": max(float(r["delta"]) for r in site_reports),
        "accountant": accountants.pop() if len(accountants) == 1 else "mixed",
        "composition": "max over sites (parallel composition over disjoint patients)",
        "assumption": RELEASE_ASSUMPTION,
        "sites": [dict(r) for r in site_reports],
    }
