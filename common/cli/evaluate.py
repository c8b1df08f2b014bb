"""ehr-evaluate REAL SYNTH: fidelity of synthetic patients against held-out real ones."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import atomic_path, write_json
from fedsynth.common.cli.evaluate_records import check_record_options, evaluate_records
from fedsynth.common.data import load_codes
from fedsynth.common.errors import InputError, cli_errors
from fedsynth.common.metrics import fidelity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ehr-evaluate", description=__doc__)
    ap.add_argument("real", help="held-out real patients (any format ehr-train reads)")
    ap.add_argument("synth", help="synthetic patients (CSV/Parquet from ehr-sample)")
    ap.add_argument("--format", default="auto", help="format of REAL (and --train)")
    ap.add_argument("--train", help="real training patients for the dimension-wise baseline "
                                     "(with --records also the downstream task's real "
                                     "training set and the DCR members)")
    ap.add_argument("--out", help="write the metrics JSON here too")
    ap.add_argument("--plot", help="write a PNG of per-code prevalence, real vs synthetic")
    ap.add_argument("--seed", type=int, default=0)
    rec = ap.add_argument_group("whole records (the schema's columns beside the codes)")
    rec.add_argument("--records", action="store_true",
                     help="score records: SYNTH holds patient_id, the schema's columns, then "
                          "one 0/1 column per code")
    rec.add_argument("--schema", help="schema of REAL: a built-in name or a TOML file "
                                      "(default: the format's built-in)")
    rec.add_argument("--target", help="downstream task COLUMN=VALUE, e.g. readmitted=<30")
    rec.add_argument("--plot-dir", help="write one PNG per column marginal, real vs synthetic")
    return ap.parse_args(argv)


def plot_prevalence(path: str | Path, real: np.ndarray, synth: np.ndarray,
                    metrics: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr, ps = real.mean(axis=0), synth.mean(axis=0)
    fig, ax = plt.subplots(figsize=(5, 5))
    top = max(float(pr.max()), float(ps.max()), 1e-6) * 1.05
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--")
    ax.scatter(pr, ps, s=6, alpha=0.6)
    ax.set_xlabel("real prevalence")
    ax.set_ylabel("synthetic prevalence")
    ax.set_title(f"prevalence r = {metrics['prevalence_r']:.3f}, "
                 f"co-occurrence r = {metrics['cooccurrence_r']:.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    check_record_options(args)
    if args.records:
        return _finish(args, *evaluate_records(args))
    real = load_codes(args.real, format=args.format)
    synth = load_codes(args.synth, format="matrix", vocab=real.vocab, allow_empty=True)
    train = load_codes(args.train, format=args.format, vocab=real.vocab) if args.train else None
    if synth.n_patients < 2:
        raise InputError(args.synth, "fewer than 2 synthetic patients")
    if synth.report.out_of_vocabulary:
        raise InputError(args.synth, f"{len(synth.report.out_of_vocabulary)} code columns are "
                         "not in the real data's vocabulary", "Was it sampled from another model?")
    m = fidelity(real.X, synth.X, None if train is None else train.X, seed=args.seed)
    codes = real.vocab.codes
    for c in m["dimwise_per_code"]:
        c["code"] = codes[c["code_index"]]
    m["real"], m["synth"] = str(args.real), str(args.synth)
    _finish(args, m, (real.X, synth.X))


def _finish(args: argparse.Namespace, m: dict[str, Any],
            codes: tuple[np.ndarray, np.ndarray] | None) -> None:
    if args.out:
        write_json(args.out, m)
    if args.plot and codes is not None:
        plot_prevalence(args.plot, *codes, m)
    json.dump(m, sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
