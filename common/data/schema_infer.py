"""``ehr-schema infer``: a schema read off a table, for NON-PRIVATE data only.

An inferred schema lists the data's own categories and numeric ranges, so it reveals them to
whoever sees the schema or a model scaled by it. It is for public or synthetic data; a site's
schema comes from the source's data dictionary (``schema_for`` or a hand-written TOML file).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fedsynth.common.data.loaders import FORMAT_ALIASES, detect_format
from fedsynth.common.data.reading import read_header, resolve_input
from fedsynth.common.data.records import record_table
from fedsynth.common.data.schema import INT_LIMIT, Column, Schema, schema_from_dict
from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

MAX_INFERRED_CATEGORIES = 1000
INFER_WARNING = ("an inferred schema reveals the data's categories and ranges: use it only for "
                 "non-private data, never for a site's patients (write the schema from the "
                 "source's data dictionary instead)")


def infer_schema(table: pd.DataFrame, name: str, source: object = None,
                 warn: bool = True) -> Schema:
    """A schema read off ``table`` (non-private use only: it reveals categories and ranges).

    Columns whose every non-empty cell is a finite number become integer/real over the observed
    range (log1p when not negative); others become categorical over the observed values.
    """
    if warn:
        log.warning("%s: %s", source or name, INFER_WARNING)
    columns = []
    for col in table.columns:
        s = table[col].astype("string").str.strip()
        s = s[s.notna() & (s != "")].astype(str)
        num = pd.to_numeric(s, errors="coerce")
        if len(s) and num.notna().all() and num.abs().max() < INT_LIMIT:
            integral = bool((num == num.round()).all())
            lo, hi = float(num.min()), float(num.max())
            kind = "integer" if integral else "real"
            low, high = (int(lo), int(hi)) if integral else (lo, hi)
            columns.append(Column(str(col), kind, None, low, high,
                                  "log1p" if lo >= 0 else "none", "inferred from the data"))
            continue
        cats = sorted(pd.unique(s))
        if not cats or len(cats) > MAX_INFERRED_CATEGORIES:
            log.warning("%s: column %r skipped (%d distinct values)", source or name, col,
                        len(cats))
            continue
        columns.append(Column(str(col), "categorical", tuple(cats),
                              note="inferred from the data"))
    if not columns:
        raise InputError(source, "no column could be described (all empty or free text)")
    return schema_from_dict(Schema(name, tuple(columns)).to_dict(), source)


def infer_from_file(path: str | Path, fmt: str = "auto", name: str | None = None,
                    warn: bool = True) -> Schema:
    """The schema of a file's record columns (diabetes130, MIMIC or a long table)."""
    p = resolve_input(path)
    key = FORMAT_ALIASES.get(str(fmt).strip().lower(), str(fmt).strip().lower())
    if key == "auto":
        key = detect_format(read_header(p)) or ""
    if key not in ("diabetes130", "mimic", "long"):
        raise InputError(p, f"cannot infer record columns for format {fmt!r}",
                         "Use --format diabetes130|mimic|long")
    raw, source, _, _ = record_table(p, key)
    return infer_schema(raw, name or f"{source}-inferred", p, warn)


__all__ = ["INFER_WARNING", "infer_from_file", "infer_schema"]
