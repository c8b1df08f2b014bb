"""Whole-records models in the audit: their members as the model's own vectors, their sample,
and the attribute-disclosure attack on the schema's columns.

A records model (``ehr-train --columns all``) learns one 0/1 vector per patient: the schema's
tokens (``common.data.record_tokens``), then the codes. The membership and white-box attacks
run on exactly those vectors, so members and non-members are read as records with the model's
schema and turned into its token layout; a file or layout that does not fit is a one-line
``InputError``, never a traceback. The synthetic side is what ``ehr-sample`` releases (one
value per column, ``common.model.record_output.sample_records``), re-encoded into the same
tokens, so the attacks see the records an analyst would receive.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.data.matrix import CodeMatrix
from fedsynth.common.data.schema import Schema
from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import Vocabulary
from fedsynth.privacy.audit.attribute_records import record_attribute_disclosure
from fedsynth.privacy.audit.config import AuditConfig

log = logging.getLogger(__name__)

# Attribute targets when none are given: per built-in schema the outcome and a protected
# attribute (issue 16: "infer readmitted or race from the rest").
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "diabetes130": ("readmitted", "race"),
    "mimic3": ("hospital_expire_flag", "ethnicity"),
    "mimic4": ("hospital_expire_flag", "race"),
}
# Other schemas: the categorical columns with one of these names, else the last categorical
# column (outcomes usually close a record).
SENSITIVE_NAMES = ("readmitted", "race", "ethnicity", "hospital_expire_flag", "death", "died",
                   "mortality", "outcome")
# load_records' messages that mean "this file holds codes, not records"
_NOT_RECORDS = ("of schema", "per-patient columns", "code columns is in vocabulary",
                "needs a schema")


@dataclass
class RecordsAudit:
    """What the records part of an audit needs: the real tables (members, non-members, rows in
    the same order as their matrices), the synthetic records and the attack's targets."""

    schema: Schema
    n_tokens: int  # the model's first n_tokens columns are the schema's tokens
    members: pd.DataFrame
    non_members: pd.DataFrame
    targets: tuple[str, ...]
    synth: pd.DataFrame | None = None  # filled by ``sample_synthetic``


def default_targets(schema: Schema) -> tuple[str, ...]:
    """The attribute targets of a schema (module constants)."""
    if schema.name in DEFAULT_TARGETS and all(n in schema.names
                                              for n in DEFAULT_TARGETS[schema.name]):
        return DEFAULT_TARGETS[schema.name]
    cats = [c.name for c in schema.columns if c.is_categorical]
    named = tuple(c for c in cats if c.lower() in SENSITIVE_NAMES)
    return named or tuple(cats[-1:])


def parse_targets(text: str | None, schema: Schema) -> tuple[str, ...]:
    """``--attribute-targets col1,col2`` checked against the schema (categorical columns only:
    the attack infers a category); None or empty: ``default_targets``."""
    if not text or not text.strip():
        return default_targets(schema)
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for name in names:
        if name not in schema.names:
            raise InputError("--attribute-targets", f"no column {name!r} in schema "
                             f"{schema.name!r}", f"Columns: {', '.join(schema.names[:12])} ...")
        if not schema.column(name).is_categorical:
            raise InputError("--attribute-targets", f"column {name!r} is "
                             f"{schema.column(name).kind}; the attack infers a categorical "
                             "column")
    return names


def load_members(path: str, fmt: str, layout: Any, schema: Schema,
                 vocab: Vocabulary) -> tuple[CodeMatrix, pd.DataFrame]:
    """(the model's vectors: tokens then codes, the typed table) of the patients in ``path``,
    read with the model's schema and code vocabulary (``vocab``: the model's, tokens first)."""
    from fedsynth.common.data.record_tokens import records_matrix
    from fedsynth.common.data.records import load_records

    T = layout.n_tokens
    codes = Vocabulary(tuple(vocab.codes[T:]), name=vocab.name)
    try:
        records = load_records(path, fmt, schema=schema, vocab=codes)
    except InputError as err:
        if not any(m in str(err) for m in _NOT_RECORDS):
            raise
        raise InputError(None, f"{str(err).rstrip('.?')}; the model is a whole-records model "
                         "(ehr-train --columns all): members and non-members must be patient "
                         f"records with the columns of schema {schema.name!r}") from None
    matrix, own = records_matrix(records)
    if own.to_dict() != layout.to_dict() or tuple(matrix.vocab.codes) != tuple(vocab.codes):
        raise InputError(path, "the records do not map onto the model's columns (token layout "
                         "or vocabulary differ)", "Audit with the data format and schema the "
                         "model was trained on")
    return matrix, records.table


