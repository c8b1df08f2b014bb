"""Server aggregation: FedAvg weighted by planned steps (capped: no site dominates), and hostile
updates (model or EMA) never averaged in."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.config import Config, FederationConfig
from fedsynth.common.errors import InputError
from fedsynth.server import checkpoint
from fedsynth.server.aggregation import (
    ServerOptimizer,
    SiteUpdate,
    aggregate,
    capped_weights,
    update_norm,
)


def _state(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"a.weight": (scale * rng.normal(size=(4, 3))).astype(np.float32),
            "a.bias": (scale * rng.normal(size=3)).astype(np.float32)}


def _site(name: str, g: dict, delta: dict, steps: float) -> SiteUpdate:
    return SiteUpdate(name, {k: g[k] + delta[k] for k in g}, steps)


def test_fedavg_is_weighted_by_planned_steps() -> None:
    """Plain FedAvg where the cap does not bind (3:1 under a ratio of 4)."""
    rng = np.random.default_rng(0)
    g = _state(rng)
    d1, d2 = _state(rng, 0.1), _state(rng, 0.1)
    res = aggregate(g, None, [_site("A", g, d1, 30), _site("B", g, d2, 10)], ServerOptimizer(),
                    max_weight_ratio=4.0)
    for k in g:
        expected = g[k] + 0.75 * d1[k] + 0.25 * d2[k]
        np.testing.assert_allclose(res.weights[k], expected, rtol=1e-5, atol=1e-6)
    assert [u.site for u in res.accepted] == ["A", "B"] and not res.rejected


def test_scaled_and_nan_updates_are_rejected_result_equals_honest_only() -> None:
    """Issue 7 acceptance: a x1000 update and a NaN update; the global model equals the one
    aggregated from the honest sites alone."""
    rng = np.random.default_rng(1)
    g = _state(rng)
    honest = [_site("A", g, _state(rng, 0.01), 20), _site("B", g, _state(rng, 0.01), 20)]
    big = _site("C", g, {k: 1000 * v for k, v in _state(rng, 0.01).items()}, 20)
    nan = _site("D", g, _state(rng, 0.01), 20)
    nan.weights["a.bias"][0] = np.nan
    res = aggregate(g, None, [*honest, big, nan], ServerOptimizer())
    ref = aggregate(g, None, [_site("A", g, {k: honest[0].weights[k] - g[k] for k in g}, 20),
                              _site("B", g, {k: honest[1].weights[k] - g[k] for k in g}, 20)],
                    ServerOptimizer())
    assert sorted(r.site for r in res.rejected) == ["C", "D"]
    for k in g:
        np.testing.assert_array_equal(res.weights[k], ref.weights[k])


def test_two_sites_one_scaled_the_honest_one_survives() -> None:
    rng = np.random.default_rng(2)
    g = _state(rng)
    d = _state(rng, 0.01)
    res = aggregate(g, None, [_site("A", g, d, 5),
                              _site("B", g, {k: 1000 * v for k, v in d.items()}, 5)],
                    ServerOptimizer())
    assert [u.site for u in res.accepted] == ["A"]
    assert [r.site for r in res.rejected] == ["B"]


def test_wrong_shape_missing_tensor_and_bad_weight_rejected() -> None:
    rng = np.random.default_rng(3)
    g = _state(rng)
    shape = SiteUpdate("S", {"a.weight": np.zeros((3, 4), np.float32), "a.bias": g["a.bias"]}, 1)
    missing = SiteUpdate("M", {"a.weight": g["a.weight"]}, 1)
    inf_ema = _site("E", g, _state(rng, 0.01), 1)
    inf_ema.ema = {k: v.copy() for k, v in g.items()}
    inf_ema.ema["a.weight"][0, 0] = np.inf
    zero_w = _site("Z", g, _state(rng, 0.01), 0)
    res = aggregate(g, g, [shape, missing, inf_ema, zero_w], ServerOptimizer())
    assert sorted(r.site for r in res.rejected) == ["E", "M", "S", "Z"]
    assert not res.accepted
    for k in g:  # nothing accepted: the global model is unchanged
        np.testing.assert_array_equal(res.weights[k], g[k])


def test_update_norm_is_l2_of_the_difference() -> None:
    g = {"w": np.zeros(4, np.float32)}
    assert update_norm(g, {"w": np.array([3, 4, 0, 0], np.float32)}) == pytest.approx(5.0)


def test_server_momentum_and_fedadam_follow_their_formulas() -> None:
    g = {"w": np.zeros(2, np.float32)}
    d = {"w": np.array([1.0, -2.0])}
    m = ServerOptimizer("fedavgm", lr=0.5, momentum=0.9)
    w1 = m.step(g, d)
    w2 = m.step(w1, d)
    np.testing.assert_allclose(w2["w"], 0.5 * d["w"] + 0.5 * (0.9 * d["w"] + d["w"]), rtol=1e-6)
    a = ServerOptimizer("fedadam", lr=0.1, momentum=0.9, beta2=0.99, tau=1e-3)
    w = a.step(g, d)
    mm, vv = 0.1 * d["w"], 0.01 * d["w"] ** 2
    np.testing.assert_allclose(w["w"], 0.1 * mm / (np.sqrt(vv) + 1e-3), rtol=1e-5)


def test_ema_is_the_weighted_mean_of_site_emas() -> None:
    rng = np.random.default_rng(4)
    g = _state(rng)
    a, b = _site("A", g, _state(rng, 0.01), 3), _site("B", g, _state(rng, 0.01), 1)
    a.ema, b.ema = _state(rng), _state(rng)
    res = aggregate(g, g, [a, b], ServerOptimizer(), max_weight_ratio=4.0)
    for k in g:
        np.testing.assert_allclose(res.ema[k], 0.75 * a.ema[k] + 0.25 * b.ema[k], rtol=1e-5)


def test_checkpoint_round_trip_and_crash_safety(tmp_path) -> None:
    rng = np.random.default_rng(5)
    w, e = _state(rng), _state(rng)
    opt = {"m": _state(rng)}
    for r in (1, 2, 3):
        checkpoint.save(tmp_path, checkpoint.Checkpoint(r, "run1", w, e, opt, {"x": r}))
    ck = checkpoint.load(tmp_path)
    assert ck.round == 3 and ck.run_id == "run1" and ck.meta["x"] == 3
    for k in w:
        np.testing.assert_array_equal(ck.weights[k], w[k])
        np.testing.assert_array_equal(ck.ema[k], e[k])
        np.testing.assert_array_equal(ck.optimizer_state["m"][k], opt["m"][k])
    assert not (tmp_path / "round-1.npz").exists()  # pruned
    # a crash while writing round 4's arrays leaves round 3 loadable
    (tmp_path / "round-4.npz").write_bytes(b"partial")
    assert checkpoint.load(tmp_path).round == 3


# --------------------------------------------------------------- issue 14: no site can dominate
def _capped_shares(weights: list[float], ratio: float) -> list[float]:
    """Independent computation: each weight against ratio x the low median of the others."""
    capped = []
    for k, w in enumerate(weights):
        others = sorted(weights[:k] + weights[k + 1:])
        low_median = others[(len(others) - 1) // 2] if others else None
        capped.append(w if low_median is None else min(w, ratio * low_median))
    return [c / sum(capped) for c in capped]


def _honest_round(rng: np.random.Generator, g: dict, weights: list[float]) -> list[SiteUpdate]:
    return [_site(f"S{i}", g, _state(rng, 0.01), w) for i, w in enumerate(weights)]


def _applied_shares(g: dict, updates: list[SiteUpdate], res) -> np.ndarray:  # noqa: ANN001
    """Solve new = g + sum_k p_k delta_k for p (plain FedAvg, server lr 1): what really ran."""
    D = np.stack([np.concatenate([(u.weights[k] - g[k]).astype(np.float64).ravel() for k in g])
                  for u in updates], axis=1)
    y = np.concatenate([(res.weights[k] - g[k]).astype(np.float64).ravel() for k in g])
    return np.linalg.lstsq(D, y, rcond=None)[0]


@pytest.mark.parametrize("k", [2, 5])
def test_a_site_reporting_1e9_examples_gets_at_most_the_capped_share(k: int) -> None:
    rng = np.random.default_rng(10 + k)
    g = _state(rng)
    weights = [1e9] + [100.0 + 10 * i for i in range(k - 1)]
    ups = _honest_round(rng, g, weights)
    res = aggregate(g, g, ups, ServerOptimizer(), max_weight_ratio=2.0)
    want = _capped_shares(weights, 2.0)
    assert len(res.accepted) == k
    got = [u.metrics["share"] for u in res.accepted]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(_applied_shares(g, ups, res), want, atol=1e-4)
    # with equal others the bound is 2/(K+1); here the others are unequal, the low median rules
    assert got[0] <= 2.0 / (k + 1) + 1e-12
    equal = _honest_round(rng, g, [1e9] + [50.0] * (k - 1))
    res = aggregate(g, g, equal, ServerOptimizer())
    assert res.accepted[0].metrics["share"] == pytest.approx(2.0 / (k + 1))


def test_a_site_with_a_tiny_weight_is_unaffected() -> None:
    rng = np.random.default_rng(20)
    g = _state(rng)
    weights = [1e-3, 40.0, 50.0, 60.0]
    ups = _honest_round(rng, g, weights)
    res = aggregate(g, g, ups, ServerOptimizer())
    np.testing.assert_allclose([u.metrics["share"] for u in res.accepted],
                               [w / sum(weights) for w in weights], rtol=1e-12)
    assert capped_weights(weights, 2.0) == weights


def test_the_cap_is_a_no_op_for_equal_sites() -> None:
    rng = np.random.default_rng(21)
    g = _state(rng)
    ups = _honest_round(rng, g, [7.0, 7.0, 7.0])
    res = aggregate(g, g, ups, ServerOptimizer())
    for k in g:  # exactly plain FedAvg: the mean of the deltas
        expected = g[k].astype(np.float64) + np.mean([u.weights[k].astype(np.float64) - g[k]
                                                      for u in ups], axis=0)
        np.testing.assert_allclose(res.weights[k], expected.astype(np.float32), rtol=1e-6,
                                   atol=1e-7)
    assert [u.metrics["share"] for u in res.accepted] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("attack", ["ema_delta_x1000", "ema_state_x1000"])
def test_ema_scaled_x1000_is_rejected_and_the_honest_site_kept(attack: str) -> None:
    """The EMA is the released model: an EMA far from the global EMA the site started from is
    rejected like a scaled update, with only two sites, and the released EMA is the honest one's."""
    rng = np.random.default_rng(22)
    g, g_ema = _state(rng), _state(rng)
    honest, evil = _honest_round(rng, g, [10.0, 10.0])
    for u in (honest, evil):
        u.ema = {k: g_ema[k] + _state(rng, 0.01)[k] for k in g}
    if attack == "ema_delta_x1000":
        evil.ema = {k: g_ema[k] + 1000 * (evil.ema[k] - g_ema[k]) for k in g}
    else:
        evil.ema = {k: 1000 * evil.ema[k] for k in g}
    res = aggregate(g, g_ema, [honest, evil], ServerOptimizer())
    assert [u.site for u in res.accepted] == [honest.site]
    assert [r.site for r in res.rejected] == [evil.site] and "EMA" in res.rejected[0].reason
    for k in g:
        np.testing.assert_allclose(res.ema[k], honest.ema[k], rtol=1e-6)


def test_max_weight_ratio_is_a_validated_federation_setting() -> None:
    assert FederationConfig().max_weight_ratio == 2.0
    assert Config.from_dict({"federation": {"max_weight_ratio": 3}}).federation.max_weight_ratio \
        == 3.0
    for bad in (1.0, 0.5, -2):
        with pytest.raises(InputError, match="max_weight_ratio"):
            Config.from_dict({"federation": {"max_weight_ratio": bad}})
    with pytest.raises(ValueError):
        capped_weights([1.0, 2.0], 1.0)
