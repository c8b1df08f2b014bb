"""Training time of whole records against the codes-only model, side by side (issue 16's
"training time at most 1.5x the codes-only model's").

    python -m fedsynth.simulations.bench_record_speed --out DIR [--data PATH] [--format F]
        [--epsilon E] [--config TOML] [--repeats N]

Runs the real ``ehr-train --columns codes`` and ``ehr-train --columns all`` one after the other
on the same file with the same settings, each as its own process, and times each whole command
(loading, training, calibration, writing the model). Prints both times and their ratio and
writes DIR/record_speed.json; the two model folders stay in DIR (``codes/``, ``all/``).
``--repeats N`` runs N pairs in the order codes, records, records, codes, ... (so neither
command always runs first on a fresh or a warm machine) and reports the ratio of the summed
times with each pair's own: one pair's ratio moved by 0.1 between runs on an idle 2-core
machine.
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
    if args.config is not None:
        cmd += ["--config", str(args.config)]
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
    ap.add_argument("--config", type=Path, help="a config TOML for both runs (default: none)")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs (default 1)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {"codes": [], "all": []}
    for i in range(args.repeats):
        for columns in ("codes", "all") if i % 2 == 0 else ("all", "codes"):
            times[columns].append(time_train(columns, args, args.out))
            log.info("%s: %.0f s", "codes-only model" if columns == "codes" else "whole records",
                     times[columns][-1])
    codes, records = sum(times["codes"]), sum(times["all"])
    doc = {"data": str(args.data), "epsilon": args.epsilon, "repeats": args.repeats,
           "codes_seconds": [round(t, 1) for t in times["codes"]],
           "records_seconds": [round(t, 1) for t in times["all"]],
           "pair_ratios": [round(r / c, 3) for c, r in zip(times["codes"], times["all"],
                                                            strict=True)],
           "ratio": round(records / codes, 3), "target_ratio": 1.5}
    write_json(args.out / "record_speed.json", doc)
    n = args.repeats
    print(f"codes-only {codes / n:.0f} s, whole records {records / n:.0f} s (mean of {n}): "
          f"ratio {records / codes:.2f} (target <= 1.5; pairs: "
          f"{', '.join(f'{r:.2f}' for r in doc['pair_ratios'])})")


if __name__ == "__main__":
    main()
