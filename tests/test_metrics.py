"""Fidelity metrics on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.metrics import codes_per_patient, cooccurrence_r, fidelity, prevalence_r


def correlated(n: int, d: int = 40, seed: int = 0) -> np.ndarray:
    """Patients from 4 comorbidity clusters: codes within a cluster co-occur strongly."""
    rng = np.random.default_rng(seed)
    profiles = np.full((4, d), 0.01)
    for k in range(4):
        profiles[k, k * 8 : k * 8 + 8] = np.linspace(0.9, 0.3, 8)
    cluster = rng.integers(0, 4, n)
    return (rng.random((n, d)) < profiles[cluster]).astype(np.uint8)


def independent_like(X: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, X.shape[1])) < X.mean(0)).astype(np.uint8)


def test_identical_data_scores_perfectly():
    X = correlated(3000)
    m = fidelity(X, X, real_train=X)
    assert m["prevalence_r"] == pytest.approx(1.0)
    assert m["cooccurrence_r"] == pytest.approx(1.0)
    assert m["dimwise_auroc_ratio"] == pytest.approx(1.0)
    assert m["codes_per_patient_real"] == m["codes_per_patient_synth"]
    assert m["discriminator_auroc"] < 0.55


def test_independent_sampling_loses_correlations():
    real, other = correlated(4000, seed=0), correlated(4000, seed=5)
    ind = independent_like(other, 4000)
    good, bad = fidelity(real, other, seed=0), fidelity(real, ind, seed=0)
    assert good["prevalence_r"] > 0.98 and bad["prevalence_r"] > 0.98  # marginals both fine
    assert good["cooccurrence_r"] > 0.97 > bad["cooccurrence_r"]
    assert good["dimwise_auroc_ratio"] > 0.95 > 0.75 > bad["dimwise_auroc_ratio"]
    assert bad["discriminator_auroc"] > good["discriminator_auroc"]


def test_cooccurrence_uses_upper_triangle_of_rates():
    X = correlated(2000)
    flipped = X.copy()
    flipped[:, :8] = 1 - flipped[:, :8]
    assert cooccurrence_r(X, X) == pytest.approx(1.0)
    assert cooccurrence_r(X, flipped) < 0.9
    assert prevalence_r(X, flipped) < 0.9


def test_codes_per_patient_summary():
    X = np.zeros((4, 30), np.uint8)
    X[0, :2] = 1
    X[1, :4] = 1
    X[2, :25] = 1
    s = codes_per_patient(X)
    assert s["mean"] == pytest.approx(31 / 4)
    h = s["histogram"]
    assert h[0] == h[2] == h[4] == h[-1] == 0.25 and sum(h) == pytest.approx(1.0)



def test_dimwise_skips_a_code_whose_real_auroc_is_zero():
    """A tiny held-out set can give AUROC 0 trained on real: no ratio, no ZeroDivisionError
    (seen at a site with few held-out patients)."""
    from fedsynth.common.metrics import dimension_wise_prediction

    # code 0 is predicted by code 1 in training and anti-predicted in the test rows
    train = np.array([[1, 1], [1, 1], [0, 0], [0, 0]], dtype=np.uint8)
    test = np.array([[1, 0], [0, 1]], dtype=np.uint8)
    out = dimension_wise_prediction(test, train, train, k=1)
    assert out["dimwise_per_code"][0]["auroc_real"] == 0.0
    assert np.isnan(out["dimwise_auroc_ratio"])
