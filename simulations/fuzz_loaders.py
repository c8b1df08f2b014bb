"""A longer, time-boxed mutation fuzz run over every loader and the config parser.

    python simulations/fuzz_loaders.py --minutes 30 --out runs/fuzz [--seed 0]

Mutates real-looking seed files (each input format, plain and gzip'd, plus Parquet and TOML)
and calls ``load_codes`` / ``Config.from_toml``. Anything other than a result or an
``InputError`` (or a call slower than ``--hang`` seconds) is a finding: the input and its
traceback are saved under ``--out/findings/``. Exit status 1 when there are findings.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import random
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
FORMATS = ("auto", "mimic", "diabetes130", "long", "matrix")
log = logging.getLogger("fuzz")


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
        else:
            load_codes(path, format=fmt)
    except InputError as err:
        return None if "\n" not in str(err) else f"multi-line InputError: {err!r}"
    except Exception:  # noqa: BLE001 - every other exception is what we are looking for
        return traceback.format_exc()
    finally:
        signal.alarm(0)
    return None


def make_input(rng: random.Random, work: Path) -> tuple[Path, str, str]:
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


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=Path("runs/fuzz"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hang", type=int, default=60, help="seconds before a call counts as a hang")
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
            path, kind, fmt = make_input(rng, work)
            runs += 1
            problem = run_one(path, kind, fmt, args.hang)
            if problem is not None:
                findings += 1
                dest = args.out / "findings" / f"{findings:04d}"
                with atomic_open(dest / f"input{''.join(path.suffixes)}", "wb") as fh:
                    fh.write(path.read_bytes())
                with atomic_open(dest / "traceback.txt", "w") as fh:
                    fh.write(f"format={fmt}\n{problem}")
                print(f"finding {findings}: {kind} format={fmt}: "
                      f"{problem.strip().splitlines()[-1]}")
            path.unlink(missing_ok=True)
    write_json(args.out / "summary.json", {"runs": runs, "findings": findings,
                                           "minutes": args.minutes, "seed": args.seed})
    print(f"{runs} inputs, {findings} findings; summary in {args.out / 'summary.json'}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
