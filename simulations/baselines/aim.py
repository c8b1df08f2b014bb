"""AIM (McKenna, Mullins, Sheldon & Miklau 2022), on the K most frequent codes of 0/1 rows.

Why reduced: AIM re-fits its graphical model after every one of its (up to 16 K) rounds. With
Private-PGM (``mbi`` 2.0) one fit of a 100-code *tree* took 71 s on 2 shared cores (JAX
compilation included), and AIM's models are not trees; an earlier session saw ``dpmm``'s AIM do
4 of ~480 rounds in 20 minutes on 30 codes. So the joint model here is the full distribution
over the top-K codes (2^K cells, K = ``joint_codes``, 12 by default: 4,096 cells), fitted by
maximum likelihood to every noisy measurement (L-BFGS on its logits; the same objective as
Private-PGM's, without the graphical model's factorisation, which 2^K cells do not need). The
other codes come from their noisy 1-way counts, independently (as in ``mst.py``).

The release (zCDP budget rho; every draw from ``privacy.secure_random``):

0. **1-way, all codes**: patients clipped to k codes, (c_1..c_V, n) + N(0, (sigma_0 sqrt(k+1))^2)
   with rho_0 = ``init_share`` rho (``Mechanism(sigma_0, 1, 1)``); the top-K codes by noisy
   count are the joint codes (post-processing).
1. **Rounds** (AIM's Algorithm 1 with alpha = 0.9 and T = 16 K): the workload is every 2-way
   marginal of the K codes, each with weight 1. A round picks one by the exponential mechanism
   (eps_t, sensitivity 1: one clipped patient lands in one cell of each 2x2 table) on the score
   ||M_r(D) - M_r(model)||_1 - sqrt(2/pi) sigma_t 4, measures its 2x2 table with
   N(0, sigma_t^2) per cell (L2 sensitivity 1), re-fits, and halves sigma_t and doubles eps_t
   when the new model moved that marginal by less than the expected noise. The last round takes
   what is left of rho. Recorded as ``Mechanism(sigma_t, 1, 1)`` and ``em_mechanism(eps_t, 1)``.
Accounting as in ``mst.py``: RDP composition of the zCDP-equivalent Gaussians.

A run that passes ``max_seconds`` raises ``DidNotFinishError`` and releases nothing: the
benchmark cell then says "did not finish in N min" instead of disappearing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from fedsynth.common.model.tree import IndependentTail
from fedsynth.privacy import secure_random
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.marginals import clip_codes_secure, noisy_counts
from fedsynth.simulations.baselines.mst import (
    ACCOUNTANT,
    em_mechanism,
    exponential_mechanism,
    gaussian_for_rho,
    rho_for,
)

log = logging.getLogger(__name__)


class DidNotFinishError(RuntimeError):
    """The generator ran past its time budget; nothing was released."""


@dataclass
class AIMConfig:
    joint_codes: int = 12  # K: codes modelled jointly (2^K cells)
    max_codes: int = 8  # k: codes kept per patient (public, fixed in advance)
    init_share: float = 0.2  # share of rho for step 0 (1-way counts of every code)
    alpha: float = 0.9  # AIM: share of each round's rho for the measurement
    rounds_per_code: int = 16  # AIM: T = 16 K
    zero_below_sd: float = 2.0  # independent codes: noisy counts below this many sd are 0
    max_seconds: float = 1200.0
    fit_iters: int = 200


class JointModel:
    """A distribution over the 2^K patterns of K codes, with every pair's 2x2 table at once."""

    def __init__(self, K: int) -> None:
        self.K = K
        states = np.arange(2**K)
        self.B = ((states[:, None] >> np.arange(K)[None, :]) & 1).astype(np.float64)
        self.theta = np.zeros(2**K)

    @property
    def p(self) -> np.ndarray:
        z = np.exp(self.theta - self.theta.max())
        return z / z.sum()

    def tables(self, p: np.ndarray, total: float) -> tuple[np.ndarray, np.ndarray]:
        """(N1, N11): expected count of each code and of each pair at ``total`` patients."""
        N1 = total * (self.B.T @ p)
        return N1, total * (self.B.T @ (p[:, None] * self.B))

    def fit(self, total: float, one: tuple[np.ndarray, np.ndarray],
            pairs: tuple[np.ndarray, np.ndarray], iters: int) -> None:
        """Weighted least squares over every measurement: ``one`` = (y1 (K,), w1 (K,)) for
        the counts of 1; ``pairs`` = (Y (4, K, K) cells 00, 10, 01, 11 of pair i < j, W (K, K),
        zero where unmeasured). L-BFGS on the logits, warm-started from the last fit."""
        y1, w1 = one
        Y, W = pairs
        B = self.B

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = np.exp(theta - theta.max())
            p = z / z.sum()
            N1, N11 = self.tables(p, total)
            Ni, Nj = N1[:, None], N1[None, :]
            M = np.stack([total - Ni - Nj + N11, Ni - N11, Nj - N11, N11])
            R = W[None] * (M - Y)  # d loss / d M, halved
            r1 = w1 * (N1 - y1)
            val = float((R * (M - Y)).sum() + (r1 * (N1 - y1)).sum())
            lin = (R[1] - R[0]).sum(1) + (R[2] - R[0]).sum(0) + r1
            Q = R[3] - R[2] - R[1] + R[0]
            g = 2 * total * (B @ lin + ((B @ Q) * B).sum(1))  # + a constant: cancels below
            return val, p * (g - p @ g)

        res = minimize(loss, self.theta, jac=True, method="L-BFGS-B",
                       options={"maxiter": iters})
        self.theta = res.x


