"""Centralized (non-private) benchmark: train on 80% of the development split's patients,
evaluate on the other 20%; prints and writes a JSON + Markdown table.

    python -m simulations.bench_central --data ../shared/data/diabetes130/diabetic_data_dev.csv.gz \
        --format diabetes130 --out results/bench_central

Besides the default model it reports the experiments behind the defaults on the same trained
model (output step: EHRDiff's round at 0.5, a scalar threshold matched to the mean codes per
patient, per-code thresholds matched to prevalence; Heun steps: quality and patients/s), and,
with ``--widths``, separately trained denoiser widths.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.atomic import atomic_open, write_json
from common.config import Config
from common.data import load_codes, split_holdout
from common.errors import cli_errors
from common.metrics import fidelity
from common.model.central import calibrate_output_step
from common.model.output import OutputStep, fit_scalar_threshold
from common.model.store import Generator
from common.model.train import train_model

log = logging.getLogger("bench_central")

KEYS = ("prevalence_r", "cooccurrence_r", "dimwise_auroc_ratio", "discriminator_auroc")


def _row(name: str, m: dict[str, Any], **extra: Any) -> dict[str, Any]:
    row = {"variant": name, **{k: round(float(m[k]), 4) for k in KEYS}}
    row["codes_per_patient"] = round(m["codes_per_patient_synth"]["mean"], 2)
    row.update(extra)
    return row


def _timed_sample(gen: Generator, n: int, seed: int) -> tuple[np.ndarray, dict[str, float]]:
    c0, t0 = time.process_time(), time.perf_counter()
    cont = gen.sample_continuous(n, seed=seed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return cont, {"patients_per_s": round(n / wall, 1), "cpu_seconds": round(cpu, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    config = Config.from_toml(args.config) if args.config else Config()
    if args.epochs:
        config.train.epochs = args.epochs
    matrix = load_codes(args.data, format=args.format)
    train, hold = split_holdout(matrix, fraction=0.2, seed=args.seed)
    Xtr, Xte = train.X, hold.X
    prev = Xtr.mean(axis=0)
    results: dict[str, Any] = {
        "data": str(args.data), "n_train": int(len(Xtr)), "n_heldout": int(len(Xte)),
        "threads": args.threads, "config": config.to_dict(), "rows": [],
        "real_codes_per_patient": round(float(Xte.sum(1).mean()), 3),
    }
    rows = results["rows"]

    def train_and_eval(model_cfg: Any, label: str, variants: bool) -> None:
        c0 = time.process_time()
        res = train_model(Xtr, model_cfg, config.train, progress=args.progress)
        train_cpu = time.process_time() - c0
        gen = Generator(res.ema.module, model_cfg, train.vocab, OutputStep())
        gen.output_step = calibrate_output_step(gen, prev, n=args.n_synth)
        cont, speed = _timed_sample(gen, args.n_synth, seed=args.seed + 1)
        common = {"hidden": "-".join(map(str, model_cfg.hidden)), "steps": model_cfg.sample_steps,
                  "params": res.report["parameters"], "epochs": config.train.epochs,
                  "train_s": res.report["train_seconds"], "train_cpu_s": round(train_cpu, 1),
                  **speed}
        m = fidelity(Xte, gen.output_step.apply(cont), Xtr, seed=args.seed)
        rows.append(_row(f"{label}: per-code thresholds", m, **common))
        if label == "default":
            results["default_metrics"] = m
        if not variants:
            return
        for name, step in [
            ("round at 0.5 (EHRDiff)", OutputStep("threshold", 0.5)),
            ("scalar threshold, mean codes matched",
             OutputStep("threshold", fit_scalar_threshold(
                 gen.sample_continuous(args.n_synth, seed=10_007), float(Xtr.sum(1).mean())))),
        ]:
            m = fidelity(Xte, step.apply(cont), Xtr, seed=args.seed)
            rows.append(_row(f"{label}: {name}", m, **common))
        for steps in args.steps:
            if steps == model_cfg.sample_steps:
                continue
            gen2 = Generator(gen.model, dataclasses.replace(model_cfg, sample_steps=steps),
                             train.vocab, OutputStep())
            gen2.output_step = calibrate_output_step(gen2, prev, n=args.n_synth)
            cont2, speed2 = _timed_sample(gen2, args.n_synth, seed=args.seed + 1)
            m = fidelity(Xte, gen2.output_step.apply(cont2), Xtr, seed=args.seed)
            rows.append(_row(f"{label}: {steps} Heun steps", m, **{**common, "steps": steps,
                                                                   **speed2}))

    train_and_eval(config.model, "default", variants=True)
    for widths in args.widths:
        mc = dataclasses.replace(config.model, hidden=tuple(int(w) for w in widths.split("-")))
        train_and_eval(mc, f"widths {widths}", variants=False)
    return results


def markdown(results: dict[str, Any]) -> str:
    cols = ["variant", "cooccurrence_r", "dimwise_auroc_ratio", "prevalence_r",
            "codes_per_patient", "discriminator_auroc", "hidden", "steps", "params",
            "train_s", "patients_per_s"]
    lines = [f"Train {results['n_train']} / held-out {results['n_heldout']} patients "
             f"(real codes per patient {results['real_codes_per_patient']}), "
             f"{results['threads']} threads.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results["rows"]:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="bench_central", description=__doc__)
    ap.add_argument("--data", default="../shared/data/diabetes130/diabetic_data_dev.csv.gz")
    ap.add_argument("--format", default="diabetes130")
    ap.add_argument("--out", default="results/bench_central")
    ap.add_argument("--config", help="TOML config (default: the package defaults)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--steps", type=int, nargs="*", default=[4, 12], help="extra Heun steps")
    ap.add_argument("--widths", nargs="*", default=[], help="extra widths, e.g. 256-256-256")
    ap.add_argument("--n-synth", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    results = run(args)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), results)
    md = markdown(results)
    with atomic_open(out.with_suffix(".md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
