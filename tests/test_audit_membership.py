"""Black-box membership attacks: exact distances, and signal only where there is memorisation."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.special import logsumexp

from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.membership import membership_attacks, nearest_stats, roc_summary


def _population(n: int, V: int, rng: np.random.Generator, parts: int = 1) -> list[np.ndarray]:
    """``parts`` independent samples of n patients from one population."""
    p = np.minimum(0.4, rng.pareto(1.5, V) * 0.01 + 0.005)
    return [(rng.random((n, V)) < p).astype(np.uint8) for _ in range(parts)]


def test_nearest_stats_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    Q, B = _population(40, 120, rng)[0], _population(300, 120, rng)[0]
    Q[0] = 0  # an empty patient: Jaccard with an empty record is defined as identical
    B[5] = 0
    got = nearest_stats(Q, B, bandwidth=0.7)
    d = (Q[:, None, :] != B[None, :, :]).sum(-1)
    inter = (Q[:, None, :] & B[None, :, :]).sum(-1)
    union = (Q[:, None, :] | B[None, :, :]).sum(-1)
    jac = 1 - np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    assert np.array_equal(got.hamming, d.min(axis=1))
    assert np.allclose(got.jaccard, jac.min(axis=1))
    assert np.allclose(got.log_kde, logsumexp(-d / 0.7, axis=1) - np.log(len(B)), atol=1e-4)


def test_roc_summary_known_values() -> None:
    res = roc_summary(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0, 2.0]))
    assert res["auroc"] == 1.0 and res["tpr_at_fpr_1pct"] == 1.0
    res = roc_summary(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    assert res["auroc"] == 0.0 and res["tpr_at_fpr_0.1pct"] == 0.0
    assert res["roc"]["fpr"][0] == 0.0 and res["roc"]["tpr"][-1] == 1.0


def test_copies_are_flagged_and_fresh_samples_are_not() -> None:
    rng = np.random.default_rng(1)
    V = 400
    members, non_members, fresh = _population(600, V, rng, parts=3)
    cfg = AuditConfig(presence_fractions=(0.1, 1.0))
    leaky = np.vstack([members[:300], fresh[:300]])  # a generator that copies half its members
    res = membership_attacks(leaky, members, non_members, cfg=cfg)
    for attack in ("dcr_hamming", "dcr_jaccard", "domias"):
        assert res[attack]["auroc"] > 0.65, attack
        assert res[attack]["tpr_at_fpr_1pct"] > 0.3, attack
    exact = next(b for b in res["presence"] if b["fraction"] == 1.0)["by_distance"][0]
    assert exact["sensitivity"] >= 0.5 and exact["precision"] > 0.9
    private = membership_attacks(fresh, members, non_members, cfg=cfg)
    for attack in ("dcr_hamming", "dcr_jaccard", "domias"):
        assert abs(private[attack]["auroc"] - 0.5) < 0.06, attack


def test_fast_enough_for_realistic_sizes() -> None:
    rng = np.random.default_rng(2)
    V = 2090
    S, M, N = _population(3000, V, rng, parts=3)
    t0 = time.perf_counter()
    membership_attacks(S, M, N)
    assert time.perf_counter() - t0 < 20  # 10k x 10k x 2,090 takes a few seconds


def test_too_few_rows_is_an_error() -> None:
    X = np.zeros((1, 5), dtype=np.uint8)
    with pytest.raises(ValueError):
        membership_attacks(X, X, X)