@dataclass
class AIMSampler:
    n_codes: int
    joint_cols: np.ndarray
    p_joint: np.ndarray
    B: np.ndarray
    tail: IndependentTail

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.zeros((n, self.n_codes), dtype=np.uint8)
        self.tail.fill(out, rng)
        states = rng.choice(len(self.p_joint), size=n, p=self.p_joint)
        out[:, self.joint_cols] = self.B[states].astype(np.uint8)
        return out


@dataclass
class AIMResult:
    sampler: AIMSampler
    privacy: dict[str, Any] | None
    train_seconds: float
    info: dict[str, Any]


def fit_exact(X: np.ndarray, cfg: AIMConfig) -> AIMResult:
    """The non-private limit of AIM: every workload marginal measured exactly, one fit."""
    start = time.perf_counter()
    X = np.asarray(X, dtype=np.uint8)
    n, V = X.shape
    counts = X.sum(0, dtype=np.float64)
    K = min(cfg.joint_codes, V)
    cols = np.sort(np.argsort(-counts, kind="stable")[:K])
    Xk = X[:, cols].astype(np.float64)
    D1, D11 = Xk.sum(0), Xk.T @ Xk
    Y = np.stack([n - D1[:, None] - D1[None, :] + D11, D1[:, None] - D11, D1[None, :] - D11,
                  D11])
    model = JointModel(K)
    model.fit(float(n), (D1, np.ones(K)), (Y, np.triu(np.ones((K, K)), 1)), cfg.fit_iters * 5)
    tail_p = counts / max(n, 1)
    tail_p[cols] = 0.0
    sampler = AIMSampler(V, cols, model.p, model.B, IndependentTail(tail_p))
    return AIMResult(sampler, None, time.perf_counter() - start, {"joint_codes": K})


