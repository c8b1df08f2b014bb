"""Audit orchestration: one site's audit (aggregate figures only), the merge, the verdict, files.

- ``audit_site(generator, members, non_members, ...)``: runs at a site, against its own members
  and held-out patients; returns a dict of aggregate figures (no rows, no identifiers).
- ``merge_site_audits({site: audit}, privacy, round_log)``: the coordinator's side-by-side view.
- ``run_audit(...)`` / ``write_audit(out_dir, audit)``: audit.json + audit.html, atomically.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.privacy.audit.attribute import attribute_disclosure
from fedsynth.privacy.audit.canaries import canary_audit, loss_attack, score_canaries, torch_module
from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.identity import audit_identity, find_run_id
from fedsynth.privacy.audit.membership import membership_attacks
from fedsynth.privacy.audit.records import RecordsAudit, attribute_records_audit

log = logging.getLogger(__name__)

ATTACKS = ("dcr_hamming", "dcr_jaccard", "domias")
THREAT_MODEL = (
    "Black-box attacks: the attacker sees only synthetic records drawn from the released "
    "generator, plus real records of the patients under attack (members: patients a site trained "
    "on; non-members: held-out patients of the same site) and, for the density-ratio and "
    "attribute baselines, other real patients of the same population. White-box audit: the "
    "auditor holds the model weights and canary patients that were each added to a site's "
    "training data with probability 1/2 (or, for a model trained elsewhere, real members vs "
    "held-out patients); it scores them by the model's denoising loss. The empirical epsilon is a "
    "lower bound holding with the stated confidence; the accountant's epsilon is an upper bound "
    "proved for the code as written. A lower bound above the upper bound refutes the claim."
)


def audit_site(
    generator: Any,
    members: np.ndarray,
    non_members: np.ndarray,
    cfg: AuditConfig | None = None,
    synth: np.ndarray | None = None,
    canaries: np.ndarray | None = None,
    included: np.ndarray | None = None,
    privacy: Mapping[str, Any] | None = None,
    site: str | None = None,
    white_box: bool = True,
    records: RecordsAudit | None = None,
) -> dict[str, Any]:
    """Every attack for one site; returns aggregate figures only (safe to send to the server).

    generator: has ``.sample(n, seed)`` and holds the torch module (white-box parts);
    canaries/included: from ``insert_canaries`` when the site trained with canaries;
    privacy: the site's privacy report (epsilon, delta, ...) or None for a non-private model;
    records: a whole-records model's tables and synthetic records (``privacy.audit.records``;
    ``synth`` then holds the same records as the model's vectors, tokens then codes): the
    code-level attribute attack runs on the codes, the attribute attack on the records on the
    schema's columns."""
    cfg = cfg or AuditConfig()
    members = np.asarray(members, dtype=np.uint8)
    non_members = np.asarray(non_members, dtype=np.uint8)
    if synth is None:
        synth = np.asarray(generator.sample(cfg.n_synth, seed=cfg.seed), dtype=np.uint8)
    eps = None if not privacy or privacy.get("epsilon") is None else float(privacy["epsilon"])
    delta = float(privacy.get("delta") or 0.0) if privacy else 0.0
    t = records.n_tokens if records is not None else 0  # code-level attack: the codes only
    out: dict[str, Any] = {
        "site": site,
        "n_members": int(len(members)),
        "n_non_members": int(len(non_members)),
        "n_synth": int(len(synth)),
        "epsilon": eps,
        "delta": delta,
        "membership": membership_attacks(synth, members, non_members, cfg=cfg),
        "attribute": attribute_disclosure(synth[:, t:], members[:, t:], non_members[:, t:],
                                          cfg),
        "prevalence": {  # per-code shares; member codes seen < min_cell times are suppressed
            "members": _suppressed_prevalence(members, cfg.min_cell),
            "synthetic": _rounded(synth.mean(axis=0)),
            "min_cell": cfg.min_cell,
        },
    }
    if records is not None:
        out["attribute_records"] = attribute_records_audit(records, cfg)
    if canaries is not None and included is not None:
        scores = score_canaries(generator, canaries, cfg.canary_sigmas, cfg.canary_draws, cfg.seed)
        out["white_box"] = canary_audit(scores, included, eps, delta, cfg)
    if white_box and _has_module(generator):
        # the loss attack on real patients: the bound when there are no canaries, else a
        # membership figure (the canary bound stays the primary eps_lb)
        res = loss_attack(generator, members, non_members, eps, delta, cfg)
        out["loss_attack" if "white_box" in out else "white_box"] = res
    out["eps_lb"] = out["white_box"]["eps_lb"] if "white_box" in out else None
    out["passed"] = bool(out.get("white_box", {}).get("passed", True))
    return out


