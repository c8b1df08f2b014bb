"""Whole patient records (issue 16, items 1-2): the real diabetes130 and MIMIC-III demo files as
one record per patient beside the codes, the public schemas, encode/decode, and `ehr-schema`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.data import load_codes
from fedsynth.common.data.record_encoding import layout_from_dict
from fedsynth.common.data.records import decode, encode, load_records
from fedsynth.common.data.schema import (
    read_schema,
    schema_for,
    schema_from_dict,
    schema_to_toml,
    write_schema,
)
from fedsynth.common.data.schema_builtin import DIABETES_MEDICATIONS
from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import icd9_category

CLI = [sys.executable, "-m", "fedsynth.common.cli.schema_cli"]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal columns, dtypes (categories included) and values (assert_frame_equal takes 30 s
    on 57k categorical rows)."""
    assert list(a.columns) == list(b.columns)
    assert all(a[c].dtype == b[c].dtype for c in a.columns)
    assert a.equals(b)


@pytest.fixture(scope="module")
def diabetes(diabetes_path: Path):
    return load_records(diabetes_path, "diabetes130")


@pytest.fixture(scope="module")
def mimic(mimic_path: Path):
    return load_records(mimic_path.parent, "mimic")


def test_diabetes_dev_split_loads_one_record_per_patient(diabetes, diabetes_path: Path) -> None:
    codes = load_codes(diabetes_path, "diabetes130")
    assert diabetes.n_patients == codes.n_patients == 57_179
    assert np.array_equal(diabetes.patient_ids, codes.patient_ids)
    assert np.array_equal(diabetes.codes.X, codes.X)
    schema = schema_for("diabetes130")
    assert list(diabetes.table.columns) == schema.names and len(schema.names) == 45
    for drop in ("encounter_id", "patient_nbr", "diag_1", "diag_2", "diag_3"):
        assert drop not in diabetes.table.columns
    assert len(DIABETES_MEDICATIONS) == 23
    t = diabetes.table
    assert isinstance(t["race"].dtype, pd.CategoricalDtype)
    assert list(t["readmitted"].cat.categories) == ["NO", ">30", "<30"]
    assert "?" in t["race"].cat.categories and (t["race"] == "?").sum() > 0
    assert t["time_in_hospital"].dtype == "Int64"
    assert t["time_in_hospital"].between(1, 14).all()
    assert list(t["insulin"].cat.categories) == ["No", "Steady", "Up", "Down"]
    assert diabetes.report.out_of_schema == {} and diabetes.report.missing == {}


def test_diabetes_record_is_the_first_encounter_checked_by_hand(diabetes,
                                                                diabetes_path: Path) -> None:
    raw = pd.read_csv(diabetes_path, dtype=str, keep_default_na=False)
    raw["enc"] = raw["encounter_id"].astype(np.int64)
    # the patient with the most encounters (40): the first one differs from the others
    pid = raw["patient_nbr"].value_counts().index[0]
    rows = raw[raw["patient_nbr"] == pid]
    assert rows["time_in_hospital"].nunique() > 1
    first = rows.loc[rows["enc"].idxmin()]
    i = int(np.flatnonzero(diabetes.patient_ids == pid)[0])
    got = diabetes.table.iloc[i]
    for col in diabetes.schema.names:
        assert str(got[col]) == first[col], col
    # the codes are every encounter's, not only the first one's
    cats = {icd9_category(c) for c in rows[["diag_1", "diag_2", "diag_3"]].to_numpy().ravel()
            if c != "?"}
    have = {diabetes.codes.vocab.codes[j] for j in np.flatnonzero(diabetes.codes.X[i])}
    assert have == cats


