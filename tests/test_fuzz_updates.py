"""Hostile site updates at the server (server/aggregation.py): whatever a site sends, the round
never crashes, the global model stays finite with its dtypes and shapes, and with honest sites
in the majority the result equals the honest-only aggregate.

Flower deserialises arrays with ``np.load(allow_pickle=False)``, so a hostile ClientApp can still
send any non-object dtype (unicode, bytes, complex, structured, datetime) and any metric value.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsynth.server.aggregation import ServerOptimizer, SiteUpdate, aggregate

EXAMPLES = int(os.environ.get("FEDSYNTH_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
                derandomize=EXAMPLES <= 25, suppress_health_check=[HealthCheck.too_slow])
SHAPES = {"a.weight": (4, 3), "a.bias": (3,)}


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _honest(g: dict[str, np.ndarray], seed: int) -> SiteUpdate:
    rng = np.random.default_rng(seed)
    return SiteUpdate(f"honest{seed}", {k: (v + 0.01 * rng.normal(size=v.shape)).astype(v.dtype)
                                        for k, v in g.items()}, 10.0)


_FLOAT_ARRAY = st.sampled_from(sorted(SHAPES)).flatmap(lambda k: hnp.arrays(
    st.sampled_from([np.float32, np.float64, np.float16]), SHAPES[k],
    elements=st.floats(allow_nan=True, allow_infinity=True, width=16)))


def _hostile_tensor(name: str) -> st.SearchStrategy[object]:
    shape = SHAPES[name]
    return st.one_of(
        hnp.arrays(np.float32, shape, elements=st.floats(allow_nan=True, allow_infinity=True,
                                                         width=32)),
        hnp.arrays(np.float32, shape, elements=st.floats(-1e4, 1e4, width=32)).map(
            lambda a: a * np.float32(1000)),
        hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5)),
        hnp.arrays(np.int64, shape), hnp.arrays(np.bool_, shape),
        st.just(np.zeros(shape, dtype=np.float32)),
        st.none(), st.just([[0.0] * 3] * 4), st.just(3.0),
    )


_SAFE_DTYPE_TENSOR = st.sampled_from(sorted(SHAPES)).flatmap(_hostile_tensor)
_WEIGHT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**6),
                    st.just(0.0))


@st.composite
def hostile_update(draw: st.DrawFn, g: dict[str, np.ndarray]) -> SiteUpdate:
    weights = {k: draw(_hostile_tensor(k)) for k in g}
    if draw(st.booleans()):
        weights.pop(draw(st.sampled_from(sorted(g))))
    if draw(st.booleans()):
        weights["extra"] = np.zeros(2, np.float32)
    return SiteUpdate("hostile", weights, draw(_WEIGHT))  # type: ignore[arg-type]


def _check_round(g: dict[str, np.ndarray], updates: list[SiteUpdate]) -> None:
    res = aggregate(g, None, updates, ServerOptimizer())
    for k, v in g.items():
        out = res.weights[k]
        assert out.shape == v.shape and out.dtype == v.dtype
        assert np.all(np.isfinite(out))
    honest = [u for u in updates if u.site.startswith("honest")]
    assert {u.site for u in honest} <= {u.site for u in res.accepted}


@FUZZ
@given(data=st.data(), n_hostile=st.integers(1, 2))
def test_hostile_updates_never_crash_or_poison_the_round(data: st.DataObject,
                                                         n_hostile: int) -> None:
    g = _global()
    honest = [_honest(g, s) for s in range(1, 4)]
    hostile = [data.draw(hostile_update(g)) for _ in range(n_hostile)]
    _check_round(g, [*honest, *hostile])


@FUZZ
@given(factor=st.sampled_from([1e3, 1e6, -1e3]), bad=st.sampled_from(["nan", "inf", "shape"]))
def test_result_equals_honest_only(factor: float, bad: str) -> None:
    g = _global()
    honest = [_honest(g, s) for s in range(1, 4)]
    scaled = _honest(g, 9)
    scaled.site = "scaled"
    scaled.weights = {k: g[k] + factor * (v - g[k]) for k, v in scaled.weights.items()}
    broken = _honest(g, 10)
    broken.site = "broken"
    if bad == "shape":
        broken.weights["a.bias"] = np.zeros(4, np.float32)
    else:
        broken.weights["a.bias"][1] = np.nan if bad == "nan" else np.inf
    res = aggregate(g, None, [*honest, scaled, broken], ServerOptimizer())
    ref = aggregate(g, None, [_honest(g, s) for s in range(1, 4)], ServerOptimizer())
    assert sorted(r.site for r in res.rejected) == ["broken", "scaled"]
    for k in g:
        np.testing.assert_array_equal(res.weights[k], ref.weights[k])


# Known gaps (reported to the federation engineer): _structure_problem calls np.isfinite on
# whatever dtype arrived, and the weight check calls np.isfinite on whatever value arrived.
HOSTILE_DTYPES = {
    "unicode": np.full((4, 3), "x"), "bytes": np.full((4, 3), b"x"),
    "structured": np.zeros((4, 3), dtype=[("a", "f4")]),
    "complex": np.full((4, 3), 1e-3 + 1e3j), "datetime": np.full((4, 3), np.datetime64(1, "D")),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_DTYPES))
def test_non_float_dtypes_are_rejected_not_crashing(kind: str) -> None:
    g = _global()
    honest = [_honest(g, s) for s in range(1, 4)]
    bad = SiteUpdate("hostile", {"a.weight": HOSTILE_DTYPES[kind], "a.bias": g["a.bias"].copy()},
                     10.0)
    res = aggregate(g, None, [*honest, bad], ServerOptimizer())
    assert [r.site for r in res.rejected] == ["hostile"]


@pytest.mark.parametrize("weight", ["10", None, [1.0]])
def test_non_numeric_weight_is_rejected_not_crashing(weight: object) -> None:
    g = _global()
    honest = [_honest(g, s) for s in range(1, 4)]
    bad = _honest(g, 7)
    bad.site, bad.weight = "hostile", weight  # type: ignore[assignment]
    res = aggregate(g, None, [*honest, bad], ServerOptimizer())
    assert [r.site for r in res.rejected] == ["hostile"]
