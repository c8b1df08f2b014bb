"""What the simulation operator computes after a simulated federation (no Flower here).

In a simulation one person holds every site's data anyway (``ehr-simulate`` wrote
``OUT/sites/site<k>.npz``), so after the run it can do what no coordinator may: score
``OUT/synthetic.csv`` against all sites' held-out patients pooled (a true pooled figure, not a
mean of per-site figures) and gather the audits the sites kept in their state folders
(``OUT/state/site<k>/audit-site<k>-<run_id>/audit.json``) into ``OUT/audit.json`` +
``audit.html``. The coordinator (the ServerApp) never sees any of it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import write_json
from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

COMPUTED_BY = (
    "the simulation operator (ehr-simulate), who holds every simulated site's data: "
    "OUT/synthetic.csv against all sites' held-out patients pooled (never trained on); "
    "not the coordinator, which received no figure from any site")


def site_files(out: Path) -> list[Path]:
    """OUT/sites/site<k>.npz in site order."""
    files = sorted((out / "sites").glob("site*.npz"), key=lambda p: int(p.stem[4:] or 0))
    if not files:
        raise InputError(out / "sites", "no simulated site files (site<k>.npz)")
    return files


def pooled_holdout(out: Path) -> tuple[np.ndarray, Any]:
    """Every simulated site's held-out rows stacked, and the sites' vocabulary."""
    from fedsynth.common.vocabulary import Vocabulary

    parts, vocab = [], None
    for path in site_files(out):
        with np.load(path, allow_pickle=False) as d:
            parts.append(d["holdout"].astype(np.uint8))
            vocab = vocab or Vocabulary.from_dict(json.loads(str(d["vocab"])), source=path)
    return np.vstack(parts), vocab


def pooled_evaluation(out: Path, seed: int = 0, records: Any = None) -> dict[str, Any]:
    """``common.metrics.fidelity(holdout_all, synthetic)`` into OUT/evaluation.json (next to
    the coordinator's record of where each site keeps its own figures). Whole records
    (``records``: the cohort's ``Records``): the codes as above and the record metrics
    (``common.record_metrics.record_fidelity``, target ``readmitted=<30`` when the schema has
    it) under ``pooled_records``."""
    from fedsynth.common.data import load_codes
    from fedsynth.common.metrics import fidelity

    holdout, vocab = pooled_holdout(out)
    doc: dict[str, Any] = {}
    if records is None:
        # a collapsed generator samples all-zero patients: scored, not refused
        synth = load_codes(out / "synthetic.csv", "matrix", vocab=vocab, allow_empty=True).X
    else:
        from fedsynth.common.cli.evaluate_records import read_synthetic_records
        from fedsynth.common.record_metrics import default_target, record_fidelity

        g = len(vocab) - len(records.codes.vocab)
        table, synth, _ = read_synthetic_records(out / "synthetic.csv", records.schema,
                                                 records.codes.vocab)
        real = records.of_patients(pooled_ids(out))
        holdout = holdout[:, g:]  # the codes (the columns are scored as records)
        target = default_target(records.schema)
        doc["pooled_records"] = finite_figures(record_fidelity(
            real.table, table, records.schema, target=target, codes_real=holdout,
            codes_synth=synth, seed=seed))
        doc["pooled_records_target"] = target
    path = out / "evaluation.json"
    if path.exists():
        doc = {**json.loads(path.read_text(encoding="utf-8")), **doc}
    doc.update({
        "pooled": finite_figures(fidelity(holdout, synth, seed=seed)),
        "pooled_n_holdout": int(len(holdout)),
        "pooling": "all sites' held-out patients together (one evaluation, not a mean)",
        "computed_by": COMPUTED_BY,
    })
    write_json(path, doc)
    return doc


def pooled_ids(out: Path) -> np.ndarray:
    """Every simulated site's held-out patient ids, in ``pooled_holdout``'s row order."""
    parts = []
    for path in site_files(out):
        with np.load(path, allow_pickle=False) as d:
            parts.append(d["holdout_ids"].astype(str))
    return np.concatenate(parts)


def finite_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """The finite scalar figures (a non-finite one, e.g. a correlation of constant columns, is
    left out, as the old pooled figures did: strict JSON, and readers can round every value)."""
    return {k: v for k, v in figures.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def merge_local_audits(out: Path, run_id: str) -> dict[str, Any] | None:
    """The sites' own audits (kept in OUT/state/site<k>/) merged into OUT/audit.json +
    audit.html with the release epsilon (``privacy.audit.run.merge_site_audits``); None when
    no site kept one."""
    from fedsynth.privacy.audit.identity import audit_identity, model_identity
    from fedsynth.privacy.audit.run import merge_site_audits, read_run_outputs, write_audit

    audits: dict[str, dict[str, Any]] = {}
    for path in site_files(out):
        site = path.stem
        local = out / "state" / site / f"audit-{site}-{run_id}" / "audit.json"
        if not local.exists():
            log.warning("site %s kept no audit (%s)", site, local)
            continue
        audits[site] = json.loads(local.read_text(encoding="utf-8"))["sites"][site]
    if not audits:
        return None
    privacy, rounds = read_run_outputs(out)
    model = model_identity(out / "model") if (out / "model").is_dir() else None
    audit = merge_site_audits(audits, privacy, rounds,
                              identity=audit_identity(run_id, model=model))
    audit["computed_by"] = ("each site audited the released model against its own patients "
                            "and kept the result; the simulation operator gathered them here")
    write_audit(out, audit)
    return audit