def test_first_encounter_is_the_lowest_encounter_id_not_the_file_order(
        diabetes, diabetes_path: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(diabetes_path, dtype=str, keep_default_na=False)
    many = raw["patient_nbr"].value_counts().index[:30]
    part = raw[raw["patient_nbr"].isin(many)].iloc[::-1]  # latest encounters first
    part.to_csv(tmp_path / "reversed.csv", index=False)
    r = load_records(tmp_path / "reversed.csv", "diabetes130")
    assert r.n_patients == 30
    at = pd.Index(diabetes.patient_ids).get_indexer(r.patient_ids)
    _same(r.table, diabetes.table.iloc[at].reset_index(drop=True))
    assert np.array_equal(r.codes.X, diabetes.codes.X[at])


def test_encode_decode_round_trip_is_exact_on_the_real_records(diabetes, mimic) -> None:
    X, layout = encode(diabetes)
    assert X.dtype == np.float32 and X.shape == (diabetes.n_patients, layout.width)
    assert X.min() >= -1.0 and X.max() <= 1.0
    race = layout.block("race")
    assert race.stop - race.start == 6 and np.all(X[:, race.slice].sum(axis=1) == 1)
    _same(decode(X, layout), diabetes.table)
    assert layout_from_dict(layout.to_dict()) == layout
    X, layout = encode(mimic, dtype=np.float64)
    back = decode(X, layout)
    _same(back.drop(columns="los_days"), mimic.table.drop(columns="los_days"))
    assert np.allclose(back["los_days"].to_numpy(float), mimic.table["los_days"].to_numpy(float),
                       rtol=0, atol=1e-9)
    # decoding clips to the public domain and rounds counts: never a value outside the schema
    wild = np.random.default_rng(0).normal(0, 3, size=(50, layout.width))
    out = decode(wild, layout)
    assert out["n_admissions"].between(1, 1000).all() and out["los_days"].between(0, 730).all()


def test_mimic3_demo_loads_demographics_and_admissions(mimic) -> None:
    t = mimic.table
    assert mimic.n_patients == 100 and mimic.schema.name == "mimic3"
    assert list(t.columns) == ["gender", "age", "ethnicity", "admission_type", "insurance",
                               "los_days", "n_admissions", "hospital_expire_flag"]
    assert not t.isna().any().any() and mimic.report.out_of_schema == {}
    assert t["gender"].value_counts().to_dict() == {"F": 55, "M": 45}
    assert int(t["n_admissions"].sum()) == 129
    assert int((t["hospital_expire_flag"] == "1").sum()) == 40
    assert int((t["age"] == "90+").sum()) == 8  # the DOBs shifted before 1900 (ages > 89)
    assert (t["los_days"] > 0).all()
    i = int(np.flatnonzero(mimic.patient_ids == "10006")[0])  # DOB 3/5/94, admitted 10/23/64
    assert t["age"].iloc[i] == "[70-80)" and t["admission_type"].iloc[i] == "EMERGENCY"
    assert abs(t["los_days"].iloc[i] - (8 * 24 + 20 + 6 / 60) / 24) < 1e-9


def test_mimic3_demo_ages(mimic_path: Path) -> None:
    """The demo's spreadsheet dates (M/D/YY, years shifted by MIMIC) give the age band at the
    first admission; the 8 DOBs written in full before 1900 are MIMIC's shift of ages > 89."""
    r = load_records(mimic_path, "mimic")
    bands = {k: n for k, n in r.table["age"].value_counts().items() if n}
    assert bands == {"[80-90)": 34, "[70-80)": 25, "[60-70)": 12, "90+": 8, "[50-60)": 8,
                     "[40-50)": 7, "[20-30)": 3, "[10-20)": 2, "[30-40)": 1}
    assert r.report.out_of_schema == {} and r.report.missing == {}
    assert not [n for n in r.report.notes if "not in" in n or "no row" in n]


def _mimic_copy(mimic_path: Path, tmp_path: Path) -> Path:
    for name in ("DIAGNOSES_ICD.csv", "PATIENTS.csv", "ADMISSIONS.csv"):
        shutil.copy(mimic_path.parent / name, tmp_path / name)
        (tmp_path / name).chmod(0o644)
    return tmp_path


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("5/26/49 17:19,6/3/49", "yesterday,6/3/49", 1),
     ["ADMISSIONS.csv", "ADMITTIME", "'yesterday'"]),
    (lambda t: t.replace("ADMISSION_TYPE", "ADM_TYPE", 1), ["ADMISSIONS.csv", "ADMISSION_TYPE"]),
    (lambda t: t.replace(",EMERGENCY,", ",EMERGENZY,", 1),
     ["ADMISSIONS.csv", "admission_type", "'EMERGENZY'", "outside schema 'mimic3'"]),
])
def test_malformed_admissions_file_gets_one_line(mimic_path: Path, tmp_path: Path, edit,
                                                 expected) -> None:
    folder = _mimic_copy(mimic_path, tmp_path)
    adm = folder / "ADMISSIONS.csv"
    adm.write_text(edit(adm.read_text()))
    proc = subprocess.run([*CLI, "check", str(folder), "--strict"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(e in line for e in expected), line


def test_out_of_schema_values_are_counted_and_reported(mimic_path: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    folder = _mimic_copy(mimic_path, tmp_path)
    adm = folder / "ADMISSIONS.csv"
    text = adm.read_text().replace(",Medicare,", ",Medicare Gold,", 3)
    adm.write_text(text.replace(",EMERGENCY,", ",EMERGENZY,", 1))
    with caplog.at_level("WARNING"):
        r = load_records(folder, "mimic")
    assert r.report.out_of_schema == {"admission_type": {"EMERGENZY": 1},
                                      "insurance": {"Medicare Gold": 3}}
    assert r.report.out_of_schema_values == 4 and r.report.missing == {}
    assert r.table["insurance"].isna().sum() == 3  # set missing, never guessed
    warned = [m.getMessage() for m in caplog.records if "outside schema" in m.getMessage()]
    assert len(warned) == 1 and "'Medicare Gold' x3" in warned[0]
    with pytest.raises(InputError, match="encode with|no value"):
        encode(r)
    X, layout = encode(r, missing="zeros")
    assert X[:, layout.block("insurance").slice].sum() == r.n_patients - 3


def test_long_table_with_a_schema_file(tmp_path: Path) -> None:
    data = tmp_path / "long.csv"
    data.write_text("patient_id,code,sex,visits\n1,250.0,F,3\n1,401.9,F,3\n2,428,M,0\n3,V45,X,2\n")
    schema = tmp_path / "s.toml"
    schema.write_text('name = "mine"\n[[columns]]\nname = "sex"\nkind = "categorical"\n'
                      'categories = ["F", "M"]\n[[columns]]\nname = "visits"\nkind = "integer"\n'
                      'low = 0\nhigh = 10\ntransform = "log1p"\n')
    r = load_records(data, "long", schema=schema)
    assert list(r.patient_ids) == ["1", "2", "3"] and r.codes.X.sum() == 4
    assert r.table["visits"].tolist() == [3, 0, 2]
    assert r.report.out_of_schema == {"sex": {"X": 1}}
    with pytest.raises(InputError, match="needs a schema"):
        load_records(data, "long")
    with pytest.raises(InputError, match=r"long.csv: column 'sex': value 'X' is outside"):
        load_records(data, "long", schema=schema, strict=True)


def test_mimic4_layout_and_two_digit_years(tmp_path: Path) -> None:
    hosp = tmp_path / "hosp"
    hosp.mkdir()
    (hosp / "diagnoses_icd.csv").write_text(
        "subject_id,hadm_id,seq_num,icd_code,icd_version\n1,11,1,4019,9\n1,12,1,I10,10\n"
        "2,21,1,25000,9\n")
    (hosp / "patients.csv").write_text(
        "subject_id,gender,anchor_age,anchor_year\n1,F,52,2150\n2,M,91,2120\n")
    (hosp / "admissions.csv").write_text(
        "subject_id,hadm_id,admittime,dischtime,admission_type,insurance,race,"
        "hospital_expire_flag\n"
        "1,12,2155-03-01 10:00:00,2155-03-04 22:00:00,URGENT,Medicare,WHITE,0\n"
        "1,11,2151-06-10 08:00:00,2151-06-12 08:00:00,EW EMER.,Medicaid,WHITE,0\n"
        "2,21,2121-01-01 00:00:00,2121-01-11 12:00:00,ELECTIVE,Other,ASIAN,1\n")
    r = load_records(tmp_path, "mimic")
    assert r.schema.name == "mimic4" and r.report.out_of_schema == {}
    assert r.table["age"].tolist() == ["[50-60)", "90+"]
    assert r.table["admission_type"].tolist() == ["EW EMER.", "ELECTIVE"]
    assert r.table["los_days"].tolist() == [2.0, 10.5]
    assert r.table["n_admissions"].tolist() == [2, 1]
    # spreadsheet dates (M/D/YY): a stay and a patient's admissions across a century boundary
    (hosp / "patients.csv").write_text("subject_id,gender,dob\n1,F,1/2/30 0:00\n"
                                       "2,M,1844-07-18 00:00:00\n")
    (hosp / "admissions.csv").write_text(
        "subject_id,hadm_id,admittime,dischtime,admission_type,insurance,ethnicity,"
        "hospital_expire_flag\n1,12,1/5/00 10:00,1/6/00 10:00,URGENT,Private,WHITE,0\n"
        "1,11,12/31/99 22:00,1/1/00 10:00,EMERGENCY,Medicare,WHITE,0\n"
        "2,21,3/7/45 0:00,3/9/45 0:00,ELECTIVE,Medicare,ASIAN,1\n")
    r = load_records(tmp_path, "mimic")
    assert r.schema.name == "mimic3"
    assert r.table["admission_type"].tolist() == ["EMERGENCY", "ELECTIVE"]
    assert r.table["los_days"].tolist() == [0.5, 2.0]
    assert r.table["age"].tolist() == ["[60-70)", "90+"]  # 99 - 30 - 0 = 69; DOB 1844: > 89


def test_schema_toml_round_trip(tmp_path: Path) -> None:
    for name in ("diabetes130", "mimic3", "mimic4"):
        s = schema_for(name)
        write_schema(s, tmp_path / f"{name}.toml")
        back = read_schema(tmp_path / f"{name}.toml")
        assert back == s and back.columns == s.columns
    odd = schema_from_dict({"name": 'q"uote\\', "columns": [
        {"name": "x", "kind": "categorical", "categories": ['a"b', "é", "a\tb", "?"]},
        {"name": "y", "kind": "real", "low": -1e300, "high": 0.1, "note": "line\nbreak"}]})
    assert schema_from_dict(tomllib.loads(schema_to_toml(odd))) == odd


@pytest.mark.parametrize("doc, problem", [
    ('name = "s"\n', "at least one"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "text"\n', "kind must be"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "integer"\nlow = 5\nhigh = 1\n', "above"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "integer"\nlow = 0.5\nhigh = 1\n', "integer"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "real"\nlow = 0\nhigh = inf\n', "finite"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "categorical"\ncategories = ["x", "x"]\n',
     "twice"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "categorical"\ncategories = ["x"]\n'
     '[[columns]]\nname = "a"\nkind = "categorical"\ncategories = ["y"]\n', "declared twice"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "real"\nlow = -2\nhigh = 1\n'
     'transform = "log1p"\n', "low > -1"),
    ('name = "s"\n[[columns]]\nname = "a"\nkind = "real"\nlow = 0\nhigh = 1\nmax = 3\n',
     "unknown key"),
    ('name = "s"\n[[columns]]\nname = "patient_id"\nkind = "categorical"\ncategories = ["x"]\n',
     "reserved"),
    ('name = "s"\ncolumns = [1, 2\n', "not a valid TOML"),
])
def test_a_bad_schema_file_gets_one_line(tmp_path: Path, doc: str, problem: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(doc)
    with pytest.raises(InputError, match=problem) as err:
        read_schema(f)
    assert str(err.value).startswith(str(f)) and "\n" not in str(err.value)


def test_ehr_schema_show_and_infer_warns(tmp_path: Path, mimic_path: Path) -> None:
    proc = subprocess.run([*CLI, "show", "diabetes130"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert schema_from_dict(tomllib.loads(proc.stdout)) == schema_for("diabetes130")
    out = tmp_path / "inferred.toml"
    proc = subprocess.run([*CLI, "infer", str(mimic_path.parent), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "reveals the data's categories and ranges" in proc.stderr
    inferred = read_schema(out)
    assert inferred.names == schema_for("mimic3").names
    assert inferred.column("insurance").categories == ("Government", "Medicaid", "Medicare",
                                                       "Private")
    assert load_records(mimic_path.parent, schema=out).report.out_of_schema == {}
    for args in (["show", "nope"], ["show", str(tmp_path / "missing.toml")],
                 ["infer", str(tmp_path / "missing.csv"), "--out", str(out)]):
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
