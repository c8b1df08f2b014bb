"""Server aggregation: FedAvg weighted by planned steps, and hostile updates never averaged in."""

from __future__ import annotations

import numpy as np
import pytest

from server import checkpoint
from server.aggregation import ServerOptimizer, SiteUpdate, aggregate, update_norm


def _state(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"a.weight": (scale * rng.normal(size=(4, 3))).astype(np.float32),
            "a.bias": (scale * rng.normal(size=3)).astype(np.float32)}


def _site(name: str, g: dict, delta: dict, steps: float) -> SiteUpdate:
    return SiteUpdate(name, {k: g[k] + delta[k] for k in g}, steps)


def test_fedavg_is_weighted_by_planned_steps() -> None:
    rng = np.random.default_rng(0)
    g = _state(rng)
    d1, d2 = _state(rng, 0.1), _state(rng, 0.1)
    res = aggregate(g, None, [_site("A", g, d1, 30), _site("B", g, d2, 10)], ServerOptimizer())
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
    res = aggregate(g, g, [a, b], ServerOptimizer())
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
