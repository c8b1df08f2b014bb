"""Whole patient records: one row per patient with the schema's columns, beside the codes.

diabetes130: a patient's first encounter (lowest ``encounter_id``) for every column but the ids
and ``diag_1..3``; MIMIC-III/IV: demographics and admissions from PATIENTS/ADMISSIONS
(``records_mimic``); long tables: the first row of each patient for the schema's columns. The
codes are ``load_codes``' matrix over all rows, in the same patient order. Types and domains
come from the schema (never from the patients); a value outside it is counted in the report and
logged like an out-of-vocabulary code, or, with ``strict``, raises a one-line ``InputError``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.data.loaders import (
    LONG_CODE_COLUMNS,
    LONG_ID_COLUMNS,
    load_codes,
)
from fedsynth.common.data.matrix import CodeMatrix, LoadReport
from fedsynth.common.data.reading import check_full_rows, lower_map, read_table, resolve_input
from fedsynth.common.data.record_encoding import Block, Layout, decode, encode
from fedsynth.common.data.records_mimic import mimic_table
from fedsynth.common.data.schema import Schema, read_schema, schema_for
from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import Vocabulary

log = logging.getLogger(__name__)

VALUES_LISTED = 100  # distinct out-of-schema values listed per column; the rest summed
OTHER_VALUES = "(other values)"
_SHOWN = 60  # characters of a value shown in a message


@dataclass
class RecordReport:
    """What the record loader read, and the values the schema did not allow."""

    path: str = ""
    format: str = ""
    schema: str = ""
    patients: int = 0
    out_of_schema: dict[str, dict[str, int]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    codes: LoadReport | None = None

    @property
    def out_of_schema_values(self) -> int:
        return int(sum(sum(v.values()) for v in self.out_of_schema.values()))

    def summary(self) -> str:
        bad = (f"{self.out_of_schema_values} values outside the schema in "
               f"{len(self.out_of_schema)} columns" if self.out_of_schema
               else "no values outside the schema")
        return (f"{self.path} ({self.format}): {self.patients} patient records, schema "
                f"{self.schema!r}; {bad}; {sum(self.missing.values())} missing values")

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "format": self.format, "schema": self.schema,
                "patients": self.patients, "out_of_schema": self.out_of_schema,
                "missing": dict(self.missing), "notes": list(self.notes),
                "codes": None if self.codes is None else self.codes.to_dict()}


@dataclass
class Records:
    """``table``: one row per patient, the schema's columns typed (category dtype over the
    schema's categories, nullable Int64/Float64); ``codes``: the same patients, same order."""

    patient_ids: np.ndarray
    table: pd.DataFrame
    codes: CodeMatrix
    schema: Schema
    report: RecordReport = field(default_factory=RecordReport)

    def __post_init__(self) -> None:
        self.patient_ids = np.asarray(self.patient_ids).astype(str)
        self.table = self.table.reset_index(drop=True)
        if not (len(self.table) == len(self.patient_ids) == self.codes.n_patients):
            raise ValueError("table, patient_ids and codes disagree on the number of patients")
        if not np.array_equal(self.codes.patient_ids, self.patient_ids):
            raise ValueError("codes are not in the records' patient order")

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    def __len__(self) -> int:
        return self.n_patients

    def subset(self, indices: np.ndarray | list[int]) -> Records:
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        return Records(self.patient_ids[idx], self.table.iloc[idx], self.codes.subset(idx),
                       self.schema, self.report)

    def of_patients(self, ids: np.ndarray | list[str]) -> Records:
        """The records of patients ``ids`` (e.g. a split's ``patient_ids``), in that order;
        ValueError for an id without a record."""
        pos = pd.Index(self.patient_ids).get_indexer(np.asarray(ids).astype(str))
        if (pos < 0).any():
            raise ValueError("patient ids without a record row")
        return self.subset(pos)


