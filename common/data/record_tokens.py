"""Whole records as 0/1 tokens beside the codes, so that the code model learns them jointly.

Every schema column becomes a group of 0/1 token columns, fixed by the PUBLIC schema only:

- categorical: one token per category (``race:0`` = Caucasian; a missing value: none set);
- integer: one token per value for the first ``UNIT_VALUES`` values of the domain, then bins
  whose width grows geometrically (ratio ``BIN_RATIO``) up to the schema's bound
  (``num_lab_procedures:19`` = [35,44]);
- real: geometric bins over [low, high] on the log1p scale.

A record row is the concatenation of its groups (exactly one token per group, none when the
value is missing). Decoding (``tokens_to_table``) takes one token per group (by default the
highest score; ``ehr-sample`` uses ``common.model.record_output.pick_tokens``) and, for a bin,
a value drawn inside it from a seeded generator (post-processing): an integer from the
piecewise-linear density of the sample's own bin shares (``integers_in_bins``), a real value
uniformly.

Choice (issue 16): numeric columns are ordinal tokens rather than EDM-continuous coordinates,
so the existing model (each column a one-hot group with the exact softmax posterior,
``common.model.binary``), its DP-SGD, its count releases and its federation apply; the price is
that a value inside a bin is drawn, not modelled. The order of a numeric column's tokens is not
lost: ``ordinal_values`` puts each on the schema's [-1, 1] scale (the issue's EDM scale), and
the model reads and shifts each numeric column along it (``common.model.binary``). 16 unit
values and bins widening by 1.25 keep the diabetes130 layout at 490 tokens (631 at 32 and 1.12);
the network's width, and so its training time, grows with the tokens (README: about 1.5x the
codes-only model's on diabetes130). Coarser bins cost more association than they save time: 10
unit values and bins widening by 1.5 (420 tokens) gave association r 0.917 against 0.964.

The number of codes (``model_layout``): the records model also reads and generates each
record's number of codes as one more integer group, ``codes:count`` (public bounds 0..255 on the
log1p scale; a name schemas may not use). It is not an output column (the output's count is the
codes' own); the codes are sampled beside it and follow it. Without it the per-code posteriors
spread the count: on diabetes130 71% of the patients have exactly 3 codes (one encounter's three
diagnoses; more means more encounters, and readmission), 42-45% of the synthetic ones had, and
readmission's link to the count was halved (readmitted within 30 days with 4 codes: 30% real,
13% synthetic). With it 54%, and the readmission ratio rose from 0.928 to 0.948 (README). Like
every column it is in the column counts' release under DP (sensitivity sqrt(columns + 1)).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.atomic import write_json
from fedsynth.common.data.matrix import CodeMatrix
from fedsynth.common.data.schema import CODES_COUNT, Column, Schema, schema_from_dict
from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import Vocabulary

UNIT_VALUES = 16  # integer columns: one token per value for the first 16 values
BIN_RATIO = 1.25  # then bins whose upper edge grows by this factor
REAL_BINS = 40
LAYOUT_FILE = "records_layout.json"
# CODES_COUNT's public bound: 0..255 (a record with more codes falls in the last bin)
CODES_MAX = 255


@dataclass
class Group:
    """One schema column's tokens: ``labels[i]`` is token ``start + i``; numeric groups keep
    each token's [lo, hi] range in ``bounds``."""

    name: str
    kind: str
    start: int
    labels: list[str]
    bounds: list[tuple[float, float]] | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.labels)


