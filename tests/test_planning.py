"""privacy.planning: q, steps and sigma planned once for the DP trainer and a federated site."""

from __future__ import annotations

import pytest
from conftest import tiny_site_config

from fedsynth.client.private_train import plan_private
from fedsynth.client.site_training import SitePlan, plan_mechanism
from fedsynth.common.config import Config
from fedsynth.common.errors import BudgetExceeded
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.planning import noise_for_target, poisson_rate, steps_for_epochs


def test_rate_and_steps() -> None:
    assert poisson_rate(200, 1500) == pytest.approx(200 / 1500)
    assert poisson_rate(512, 100) == 1.0 and poisson_rate(10, 0) == 1.0
    assert steps_for_epochs(2, 200 / 1500) == 15
    assert steps_for_epochs(2, 0.25) == 8  # exact ratios do not round up
    assert steps_for_epochs(0.1, 1.0) == 1


def test_sigma_reaches_the_target_over_the_prior_and_refuses_a_spent_one() -> None:
    prior = [Mechanism(2.0, 1.0, 1)]
    sigma = noise_for_target(3.0, 1e-5, 0.1, 50, "prv", prior)
    assert epsilon([*prior, Mechanism(sigma, 0.1, 50)], 1e-5) == pytest.approx(3.0, rel=0.01)
    with pytest.raises(BudgetExceeded, match="^no room: "):
        noise_for_target(0.5, 1e-5, 0.1, 50, "prv", [Mechanism(0.5, 1.0, 1)], "no room")


def test_the_trainer_and_a_site_plan_the_same_mechanism() -> None:
    """Same n, batch, epochs, target and history: the centralized DP plan (no counts) and a
    one-round federated plan give the same q, steps and sigma."""
    c = Config()
    c.privacy.epsilon, c.privacy.delta, c.privacy.count_epsilon_share = 3.0, 1e-5, 0.0
    c.privacy.batch_size, c.privacy.epochs = 50, 1.0
    central = plan_private(400, c, [])
    s = tiny_site_config()
    s.federation.sample_rate, s.federation.local_epochs, s.train.batch_size = 0.0, 1.0, 50
    site = plan_mechanism(400, SitePlan(round=1, rounds=1, run_id="r", target_epsilon=3.0,
                                        config=s), [], budget=10.0, delta=1e-5)
    assert central.count_noise is None and central.mechanisms == [site]
