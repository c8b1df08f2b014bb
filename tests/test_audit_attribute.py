"""medGAN attribute disclosure: copies of members leak their codes; fresh data leaks no more
than held-out real data does."""

from __future__ import annotations

import numpy as np

from fedsynth.privacy.audit.attribute import attribute_disclosure, knn_infer, known_columns
from fedsynth.privacy.audit.config import AuditConfig


def _clustered(n: int, rng: np.random.Generator, V: int = 60) -> np.ndarray:
    centres = (rng.random((8, V)) < 0.15).astype(np.uint8)
    X = centres[rng.integers(0, 8, n)].copy()
    flip = rng.random(X.shape) < 0.08
    return (X ^ flip).astype(np.uint8)


def test_knn_infer_copies_the_nearest_source() -> None:
    src = np.array([[1, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=np.uint8)
    targets = np.array([[1, 0], [0, 1]], dtype=np.uint8)
    pred = knn_infer(targets, src[:, :2], src[:, 2:], k=1, seed=0)
    assert np.array_equal(pred, src[:, 2:])


def test_known_columns_top_and_random() -> None:
    X = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 1, 0, 0]], dtype=np.uint8)
    assert known_columns(X, 2, "top", 0).tolist() == [0, 1]
    assert len(set(known_columns(X, 2, "random", 0).tolist())) == 2


def test_copies_leak_more_than_the_baseline() -> None:
    rng = np.random.default_rng(0)
    members, holdout = _clustered(400, rng), _clustered(400, rng)
    cfg = AuditConfig(attr_known=30, attr_known_mode="random", attr_k=1, attr_targets=200)
    leaky = attribute_disclosure(members.copy(), members, holdout, cfg)
    assert leaky["synthetic"]["f1"] > 0.8
    assert leaky["f1_gain_over_baseline"] > 0.2
    fresh = attribute_disclosure(_clustered(400, rng), members, holdout, cfg)
    assert abs(fresh["f1_gain_over_baseline"]) < 0.1
    assert fresh["n_targets"] == 200 and fresh["known_codes"] == 30
