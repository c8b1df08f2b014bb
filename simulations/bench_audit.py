"""Benchmark of the privacy audit: does it flag a memorising model and clear a DP one?

    python -m fedsynth.simulations.bench_audit [--data PATH|demo] [--out DIR] [--quick]

Two models are trained on the same few hundred member patients plus canaries (each canary in
with probability 1/2):
1. non-private, many epochs: it memorises; the audit must show a membership AUROC well above
   0.5 and an empirical eps_lb clearly above 0;
2. DP-SGD at epsilon = 1 (PRV accountant): eps_lb <= 1 and membership AUROC within noise of 0.5.

Writes DIR/<model>/audit.json + audit.html and DIR/bench_audit.json; exit 1 if an expectation
fails. About 5-10 minutes on 2 CPU cores (``--quick``: about 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsynth.common.atomic import write_json
from fedsynth.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedsynth.common.errors import cli_errors
from fedsynth.common.model.output import OutputStep, fit_scalar_threshold
from fedsynth.common.model.store import Generator
from fedsynth.common.model.train import build_model, train_model
from fedsynth.common.vocabulary import Vocabulary
from fedsynth.privacy.audit.canaries import insert_canaries
from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.run import audit_site, merge_site_audits, write_audit

log = logging.getLogger(__name__)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "diabetes130"


@dataclass
class BenchConfig:
    n_members: int = 300
    n_non_members: int = 1000
    canaries: int = 200
    hidden: tuple[int, ...] = (512, 512)
    epochs: int = 400  # non-private: many epochs on few patients -> memorisation
    batch_size: int = 64
    lr: float = 1e-3
    dp_epsilon: float = 1.0
    dp_steps: int = 300
    dp_batch: float = 64.0  # expected Poisson batch
    n_synth: int = 3000
    seed: int = 0


def load_cohort(data: str, seed: int) -> tuple[np.ndarray, Any]:
    from fedsynth.common.data import demo_cohort, load_codes

    if data == "demo":
        m = demo_cohort(n_sites=1, patients_per_site=6000, seed=seed)
    else:
        path = Path(data)
        if path.is_dir():
            path = path / "diabetic_data_dev.csv.gz"
        m = load_codes(path, "auto")
    return m.X, m.vocab


def _generator(state: dict, cfg: ModelConfig, vocab: Any, public: np.ndarray) -> Generator:
    """A Generator; EHRDiff's parameterisation gets an output threshold that matches the codes
    per patient of *non-member* data (public to the auditor; the members' statistics are not
    used), the binary one's output is already 0/1."""
    model = build_model(len(vocab), cfg)
    model.load_state_dict(state)
    gen = Generator(model, cfg, vocab, OutputStep("threshold", cfg.threshold))
    if cfg.output_kind() == "threshold":
        return gen
    cont = gen.sample_continuous(2000, seed=123)
    t = fit_scalar_threshold(cont, float(public.sum(axis=1).mean()))
    gen.output_step = OutputStep("threshold", t, info={"source": "non-member codes/patient"})
    return gen


def train_nonprivate(X: np.ndarray, cfg: ModelConfig, bc: BenchConfig) -> dict:
    tc = TrainConfig(epochs=bc.epochs, batch_size=bc.batch_size, lr=bc.lr, ema_decay=0.99,
                     seed=bc.seed, device="cpu", num_threads=1)
    res = train_model(X, cfg, tc, progress=True)
    return res.ema.state_dict()


def train_private(X: np.ndarray, cfg: ModelConfig, bc: BenchConfig) -> tuple[dict, dict]:
    from fedsynth.client.dp_training import train_dp
    from fedsynth.privacy.accountant import calibrate_noise, default_delta
    from fedsynth.privacy.report import site_report

    n = len(X)
    q = min(1.0, bc.dp_batch / n)
    delta = default_delta(n)
    sigma = calibrate_noise(bc.dp_epsilon, delta, q, bc.dp_steps)
    log.info("DP: n=%d q=%.4f sigma=%.3f steps=%d delta=%.2g", n, q, sigma, bc.dp_steps, delta)
    pc = PrivacyConfig(epsilon=bc.dp_epsilon, delta=delta)
    tc = TrainConfig(lr=bc.lr, ema_decay=0.99, seed=bc.seed, device="cpu", num_threads=1)
    res = train_dp(build_model(X.shape[1], cfg), X, model_cfg=cfg, train_cfg=tc, privacy_cfg=pc,
                   noise_multiplier=sigma, sample_rate=q, steps=bc.dp_steps)
    report = site_report("all", [res.mechanism], delta, budget=bc.dp_epsilon)
    return res.ema_state or res.state_dict, report


