"""A longer, time-boxed mutation fuzz run over every loader and the config parser.

    python simulations/fuzz_loaders.py --minutes 30 --out runs/fuzz [--seed 0] [--kinds K]

Mutates real-looking seed files (each input format, plain and gzip'd, plus Parquet and TOML)
and calls ``load_codes`` / ``Config.from_toml``; and whole-record seeds (diabetes130 with every
column, a MIMIC folder with PATIENTS and ADMISSIONS beside the diagnoses, a long table with its
schema TOML), one table mutated at a time, through ``load_records``. Anything other than a
result or an ``InputError`` (or a call slower than ``--hang`` seconds) is a finding: the input
and its traceback are saved under ``--out/findings/``. Exit status 1 when there are findings.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import random
import shutil
import signal
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import pandas as pd

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.config import Config
from fedsynth.common.data import load_codes
from fedsynth.common.data.records import load_records
from fedsynth.common.data.schema import schema_for
from fedsynth.common.errors import InputError, cli_errors

SEEDS: dict[str, bytes] = {
    "mimic.csv": b"ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE\n1,10,100,1,25000\n2,10,100,2,"
                 b"4019\n3,11,101,1,V4581\n4,12,102,1,E8889\n",
    "mimic4.csv": b"subject_id,hadm_id,seq_num,icd_code,icd_version\n1,5,1,E119,10\n1,5,2,4019,"
                  b"9\n2,6,1,I10,10\n",
    "diabetes.csv": b"encounter_id,patient_nbr,race,gender,age,diag_1,diag_2,diag_3\n3,7,"
                    b"Caucasian,Female,[70-80),250.83,401,?\n1,8,?,Male,[50-60),V45,E888,428\n",
    "long.csv": b"patient_id,code,site\nA1,250,north\nA1,401.9,north\nB2,V45,south\n",
    "matrix.csv": b"patient_id,250,401,V45\np1,1,0,1\np2,0,1,0\n",
    "config.toml": b"[train]\nepochs = 3\nlr = 1e-3\n[privacy]\nepsilon = 3.0\n"
                   b"[model]\nhidden = [64, 64]\n[federation]\nrounds = 2\n",
}
TOKENS = [b",", b"\t", b'"', b"\n", b"\r", b"\x00", b"\xff", b"\xef\xbb\xbf", b"=cmd|' /C calc'!A0",
          b"?", b"NaN", b"-1", b"1e309", b"\xc3\xa9", b"[", b"]", b"=", b"9" * 5000]
CELLS = ["", "inf", "-inf", "nan", "NaN", "1e400", "-1", "0", "2.5", "?", "9" * 5000, "MAYBE",
         "13/45/99 25:61", "2/30/00 0:00", "0001-01-01 00:00:00", "9999-12-31 23:59:59", "1/1/49",
         '"', "a,b", " F ", "\u00e9", "1e9", "-9007199254740993", "[70-80)", "<30", "EMERGENCY"]
FORMATS = ("auto", "mimic", "diabetes130", "long", "matrix")
KINDS = ("all", "codes", "records")
log = logging.getLogger("fuzz")


def _diabetes_seed() -> bytes:
    """Three encounters of two patients, every column of the built-in schema at a valid value."""
    schema = schema_for("diabetes130")
    head = ["encounter_id", "patient_nbr", *schema.names, "diag_1", "diag_2", "diag_3"]
    rows = []
    for enc, pid, k in ((5, 7, 0), (2, 8, 1), (9, 7, 2)):
        cells = [c.categories[k % len(c.categories)] if c.categories
                 else str(int(c.low) + k) for c in schema.columns]  # type: ignore[arg-type]
        rows.append([str(enc), str(pid), *cells, "250.83", "401", "?" if k else "V45"])
    return "\n".join(",".join(r) for r in [head, *rows]).encode() + b"\n"


# whole-record seeds: file name -> bytes; a MIMIC seed is a folder of three tables
RECORD_SEEDS: dict[str, dict[str, bytes]] = {
    "diabetes130": {"d.csv": _diabetes_seed()},
    "mimic": {
        "DIAGNOSES_ICD.csv": b"ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE\n1,1,11,1,4019\n"
                             b"2,1,12,1,25000\n3,2,21,1,4280\n",
        "PATIENTS.csv": b"ROW_ID,SUBJECT_ID,GENDER,DOB\n1,1,F,2100-01-01 00:00:00\n"
                        b"2,2,M,1844-06-01 00:00:00\n",
        "ADMISSIONS.csv": b"ROW_ID,SUBJECT_ID,HADM_ID,ADMITTIME,DISCHTIME,ADMISSION_TYPE,INSURANCE,"
                          b"ETHNICITY,HOSPITAL_EXPIRE_FLAG\n1,1,11,3/1/50 10:00,3/4/50 22:00,"
                          b"EMERGENCY,Medicare,WHITE,0\n2,1,12,2152-03-01 10:00:00,2152-03-02 "
                          b"10:00:00,URGENT,Private,WHITE,1\n3,2,21,2140-01-01 00:00:00,"
                          b"2140-01-11 12:00:00,ELECTIVE,Medicaid,ASIAN,0\n",
    },
    "long": {
        "l.csv": b"patient_id,code,sex,visits\n1,250,F,3\n1,401,F,3\n2,428,M,0\n",
        "s.toml": b'name = "s"\n[[columns]]\nname = "sex"\nkind = "categorical"\n'
                  b'categories = ["F", "M"]\n[[columns]]\nname = "visits"\nkind = "integer"\n'
                  b'low = -5\nhigh = 10\ntransform = "none"\n',
    },
}


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf) + 1)
        op = rng.randrange(6)
        if op == 0 and buf:
            buf[min(i, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[i:i] = rng.choice(TOKENS)
        elif op == 2:
            del buf[i:i + rng.randint(1, 30)]
        elif op == 3:
            buf += bytes(buf[i:i + rng.randint(1, 200)]) * rng.randint(1, 50)
        elif op == 4:
            del buf[i:]
        else:
            buf[i:i] = rng.randbytes(rng.randint(1, 20))
    return bytes(buf)


def mutate_cells(data: bytes, rng: random.Random) -> bytes:
    """Text-level mutations that keep a CSV well-formed enough to reach the checks behind the
    parser: a cell replaced by a hostile value, a row repeated or cut short, a header name
    repeated, a column dropped from the header."""
    lines = data.decode("utf-8", "replace").split("\n")
    rows = [i for i, line in enumerate(lines) if line][1:]
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.choice(rows) if rows else 0
        cells = lines[i].split(",")
        if op <= 1 or not rows:
            cells[rng.randrange(len(cells))] = rng.choice(CELLS)
        elif op == 2:
            lines.insert(i, lines[i])
            continue
        elif op == 3:
            cells = cells[: rng.randrange(len(cells))]
        else:
            head = lines[0].split(",")
            head[rng.randrange(len(head))] = rng.choice(head)
            lines[0] = ",".join(head)
            continue
        lines[i] = ",".join(cells)
    return "\n".join(lines).encode()


class HangError(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise HangError("still running")


def run_one(path: Path, kind: str, fmt: str, hang: int) -> str | None:
    """None when the outcome is acceptable, else the traceback text."""
    signal.alarm(hang)
    try:
        if kind == "toml":
            Config.from_toml(path)
        elif kind == "records":
            schema = path.parent / "s.toml" if fmt == "long" else None
            r = load_records(path, fmt, schema=schema)
            if not len(r.table) == r.n_patients == r.codes.n_patients == r.report.patients:
                return f"records and report disagree: {r.report.summary()}"
        else:
            load_codes(path, format=fmt)
    except InputError as err:
        return None if "\n" not in str(err) else f"multi-line InputError: {err!r}"
    except Exception:  # noqa: BLE001 - every other exception is what we are looking for
        return traceback.format_exc()
    finally:
        signal.alarm(0)
    return None


def make_records_input(rng: random.Random, work: Path) -> tuple[Path, str, str]:
    """A records seed with one of its files mutated (sometimes gzip'd, cut, or a directory)."""
    fmt = rng.choice(sorted(RECORD_SEEDS))
    files = dict(RECORD_SEEDS[fmt])
    target = rng.choice(sorted(files))
    folder = work / "records"
    folder.mkdir()
    for name, data in files.items():
        if name != target:
            (folder / name).write_bytes(data)
            continue
        cells = name.endswith(".csv") and rng.random() < 0.6
        data = mutate_cells(data, rng) if cells else mutate(data, rng)
        roll = rng.random()
        if roll < 0.05:
            (folder / name).mkdir()
        elif roll < 0.2 and name.endswith(".csv"):
            raw = gzip.compress(data)
            cut = raw[: rng.randint(0, len(raw))] if rng.random() < 0.3 else raw
            (folder / f"{name}.gz").write_bytes(cut)
        else:
            (folder / name).write_bytes(data)
    main = {"diabetes130": "d.csv", "long": "l.csv"}.get(fmt)
    if main is None:  # MIMIC: the folder
        return folder, "records", fmt
    gz = folder / f"{main}.gz"
    return (gz if gz.exists() else folder / main), "records", fmt


def make_input(rng: random.Random, work: Path, kinds: str = "all") -> tuple[Path, str, str]:
    if kinds == "records" or (kinds == "all" and rng.random() < 0.3):
        return make_records_input(rng, work)
    name = rng.choice(sorted(SEEDS))
    data = mutate(SEEDS[name], rng)
    if name.endswith(".toml"):
        path = work / "in.toml"
        path.write_bytes(data)
        return path, "toml", "-"
    fmt = rng.choice(FORMATS)
    roll = rng.random()
    if roll < 0.15:
        path = work / "in.csv.gz"
        raw = gzip.compress(data)
        path.write_bytes(raw[: rng.randint(0, len(raw))] if rng.random() < 0.3 else raw)
    elif roll < 0.25:
        path = work / "in.parquet"
        try:
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, index_col=False)
            df.to_parquet(path, index=False)
        except Exception:  # noqa: BLE001 - not parseable: fall back to raw bytes
            path.write_bytes(b"PAR1" + data)
    else:
        path = work / "in.csv"
        path.write_bytes(data)
    return path, "table", fmt


