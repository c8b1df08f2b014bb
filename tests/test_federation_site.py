"""The site's plain functions (no Flower): budget refusals train nothing, spend is recorded
before the update is returned, the plan never exceeds the target, evaluation is aggregate."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_site_config

from fedsynth.client.site_training import (
    SiteData,
    SitePlan,
    evaluate_site,
    plan_mechanism,
    run_site_round,
    site_counts,
    steps_per_round,
)
from fedsynth.common.model.train import build_model
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.ledger import Ledger

DELTA = 1e-5  # the site's own delta, pinned in its ledger

_config = tiny_site_config


def _data(n: int = 120, v: int = 12, seed: int = 0) -> SiteData:
    rng = np.random.default_rng(seed)
    X = (rng.random((n, v)) < np.linspace(0.5, 0.05, v)).astype(np.uint8)

    class Vocab:
        name, codes = "t", tuple(f"c{i}" for i in range(v))

    return SiteData("A", X[: n * 3 // 4], X[n * 3 // 4:], Vocab())


def _plan(rnd: int, rounds: int = 2, eps: float = 3.0, kept: list[int] | None = None) -> SitePlan:
    return SitePlan(round=rnd, rounds=rounds, run_id="r1", target_epsilon=eps, config=_config(),
                    kept=kept)


def _global(n_codes: int) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy()
            for k, v in build_model(n_codes, _config().model).state_dict().items()}


def test_plan_reaches_at_most_the_target_over_all_rounds() -> None:
    plan = _plan(1, rounds=3)
    n = 400
    steps = steps_per_round(n, plan)
    assert steps == 2  # ceil(0.5 / 0.25)
    history = []
    for rnd in (1, 2, 3):
        mech = plan_mechanism(n, _plan(rnd, rounds=3), history, budget=10.0, delta=1e-4)
        history.append(mech)
    assert epsilon(history, 1e-4) <= 3.0 + 1e-6
    assert epsilon(history, 1e-4) > 2.9  # the plan spends what it may
    # sigma is planned once and kept (a history of one mechanism, cheap to account)
    assert len({m.noise_multiplier for m in history}) == 1


def test_plan_recalibrates_when_the_kept_sigma_would_overspend() -> None:
    n = 400
    first = plan_mechanism(n, _plan(1, rounds=3), [], budget=10.0, delta=1e-4)
    # the site ran twice as many steps as planned in round 1 (e.g. a changed plan)
    history = [Mechanism(first.noise_multiplier, first.sample_rate, 2 * first.steps)]
    second = plan_mechanism(n, _plan(2, rounds=3), history, budget=10.0, delta=1e-4)
    assert second.noise_multiplier > first.noise_multiplier
    history.append(second)
    history.append(plan_mechanism(n, _plan(3, rounds=3), history, budget=10.0, delta=1e-4))
    assert epsilon(history, 1e-4) <= 3.0 + 1e-6


def test_round_records_spend_before_returning_and_respects_budget(tmp_path) -> None:
    data = _data()
    ledger = Ledger.open(tmp_path, "A", DELTA)
    g = _global(data.train.shape[1])
    upd = run_site_round(g, g, data, _plan(1), ledger, budget=3.0)
    assert upd.status == "ok" and upd.steps == 2
    assert len(Ledger.open(tmp_path, "A").history) == 1  # durable, reopened from disk
    assert upd.privacy["epsilon"] == pytest.approx(Ledger.open(tmp_path, "A").epsilon(
        upd.privacy["delta"]))
    assert set(upd.weights) == set(g) and all(upd.weights[k].shape == g[k].shape for k in g)
    upd2 = run_site_round(g, g, data, _plan(2), ledger, budget=3.0)
    assert upd2.status == "ok"
    assert upd2.privacy["epsilon"] <= 3.0 + 1e-6


def test_site_refuses_and_trains_nothing_when_budget_is_spent(tmp_path) -> None:
    data = _data()
    ledger = Ledger.open(tmp_path, "A", DELTA)
    g = _global(data.train.shape[1])
    run_site_round(g, g, data, _plan(1, rounds=1, eps=3.0), ledger, budget=3.0)
    before = list(ledger.history)
    # a new run asks for another eps 3 from a site whose lifetime budget is 3
    plan = SitePlan(round=1, rounds=1, run_id="r2", target_epsilon=3.0, config=_config())
    upd = run_site_round(g, g, data, plan, ledger, budget=3.0)
    assert upd.status == "refused" and upd.weights is None and "spent" in upd.reason
    assert Ledger.open(tmp_path, "A").history == before  # nothing recorded


def test_counts_are_recorded_once_per_run_and_resent(tmp_path) -> None:
    data = _data()
    ledger = Ledger.open(tmp_path, "A", DELTA)
    first = site_counts(data, _plan(0), ledger, 3.0, tmp_path)
    again = site_counts(data, _plan(0), Ledger.open(tmp_path, "A"), 3.0, tmp_path)
    assert first.status == "ok" and first.counts.counts.shape == (data.train.shape[1],)
    np.testing.assert_array_equal(first.counts.counts, again.counts.counts)
    assert first.counts.size == again.counts.size
    assert len(Ledger.open(tmp_path, "A").history) == 1  # one release, one entry
    # the DP-SGD plan then accounts for the counts: total stays within the target
    g = _global(4)
    upd = run_site_round(g, g, data, _plan(1, rounds=1, kept=[0, 1, 2, 3]), ledger, 3.0)
    assert upd.status == "ok" and upd.privacy["epsilon"] <= 3.0 + 1e-6
    assert len(upd.privacy["history"]) == 2


def test_evaluation_returns_only_aggregate_numbers() -> None:
    data = _data(n=400)
    rng = np.random.default_rng(1)
    synth = (rng.random((200, 12)) < 0.2).astype(np.uint8)
    out = evaluate_site(synth, data)
    assert out["site"] == "A" and out["n_holdout"] == 100
    assert all(np.isscalar(v) for v in out.values())


def test_released_ema_rule(tmp_path, monkeypatch) -> None:
    """The EMA a site releases is the round's EMA (trained with the warm-up, from the round's
    global weights w0) plus d^S (e0 - w0), e0 the global EMA, d the run's decay, S the steps:
    the rule that measured best (client/site_training.py). Recomputed here by hand from what
    train_dp returned."""
    import fedsynth.client.dp_training as dp
    from fedsynth.client.site_training import _ema_decay

    data = _data()
    g = _global(data.train.shape[1])
    e0 = {k: v + 0.5 for k, v in g.items()}  # a global EMA away from the global weights
    seen = {}

    def fake_train_dp(model, X, **kw):  # what ran: weights w0 + 1, round EMA w0 + 2
        seen["warm-up default"] = "ema_warmup" not in kw
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return dp.DPResult({k: v + 1 for k, v in state.items()},
                           {k: v + 2 for k, v in state.items()},
                           Mechanism(kw["noise_multiplier"], kw["sample_rate"], kw["steps"]),
                           0.0, 1.0)

    monkeypatch.setattr(dp, "train_dp", fake_train_dp)
    plan = _plan(1)
    upd = run_site_round(g, e0, data, plan, Ledger.open(tmp_path, "A", DELTA), budget=3.0)
    d = _ema_decay(plan, upd.steps)
    for k in g:
        if np.issubdtype(g[k].dtype, np.floating):
            want = (g[k] + 2) + d ** upd.steps * (e0[k] - g[k])
            np.testing.assert_allclose(upd.ema[k], want, rtol=1e-6, atol=1e-6)
    assert seen["warm-up default"]  # the round's EMA is built with its warm-up
    k = next(k for k in g if np.issubdtype(g[k].dtype, np.floating))
    np.testing.assert_allclose(upd.weights[k], g[k] + 1, rtol=1e-6)  # the DP iterate as is


def test_released_ema_restarts_with_the_warm_up(tmp_path) -> None:
    """The rule kept for the federated EMA, with the real train_dp: one local step (S = 1) from
    the global weights w0 releases (0.1 w0 + 0.9 w1) + d (e0 - w0): the round's EMA restarted at
    w0 with the warm-up (d_0 = min(d, 1/10)), plus the global EMA's offset at weight d^S. The
    run's continued EMA without warm-up, d e0 + (1 - d) w1, is what it is not."""
    from fedsynth.client.site_training import _ema_decay

    data = _data()
    cfg = _config()
    cfg.federation.local_epochs = 0.25  # one step at q = 0.25
    plan = SitePlan(round=1, rounds=100, run_id="r1", target_epsilon=3.0, config=cfg)
    g = _global(data.train.shape[1])
    e0 = {k: v + 0.5 for k, v in g.items()}
    upd = run_site_round(g, e0, data, plan, Ledger.open(tmp_path, "A", DELTA), budget=3.0)
    assert upd.status == "ok" and upd.steps == 1
    d = _ema_decay(plan, 1)
    assert d > 0.1  # the warm-up's first decay, 0.1, is the one in force
    w1 = upd.weights
    moved = [k for k in g if np.issubdtype(g[k].dtype, np.floating) and
             not np.array_equal(g[k], w1[k])]
    assert moved
    for k in moved:
        want = (0.1 * g[k] + 0.9 * w1[k]) + d * (e0[k] - g[k])
        np.testing.assert_allclose(upd.ema[k], want, rtol=0, atol=1e-5)
        assert not np.allclose(upd.ema[k], d * e0[k] + (1 - d) * w1[k], rtol=0, atol=1e-5)
