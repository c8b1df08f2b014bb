"""ehr-train --epsilon: privacy.json recomputes, counts accounted, the ledger refuses re-spend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import client.private_train as pt
from common.config import Config, ModelConfig
from common.data import demo_cohort
from common.errors import BudgetExceeded
from common.model import build_model, load_model
from privacy.accountant import Mechanism, epsilon
from privacy.ledger import Ledger


def _config(eps: float = 4.0) -> Config:
    c = Config(model=ModelConfig(time_dim=16, sample_steps=4))
    c.privacy.epsilon, c.privacy.delta = eps, 1e-5
    c.privacy.epochs, c.privacy.batch_size, c.privacy.hidden = 2, 200, (32, 32)
    c.privacy.noise_multiplicity = 2
    c.train.seed = 0
    return c


def test_private_training_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pt, "CALIBRATION_SAMPLES", 2000)
    matrix = demo_cohort(n_sites=1, patients_per_site=1500, seed=0)
    out = tmp_path / "model"
    pt.train_centralized_private(matrix, _config(), out, progress=False)
    report = json.loads((out / "privacy.json").read_text())
    assert {"epsilon", "delta", "accountant", "history"} <= set(report)
    assert report["accountant"] == "prv" and report["delta"] == 1e-5
    hist = [Mechanism.from_dict(h) for h in report["history"]]
    assert hist[0].sample_rate == 1.0 and hist[0].steps == 1  # the private counts, accounted
    assert hist[1].sample_rate == pytest.approx(200 / 1500) and hist[1].steps == 15
    recomputed = epsilon(hist, 1e-5, "prv")
    assert report["epsilon"] == pytest.approx(recomputed, rel=0.01)
    assert 3.9 <= report["epsilon"] <= 4.0
    assert Ledger.open(out / "privacy-state", "central").history == hist
    gen = load_model(out)
    S = gen.sample(300, seed=0)
    assert S.shape == (300, len(matrix.vocab)) and S.sum() > 0
    modelled = (gen.output_step.thresholds < 1e29).sum()
    assert 0 < modelled < len(matrix.vocab)  # unseen codes are never emitted
    assert S[:, gen.output_step.thresholds >= 1e29].sum() == 0
    # the ledger persists: the same target again is refused rather than silently re-spent
    with pytest.raises(BudgetExceeded):
        pt.train_centralized_private(matrix, _config(), out, progress=False)


def test_private_counts_sensitivity_and_noise() -> None:
    X = np.zeros((5, 40), dtype=np.uint8)
    X[0, :36] = 1  # 36 codes: L2 norm 6, scaled to the clip 4
    X[1:, 3] = 1
    exact = pt.private_counts(X, clip=4.0, noise_multiplier=1e-9, rng=np.random.default_rng(0))
    assert exact[3] == pytest.approx(4 + 4 / 6)
    assert np.linalg.norm(pt.private_counts(X[:1], 4.0, 1e-9, np.random.default_rng(0))) == (
        pytest.approx(4.0))
    noisy = [pt.private_counts(X, 4.0, 2.0, np.random.default_rng(s))[39] for s in range(400)]
    assert np.std(noisy) == pytest.approx(8.0, rel=0.1)


def test_expand_codes_is_exact_on_modelled_codes() -> None:
    cfg = ModelConfig(hidden=(16, 16), time_dim=8)
    torch.manual_seed(0)
    small = build_model(3, cfg)
    kept = np.array([1, 4, 6])
    big = build_model(8, cfg)
    big.load_state_dict(pt.expand_codes(small.state_dict(), kept, 8))
    x = torch.randn(5, 8)
    sigma = torch.full((5, 1), 0.7)
    with torch.no_grad():
        assert torch.allclose(big(x, sigma)[:, kept], small(x[:, kept], sigma), atol=1e-6)
