"""Centralized (non-private) benchmark: train on 80% of the development split's patients,
evaluate on the other 20%; prints and writes a JSON + Markdown table.

    python -m fedsynth.simulations.bench_central --out results/bench_central

The first row is exactly what ``ehr-train`` (defaults) then ``ehr-sample --n 20000`` give:
``common.model.central.train_centralized`` with the package defaults, sampled with the
default sampler. The other rows are the experiments behind the defaults:

- the same trained model without its marginal calibration, and sampled with other numbers of
  Heun steps (``--steps``);
- with ``--edm``: EHRDiff's parameterisation (c_skip/c_out denoiser, weighted MSE, sigma_max
  80) trained the same way, sampled with EHRDiff's 32 Heun steps and three output steps
  (EHRDiff's round at 0.5, one scalar threshold matched to the mean codes per patient,
  per-code thresholds matched to the training prevalence), and with the default 8 steps;
- with ``--widths``: separately trained denoiser widths;
- with ``--epochs-grid``: separately trained epoch budgets.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.config import Config
from fedsynth.common.data import load_codes, split_holdout
from fedsynth.common.errors import cli_errors
from fedsynth.common.metrics import fidelity
from fedsynth.common.model.calibrate import calibrate_output_step
from fedsynth.common.model.central import train_centralized
from fedsynth.common.model.output import OutputStep, fit_scalar_threshold
from fedsynth.common.model.store import Generator, load_model

log = logging.getLogger("bench_central")

KEYS = ("prevalence_r", "cooccurrence_r", "dimwise_auroc_ratio", "discriminator_auroc")


def _row(name: str, m: dict[str, Any], **extra: Any) -> dict[str, Any]:
    row = {"variant": name, **{k: round(float(m[k]), 4) for k in KEYS}}
    row["codes_per_patient"] = round(m["codes_per_patient_synth"]["mean"], 2)
    row.update(extra)
    return row


def _timed_sample(gen: Generator, n: int, seed: int,
                  steps: int | None = None) -> tuple[np.ndarray, dict[str, float]]:
    c0, t0 = time.process_time(), time.perf_counter()
    cont = gen.sample_continuous(n, seed=seed, steps=steps)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return cont, {"patients_per_s": round(n / wall, 1), "sample_cpu_s": round(cpu, 2)}


def _with_steps(gen: Generator, steps: int) -> Generator:
    cfg = dataclasses.replace(gen.cfg, sample_steps=steps)
    return Generator(gen.model, cfg, gen.vocab, gen.output_step, gen.device, gen.extra,
                     gen.modelled)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    base = Config.from_toml(args.config) if args.config else Config()
    matrix = load_codes(args.data, format=args.format)
    train, hold = split_holdout(matrix, fraction=0.2, seed=args.seed)
    Xtr, Xte = train.X, hold.X
    results: dict[str, Any] = {
        "data": str(args.data), "n_train": int(len(Xtr)), "n_heldout": int(len(Xte)),
        "threads": args.threads, "config": base.to_dict(), "rows": [],
        "real_codes_per_patient": round(float(Xte.sum(1).mean()), 3),
    }
    rows = results["rows"]
    work = Path(tempfile.mkdtemp(prefix="bench_central-"))

    def evaluate(label: str, gen: Generator, info: dict[str, Any],
                 steps: int | None = None) -> np.ndarray:
        cont, speed = _timed_sample(gen, args.n_synth, args.seed + 1, steps)
        m = fidelity(Xte, gen.output_step.apply(cont), Xtr, seed=args.seed)
        rows.append(_row(label, m, **info, steps=steps or gen.cfg.sample_steps, **speed))
        log.info("%s", rows[-1])
        if label == "default":
            results["default_metrics"] = m
        return cont

    def train_one(label: str, config: Config) -> tuple[Generator, dict[str, Any]]:
        c0 = time.process_time()
        report = train_centralized(Xtr, train.vocab, config, work / label, progress=args.progress)
        gen = load_model(work / label, device="cpu")
        info = {"parameterization": config.model.parameterization,
                "hidden": "-".join(map(str, config.model.hidden)),
                "epochs": config.train.epochs, "params": report["parameters"],
                "train_s": report["train_seconds"],
                "train_cpu_s": round(time.process_time() - c0, 1)}
        return gen, info

    gen, info = train_one("default", base)
    evaluate("default", gen, info)
    if hasattr(gen.model, "logit_offset"):
        raw = _with_steps(gen, gen.cfg.sample_steps)
        raw.model = copy.deepcopy(gen.model)
        raw.model.logit_offset.zero_()
        evaluate("default without the marginal calibration", raw, info)
    for steps in args.steps:
        if steps != gen.cfg.sample_steps:
            evaluate(f"default, {steps} Heun steps", _with_steps(gen, steps), info, steps)

    if args.edm:
        cfg = Config.from_dict(base.to_dict())
        cfg.model.parameterization, cfg.model.sigma_max = "edm", 80.0
        edm, info = train_one("edm", cfg)
        ehrdiff = _with_steps(edm, 32)
        cont = evaluate("EHRDiff parameterisation, 32 steps, per-code thresholds", ehrdiff, info)
        prev = Xtr.mean(axis=0)
        for name, step in [
            ("round at 0.5 (EHRDiff)", OutputStep("threshold", 0.5)),
            ("scalar threshold matched to codes/patient", OutputStep("threshold", (
                fit_scalar_threshold(ehrdiff.sample_continuous(args.n_synth, seed=10_007),
                                     float(Xtr.sum(1).mean()))))),
        ]:
            m = fidelity(Xte, step.apply(cont), Xtr, seed=args.seed)
            rows.append(_row(f"EHRDiff parameterisation, 32 steps, {name}", m, **info,
                             steps=32))
        fast = _with_steps(edm, base.model.sample_steps)
        fast.output_step = calibrate_output_step(fast, prev, n=args.n_synth)
        evaluate("EHRDiff parameterisation, per-code thresholds", fast, info)

    for widths in args.widths:
        cfg = Config.from_dict(base.to_dict())
        cfg.model.hidden = tuple(int(w) for w in widths.split("-"))
        g, info = train_one(f"widths-{widths}", cfg)
        evaluate(f"widths {widths}", g, info)
    for epochs in args.epochs_grid:
        cfg = Config.from_dict(base.to_dict())
        cfg.train.epochs = epochs
        g, info = train_one(f"epochs-{epochs}", cfg)
        evaluate(f"{epochs} epochs", g, info)
    return results


def markdown(results: dict[str, Any]) -> str:
    cols = ["variant", "cooccurrence_r", "dimwise_auroc_ratio", "prevalence_r",
            "codes_per_patient", "discriminator_auroc", "parameterization", "hidden", "epochs",
            "steps", "params", "train_s", "patients_per_s"]
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
    ap = argparse.ArgumentParser(prog="bench_central", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/diabetes130/diabetic_data_dev.csv.gz")
    ap.add_argument("--format", default="diabetes130")
    ap.add_argument("--out", default="results/bench_central")
    ap.add_argument("--config", help="TOML config (default: the package defaults)")
    ap.add_argument("--steps", type=int, nargs="*", default=[5, 16], help="extra Heun steps")
    ap.add_argument("--edm", action="store_true", help="also train EHRDiff's parameterisation")
    ap.add_argument("--widths", nargs="*", default=[], help="extra widths, e.g. 256-256-256")
    ap.add_argument("--epochs-grid", type=int, nargs="*", default=[], help="extra epoch budgets")
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