def _row(name: str, audit: dict) -> dict:
    site = audit["sites"]["all"]
    mem = site["membership"]
    wb = site.get("loss_attack") or {}
    return {
        "model": name,
        "epsilon": audit["epsilon"],
        "eps_lb": site["eps_lb"],
        "eps_lb_confidence": site["white_box"]["confidence"],
        "canary_auroc": site["white_box"]["roc"]["auroc"],
        "loss_attack_auroc": wb.get("roc", {}).get("auroc"),
        "dcr_hamming_auroc": mem["dcr_hamming"]["auroc"],
        "domias_auroc": mem["domias"]["auroc"],
        "attribute_f1_gain": site["attribute"]["f1_gain_over_baseline"],
        "verdict": audit["verdict"]["status"],
    }


def expectations(rows: dict[str, dict]) -> list[tuple[str, bool]]:
    npv, dp = rows["nonprivate"], rows["dp"]
    best_np = max(npv["canary_auroc"], npv["loss_attack_auroc"] or 0, npv["dcr_hamming_auroc"],
                  npv["domias_auroc"])
    dp_black = [dp["dcr_hamming_auroc"], dp["domias_auroc"], dp["loss_attack_auroc"] or 0.5]
    return [
        ("non-private: membership AUROC well above 0.5 (>= 0.65)", best_np >= 0.65),
        ("non-private: eps_lb clearly > 0 (>= 0.5)", npv["eps_lb"] >= 0.5),
        ("non-private: verdict is 'risk'", npv["verdict"] == "risk"),
        (f"DP: eps_lb <= epsilon ({dp['epsilon']:.2f})", dp["eps_lb"] <= dp["epsilon"]),
        ("DP: membership AUROCs within noise of 0.5 (|AUROC - 0.5| < 0.1)",
         all(abs(a - 0.5) < 0.1 for a in dp_black)),
        ("DP: verdict is 'pass'", dp["verdict"] == "pass"),
    ]


def run(data: str, out: Path, bc: BenchConfig) -> dict:
    torch.manual_seed(bc.seed)
    rng = np.random.default_rng(bc.seed)
    torch.set_num_threads(1)  # 2 shared cores: more threads only thrash
    X, vocab = load_cohort(data, bc.seed)
    idx = rng.permutation(len(X))
    # the vocabulary: codes seen among the non-member patients (nothing about the members)
    cols = np.flatnonzero(X[idx[bc.n_members :]].any(axis=0))
    X, vocab = X[:, cols], Vocabulary(tuple(vocab.codes[i] for i in cols), name="bench")
    members = X[idx[: bc.n_members]]
    non_members = X[idx[bc.n_members : bc.n_members + bc.n_non_members]]
    train_X, canaries, included = insert_canaries(members, bc.canaries, seed=bc.seed)
    cfg = ModelConfig(hidden=bc.hidden, time_dim=64, sample_steps=16)
    acfg = AuditConfig(n_synth=bc.n_synth, seed=bc.seed, attr_targets=bc.n_members)
    rows, timings = {}, {}
    for name in ("nonprivate", "dp"):
        t0 = time.perf_counter()
        if name == "nonprivate":
            state, privacy = train_nonprivate(train_X, cfg, bc), None
        else:
            state, privacy = train_private(train_X, cfg, bc)
        gen = _generator(state, cfg, vocab, non_members)
        t1 = time.perf_counter()
        site = audit_site(gen, members, non_members, acfg, canaries=canaries, included=included,
                          privacy=privacy, site="all")
        audit = merge_site_audits({"all": site}, privacy, cfg=acfg)
        write_audit(out / name, audit)
        t2 = time.perf_counter()
        timings[name] = {"train_s": round(t1 - t0, 1), "audit_s": round(t2 - t1, 1)}
        rows[name] = _row(name, audit)
        log.info("%s: %s", name, rows[name])
    checks = expectations(rows)
    result = {"config": vars(bc), "data": data, "results": rows, "timings": timings,
              "expectations": [{"check": c, "ok": ok} for c, ok in checks],
              "all_ok": all(ok for _, ok in checks)}
    write_json(out / "bench_audit.json", result)
    return result


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="privacy audit benchmark")
    cols = ["model", "epsilon", "eps_lb", "canary_auroc", "loss_attack_auroc",
            "dcr_hamming_auroc", "domias_auroc", "attribute_f1_gain", "verdict"]
    for c in cols:
        table.add_column(c)
    for row in result["results"].values():
        table.add_row(*[f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                        for c in cols])
    console = Console(width=160)
    console.print(table)
    for e in result["expectations"]:
        console.print(("[green]OK[/green] " if e["ok"] else "[red]UNEXPECTED[/red] ") + e["check"])


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_audit", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.exists() else "demo",
                   help="diabetes130 file/folder, any loader format, or 'demo'")
    p.add_argument("--out", default="runs/bench_audit")
    p.add_argument("--quick", action="store_true", help="smaller models and fewer steps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fedsynth.common.model.train").setLevel(logging.WARNING)  # one line per epoch
    bc = BenchConfig(seed=args.seed)
    if args.quick:
        bc = BenchConfig(n_members=200, n_non_members=600, canaries=120, hidden=(256, 256),
                         epochs=250, dp_steps=150, n_synth=2000, seed=args.seed)
    result = run(args.data, Path(args.out), bc)
    _print(result)
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
