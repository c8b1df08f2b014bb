"""Crafted bad inputs for the whole-record loaders (issue 16, item 6): never silently wrong.

Each case builds a diabetes130 file, a MIMIC folder (DIAGNOSES_ICD beside PATIENTS and
ADMISSIONS) or a long table with a schema TOML, and loads it with ``load_records`` under a time
limit. The declared outcome is either a one-line InputError naming the file (and, for a value
or column problem, the column and the value), or a result checked exactly: values outside the
schema counted, set missing and named (file, column, value) in one warning line. A few go
through ``ehr-train --columns all`` and ``ehr-schema check``: exit code 2, one stderr line.
"""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from conftest import time_limit

from fedsynth.common.data.reading import MAX_INPUT_ENV
from fedsynth.common.data.record_tokens import token_layout
from fedsynth.common.data.records import Records, load_records
from fedsynth.common.data.schema import schema_for
from fedsynth.common.errors import InputError

LIMIT_S = int(os.environ.get("FEDSYNTH_CASE_LIMIT_S", "20"))
BIN = Path(sys.executable).parent
BIG = 50_000_000  # characters of the overlong value
Build = Callable[[Path], Path]

# ---------------------------------------------------------------- diabetes130 files

DIA = schema_for("diabetes130")
DIA_HEAD = ",".join(["encounter_id", "patient_nbr", *DIA.names, "diag_1", "diag_2", "diag_3"])


def dia_row(enc: object, pid: object, diag: tuple[str, str, str] = ("250", "401", "?"),
            **values: str) -> str:
    """One encounter: every column at a valid value (first category, low + 1), ``values``
    replacing some."""
    cells = {c.name: c.categories[0] if c.categories else str(int(c.low) + 1)  # type: ignore[arg-type]
             for c in DIA.columns}
    cells.update(values)
    return ",".join([str(enc), str(pid), *(cells[n] for n in DIA.names), *diag])


def write(p: Path, data: str | bytes) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def dia(*rows: str, head: str = DIA_HEAD, name: str = "d.csv", nl: str = "\n",
        bom: bool = False, cut: Callable[[bytes], bytes] | None = None) -> Build:
    def build(tmp: Path) -> Path:
        data = ((b"\xef\xbb\xbf" if bom else b"")
                + (nl.join([head, *rows]) + nl).encode())
        if name.endswith(".gz"):
            data = gzip.compress(data)
        return write(tmp / name, cut(data) if cut else data)
    return build


OK2 = (dia_row(1, 7), dia_row(2, 8, ("428", "?", "?"), readmitted="<30"))

# ---------------------------------------------------------------- MIMIC folders

DIAG = "ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE\n1,1,11,1,4019\n2,1,12,1,25000\n3,2,21,1,4280\n"
PAT = "ROW_ID,SUBJECT_ID,GENDER,DOB\n1,1,F,2100-01-01 00:00:00\n2,2,M,2080-06-01 00:00:00\n"
ADM = ("ROW_ID,SUBJECT_ID,HADM_ID,ADMITTIME,DISCHTIME,ADMISSION_TYPE,INSURANCE,ETHNICITY,"
       "HOSPITAL_EXPIRE_FLAG\n"
       "1,1,11,2150-03-01 10:00:00,2150-03-04 22:00:00,EMERGENCY,Medicare,WHITE,0\n"
       "2,1,12,2152-03-01 10:00:00,2152-03-02 10:00:00,URGENT,Private,WHITE,1\n"
       "3,2,21,2140-01-01 00:00:00,2140-01-11 12:00:00,ELECTIVE,Medicaid,ASIAN,0\n")
MIMIC_NAMES = ("DIAGNOSES_ICD.csv", "PATIENTS.csv", "ADMISSIONS.csv")
Table = str | bytes | Callable[[Path], object] | None


def mimic(diag: Table = DIAG, pat: Table = PAT, adm: Table = ADM,
          names: tuple[str, str, str] = MIMIC_NAMES, sub: str = "") -> Build:
    """A folder holding the three tables (None: left out; a callable makes the path itself)."""
    def build(tmp: Path) -> Path:
        folder = tmp / "mimic"
        for name, body in zip(names, (diag, pat, adm), strict=True):
            p = folder / sub / name if sub else folder / name
            if callable(body):
                p.parent.mkdir(parents=True, exist_ok=True)
                body(p)
            elif body is not None:
                raw = body.encode() if isinstance(body, str) else body
                write(p, gzip.compress(raw) if name.endswith(".gz") else raw)
        return folder
    return build


