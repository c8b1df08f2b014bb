"""The records model's number-of-codes column (``record_tokens.model_layout``): one more integer
group after the schema's columns, filled from each patient's own codes, never in the output,
and a column like the others in the column counts' release (sensitivity sqrt(columns + 1))."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.data.record_tokens import (
    model_columns,
    model_layout,
    records_matrix,
    records_to_tokens,
    token_layout,
    tokens_to_table,
)
from fedsynth.common.data.records import load_records
from fedsynth.common.data.schema import CODES_COUNT, schema_for, schema_from_dict
from fedsynth.common.errors import InputError
from fedsynth.privacy.record_counts import release_column_counts, sensitivity


def test_model_layout_is_the_schema_columns_then_the_number_of_codes() -> None:
    schema = schema_for("diabetes130")
    base, model = token_layout(schema), model_layout(schema)
    assert [g.name for g in model.groups] == [*schema.names, CODES_COUNT]
    assert model.groups[:-1] == base.groups  # the schema's tokens are unchanged
    count = model.groups[-1]
    assert count.kind == "count" and count.start == base.n_tokens
    # integers 0..15 one token each, then widening bins up to the public bound 255
    assert count.bounds[:16] == [(float(v), float(v)) for v in range(16)]
    assert count.bounds[-1][1] == 255 and len(count.labels) < 40
    groups, values = model_columns(schema)
    assert groups == model.group_sizes() and len(values) == model.n_tokens
    assert any(values[count.start:])  # read along its order like a numeric column


def test_the_count_token_is_each_patients_own_number_of_codes(diabetes_path) -> None:
    rec = load_records(diabetes_path, "diabetes130").subset(np.arange(3000))
    matrix, layout = records_matrix(rec)
    count = layout.groups[-1]
    tokens = np.asarray(matrix.X[:, count.start:count.stop])
    assert (tokens.sum(axis=1) == 1).all()  # exactly one per patient
    n_codes = np.asarray(rec.codes.X.sum(axis=1)).ravel()
    got = tokens.argmax(axis=1)
    lows = np.array([lo for lo, _ in count.bounds])
    highs = np.array([hi for _, hi in count.bounds])
    assert ((lows[got] <= n_codes) & (n_codes <= highs[got])).all()
    assert (got[n_codes < 16] == n_codes[n_codes < 16]).all()
    # without codes (the baselines' use) the group stays empty
    assert records_to_tokens(rec.table, layout)[:, count.start:].sum() == 0


def test_the_count_is_not_an_output_column() -> None:
    schema = schema_for("diabetes130")
    layout = model_layout(schema)
    scores = np.random.default_rng(0).random((5, layout.n_tokens))
    assert list(tokens_to_table(scores, layout, schema).columns) == schema.names


def test_a_schema_may_not_name_a_column_like_the_count() -> None:
    doc = {"name": "s", "columns": [{"name": CODES_COUNT, "kind": "categorical",
                                     "categories": ["a"]}]}
    with pytest.raises(InputError, match="reserved for the records model's number of codes"):
        schema_from_dict(doc, "s.toml")


def test_one_patient_moves_the_column_counts_by_sqrt_columns_plus_one(diabetes_path) -> None:
    """The neighbouring-dataset check of the column counts' sensitivity with the count column:
    removing one patient changes the exact counts by exactly sqrt(G + 1) in L2 (one token in
    every schema column, one for the count), which is what the release's noise is scaled to."""
    rec = load_records(diabetes_path, "diabetes130").subset(np.arange(400))
    matrix, layout = records_matrix(rec)
    groups = layout.group_sizes()
    T = np.asarray(matrix.X[:, :layout.n_tokens], dtype=np.float64)
    full = T.sum(axis=0)
    complete = np.flatnonzero(T.sum(axis=1) == len(groups))
    assert len(complete) > 0
    moved = np.linalg.norm(full - np.delete(T, complete[0], axis=0).sum(axis=0))
    assert moved == pytest.approx(np.sqrt(len(rec.schema.columns) + 1))
    assert sensitivity(groups) == pytest.approx(moved)
    release = release_column_counts(T, groups, 1.0, rng=np.random.default_rng(0))
    assert release.noise_std == pytest.approx(moved)


def test_recount_sets_a_hand_built_rows_count_from_its_own_codes() -> None:
    """Audit canaries copy a real row's columns and draw their own codes: their count token is
    rewritten from those codes, so they stay valid records."""
    from fedsynth.common.data.record_tokens import recount_codes

    layout = model_layout(schema_for("mimic3"))
    T, count = layout.n_tokens, layout.groups[-1]
    X = np.zeros((3, T + 40), dtype=np.uint8)
    X[:, count.start + 2] = 1  # a copied row's count: 2 codes
    X[0, T:T + 8] = 1
    X[1, T:T + 17] = 1  # the bin [16, 20]
    recount_codes(X, layout)
    assert (X[:, count.start:count.stop].sum(axis=1) == 1).all()
    assert list(X[:, count.start:count.stop].argmax(axis=1)) == [8, 16, 0]
