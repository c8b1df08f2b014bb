"""A records site's own audit: the attribute-disclosure attack on the schema's columns, as
``ehr-audit`` runs it on a records model (``privacy.audit.records``), against the site's own
patients.

A site that trains whole records keeps its patients' typed tables beside their token+code
matrices (``client.site_training.SiteData``: ``train_table`` holds the real members, never the
canaries, ``holdout_table`` the held-out patients, rows in the matrices' order). They come from
the records the site loaded, never from its tokens (a numeric bin would lose its value). A
simulated site's file (``site<k>.npz``, written by ``ehr-simulate``) carries them as one
float64 array per part (``table_array``: a category's index in the schema, a number as
itself, NaN missing), read back typed like ``load_records``' table (``array_table``).

``site_records_audit`` draws the released records as ``ehr-sample`` does
(``records.sample_synthetic``) and returns what ``run.audit_site`` needs; the result is computed
on members, so it stays at the site like the rest of its audit.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.data.schema import Schema
from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.records import RecordsAudit, default_targets, sample_synthetic

log = logging.getLogger(__name__)


def table_array(table: pd.DataFrame, schema: Schema) -> np.ndarray:
    """(rows, columns) float64 of a typed table: a category as its index in the schema's
    categories, a number as itself; NaN where missing (exact for the schema's domains)."""
    from fedsynth.common.gower import category_codes, numeric_values

    out = np.full((len(table), len(schema.columns)), np.nan)
    for j, col in enumerate(schema.columns):
        if col.is_categorical:
            codes = category_codes(table[col.name], col)
            out[:, j] = np.where(codes >= 0, codes, np.nan)
        else:
            out[:, j] = numeric_values(table[col.name])
    return out


def array_table(values: np.ndarray, schema: Schema) -> pd.DataFrame:
    """``table_array``'s inverse, typed like ``load_records``' table (categories over the
    schema's, nullable Int64 / Float64); ValueError when it does not fit the schema."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(schema.columns):
        raise ValueError(f"record table of shape {values.shape}: schema {schema.name!r} has "
                         f"{len(schema.columns)} columns")
    cols: dict[str, Any] = {}
    for j, col in enumerate(schema.columns):
        v = values[:, j]
        if col.is_categorical:
            codes = np.where(np.isnan(v), -1, v).astype(np.int64)
            cols[col.name] = pd.Categorical.from_codes(codes, categories=list(col.categories
                                                                              or ()))
        else:
            kept = pd.array(v, dtype="Float64")
            cols[col.name] = kept.round().astype("Int64") if col.kind == "integer" else kept
    return pd.DataFrame(cols)


def site_records_audit(generator: Any, data: Any, synthetic: np.ndarray,
                       cfg: AuditConfig) -> tuple[np.ndarray, RecordsAudit | None]:
    """(the synthetic vectors the site's attacks run on, the records part of its audit).
    Codes only, or a records site without its tables: (``synthetic``, None). A records site:
    ``cfg.n_synth`` released records (``sample_synthetic``, as ``ehr-audit``; the membership
    attacks then run on the same records re-encoded), its members and held-out tables, and the
    schema's default targets (``records.default_targets``)."""
    if data.schema is None:
        return synthetic, None
    train, hold = data.train_table, data.holdout_table
    if train is None or hold is None or len(train) != len(data.members) \
            or len(hold) != len(data.holdout) or len(hold) < 2:
        log.warning("site %s: no record tables of its members and held-out patients (at least "
                    "2) beside its matrices: the attribute attack on records is skipped",
                    data.site)
        return synthetic, None
    from fedsynth.common.data.record_tokens import model_layout
    from fedsynth.common.data.schema import schema_from_dict

    schema = schema_from_dict(data.schema, "site data")
    layout = model_layout(schema)
    X, table = sample_synthetic(generator, layout, schema, cfg)
    return X, RecordsAudit(schema, layout.n_tokens, train, hold, default_targets(schema),
                           synth=table)


__all__ = ["array_table", "site_records_audit", "table_array"]
