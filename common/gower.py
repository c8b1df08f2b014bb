"""Gower distance between mixed patient records, on the public schema's scales.

For records a, b over p schema columns (Gower 1971, equal weights):

    d(a, b) = (1/p) * sum_j d_j,   d_j = [a_j != b_j]                          (categorical)
                                   d_j = |t(a_j) - t(b_j)| / (t(high_j) - t(low_j))  (numeric)

with t = log1p for the schema's count columns (``transform='log1p'``), else the identity. The
range is the schema's public bound, never the data's (a data range would depend on the
patients). A missing value differs from any present value by 1 and from another missing one by
0 (categorical: a missing value matches nothing). d is in [0, 1]; 0 is an exact copy.

Computed as one matrix product per chunk: sum_j [a_j == b_j] over the categorical columns is the
dot product of the records' one-hot vectors, so a 2,000 x 20,000 block of 45 columns takes about
a second; the few numeric columns add |differences| column by column.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from fedsynth.common.data.schema import Column, Schema

CHUNK = 512  # query rows per distance block (512 x 20,000 float32 = 40 MB)
_MISSING = 2.0  # a missing numeric value sits outside [0, 1]: |diff| clipped at 1 (see above)


@dataclass(frozen=True)
class GowerRecords:
    """Records prepared for Gower distances: one-hot categories and [0, 1]-scaled numbers."""

    onehot: np.ndarray  # (n, sum of category counts) float32, a missing value all zero
    numeric: np.ndarray  # (n, numeric columns) float32 in [0, 1], _MISSING where missing
    n_columns: int

    def __len__(self) -> int:
        return len(self.onehot)

    def take(self, idx: np.ndarray) -> GowerRecords:
        return GowerRecords(self.onehot[idx], self.numeric[idx], self.n_columns)


def category_codes(s: pd.Series, col: Column) -> np.ndarray:
    """Index of each value in the schema's categories (-1: missing or not a category)."""
    cats = pd.Index(list(col.categories or ()))
    if isinstance(s.dtype, pd.CategoricalDtype):  # map the dtype's categories once
        own = np.r_[cats.get_indexer(s.cat.categories.astype("string")), -1]
        return own[s.cat.codes.to_numpy()].astype(np.int64)  # code -1 (missing) -> -1
    return cats.get_indexer(s.astype("string")).astype(np.int64)


def numeric_values(s: pd.Series) -> np.ndarray:
    """float64 values, NaN where missing or not a number."""
    return pd.to_numeric(s.astype(object), errors="coerce").to_numpy(dtype=np.float64,
                                                                      na_value=np.nan)


def unit_scale(v: np.ndarray, col: Column) -> np.ndarray:
    """Numeric values on [0, 1] by the schema's bounds (after log1p for counts)."""
    lo, hi = float(col.low), float(col.high)  # type: ignore[arg-type]
    if col.transform == "log1p":
        with np.errstate(invalid="ignore", divide="ignore"):
            v, lo, hi = np.log1p(v), float(np.log1p(lo)), float(np.log1p(hi))
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(v)


def prepare(table: pd.DataFrame, schema: Schema,
            columns: Sequence[str] | None = None) -> GowerRecords:
    """A table's schema columns (or the named subset) as ``GowerRecords``."""
    cols = [schema.column(c) for c in (columns if columns is not None else schema.names)]
    hot, num = [], []
    for col in cols:
        if col.is_categorical:
            codes = category_codes(table[col.name], col)
            block = np.zeros((len(table), len(col.categories or ())), dtype=np.float32)
            rows = np.flatnonzero(codes >= 0)
            block[rows, codes[rows]] = 1.0
            hot.append(block)
        else:
            u = unit_scale(numeric_values(table[col.name]), col)
            num.append(np.where(np.isnan(u), _MISSING, u).astype(np.float32))
    n = len(table)
    onehot = np.hstack(hot) if hot else np.zeros((n, 0), np.float32)
    numeric = np.stack(num, axis=1) if num else np.zeros((n, 0), np.float32)
    return GowerRecords(np.ascontiguousarray(onehot), np.ascontiguousarray(numeric), len(cols))


