"""The patient x code matrix that every loader returns and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fedsynth.common.vocabulary import Vocabulary


@dataclass
class LoadReport:
    """What a loader read and what it did with codes it could not place."""

    path: str = ""
    format: str = ""
    rows_read: int = 0
    patients: int = 0
    codes_used: int = 0
    missing_codes: int = 0
    out_of_vocabulary: dict[str, int] = field(default_factory=dict)
    icd10_rows: int = 0
    icd10_handling: str = "none"
    vocabulary: str = ""
    title_source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def out_of_vocabulary_rows(self) -> int:
        return int(sum(self.out_of_vocabulary.values()))

    def summary(self) -> str:
        """One line for a CLI: what was read and what happened to codes that did not fit."""
        oov = (f"{self.out_of_vocabulary_rows} rows / {len(self.out_of_vocabulary)} codes outside "
               "the vocabulary" if self.out_of_vocabulary else "no codes outside the vocabulary")
        ten = f"; ICD-10: {self.icd10_handling}" if self.icd10_rows else ""
        return (f"{self.path} ({self.format}): {self.rows_read} rows, {self.patients} patients, "
                f"{self.codes_used} codes used of {self.vocabulary}; {oov}{ten}")

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.format,
            "rows_read": self.rows_read,
            "patients": self.patients,
            "codes_used": self.codes_used,
            "missing_codes": self.missing_codes,
            "out_of_vocabulary": dict(self.out_of_vocabulary),
            "icd10_rows": self.icd10_rows,
            "icd10_handling": self.icd10_handling,
            "vocabulary": self.vocabulary,
            "title_source": self.title_source,
            "notes": list(self.notes),
        }


@dataclass
class CodeMatrix:
    """X: (n_patients, n_codes) uint8 0/1; column j is ``vocab.codes[j]``."""

    X: np.ndarray
    patient_ids: np.ndarray
    vocab: Vocabulary
    source: str = ""
    report: LoadReport = field(default_factory=LoadReport)
    covariates: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        self.X = np.ascontiguousarray(self.X, dtype=np.uint8)
        self.patient_ids = np.asarray(self.patient_ids).astype(str)
        if self.X.ndim != 2 or self.X.shape[1] != len(self.vocab):
            raise ValueError(f"X has shape {self.X.shape}, vocabulary has {len(self.vocab)} codes")
        if len(self.patient_ids) != self.X.shape[0]:
            raise ValueError("patient_ids and X disagree on the number of patients")
        if self.covariates is not None:
            if len(self.covariates) != self.X.shape[0]:
                raise ValueError("covariates and X disagree on the number of patients")
            self.covariates = self.covariates.reset_index(drop=True)

    @property
    def n_patients(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_codes(self) -> int:
        return int(self.X.shape[1])

    def __len__(self) -> int:
        return self.n_patients

    def codes_per_patient(self) -> np.ndarray:
        """Number of distinct codes of each patient."""
        return self.X.sum(axis=1, dtype=np.int64)

    def prevalence(self) -> np.ndarray:
        """Fraction of patients with each code."""
        n = max(self.n_patients, 1)
        return self.X.sum(axis=0, dtype=np.int64) / n

    def used_codes(self) -> list[str]:
        """Vocabulary codes that at least one patient has."""
        used = np.flatnonzero(self.X.any(axis=0))
        return [self.vocab.codes[j] for j in used]

    def subset(self, indices: np.ndarray | list[int]) -> CodeMatrix:
        """The patients at ``indices`` (integer positions or a boolean mask), same vocabulary."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        cov = None if self.covariates is None else self.covariates.iloc[idx].reset_index(drop=True)
        return CodeMatrix(
            self.X[idx], self.patient_ids[idx], self.vocab, self.source, self.report, cov
        )

    def split_by(self, column: str) -> dict[str, CodeMatrix]:
        """One matrix per value of a covariate column (e.g. 'site'), in sorted order."""
        if self.covariates is None or column not in self.covariates.columns:
            have = [] if self.covariates is None else list(self.covariates.columns)
            raise KeyError(f"no covariate {column!r} (covariates: {have})")
        values = self.covariates[column].astype(str).to_numpy()
        return {v: self.subset(values == v) for v in sorted(set(values))}
