"""The outcome column of a records model (``common.model.outcome``, ``privacy.outcome_counts``):
the schema declares it, the pair tables are counted like an independent crosstab, their release
moves by at most sqrt(tables) per patient and draws its noise from the OS, the fit brings a
model's outcome to the measured rates within each column, and a model folder whose outcome file
does not fit its columns is refused with one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.data.schema import read_schema, schema_for, schema_from_dict, write_schema
from fedsynth.common.errors import InputError
from fedsynth.common.model import outcome as om
from fedsynth.privacy import outcome_counts as oc

SIZES = (3, 4, 2)  # the outcome (3 values), a column of 4 values, one of 2
OUTCOME = 0


def _cols(**extra: object) -> list[dict[str, object]]:
    return [{"name": "stay", "kind": "integer", "low": 0, "high": 9, **extra},
            {"name": "back", "kind": "categorical", "categories": ["no", "yes"]}]


def test_the_schema_declares_at_most_one_categorical_outcome(tmp_path) -> None:
    doc = {"name": "s", "columns": _cols()}
    doc["columns"][1]["outcome"] = True
    schema = schema_from_dict(doc)
    assert schema.outcome == "back"
    write_schema(schema, tmp_path / "s.toml")
    assert read_schema(tmp_path / "s.toml").outcome == "back"  # kept by the TOML round trip
    with pytest.raises(InputError, match="only a categorical column"):
        schema_from_dict({"name": "s", "columns": _cols(outcome=True)})
    both = {"name": "s", "columns": [*_cols(), {"name": "died", "kind": "categorical",
                                                 "categories": ["0", "1"], "outcome": True}]}
    both["columns"][1]["outcome"] = True
    with pytest.raises(InputError, match="at most one"):
        schema_from_dict(both)
    with pytest.raises(InputError, match="'outcome' must be true or false"):
        schema_from_dict({"name": "s", "columns": [{**_cols()[1], "outcome": "yes"}]})
    assert schema_for("diabetes130").outcome == "readmitted"
    assert schema_for("mimic3").outcome == "hospital_expire_flag"
    assert schema_from_dict({"name": "s", "columns": _cols()}).outcome is None


def _index(n: int, seed: int, rate_of: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) tokens: column 1 uniform on 4 values, column 2 on 2, the outcome either at
    rates (0.6, 0.3, 0.1) whatever the columns (``rate_of`` None: a model that missed the
    link) or with P(outcome = 2 | column 1 = v) = rate_of[v]; a few values missing."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.integers(0, 4, n), rng.integers(0, 2, n)
    if rate_of is None:
        y = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    else:
        hi = rng.random(n) < rate_of[x1]
        y = np.where(hi, 2, rng.choice(2, n, p=[0.7, 0.3]))
    index = np.stack([y, x1, x2], axis=1)
    index[rng.random(n) < 0.02, 2] = -1
    return index


def test_pair_tables_are_the_crosstab_of_present_values() -> None:
    index = _index(3000, 0)
    index[:7, 0] = -1  # outcome missing: in no table
    tables = om.pair_tables(index, OUTCOME, [1, 2], SIZES)
    for c, t in zip([1, 2], tables, strict=True):
        ok = (index[:, c] >= 0) & (index[:, 0] >= 0)
        ref = pd.crosstab(index[ok, c], index[ok, 0]).reindex(
            index=range(SIZES[c]), columns=range(3), fill_value=0).to_numpy()
        np.testing.assert_array_equal(t, ref)
    with pytest.raises(ValueError, match="other than the outcome"):
        om.pair_tables(index, OUTCOME, [0], SIZES)


def test_a_patient_moves_the_released_tables_by_at_most_sqrt_tables() -> None:
    """Neighbouring data sets built by hand: one more patient with every value present moves
    the concatenated tables by exactly sqrt(P); one without an outcome moves nothing."""
    index = _index(500, 1)
    for extra, moved in (([[2, 3, 1]], np.sqrt(2)), ([[1, 0, -1]], 1.0), ([[-1, 2, 0]], 0.0)):
        bigger = np.vstack([index, extra])
        a, std_a = oc.release_pair_counts(om.pair_tables(index, OUTCOME, [1, 2], SIZES), 1.5,
                                          rng=np.random.default_rng(4))
        b, _ = oc.release_pair_counts(om.pair_tables(bigger, OUTCOME, [1, 2], SIZES), 1.5,
                                      rng=np.random.default_rng(4))
        d = np.linalg.norm(np.concatenate([(y - x).ravel() for x, y in zip(a, b, strict=True)]))
        assert d == pytest.approx(moved)
        assert d <= oc.sensitivity(2) + 1e-12
        assert std_a == pytest.approx(1.5 * np.sqrt(2))


def test_the_release_draws_its_noise_from_the_os_at_z_sqrt_tables(monkeypatch) -> None:
    tables = om.pair_tables(_index(2000, 2), OUTCOME, [1, 2], SIZES)
    a, _ = oc.release_pair_counts(tables, 2.0)
    b, _ = oc.release_pair_counts(tables, 2.0)
    assert not np.allclose(a[0], b[0])  # no seed: two releases differ
    asked: list[float] = []

    def fake(shape, std):
        asked.append(std)
        return np.zeros(shape)

    monkeypatch.setattr(oc, "gaussian", fake)
    same, std = oc.release_pair_counts(tables, 2.0)
    assert asked == [2.0 * np.sqrt(2)] * 2 and std == asked[0]
    np.testing.assert_array_equal(same[1], tables[1])
    # the std over many cells of a seeded release, computed independently
    big = [np.zeros((200, 3)) for _ in range(8)]
    noisy, _ = oc.release_pair_counts(big, 0.7, rng=np.random.default_rng(0))
    assert np.concatenate([t.ravel() for t in noisy]).std() == pytest.approx(
        0.7 * np.sqrt(8), rel=0.03)


def test_columns_are_chosen_by_the_model_samples_mutual_information() -> None:
    sample = _index(20000, 3, rate_of=np.array([0.02, 0.1, 0.3, 0.6]))
    assert om.choose_columns(sample, OUTCOME, SIZES, 1) == [1]
    assert om.choose_columns(sample, OUTCOME, SIZES, 5) == [1, 2]
    x = np.array([0, 0, 1, 1])
    assert om.mutual_information(x, x, 2, 2) == pytest.approx(np.log(2))


@pytest.mark.parametrize("std", [0.0, 20.0])
def test_the_redrawn_outcome_has_the_measured_rate_within_each_value(std: float) -> None:
    """A model sample whose outcome ignores column 1; real patients whose outcome rises with
    it. After the fit (exact tables, or tables with noise of std 20 and shrinkage), the
    redrawn outcome's rate within each value of column 1 is the real one, the other columns
    are untouched and a fresh sample of the model gets the same rates."""
    rate = np.array([0.02, 0.1, 0.3, 0.6])
    real = _index(40000, 5, rate_of=rate)
    sample = _index(20000, 6)
    tables = om.pair_tables(real, OUTCOME, [1, 2], SIZES)
    if std:
        tables, _ = oc.release_pair_counts(tables, std / np.sqrt(2), rng=np.random.default_rng(1))
    model = om.fit_outcome(sample, OUTCOME, SIZES, [1, 2], tables, std)
    fresh = _index(20000, 7)
    y = om.redraw(fresh, model, np.random.default_rng(0))
    got = np.array([(y[fresh[:, 1] == v] == 2).mean() for v in range(4)])
    np.testing.assert_allclose(got, rate, atol=0.03)
    real_rates = np.bincount(real[:, 0], minlength=3) / len(real)
    np.testing.assert_allclose(np.bincount(y, minlength=3) / len(y), real_rates, atol=0.02)
    # the model round-trips through its file's dict
    again = om.OutcomeModel.from_dict(model.to_dict())
    np.testing.assert_array_equal(om.redraw(fresh, again, np.random.default_rng(0)), y)


def test_a_value_no_real_patient_has_keeps_the_models_rate() -> None:
    sample = _index(20000, 8)
    real = _index(20000, 9)
    real = real[real[:, 1] != 3]  # nobody real with value 3
    model = om.fit_outcome(sample, OUTCOME, SIZES, [1],
                           om.pair_tables(real, OUTCOME, [1], SIZES), 0.0)
    y = om.redraw(sample, model, np.random.default_rng(1))
    got = np.bincount(y[sample[:, 1] == 3], minlength=3) / (sample[:, 1] == 3).sum()
    np.testing.assert_allclose(got, [0.6, 0.3, 0.1], atol=0.03)


def test_the_pair_release_is_planned_before_dp_sgd_and_the_run_stays_within_budget() -> None:
    """The plan holds the pair counts as a mechanism of their own at the counts' sigma; DP-SGD's
    sigma is calibrated over all of them, and the composition (recomputed by the accountant)
    stays at the target. Off (no outcome, or 0 columns): no pair mechanism, a smaller sigma."""
    from fedsynth.client.private_train import plan_private
    from fedsynth.common.config import Config
    from fedsynth.privacy.accountant import epsilon

    def plan(outcome_group: int, columns: int = 10):
        cfg = Config()
        cfg.privacy.epsilon, cfg.privacy.delta = 3.0, 1e-5
        cfg.model.one_hot_groups, cfg.model.outcome_group = SIZES, outcome_group
        cfg.model.outcome_columns = columns
        return plan_private(20000, cfg, [])

    on, off, zero = plan(0), plan(-1), plan(0, columns=0)
    assert on.pair_noise == on.column_noise == on.count_noise is not None
    assert off.pair_noise is None and zero.pair_noise is None
    assert len(on.mechanisms) == 4 and len(off.mechanisms) == 3
    assert on.noise_multiplier > off.noise_multiplier == zero.noise_multiplier
    assert epsilon(on.mechanisms, 1e-5, "prv") <= 3.0 + 1e-6
