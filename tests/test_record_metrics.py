"""Record metrics (issue 16, item 5): formulas against hand-computed cases, real-vs-itself and
independent columns, the records attribute disclosure, and `ehr-evaluate --records` end to end
on a small subsample of the diabetes130 file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.cli.evaluate import main as evaluate_main
from fedsynth.common.data.records import load_records
from fedsynth.common.data.schema import Column, Schema
from fedsynth.common.gower import gower_dcr, gower_matrix, prepare
from fedsynth.common.record_metrics import (
    association_matrix,
    association_r,
    column_marginals,
    correlation_ratio,
    cramers_v,
    downstream_auroc,
    record_fidelity,
)
from fedsynth.privacy.audit.attribute_records import record_attribute_disclosure

SCHEMA = Schema("toy", (
    Column("kind", "categorical", ("a", "b", "c")),
    Column("flag", "categorical", ("yes", "no")),
    Column("stay", "integer", None, 0, 10),
    Column("labs", "integer", None, 0, 100, "log1p"),
))


def _table(**cols: list) -> pd.DataFrame:
    out = {}
    for c in SCHEMA.columns:
        v = cols[c.name]
        out[c.name] = (pd.Categorical(v, categories=list(c.categories)) if c.is_categorical
                       else pd.array(v, dtype="Int64"))
    return pd.DataFrame(out)


def toy(n: int, seed: int) -> pd.DataFrame:
    """Associated columns: kind drives flag, stay and labs; labs grows with stay."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n)
    flag = np.where(rng.random(n) < np.array([0.9, 0.5, 0.1])[kind], "yes", "no")
    stay = np.clip(kind * 3 + rng.integers(0, 3, n), 0, 10)
    labs = np.clip(stay * 8 + rng.integers(0, 10, n), 0, 100)
    return _table(kind=list(np.array(["a", "b", "c"])[kind]), flag=list(flag),
                  stay=list(stay), labs=list(labs))


WIDE = Schema("wide", SCHEMA.columns + tuple(
    Column(f"noise{i}", "integer", None, 0, 9) for i in range(4)))


