"""Crafted bad input files (issue 16, item 6): never silently wrong.

Each case builds one file in a temporary folder and loads it with ``load_codes`` under a time
limit: the outcome is either a one-line InputError naming the file and the problem (the expected
words), or a correct result (checked); never another exception, never a hang. Among them every
case of the issue: a duplicate ``code`` column, a truncated gzip, a 50-million-character code,
100,000 unknown columns, a 2 GiB gzip bomb, ``inf`` ids, a ``1e400`` value and a directory in
place of a file. A few go through the ``ehr-train`` command: exit code 2, one stderr line.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import time_limit

from fedsynth.common.data import CodeMatrix, load_codes
from fedsynth.common.data.reading import MAX_INPUT_ENV
from fedsynth.common.errors import InputError

LIMIT_S = int(os.environ.get("FEDSYNTH_CASE_LIMIT_S", "20"))
BIN = Path(sys.executable).parent
LONG = "patient_id,code\n1,250\n1,401\n2,428\n"
BIG = 50_000_000  # characters of the overlong code


@dataclass
class Case:
    """``build(tmp) -> path``; then either ``words`` (all in the one-line error) or ``check``
    (called on the loaded matrix)."""

    name: str
    build: Callable[[Path], Path]
    words: tuple[str, ...] = ()
    check: Callable[[CodeMatrix], None] | None = None
    fmt: str = "auto"
    env: dict[str, str] = field(default_factory=dict)
    kw: dict[str, object] = field(default_factory=dict)


def text(name: str, body: str | bytes) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        p = tmp / name
        p.write_bytes(body.encode() if isinstance(body, str) else body)
        return p
    return build


def gz(name: str, body: str, cut: Callable[[bytes], bytes] = lambda b: b) -> Callable[[Path], Path]:
    return text(name, cut(gzip.compress(body.encode())))


def parquet(name: str, columns: dict[str, list[object]],
            names: list[str] | None = None) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        p = tmp / name
        arrays = [pa.array(v) for v in columns.values()]
        pq.write_table(pa.Table.from_arrays(arrays, names=names or list(columns)), p)
        return p
    return build


def bomb(name: str, head: bytes, unit: bytes, total: int) -> Callable[[Path], Path]:
    """``head`` then ``total`` bytes of ``unit`` repeated, gzip'd cheaply: one 8 MiB member
    compressed once (about 8 KiB) and written again and again (a multi-member gzip is one
    stream to every reader), so a 2 GiB bomb costs a few MB and well under a second."""
    def build(tmp: Path) -> Path:
        p = tmp / name
        block = unit * ((8 << 20) // len(unit))
        member = gzip.compress(block, 9)
        with open(p, "wb") as fh:
            fh.write(gzip.compress(head))
            for _ in range(total // len(block)):
                fh.write(member)
        return p
    return build


def single_member_bomb(name: str, head: bytes, total: int) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        p = tmp / name
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = b"0" * (1 << 20)
        with open(p, "wb") as fh:
            fh.write(c.compress(head))
            for _ in range(total >> 20):
                fh.write(c.compress(zeros))
            fh.write(c.flush())
        return p
    return build


def folder(*parts: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        p = tmp.joinpath(*parts)
        p.mkdir(parents=True)
        return tmp / parts[0]
    return build


def fifo(tmp: Path) -> Path:
    p = tmp / "pipe.csv"
    os.mkfifo(p)  # opening it would block: it must be refused from its type alone
    return p


def symlink_loop(tmp: Path) -> Path:
    (tmp / "a.csv").symlink_to(tmp / "b.csv")
    (tmp / "b.csv").symlink_to(tmp / "a.csv")
    return tmp / "a.csv"


def wide_unknown(n: int, rows: int = 5) -> str:
    head = "patient_id," + ",".join(f"X{i}" for i in range(n)) + "\n"
    line = ",".join("1" if i % 7 == 0 else "0" for i in range(n))
    return head + "".join(f"p{r},{line}\n" for r in range(rows))


# ---------------------------------------------------------------- checks of correct results


def codes_of(m: CodeMatrix, pid: str) -> set[str]:
    i = list(m.patient_ids).index(pid)
    return {m.vocab.codes[j] for j in np.flatnonzero(m.X[i])}


def is_long_result(m: CodeMatrix) -> None:
    assert list(m.patient_ids) == ["1", "2"]
    assert codes_of(m, "1") == {"250", "401"} and codes_of(m, "2") == {"428"}


def overlong_reported(m: CodeMatrix) -> None:
    assert codes_of(m, "1") == set() and codes_of(m, "2") == {"250"}  # never '444'
    assert m.report.out_of_vocabulary == {f"444444444444...({BIG} characters)": 1}


def oov(expected: dict[str, int], placed: dict[str, set[str]]) -> Callable[[CodeMatrix], None]:
    def check(m: CodeMatrix) -> None:
        assert m.report.out_of_vocabulary == expected
        for pid, codes in placed.items():
            assert codes_of(m, pid) == codes
    return check


def matrix_categories(m: CodeMatrix) -> None:
    assert codes_of(m, "a") == {"250"} and codes_of(m, "b") == {"250", "401"}


def all_zero_loaded(m: CodeMatrix) -> None:  # allow_empty: a collapsed generator's sample
    assert list(m.patient_ids) == ["a", "b", "c"] and m.X.shape[0] == 3 and not m.X.any()
    assert any("no patient has any code" in n for n in m.report.notes)


def mimic4_with_infinite_ages(tmp: Path) -> Path:
    (tmp / "patients.csv").write_text("subject_id,gender,anchor_age\n1,F,inf\n2,M,-1e400\n"
                                      "3,F,45\n")
    p = tmp / "diagnoses_icd.csv"
    p.write_text("subject_id,icd_code,icd_version\n1,4019,9\n2,25000,9\n3,4019,9\n")
    return p


def infinite_ages_unknown(m: CodeMatrix) -> None:  # never clipped into the oldest band
    assert m.covariates is not None
    assert list(m.covariates["age_band"]) == ["Unknown", "Unknown", "[40-50)"]
    assert any("2 anchor_age values" in n and "Unknown" in n for n in m.report.notes)


def genuine_dot_one(m: CodeMatrix) -> None:  # 'code.1' is a name of its own, not a duplicate
    assert codes_of(m, "1") == {"250"} and codes_of(m, "2") == {"401"}


# ---------------------------------------------------------------- the cases

GZ_LONG = "patient_id,code\n" + "".join(f"P{i},{250 + i % 300}\n" for i in range(3000))
MIMIC = "SUBJECT_ID,ICD9_CODE\n" + "".join(f"{i},{4019 + i % 50}\n" for i in range(3000))
TWO_GIB = 2 << 30

CASES = [
    # duplicate columns: pandas would keep the first and rename the second ('code.1')
    Case("dup-code-long", text("d.csv", "patient_id,code,code\n1,250,401\n2,428,038\n"),
         ("column 'code' appears more than once",)),
    Case("dup-code-long-format", text("d.csv", "patient_id,code,code\n1,250,401\n"),
         ("column 'code' appears more than once",), fmt="long"),
    Case("dup-code-any-case", text("d.csv", "patient_id,code,CODE\n1,250,401\n"),
         ("'code' and 'CODE' appears more than once",)),
    Case("dup-patient-id", text("d.csv", "patient_id,patient_id,code\n1,2,250\n"),
         ("column 'patient_id' appears more than once",)),
    Case("dup-mimic-icd9", text("d.csv", "SUBJECT_ID,ICD9_CODE,ICD9_CODE\n1,4019,25000\n"),
         ("column 'ICD9_CODE' appears more than once",)),
    Case("dup-diabetes-diag", text("d.csv", "patient_nbr,diag_1,diag_1\n1,250,401\n"),
         ("column 'diag_1' appears more than once",)),
    Case("dup-matrix-code", text("d.csv", "patient_id,250,250,401\na,0,1,0\nb,1,0,1\n"),
         ("column '250' appears more than once",)),
    Case("dup-tab-separated", text("d.tsv", "patient_id\tcode\tcode\n1\t250\t401\n"),
         ("column 'code' appears more than once",)),
    Case("dup-gzip", gz("d.csv.gz", "patient_id,code,code\n1,250,401\n"),
         ("column 'code' appears more than once",)),
    Case("dup-quoted", text("d.csv", 'patient_id,"code",code\n1,250,401\n'),
         ("column 'code' appears more than once",)),
    Case("dup-parquet", parquet("d.parquet", {"a": ["1"], "b": ["250"], "c": ["401"]},
                                names=["patient_id", "code", "code"]),
         ("column 'code' appears more than once",)),
    # damaged gzip, anywhere in the stream
    Case("gzip-truncated-half", gz("t.csv.gz", GZ_LONG, lambda b: b[: len(b) // 2]),
         ("truncated gzip file",)),
    Case("gzip-truncated-trailer", gz("t.csv.gz", GZ_LONG, lambda b: b[:-4]),
         ("truncated gzip file",)),
    Case("gzip-truncated-header", gz("t.csv.gz", GZ_LONG, lambda b: b[:12]),
         ("truncated gzip file",)),
    Case("gzip-truncated-mimic", gz("t.csv.gz", MIMIC, lambda b: b[: len(b) * 9 // 10]),
         ("truncated gzip file",)),
    Case("gzip-truncated-second-member",
         text("t.csv.gz", gzip.compress(b"patient_id,code\n1,250\n")
              + gzip.compress(GZ_LONG[16:].encode())[:-100]), ("truncated gzip file",)),
    Case("gzip-crc-wrong", gz("t.csv.gz", GZ_LONG, lambda b: b[:-8] + bytes([b[-8] ^ 1])
                              + b[-7:]),
         ("corrupt gzip file", "incorrect data check")),
    Case("gzip-length-wrong", gz("t.csv.gz", GZ_LONG, lambda b: b[:-4] + bytes([b[-4] ^ 1])
                                 + b[-3:]),
         ("corrupt gzip file", "incorrect length check")),
    Case("gzip-flipped-byte", gz("t.csv.gz", GZ_LONG, lambda b: b[:2000] + bytes([b[2000] ^ 0xFF])
                                 + b[2001:]), ("corrupt gzip file",)),
    Case("gzip-garbage-after", gz("t.csv.gz", GZ_LONG, lambda b: b + b"not gzip"),
         ("corrupt gzip file",)),
    Case("gzip-of-gzip", text("t.csv.gz", gzip.compress(gzip.compress(LONG.encode()))),
         ("binary",)),
    Case("gzip-empty", text("t.csv.gz", gzip.compress(b"")), ("empty",)),
    Case("gzip-matrix-truncated", gz("t.csv.gz", "patient_id,250,401\n" + "p,1,0\n" * 5000,
                                     lambda b: b[: len(b) // 2]), ("truncated gzip file",),
         fmt="matrix"),
    # the input cap: a bomb fails in one line within seconds, never inflated into memory
    Case("bomb-2gib-blank-lines", bomb("b.csv.gz", b"patient_id,code\n1,250\n", b"\n", TWO_GIB),
         ("decompresses to more than 1.0 GiB", MAX_INPUT_ENV)),
    Case("bomb-2gib-rows", bomb("b.csv.gz", b"patient_id,code\n", b"1,250\n", TWO_GIB),
         ("decompresses to more than 1.0 GiB",)),
    Case("bomb-2gib-matrix", bomb("b.csv.gz", b"250,401\n", b"0,1\n", TWO_GIB),
         ("decompresses to more than 1.0 GiB",), fmt="matrix"),
    Case("bomb-single-member-lowered-cap",
         single_member_bomb("b.csv.gz", b"patient_id,code\n1,", 64 << 20),
         ("decompresses to more than 16.0 MiB",), env={MAX_INPUT_ENV: "16M"}),
    Case("plain-file-over-lowered-cap", text("p.csv", LONG + "3,250\n" * 400),
         ("file of", "more than 1.0 KiB, the input limit"), env={MAX_INPUT_ENV: "1024"}),
    Case("parquet-over-lowered-cap", parquet("p.parquet", {"patient_id": [str(i) for i in
                                                            range(2000)], "code": ["250"] * 2000}),
         ("Parquet data of", "the input limit"), env={MAX_INPUT_ENV: "1K"}),
    Case("cap-env-not-a-number", text("p.csv", LONG), (MAX_INPUT_ENV, "positive number of bytes"),
         env={MAX_INPUT_ENV: "lots"}),
    Case("under-raised-cap", text("p.csv", LONG), check=is_long_result,
         env={MAX_INPUT_ENV: "2GiB"}),
    # overlong and ill-shaped codes: reported out of vocabulary, never cut into a category
    Case("code-50M-chars-alone", text("c.csv", "patient_id,code\n1," + "4" * BIG + "\n"),
         ("nothing in vocabulary", f"({BIG} characters)")),
    Case("code-50M-chars-and-a-valid-one",
         text("c.csv", "patient_id,code\n1," + "4" * BIG + "\n2,250\n"), check=overlong_reported),
    Case("code-7-digits", text("c.csv", "patient_id,code\n1,4019999\n2,250\n"),
         check=oov({"4019999": 1}, {"1": set(), "2": {"250"}})),
    Case("code-3-decimals", text("c.csv", "patient_id,code\n1,250.831\n1,401.9\n"),
         check=oov({"250.831": 1}, {"1": {"401"}})),
    Case("code-overlong-v-code", text("c.csv", "patient_id,code\n1,V458123\n1,V4581\n"),
         check=oov({"V458123": 1}, {"1": {"V45"}})),
    Case("matrix-overlong-column", text("c.csv", "patient_id,250," + "4" * 100 + "\na,1,1\n"),
         check=oov({"444444444444...(100 characters)": 1}, {"a": {"250"}})),
    Case("icd10-overlong-kept", text("c.csv", "subject_id,icd_code,icd_version\n1,E"
                                     + "1" * 80 + ",10\n1,4019,9\n"),
         check=oov({"icd10:E11111...(87 characters)": 1}, {"1": {"401"}}),
         kw={"icd10": "keep"}),
    # nothing known: refused in one line, never trained on all-zero rows
    Case("matrix-100000-unknown-columns", text("u.csv", wide_unknown(100_000)),
         ("none of the 100000 code columns is in vocabulary",)),
    Case("matrix-unknown-columns-format", text("u.csv", wide_unknown(50)),
         ("none of the 50 code columns",), fmt="matrix"),
    Case("matrix-all-zero", text("z.csv", "patient_id,250,401\na,0,0\nb,0,0\n"),
         ("no patient has any code",)),
    Case("matrix-all-zero-parquet", parquet("z.parquet", {"patient_id": ["a", "b"], "250": [0, 0],
                                                          "401": [0, 0]}),
         ("no patient has any code",)),
    Case("long-every-code-unknown", text("o.csv", "patient_id,code\n1,FOO\n2,BAR\n"),
         ("nothing in vocabulary", "'FOO'")),
    Case("long-every-code-missing", text("o.csv", "patient_id,code\n1,?\n2,\n3,NULL\n"),
         ("no patient has any code",)),
    Case("diabetes-every-diag-missing", text("o.csv", "patient_nbr,diag_1,diag_2\n1,?,?\n2,?,\n"),
         ("no patient has any code",)),
    Case("matrix-all-zero-allowed", text("z.csv", "patient_id,250,401\na,0,0\nb,0,0\nc,0,0\n"),
         check=all_zero_loaded, kw={"allow_empty": True}),
    Case("matrix-unknown-columns-allowed-empty", text("u.csv", wide_unknown(20)),
         ("none of the 20 code columns",), kw={"allow_empty": True}),
    Case("long-every-code-unknown-allowed-empty", text("o.csv", "patient_id,code\n1,FOO\n"),
         ("nothing in vocabulary", "'FOO'"), kw={"allow_empty": True}),
    Case("mimic-every-code-unknown", text("o.csv", "SUBJECT_ID,ICD9_CODE\n1,XYZ\n2,QQQ\n"),
         ("nothing in vocabulary",)),
    # non-finite numbers where numbers (or ids) belong
    Case("long-inf-id", text("i.csv", "patient_id,code\ninf,250\n2,401\n"),
         ("patient id 'inf'", "not a finite number")),
    Case("long-minus-infinity-id", text("i.csv", "patient_id,code\n1,250\n-Infinity,401\n"),
         ("patient id '-Infinity' (data row 2)",)),
    Case("long-1e400-id", text("i.csv", "patient_id,code\n1e400,250\n"), ("patient id '1e400'",)),
    Case("long-nan-id", text("i.csv", "patient_id,code\nNaN,250\n2,401\n"),
         ("empty patient id",)),
    Case("mimic-1e400-subject", text("i.csv", "SUBJECT_ID,ICD9_CODE\n1,4019\n1e400,25000\n"),
         ("patient id '1e400'",)),
    Case("diabetes-inf-patient", text("i.csv", "encounter_id,patient_nbr,diag_1\n1,inf,250\n"),
         ("patient id 'inf'",)),
    Case("diabetes-inf-encounter", text("i.csv", "encounter_id,patient_nbr,diag_1\n1,7,250\n"
                                        "inf,8,401\n"), ("encounter_id 'inf' (data row 2)",)),
    Case("diabetes-1e400-encounter",
         text("i.csv", "encounter_id,patient_nbr,diag_1\n1e400,7,250\n"),
         ("encounter_id '1e400'", "not a finite number")),
    Case("diabetes-nan-encounter", text("i.csv", "encounter_id,patient_nbr,diag_1\nNaN,7,250\n"),
         ("encounter_id 'NaN'",)),
    Case("matrix-inf-id", text("i.csv", "patient_id,250,401\ninf,1,0\nb,0,1\n"),
         ("patient id 'inf'",)),
    Case("matrix-1e400-value", text("i.csv", "patient_id,250,401\na,1e400,0\nb,0,1\n"),
         ("non-0/1 value inf", "column '250'", "data row 1")),
    Case("matrix-inf-value-no-id", text("i.csv", "250,401\n0,inf\n1,0\n"),
         ("non-0/1 value inf", "column '401'")),
    Case("matrix-nan-value", text("i.csv", "patient_id,250,401\na,NaN,1\n"), ("non-0/1 value",)),
    Case("mimic4-infinite-anchor-age", mimic4_with_infinite_ages, check=infinite_ages_unknown),
    Case("mimic-1e400-version", text("i.csv", "subject_id,icd_code,icd_version\n1,4019,1e400\n"),
         ("icd_version must be 9 or 10", "1e400")),
    Case("parquet-inf-float-id", parquet("i.parquet", {"patient_id": [float("inf"), 2.0],
                                                       "code": ["250", "401"]}),
         ("patient id 'inf'",)),
    Case("parquet-matrix-inf-value", parquet("i.parquet", {"patient_id": ["a", "b"],
                                                           "250": [1.0, float("inf")]}),
         ("non-0/1 value inf",)),
    # no regular file where a file belongs
    Case("directory", folder("data"), ("is a directory",)),
    Case("directory-named-csv", folder("x.csv"), ("is a directory",)),
    Case("directory-as-diagnoses-table", folder("mimic", "DIAGNOSES_ICD.csv"),
         ("is a directory",)),
    Case("named-pipe", fifo, ("not a regular file",)),
    Case("symlink-loop", symlink_loop, ("not found",)),
    # correct results next to the refusals (no false alarm)
    Case("valid-long", text("ok.csv", LONG), check=is_long_result),
    Case("valid-gzip-two-members", text("ok.csv.gz", gzip.compress(LONG[:22].encode())
                                        + gzip.compress(LONG[22:].encode())), check=is_long_result),
    Case("valid-gzip-zero-padding", text("ok.csv.gz", gzip.compress(LONG.encode()) + b"\0" * 512),
         check=is_long_result),
    Case("valid-trailing-empty-columns", text("ok.csv", "patient_id,code,,\n1,250,,\n1,401,,\n"
                                              "2,428,,\n"), check=is_long_result),
    Case("valid-genuine-dot-one-column",
         text("ok.csv", "patient_id,code,code.1\n1,250,x\n2,401,y\n"),
         check=genuine_dot_one),
    Case("valid-full-code-columns", text("ok.csv", "patient_id,250.01,250.02,401.9\na,1,0,0\n"
                                         "b,0,1,1\n"), check=matrix_categories),
    Case("valid-text-ids", text("ok.csv", "patient_id,code\nINF01,250\nnanny,401\n"),
         check=oov({}, {"INF01": {"250"}, "nanny": {"401"}})),
]




def test_at_least_fifty_crafted_bad_files() -> None:
    bad = [c for c in CASES if c.words]
    assert len(bad) >= 50 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_crafted_file(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    path = case.build(tmp_path)
    start = time.monotonic()
    with time_limit(LIMIT_S):
        try:
            m = load_codes(path, format=case.fmt, **case.kw)  # type: ignore[arg-type]
        except InputError as err:
            msg = str(err)
            assert case.words, f"refused a valid file: {msg}"
            assert "\n" not in msg and "Traceback" not in msg, msg
            named = MAX_INPUT_ENV if MAX_INPUT_ENV in case.words else path.name
            assert named in msg, msg
            missing = [w for w in case.words if w not in msg]
            assert not missing, f"{missing} not in {msg!r}"
            return
    assert not case.words, f"loaded instead of refusing ({m.report.summary()})"
    assert case.check is not None
    case.check(m)
    assert m.X.shape == (len(m.patient_ids), len(m.vocab)) and m.report.patients == m.n_patients
    assert time.monotonic() - start < LIMIT_S


def test_the_2gib_bomb_fails_fast_without_inflating_it(tmp_path: Path) -> None:
    """Refused after counting at most the cap, with the memory of one inflate step."""
    import resource

    path = bomb("b.csv.gz", b"patient_id,code\n1,", b"4", TWO_GIB)(tmp_path)
    assert path.stat().st_size < 8 << 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with time_limit(LIMIT_S), pytest.raises(InputError, match="decompresses to more than"):
        load_codes(path)
    assert time.monotonic() - start < 5
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert grown_kib < 200 * 1024  # far from the 2 GiB it would inflate to


CLI_CASES = {
    "dup-code": "dup-code-long",
    "truncated-gzip": "gzip-truncated-half",
    "bomb": "bomb-2gib-rows",
    "unknown-columns": "matrix-100000-unknown-columns",
    "inf-id": "long-inf-id",
    "directory": "directory",
}


@pytest.mark.parametrize("case_name", sorted(CLI_CASES.values()))
def test_ehr_train_answers_in_one_line(case_name: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == case_name)
    path = case.build(tmp_path)
    proc = subprocess.run(
        [str(BIN / "ehr-train"), "--data", str(path), "--out", str(tmp_path / "model"),
         "--epochs", "1", "--quiet"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = [ln for ln in proc.stderr.strip().splitlines()  # log lines aside (INFO, WARNING)
             if not ln.startswith(("INFO ", "WARNING "))]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and case.words[0] in lines[0]
    assert not (tmp_path / "model").exists()


def test_ehr_evaluate_refuses_a_synthetic_file_of_unknown_columns(tmp_path: Path) -> None:
    real = text("real.csv", LONG)(tmp_path)
    synth = text("synth.csv", wide_unknown(30))(tmp_path)
    proc = subprocess.run([str(BIN / "ehr-evaluate"), str(real), str(synth)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("error: ") and "none of the 30 code columns" in lines[-1]


def test_ehr_evaluate_scores_an_all_zero_synthetic_file(tmp_path: Path) -> None:
    """A collapsed generator samples patients without codes: scored (exit 0), not refused."""
    real = text("real.csv", LONG)(tmp_path)
    synth = text("synth.csv", "patient_id,250,401,428\n" + "".join(
        f"syn-{i:06d},0,0,0\n" for i in range(1, 6)))(tmp_path)
    proc = subprocess.run([str(BIN / "ehr-evaluate"), str(real), str(synth)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no patient has any code" in proc.stderr  # said, as a warning
    assert '"n_synth": 5' in proc.stdout and '"n_real": 2' in proc.stdout
