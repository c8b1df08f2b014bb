"""Simulated sites: every partition is disjoint and covers all patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.errors import InputError
from fedsynth.simulations.partition import parse_partition, partition, patient_labels


def _matrix(n: int = 600, v: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, v)) < np.linspace(0.4, 0.01, v)).astype(np.uint8)


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "dirichlet:100"])
def test_partitions_are_disjoint_and_cover(spec: str) -> None:
    X = _matrix()
    parts = partition(X, 5, parse_partition(spec), seed=1)
    assert len(parts) == 5
    _check_cover(parts, X.shape[0])
    assert min(len(p) for p in parts) >= 10


def test_small_alpha_is_more_skewed_than_large() -> None:
    X = _matrix(3000)
    labels = patient_labels(X)

    def skew(spec: str) -> float:
        parts = partition(X, 4, parse_partition(spec), seed=2)
        overall = np.bincount(labels, minlength=labels.max() + 1) / len(labels)
        return float(np.mean([np.abs(np.bincount(labels[p], minlength=len(overall)) / len(p)
                                     - overall).sum() for p in parts]))

    assert skew("dirichlet:0.1") > 2 * skew("dirichlet:100")


def test_column_partition_one_site_per_value_and_packing() -> None:
    X = _matrix(300)
    cov = pd.DataFrame({"site": np.repeat(["A", "B", "C"], 100),
                        "age": np.tile(["[0-10)", "[10-20)", "[20-30)", "[30-40)", "[40-50)"],
                                       60)})
    parts = partition(X, 3, parse_partition("column:site"), cov)
    assert sorted(len(np.unique(cov["site"].to_numpy()[p])) for p in parts) == [1, 1, 1]
    parts = partition(X, 2, parse_partition("column:age"), cov)
    _check_cover(parts, 300)
    with pytest.raises(InputError, match="not found"):
        partition(X, 2, parse_partition("column:nope"), cov)
    with pytest.raises(InputError, match="fewer than --sites"):
        partition(X, 4, parse_partition("column:site"), cov)


@pytest.mark.parametrize("bad", ["dirichlet:-1", "dirichlet:x", "random", "column:"])
def test_bad_specs_are_input_errors(bad: str) -> None:
    with pytest.raises(InputError):
        parse_partition(bad)
