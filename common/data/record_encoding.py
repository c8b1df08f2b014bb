"""Records <-> a float matrix a model can learn from, on scales fixed by the public schema.

A categorical column becomes a one-hot group (one slot per schema category); an integer or real
column becomes one slot scaled to [-1, 1] by the schema's bounds, after log1p for counts.
Nothing is computed from the data (no min/max/mean/std): under DP such statistics would leak
outside the ledger. ``decode`` takes a group's argmax and rounds integers, clipping every value
to the schema's domain, so ``decode(encode(r))`` gives back the records exactly (reals to float
precision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fedsynth.common.data.schema import Column, Schema, schema_from_dict
from fedsynth.common.errors import InputError

if TYPE_CHECKING:
    from fedsynth.common.data.records import Records

MISSING_MODES = ("error", "zeros")


@dataclass(frozen=True)
class Block:
    """The matrix columns ``start:stop`` of one record column."""

    column: str
    kind: str
    start: int
    stop: int

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class Layout:
    """Where each schema column sits in the encoded matrix, in schema order."""

    schema: Schema
    blocks: tuple[Block, ...]

    @property
    def width(self) -> int:
        return self.blocks[-1].stop if self.blocks else 0

    def block(self, column: str) -> Block:
        for b in self.blocks:
            if b.column == column:
                return b
        raise KeyError(column)

    def to_dict(self) -> dict[str, object]:
        """JSON-able (e.g. beside a model); ``layout_from_dict`` reads it back."""
        return {"schema": self.schema.to_dict(),
                "blocks": [[b.column, b.kind, b.start, b.stop] for b in self.blocks]}


def layout_for(schema: Schema) -> Layout:
    blocks, at = [], 0
    for c in schema.columns:
        width = len(c.categories or ()) if c.is_categorical else 1
        blocks.append(Block(c.name, c.kind, at, at + width))
        at += width
    return Layout(schema, tuple(blocks))


def layout_from_dict(d: dict[str, object]) -> Layout:
    layout = layout_for(schema_from_dict(d["schema"], "layout"))
    if [[b.column, b.kind, b.start, b.stop] for b in layout.blocks] != d.get("blocks"):
        raise InputError("layout", "blocks do not match the schema's columns")
    return layout


def _scale(col: Column) -> tuple[float, float]:
    lo, hi = float(col.low), float(col.high)  # type: ignore[arg-type]
    return (np.log1p(lo), np.log1p(hi)) if col.transform == "log1p" else (lo, hi)


def unit_scale(values: np.ndarray, col: Column) -> np.ndarray:
    """A numeric column's values on [-1, 1] by the schema's bounds alone: after log1p for
    ``transform='log1p'``, y = 2 (t - t(low)) / (t(high) - t(low)) - 1 (0 when low == high)."""
    lo, hi = _scale(col)
    v = np.asarray(values, dtype=np.float64)
    t = np.log1p(v) if col.transform == "log1p" else v
    return 2.0 * (t - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros_like(t)


def encode(records: Records, missing: str = "error",
           dtype: type = np.float32) -> tuple[np.ndarray, Layout]:
    """(n_patients x layout.width matrix, layout) of ``records.table``.

    missing: 'error' (a missing value raises InputError naming the column) or 'zeros' (an
    all-zero group / the scale's midpoint 0.0).
    """
    return encode_table(records.table, records.schema, missing, dtype, records.report.path)


def encode_table(table: pd.DataFrame, schema: Schema, missing: str = "error",
                 dtype: type = np.float32, source: object = None) -> tuple[np.ndarray, Layout]:
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, not {missing!r}")
    layout = layout_for(schema)
    X = np.zeros((len(table), layout.width), dtype=dtype)
    for col, b in zip(schema.columns, layout.blocks, strict=True):
        s = table[col.name]
        na = s.isna().to_numpy()
        if na.any() and missing == "error":
            raise InputError(source, f"column {col.name!r}: {int(na.sum())} patients have no "
                             "value (missing or outside the schema)",
                             "Fix the data or extend the schema")
        if col.is_categorical:
            codes = pd.Categorical(s, categories=list(col.categories or ())).codes.astype(np.int64)
            rows = np.flatnonzero(codes >= 0)
            X[rows, b.start + codes[rows]] = 1.0
        else:
            v = s.astype("Float64").to_numpy(dtype="float64", na_value=np.nan)
            X[:, b.start] = np.where(na, 0.0, unit_scale(v, col))
    return X, layout


def decode(matrix: np.ndarray, layout: Layout) -> pd.DataFrame:
    """Records from an encoded (or sampled) matrix: argmax per group, numbers rounded/clipped."""
    M = np.asarray(matrix, dtype=np.float64)
    if M.ndim != 2 or M.shape[1] != layout.width:
        raise ValueError(f"matrix has shape {M.shape}, the layout needs {layout.width} columns")
    out = {}
    for col, b in zip(layout.schema.columns, layout.blocks, strict=True):
        block = M[:, b.slice]
        nan = np.isnan(block).any(axis=1)
        if col.is_categorical:
            best = np.argmax(np.where(nan[:, None], 0.0, block) if nan.any() else block, axis=1)
            codes = np.where(nan, -1, best)
            out[col.name] = pd.Categorical.from_codes(codes, categories=list(col.categories))
            continue
        lo, hi = _scale(col)
        t = lo + (block[:, 0] + 1.0) / 2.0 * (hi - lo)
        with np.errstate(over="ignore", invalid="ignore"):
            v = np.expm1(t) if col.transform == "log1p" else t
            if col.kind == "integer":
                v = np.rint(v)
            v = np.clip(v, col.low, col.high)
        arr = pd.array(np.where(nan, np.nan, v), dtype="Float64")
        out[col.name] = arr.astype("Int64") if col.kind == "integer" else arr
    return pd.DataFrame(out)


__all__ = ["Block", "Layout", "decode", "encode", "encode_table", "layout_for", "unit_scale",
           "layout_from_dict"]
