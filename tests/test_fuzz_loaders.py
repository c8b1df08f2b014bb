"""Hostile input for every loader: a clear InputError or a correct result, never anything else.

Random bytes, mutated real-looking files, wrong encodings, random tables and Parquet files, huge
fields, one patient with a million codes, CSV-injection names; and the writer never emits a
spreadsheet formula nor a half-written file. More examples: FEDSYNTH_FUZZ_EXAMPLES=5000.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import time_limit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.common.data import load_codes, write_matrix
from fedsynth.common.data import writer as writer_mod
from fedsynth.common.errors import InputError
from fedsynth.common.vocabulary import Vocabulary, icd9_categories, icd9_category

EXAMPLES = int(os.environ.get("FEDSYNTH_FUZZ_EXAMPLES", "25"))
FORMATS = ("auto", "mimic", "diabetes130", "long", "matrix")
HANG_S = int(os.environ.get("FEDSYNTH_FUZZ_HANG_S", "30"))
FORMULA = ("=", "+", "-", "@", "\t", "\r")
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize=EXAMPLES <= 25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)
CODES = icd9_categories().codes
INJECTIONS = ["=cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
              "@SUM(1+1)*cmd|' /C calc'!A0", '=HYPERLINK("http://x","y")', "\t=1+1", "\r=1"]

SEEDS = {
    "mimic": b"ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE\n1,10,100,1,25000\n2,10,100,2,4019\n"
             b"3,11,101,1,V4581\n4,12,102,1,E8889\n",
    "mimic4": b"subject_id,hadm_id,seq_num,icd_code,icd_version\n1,5,1,E119,10\n1,5,2,4019,9\n"
              b"2,6,1,I10,10\n",
    "diabetes130": b"encounter_id,patient_nbr,race,gender,age,diag_1,diag_2,diag_3\n"
                   b"3,7,Caucasian,Female,[70-80),250.83,401,?\n1,8,?,Male,[50-60),V45,E888,428\n",
    "long": b"patient_id,code,site\nA1,250,north\nA1,401.9,north\nB2,V45,south\n",
    "matrix": b"patient_id,250,401,V45\np1,1,0,1\np2,0,1,0\n",
}


def no_hang(seconds: int = HANG_S) -> contextlib.AbstractContextManager[None]:
    """Fail (not hang) when a loader runs longer than ``seconds`` on a small input."""
    return time_limit(seconds)


def check_load(path: Path, fmt: str, **kw: object) -> object:
    """load_codes must return a well-formed matrix or raise InputError; nothing else."""
    before = sorted(p.name for p in path.parent.iterdir())
    try:
        with no_hang():
            m = load_codes(path, format=fmt, **kw)
    except InputError as err:
        msg = str(err)
        assert "\n" not in msg and msg.strip(), repr(msg)
        assert "Traceback" not in msg
        return err
    finally:  # loading never writes next to the input
        assert sorted(p.name for p in path.parent.iterdir()) == before
    X = m.X
    assert X.dtype == np.uint8 and X.ndim == 2
    assert X.shape == (len(m.patient_ids), len(m.vocab))
    assert X.size == 0 or int(X.max()) <= 1
    assert m.report.patients == X.shape[0]
    if m.covariates is not None:
        assert len(m.covariates) == X.shape[0]
    return m


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------- raw bytes


@FUZZ
@given(data=st.binary(max_size=3000),
       prefix=st.sampled_from([b"", b"PAR1", b"\x1f\x8b", b"\xef\xbb\xbf", b"\xff\xfe",
                               b"patient_id,code\n", b"subject_id,icd9_code\n"]),
       suffix=st.sampled_from([".csv", ".csv.gz", ".parquet", ".tsv", ""]),
       fmt=st.sampled_from(FORMATS))
def test_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes, prefix: bytes,
                      suffix: str, fmt: str) -> None:
    tmp = tmp_path_factory.mktemp("raw")
    check_load(_write(tmp, "in" + suffix, prefix + data), fmt)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), fmt=st.sampled_from(FORMATS), data=st.data())
def test_mutated_real_looking_files(tmp_path_factory: pytest.TempPathFactory, seed: str,
                                    fmt: str, data: st.DataObject) -> None:
    buf = bytearray(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 6), label="n_mutations")):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup_line",
                                        "sep", "quote"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del buf[i:i + data.draw(st.integers(1, 20))]
        elif op == "truncate":
            del buf[i:]
        elif op == "dup_line":
            buf += bytes(buf).split(b"\n")[min(1, bytes(buf).count(b"\n"))] + b"\n"
        elif op == "sep":
            buf = bytearray(bytes(buf).replace(b",", data.draw(st.sampled_from(
                [b"\t", b";", b",,", b'","']))))
        else:
            buf[i:i] = b'"'
    compress = data.draw(st.booleans(), label="gzip")
    raw = gzip.compress(bytes(buf)) if compress else bytes(buf)
    if compress and data.draw(st.booleans(), label="truncate_gzip"):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    tmp = tmp_path_factory.mktemp("mut")
    check_load(_write(tmp, "in.csv.gz" if compress else "in.csv", raw), fmt)


@pytest.mark.parametrize("seed", sorted(SEEDS))
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252",
                                      "shift_jis", "utf-8-sig"])
def test_wrong_encodings(tmp_path: Path, seed: str, encoding: str) -> None:
    text = SEEDS[seed].decode().replace("A1", "Zoë“1”")
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.replace("Zoë“1”", "Zo\u00eb1").encode(encoding, errors="replace")
    out = check_load(_write(tmp_path, "in.csv", raw), "auto")
    if encoding in ("utf-16", "utf-16-le", "utf-32"):
        assert isinstance(out, InputError)
    if encoding == "utf-8-sig":  # a BOM is fine: same result as plain UTF-8
        plain = load_codes(_write(tmp_path, "plain.csv", text.encode()), format="auto")
        assert isinstance(out, type(plain)) and (out.X == plain.X).all()  # type: ignore[attr-defined]


# ---------------------------------------------------------------- structured random tables

_CELL = st.one_of(
    st.sampled_from(CODES[:50] + ("250.01", "V45.81", "E888.9", "?", "", "nan", "NULL", "0",
                                  "1", "True", "10", "9", "-1", "1e308", "inf")),
    st.sampled_from(INJECTIONS),
    st.text(max_size=30),
    st.text(alphabet=',"\n\r\t;\\ \x00\u2028\ufeff', max_size=8),
)
_COLUMN = st.one_of(
    st.sampled_from(["subject_id", "SUBJECT_ID", "icd9_code", "ICD_CODE", "icd_version",
                     "patient_nbr", "diag_1", "diag_2", "diag_3", "encounter_id", "race",
                     "patient_id", "code", "Unnamed: 0", "", "250", "401", "V45"]),
    st.sampled_from(INJECTIONS), st.text(max_size=12))


@FUZZ
@given(header=st.lists(_COLUMN, min_size=1, max_size=7),
       rows=st.lists(st.lists(_CELL, min_size=0, max_size=8), max_size=12),
       fmt=st.sampled_from(FORMATS), tab=st.booleans(), full_codes=st.booleans(),
       icd10=st.sampled_from(["map", "keep"]))
def test_random_tables(tmp_path_factory: pytest.TempPathFactory, header: list[str],
                       rows: list[list[str]], fmt: str, tab: bool, full_codes: bool,
                       icd10: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t" if tab else ",", lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    tmp = tmp_path_factory.mktemp("tab")
    check_load(_write(tmp, "in.csv", buf.getvalue().encode("utf-8", "surrogatepass")), fmt,
               full_codes=full_codes, icd10=icd10)


_PARQUET_COL = st.one_of(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=3, max_size=3),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.text(max_size=10), st.sampled_from(INJECTIONS)),
             min_size=3, max_size=3),
    st.lists(st.sampled_from([0, 1]), min_size=3, max_size=3),
)


@FUZZ
@given(cols=st.dictionaries(
    st.sampled_from(["patient_id", "code", "subject_id", "icd_code", "icd_version", "250",
                     "401", "V45", "patient_nbr", "diag_1", "x"]), _PARQUET_COL,
    min_size=1, max_size=5), fmt=st.sampled_from(FORMATS))
def test_random_parquet(tmp_path_factory: pytest.TempPathFactory, cols: dict[str, list[object]],
                        fmt: str) -> None:
    tmp = tmp_path_factory.mktemp("pq")
    p = tmp / "in.parquet"
    pd.DataFrame(cols).to_parquet(p, index=False)
    check_load(p, fmt)


# ---------------------------------------------------------------- correct results


def _reads_as_non_finite(s: str) -> bool:
    """'inf', '-Infinity', '1e400': the loaders refuse such ids (a float conversion's loss)."""
    try:
        return not abs(float(s)) < float("inf")
    except ValueError:
        return False


_PID = st.text(alphabet=string.ascii_letters + string.digits + ",\"';:|=+-@ éü中", min_size=1,
               max_size=12).map(str.strip).filter(
    lambda s: bool(s) and s.lower() not in {"nan", "na", "none", "null"}  # missing, any case
    and not _reads_as_non_finite(s))


@FUZZ
@given(pairs=st.lists(st.tuples(_PID, st.sampled_from(CODES)), min_size=1, max_size=40),
       noise=st.lists(st.sampled_from(INJECTIONS + ["ZZZ9", "?", ""]), max_size=5))
def test_long_format_places_every_code(tmp_path_factory: pytest.TempPathFactory,
                                       pairs: list[tuple[str, str]], noise: list[str]) -> None:
    """Hostile-but-valid ids and injection code names: every (patient, code) lands exactly."""
    buf = io.StringIO()
    w = csv.writer(buf)  # "\r\n": fields holding \r or \n get quoted
    w.writerow(["patient_id", "code"])
    w.writerows(pairs)
    w.writerows((pairs[0][0], n) for n in noise)
    tmp = tmp_path_factory.mktemp("long")
    m = check_load(_write(tmp, "in.csv", buf.getvalue().encode()), "long")
    assert not isinstance(m, InputError), m
    expected = {(pid, icd9_category(code)) for pid, code in pairs}
    got = {(str(m.patient_ids[i]), m.vocab.codes[j]) for i, j in zip(*np.nonzero(m.X), strict=True)}
    assert got == expected
    assert set(map(str, m.patient_ids)) == {pid for pid, _ in pairs}


def test_million_codes_for_one_patient(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    codes = rng.choice(np.array(CODES), 1_000_000)
    p = tmp_path / "one.csv.gz"
    body = "patient_id,code\n" + "".join(f"P1,{c}\n" for c in codes)
    p.write_bytes(gzip.compress(body.encode(), compresslevel=1))
    m = check_load(p, "long")
    assert m.X.shape == (1, len(CODES))  # type: ignore[attr-defined]
    assert int(m.X.sum()) == len(set(codes.tolist()))  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["code", "id", "header"])
def test_huge_fields(tmp_path: Path, where: str) -> None:
    big = "4" * 5_000_000
    if where == "code":
        body = f"patient_id,code\n1,{big}\n2,250\n"
    elif where == "id":
        body = f"patient_id,code\n{big},250\n"
    else:
        body = f"patient_id,code,{big}\n1,250,x\n"
    out = check_load(_write(tmp_path, "in.csv", body.encode()), "auto")
    if where == "id" and not isinstance(out, InputError):
        assert out.patient_ids[0] == big  # type: ignore[attr-defined]


def test_ragged_row_does_not_shift_columns(tmp_path: Path) -> None:
    """pandas would make the extra field an index and shift every column (ids became codes)."""
    m = check_load(_write(tmp_path, "in.csv", b"patient_id,code\n1,250,xx\n2,401\n"), "long")
    if isinstance(m, InputError):  # a clear error is fine; a silent shift is not
        return
    assert list(m.patient_ids) == ["1", "2"]  # type: ignore[attr-defined]
    assert m.X[0, m.vocab.index("250")] == 1 and m.X[1, m.vocab.index("401")] == 1  # type: ignore[attr-defined]


def test_no_header_only_commas_and_blank_files(tmp_path: Path) -> None:
    for i, body in enumerate([b"", b"\n\n\n", b",,,\n,,,\n", b"\xef\xbb\xbf", b" \t \n"]):
        for fmt in FORMATS:
            assert isinstance(check_load(_write(tmp_path, f"b{i}.csv", body), fmt), InputError)


# ---------------------------------------------------------------- outputs


def _cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [c for row in csv.reader(fh) for c in row]


@FUZZ
@given(codes=st.lists(st.one_of(st.sampled_from(INJECTIONS), st.text(min_size=1, max_size=10)),
                      min_size=1, max_size=8, unique_by=str.strip),
       ids=st.lists(st.one_of(st.sampled_from(INJECTIONS), st.text(max_size=10)), min_size=1,
                    max_size=5))
def test_writer_never_emits_a_formula(tmp_path_factory: pytest.TempPathFactory,
                                      codes: list[str], ids: list[str]) -> None:
    codes = [c.strip() or "x" for c in codes]
    if len(set(codes)) != len(codes):
        return
    vocab = Vocabulary(tuple(codes), {}, "hostile")
    X = np.ones((len(ids), len(codes)), dtype=np.uint8)
    out = tmp_path_factory.mktemp("w") / "synthetic.csv"
    write_matrix(out, X, vocab, patient_ids=ids)
    cells = _cells(out)
    assert len(cells) == (len(ids) + 1) * (len(codes) + 1)
    bad = [c for c in cells if c.startswith(FORMULA)]
    assert not bad, bad
    # the data is still there, only neutralised with a leading apostrophe
    assert cells[1: len(codes) + 1] == ["'" + c if c.startswith(FORMULA) else c for c in codes]


def test_loaded_injection_ids_are_neutralised_on_write(tmp_path: Path) -> None:
    body = "patient_id,code\n" + "".join(f'"{s.replace(chr(34), 2 * chr(34))}",250\n'
                                          for s in INJECTIONS[:5])
    m = load_codes(_write(tmp_path, "in.csv", body.encode()), format="long")
    out = tmp_path / "o.csv"
    write_matrix(out, m.X, m.vocab, patient_ids=m.patient_ids)
    assert not [c for c in _cells(out) if c.startswith(FORMULA)]
    raw = out.read_text()
    assert "\n=cmd" not in raw and ",=cmd" not in raw and '"=cmd' not in raw


def test_writer_failure_leaves_previous_output_intact(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    vocab = icd9_categories()
    out = tmp_path / "synthetic.csv"
    write_matrix(out, np.zeros((3, len(vocab)), dtype=np.uint8), vocab)
    before = out.read_bytes()
    real = writer_mod._csv_rows
    calls = {"n": 0}

    def flaky(*args: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_mod, "_csv_rows", flaky)
    with pytest.raises(OSError):
        write_matrix(out, np.ones((10_000, len(vocab)), dtype=np.uint8), vocab)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic.csv"]


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=500),
    st.lists(_CELL, max_size=8).map(lambda xs: "\n".join(xs).encode("utf-8", "surrogatepass")),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                           st.sampled_from(INJECTIONS)),
                 lambda inner: st.one_of(st.lists(inner, max_size=4),
                                         st.dictionaries(st.sampled_from(
                                             ["codes", "titles", "name", "x"]), inner,
                                             max_size=3)), max_leaves=8).map(
        lambda obj: json.dumps(obj).encode())))
