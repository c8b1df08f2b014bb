"""The output format every command shares: patient_id + one 0/1 column per vocabulary code.

CSV (header ``patient_id,001,002,...,V45,...,E888,...``) or Parquet when the path ends in
``.parquet``; written atomically. The CSV body is built with numpy, not per cell in Python.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.atomic import atomic_open, atomic_path
from fedsynth.common.vocabulary import Vocabulary

_ROWS_PER_CHUNK = 4096


def synthetic_ids(n: int, prefix: str = "syn") -> np.ndarray:
    """'syn-000001', 'syn-000002', ... (at least 6 digits)."""
    width = max(6, len(str(n)))
    return np.array([f"{prefix}-{i:0{width}d}" for i in range(1, n + 1)])


def _check(
    X: np.ndarray, vocab: Vocabulary, patient_ids: Sequence[str] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(vocab):
        raise ValueError(f"X has shape {X.shape}, vocabulary has {len(vocab)} codes")
    if X.size and not np.isin(X, (0, 1)).all():
        raise ValueError("X must hold only 0/1")
    X = X.astype(np.uint8, copy=False)
    ids = synthetic_ids(X.shape[0]) if patient_ids is None else np.asarray(patient_ids).astype(str)
    if len(ids) != X.shape[0]:
        raise ValueError(f"{len(ids)} patient ids for {X.shape[0]} rows")
    return X, ids


def write_matrix(
    path: str | os.PathLike[str],
    X: np.ndarray,
    vocab: Vocabulary,
    patient_ids: Sequence[str] | np.ndarray | None = None,
) -> Path:
    """Write a 0/1 patient x code matrix (CSV, or Parquet for '.parquet'), atomically."""
    X, ids = _check(X, vocab, patient_ids)
    out = Path(path)
    if out.suffix.lower() == ".parquet":
        df = pd.DataFrame(X, columns=list(vocab.codes))
        df.insert(0, "patient_id", ids)
        with atomic_path(out) as tmp:
            df.to_parquet(tmp, index=False)
        return out
    header = ",".join(["patient_id", *(_csv_field(c) for c in vocab.codes)]) + "\n"
    with atomic_open(out, "wb") as fh:
        fh.write(header.encode("utf-8"))
        for start in range(0, X.shape[0], _ROWS_PER_CHUNK):
            stop = start + _ROWS_PER_CHUNK
            fh.write(_csv_rows(X[start:stop], ids[start:stop]))
    return out


def _csv_rows(X: np.ndarray, ids: np.ndarray) -> bytes:
    """Rows 'id,0,1,...\\n' built as one byte buffer: digits interleaved with commas."""
    n, d = X.shape
    if n == 0:
        return b""
    cells = np.empty((n, 2 * d + 1), dtype=np.uint8)
    cells[:, 0 : 2 * d : 2] = ord(",")
    cells[:, 1 : 2 * d : 2] = X + ord("0")
    cells[:, -1] = ord("\n")
    fields = [_csv_field(pid).encode("utf-8") for pid in ids]
    if len({len(f) for f in fields}) == 1:  # equal-width ids (syn-000001...): all in numpy
        id_bytes = np.frombuffer(b"".join(fields), dtype=np.uint8).reshape(n, -1)
        return np.concatenate([id_bytes, cells], axis=1).tobytes()
    body = cells.tobytes()
    step = 2 * d + 1
    return b"".join(f + body[i * step : (i + 1) * step] for i, f in enumerate(fields))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP CSV injection: spreadsheet formulas


def _no_formula(value: str) -> str:
    """'=cmd|...' must never reach a spreadsheet as a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _csv_field(value: str) -> str:
    s = _no_formula(str(value))
    if any(ch in s for ch in ',"\n\r'):
        return '"' + s.replace('"', '""') + '"'
    return s


def write_records(
    path: str | os.PathLike[str],
    table: pd.DataFrame,
    X: np.ndarray,
    vocab: Vocabulary,
    patient_ids: Sequence[str] | np.ndarray | None = None,
) -> Path:
    """Whole records, atomically: ``patient_id``, the schema's columns with the source's labels
    (Parquet typed: categoricals as category dtype, counts as integers), then one 0/1 column per
    code. CSV text cells that would start a spreadsheet formula are prefixed with a quote."""
    X, ids = _check(X, vocab, patient_ids)
    if len(table) != X.shape[0]:
        raise ValueError(f"{len(table)} records for {X.shape[0]} code rows")
    codes = pd.DataFrame(X, columns=list(vocab.codes))
    df = pd.concat([pd.DataFrame({"patient_id": ids}), table.reset_index(drop=True), codes],
                   axis=1)
    out = Path(path)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            text = df.astype(object).where(df.notna(), "")
            for name in ["patient_id", *table.columns]:
                text[name] = [_no_formula(v) if isinstance(v, str) else v for v in text[name]]
            text.columns = [_no_formula(str(c)) for c in df.columns]
            text.to_csv(tmp, index=False)  # pandas quotes commas and quotes itself
    return out