def _has_module(generator: Any) -> bool:
    try:
        torch_module(generator)
    except TypeError:
        return False
    return True


def _suppressed_prevalence(X: np.ndarray, min_cell: int) -> list[float]:
    """Code prevalence of real rows with small-cell suppression: a code held by fewer than
    ``min_cell`` patients is reported as 0, so the figure never singles out a rare patient."""
    counts = X.sum(axis=0)
    return _rounded(np.where(counts >= min_cell, counts, 0) / max(len(X), 1))


def _rounded(v: np.ndarray) -> list[float]:
    return np.round(np.asarray(v, dtype=np.float64), 5).tolist()


def site_reports(privacy: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Privacy reports per site from a site report, a release report ({"sites": [...]}) or a
    mapping site -> report."""
    if not privacy:
        return {}
    if isinstance(privacy.get("sites"), list):
        return {str(r.get("site") or i): dict(r) for i, r in enumerate(privacy["sites"])}
    if isinstance(privacy.get("sites"), Mapping):  # ehr-server's privacy.json
        return {str(k): dict(v) for k, v in privacy["sites"].items() if isinstance(v, Mapping)}
    if "epsilon" in privacy:
        return {str(privacy.get("site") or "all"): dict(privacy)}
    return {str(k): dict(v) for k, v in privacy.items() if isinstance(v, Mapping)}


def epsilon_by_round(
    privacy: Mapping[str, Any] | None, round_log: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """Cumulative epsilon spent after each round, per site: from a round log when given (rows
    {round, site, epsilon}, or ehr-server's rounds.jsonl rows {round, epsilon_spent: {site: eps}}),
    else recomputed from each report's history. Round 0 is the code-count release when the
    history labels it (ledger entries carry ``round``; the counts are recorded at round 0 before
    any DP-SGD round): it is part of the spend, so the curve starts there, not at round 1."""
    out: dict[str, list[tuple[int, float]]] = {}
    reports = site_reports(privacy)
    if round_log:
        for row in round_log:
            spent = row.get("epsilon_spent")
            if isinstance(spent, Mapping):
                for site, eps in spent.items():
                    if eps is not None:
                        out.setdefault(str(site), []).append((int(row["round"]), float(eps)))
            elif row.get("epsilon") is not None:
                site = str(row.get("site", "all"))
                out.setdefault(site, []).append((int(row["round"]), float(row["epsilon"])))
        if out:
            for site, points in out.items():
                if all(r != 0 for r, _ in points) and site in reports:
                    zero = _count_release_epsilon(site, reports[site])
                    if zero is not None:
                        points.append((0, zero))
            return {k: sorted(v) for k, v in out.items()}
    for site, rep in reports.items():
        history = rep.get("history") or []
        groups = _round_groups(history)
        if not history or not rep.get("delta") or len(groups) > 200:
            continue
        mechs, delta, acc = _mechanisms(rep)
        try:
            out[site] = [(rnd, _prefix_epsilon(mechs[:end], delta, acc)) for rnd, end in groups]
        except (ValueError, ArithmeticError) as err:
            log.warning("cannot recompute epsilon per round for %s: %s", site, err)
    return out


def _mechanisms(rep: Mapping[str, Any]) -> tuple[list[Any], float, str]:
    from fedsynth.privacy.accountant import Mechanism

    mechs = [Mechanism.from_dict(h) for h in rep.get("history") or []]
    return mechs, float(rep["delta"]), str(rep.get("accountant", "prv"))


def _prefix_epsilon(mechs: Sequence[Any], delta: float, accountant: str) -> float:
    """The accountant's epsilon of a prefix of the history."""
    from fedsynth.privacy.accountant import epsilon as _epsilon

    return float(_epsilon(list(mechs), delta, accountant))


def _round_groups(history: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(round, end index) per round of a history: consecutive entries sharing a ``round`` label
    form one round. Unlabelled or out-of-order labels (several runs in one ledger): one point
    per entry, numbered from 1, as the history gives no round."""
    labels = [h.get("round") if isinstance(h, Mapping) else None for h in history]
    if not labels or not all(isinstance(r, int) and not isinstance(r, bool) for r in labels):
        return [(i + 1, i + 1) for i in range(len(history))]
    if any(b < a for a, b in zip(labels, labels[1:], strict=False)):
        return [(i + 1, i + 1) for i in range(len(history))]
    ends = [i + 1 for i in range(len(labels)) if i + 1 == len(labels) or labels[i + 1] != labels[i]]
    return [(int(labels[end - 1]), end) for end in ends]


def _count_release_epsilon(site: str, rep: Mapping[str, Any]) -> float | None:
    """Epsilon of the leading round-0 entries (the code-count release) of a report's history,
    or None when the history does not label one."""
    groups = _round_groups(rep.get("history") or [])
    if not groups or groups[0][0] != 0 or not rep.get("delta"):  # unlabelled rounds start at 1
        return None
    mechs, delta, acc = _mechanisms(rep)
    try:
        return _prefix_epsilon(mechs[: groups[0][1]], delta, acc)
    except (ValueError, ArithmeticError) as err:
        log.warning("cannot compute the count release's epsilon for %s: %s", site, err)
        return None


def epsilon_budgets(privacy: Mapping[str, Any] | None) -> dict[str, Any]:
    """The budgets the spend is held against: the run's target epsilon and each site's own
    budget (site reports' ``budget``), when recorded."""
    target = privacy.get("target_epsilon") if privacy else None
    sites = {site: float(r["budget"]) for site, r in site_reports(privacy).items()
             if isinstance(r.get("budget"), int | float) and not isinstance(r["budget"], bool)}
    return {"target": float(target) if isinstance(target, int | float) else None,
            "sites": sites}


def merge_site_audits(
    audits: Mapping[str, Mapping[str, Any]],
    privacy: Mapping[str, Any] | None = None,
    round_log: Sequence[Mapping[str, Any]] | None = None,
    cfg: AuditConfig | None = None,
    identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The server's report: every site side by side, the release epsilon, and the verdict.

    identity: what the audit is of (``identity.audit_identity``: run id, data and model
    digests), from whoever holds the files; the run id is otherwise looked up in ``privacy``
    and the round log, and the date and software version are always filled in here."""
    cfg = cfg or AuditConfig()
    sites = {str(k): dict(v) for k, v in audits.items()}
    reports = site_reports(privacy)
    release_eps = privacy.get("epsilon") if privacy else None
    release_delta = privacy.get("delta") if privacy else None
    if release_eps is None and reports:
        release_eps = max(float(r["epsilon"]) for r in reports.values())
        release_delta = max(float(r.get("delta") or 0.0) for r in reports.values())
    for name, audit in sites.items():
        if audit.get("epsilon") is None and name in reports:
            audit["epsilon"] = float(reports[name]["epsilon"])
    summary = _summary(sites, release_eps)
    return {
        "identity": _identity(identity, privacy, round_log),
        "threat_model": THREAT_MODEL,
        "config": {k: v for k, v in vars(cfg).items()},
        "epsilon": None if release_eps is None else float(release_eps),
        "delta": release_delta,
        "sites": sites,
        "epsilon_by_round": {k: [list(p) for p in v]
                             for k, v in epsilon_by_round(privacy, round_log).items()},
        "budgets": epsilon_budgets(privacy),
        "summary": summary,
        "verdict": verdict(summary),
    }


def _identity(
    given: Mapping[str, Any] | None,
    privacy: Mapping[str, Any] | None,
    round_log: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    out = audit_identity(find_run_id(privacy, None, round_log))
    out.update({k: v for k, v in (given or {}).items() if v not in (None, [], {})})
    return out


def _auroc_noise(n1: int, n2: int) -> float:
    """Standard error of AUROC under no signal (Mann-Whitney): sqrt((n1 + n2 + 1) / (12 n1 n2))."""
    return math.sqrt((n1 + n2 + 1) / (12.0 * max(n1, 1) * max(n2, 1)))


def _summary(sites: Mapping[str, Mapping[str, Any]], release_eps: float | None) -> dict[str, Any]:
    best_auroc, best_wb, signal, eps_lbs, failures = 0.5, None, False, [], []
    attr_signal: bool | None = None  # None: no attribute attack on records was run
    for name, audit in sites.items():
        if isinstance(audit.get("attribute_records"), Mapping):
            attr_signal = bool(attr_signal) or bool(audit["attribute_records"].get("signal"))
        for attack in ATTACKS:
            res = audit["membership"][attack]
            se = _auroc_noise(res["n_members"], res["n_non_members"])
            best_auroc = max(best_auroc, res["auroc"])
            signal |= res["auroc"] > 0.5 + max(0.02, 3 * se)
        for key in ("white_box", "loss_attack"):
            if audit.get(key, {}).get("kind") == "loss_attack":
                res = audit[key]["roc"]
                se = _auroc_noise(res["n_members"], res["n_non_members"])
                best_wb = max(best_wb or 0.0, res["auroc"])
                signal |= res["auroc"] > 0.5 + max(0.02, 3 * se)
        if audit.get("eps_lb") is not None:
            eps_lbs.append(float(audit["eps_lb"]))
            site_eps = audit["epsilon"] if audit.get("epsilon") is not None else release_eps
            if site_eps is not None and audit["eps_lb"] > float(site_eps):
                failures.append(name)
    return {
        "max_membership_auroc": best_auroc,
        "white_box_loss_auroc": best_wb,
        "membership_signal": bool(signal),
        "attribute_signal": attr_signal,
        "eps_lb": max(eps_lbs) if eps_lbs else None,
        "eps_accountant": release_eps,
        "failed_sites": failures,
        "passed": not failures,
    }


def verdict(summary: Mapping[str, Any]) -> dict[str, str]:
    """A status (fail | risk | pass), a headline and a plain-language sentence."""
    eps, lb = summary["eps_accountant"], summary["eps_lb"]
    auroc = max(summary["max_membership_auroc"], summary.get("white_box_loss_auroc") or 0.0)
    lb_txt = "not measured" if lb is None else f"{lb:.2f}"
    attr = (" The synthetic records also disclose columns of their training patients beyond "
            "what unseen patients show (attribute disclosure).") if summary.get(
        "attribute_signal") else ""
    if summary["failed_sites"]:
        return {"status": "fail", "headline": "AUDIT FAILED", "text": (
            f"The measured lower bound on epsilon ({lb_txt}) exceeds the "
            f"accountant's epsilon ({eps:.2f}) at site(s) {', '.join(summary['failed_sites'])}. "
            "The privacy claim is refuted: look for an accounting or implementation bug before "
            "releasing anything.")}
    if eps is None and (summary["membership_signal"] or summary.get("attribute_signal")
                        or (lb is not None and lb > 0)):
        leaks = ("leaks membership" if summary["membership_signal"] or (lb is not None and lb > 0)
                 else "shows no clear membership signal")
        return {"status": "risk", "headline": "HIGH RISK", "text": (
            f"This model has no differential-privacy guarantee and {leaks} "
            f"(best membership AUROC {auroc:.3f}, empirical epsilon lower bound {lb_txt})."
            f"{attr} Do not release it or its synthetic data as anonymous.")}
    if eps is None:
        return {"status": "risk", "headline": "NO DP GUARANTEE", "text": (
            f"No differential-privacy guarantee; the attacks found no clear membership signal "
            f"(best AUROC {auroc:.3f}, epsilon lower bound {lb_txt}). Absence of a detected "
            "attack is not a guarantee.")}
    note = (" The black-box attacks see some membership signal, which a DP model may show "
            "within its epsilon.") if summary["membership_signal"] else ""
    if attr:
        note += (" The synthetic records disclose some columns of their training patients "
                 "beyond unseen patients, which a DP model may also show within its epsilon.")
    return {"status": "pass", "headline": "PASS", "text": (
        f"The accountant's epsilon is {eps:.2f}; the audit's lower bound ({lb_txt}) does not "
        f"exceed it, and the best membership AUROC is {auroc:.3f}.{note} The audit can refute "
        "a privacy claim, never prove it: the guarantee rests on the accountant.")}


def write_audit(out_dir: str | Path, audit: Mapping[str, Any]) -> tuple[Path, Path]:
    """DIR/audit.json and the self-contained DIR/audit.html, each written atomically."""
    from fedsynth.privacy.audit.report import render_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "audit.json", audit)
    with atomic_open(out / "audit.html", "w", encoding="utf-8") as fh:
        fh.write(render_html(audit))
    return out / "audit.json", out / "audit.html"


def run_audit(
    generator: Any,
    members: np.ndarray,
    non_members: np.ndarray,
    out_dir: str | Path | None = None,
    privacy: Mapping[str, Any] | None = None,
    cfg: AuditConfig | None = None,
    canaries: np.ndarray | None = None,
    included: np.ndarray | None = None,
    round_log: Sequence[Mapping[str, Any]] | None = None,
    site: str = "all",
    white_box: bool = True,
    identity: Mapping[str, Any] | None = None,
    synth: np.ndarray | None = None,
    records: RecordsAudit | None = None,
) -> dict[str, Any]:
    """Audit one (centralized or already-merged) model; write the files when out_dir is given.
    synth: the synthetic vectors (default: ``generator.sample``); records: see ``audit_site``."""
    cfg = cfg or AuditConfig()
    reports = site_reports(privacy)
    site_priv = reports.get(site) or (dict(privacy) if privacy and "epsilon" in privacy else None)
    one = audit_site(generator, members, non_members, cfg, synth=synth, canaries=canaries,
                     included=included, privacy=site_priv, site=site, white_box=white_box,
                     records=records)
    audit = merge_site_audits({site: one}, privacy, round_log, cfg, identity)
    if out_dir is not None:
        write_audit(out_dir, audit)
    return audit


def audit_federation(
    generator: Any,
    sites: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_dir: str | Path | None = None,
    privacy: Mapping[str, Any] | None = None,
    round_log: Sequence[Mapping[str, Any]] | None = None,
    cfg: AuditConfig | None = None,
    canaries: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    identity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``audit_site`` for every site {name: (members, held_out)} (in a deployment each site runs
    its own and sends the dict), then the merge; writes DIR/audit.json + audit.html when given.
    canaries: {name: (canaries, included_mask)} for sites that trained with canaries."""
    cfg = cfg or AuditConfig()
    reports = site_reports(privacy)
    synth = np.asarray(generator.sample(cfg.n_synth, seed=cfg.seed), dtype=np.uint8)
    audits = {}
    for name, (members, held_out) in sites.items():
        can, inc = (canaries or {}).get(name, (None, None))
        audits[name] = audit_site(generator, members, held_out, cfg, synth=synth, canaries=can,
                                  included=inc, privacy=reports.get(name), site=name)
    audit = merge_site_audits(audits, privacy, round_log, cfg, identity)
    if out_dir is not None:
        write_audit(out_dir, audit)
    return audit


def read_run_outputs(run_dir: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(privacy.json, rounds.jsonl rows) of an ehr-server / ehr-simulate output folder, when
    present."""
    import json

    d = Path(run_dir)
    privacy = None
    if (d / "privacy.json").exists():
        privacy = json.loads((d / "privacy.json").read_text(encoding="utf-8"))
    rounds: list[dict[str, Any]] = []
    if (d / "rounds.jsonl").exists():
        for line in (d / "rounds.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                rounds.append(json.loads(line))
    return privacy, rounds