def test_vocabulary_files(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """A coordinator's --vocab file: a Vocabulary or an InputError, and then loading works."""
    p = tmp_path_factory.mktemp("voc") / "vocab.json"
    p.write_bytes(data)
    try:
        with no_hang():
            vocab = Vocabulary.load(p)
    except InputError as err:
        assert "\n" not in str(err)
        return
    assert len(vocab) >= 1 and len(set(vocab.codes)) == len(vocab)
    seed = _write(p.parent, "in.csv", SEEDS["long"])
    check_load(seed, "long", vocab=vocab)
    check_load(_write(p.parent, "m.csv", SEEDS["matrix"]), "auto", vocab=vocab)


# ---------------------------------------------------------------- whole records


def test_records_mutation_run_has_no_findings(tmp_path: Path) -> None:
    """A few seconds of ``simulations/fuzz_loaders.py --kinds records``: mutated diabetes130
    files (every column), MIMIC folders (PATIENTS/ADMISSIONS beside the diagnoses) and long
    tables with their schema through ``load_records``: a result or one InputError line."""
    from fedsynth.simulations.fuzz_loaders import main

    out = tmp_path / "fuzz"
    code = main(["--minutes", str(float(os.environ.get("FEDSYNTH_RECORDS_FUZZ_S", "4")) / 60),
                 "--kinds", "records", "--out", str(out), "--hang", str(HANG_S)])
    summary = json.loads((out / "summary.json").read_text())
    findings = sorted((out / "findings").glob("*/traceback.txt")) if code else []
    assert code == 0 and summary["findings"] == 0, findings[0].read_text()[-3000:]
    assert summary["runs"] >= 50


def test_records_seeds_load() -> None:
    """The fuzz run's records seeds are valid: mutations start from inputs that load."""
    import tempfile

    from fedsynth.common.data.records import load_records
    from fedsynth.simulations.fuzz_loaders import RECORD_SEEDS

    with tempfile.TemporaryDirectory() as tmp:
        for fmt, files in RECORD_SEEDS.items():
            folder = Path(tmp) / fmt
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            main = {"diabetes130": "d.csv", "long": "l.csv"}.get(fmt)
            r = load_records(folder / main if main else folder, fmt,
                             schema=folder / "s.toml" if fmt == "long" else None)
            assert r.n_patients == 2 and r.report.out_of_schema == {}, fmt
            assert not r.table.isna().any().any(), fmt