def widen(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Four more columns, uniform and unassociated (records become nearly unique)."""
    rng = np.random.default_rng(seed + 1000)
    return df.assign(**{f"noise{i}": pd.array(rng.integers(0, 10, len(df)), dtype="Int64")
                        for i in range(4)})


def shuffled_columns(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every column permuted on its own: the same marginals, no association."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: df[c].to_numpy()[rng.permutation(len(df))] for c in df.columns}
                        ).astype(df.dtypes.to_dict())


# ---------------------------------------------------------------- formulas by hand

def test_total_variation_and_ks_by_hand() -> None:
    real = _table(kind=["a", "a", "b", "c"], flag=["yes"] * 4, stay=[1, 2, 3, 4],
                  labs=[0, 0, 0, 0])
    synth = _table(kind=["a", "b", "b", "b"], flag=["yes"] * 4, stay=[3, 4, 5, 6],
                   labs=[0, 0, 0, 0])
    m = column_marginals(real, synth, SCHEMA)
    # p = (1/2, 1/4, 1/4), q = (1/4, 3/4, 0): TV = (1/4 + 1/2 + 1/4) / 2
    assert m["tv"]["kind"] == pytest.approx(0.5)
    assert m["tv"]["flag"] == 0.0
    # F_real(4) = 1, F_synth(4) = 1/2: the largest gap
    assert m["ks"]["stay"] == pytest.approx(0.5)
    assert m["ks"]["labs"] == 0.0
    assert m["tv_mean"] == pytest.approx(0.25) and m["ks_mean"] == pytest.approx(0.25)


def test_missing_values_are_left_out_of_the_marginals() -> None:
    real = _table(kind=["a", None, "b"], flag=["yes"] * 3, stay=[1, None, 2], labs=[0, 0, 0])
    synth = _table(kind=["a", "b", None], flag=["yes"] * 3, stay=[1, 2, None], labs=[0, 0, 0])
    m = column_marginals(real, synth, SCHEMA)
    assert m["tv"]["kind"] == 0.0 and m["ks"]["stay"] == 0.0


def test_gower_distance_by_hand() -> None:
    a = _table(kind=["a"], flag=["yes"], stay=[2], labs=[0])
    b = _table(kind=["b"], flag=["yes"], stay=[7], labs=[100])
    # kind differs (1), flag equal (0), |2 - 7| / (10 - 0) = 0.5, labs: log1p scale end to end (1)
    assert gower_matrix(prepare(a, SCHEMA), prepare(b, SCHEMA))[0, 0] == pytest.approx(2.5 / 4)
    c = _table(kind=["a"], flag=["yes"], stay=[2], labs=[9])
    # labs 0 vs 9 on the log1p scale: log(10) / log(101)
    expect = math.log(10) / math.log(101) / 4
    assert gower_matrix(prepare(a, SCHEMA), prepare(c, SCHEMA))[0, 0] == pytest.approx(expect,
                                                                                      rel=1e-5)
    assert gower_matrix(prepare(a, SCHEMA), prepare(a, SCHEMA))[0, 0] == 0.0


def test_gower_missing_values() -> None:
    a = _table(kind=[None, "a"], flag=["yes", "yes"], stay=[None, None], labs=[5, 5])
    D = gower_matrix(prepare(a, SCHEMA), prepare(a, SCHEMA))
    # missing category matches nothing (1); missing number vs missing number: 0
    assert D[0, 0] == pytest.approx(1 / 4)
    assert D[0, 1] == pytest.approx(1 / 4)
    b = _table(kind=["a"], flag=["yes"], stay=[3], labs=[5])
    assert gower_matrix(prepare(a, SCHEMA), prepare(b, SCHEMA))[1, 0] == pytest.approx(1 / 4)


def test_gower_chunks_agree_with_a_direct_loop() -> None:
    A, B = toy(700, 1), toy(300, 2)  # 700 rows: two chunks
    D = gower_matrix(prepare(A, SCHEMA), prepare(B, SCHEMA))
    for i, j in [(0, 0), (5, 17), (600, 299), (699, 3)]:
        d = float(A["kind"][i] != B["kind"][j]) + float(A["flag"][i] != B["flag"][j])
        d += abs(int(A["stay"][i]) - int(B["stay"][j])) / 10
        d += abs(math.log1p(int(A["labs"][i])) - math.log1p(int(B["labs"][j]))) / math.log(101)
        assert D[i, j] == pytest.approx(d / 4, abs=1e-6)


def test_cramers_v_and_correlation_ratio_extremes() -> None:
    a = np.repeat([0, 1, 2], 200)
    assert cramers_v(a, a, 3, 3) == pytest.approx(1.0)
    b = np.tile([0, 1], 300)  # exactly independent of a
    assert cramers_v(a, b, 3, 2) == 0.0
    assert correlation_ratio(a, a * 10.0, 3) == pytest.approx(1.0)
    assert correlation_ratio(a, np.tile([1.0, 2.0, 3.0], 200), 3) == 0.0


# ---------------------------------------------------------------- real vs itself, independent

def test_real_against_itself_is_perfect_and_independent_columns_lose_association() -> None:
    real = toy(3000, 0)
    m = column_marginals(real, real, SCHEMA)
    assert m["tv_mean"] == 0.0 and m["ks_mean"] == 0.0
    assert association_r(real, real, SCHEMA) == pytest.approx(1.0)
    other, ind = toy(3000, 1), shuffled_columns(toy(3000, 1), 2)
    assert association_r(real, other, SCHEMA) > 0.95
    assert column_marginals(real, ind, SCHEMA)["tv_mean"] < 0.03
    strong = association_matrix(real, SCHEMA)[np.triu_indices(4, 1)]
    assert strong.min() > 0.3
    assert np.abs(association_matrix(ind, SCHEMA) - np.eye(4)).max() < 0.1
    # with unassociated columns beside them, r separates the two clearly
    real, other, ind = widen(real, 0), widen(other, 1), widen(ind, 2)
    assert association_r(real, other, WIDE) > 0.95
    assert association_r(real, ind, WIDE) < 0.5


def test_downstream_task_and_record_fidelity() -> None:
    train, hold = toy(3000, 0), toy(2000, 1)
    good = downstream_auroc(train, toy(3000, 2), hold, "flag", "yes", SCHEMA)
    bad = downstream_auroc(train, shuffled_columns(toy(3000, 2), 3), hold, "flag", "yes", SCHEMA)
    assert good["auroc_trtr"] > 0.7 and good["auroc_ratio"] > 0.95
    assert bad["auroc_tstr"] < 0.6 and bad["auroc_ratio"] < 0.85
    timings: dict[str, float] = {}
    m = record_fidelity(hold, train, SCHEMA, real_train=train, target="flag=yes",
                        timings=timings)
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    for key in ("tv_mean", "ks_mean", "tv.kind", "ks.labs", "association_r",
                "downstream_auroc_ratio", "discriminator_auroc", "dcr_auroc"):
        assert key in m
    assert m["dcr_exact_members"] == 1.0  # the 'synthetic' records are the members
    assert set(timings) >= {"marginals", "association", "downstream", "discriminator", "dcr"}


def test_dcr_flags_copies_and_not_fresh_samples() -> None:
    members, hold = widen(toy(2000, 0), 0), widen(toy(2000, 1), 1)
    copies = gower_dcr(members, hold, members, WIDE, max_rows=500)
    assert copies["dcr_exact_members"] == 1.0 and copies["dcr_auroc"] > 0.6
    assert copies["dcr_closer_to_members"] > 0.55  # 500 of the 2,000 copies are sampled
    fresh = gower_dcr(members, hold, widen(toy(2000, 2), 2), WIDE, max_rows=500)
    assert abs(fresh["dcr_auroc"] - 0.5) < 0.1


def test_record_attribute_disclosure_sees_copies() -> None:
    members, hold = widen(toy(1500, 0), 0), widen(toy(1500, 1), 1)
    leak = record_attribute_disclosure(members, hold, members, WIDE, "flag", n_targets=300)
    assert leak["accuracy_members_synth"] == 1.0
    assert leak["gain_over_nonmembers"] > 0.1 and leak["gain_over_baseline"] > 0.1
    fresh = record_attribute_disclosure(members, hold, widen(toy(1500, 2), 2), WIDE, "flag",
                                        n_targets=300)
    assert abs(float(fresh["gain_over_nonmembers"])) < 0.1


# ---------------------------------------------------------------- ehr-evaluate --records

@pytest.fixture(scope="module")
def diabetes_files(diabetes_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """600 diabetes130 patients (all their encounter rows): 400 train, 200 held out, and the
    train part written in the records output format as a stand-in 'synthetic' file."""
    tmp = tmp_path_factory.mktemp("records")
    raw = pd.read_csv(diabetes_path, dtype=str, keep_default_na=False, nrows=3000)
    pids = raw["patient_nbr"].drop_duplicates().to_numpy()[:600]
    rows = {"train.csv": raw[raw["patient_nbr"].isin(pids[:400])],
            "hold.csv": raw[raw["patient_nbr"].isin(pids[400:])]}
    for name, df in rows.items():
        df.to_csv(tmp / name, index=False)
    train = load_records(tmp / "train.csv", "diabetes130")
    hold = load_records(tmp / "hold.csv", "diabetes130", vocab=train.codes.vocab)
    for name, rec in (("syn.csv", train), ("self.parquet", hold)):
        df = pd.concat([pd.DataFrame({"patient_id": rec.patient_ids}), rec.table,
                        pd.DataFrame(rec.codes.X, columns=list(rec.codes.vocab.codes))], axis=1)
        if name.endswith(".parquet"):
            df.to_parquet(tmp / name, index=False)  # typed: categories, nullable integers
        else:
            df.to_csv(tmp / name, index=False)
    return tmp


def test_ehr_evaluate_records_end_to_end(diabetes_files: Path) -> None:
    d = diabetes_files
    out = d / "m.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsynth.common.cli.evaluate", str(d / "hold.csv"),
         str(d / "syn.csv"), "--records", "--format", "diabetes130", "--train",
         str(d / "train.csv"), "--target", "readmitted=<30", "--plot-dir", str(d / "plots"),
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(out.read_text())
    r = m["records"]
    assert all(math.isfinite(v) for v in r.values())
    assert r["n_real"] == 200 and r["n_synth"] == 400
    assert len([k for k in r if k.startswith("tv.")]) == 37
    assert len([k for k in r if k.startswith("ks.")]) == 8
    assert 0.0 < r["tv_mean"] < 0.2 and 0.0 < r["ks_mean"] < 0.3
    assert {"downstream_auroc_tstr", "downstream_auroc_trtr", "discriminator_auroc"} <= set(r)
    assert r["dcr_exact_members"] == 1.0  # the 'synthetic' file is the train part
    assert 0.0 <= m["prevalence_r"] <= 1.0  # the codes, scored as before
    assert m["synth_out_of_schema"] == {}
    assert len(list((d / "plots").glob("*.png"))) == 45


def test_real_records_against_themselves(diabetes_files: Path, capsys) -> None:
    d = diabetes_files
    out = d / "self.json"
    evaluate_main([str(d / "hold.csv"), str(d / "self.parquet"), "--records", "--format",
                   "diabetes130", "--out", str(out)])
    r = json.loads(out.read_text())["records"]
    assert r["tv_mean"] == 0.0 and r["ks_mean"] == 0.0
    assert r["association_r"] == pytest.approx(1.0)
    assert "dcr_auroc" not in r  # no --train
    assert "downstream_auroc_ratio" in r  # the default task readmitted=<30, on halves of REAL


@pytest.mark.parametrize("case", ["missing_column", "bad_target", "numeric_target",
                                  "schema_without_records", "foreign_code"])
def test_one_line_errors(diabetes_files: Path, case: str, capsys) -> None:
    d = diabetes_files
    syn = pd.read_csv(d / "syn.csv", dtype=str, keep_default_na=False)
    args = [str(d / "hold.csv"), str(d / f"{case}.csv"), "--records", "--format", "diabetes130"]
    if case == "missing_column":
        syn = syn.drop(columns=["race"])
    elif case == "bad_target":
        args += ["--target", "readmitted=soon"]
    elif case == "numeric_target":
        args += ["--target", "time_in_hospital=long"]
    elif case == "schema_without_records":  # a codes file: not records, so --schema is wrong
        syn = syn.drop(columns=["race"])
        args = [a for a in args if a != "--records"] + ["--schema", "diabetes130"]
    else:
        syn["ZZZ9"] = "0"
    syn.to_csv(d / f"{case}.csv", index=False)
    with pytest.raises(SystemExit) as exc:
        evaluate_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    expect = {"missing_column": "column 'race' of schema 'diabetes130' not found",
              "bad_target": "'soon' is not a category of 'readmitted'",
              "numeric_target": "'time_in_hospital' is numeric",
              "schema_without_records": "--schema needs --records",
              "foreign_code": "nor codes of the real data's vocabulary"}[case]
    assert expect in err[0]


def test_records_are_detected_and_scored_on_readmission_by_default(diabetes_files: Path,
                                                                  capsys) -> None:
    """An ehr-sample records file needs no --records: SYNTH holds every schema column; a schema
    with readmitted scores the downstream task readmitted=<30 without --target."""
    d = diabetes_files
    evaluate_main([str(d / "hold.csv"), str(d / "syn.csv"), "--format", "diabetes130"])
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "diabetes130" and "tv_mean" in out["records"]
    assert "downstream_auroc_ratio" in out["records"] or "downstream_auroc_synth" in out["records"]
