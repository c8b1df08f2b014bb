"""ehr-train --epsilon: privacy.json recomputes, counts accounted, the ledger refuses re-spend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fedsynth.client.private_train as pt
import fedsynth.common.model.calibrate as calibration
from fedsynth.common.config import Config, ModelConfig
from fedsynth.common.data import demo_cohort
from fedsynth.common.errors import BudgetExceeded
from fedsynth.common.model import load_model
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.ledger import Ledger, user_state_dir


def _config(eps: float = 4.0) -> Config:
    c = Config(model=ModelConfig(time_dim=16, sample_steps=4))
    c.privacy.epsilon, c.privacy.delta = eps, 1e-5
    c.privacy.epochs, c.privacy.batch_size, c.privacy.hidden = 2, 200, (32, 32)
    c.privacy.noise_multiplicity = 2
    c.train.seed = 0
    return c


def test_private_training_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(calibration, "CALIBRATION_SAMPLES", 2000)  # read by release_generator
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
    # the ledger lives in the user's state folder, keyed by the data set, not in --out
    assert not (out / "privacy-state").exists()
    assert Ledger.open(user_state_dir(), pt.data_set_site(matrix)).history == hist
    gen = load_model(out)
    S = gen.sample(300, seed=0)
    assert S.shape == (300, len(matrix.vocab)) and S.sum() > 0
    assert gen.modelled is not None and 0 < len(gen.modelled) < len(matrix.vocab)
    unmodelled = np.setdiff1d(np.arange(len(matrix.vocab)), gen.modelled)
    tail = gen.tail if gen.tail is not None else np.zeros(len(matrix.vocab))
    never = unmodelled[tail[unmodelled] == 0]
    assert S[:, never].sum() == 0  # neither modelled nor in the tail: never generated
    assert np.all(tail <= 5e-4)  # the tail stays below a visible prevalence
    # the binary model's prior is the private prevalence of the modelled codes, not the data's
    prior = torch.sigmoid(gen.model.prior_logit).numpy()
    true = matrix.X[:, gen.modelled].mean(axis=0)
    assert not np.allclose(prior, true) and np.corrcoef(prior, true)[0, 1] > 0.9
    # the ledger persists: the same target again is refused rather than silently re-spent
    with pytest.raises(BudgetExceeded):
        pt.train_centralized_private(matrix, _config(), out, progress=False)


def test_count_epsilon_floor_against_hand_values() -> None:
    """privacy.counts.count_epsilon = max(share*eps, min(floor, 0.5*eps)), computed by hand."""
    from fedsynth.privacy.counts import count_epsilon

    assert count_epsilon(3.0, 0.1, 0.3) == pytest.approx(0.3)  # share and floor agree
    assert count_epsilon(1.0, 0.1, 0.5) == pytest.approx(0.5)  # floor: 0.5, not 0.1
    assert count_epsilon(10.0, 0.1, 0.5) == pytest.approx(1.0)  # share above the floor
    assert count_epsilon(0.5, 0.1, 0.5) == pytest.approx(0.25)  # floor capped at 50%
    assert count_epsilon(1.0, 0.0, 0.3) == 0.0  # share 0: no counts at all
    assert count_epsilon(1.0, 0.1, 0.0) == pytest.approx(0.1)  # no floor: the plain share


def test_plan_private_counts_use_the_floor_at_low_epsilon() -> None:
    """At epsilon 1 the counts are calibrated to epsilon 0.5 (the floor), not 0.1 (the share):
    the counts' mechanism alone, accounted independently, spends 0.5."""
    from fedsynth.client.private_train import plan_private
    from fedsynth.common.config import Config
    from fedsynth.privacy.accountant import Mechanism, epsilon

    cfg = Config()
    cfg.privacy.epsilon, cfg.privacy.delta = 1.0, 1e-6
    plan = plan_private(40_000, cfg, [])
    spent = epsilon([Mechanism(plan.count_noise, 1.0, 1)], 1e-6, "prv")
    assert spent == pytest.approx(0.5, rel=0.05)
    assert epsilon(plan.mechanisms, 1e-6, "prv") <= 1.0 + 1e-6


def test_records_models_use_their_own_expected_batch() -> None:
    """A whole-records model (one-hot groups) samples DP-SGD batches of
    ``privacy.records_batch_size``, a codes model of ``privacy.batch_size``; either way the
    plan stays within the budget."""
    from fedsynth.client.private_train import plan_private
    from fedsynth.common.config import Config
    from fedsynth.privacy.accountant import epsilon

    n = 40_000
    for groups, batch in (((), 2048), ((3, 4), 4096)):
        cfg = Config()
        cfg.privacy.epsilon, cfg.privacy.delta = 3.0, 1e-6
        cfg.privacy.batch_size, cfg.privacy.records_batch_size = 2048, 4096
        cfg.model.one_hot_groups = groups
        assert cfg.private_batch() == batch
        plan = plan_private(n, cfg, [])
        assert plan.sample_rate == pytest.approx(batch / n)
        assert (plan.column_noise is not None) == bool(groups)
        assert epsilon(plan.mechanisms, 1e-6, "prv") <= 3.0 + 1e-6
