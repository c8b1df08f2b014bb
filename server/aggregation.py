"""Server-side aggregation: validate the sites' updates, then FedAvg (optionally with server
momentum or FedAdam) weighted by each site's planned local steps.

Everything here is plain numpy over ``dict[str, ndarray]`` state dicts, so it can be tested
without Flower. A site's *update* is its returned weights minus the global weights it started
from. Validation (issue 4 item 6, issue 7 item 3): an update with a missing/extra tensor, a wrong
shape, NaN/Inf, or an L2 norm far above the others' is rejected and logged, never averaged in;
the EMA delta (site EMA minus the global EMA it started from) passes the same norm check, since the
EMA is what is released (issue 14).

FedAvg (McMahan et al. 2017): ``w <- w + lr * sum_k p_k delta_k`` with ``p_k = s_k / sum s``,
``s_k`` the site's weight capped at ``max_weight_ratio`` times the median of the other accepted
sites' weights (``capped_weights``: no site can take over the aggregate by reporting a large size).
Server momentum (FedAvgM, Hsu et al. 2019): ``m <- beta m + avg_delta; w <- w + lr m``.
FedAdam (Reddi et al. 2021, Alg. 2): ``m <- b1 m + (1-b1) d; v <- b2 v + (1-b2) d^2;
w <- w + lr m / (sqrt(v) + tau)``.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.common.config import FederationConfig

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]


@dataclass
class SiteUpdate:
    """What one site sent back for one round (after unpacking the Flower message)."""

    site: str
    weights: State
    weight: float  # planned local steps (the FedAvg weight)
    ema: State | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejection:
    site: str
    reason: str


@dataclass
class ServerOptimizer:
    """FedAvg / FedAvgM / FedAdam on the server; ``state`` is checkpointed between rounds."""

    strategy: str = "fedavg"  # fedavg | fedavgm | fedadam
    lr: float = 1.0
    momentum: float = 0.0  # FedAvgM beta, FedAdam beta1
    beta2: float = 0.99
    tau: float = 1e-3
    state: dict[str, State] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in ("fedavg", "fedavgm", "fedadam"):
            raise ValueError(f"unknown strategy {self.strategy!r} (fedavg, fedavgm, fedadam)")

    def step(self, global_state: State, mean_delta: State) -> State:
        """Apply one server update given the weighted mean of the accepted deltas."""
        new: State = {}
        for name, w in global_state.items():
            d = mean_delta.get(name)
            if d is None or not np.issubdtype(w.dtype, np.floating):
                new[name] = w.copy()
                continue
            if self.strategy == "fedavg" and self.momentum == 0.0:
                new[name] = (w + self.lr * d).astype(w.dtype)
            elif self.strategy in ("fedavg", "fedavgm"):
                m = self.state.setdefault("m", {}).get(name, np.zeros_like(w))
                m = self.momentum * m + d
                self.state["m"][name] = m
                new[name] = (w + self.lr * m).astype(w.dtype)
            else:  # fedadam
                m = self.state.setdefault("m", {}).get(name, np.zeros_like(w))
                v = self.state.setdefault("v", {}).get(name, np.zeros_like(w))
                m = self.momentum * m + (1.0 - self.momentum) * d
                v = self.beta2 * v + (1.0 - self.beta2) * d * d
                self.state["m"][name], self.state["v"][name] = m, v
                new[name] = (w + self.lr * m / (np.sqrt(v) + self.tau)).astype(w.dtype)
        return new


def server_optimizer(fed: FederationConfig) -> ServerOptimizer:
    """The server optimizer of a ``[federation]`` config: "fedavg" with a server momentum
    above 0 is FedAvgM (the default, momentum 0.5), with 0 plain FedAvg."""
    strategy = fed.strategy
    if strategy == "fedavg" and fed.server_momentum > 0:
        strategy = "fedavgm"
    return ServerOptimizer(strategy, fed.server_lr, fed.server_momentum)


def update_norm(global_state: State, weights: State) -> float:
    """L2 norm of ``weights - global_state`` over all floating tensors."""
    total = 0.0
    for name, w in global_state.items():
        if np.issubdtype(w.dtype, np.floating):
            d = weights[name].astype(np.float64) - w.astype(np.float64)
            total += float(np.sum(d * d))
    return float(np.sqrt(total))


def _structure_problem(global_state: State, weights: State) -> str | None:
    missing = set(global_state) - set(weights)
    extra = set(weights) - set(global_state)
    if missing or extra:
        return f"tensor names differ (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})"
    for name, w in global_state.items():
        got = weights[name]
        if not isinstance(got, np.ndarray) or got.shape != w.shape:
            shape = getattr(got, "shape", None)
            return f"wrong shape for {name}: {shape} instead of {w.shape}"
        if got.dtype.kind not in "fiu" or (w.dtype.kind == "f" and got.dtype.kind != "f"):
            return f"wrong dtype for {name}: {got.dtype} instead of {w.dtype}"
        if np.issubdtype(w.dtype, np.floating) and not np.all(np.isfinite(got)):
            return f"non-finite values (NaN/Inf) in {name}"
    return None


def _valid_weight(weight: object) -> bool:
    """An aggregation weight is a finite positive real number (not a bool, string or array)."""
    if isinstance(weight, bool) or not isinstance(weight, int | float | np.integer | np.floating):
        return False
    return bool(np.isfinite(weight) and weight > 0)


def _norm_outliers(norms: list[float | None], norm_factor: float,
                   min_norm: float) -> list[float | None]:
    """For each norm (None: not checked), the (low) median of the *other* norms it exceeds
    ``norm_factor`` times, or None when it passes."""
    out: list[float | None] = []
    for i, norm in enumerate(norms):
        others = [n for j, n in enumerate(norms) if j != i and n is not None]
        ref = statistics.median_low(others) if others and norm is not None else None
        bad = ref is not None and norm is not None and norm > min_norm and \
            norm > norm_factor * max(ref, min_norm)
        out.append(ref if bad else None)
    return out


def validate_updates(
    global_state: State,
    updates: list[SiteUpdate],
    norm_factor: float = 10.0,
    min_norm: float = 1e-12,
    global_ema: State | None = None,
) -> tuple[list[SiteUpdate], list[Rejection]]:
    """Split updates into accepted and rejected ones.

    Structural checks first (names, shapes, finite values, also for the EMA state). Then a
    robust norm check: an update is rejected when its delta's L2 norm exceeds ``norm_factor``
    times the (low) median of the *other* structurally valid updates' norms. Comparing with the
    others, not with a median that includes the update itself, keeps this meaningful with only
    two sites: a x1000 update is rejected and the honest one is kept. The EMA delta (site EMA
    minus ``global_ema``, the EMA every site started from; ``global_state`` when None) is
    checked the same way against the other sites' EMA deltas.
    """
    accepted: list[SiteUpdate] = []
    rejected: list[Rejection] = []
    valid: list[tuple[SiteUpdate, float]] = []
    ema_norms: list[float | None] = []
    ema_ref = global_state
    if global_ema is not None and _structure_problem(global_state, global_ema) is None:
        ema_ref = global_ema
    for upd in updates:
        problem = _structure_problem(global_state, upd.weights)
        if problem is None and upd.ema is not None:
            ema_problem = _structure_problem(global_state, upd.ema)
            problem = f"EMA state: {ema_problem}" if ema_problem else None
        if problem is None and not _valid_weight(upd.weight):
            problem = f"invalid aggregation weight {upd.weight!r}"
        if problem is not None:
            rejected.append(Rejection(upd.site, problem))
            continue
        valid.append((upd, update_norm(global_state, upd.weights)))
        ema_norms.append(None if upd.ema is None else update_norm(ema_ref, upd.ema))
    model_out = _norm_outliers([n for _, n in valid], norm_factor, min_norm)
    ema_out = _norm_outliers(ema_norms, norm_factor, min_norm)
    for (upd, norm), ema_norm, m_ref, e_ref in zip(valid, ema_norms, model_out, ema_out,
                                                   strict=True):
        if m_ref is not None:
            rejected.append(Rejection(upd.site, f"update norm {norm:.4g} > {norm_factor:g} x "
                                                f"median of the others ({m_ref:.4g})"))
            continue
        if e_ref is not None:
            rejected.append(Rejection(upd.site, f"EMA update norm {ema_norm:.4g} > "
                                                f"{norm_factor:g} x median of the others "
                                                f"({e_ref:.4g})"))
            continue
        upd.metrics.setdefault("update_norm", norm)
        accepted.append(upd)
    for rej in rejected:
        log.warning("rejected update from site %s: %s", rej.site, rej.reason)
    return accepted, rejected


def capped_weights(weights: list[float], max_ratio: float) -> list[float]:
    """s_k = min(w_k, max_ratio * median_low{w_j : j != k}): no site's aggregation weight
    exceeds ``max_ratio`` times the (low) median of the others' reported weights. With K-1 equal
    others a site's share is at most max_ratio / (max_ratio + K - 1) (2/3 with two sites at
    ratio 2). A single site is not capped; a site below the cap keeps its weight."""
    if not max_ratio > 1.0:
        raise ValueError(f"max_weight_ratio must be > 1, got {max_ratio}")
    out = []
    for k, w in enumerate(weights):
        others = [x for j, x in enumerate(weights) if j != k]
        out.append(min(float(w), max_ratio * statistics.median_low(others)) if others
                   else float(w))
    return out


def weighted_mean(states: list[State], weights: list[float]) -> State:
    """``sum_k p_k states_k`` with ``p_k = weights_k / sum(weights)`` (floating tensors only;
    other tensors are taken from the first state)."""
    total = float(sum(weights))
    out: State = {}
    for name, first in states[0].items():
        if not np.issubdtype(first.dtype, np.floating):
            out[name] = first.copy()
            continue
        acc = np.zeros(first.shape, dtype=np.float64)
        for s, w in zip(states, weights, strict=True):
            acc += (w / total) * s[name].astype(np.float64)
        out[name] = acc.astype(first.dtype)
    return out


@dataclass
class AggregateResult:
    weights: State
    ema: State | None
    accepted: list[SiteUpdate]
    rejected: list[Rejection]


def aggregate(
    global_state: State,
    global_ema: State | None,
    updates: list[SiteUpdate],
    optimizer: ServerOptimizer,
    norm_factor: float = 10.0,
    *,
    max_weight_ratio: float = 2.0,
) -> AggregateResult:
    """Validate, then aggregate the accepted updates with their weights capped
    (``capped_weights``; each accepted update's ``metrics["share"]`` is its share). With no
    accepted update the global model is returned unchanged. The EMA state is the weighted mean
    of the sites' EMA states (each site started its EMA from the global EMA), falling back to
    the new weights."""
    accepted, rejected = validate_updates(global_state, updates, norm_factor,
                                          global_ema=global_ema)
    if not accepted:
        return AggregateResult(global_state, global_ema, accepted, rejected)
    reported = [float(u.weight) for u in accepted]
    w = capped_weights(reported, max_weight_ratio)
    for u, before, after in zip(accepted, reported, w, strict=True):
        if after < before:
            log.warning("site %s: aggregation weight %.4g capped to %.4g (%g x the median of "
                        "the other sites')", u.site, before, after, max_weight_ratio)
        u.metrics["share"] = after / sum(w)
    deltas = [
        {k: u.weights[k].astype(np.float64) - global_state[k].astype(np.float64)
         for k in global_state if np.issubdtype(global_state[k].dtype, np.floating)}
        for u in accepted
    ]
    mean_delta = {k: sum((wi / sum(w)) * d[k] for wi, d in zip(w, deltas, strict=True))
                  for k in deltas[0]}
    new_weights = optimizer.step(global_state, mean_delta)
    emas = [u.ema for u in accepted if u.ema is not None]
    if len(emas) == len(accepted):
        new_ema = weighted_mean(emas, w)  # type: ignore[arg-type]
    else:
        new_ema = {k: v.copy() for k, v in new_weights.items()}
    return AggregateResult(new_weights, new_ema, accepted, rejected)
