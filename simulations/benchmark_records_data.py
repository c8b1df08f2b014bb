"""The records benchmark's data (``ehr-benchmark --columns all``): whole patient records
(``load_records``), one patient split shared by every cell, like ``benchmark_data`` for codes.

Without data (``--smoke``, or no diabetes130 file) a small demo of records stands in: the demo
cohort's codes beside six columns whose values depend on the codes and on each other, so that
association and the downstream task have something to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.data.record_tokens import TokenLayout, token_layout
from fedsynth.common.data.records import Records
from fedsynth.common.data.schema import Schema, schema_from_dict
from fedsynth.common.errors import InputError
from fedsynth.common.record_metrics import default_target
from fedsynth.simulations.benchmark_settings import DEFAULT_DATA, BenchmarkSettings

DEMO_SCHEMA: dict[str, Any] = {
    "name": "demo-records",
    "description": "benchmark smoke records: demo cohort codes plus six made-up columns",
    "columns": [
        {"name": "sex", "kind": "categorical", "categories": ["F", "M"]},
        {"name": "age", "kind": "categorical", "categories": ["[0-40)", "[40-65)", "[65+)"]},
        {"name": "admission", "kind": "categorical",
         "categories": ["ELECTIVE", "EMERGENCY", "URGENT"]},
        {"name": "los_days", "kind": "integer", "low": 0, "high": 60, "transform": "log1p"},
        {"name": "n_medications", "kind": "integer", "low": 0, "high": 100},
        {"name": "readmitted", "kind": "categorical", "categories": ["NO", ">30", "<30"]},
    ],
}


@dataclass
class RecordDataset:
    train: Records
    holdout: Records
    layout: TokenLayout
    target: str | None  # COLUMN=VALUE of the downstream task; None: no downstream task
    info: dict[str, Any]

    @property
    def schema(self) -> Schema:
        return self.train.schema


def demo_records(n_sites: int, patients_per_site: int, seed: int = 0) -> Records:
    """The demo cohort's codes with a made-up record per patient (module docstring)."""
    from fedsynth.common.data import demo_cohort

    codes = demo_cohort(n_sites=n_sites, patients_per_site=patients_per_site, seed=seed)
    schema = schema_from_dict(DEMO_SCHEMA, "demo records")
    rng = np.random.default_rng([seed, 0xDE30])
    n = codes.n_patients
    burden = codes.X.sum(1).astype(float)
    z = (burden - burden.mean()) / max(burden.std(), 1e-9)
    age = np.clip(np.round(1 + 0.8 * z + rng.normal(0, 0.7, n)), 0, 2).astype(int)
    adm = np.where(rng.random(n) < 0.3 + 0.15 * (age == 2), 1,
                   np.where(rng.random(n) < 0.2, 2, 0))
    los = np.clip(np.round(np.expm1(1.2 + 0.3 * z + 0.4 * (adm == 1)
                                    + rng.normal(0, 0.5, n))), 0, 60).astype(int)
    meds = np.clip(np.round(8 + 3 * burden + rng.normal(0, 4, n)), 0, 100).astype(int)
    risk = -2.2 + 0.6 * z + 0.5 * (age == 2) + 0.08 * los
    p30 = 1 / (1 + np.exp(-risk))
    u = rng.random(n)
    readm = np.where(u < p30, 2, np.where(u < p30 + 0.3, 1, 0))
    cat = {c.name: list(c.categories or ()) for c in schema.columns if c.is_categorical}

    def categorical(name: str, idx: np.ndarray) -> pd.Categorical:
        return pd.Categorical(np.array(cat[name], dtype=object)[idx], categories=cat[name])

    table = pd.DataFrame({
        "sex": categorical("sex", (rng.random(n) < 0.45 + 0.1 * (age == 0)).astype(int)),
        "age": categorical("age", age),
        "admission": categorical("admission", adm),
        "los_days": pd.array(los, dtype="Int64"),
        "n_medications": pd.array(meds, dtype="Int64"),
        "readmitted": categorical("readmitted", readm),
    })
    return Records(codes.patient_ids, table, codes, schema)


def split_records(records: Records, holdout: float, seed: int = 0) -> tuple[Records, Records]:
    """(train, held-out) by patient: the patients of ``split_holdout`` on the codes."""
    from fedsynth.common.data import split_holdout

    train, hold = split_holdout(records.codes, holdout, seed=seed)
    pos = pd.Index(records.patient_ids)
    return (records.subset(pos.get_indexer(train.patient_ids)),
            records.subset(pos.get_indexer(hold.patient_ids)))


def load_record_dataset(s: BenchmarkSettings) -> RecordDataset:
    """The named dataset's records (default: diabetes130 dev split; the demo records when
    absent or for ``--smoke``), split by patient, subsampled for quick runs."""
    from fedsynth.common.data.records import load_records
    from fedsynth.common.record_metrics import parse_target

    if s.data is not None:
        records, source = load_records(s.data, s.format), str(s.data)
    elif DEFAULT_DATA.exists() and s.preset != "smoke":
        records, source = load_records(DEFAULT_DATA, "diabetes130"), str(DEFAULT_DATA)
    else:
        records = demo_records(s.sites, s.demo_patients)
        source = f"demo records ({s.sites} sites x {s.demo_patients} patients)"
    train, hold = split_records(records, s.holdout)
    n_train_full, n_hold_full = len(train), len(hold)
    rng = np.random.default_rng(0)
    if s.max_train and len(train) > s.max_train:
        train = train.subset(np.sort(rng.choice(len(train), s.max_train, replace=False)))
    if s.max_holdout and len(hold) > s.max_holdout:
        hold = hold.subset(np.sort(rng.choice(len(hold), s.max_holdout, replace=False)))
    if len(train) < 10 or len(hold) < 10:
        raise InputError(source, f"too few patients for a benchmark ({len(records)})")
    target = s.target or default_target(records.schema)
    if target:
        parse_target(target, records.schema)  # a bad --target: one line before any training
    X = records.codes.X
    info = {"source": source, "schema": records.schema.name, "patients": len(records),
            "columns": len(records.schema.columns), "codes": int(X.shape[1]),
            "codes_used": int((X.sum(0) > 0).sum()),
            "codes_per_patient": float(X.sum(1).mean()) if len(records) else 0.0,
            "train_patients": len(train), "holdout_patients": len(hold),
            "train_patients_before_subsampling": n_train_full,
            "holdout_patients_before_subsampling": n_hold_full, "target": target}
    return RecordDataset(train, hold, token_layout(records.schema), target, info)
