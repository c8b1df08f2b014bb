"""Split one cohort into simulated sites: ``iid``, ``dirichlet:ALPHA`` or ``column:NAME``.

Every partition is a list of disjoint index arrays covering all patients (a patient is in exactly
one site, the assumption behind releasing max_k epsilon_k).

- ``iid``: a random permutation cut into near-equal parts.
- ``dirichlet:ALPHA`` (label-skew, Hsu et al. 2019 / Yurochkin et al. 2019): each patient gets a
  label (its rarest code among the ``n_labels`` most common codes, or "other"); for every label
  the share of each site is drawn from Dir(ALPHA * 1_K). Small ALPHA: strongly non-IID.
- ``column:NAME``: one site per value (or group of values) of a per-patient covariate, e.g.
  ``column:site`` on the demo cohort or ``column:age`` on diabetes130. With more values than
  sites, values are packed greedily (largest first onto the smallest site).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsynth.common.errors import InputError


@dataclass(frozen=True)
class PartitionSpec:
    kind: str  # iid | dirichlet | column
    alpha: float = 0.5
    column: str = ""


def parse_partition(text: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:ALPHA`` or ``column:NAME`` (InputError otherwise)."""
    kind, _, arg = text.partition(":")
    if kind == "iid" and not arg:
        return PartitionSpec("iid")
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if not alpha > 0 or not np.isfinite(alpha):
            raise InputError("--partition", f"'{text}': ALPHA must be a positive number",
                             "e.g. dirichlet:0.5")
        return PartitionSpec("dirichlet", alpha=alpha)
    if kind == "column" and arg:
        return PartitionSpec("column", column=arg)
    raise InputError("--partition", f"unknown partition '{text}'",
                     "use iid, dirichlet:ALPHA or column:NAME")


def iid(n: int, n_sites: int, seed: int = 0) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, n_sites)]


def patient_labels(X: np.ndarray, n_labels: int = 16) -> np.ndarray:
    """Label = index (in ``0..n_labels-1``, by decreasing prevalence) of the patient's rarest
    code among the ``n_labels`` most common codes; ``n_labels`` if it has none of them."""
    prevalence = X.mean(axis=0)
    top = np.argsort(-prevalence, kind="stable")[:n_labels]
    has = X[:, top].astype(bool)
    # rarest = the last (highest rank) top code the patient has
    rank = np.where(has, np.arange(len(top))[None, :], -1).max(axis=1)
    return np.where(rank >= 0, rank, len(top))


def dirichlet(
    labels: np.ndarray, n_sites: int, alpha: float, seed: int = 0, min_size: int = 10,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed partition: per label, site shares ~ Dir(alpha). Redrawn (up to
    ``max_tries``) until every site has at least ``min_size`` patients."""
    n = len(labels)
    min_size = min(min_size, n // n_sites)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
        for lab in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == lab))
            shares = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise InputError("--partition", f"dirichlet:{alpha} left a site with fewer than {min_size} "
                     f"patients after {max_tries} draws", "use a larger ALPHA or fewer sites")


def by_column(values: pd.Series | np.ndarray, n_sites: int, name: str = "") -> list[np.ndarray]:
    """One site per value; with more values than sites, pack values greedily by size."""
    vals = pd.Series(np.asarray(values)).astype(str).fillna("?")
    counts = vals.value_counts()
    if len(counts) < n_sites:
        raise InputError("--partition", f"column '{name}' has {len(counts)} distinct values, "
                         f"fewer than --sites {n_sites}", "use fewer sites or another column")
    groups: list[list[str]] = [[] for _ in range(n_sites)]
    sizes = [0] * n_sites
    for value, count in counts.items():  # largest first
        k = int(np.argmin(sizes))
        groups[k].append(str(value))
        sizes[k] += int(count)
    arr = vals.to_numpy()
    return [np.flatnonzero(np.isin(arr, g)) for g in groups]


def partition(
    X: np.ndarray,
    n_sites: int,
    spec: PartitionSpec,
    covariates: pd.DataFrame | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Indices of each site's patients (disjoint, covering all rows)."""
    n = X.shape[0]
    if n_sites < 1:
        raise InputError("--sites", f"must be at least 1 (got {n_sites})")
    if n < 2 * n_sites:
        raise InputError("--data", f"{n} patients are too few for {n_sites} sites")
    if spec.kind == "iid":
        return iid(n, n_sites, seed)
    if spec.kind == "dirichlet":
        return dirichlet(patient_labels(X), n_sites, spec.alpha, seed)
    if covariates is None or spec.column not in covariates.columns:
        have = [] if covariates is None else list(covariates.columns)
        raise InputError("--partition", f"column '{spec.column}' not found in the data's "
                         f"per-patient covariates (have: {', '.join(map(str, have)) or 'none'})")
    return by_column(covariates[spec.column].to_numpy(), n_sites, spec.column)
