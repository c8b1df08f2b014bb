"""A fast path for reading our own 0/1 matrix CSVs (``write_matrix`` output) with numpy.

Every data line of such a file ends with ``,d,d,...,d`` (d in 0/1, one per code column), so each
cell sits at a fixed offset from the line's end whatever the id's length. Anything irregular
(quoted ids, other values, ragged rows) returns None and the caller falls back to pandas, which
also produces the error messages. The file's size (decompressed, for gzip) is checked against
the input cap first (``reading.input_bytes``), so a gzip bomb is never inflated into memory here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedsynth.common.data.reading import input_bytes

_ROWS_PER_CHUNK = 2048
_COMMA, _NL, _CR, _QUOTE, _ZERO = ord(","), ord("\n"), ord("\r"), ord('"'), ord("0")


def read_binary_csv(path: Path, n_codes: int, has_id: bool) -> tuple[np.ndarray, list[str]] | None:
    """(X uint8 (n, n_codes), ids) for a regular 0/1 CSV with a header line, or None."""
    input_bytes(path)  # InputError past the cap or for a damaged gzip, before reading it whole
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError):
        return None
    data = np.frombuffer(raw, dtype=np.uint8)
    if not len(data):
        return None
    if data[-1] != _NL:
        data = np.concatenate([data, np.array([_NL], dtype=np.uint8)])
    ends = np.flatnonzero(data == _NL)
    crlf = bool(ends[0] > 0 and data[ends[0] - 1] == _CR)
    ends = ends[1:]  # skip the header line
    if crlf:
        if not (data[ends - 1] == _CR).all():
            return None
        ends = ends - 1
    starts = np.concatenate([[np.flatnonzero(data == _NL)[0] + 1], (ends + 1 + crlf)[:-1]])
    n = len(ends)
    if n == 0:
        return None
    width = 2 * n_codes - (0 if has_id else 1)  # ',d' per code; no leading comma without ids
    body_start = ends - width
    if (body_start < starts).any() or (not has_id and (body_start != starts).any()):
        return None
    X = np.empty((n, n_codes), dtype=np.uint8)
    offsets = np.arange(n_codes) * 2 + (1 if has_id else 0)
    for lo in range(0, n, _ROWS_PER_CHUNK):
        b = body_start[lo : lo + _ROWS_PER_CHUNK, None]
        digits = data[b + offsets] - _ZERO
        commas = data[b + offsets - 1] if has_id else data[b[:, :] + offsets[1:] - 1]
        if (digits > 1).any() or (commas != _COMMA).any():
            return None
        X[lo : lo + _ROWS_PER_CHUNK] = digits
    ids: list[str] = []
    if has_id:
        id_end = body_start
        for s, e in zip(starts.tolist(), id_end.tolist(), strict=True):
            field = raw[s:e]
            if _QUOTE in field or not field.strip():
                return None
            try:
                ids.append(field.decode("utf-8").strip())
            except UnicodeDecodeError:
                return None
    return X, ids
