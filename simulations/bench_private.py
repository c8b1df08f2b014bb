"""Centralized DP training at several epsilons on an 80/20 patient split: fidelity on held-out.

    python -m fedsynth.simulations.bench_private \
        --data ../shared/data/diabetes130/diabetic_data_dev.csv.gz \
        --format diabetes130 --epsilons 1 3 10 --out runs/bench_private

Writes ``OUT/bench_private.json`` and ``OUT/bench_private.md`` (one row per epsilon: epsilon
reached, sigma, steps, minutes, prevalence r, co-occurrence r, dimension-wise AUROC ratio,
codes per patient, discriminator AUROC), and one model directory per epsilon.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.config import Config
from fedsynth.common.data import load_codes, split_holdout
from fedsynth.common.errors import cli_errors
from fedsynth.common.metrics import fidelity
from fedsynth.common.model import load_model

log = logging.getLogger(__name__)

COLUMNS = ("epsilon", "epsilon_reached", "sigma", "steps", "codes_modelled", "minutes",
           "prevalence_r", "cooccurrence_r", "dimwise_auroc_ratio", "codes_per_patient",
           "discriminator_auroc")


def run_one(train: Any, holdout: Any, eps: float, delta: float, out: Path, config: Config,
            samples: int, seed: int) -> dict[str, Any]:
    from fedsynth.client.private_train import train_centralized_private

    config.privacy.epsilon, config.privacy.delta = eps, delta
    t0 = time.perf_counter()
    rep = train_centralized_private(train, config, out, state_dir=out / "privacy-state")
    minutes = (time.perf_counter() - t0) / 60
    synth = load_model(out).sample(samples, seed=seed)
    fid = fidelity(holdout.X, synth, train.X, seed=seed)
    sgd = rep["privacy"]["history"][-1]
    return {
        "epsilon": eps, "delta": delta, "epsilon_reached": rep["privacy"]["epsilon"],
        "sigma": sgd["noise_multiplier"], "steps": sgd["steps"],
        "codes_modelled": rep["training"]["codes_modelled"], "minutes": round(minutes, 1),
        "examples_per_s": rep["training"]["examples_per_second"],
        "prevalence_r": fid["prevalence_r"], "cooccurrence_r": fid["cooccurrence_r"],
        "dimwise_auroc_ratio": fid["dimwise_auroc_ratio"],
        "codes_per_patient": fid["codes_per_patient_synth"]["mean"],
        "codes_per_patient_real": fid["codes_per_patient_real"]["mean"],
        "discriminator_auroc": fid["discriminator_auroc"],
        "privacy": rep["privacy"],
    }


def markdown(rows: list[dict[str, Any]], note: str) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{note}\n"


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--format", default="auto")
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--config", help="TOML with [model]/[train]/[privacy] overrides")
    ap.add_argument("--epochs", type=int, help="override privacy.epochs")
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_private")
    args = ap.parse_args(argv)
    out = Path(args.out)
    matrix = load_codes(args.data, format=args.format)
    train, holdout = split_holdout(matrix, 0.2, args.seed)
    rows = []
    for eps in args.epsilons:
        config = Config.from_toml(args.config) if args.config else Config()
        if args.epochs:
            config.privacy.epochs = args.epochs
        row = run_one(train, holdout, eps, args.delta, out / f"eps{eps:g}", config,
                      args.samples, args.seed)
        rows.append(row)
        log.info("eps=%g: %s", eps, {k: row[k] for k in COLUMNS})
        write_json(out / "bench_private.json", {"data": args.data, "n_train": train.n_patients,
                                                "n_holdout": holdout.n_patients, "rows": rows})
    note = (f"{train.n_patients} training / {holdout.n_patients} held-out patients of "
            f"{args.data}; delta={args.delta:g}; PRV accountant; {args.samples} synthetic rows.")
    with atomic_open(out / "bench_private.md", "w", encoding="utf-8") as fh:
        fh.write(markdown(rows, note))
    print(markdown(rows, note))


if __name__ == "__main__":
    main()
