"""Reading a user's table (CSV, gzip'd CSV, Parquet) into pandas, with one-line errors."""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path

import pandas as pd

from fedsynth.common.errors import InputError

_SNIFF_BYTES = 1 << 16
SHAPE_HINT = ("Expected a header row, then rows of SUBJECT_ID,ICD9_CODE (--format mimic), "
              "patient_id,code (--format long) or a 0/1 matrix (--format matrix)")
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


def resolve_input(path: str | Path) -> Path:
    """The file to read; a MIMIC directory resolves to its diagnoses table."""
    p = Path(path)
    if p.is_dir():
        for rel in (
            "DIAGNOSES_ICD.csv", "DIAGNOSES_ICD.csv.gz", "hosp/diagnoses_icd.csv",
            "hosp/diagnoses_icd.csv.gz", "diagnoses_icd.csv", "diagnoses_icd.csv.gz",
        ):
            if (p / rel).is_file():
                return p / rel
        raise InputError(p, "is a directory with no DIAGNOSES_ICD.csv or hosp/diagnoses_icd.csv")
    if not p.exists():
        raise InputError(p, "file not found", f"Check the path (working folder: {Path.cwd()})")
    if not p.is_file():
        raise InputError(p, "not a regular file")
    return p


def _head_bytes(p: Path) -> tuple[bytes, bool, bool]:
    """First bytes of the (decompressed) content, whether gzip'd, whether Parquet."""
    try:
        with open(p, "rb") as fh:
            raw = fh.read(_SNIFF_BYTES)
    except OSError as err:
        raise InputError(p, f"cannot read file ({err.strerror})") from None
    if raw.startswith(_PARQUET_MAGIC):
        return raw, False, True
    if raw.startswith(_GZIP_MAGIC):
        try:
            with gzip.open(p, "rb") as fh:
                return fh.read(_SNIFF_BYTES), True, False
        except (OSError, EOFError, zlib.error) as err:
            raise InputError(p, f"corrupt gzip file ({err})") from None
    return raw, False, False


def _check_text(p: Path, head: bytes) -> str:
    """Fail early, in one line, on content that is not UTF-8 text; return the separator."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(p, "file is UTF-16 encoded, not UTF-8", "Save it as UTF-8 CSV")
    if b"\x00" in head:
        raise InputError(p, "file is binary or UTF-16, not UTF-8 text", "Save it as UTF-8 CSV")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if len(head) == _SNIFF_BYTES and err.start >= len(head) - 3:
            text = head[: err.start].decode("utf-8")
        else:
            raise InputError(
                p, f"not UTF-8 text (byte 0x{head[err.start]:02x} at offset {err.start})",
                "Save it as UTF-8 CSV",
            ) from None
    text = text.lstrip("\ufeff")  # a file holding only a BOM is empty too
    if not text.strip():
        raise InputError(p, "file is empty", SHAPE_HINT)
    first = text.splitlines()[0]
    return "\t" if "\t" in first and "," not in first else ","


def read_table(
    path: str | Path, usecols: list[str] | None = None, nrows: int | None = None,
    dtype: object = str,
) -> pd.DataFrame:
    """Read a CSV (optionally gzip'd, comma or tab separated) or Parquet table.

    Values are read as strings by default (no NA conversion: '' and '?' stay as they are).
    ``usecols`` names actual header names. Raises InputError for anything unreadable.
    """
    p = Path(path)
    head, gz, parquet = _head_bytes(p)
    try:
        if parquet:
            df = pd.read_parquet(p, columns=usecols)
            if nrows is not None:
                df = df.head(nrows)
            if dtype is not str:
                return df
            # nulls become '' (missing), never NaN floats: pandas 3 keeps NA through astype(str)
            return df.astype(object).where(df.notna(), "").astype(str)
        sep = _check_text(p, head)
        with warnings.catch_warnings():
            # a row with more fields than the header: an error, never silently cut or shifted
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(
                p, sep=sep, usecols=usecols, nrows=nrows, dtype=dtype, keep_default_na=False,
                index_col=False, na_values=[], encoding="utf-8-sig",
                compression="gzip" if gz else None, low_memory=False,
            )
    except InputError:
        raise
    except pd.errors.ParserWarning:
        raise InputError(
            p, "some rows have more fields than the header", "Check the delimiter and quoting"
        ) from None
    except pd.errors.EmptyDataError:
        raise InputError(p, "file is empty", SHAPE_HINT) from None
    except UnicodeDecodeError as err:
        raise InputError(p, f"not UTF-8 text ({err.reason})", "Save it as UTF-8 CSV") from None
    except pd.errors.ParserError as err:
        msg = str(err).strip().splitlines()[-1] if str(err).strip() else "parse error"
        raise InputError(p, f"cannot parse as CSV ({msg})") from None
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(p, f"cannot read file ({err})") from None
    except (ValueError, TypeError) as err:
        raise InputError(p, f"cannot read table ({err})") from None
    except Exception as err:  # pyarrow raises its own types for corrupt Parquet
        if type(err).__module__.startswith("pyarrow"):
            raise InputError(p, f"cannot read Parquet file ({err})") from None
        raise


def read_header(path: str | Path) -> list[str]:
    """The column names of a table (reads only the first rows)."""
    df = read_table(path, nrows=0) if not is_parquet(path) else _parquet_columns(path)
    return [str(c) for c in df.columns] if isinstance(df, pd.DataFrame) else df


def is_parquet(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == _PARQUET_MAGIC


def _parquet_columns(path: str | Path) -> list[str]:
    try:
        import pyarrow.parquet as pq

        return [str(c) for c in pq.read_schema(path).names if not str(c).startswith("__index")]
    except Exception as err:
        raise InputError(path, f"cannot read Parquet file ({err})") from None


def lower_map(columns: list[str]) -> dict[str, str]:
    """lower-cased, stripped column name -> actual column name (first wins)."""
    out: dict[str, str] = {}
    for c in columns:
        out.setdefault(str(c).strip().strip('"').lower(), str(c))
    return out


__all__ = ["is_parquet", "lower_map", "read_header", "read_table", "resolve_input"]
