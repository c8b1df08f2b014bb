"""The benchmark's data: one dataset, one 80/20 patient split (seed 0) shared by every cell, so
generators differ only in what they learnt, never in what they saw."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsynth.common.errors import InputError
from fedsynth.simulations.benchmark_settings import DEFAULT_DATA, BenchmarkSettings


@dataclass
class DatasetInfo:
    """The ``dataset`` object of benchmark.json; ``--merge`` refuses runs whose info differs."""

    source: str
    patients: int
    codes: int
    codes_used: int
    codes_per_patient: float
    train_patients: int
    holdout_patients: int
    train_patients_before_subsampling: int
    holdout_patients_before_subsampling: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Dataset:
    train: Any  # CodeMatrix
    holdout: Any  # CodeMatrix
    info: DatasetInfo


def load_dataset(s: BenchmarkSettings) -> Dataset:
    """The named dataset (default: diabetes130 dev split; the demo cohort when absent), split
    80/20 by patient, subsampled for quick runs."""
    from fedsynth.common.data import demo_cohort, load_codes, split_holdout

    if s.data is not None:
        matrix, source = load_codes(s.data, s.format), str(s.data)
    elif DEFAULT_DATA.exists() and s.preset != "smoke":
        matrix, source = load_codes(DEFAULT_DATA, "diabetes130"), str(DEFAULT_DATA)
    else:
        matrix = demo_cohort(n_sites=s.sites, patients_per_site=s.demo_patients, seed=0)
        source = f"demo cohort ({s.sites} sites x {s.demo_patients} patients)"
    train, hold = split_holdout(matrix, s.holdout, seed=0)
    n_train_full, n_hold_full = train.n_patients, hold.n_patients
    rng = np.random.default_rng(0)
    if s.max_train and train.n_patients > s.max_train:
        train = train.subset(np.sort(rng.choice(train.n_patients, s.max_train, replace=False)))
    if s.max_holdout and hold.n_patients > s.max_holdout:
        hold = hold.subset(np.sort(rng.choice(hold.n_patients, s.max_holdout, replace=False)))
    if train.n_patients < 10 or hold.n_patients < 10:
        raise InputError(source, f"too few patients for a benchmark ({matrix.n_patients})")
    info = DatasetInfo(
        source=source, patients=matrix.n_patients, codes=matrix.n_codes,
        codes_used=int((matrix.X.sum(0) > 0).sum()),
        codes_per_patient=float(matrix.X.sum(1).mean()),
        train_patients=train.n_patients, holdout_patients=hold.n_patients,
        train_patients_before_subsampling=n_train_full,
        holdout_patients_before_subsampling=n_hold_full)
    return Dataset(train, hold, info)