def _save_input(path: Path, kind: str, dest: Path) -> None:
    """The input of a finding: the file, or every file of a records folder."""
    if kind != "records":
        with atomic_open(dest / f"input{''.join(path.suffixes)}", "wb") as fh:
            fh.write(path.read_bytes())
        return
    for f in (path if path.name == "records" else path.parent).iterdir():
        if f.is_file():
            with atomic_open(dest / f.name, "wb") as fh:
                fh.write(f.read_bytes())
        else:
            (dest / f.name).mkdir(parents=True, exist_ok=True)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=Path("runs/fuzz"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang", type=int, default=60, help="seconds before a call counts as a hang")
    p.add_argument("--kinds", choices=KINDS, default="all",
                   help="codes: load_codes and the config; records: load_records; all: both")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")  # pandas ParserWarnings on mutated seeds are expected
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    end = time.monotonic() + 60 * args.minutes
    findings, runs = 0, 0
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(tmp)
        while time.monotonic() < end:
            path, kind, fmt = make_input(rng, work, args.kinds)
            runs += 1
            problem = run_one(path, kind, fmt, args.hang)
            if problem is not None:
                findings += 1
                dest = args.out / "findings" / f"{findings:04d}"
                _save_input(path, kind, dest)
                with atomic_open(dest / "traceback.txt", "w") as fh:
                    fh.write(f"format={fmt}\n{problem}")
                print(f"finding {findings}: {kind} format={fmt}: "
                      f"{problem.strip().splitlines()[-1]}")
            if kind == "records":
                shutil.rmtree(work / "records")
            else:
                path.unlink(missing_ok=True)
    write_json(args.out / "summary.json", {"runs": runs, "findings": findings,
                                           "minutes": args.minutes, "seed": args.seed})
    print(f"{runs} inputs, {findings} findings; summary in {args.out / 'summary.json'}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
