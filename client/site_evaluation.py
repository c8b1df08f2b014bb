"""Evaluation and audit of the released model, kept at the site (no Flower here).

At the end of a run the coordinator sends the released model (its weights, config and output
step: public DP releases) and the run's plan. The site decides the rest: it draws its own
sample (its own size and seed), scores it against its own held-out patients
(``evaluate_site``: held-out patients only) and, when audited, runs the privacy audit against
its own members (``audit_at_site``). Everything is written to the site's state folder and
logged on its console; nothing computed on its patients is sent back (the reply is only the
site's name and a constant status). At most once per run: asked again for the same run id, the
site re-reads its file and computes nothing.

Files (atomic): ``STATE/evaluation-<site>-<run_id>.json`` and
``STATE/audit-<site>-<run_id>/audit.json`` + ``audit.html``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.client.site_training import SiteData, SitePlan, audit_at_site, evaluate_site
from fedsynth.common.atomic import write_json
from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

KEPT = "kept at site"  # the only status an evaluate reply carries
EVAL_SAMPLES = 2000  # synthetic patients the site draws when its config does not say
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
HEADLINE = ("cooccurrence_r", "prevalence_r", "dimwise_auroc_ratio", "discriminator_auroc")


def checked_run_id(run_id: str) -> str:
    """The run id as a file-name part: letters, digits, '_' and '-' only (it comes from the
    coordinator; a path such as '../x' must never choose where the site writes)."""
    if not _RUN_ID.fullmatch(run_id):
        raise InputError("plan", f"run id {run_id!r} is not a valid run id",
                         "letters, digits, '_', '-' (at most 64)")
    return run_id


def evaluation_path(state_dir: str | Path, site: str, run_id: str) -> Path:
    return Path(state_dir) / f"evaluation-{site}-{checked_run_id(run_id)}.json"


def audit_dir(state_dir: str | Path, site: str, run_id: str) -> Path:
    return Path(state_dir) / f"audit-{site}-{checked_run_id(run_id)}"


def site_sample(generator: Any, samples: int, seed: int) -> np.ndarray:
    """The site's own draw from the released model: its size and seed, never the coordinator's
    (post-processing of the public release: no privacy cost)."""
    if samples < 10:
        raise InputError("eval-samples", f"must be at least 10 (got {samples})")
    return np.asarray(generator.sample(samples, seed=seed), dtype=np.uint8)


def keep_evaluation(generator: Any, data: SiteData, run_id: str, state_dir: str | Path,
                    samples: int = EVAL_SAMPLES, seed: int = 0,
                    synth: np.ndarray | None = None) -> dict[str, Any]:
    """Evaluate the released model on the site's held-out patients and keep the figures in
    ``STATE/evaluation-<site>-<run_id>.json`` (and one console line); once per run: a second
    call for the same run re-reads the file. Returns the file's document (for the site only)."""
    path = evaluation_path(state_dir, data.site, run_id)
    if path.exists():
        doc = json.loads(path.read_text(encoding="utf-8"))
        log.info("site %s: evaluation of run %s already kept in %s (not recomputed)",
                 data.site, run_id, path)
        return doc
    if synth is None:
        synth = site_sample(generator, samples, seed)
    figures = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
               for k, v in evaluate_site(synth, data, seed=seed).items()}  # strict JSON
    doc = {
        "site": data.site, "run_id": run_id, "time": time.time(),
        "n_synthetic": int(len(synth)), "sample_seed": int(seed),
        "figures": figures,
        "note": "computed at this site on its held-out patients only (never trained on, no "
                "training member used); kept here, nothing of it was sent to the coordinator",
    }
    write_json(path, doc)
    shown = ", ".join(f"{k} {figures[k]:.3f}" for k in HEADLINE if isinstance(
        figures.get(k), int | float))
    log.info("site %s: evaluation of run %s on %d held-out patients: %s (kept in %s)",
             data.site, run_id, int(data.holdout.shape[0]),
             shown or figures.get("skipped", "no figures"), path)
    return doc


def keep_audit(generator: Any, synth: np.ndarray, data: SiteData, plan: SitePlan, ledger: Any,
               budget: float, state_dir: str | Path) -> Path:
    """The site's privacy audit of the released model (``audit_at_site``), written to
    ``STATE/audit-<site>-<run_id>/audit.json`` + ``audit.html`` next to its own ledger's
    epsilon; once per run. Returns the folder."""
    from fedsynth.privacy.audit.identity import audit_identity
    from fedsynth.privacy.audit.run import merge_site_audits, write_audit

    folder = audit_dir(state_dir, data.site, plan.run_id)
    if (folder / "audit.json").exists():
        log.info("site %s: audit of run %s already kept in %s (not recomputed)", data.site,
                 plan.run_id, folder)
        return folder
    one = audit_at_site(generator, synth, data, plan, ledger, budget)
    privacy = {"sites": {data.site: one_report(ledger, plan, budget)}}
    audit = merge_site_audits({data.site: one}, privacy,
                              identity=audit_identity(plan.run_id))
    write_audit(folder, audit)
    log.info("site %s: audit of run %s: %s (kept in %s)", data.site, plan.run_id,
             audit["verdict"]["headline"], folder / "audit.html")
    return folder


def one_report(ledger: Any, plan: SitePlan, budget: float) -> dict[str, Any]:
    """The site's privacy report from its own ledger, at its own delta (what its audit is
    compared with)."""
    return dict(ledger.report(None, budget, plan.config.privacy.accountant))
