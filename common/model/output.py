"""The output step: continuous sampler output -> binary codes (pluggable, stored in the model dir).

EHRDiff clips to [0, 1] and rounds at 0.5, which loses moderately likely codes (1.9 codes per
synthetic patient where real patients have 3.7). Two replacements, both plain data kept in
``output_step.json`` of a model directory:

- ``{"kind": "threshold", "threshold": t}``: code j is on when x_j > t (one scalar; EHRDiff is
  t = 0.5). ``fit_scalar_threshold`` picks t so that the mean number of codes per patient
  matches a target.
- ``{"kind": "per_code", "thresholds": [t_1, ..., t_D]}``: code j is on when x_j > t_j.
  ``fit_per_code_thresholds`` sets t_j to the (1 - p_j) quantile of the model's own continuous
  output for code j, so each code's synthetic prevalence matches a target prevalence p_j
  (codes with p_j = 0 are never emitted).

The targets (mean codes per patient or per-code prevalence) are statistics of the training
data. For the non-private model they are fitted on the training data; a private model must fix
them in advance or pass a privately estimated (and accounted) prevalence, e.g. noisy counts
from the Gaussian mechanism, to ``fit_per_code_thresholds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

NEVER = 1e30  # threshold of a code that must never be emitted (JSON has no infinity)


@dataclass
class OutputStep:
    kind: str = "threshold"
    threshold: float = 0.5
    thresholds: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Binary uint8 matrix from the continuous (n, n_codes) output: x_j > t_j."""
        return (x > self.thresholds_for(x.shape[1])[None, :]).astype(np.uint8)

    def thresholds_for(self, n_codes: int) -> np.ndarray:
        """(n_codes,) t_j: the per-code thresholds, or the scalar one for every code."""
        if self.kind == "per_code":
            if self.thresholds is None or len(self.thresholds) != n_codes:
                raise ValueError("per-code thresholds do not match the number of codes")
            return np.asarray(self.thresholds, dtype=np.float64)
        if self.kind == "threshold":
            return np.full(n_codes, float(self.threshold))
        raise ValueError(f"unknown output step kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "per_code":
            out["thresholds"] = [float(min(t, NEVER)) for t in np.asarray(self.thresholds)]
        else:
            out["threshold"] = float(self.threshold)
        out["info"] = self.info
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputStep:
        kind = data.get("kind", "threshold")
        if kind == "per_code":
            th = np.asarray(data["thresholds"], dtype=np.float64)
            return cls(kind=kind, thresholds=th, info=dict(data.get("info", {})))
        if kind == "threshold":
            return cls(kind=kind, threshold=float(data.get("threshold", 0.5)),
                       info=dict(data.get("info", {})))
        raise ValueError(f"unknown output step kind {kind!r}")


def fit_scalar_threshold(continuous: np.ndarray, target_codes_per_patient: float) -> float:
    """The scalar t with mean_i sum_j [x_ij > t] = target: the (1 - target/D) quantile of x."""
    n, d = continuous.shape
    frac = float(np.clip(target_codes_per_patient / d, 0.0, 1.0))
    return float(np.quantile(continuous, 1.0 - frac))


def fit_per_code_thresholds(continuous: np.ndarray, prevalence: np.ndarray) -> np.ndarray:
    """t_j = the (1 - p_j) quantile of column j of the continuous output; NEVER where p_j <= 0."""
    p = np.clip(np.asarray(prevalence, dtype=np.float64), 0.0, 1.0)
    if p.shape != (continuous.shape[1],):
        raise ValueError("prevalence must have one entry per code")
    n = continuous.shape[0]
    # the (1 - p) quantile: round(p n) samples lie above it
    k = np.clip(np.rint(p * n).astype(np.int64), 0, n)
    th = np.full(len(p), NEVER)
    cols = np.flatnonzero(k > 0)
    if len(cols):
        q = np.sort(continuous[:, cols], axis=0)
        th[cols] = q[np.clip(n - k[cols] - 1, 0, n - 1), np.arange(len(cols))]
        th[cols[k[cols] >= n]] = -NEVER  # every patient has the code
    return th