@dataclass
class TokenLayout:
    schema: str
    groups: list[Group]

    @property
    def n_tokens(self) -> int:
        return self.groups[-1].stop if self.groups else 0

    def group_sizes(self) -> tuple[int, ...]:
        """Tokens per column, in order (``ModelConfig.one_hot_groups``)."""
        return tuple(len(g.labels) for g in self.groups)

    def tokens(self) -> list[str]:
        """Column names in the model's vocabulary: ``<column>:<i>`` (the label of token i is
        ``labels[i]``: a vocabulary entry may not hold ``=``, brackets or spaces)."""
        return [f"{g.name}:{i}" for g in self.groups for i in range(len(g.labels))]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "groups": [asdict(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TokenLayout:
        groups = [Group(g["name"], g["kind"], int(g["start"]), [str(x) for x in g["labels"]],
                        None if g.get("bounds") is None
                        else [(float(a), float(b)) for a, b in g["bounds"]])
                  for g in doc["groups"]]
        return cls(str(doc["schema"]), groups)


def _integer_bounds(low: int, high: int) -> list[tuple[float, float]]:
    out = [(float(v), float(v)) for v in range(low, min(high, low + UNIT_VALUES - 1) + 1)]
    lo = low + UNIT_VALUES
    while lo <= high:
        if lo < 0:  # below zero the bins shrink toward 0 (mirrored): never one per value
            hi = min(high, -1, max(lo, math.ceil(lo / BIN_RATIO) - 1))
        else:
            hi = min(high, max(lo, math.floor((lo + 1) * BIN_RATIO) - 1))
        out.append((float(lo), float(hi)))
        lo = hi + 1
    return out


def _real_bounds(low: float, high: float) -> list[tuple[float, float]]:
    a, b = math.log1p(max(low, 0.0)), math.log1p(high)
    edges = np.expm1(np.linspace(a, b, REAL_BINS + 1))
    edges[0], edges[-1] = low, high
    return [(float(edges[i]), float(edges[i + 1])) for i in range(REAL_BINS)]


def _label(lo: float, hi: float, kind: str) -> str:
    if kind == "integer":
        return f"{int(lo)}" if lo == hi else f"[{int(lo)},{int(hi)}]"
    return f"[{lo:.4g},{hi:.4g})"


def codes_column() -> Column:
    """A record's number of codes as a numeric column of public bounds (``CODES_COUNT``)."""
    return Column(CODES_COUNT, "integer", low=0, high=CODES_MAX, transform="log1p")


def _group(c: Column, start: int, kind: str) -> Group:
    if c.is_categorical:
        return Group(c.name, kind, start, list(c.categories or ()))
    bounds = (_integer_bounds(int(c.low), int(c.high)) if c.kind == "integer"  # type: ignore[arg-type]
              else _real_bounds(float(c.low), float(c.high)))  # type: ignore[arg-type]
    return Group(c.name, kind, start, [_label(a, b, c.kind) for a, b in bounds], bounds)


def token_layout(schema: Schema) -> TokenLayout:
    """The schema's columns' groups (what the baselines and the output tables use)."""
    groups: list[Group] = []
    for c in schema.columns:
        groups.append(_group(c, groups[-1].stop if groups else 0, c.kind))
    return TokenLayout(schema.name, groups)


def model_layout(schema: Schema) -> TokenLayout:
    """The records model's groups: ``token_layout``'s, then the number of codes
    (``CODES_COUNT``, kind "count"; module docstring)."""
    layout = token_layout(schema)
    layout.groups.append(_group(codes_column(), layout.n_tokens, "count"))
    return layout


def ordinal_values(layout: TokenLayout, schema: Schema) -> tuple[float, ...]:
    """One number per token (``ModelConfig.ordinal_values``): a numeric column's token is the
    midpoint of its [lo, hi] on the schema's [-1, 1] scale (``record_encoding.unit_scale``: log1p
    for counts, public bounds only); a categorical token is 0. The model reads each numeric
    column's expected value through these (``common.model.binary``)."""
    from fedsynth.common.data.record_encoding import unit_scale

    columns = {c.name: c for c in (*schema.columns, codes_column())}
    out: list[float] = []
    for g in layout.groups:
        if g.bounds is None:
            out += [0.0] * len(g.labels)
        else:
            mids = np.array([(lo + hi) / 2.0 for lo, hi in g.bounds])
            out += [round(float(v), 6) for v in unit_scale(mids, columns[g.name])]
    return tuple(out)


def model_columns(schema: Schema) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(``ModelConfig.one_hot_groups``, ``ModelConfig.ordinal_values``) of a records model over
    ``schema``: the public schema's alone, wherever the model is built (ehr-train, the
    coordinator's plan, the site that checks it)."""
    layout = model_layout(schema)
    return layout.group_sizes(), ordinal_values(layout, schema)


def outcome_group(schema: Schema) -> int:
    """``ModelConfig.outcome_group``: the index of the schema's outcome column among the
    records model's groups (``model_layout``), -1 when it has none."""
    name = schema.outcome
    return -1 if name is None else schema.names.index(name)


def set_model_columns(model: Any, schema: Schema | None) -> None:
    """Set a centralized model's public column fields on ``model`` (a ``ModelConfig``) from
    ``schema``: ``model_columns`` and ``outcome_group``; a codes model (None) has none."""
    model.one_hot_groups, model.ordinal_values = ((), ()) if schema is None else \
        model_columns(schema)
    model.outcome_group = -1 if schema is None else outcome_group(schema)


def group_indices(tokens: np.ndarray, groups: tuple[int, ...]) -> np.ndarray:
    """(n, len(groups)) each row's token within each group (-1: none; the first when a row
    has several) of the (n, >= sum(groups)) 0/1 ``tokens``."""
    tokens = np.asarray(tokens)
    out = np.full((len(tokens), len(groups)), -1, dtype=np.int64)
    start = 0
    for j, k in enumerate(groups):
        block = tokens[:, start:start + k]
        on = block.any(axis=1)
        out[on, j] = np.argmax(block[on], axis=1)
        start += k
    return out


def _index(values: pd.Series, group: Group) -> np.ndarray:
    """Token index within the group per row (-1: missing)."""
    if group.bounds is None:
        pos = {label: i for i, label in enumerate(group.labels)}
        return np.array([pos.get(str(v), -1) if not pd.isna(v) else -1 for v in values])
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    uppers = np.array([b for _, b in group.bounds])
    # integers: [lo, hi]; reals: [lo, hi), a value at an upper edge goes to the next bin
    idx = np.searchsorted(uppers, x, side="right" if group.kind == "real" else "left")
    idx = np.minimum(idx, len(uppers) - 1)
    return np.where(np.isnan(x), -1, idx)


def records_to_tokens(table: pd.DataFrame, layout: TokenLayout,
                      codes: Any = None) -> np.ndarray:
    """(n, n_tokens) uint8: one token per group and row (none for a missing value); the
    ``CODES_COUNT`` token from ``codes`` (the rows' 0/1 codes; none when not given)."""
    out = np.zeros((len(table), layout.n_tokens), dtype=np.uint8)
    rows = np.arange(len(table))
    for g in layout.groups:
        if g.kind == "count":
            if codes is None:
                continue
            idx = _count_index(codes, g)
        else:
            idx = _index(table[g.name], g)
        ok = idx >= 0
        out[rows[ok], g.start + idx[ok]] = 1
    return out


def recount_codes(X: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """``X`` (rows of the model's columns: ``layout``'s tokens, then codes) with each row's
    ``CODES_COUNT`` token set from its own codes, in place (rows built by hand, e.g. audit
    canaries, stay valid records)."""
    count = next(g for g in layout.groups if g.kind == "count")
    X[:, count.start:count.stop] = 0
    X[np.arange(len(X)), count.start + _count_index(X[:, layout.n_tokens:], count)] = 1
    return X


def _count_index(codes: Any, group: Group) -> np.ndarray:
    """The ``CODES_COUNT`` token of each row of the 0/1 ``codes`` (its number of codes)."""
    return _index(pd.Series(np.asarray(codes.sum(axis=1)).ravel()), group)


def tokens_to_table(scores: np.ndarray, layout: TokenLayout, schema: Schema,
                    seed: int = 0, pick: Any = None) -> pd.DataFrame:
    """The records of (n, n_tokens) ``scores``: per group the token ``pick(group scores, rng)``
    chooses (default: the highest score); a bin's value uniform inside it (seeded); typed like
    ``load_records``' table."""
    rng = np.random.default_rng([int(seed) % 2**63, 0x7EC0])
    cols: dict[str, Any] = {}
    for g in layout.groups:
        if g.kind == "count":
            continue
        block = scores[:, g.start:g.stop]
        pick_g = np.argmax(block, axis=1) if pick is None else pick(block, rng)
        col: Column = schema.column(g.name)
        if g.bounds is None:
            labels = np.array(g.labels, dtype=object)[pick_g]
            cols[g.name] = pd.Categorical(labels, categories=list(col.categories or ()))
            continue
        lo = np.array([a for a, _ in g.bounds])[pick_g]
        hi = np.array([b for _, b in g.bounds])[pick_g]
        if g.kind == "integer":
            cols[g.name] = pd.array(integers_in_bins(pick_g, g.bounds, rng), dtype="Int64")
        else:
            cols[g.name] = pd.array(lo + rng.random(len(lo)) * (hi - lo), dtype="Float64")
    return pd.DataFrame(cols)


def integers_in_bins(pick: np.ndarray, bounds: list[tuple[float, float]],
                     rng: np.random.Generator) -> np.ndarray:
    """An integer inside each picked bin, drawn from a piecewise-linear density fitted to the
    picks themselves (post-processing of the sample, nothing else): with d_i = (share of bin i)
    / (its width), bin i's density runs linearly from (d_{i-1} + d_i) / 2 at its low edge to
    (d_i + d_{i+1}) / 2 at its high edge, weighted at each integer's midpoint and normalised
    within the bin, so every bin keeps its share. Uniform inside a bin would put a steep
    density's mass at the wrong end (diabetes130's encoding floor, KS of num_lab_procedures
    decoded from its own tokens: 0.028 uniform, 0.007 piecewise-linear)."""
    lo = np.array([a for a, _ in bounds], dtype=np.int64)
    hi = np.array([b for _, b in bounds], dtype=np.int64)
    width = hi - lo + 1
    dens = np.bincount(pick, minlength=len(bounds)) / max(len(pick), 1) / width
    left = (np.concatenate([dens[:1], dens[:-1]]) + dens) / 2
    right = (dens + np.concatenate([dens[1:], dens[-1:]])) / 2
    out = lo[pick].copy()
    for b in np.flatnonzero((width > 1) & (np.bincount(pick, minlength=len(bounds)) > 0)):
        rows = np.flatnonzero(pick == b)
        t = (np.arange(width[b]) + 0.5) / width[b]
        w = np.maximum(left[b] + (right[b] - left[b]) * t, 0.0) + 1e-12
        out[rows] = lo[b] + rng.choice(width[b], size=len(rows), p=w / w.sum())
    return out


def record_vocabulary(layout: TokenLayout, codes: Vocabulary) -> Vocabulary:
    """The model's columns: the schema's tokens (public), then the codes."""
    return Vocabulary(tuple(layout.tokens()) + tuple(codes.codes),
                      name=f"{layout.schema}+{codes.name}")


def records_matrix(records: Any) -> tuple[CodeMatrix, TokenLayout]:
    """(a ``CodeMatrix`` of tokens then codes, its layout) from ``load_records``' result."""
    layout = model_layout(records.schema)
    X = np.hstack([records_to_tokens(records.table, layout, records.codes.X), records.codes.X])
    matrix = CodeMatrix(X, records.patient_ids, record_vocabulary(layout, records.codes.vocab),
                        source=records.codes.source, report=records.codes.report)
    return matrix, layout


def write_layout(model_dir: Any, layout: TokenLayout, schema: Schema) -> None:
    """``model_dir/records_layout.json``: the token layout and the schema (both public)."""
    write_json(Path(model_dir) / LAYOUT_FILE, {"layout": layout.to_dict(),
                                              "schema": schema.to_dict()})


def read_layout(model_dir: Any) -> tuple[TokenLayout, Schema] | None:
    """The layout and schema of a records model; None for a codes-only model."""
    path = Path(model_dir) / LAYOUT_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return TokenLayout.from_dict(doc["layout"]), schema_from_dict(doc["schema"], path)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not a records layout ({err})") from None