def gower_chunks(Q: GowerRecords, B: GowerRecords,
                 chunk: int = CHUNK) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (row slice of Q, Gower distances of those rows to every row of B) as float32."""
    n_cat = Q.n_columns - Q.numeric.shape[1]
    hot_bt = np.ascontiguousarray(B.onehot.T)
    for start in range(0, len(Q), chunk):
        rows = slice(start, min(start + chunk, len(Q)))
        d = np.float32(n_cat) - Q.onehot[rows] @ hot_bt
        for j in range(Q.numeric.shape[1]):
            diff = np.abs(Q.numeric[rows, j, None] - B.numeric[None, :, j])
            d += np.minimum(diff, 1.0, out=diff)
        d /= np.float32(max(Q.n_columns, 1))
        yield rows, d


def gower_matrix(A: GowerRecords, B: GowerRecords) -> np.ndarray:
    """Full distance matrix (small inputs; tests and hand checks)."""
    out = np.empty((len(A), len(B)), dtype=np.float32)
    for rows, d in gower_chunks(A, B):
        out[rows] = d
    return out


def nearest(Q: GowerRecords, B: GowerRecords) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each Q row to its closest B row, distance of each B row to its closest Q)."""
    q_min = np.empty(len(Q), dtype=np.float32)
    b_min = np.full(len(B), np.inf, dtype=np.float32)
    for rows, d in gower_chunks(Q, B):
        q_min[rows] = d.min(axis=1)
        np.minimum(b_min, d.min(axis=0), out=b_min)
    return q_min, b_min


def gower_dcr(members: pd.DataFrame, holdout: pd.DataFrame, synth: pd.DataFrame,
              schema: Schema, max_rows: int = 2000, seed: int = 0) -> dict[str, float]:
    """Distance to closest record (Gower) of training members and held-out real records.

    Equal-size random samples of members and held-out records (at most ``max_rows`` each) are
    compared with every synthetic record. A generator that copies its training records puts
    members closer than held-out records: ``dcr_auroc`` (members vs held-out scored by -DCR,
    0.5 = no difference), ``dcr_closer_to_members`` (share of synthetic records whose nearest of
    the two samples is a member, ties half: 0.5 = no difference) and the shares of exact copies.
    """
    # its own stream: a plain default_rng(seed).choice would draw the same first rows as any
    # other seed-0 sample of the same population (e.g. a real subsample used as 'synthetic')
    rng = np.random.default_rng((seed, 0xDC2))
    m = min(len(members), len(holdout), max_rows)
    if m < 1 or len(synth) < 1:
        raise ValueError("gower_dcr needs at least one member, held-out and synthetic record")
    mem = members.iloc[np.sort(rng.choice(len(members), m, replace=False))]
    hold = holdout.iloc[np.sort(rng.choice(len(holdout), m, replace=False))]
    S = prepare(synth, schema)
    dm, sm = nearest(prepare(mem, schema), S)
    dh, sh = nearest(prepare(hold, schema), S)
    closer = np.where(sm < sh, 1.0, np.where(sm == sh, 0.5, 0.0))
    y = np.r_[np.ones(m), np.zeros(m)]
    return {
        "dcr_members_median": float(np.median(dm)),
        "dcr_holdout_median": float(np.median(dh)),
        "dcr_members_p05": float(np.quantile(dm, 0.05)),
        "dcr_holdout_p05": float(np.quantile(dh, 0.05)),
        "dcr_exact_members": float(np.mean(dm == 0)),
        "dcr_exact_holdout": float(np.mean(dh == 0)),
        "dcr_auroc": float(roc_auc_score(y, -np.r_[dm, dh])),
        "dcr_closer_to_members": float(closer.mean()),
        "dcr_rows": float(m),
    }


__all__ = ["GowerRecords", "category_codes", "gower_chunks", "gower_dcr", "gower_matrix",
           "nearest", "numeric_values", "prepare", "unit_scale"]
