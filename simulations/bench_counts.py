"""Benchmark of the private-count estimates (``privacy.counts.estimate``), without training.

Simulates the counts' Gaussian mechanism (true clipped counts and size + noise at the z the real
plans use) centrally at epsilon 1 and 3 and federated (5 sites, dirichlet:0.5, each site adding
its own noise, summed), on the diabetes130 development split and on the demo cohort, and
reports per method over ``--draws`` noise draws:

- ``null>0.1%`` / ``null>0.2%``: codes with a true count of zero whose estimated prevalence
  exceeds 0.1% / 0.2% (max over draws), and in how many draws any did;
- ``null cpp``: codes per patient the null codes' prevalences add (mean: invented mass);
- ``cpp err``: sum of estimated prevalences against the real codes per patient (relative);
- ``modelled``: codes the diffusion model models (mean); ``occ``: share of the real code
  occurrences in modelled codes (mean).

    python -m fedsynth.simulations.bench_counts [--draws 20] [--diabetes PATH]
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsynth.common.config import PrivacyConfig
from fedsynth.privacy.accountant import calibrate_noise, default_delta
from fedsynth.privacy.counts import (
    FWER,
    METHODS,
    NoisyCounts,
    combine,
    count_epsilon,
    estimate,
    release_counts,
)

log = logging.getLogger(__name__)

DIABETES = "/work/shared/data/diabetes130/diabetic_data_dev.csv.gz"


@dataclass
class Setting:
    data: str
    mode: str  # "central" or "5 sites"
    epsilon: float
    parts: list[np.ndarray]  # each site's 0/1 matrix


def count_z(n: int, epsilon: float, pc: PrivacyConfig) -> float:
    """The counts' noise multiplier of a real plan (client/private_train.py, site_training)."""
    ce = count_epsilon(epsilon, pc.count_epsilon_share, pc.count_epsilon_min)
    return calibrate_noise(ce, default_delta(n), 1.0, 1, pc.accountant)


def run(setting: Setting, draws: int, pc: PrivacyConfig, fwer: float = FWER,
        seed: int = 0) -> list[dict[str, Any]]:
    X = np.concatenate(setting.parts)
    truth = X.sum(axis=0)
    cpp = float(X.sum(axis=1).mean())
    null = truth == 0
    zs = [count_z(len(p), setting.epsilon, pc) for p in setting.parts]
    rng = np.random.default_rng(seed)
    rows: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
    for _ in range(draws):
        noisy: NoisyCounts = combine([release_counts(p, pc.count_clip, z, rng)
                                      for p, z in zip(setting.parts, zs, strict=True)])
        for m in METHODS:
            est = estimate(noisy, m, fwer=fwer)
            stats = {"null01": float((est.prevalence[null] > 1e-3).sum()),
                     "null02": float((est.prevalence[null] > 2e-3).sum()),
                     "cpp_err": float(est.prevalence.sum() / cpp - 1.0),
                     "kept": float(len(est.kept)),
                     "occ": float(truth[est.kept].sum() / truth.sum()),
                     "null_max": float(est.prevalence[null].max(initial=0.0)),
                     "null_cpp": float(est.prevalence[null].sum())}
            for k, v in stats.items():
                rows[m].setdefault(k, []).append(v)
    s = float(np.sqrt(sum((z * pc.count_clip) ** 2 for z in zs)))
    return [{"data": setting.data, "mode": setting.mode, "eps": setting.epsilon,
             "s/n %": round(100 * s / len(X), 3), "method": m,
             "null>0.1%": int(max(r["null01"])), "null>0.2%": int(max(r["null02"])),
             "draws w/ null>0.1%": int(np.count_nonzero(r["null01"])),
             "max null %": round(100 * max(r["null_max"]), 3),
             "null cpp": round(float(np.mean(r["null_cpp"])), 3),
             "cpp err %": round(100 * float(np.mean(r["cpp_err"])), 1),
             "modelled": round(float(np.mean(r["kept"])), 1),
             "occ %": round(100 * float(np.mean(r["occ"])), 1)} for m, r in rows.items()]


def settings(diabetes: str, demo_patients: int) -> list[Setting]:
    from fedsynth.common.data import demo_cohort, load_codes
    from fedsynth.simulations.partition import parse_partition, partition

    out = []
    data = {"diabetes130": load_codes(diabetes, "diabetes130").X,
            "demo": demo_cohort(n_sites=3, patients_per_site=demo_patients, seed=0).X}
    for name, X in data.items():
        for eps in (1.0, 3.0):
            out.append(Setting(name, "central", eps, [X]))
        if name == "demo":  # make demo: 3 sites
            idx = partition(X, 3, parse_partition("iid"), seed=0)
            out.append(Setting(name, "3 sites", 1.0, [X[i] for i in idx]))
        idx = partition(X, 5, parse_partition("dirichlet:0.5"), seed=0)
        out.append(Setting(name, "5 sites", 1.0, [X[i] for i in idx]))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--diabetes", default=DIABETES)
    p.add_argument("--fwer", type=float, default=FWER, help="family-wise error of the test")
    p.add_argument("--demo-patients", type=int, default=800,
                   help="per site (make demo: 1000 per site, 80%% trained on)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pc = PrivacyConfig()
    table = [r for st in settings(args.diabetes, args.demo_patients)
             for r in run(st, args.draws, pc, args.fwer)]
    cols = list(table[0])
    print(" | ".join(cols))
    for r in table:
        print(" | ".join(str(r[c]) for c in cols))


if __name__ == "__main__":
    main()