def fit_aim(X: np.ndarray, epsilon_target: float | None, delta: float | None,
            cfg: AIMConfig | None = None, prior_history: tuple[Mechanism, ...] = (),
            noise_multiplier: float | None = None) -> AIMResult:
    """AIM at (epsilon, delta) (module docstring); ``DidNotFinishError`` past
    ``cfg.max_seconds``. ``epsilon=None``: its non-private limit (``fit_exact``)."""
    cfg = cfg or AIMConfig()
    if epsilon_target is None:
        return fit_exact(X, cfg)
    if delta is None:
        raise ValueError("a private release needs delta")
    start = time.perf_counter()
    X = np.asarray(X, dtype=np.uint8)
    V = X.shape[1]
    rho = rho_for(epsilon_target, delta, prior_history, noise_multiplier)
    rho0 = cfg.init_share * rho
    sig0 = gaussian_for_rho(rho0)
    Xc = clip_codes_secure(X, cfg.max_codes)
    sd0 = sig0 * math.sqrt(cfg.max_codes + 1)
    counts, n_noisy = noisy_counts(Xc, sd0)
    total = max(n_noisy, 1.0)
    K = min(cfg.joint_codes, V)
    cols = np.sort(np.argsort(-counts, kind="stable")[:K])
    own = [Mechanism(sig0, 1.0, 1)]
    Xk = Xc[:, cols].astype(np.float64)
    D1 = Xk.sum(0)
    D11 = Xk.T @ Xk
    n = float(Xk.shape[0])
    data = np.stack([n - D1[:, None] - D1[None, :] + D11, D1[:, None] - D11,
                     D1[None, :] - D11, D11])
    model = JointModel(K)
    one = (counts[cols], np.full(K, 1 / sd0**2))
    Ysum, W = np.zeros((4, K, K)), np.zeros((K, K))  # inverse-variance sums per pair
    model.fit(total, one, (Ysum, W), cfg.fit_iters)
    iu, ju = np.triu_indices(K, 1)
    T = cfg.rounds_per_code * K
    budget = (1 - cfg.init_share) * rho
    used = 0.0
    sigma = math.sqrt(T / (2 * cfg.alpha * budget))
    eps_t = math.sqrt(8 * (1 - cfg.alpha) * budget / T)
    rounds = anneals = 0
    final = False
    while not final:
        if time.perf_counter() - start > cfg.max_seconds:
            raise DidNotFinishError(f"did not finish in {cfg.max_seconds / 60:.0f} min "
                               f"({rounds} rounds, K={K})")
        left = budget - used
        if left < 2 * (1 / (2 * sigma**2) + eps_t**2 / 8):
            sigma = math.sqrt(1 / (2 * cfg.alpha * left))
            eps_t = math.sqrt(8 * (1 - cfg.alpha) * left)
            final = True
        used += 1 / (2 * sigma**2) + eps_t**2 / 8
        rounds += 1
        p_old = model.p
        N1, N11 = model.tables(p_old, total)
        M = np.stack([total - N1[:, None] - N1[None, :] + N11, N1[:, None] - N11,
                      N1[None, :] - N11, N11])
        err = np.abs(data - M).sum(0)[iu, ju] - math.sqrt(2 / math.pi) * sigma * 4
        pick = exponential_mechanism(err, eps_t)
        i, j = int(iu[pick]), int(ju[pick])
        y = data[:, i, j] + secure_random.gaussian(4, sigma)
        Ysum[:, i, j] += y / sigma**2
        W[i, j] += 1 / sigma**2
        own += [Mechanism(sigma, 1.0, 1), em_mechanism(eps_t, 1)]
        Y = np.divide(Ysum, W[None], out=np.zeros_like(Ysum), where=W[None] > 0)
        model.fit(total, one, (Y, W), cfg.fit_iters)
        N1n, N11n = model.tables(model.p, total)
        moved = (abs(N11n[i, j] - N11[i, j]) + abs(N1n[i] - N11n[i, j] - N1[i] + N11[i, j])
                 + abs(N1n[j] - N11n[i, j] - N1[j] + N11[i, j])
                 + abs(N1n[i] + N1n[j] - N11n[i, j] - N1[i] - N1[j] + N11[i, j]))
        if not final and moved <= math.sqrt(2 / math.pi) * sigma * 4:
            sigma, eps_t, anneals = sigma / 2, eps_t * 2, anneals + 1
    tail_p = np.clip(counts, 0.0, None) / total
    tail_p[counts < cfg.zero_below_sd * sd0] = 0.0
    tail_p[cols] = 0.0
    sampler = AIMSampler(V, cols, model.p, model.B, IndependentTail(tail_p))
    history = [*prior_history, *own]
    report = {
        "epsilon": epsilon(history, delta, ACCOUNTANT), "delta": delta,
        "accountant": ACCOUNTANT, "history": [m.to_dict() for m in history],
        "target_epsilon": epsilon_target, "rho": rho,
        "mechanism": (f"AIM over the top {K} codes, {rounds} rounds ({anneals} anneals), zCDP "
                      f"rho={rho:.5g}; 1-way noise sd {sd0:.2f}; RDP composition"),
    }
    info = {"joint_codes": K, "rounds": rounds, "anneals": anneals,
            "measured_pairs": int((W > 0).sum())}
    log.info("AIM: K=%d, %d rounds, %d anneals, %.1f s", K, rounds, anneals,
             time.perf_counter() - start)
    return AIMResult(sampler, report, time.perf_counter() - start, info)