def adm_with(old: str, new: str, count: int = 1) -> Build:
    return mimic(adm=ADM.replace(old, new, count))


def pat_with(old: str, new: str) -> Build:
    return mimic(pat=PAT.replace(old, new, 1))


MIMIC4 = mimic(
    diag="subject_id,hadm_id,seq_num,icd_code,icd_version\n1,11,1,4019,9\n2,21,1,I10,10\n",
    pat="subject_id,gender,anchor_age,anchor_year\n1,F,50,2150\n2,M,91,2140\n",
    adm="subject_id,hadm_id,admittime,dischtime,admission_type,insurance,race,"
        "hospital_expire_flag\n1,11,2150-03-01 10:00:00,2150-03-04 22:00:00,EW EMER.,Medicare,"
        "WHITE,0\n2,21,2140-01-01 00:00:00,2140-01-11 12:00:00,ELECTIVE,Other,ASIAN,1\n",
    names=("diagnoses_icd.csv", "patients.csv", "admissions.csv"), sub="hosp")

# ---------------------------------------------------------------- long tables + schema TOML

LONG = "patient_id,code,sex,visits\n1,250,F,3\n1,401,F,3\n2,428,M,0\n"
SCHEMA = ('name = "s"\n[[columns]]\nname = "sex"\nkind = "categorical"\ncategories = ["F", "M"]\n'
          '[[columns]]\nname = "visits"\nkind = "integer"\nlow = 0\nhigh = 10\n')


def long(body: str = LONG) -> Build:
    return lambda tmp: write(tmp / "l.csv", body)


def toml(text: str = SCHEMA) -> Build:
    return lambda tmp: write(tmp / "s.toml", text)


def schema_with(old: str, new: str) -> Build:
    assert old in SCHEMA, old
    return toml(SCHEMA.replace(old, new, 1))


# ---------------------------------------------------------------- checks of correct results


def column(r: Records, name: str) -> list[object]:
    return [None if pd.isna(v) else v for v in r.table[name].tolist()]


def outside(expected: dict[str, dict[str, int]], **columns: list[object]
            ) -> Callable[[Records], None]:
    """Exactly these values outside the schema, set missing; ``columns``: whole columns."""
    def check(r: Records) -> None:
        assert r.report.out_of_schema == expected
        for name, values in columns.items():
            assert column(r, name) == values, name
    return check


def diabetes_ok(r: Records) -> None:
    assert list(r.patient_ids) == ["7", "8"] and r.report.out_of_schema == {}
    assert column(r, "readmitted") == ["NO", "<30"] and column(r, "time_in_hospital") == [2, 2]
    assert r.report.missing == {} and r.codes.X.sum() == 3


def noted(words: str, then: Callable[[Records], None] = diabetes_ok) -> Callable[[Records], None]:
    def check(r: Records) -> None:
        assert any(words in n for n in r.report.notes), r.report.notes
        then(r)
    return check


def mimic_ok(r: Records) -> None:
    assert r.schema.name == "mimic3" and list(r.patient_ids) == ["1", "2"]
    assert column(r, "age") == ["[50-60)", "[50-60)"]
    assert column(r, "admission_type") == ["EMERGENCY", "ELECTIVE"]
    assert column(r, "los_days") == [3.5, 10.5] and column(r, "n_admissions") == [2, 1]
    assert column(r, "hospital_expire_flag") == ["1", "0"] and r.report.out_of_schema == {}


def mimic4_ok(r: Records) -> None:
    assert r.schema.name == "mimic4" and column(r, "age") == ["[50-60)", "90+"]
    assert column(r, "race") == ["WHITE", "ASIAN"] and column(r, "los_days") == [3.5, 10.5]


def no_gender_for_2(r: Records) -> None:
    assert column(r, "gender") == ["F", None] and column(r, "age") == ["[50-60)", None]
    assert r.report.missing == {"gender": 1, "age": 1}


def long_ok(r: Records) -> None:
    assert list(r.patient_ids) == ["1", "2"] and column(r, "visits") == [3, 0]
    assert column(r, "sex") == ["F", "M"] and r.report.out_of_schema == {}


