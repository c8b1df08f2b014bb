"""Training time of whole records against the codes-only model, side by side (issue 16's
"training time at most 1.5x the codes-only model's").

    python -m fedsynth.simulations.bench_record_speed --out DIR [--data PATH] [--format F]
        [--epsilon E] [--threads N]

Runs the real ``ehr-train --columns codes`` and ``ehr-train --columns all`` one after the other
on the same file with the same settings, each as its own process, and times each whole command
(loading, training, calibration, writing the model). Prints both times and their ratio and
writes DIR/record_speed.json; the two model folders stay in DIR (``codes/``, ``records/``).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from fedsynth.common.atomic import write_json
from fedsynth.common.errors import InputError, cli_errors
from fedsynth.simulations.bench_record_floors import DEFAULT_DATA

log = logging.getLogger(__name__)


def time_train(columns: str, args: argparse.Namespace, out: Path) -> float:
    """Seconds of one ``ehr-train --columns COLUMNS`` process (exit status checked)."""
    cmd = [str(Path(sys.executable).parent / "ehr-train"), "--data", str(args.data), "--format",
           args.format, "--columns", columns, "--out", str(out / columns), "--quiet",
           "--state-dir", str(out / "state")]
    if args.epsilon is not None:
        cmd += ["--epsilon", str(args.epsilon)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise InputError(args.data, f"ehr-train --columns {columns} failed: "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    return seconds


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="bench_record_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--format", default="diabetes130")
    ap.add_argument("--epsilon", type=float, help="DP training (both runs)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    codes = time_train("codes", args, args.out)
    log.info("codes-only model: %.0f s", codes)
    records = time_train("all", args, args.out)
    log.info("whole records: %.0f s", records)
    doc = {"data": str(args.data), "epsilon": args.epsilon, "codes_seconds": round(codes, 1),
           "records_seconds": round(records, 1), "ratio": round(records / codes, 3),
           "target_ratio": 1.5}
    write_json(args.out / "record_speed.json", doc)
    print(f"codes-only {codes:.0f} s, whole records {records:.0f} s: ratio {records / codes:.2f} "
          f"(target <= 1.5)")


if __name__ == "__main__":
    main()
