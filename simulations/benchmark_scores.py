"""How one synthetic sample is scored: fidelity against the held-out patients
(``common.metrics.fidelity``) and two disclosure attacks (``privacy.audit``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsynth.simulations.benchmark_data import Dataset


@dataclass
class Scores:
    """One cell's metrics; the field names are benchmark.json's row keys."""

    prevalence_r: float
    cooccurrence_r: float
    dimwise_auroc_ratio: float
    discriminator_auroc: float
    codes_per_patient: float
    codes_per_patient_real: float
    membership_auroc: float
    attribute_f1: float
    attribute_f1_holdout_baseline: float


def membership_auroc(synth: np.ndarray, members: np.ndarray, non_members: np.ndarray) -> float:
    """AUROC of 'member' = small Hamming distance to the closest synthetic record."""
    from fedsynth.privacy.audit.membership import nearest_stats, roc_summary

    dm = nearest_stats(members, synth).hamming
    dn = nearest_stats(non_members, synth).hamming
    return float(roc_summary(-dm, -dn)["auroc"])


def score(synth: np.ndarray, ds: Dataset, audit_rows: int, seed: int) -> Scores:
    """Fidelity against the held-out patients, and the two disclosure attacks: membership by
    distance to the closest record (members = ``audit_rows`` training patients, non-members =
    as many held-out ones) and medGAN's k-NN attribute disclosure."""
    from fedsynth.common.metrics import fidelity
    from fedsynth.privacy.audit.attribute import attribute_disclosure
    from fedsynth.privacy.audit.config import AuditConfig

    rng = np.random.default_rng(seed)
    train_X, hold_X = ds.train.X, ds.holdout.X
    real_train = train_X[rng.choice(len(train_X), min(len(train_X), len(synth)), replace=False)]
    fid = fidelity(hold_X, synth, real_train=real_train, seed=seed)
    m = min(audit_rows, len(train_X), len(hold_X))
    members = train_X[rng.choice(len(train_X), m, replace=False)]
    non_members = hold_X[rng.choice(len(hold_X), m, replace=False)]
    attr = attribute_disclosure(synth, members, hold_X,
                                AuditConfig(seed=seed, attr_targets=min(1000, m)))
    return Scores(
        prevalence_r=fid["prevalence_r"],
        cooccurrence_r=fid["cooccurrence_r"],
        dimwise_auroc_ratio=fid["dimwise_auroc_ratio"],
        discriminator_auroc=fid["discriminator_auroc"],
        codes_per_patient=fid["codes_per_patient_synth"]["mean"],
        codes_per_patient_real=fid["codes_per_patient_real"]["mean"],
        membership_auroc=membership_auroc(synth, members, non_members),
        attribute_f1=attr["synthetic"]["f1"],
        attribute_f1_holdout_baseline=attr["baseline_holdout"]["f1"],
    )