def huge_negative_low_bounded(r: Records) -> None:
    long_ok(r)
    assert token_layout(r.schema).n_tokens < 1000  # bins, never one token per value


def first_kept(r: Records) -> None:
    assert column(r, "sex") == ["F"] and column(r, "visits") == [3]
    assert any("disagree on column 'sex' (and 1 more columns)" in n for n in r.report.notes)


def two_digit_years(r: Records) -> None:
    assert column(r, "age") == ["[50-60)", "[50-60)"] and column(r, "los_days") == [3.5, 10.5]
    assert any("2-digit years" in n for n in r.report.notes)


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    """``build(tmp) -> path``; then either ``words`` (all in the one-line error, which names
    ``named``, default the built file's name) or ``check`` (called on the records), with
    ``logged``: words that one WARNING line must hold."""

    name: str
    build: Build
    words: tuple[str, ...] = ()
    check: Callable[[Records], None] | None = None
    fmt: str = "auto"
    schema: Build | str | None = None
    strict: bool = False
    named: str | None = None
    logged: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    limit_s: int = LIMIT_S


TWO_THOUSAND = [dia_row(i, i) for i in range(1, 2001)]
ALL_ZZZ = {n: "ZZZ" for n in DIA.names}
UNKNOWN = 100_000

CASES = [
    # ---- diabetes130: values outside the schema are counted, set missing and named
    Case("diabetes-valid", dia(*OK2), check=diabetes_ok),
    Case("diabetes-readmitted-MAYBE", dia(dia_row(1, 7, readmitted="MAYBE"), OK2[1]),
         check=outside({"readmitted": {"MAYBE": 1}}, readmitted=[None, "<30"]),
         logged=("d.csv", "readmitted in d.csv", "'MAYBE' x1")),
    Case("diabetes-readmitted-MAYBE-strict", dia(dia_row(1, 7, readmitted="MAYBE"), OK2[1]),
         ("column 'readmitted'", "value 'MAYBE'", "outside schema 'diabetes130'"), strict=True),
    Case("diabetes-integer-out-of-bounds", dia(dia_row(1, 7, time_in_hospital="99"), OK2[1]),
         check=outside({"time_in_hospital": {"99": 1}}, time_in_hospital=[None, 2]),
         logged=("time_in_hospital", "'99' x1")),
    Case("diabetes-non-integer", dia(dia_row(1, 7, time_in_hospital="2.5"),
                                     dia_row(2, 8, num_lab_procedures="abc")),
         check=outside({"time_in_hospital": {"2.5": 1}, "num_lab_procedures": {"abc": 1}},
                       time_in_hospital=[None, 2], num_lab_procedures=[1, None])),
    Case("diabetes-inf-nan-values", dia(dia_row(1, 7, time_in_hospital="inf"),
                                        dia_row(2, 8, num_medications="nan")),
         check=outside({"time_in_hospital": {"inf": 1}, "num_medications": {"nan": 1}})),
    Case("diabetes-1e400-value", dia(dia_row(1, 7, num_procedures="1e400"), OK2[1]),
         check=outside({"num_procedures": {"1e400": 1}}, num_procedures=[None, 1])),
    Case("diabetes-50M-character-value", dia(dia_row(1, 7, race="X" * BIG), OK2[1]),
         check=outside({"race": {"X" * 60: 1}}, race=[None, "Caucasian"]),
         logged=("race in d.csv", "'" + "X" * 40 + "' x1")),
    Case("diabetes-50M-character-number", dia(dia_row(1, 7, num_procedures="4" * BIG), OK2[1]),
         check=outside({"num_procedures": {"4" * 60: 1}})),
    Case("diabetes-nothing-known", dia(dia_row(1, 7, **ALL_ZZZ), dia_row(2, 8, **ALL_ZZZ)),
         ("no value is in schema 'diabetes130'", "all 90 non-empty values are outside it",
          "column 'race'", "value 'ZZZ'")),
    Case("diabetes-every-value-empty", dia(dia_row(1, 7, **{n: "" for n in DIA.names})),
         ("every value of the 45 columns of schema 'diabetes130' is empty",)),
    Case("diabetes-wrong-schema", dia(*OK2), ("column 'sex' of schema 's' not found",),
         schema=toml(), named="d.csv"),
    # ---- diabetes130: damaged or odd files
    Case("diabetes-duplicate-diag_1", dia(*OK2, head=DIA_HEAD.replace("diag_3", "diag_1")),
         ("column 'diag_1' appears more than once",)),
    Case("diabetes-duplicate-readmitted", dia(*(r + ",NO" for r in OK2),
                                              head=DIA_HEAD + ",readmitted"),
         ("column 'readmitted' appears more than once",)),
    Case("diabetes-duplicate-race-any-case", dia(*(r + ",Asian" for r in OK2),
                                                 head=DIA_HEAD + ",RACE"),
         ("'race' and 'RACE' appears more than once",)),
    Case("diabetes-100000-unknown-columns",
         dia(*(r + ",0" * UNKNOWN for r in OK2),
             head=DIA_HEAD + "".join(f",X{i}" for i in range(UNKNOWN))),
         check=noted("columns outside schema 'diabetes130' ignored: X0, X1"), limit_s=90),
    Case("diabetes-truncated-gzip", dia(*TWO_THOUSAND, name="d.csv.gz",
                                        cut=lambda b: b[: len(b) // 2]),
         ("truncated gzip file",)),
    Case("diabetes-gzip-bomb-over-cap",
         lambda tmp: write(tmp / "b.csv.gz", gzip.compress(
             (DIA_HEAD + "\n" + "\n".join(OK2) + "\n").encode() + b"\n" * (8 << 20))),
         ("decompresses to more than 1.0 MiB", MAX_INPUT_ENV), named="b.csv.gz",
         env={MAX_INPUT_ENV: "1M"}),
    Case("diabetes-plain-file-over-cap", dia(*TWO_THOUSAND), ("the input limit",),
         env={MAX_INPUT_ENV: "64K"}),
    Case("diabetes-inf-encounter", dia(dia_row("inf", 7), OK2[1]),
         ("encounter_id 'inf'", "not a finite number")),
    Case("diabetes-1e400-encounter", dia(dia_row("1e400", 7), OK2[1]), ("encounter_id '1e400'",)),
    Case("diabetes-nan-encounter", dia(dia_row("nan", 7), OK2[1]), ("encounter_id 'nan'",)),
    Case("diabetes-inf-patient", dia(dia_row(1, "inf"), OK2[1]), ("patient id 'inf'",)),
    Case("diabetes-1e400-patient", dia(dia_row(1, "1e400"), OK2[1]), ("patient id '1e400'",)),
    Case("diabetes-directory", lambda tmp: (tmp / "d.csv").mkdir() or tmp / "d.csv",
         ("is a directory",), fmt="diabetes130"),
    Case("diabetes-empty-file", lambda tmp: write(tmp / "d.csv", ""), ("file is empty",),
         fmt="diabetes130"),
    Case("diabetes-header-only", dia(), ("no patients", "header but no rows")),
    Case("diabetes-binary-garbage", lambda tmp: write(tmp / "d.csv", bytes(range(256)) * 40),
         ("binary",), fmt="diabetes130"),
    Case("diabetes-latin-1", lambda tmp: write(tmp / "d.csv", (DIA_HEAD + "\n" + dia_row(
        1, 7, medical_specialty="Cardiolog\xeda") + "\n").encode("latin-1")),
         ("not UTF-8 text", "byte 0xed")),
    Case("diabetes-utf-16", lambda tmp: write(tmp / "d.csv", "\n".join([DIA_HEAD, *OK2])
                                              .encode("utf-16")), ("UTF-16",)),
    Case("diabetes-truncated-row", dia(OK2[0], ",".join(OK2[1].split(",")[:12])),
         ("data row 2 has 12 fields, the header 50",)),
    Case("diabetes-row-with-extra-field", dia(OK2[0] + ",x", OK2[1]),
         ("more fields than the header",)),
    Case("diabetes-crlf", dia(*OK2, nl="\r\n"), check=diabetes_ok),
    Case("diabetes-bom", dia(*OK2, bom=True), check=diabetes_ok),
    Case("diabetes-bom-crlf-gzip", dia(*OK2, name="d.csv.gz", nl="\r\n", bom=True),
         check=diabetes_ok),
    Case("diabetes-first-encounter-by-id", dia(dia_row(9, 7, readmitted=">30"), OK2[1], OK2[0]),
         check=diabetes_ok),
    Case("diabetes-no-encounter-id", dia(*(r.split(",", 1)[1] for r in OK2),
                                         head=DIA_HEAD.split(",", 1)[1]),
         check=noted("no encounter_id column")),
    # ---- MIMIC: PATIENTS / ADMISSIONS beside the diagnoses
    Case("mimic-valid", mimic(), check=mimic_ok),
    Case("mimic-admissions-missing", mimic(adm=None),
         ("records need ADMISSIONS.csv beside the diagnoses file",), named="DIAGNOSES_ICD.csv"),
    Case("mimic-patients-missing", mimic(pat=None),
         ("records need PATIENTS.csv beside the diagnoses file",), named="DIAGNOSES_ICD.csv"),
    Case("mimic-admissions-is-a-directory", mimic(adm=lambda p: p.mkdir()), ("is a directory",),
         named="ADMISSIONS.csv"),
    Case("mimic-patients-is-a-directory", mimic(pat=lambda p: p.mkdir()), ("is a directory",),
         named="PATIENTS.csv"),
    Case("mimic-missing-column", mimic(adm=ADM.replace("INSURANCE,", "INSURER,", 1)),
         ("column 'INSURANCE' not found",), named="ADMISSIONS.csv"),
    Case("mimic-duplicate-column", mimic(adm=ADM.replace("ROW_ID,", "INSURANCE,", 1)),
         ("column 'INSURANCE' appears more than once",), named="ADMISSIONS.csv"),
    Case("mimic-duplicate-icd9-column",
         mimic(diag=DIAG.replace("SEQ_NUM", "ICD9_CODE", 1)),
         ("column 'ICD9_CODE' appears more than once",), named="DIAGNOSES_ICD.csv"),
    Case("mimic-truncated-admissions-row", mimic(adm=ADM[:-20]),
         ("data row 3 has 6 fields, the header 9",), named="ADMISSIONS.csv"),
    Case("mimic-truncated-patients-row", mimic(pat=PAT[:-25]),
         ("data row 2 has 1 fields, the header 4",), named="PATIENTS.csv"),
    Case("mimic-truncated-gzip-admissions",
         mimic(adm=lambda p: write(p, gzip.compress((ADM * 400).encode())[:400]),
               names=("DIAGNOSES_ICD.csv", "PATIENTS.csv", "ADMISSIONS.csv.gz")),
         ("truncated gzip file",), named="ADMISSIONS.csv.gz"),
    Case("mimic-unparsable-admittime", adm_with("2150-03-01 10:00:00", "yesterday"),
         ("column 'ADMITTIME'", "cannot read date 'yesterday'", "data row 1"),
         named="ADMISSIONS.csv"),
    Case("mimic-impossible-date", adm_with("2152-03-01 10:00:00", "2152-13-45 10:00:00"),
         ("column 'ADMITTIME'", "'2152-13-45 10:00:00'", "data row 2"), named="ADMISSIONS.csv"),
    Case("mimic-unparsable-dischtime", adm_with("2150-03-04 22:00:00", "soon"),
         ("column 'DISCHTIME'", "'soon'"), named="ADMISSIONS.csv"),
    Case("mimic-1e400-dob", pat_with("2100-01-01 00:00:00", "1e400"),
         ("column 'DOB'", "'1e400'"), named="PATIENTS.csv"),
    Case("mimic-five-digit-year", adm_with("2150-03-01 10:00:00", "99999-03-01 10:00:00"),
         ("column 'ADMITTIME'", "'99999-03-01 10:00:00'"), named="ADMISSIONS.csv"),
    Case("mimic-two-digit-years",
         mimic(adm=ADM.replace("2150-03-01 10:00:00", "3/1/50 10:00").replace(
             "2150-03-04 22:00:00", "3/4/50 22:00"),
               pat=PAT.replace("2100-01-01 00:00:00", "1/1/00 0:00")), check=two_digit_years),
    Case("mimic-admission-before-birth", pat_with("2100-01-01", "2151-01-01"),
         check=outside({"age": {"-1": 1}}, age=[None, "[50-60)"]),
         logged=("age in PATIENTS.csv + ADMISSIONS.csv", "'-1' x1")),
    Case("mimic-admission-before-birth-strict", pat_with("2100-01-01", "2151-01-01"),
         ("column 'age'", "value '-1'", "outside schema 'mimic3'"), strict=True,
         named="PATIENTS.csv + ADMISSIONS.csv"),
    Case("mimic-discharge-before-admission", adm_with("2150-03-04 22:00:00",
                                                      "2150-02-04 22:00:00"),
         check=outside({"los_days": {"-24.5": 1}}, los_days=[None, 10.5]),
         logged=("los_days in ADMISSIONS.csv", "'-24.5' x1")),
    Case("mimic-non-numeric-hadm-id", adm_with(",11,2150", ",abc,2150"),
         ("column 'HADM_ID'", "value 'abc'", "not a whole number"), named="ADMISSIONS.csv"),
    Case("mimic-negative-hadm-id", adm_with(",11,2150", ",-11,2150"),
         ("column 'HADM_ID'", "value '-11'"), named="ADMISSIONS.csv"),
    Case("mimic-non-numeric-subject-id", adm_with("1,1,11,", "1,x1,11,"),
         ("column 'SUBJECT_ID'", "value 'x1'"), named="ADMISSIONS.csv"),
    Case("mimic-negative-subject-id", pat_with("1,1,F", "1,-1,F"),
         ("column 'SUBJECT_ID'", "value '-1'"), named="PATIENTS.csv"),
    Case("mimic-inf-subject-id", pat_with("1,1,F", "1,inf,F"),
         ("column 'SUBJECT_ID'", "value 'inf'"), named="PATIENTS.csv"),
    Case("mimic-1e400-subject-id", adm_with("3,2,21,", "3,1e400,21,"),
         ("column 'SUBJECT_ID'", "value '1e400'"), named="ADMISSIONS.csv"),
    Case("mimic-nan-subject-id", pat_with("1,1,F", "1,nan,F"),
         ("column 'SUBJECT_ID'", "empty id (data row 1)"), named="PATIENTS.csv"),
    Case("mimic-duplicate-hadm-id", adm_with(",12,2152", ",11,2152"),
         ("column 'HADM_ID'", "admission '11' is in data rows 1 and 2"), named="ADMISSIONS.csv"),
    Case("mimic-diagnosis-of-no-admission", mimic(diag=DIAG.replace("3,2,21,", "3,2,99,")),
         check=noted("1 diagnosis rows name an admission that is not in ADMISSIONS.csv "
                     "(first: data row 3, SUBJECT_ID '2' HADM_ID '99')", mimic_ok),
         logged=("DIAGNOSES_ICD.csv", "HADM_ID '99'")),
    Case("mimic-patient-without-patients-row", mimic(pat=PAT.replace("2,2,M,", "2,3,M,")),
         check=noted("1 patients (first: SUBJECT_ID '2') have no row in PATIENTS.csv",
                     no_gender_for_2),
         logged=("no row in PATIENTS.csv",)),
    Case("mimic-expire-flag-outside", adm_with(",WHITE,0\n", ",WHITE,2\n"),
         check=outside({"hospital_expire_flag": {"2": 1}}, hospital_expire_flag=[None, "0"]),
         logged=("hospital_expire_flag in ADMISSIONS.csv", "'2' x1")),
    Case("mimic-admission-type-outside-strict", adm_with(",EMERGENCY,", ",EMERGENZY,"),
         ("column 'admission_type'", "value 'EMERGENZY'", "outside schema 'mimic3'"),
         strict=True, named="ADMISSIONS.csv"),
    Case("mimic-50M-character-insurance", adm_with("Medicare", "M" * BIG),
         check=outside({"insurance": {"M" * 60: 1}}, insurance=[None, "Medicaid"])),
    Case("mimic-header-only-admissions", mimic(adm=ADM.split("\n")[0] + "\n"),
         ("no rows (the file has a header but no rows)",), named="ADMISSIONS.csv"),
    Case("mimic-empty-patients", mimic(pat=""), ("file is empty",), named="PATIENTS.csv"),
    Case("mimic-binary-admissions", mimic(adm=bytes(range(256)) * 20), ("binary",),
         named="ADMISSIONS.csv"),
    Case("mimic-latin-1-admissions", mimic(adm=ADM.replace("WHITE", "WHIT\xc9", 1)
                                           .encode("latin-1")),
         ("not UTF-8 text",), named="ADMISSIONS.csv"),
    Case("mimic-admissions-bomb-over-cap",
         mimic(adm=ADM.encode() + b"\n" * (8 << 20),
               names=("DIAGNOSES_ICD.csv", "PATIENTS.csv", "ADMISSIONS.csv.gz")),
         ("decompresses to more than 1.0 MiB",), named="ADMISSIONS.csv.gz",
         env={MAX_INPUT_ENV: "1M"}),
    Case("mimic-crlf-bom-admissions", mimic(adm=b"\xef\xbb\xbf" + ADM.replace("\n", "\r\n")
                                            .encode()), check=mimic_ok),
    Case("mimic-gzip-tables", mimic(names=("DIAGNOSES_ICD.csv.gz", "PATIENTS.csv.gz",
                                           "ADMISSIONS.csv.gz")), check=mimic_ok),
    Case("mimic-lowercase-iii-names", mimic(names=("diagnoses_icd.csv", "patients.csv",
                                                   "admissions.csv")), check=mimic_ok),
    Case("mimic-iv-lowercase-hosp", MIMIC4, check=mimic4_ok),
    # ---- long tables with a schema file
    Case("long-valid", long(), check=long_ok, schema=toml()),
    Case("long-needs-a-schema", long(), ("needs a schema",), fmt="long"),
    Case("long-value-outside", long(LONG.replace("2,428,M,0", "2,428,X,0")),
         check=outside({"sex": {"X": 1}}, sex=["F", None]), schema=toml(),
         logged=("sex in l.csv", "'X' x1")),
    Case("long-inf-1e400-values", long(LONG.replace(",F,3\n", ",F,inf\n", 1).replace(
        "M,0", "M,1e400")), check=outside({"visits": {"inf": 1, "1e400": 1}}), schema=toml()),
    Case("long-nothing-known", long(LONG.replace(",F,", ",Q,").replace(",M,", ",Q,")
                                    .replace(",3\n", ",99\n").replace(",0\n", ",99\n")),
         ("no value is in schema 's'", "column 'sex'", "value 'Q'"), schema=toml()),
    Case("long-duplicate-code-column", long("patient_id,code,code,sex,visits\n1,250,401,F,3\n"),
         ("column 'code' appears more than once",), schema=toml()),
    Case("long-duplicate-record-column", long("patient_id,code,sex,SEX,visits\n1,250,F,M,3\n"),
         ("'sex' and 'SEX' appears more than once",), schema=toml()),
    Case("long-inf-patient-id", long(LONG.replace("2,428", "inf,428")),
         ("patient id 'inf'",), schema=toml()),
    Case("long-rows-disagree", long("patient_id,code,sex,visits\n1,250,F,3\n1,401,M,5\n"),
         check=first_kept, schema=toml()),
    Case("schema-matches-no-column", long(), ("column 'gender' of schema 's' not found",),
         schema=toml(SCHEMA.replace('"sex"', '"gender"').replace('"visits"', '"weight"')),
         named="l.csv"),
    Case("schema-bad-type", long(), ("column 'visits': 'low' must be a number",),
         schema=schema_with("low = 0", 'low = "0"'), named="s.toml"),
    Case("schema-categories-not-a-list", long(), ("'categories' must be a non-empty list",),
         schema=schema_with('["F", "M"]', '"F,M"'), named="s.toml"),
    Case("schema-low-above-high", long(), ("low 0 is above high -1",),
         schema=schema_with("high = 10", "high = -1"), named="s.toml"),
    Case("schema-empty-category-list", long(), ("'categories' must be a non-empty list",),
         schema=schema_with('["F", "M"]', "[]"), named="s.toml"),
    Case("schema-duplicate-category", long(), ("category 'F' is listed twice",),
         schema=schema_with('["F", "M"]', '["F", "M", "F"]'), named="s.toml"),
    Case("schema-category-with-spaces", long(), ("category ' F' is empty or has surrounding",),
         schema=schema_with('["F", "M"]', '[" F", "M"]'), named="s.toml"),
    Case("schema-empty-category", long(), ("category '' is empty",),
         schema=schema_with('["F", "M"]', '["", "M"]'), named="s.toml"),
    Case("schema-unknown-kind", long(), ("kind must be one of", "not 'date'"),
         schema=schema_with('"integer"', '"date"'), named="s.toml"),
    Case("schema-huge-integer", long(), ("must be an integer within +-2**53",),
         schema=schema_with("high = 10", "high = 99999999999999999999"), named="s.toml"),
    Case("schema-5000-digit-integer", long(), ("not a valid TOML schema",),
         schema=schema_with("high = 10", "high = 1" + "0" * 5000), named="s.toml"),
    Case("schema-nan-bound", long(), ("'high' must be",),
         schema=schema_with("high = 10", "high = nan"), named="s.toml"),
    Case("schema-column-twice-any-case", long(), ("column 'SEX' is declared twice",),
         schema=schema_with('name = "visits"', 'name = "SEX"'), named="s.toml"),
    Case("schema-not-toml", long(), ("not a valid TOML schema",),
         schema=toml("\x00\x01 garbage"), named="s.toml"),
    Case("schema-huge-negative-low", long(), check=huge_negative_low_bounded,
         schema=schema_with("low = 0", "low = -9007199254740992")),
]


def test_at_least_fifty_crafted_bad_files() -> None:
    bad = [c for c in CASES if c.words or c.logged]
    assert len(bad) >= 50 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_crafted_records(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         caplog: pytest.LogCaptureFixture) -> None:
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    path = case.build(tmp_path)
    schema = case.schema(tmp_path) if callable(case.schema) else case.schema
    start = time.monotonic()
    with time_limit(case.limit_s), caplog.at_level(logging.WARNING):
        try:
            r = load_records(path, case.fmt, schema=schema, strict=case.strict)
        except InputError as err:
            msg = str(err)
            assert case.words, f"refused a valid input: {msg}"
            assert "\n" not in msg and "Traceback" not in msg, msg
            named = case.named or path.name
            assert named in msg, f"{named!r} not in {msg!r}"
            missing = [w for w in case.words if w not in msg]
            assert not missing, f"{missing} not in {msg!r}"
            return
    assert not case.words, f"loaded instead of refusing ({r.report.summary()})"
    assert case.check is not None
    case.check(r)
    assert len(r.table) == r.n_patients == r.codes.n_patients == r.report.patients
    assert list(r.table.columns) == r.schema.names
    if case.logged:
        lines = [m.getMessage() for m in caplog.records if m.levelno >= logging.WARNING]
        assert any(all(w in line for w in case.logged) for line in lines), lines
    if r.report.out_of_schema:  # one warning line names the file, each column and value
        shown = [m.getMessage() for m in caplog.records if "outside schema" in m.getMessage()]
        assert len(shown) == 1 and str(path) in shown[0], shown
    assert time.monotonic() - start < case.limit_s


# ---------------------------------------------------------------- through the real commands

CLI_CASES = {
    "ehr-train": ["diabetes-truncated-gzip", "diabetes-nothing-known",
                  "diabetes-duplicate-diag_1", "mimic-truncated-admissions-row",
                  "mimic-admissions-is-a-directory", "schema-low-above-high"],
    "ehr-schema": ["diabetes-readmitted-MAYBE-strict", "mimic-duplicate-hadm-id",
                   "mimic-admissions-bomb-over-cap", "long-nothing-known"],
}


def _command(tool: str, case: Case, data: Path, schema: Path | str | None, tmp: Path
             ) -> list[str]:
    extra = ["--schema", str(schema)] if schema else []
    fmt = ["--format", case.fmt] if case.fmt != "auto" else []
    if tool == "ehr-schema":
        return [str(BIN / "ehr-schema"), "check", str(data), *fmt, *extra,
                *(["--strict"] if case.strict else [])]
    return [str(BIN / "ehr-train"), "--columns", "all", "--data", str(data), *fmt, *extra,
            "--out", str(tmp / "model"), "--epochs", "1", "--quiet"]


@pytest.mark.parametrize("tool, case_name", [(t, n) for t, names in CLI_CASES.items()
                                             for n in names])
def test_commands_answer_in_one_line(tool: str, case_name: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == case_name)
    data = case.build(tmp_path)
    schema = case.schema(tmp_path) if callable(case.schema) else case.schema
    proc = subprocess.run(_command(tool, case, data, schema, tmp_path), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, **case.env})
    lines = [ln for ln in proc.stderr.strip().splitlines()
             if not ln.startswith(("INFO ", "WARNING "))]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in case.words), lines[0]
    assert not (tmp_path / "model").exists()