def sample_synthetic(gen: Any, layout: Any, schema: Schema,
                     cfg: AuditConfig) -> tuple[np.ndarray, pd.DataFrame]:
    """``cfg.n_synth`` released records (``ehr-sample``'s): (as the model's vectors, as a
    table)."""
    from fedsynth.common.data.record_tokens import records_to_tokens
    from fedsynth.common.model.record_output import sample_records

    table, codes, _ = sample_records(gen, layout, schema, cfg.n_synth, seed=cfg.seed)
    X = np.hstack([records_to_tokens(table, layout, codes), np.asarray(codes, dtype=np.uint8)])
    return np.ascontiguousarray(X, dtype=np.uint8), table


def attribute_records_audit(rec: RecordsAudit, cfg: AuditConfig) -> dict[str, Any]:
    """The attribute-disclosure attack (``attribute_records``) for every target, with its
    verdict: figures per target, the largest gains, and whether any gain is clearly above the
    sampling noise of the accuracies (``signal``)."""
    if rec.synth is None:
        raise ValueError("no synthetic records: sample them first")
    per: dict[str, dict[str, Any]] = {}
    for target in rec.targets:
        res = record_attribute_disclosure(rec.members, rec.non_members, rec.synth, rec.schema,
                                          target, k=cfg.attr_k, n_targets=cfg.attr_targets,
                                          seed=cfg.seed)
        res["noise"] = gain_noise(res)
        res["signal"] = bool(_signal(res))
        per[target] = res
    return {"targets": list(rec.targets), "k": cfg.attr_k, "known": "every other schema column",
            "by_target": per, "signal": any(r["signal"] for r in per.values()),
            "verdict": attribute_verdict(per)}


def gain_noise(res: dict[str, Any]) -> float:
    """Standard error of a difference of two accuracies over n targets each (binomial)."""
    n = max(float(res["n_targets"]), 1.0)
    p = float(res["accuracy_members_synth"])
    p = 0.5 if math.isnan(p) else p
    return math.sqrt(2.0 * max(p * (1.0 - p), 1.0 / n) / n)


def _signal(res: dict[str, Any]) -> bool:
    """A gain over non-members clearly above noise: memorised patients' values."""
    gain = float(res["gain_over_nonmembers"])
    return not math.isnan(gain) and gain > max(0.02, 3.0 * float(res["noise"]))


def attribute_verdict(per: dict[str, dict[str, Any]]) -> str:
    """One plain sentence per target: what the synthetic records reveal beyond a population."""
    parts = []
    for target, r in per.items():
        mem, non = float(r["accuracy_members_synth"]), float(r["accuracy_nonmembers_synth"])
        base, maj = float(r["accuracy_members_holdout"]), float(r["majority_rate"])
        head = (f"Knowing every other column, an attacker guesses {target!r} of a training "
                f"patient right {mem:.0%} of the time from the synthetic records, against "
                f"{non:.0%} for patients the model never saw, {base:.0%} from real records of "
                f"the same population and {maj:.0%} by always guessing the most common value.")
        if r["signal"]:
            tail = (f" The {mem - non:+.0%} gain over unseen patients is beyond chance: the "
                    "synthetic records disclose this column of the patients they were trained "
                    "on.")
        elif mem - base > max(0.02, 3.0 * float(r["noise"])):
            tail = (" Members and unseen patients are guessed equally well, so nothing points "
                    "at memorisation; the synthetic records are simply more informative than "
                    "the real reference sample.")
        else:
            tail = (" No disclosure beyond what data of the same population gives was "
                    "detected (which does not prove there is none).")
        parts.append(head + tail)
    return " ".join(parts)


__all__ = ["DEFAULT_TARGETS", "RecordsAudit", "attribute_records_audit", "default_targets",
           "load_members", "parse_targets", "sample_synthetic"]