def load_records(
    path: str | Path, fmt: str = "auto", schema: Schema | str | os.PathLike[str] | None = None,
    strict: bool = False, vocab: Vocabulary | str | os.PathLike[str] | None = None,
    full_codes: bool = False, icd10: str = "map",
) -> Records:
    """Read ``path`` into patient records plus their code matrix (see the module docstring).

    schema: a Schema, a built-in name (diabetes130, mimic3, mimic4) or a TOML file; default:
    the source's built-in (long tables need one). strict: stop at the first value outside it.
    """
    codes = load_codes(path, fmt, vocab=vocab, full_codes=full_codes, icd10=icd10)
    p = resolve_input(path)
    raw, fmt_name, sources, notes = record_table(p, codes.report.format)
    sch = resolve_schema(schema, fmt_name, p)
    report = RecordReport(str(p), fmt_name, sch.name, notes=notes, codes=codes.report)
    table = apply_schema(raw, sch, report, strict, sources, p)
    ids = pd.Index(codes.patient_ids, dtype=object)
    table.index = pd.Index(table.index.astype(str), dtype=object)
    lost = int((~ids.isin(table.index)).sum())
    if lost:
        report.notes.append(f"{lost} patients have codes but no record row: their columns are "
                            "missing")
    extra = int((~table.index.isin(ids)).sum())
    if extra:
        report.notes.append(f"{extra} patients have a record row but no codes: left out")
    table = table.reindex(ids)
    report.patients = len(ids)
    na = {c: int(n) - sum(report.out_of_schema.get(c, {}).values())
          for c, n in table.isna().sum().items()}
    report.missing = {c: n for c, n in na.items() if n}  # empty in the source, not rejected
    for note in report.notes:
        (log.warning if "no record row" in note else log.info)("%s: %s", p, note)
    return Records(codes.patient_ids, table, codes, sch, report)


def resolve_schema(schema: Schema | str | os.PathLike[str] | None, fmt: str, p: Path) -> Schema:
    if isinstance(schema, Schema):
        return schema
    if schema is None:
        if fmt == "long":
            raise InputError(p, "a long table needs a schema for its record columns",
                             "Pass --schema FILE (ehr-schema infer writes one for public data)")
        return schema_for(fmt)
    if isinstance(schema, str) and not Path(schema).exists() and "." not in schema:
        return schema_for(schema)
    return read_schema(schema)


def record_table(p: Path, fmt: str) -> tuple[pd.DataFrame, str, dict[str, str], list[str]]:
    """(raw per-patient table indexed by patient id, source name, column -> file, notes)."""
    if fmt == "mimic":
        return mimic_table(p)
    if fmt == "matrix":
        raise InputError(p, "a 0/1 matrix has no per-patient columns", "Load the codes only")
    df = read_table(p)  # every column: a ragged row is refused only when all are parsed
    check_full_rows(p, df)
    low = lower_map(list(df.columns))
    notes: list[str] = []
    if fmt == "diabetes130":
        pid_col, enc = low["patient_nbr"], low.get("encounter_id")
        drop = {pid_col, enc, *(low.get(f"diag_{i}") for i in (1, 2, 3))}
        if enc is None:
            notes.append("no encounter_id column: each patient's first row in file order")
        else:
            key = pd.to_numeric(df[enc].str.strip(), errors="coerce")
            if key.isna().any():
                i = int(np.flatnonzero(key.isna().to_numpy())[0])
                raise InputError(p, f"column {enc!r}: value {df[enc].iloc[i][:_SHOWN]!r} is not "
                                 f"a number (data row {i + 1})")
            df = df.iloc[np.argsort(key.to_numpy(), kind="stable")]
    else:  # long: per-patient columns beside patient_id and code
        pid_col = low[next(c for c in LONG_ID_COLUMNS if c in low)]
        drop = {pid_col, low.get("icd_version"), low[next(c for c in LONG_CODE_COLUMNS
                                                          if c in low)]}
    pid = df[pid_col].astype(str).str.strip()
    first = ~pid.duplicated().to_numpy()
    cols = [c for c in df.columns if c not in drop]
    raw = df.loc[first, cols]
    if fmt == "long" and cols and not first.all():
        differ = (df[cols].groupby(pid.to_numpy(), sort=False).nunique() > 1).sum()
        differ = differ[differ > 0]
        if len(differ):
            notes.append(f"{int(differ.iloc[0])} patients have rows that disagree on column "
                         f"{str(differ.index[0])!r}" + (f" (and {len(differ) - 1} more columns)"
                                                        if len(differ) > 1 else "")
                         + ": each patient's first row kept")
    raw.index = pd.Index(pid.to_numpy()[first])
    return raw, fmt, {c: str(p) for c in raw.columns}, notes


