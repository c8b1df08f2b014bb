"""Reading a user's table (CSV, gzip'd CSV, Parquet) into pandas, with one-line errors.

Every read is capped: the table text the parser would see (a plain file's size, a gzip's
decompressed size, a Parquet file's uncompressed size) may not exceed ``max_input_bytes()``,
``FEDSYNTH_MAX_INPUT_BYTES`` (default 1 GiB). Why 1 GiB: pandas holds every cell as a Python
string, about 20 bytes of memory per byte of CSV (a 0.2 GiB long table peaked at 4.5 GB RSS), so
1 GiB of text already needs a ~20 GB machine, while the largest public diagnoses extracts
(MIMIC-IV's 4.8 M rows) are a fraction of it. A gzip is counted by streaming it through zlib
(output discarded, memory constant) before any parse, so a bomb is refused after at most the
limit's worth of inflation (~0.6 s for 1 GiB) instead of exhausting memory, and a truncated or
corrupt gzip is refused wherever the damage is, not only in its first bytes.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import stat
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
MAX_INPUT_ENV = "FEDSYNTH_MAX_INPUT_BYTES"
DEFAULT_MAX_INPUT_BYTES = 1 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_READ_CHUNK = 1 << 20  # compressed bytes per read while counting a gzip
_INFLATE_CHUNK = 1 << 22  # decompressed bytes per step: memory stays constant
_size_cache: dict[tuple[object, ...], int] = {}


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


def max_input_bytes() -> int:
    """The cap on table text per input file: ``FEDSYNTH_MAX_INPUT_BYTES`` (bytes, or with a
    K/M/G/T suffix in powers of 1024, e.g. ``4G``), default 1 GiB (see the module docstring)."""
    raw = os.environ.get(MAX_INPUT_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_INPUT_BYTES
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:I?B)?", raw.upper())
    if m is None or int(m.group(1)) == 0:
        raise InputError(MAX_INPUT_ENV, f"must be a positive number of bytes such as 4G, "
                         f"found {raw!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _too_large(p: Path, what: str, limit: int) -> InputError:
    return InputError(p, f"{what} more than {_human(limit)}, the input limit",
                      f"Set {MAX_INPUT_ENV} (e.g. 4G) to raise it on a machine with ~20x that "
                      "much memory")


def input_bytes(path: str | Path) -> int:
    """Bytes of table text in ``path`` (decompressed for gzip), checked against the cap.

    Raises InputError (one line) when the text exceeds ``max_input_bytes()`` and when a gzip
    is truncated or corrupt anywhere in the stream (CRC and length trailers included). The
    result is cached per file version (path, size, mtime, inode), so the loaders' several reads
    of one file count it once.
    """
    p = Path(path)
    limit = max_input_bytes()
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):  # never opened: a pipe or a device would block
            raise InputError(p, "is a directory" if stat.S_ISDIR(st.st_mode)
                             else "not a regular file")
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise InputError(p, f"cannot read file ({err.strerror})") from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, limit)
    if key in _size_cache:
        return _size_cache[key]
    if magic.startswith(_GZIP_MAGIC):
        size = _gzip_size(p, limit)
    elif magic == _PARQUET_MAGIC:
        size = _parquet_size(p)
        if size > limit:
            raise _too_large(p, f"Parquet data of {_human(size)} uncompressed is", limit)
    else:
        size = st.st_size
        if size > limit:
            raise _too_large(p, f"file of {_human(size)} is", limit)
    if len(_size_cache) > 64:
        _size_cache.clear()
    _size_cache[key] = size
    return size


def _gzip_size(p: Path, limit: int) -> int:
    """Decompressed size of every gzip member, output discarded; InputError past ``limit``."""
    total, d, data = 0, zlib.decompressobj(31), b""  # 31: gzip wrapper, CRC/ISIZE checked
    try:
        with open(p, "rb") as fh:
            while True:
                if not data:
                    data = fh.read(_READ_CHUNK)
                    if not data:
                        break
                if d is None:  # between members: zero padding, or the next member
                    data = data.lstrip(b"\0")
                    if not data:
                        continue
                    d = zlib.decompressobj(31)
                total += len(d.decompress(data, _INFLATE_CHUNK))
                if total > limit:
                    raise _too_large(p, "decompresses to", limit)
                data = d.unconsumed_tail
                if d.eof:
                    data, d = d.unused_data, None
            while d is not None and not d.eof:  # output zlib still holds for consumed input
                out = d.decompress(b"", _INFLATE_CHUNK)
                if not out:
                    break
                total += len(out)
                if total > limit:
                    raise _too_large(p, "decompresses to", limit)
    except zlib.error as err:
        raise InputError(p, f"corrupt gzip file ({err})",
                         "Download or copy it again") from None
    except OSError as err:
        raise InputError(p, f"cannot read file ({err.strerror or err})") from None
    if d is not None and not d.eof:
        raise InputError(p, f"truncated gzip file (the compressed stream ends after "
                         f"{_human(total)} of text)", "Download or copy it again")
    return total


def _parquet_size(p: Path) -> int:
    """Uncompressed bytes of a Parquet file's row groups, from its footer (no data read)."""
    try:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(p).metadata
        return int(sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
    except Exception as err:  # pyarrow raises its own types for a corrupt footer
        raise InputError(p, f"cannot read Parquet file ({err})") from None


def check_unique_columns(path: str | Path, columns: list[str]) -> None:
    """Two columns with one name (compared as the loaders look names up: stripped, without
    quotes, any case) are an error: pandas would rename the second ('code.1') and the loaders
    would read only the first, silently dropping half of the data."""
    seen: dict[str, str] = {}
    for c in columns:
        key = str(c).strip().strip('"').lower()
        if not key:
            continue  # unnamed (e.g. trailing commas): never looked up by name
        if key in seen:
            both = repr(c) if seen[key] == str(c) else f"{seen[key]!r} and {str(c)!r}"
            raise InputError(path, f"column {both} appears more than once",
                             "Rename or remove the duplicate column")
        seen[key] = str(c)


def _raw_header(p: Path, sep: str, gz: bool) -> list[str]:
    """The header row's names as written (pandas renames duplicates when it uses them). Read
    with the csv module: pandas builds one column object per name, seconds for a 100,000-column
    header; a header field over csv's size limit falls back to pandas."""
    opener = gzip.open if gz else open
    with opener(p, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
        try:
            for row in csv.reader(fh, delimiter=sep):
                if len(row) > 1 or (row and row[0].strip()):  # pandas skips blank lines
                    return row
            return []
        except csv.Error:
            pass
    first = pd.read_csv(
        p, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False, na_values=[],
        encoding="utf-8-sig", compression="gzip" if gz else None, index_col=False,
    )
    return [str(v) for v in first.iloc[0].tolist()] if len(first) else []


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
    input_bytes(p)  # the cap, and a damaged gzip refused wherever the damage is
    head, gz, parquet = _head_bytes(p)
    try:
        if parquet:
            check_unique_columns(p, _parquet_columns(p))
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
            check_unique_columns(p, _raw_header(p, sep, gz))
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
    except MemoryError:
        raise InputError(p, "not enough memory to read this table",
                         "Use a machine with more memory or a smaller extract") from None
    except Exception as err:  # pyarrow raises its own types for corrupt Parquet
        if type(err).__module__.startswith("pyarrow"):
            raise InputError(p, f"cannot read Parquet file ({err})") from None
        raise


def read_header(path: str | Path) -> list[str]:
    """The column names of a table (reads only the first rows)."""
    input_bytes(path)  # a directory or a pipe is refused before it is opened
    if not is_parquet(path):
        return [str(c) for c in read_table(path, nrows=0).columns]
    columns = _parquet_columns(path)
    check_unique_columns(path, columns)
    return columns


def check_full_rows(path: str | Path, df: pd.DataFrame) -> None:
    """A CSV row with fewer fields than the header (a file cut short, a lost delimiter) is an
    error naming the row: pandas fills the absent cells with '' exactly like empty fields, so
    they would silently read as missing values. Only when ``df`` (the file or the columns read
    from it) has an empty cell are the field counts read, with the csv module (one pass)."""
    p = Path(path)
    if df.empty or is_parquet(p) or not (df.astype(str) == "").to_numpy().any():
        return
    head, gz, _ = _head_bytes(p)
    sep = _check_text(p, head)
    opener = gzip.open if gz else open
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, max_input_bytes()))  # a 50-million-character field
    try:
        with opener(p, "rt", encoding="utf-8-sig", newline="") as fh:  # type: ignore[operator]
            rows = (r for r in csv.reader(fh, delimiter=sep) if len(r) > 1 or (r and r[0].strip()))
            width = len(next(rows, []))
            for i, row in enumerate(rows):
                if len(row) < width:
                    raise InputError(p, f"data row {i + 1} has {len(row)} fields, the header "
                                     f"{width}", "Was the file cut short? Copy it again")
    except csv.Error:
        return  # what the csv module cannot split, pandas has already refused or read
    finally:
        csv.field_size_limit(limit)


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


__all__ = ["MAX_INPUT_ENV", "check_full_rows", "check_unique_columns", "input_bytes",
           "is_parquet", "lower_map", "max_input_bytes", "read_header", "read_table",
           "resolve_input"]
