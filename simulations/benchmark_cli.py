"""``ehr-benchmark``: medGAN, corGAN, DP marginals, MST, AIM, federated MST and our model
(central and federated) at epsilon 1, 3, 10 and non-private, on one dataset and one held-out
split, in one table.

    ehr-benchmark --quick --out runs/bench-quick          # < 10 min on 2 cores
    ehr-benchmark --data PATH --format F --seeds 3 --out runs/bench
    ehr-benchmark --columns all --quick --out runs/bench-records   # whole records

Default data: the diabetes130 development split at ../shared/data (the demo cohort when absent).
Writes OUT/benchmark.md, OUT/benchmark.json and PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fedsynth.common.errors import InputError, cli_errors
from fedsynth.simulations.benchmark import run_benchmark
from fedsynth.simulations.benchmark_merge import merge_results
from fedsynth.simulations.benchmark_settings import (
    EPSILONS,
    GENERATORS,
    RECORD_GENERATORS,
    BenchmarkSettings,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehr-benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="dataset (default: diabetes130 dev split, else demo)")
    p.add_argument("--format", default="auto", help="auto|mimic|diabetes130|long|matrix")
    p.add_argument("--quick", action="store_true",
                   help="subsample patients and shorten training (< 10 min on 2 cores)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell (mean +- sd when > 1)")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"))
    p.add_argument("--generators", default=None,
                   help=f"comma-separated subset of {','.join(GENERATORS)}")
    p.add_argument("--epsilons", default=None,
                   help="comma-separated, 'inf' = non-private (default 1,3,10,inf)")
    p.add_argument("--n-synth", type=int, help="synthetic patients per model")
    p.add_argument("--max-train", type=int, help="subsample the training patients")
    p.add_argument("--delta", type=float, help="delta (default min(1e-5, 1/(10 n_train)))")
    p.add_argument("--sites", type=int, default=5, help="sites of the federated runs")
    p.add_argument("--partition", default="dirichlet:0.5", help="partition of the federated runs")
    p.add_argument("--columns", choices=["codes", "all"], default="codes",
                   help="codes: the code matrix (default); all: whole patient records (the "
                        "schema's columns beside the codes) with the records generators and "
                        "metrics")
    p.add_argument("--target", help="with --columns all: downstream task COLUMN=VALUE (default "
                                    "readmitted=<30 when the schema has it, else none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-speed", action="store_true", help="skip the speed section")
    p.add_argument("--merge", nargs="+", type=Path, metavar="BENCHMARK_JSON",
                   help="no training: one report from earlier runs' benchmark.json files (a "
                        "later file's rows replace an earlier one's for the same generator, "
                        "epsilon and seed), written to --out")
    p.add_argument("--time-budget", type=float,
                   help="seconds after which cells not yet started are skipped (quick: 480; "
                        "0: none)")
    return p


def _epsilons(text: str | None) -> tuple[float | None, ...]:
    if not text:
        return EPSILONS
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("inf", "none", "non-private"):
            out.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise InputError("--epsilons", f"{part!r} is not a number or 'inf'") from None
        if not value > 0:
            raise InputError("--epsilons", f"epsilon must be positive, got {part}")
        out.append(value)
    return tuple(out)


def settings_from_args(args: argparse.Namespace) -> BenchmarkSettings:
    if args.seeds < 1:
        raise InputError("--seeds", f"must be at least 1 (got {args.seeds})")
    if args.data is not None and not args.data.exists():
        raise InputError(args.data, "file not found")
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.target and args.columns != "all":
        raise InputError("--target", "only with --columns all")
    gens = tuple(g.strip() for g in args.generators.split(",")) if args.generators else None
    choices = RECORD_GENERATORS if args.columns == "all" else GENERATORS
    bad = [g for g in gens or () if g not in choices]
    if bad:
        raise InputError("--generators", f"unknown {', '.join(bad)}",
                         f"choose from {', '.join(choices)}")
    return BenchmarkSettings.for_preset(
        preset, args.out, data=args.data, format=args.format, seeds=args.seeds, generators=gens,
        epsilons=_epsilons(args.epsilons) if args.epsilons else None, n_synth=args.n_synth,
        max_train=args.max_train, delta=args.delta, sites=args.sites, partition=args.partition,
        device=args.device, speed=False if args.no_speed else None,
        time_budget=args.time_budget, columns=args.columns, target=args.target)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    if args.merge and args.columns == "all":
        raise InputError("--merge", "merges codes tables only (not with --columns all)")
    if args.merge:
        result = merge_results(args.merge, args.out)
        print(f"wrote {args.out / 'benchmark.md'} ({len(result['rows'])} rows from "
              f"{len(args.merge)} runs)")
        return 0
    s = settings_from_args(args)
    run = run_benchmark
    total = s.seeds * len(s.generators) * len(s.epsilons)
    if s.columns == "all":
        from fedsynth.simulations.benchmark_records import run_record_benchmark

        run, total = run_record_benchmark, total + 1  # + the floors
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()) as bar:
        task = bar.add_task("benchmark", total=total)
        seen = [0]

        def step(label: str) -> None:
            if seen[0]:
                bar.advance(task)
            seen[0] += 1
            bar.update(task, description=label)

        result = run(s, progress=step)
        bar.update(task, completed=total, description="done")
    print(f"wrote {s.out / 'benchmark.md'} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