def apply_schema(raw: pd.DataFrame, schema: Schema, report: RecordReport, strict: bool,
                 sources: dict[str, str] | None = None, path: object = None) -> pd.DataFrame:
    """The schema's columns typed; values outside it set missing and counted (or raised)."""
    low = lower_map(list(raw.columns))
    sources = sources or {}
    absent = [c.name for c in schema.columns if c.name.lower() not in low]
    if absent:
        raise InputError(path, f"column {absent[0]!r} of schema {schema.name!r} not found "
                         f"(columns: {', '.join(map(str, list(raw.columns)[:10]))})")
    known = {c.name.lower() for c in schema.columns}
    ignored = [str(c) for c in raw.columns if str(c).strip().lower() not in known]
    if ignored:
        report.notes.append(f"columns outside schema {schema.name!r} ignored: "
                            f"{', '.join(ignored[:10])}{' ...' if len(ignored) > 10 else ''}")
    out, files = {}, {}
    for col in schema.columns:
        actual = low[col.name.lower()]
        s = raw[actual]
        t = s.astype("string").str.strip()
        text = t.astype(object).where(t.notna(), None)
        missing = text.isna() | (text == "")
        if col.is_categorical:
            bad = ~missing & ~text.isin(col.categories)
            out[col.name] = pd.Categorical(text.where(~bad & ~missing, None),
                                           categories=list(col.categories))
        else:
            num = (s.astype("float64") if pd.api.types.is_numeric_dtype(s)
                   and not pd.api.types.is_bool_dtype(s) else pd.to_numeric(text, errors="coerce"))
            v = num.to_numpy(dtype="float64", na_value=np.nan)
            with np.errstate(invalid="ignore"):
                ok = np.isfinite(v) & (v >= col.low) & (v <= col.high)
                if col.kind == "integer":
                    ok &= v == np.round(v)
            bad = ~missing & ~ok
            kept = pd.array(np.where(ok, v, np.nan), dtype="Float64")
            out[col.name] = kept.round().astype("Int64") if col.kind == "integer" else kept
        if bad.any():
            where = files[col.name] = sources.get(actual, str(path) if path else schema.name)
            _count_bad(col.name, text[bad], raw.index[bad.to_numpy()], where, schema, report,
                       strict)
    table = pd.DataFrame(out, index=raw.index)
    _refuse_if_nothing_known(table, schema, report, files, path)
    if report.out_of_schema:
        shown = "; ".join(f"{c} in {Path(files[c]).name}: "
                          + ", ".join(f"{k[:40]!r} x{n}" for k, n in list(v.items())[:3])
                          for c, v in report.out_of_schema.items())
        log.warning("%s: %d values outside schema %s were set missing (%s)", path,
                    report.out_of_schema_values, schema.name, shown[:1000])
    return table


def _refuse_if_nothing_known(table: pd.DataFrame, schema: Schema, report: RecordReport,
                             files: dict[str, str], path: object) -> None:
    """Rows in which not one value is in the schema (all outside it, or all empty) would train
    as if they were data: refused in one line, like a code file where nothing is known."""
    if table.empty or table.notna().to_numpy().any():
        return
    if not report.out_of_schema:
        raise InputError(path, f"every value of the {len(table.columns)} columns of schema "
                         f"{schema.name!r} is empty", "Load the codes only (--columns codes)")
    col, values = next(iter(report.out_of_schema.items()))
    raise InputError(path, f"no value is in schema {schema.name!r}: all "
                     f"{report.out_of_schema_values} non-empty values are outside it (first: "
                     f"column {col!r} in {Path(files[col]).name}: value "
                     f"{next(iter(values))[:40]!r})",
                     "Is it the right format and schema? (--format, --schema)")


def _count_bad(name: str, values: pd.Series, pids: pd.Index, where: str, schema: Schema,
               report: RecordReport, strict: bool) -> None:
    if strict:
        raise InputError(where, f"column {name!r}: value {str(values.iloc[0])[:_SHOWN]!r} is "
                         f"outside schema {schema.name!r} (patient {pids[0]})",
                         "Fix the value, or describe it in a schema file (--schema)")
    counts = values.astype(str).str.slice(0, _SHOWN).value_counts()
    listed = {str(k): int(n) for k, n in counts.iloc[:VALUES_LISTED].items()}
    if len(counts) > VALUES_LISTED:
        listed[OTHER_VALUES] = int(counts.iloc[VALUES_LISTED:].sum())
    report.out_of_schema[name] = listed


__all__ = ["Block", "Layout", "RecordReport", "Records", "apply_schema", "decode", "encode",
           "load_records", "record_table", "resolve_schema"]
