"""Privacy-report dicts: the same shape for every site and every command.

Every site report has ``epsilon``, ``delta``, ``accountant`` (``prv`` | ``rdp``) and ``history``
(the list of ``{"noise_multiplier", "sample_rate", "steps"}`` the site ran), so that anyone can
recompute epsilon from the report with a standard accountant. A report built from a ledger
(``Ledger.report``) labels every history entry for a privacy officer: ``mechanism`` (which one:
"code counts and site size", "DP-SGD round 3", ...), ``round``, ``max_grad_norm`` (the clipping
norm, or the count's sensitivity) and, in reports that stay at the site, ``expected_batch`` (the
true q x n); it names the ``ledger_head`` hash, the ``software`` version and when it was
``created`` (ISO 8601, UTC). The release report of a federation
is (max_k eps_k, max_k delta_k): FedAvg, the server and the sampler are post-processing of DP
updates from sites holding disjoint patients (parallel composition), never a sum or a mean.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from fedsynth.privacy.accountant import Mechanism, epsilon

RELEASE_ASSUMPTION = (
    "each patient's records are at one site only (sites hold disjoint patients): the released "
    "model is (max_k eps_k, max_k delta_k)-DP per patient by parallel composition; a patient "
    "present at several sites composes over those sites"
)
RELEASE_COMPOSITION = ("max over sites (parallel composition over disjoint patients; never the "
                       "sum or the mean)")
RELEASE_UNIT = "patient (one row of the patient x code matrix)"
POST_PROCESSING = "FedAvg, the server, EMA and the sampler only see DP updates"
GUARANTEE = ("record-level (patient) DP at each site: every mechanism of its history (DP-SGD "
             "with Poisson sampling, Gaussian count and marginal releases) composed by the "
             "accountant")


def site_report(
    site: str | None,
    history: Sequence[Mechanism],
    delta: float,
    budget: float | None = None,
    accountant: str = "prv",
    cross_check: bool = True,
    extra: Mapping[str, Any] | None = None,
    entries: Sequence[Mapping[str, Any]] | None = None,
    head_hash: str | None = None,
) -> dict[str, Any]:
    """The privacy report of one site: epsilon recomputed from its whole history.

    ``entries``: one label dict per history item (``Entry.label``), merged into ``history``."""
    eps = epsilon(history, delta, accountant)
    if entries is not None and len(entries) != len(history):
        raise ValueError(f"{len(entries)} entry labels for {len(history)} mechanisms")
    rows = [m.to_dict() for m in history]
    if entries is not None:
        rows = [{**dict(label), **row} for row, label in zip(rows, entries, strict=True)]
    report: dict[str, Any] = {
        "epsilon": eps,
        "delta": float(delta),
        "accountant": accountant,
        "history": rows,
        "site": site,
        "guarantee": GUARANTEE,
        "budget": budget,
        "epsilon_left": None if budget is None else max(0.0, budget - eps),
        "software": software_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if head_hash is not None:
        report["ledger_head"] = head_hash
    if cross_check:
        other = "rdp" if accountant == "prv" else "prv"
        report[f"epsilon_{other}"] = epsilon(history, delta, other)
    if extra:
        report.update(extra)
    return report


def software_version() -> str:
    """``fedsynth <version>`` of the installed package (``unknown`` when run from a bare tree)."""
    try:
        return f"fedsynth {metadata.version('fedsynth')}"
    except metadata.PackageNotFoundError:
        return "fedsynth unknown"


def release_report(site_reports: Mapping[str, Mapping[str, Any]],
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The federation's release report (``OUT/privacy.json``): every site's report by name and
    the guarantee of the released model, per patient,

        (eps, delta) = (max_k eps_k, max_k delta_k)

    by parallel composition over sites holding disjoint patients (``RELEASE_ASSUMPTION``); the
    aggregation, the server optimizer, the EMA and the sampler are post-processing of the
    sites' DP releases, so they add nothing. Never the sum or the mean over sites. With no site
    report, epsilon and delta are None. ``extra``: the run's own fields (run id, rounds, ...),
    added after the guarantee."""
    sites = {str(site): dict(r) for site, r in sorted(site_reports.items())}
    accountants = sorted({str(r.get("accountant")) for r in sites.values()})
    return {
        "epsilon": max(float(r["epsilon"]) for r in sites.values()) if sites else None,
        "delta": max(float(r["delta"]) for r in sites.values()) if sites else None,
        "accountant": accountants[0] if len(accountants) == 1 else accountants,
        "composition": RELEASE_COMPOSITION,
        "assumption": RELEASE_ASSUMPTION,
        "unit": RELEASE_UNIT,
        "post_processing": POST_PROCESSING,
        "sites": sites,
        **dict(extra or {}),
        "software": software_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
