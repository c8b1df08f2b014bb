"""MST (McKenna, Miklau & Sheldon 2021, "Winning the NIST Contest"), adapted to 0/1 code rows.

Why by hand: Private-PGM (``mbi`` 2.0, JAX) is the reference estimator, but it does not scale
here. Measured on 2 shared cores with ``mbi.estimation.MirrorDescent`` on a tree of binary
variables (500 iterations, float64), 100 codes took 71 s to fit and 21 s to sample 2,000 rows,
200 codes 144 s and 44 s, mostly JAX compilation that grows with the tree (859 codes had not
compiled after 25 minutes in an earlier session); MST's tree holds 230 codes at epsilon 1.
For a *tree* of binary variables the estimation has a closed form, so it is written here
(step 4), and the pair scores are one matrix product instead of one call per pair.

The release, budget rho (zCDP) split 1/3 per step, every draw from ``privacy.secure_random``:

1. **1-way.** Each patient is clipped to at most k codes (a uniformly random k, fixed k, as in
   ``dp_marginals``); the vector (c_1..c_V, n) of the clipped rows then moves by at most
   sqrt(k + 1) in L2 when one patient is added or removed, and gets N(0, (sigma_1 sqrt(k+1))^2)
   per entry: rho_1 = 1 / (2 sigma_1^2), recorded as ``Mechanism(sigma_1, 1.0, 1)``.
   The tree codes are the codes whose noisy count exceeds ``tree_min_sd`` noise sd (at most
   ``max_tree_codes``, the largest first): post-processing of step 1.
2. **Select.** K - 1 rounds of the exponential mechanism pick a maximum spanning tree over the K
   tree codes (Kruskal order: only pairs joining two components are candidates). A pair's score
   is the L1 distance between its 2x2 table in the (unclipped) data and the independent
   estimate from step 1; one patient moves every score by at most 1 (it lands in one cell of
   each table; the estimate is fixed), so Delta = 1 and each round samples
   P(e) ~ exp(eps_0 score(e) / 2). All scores come from one product X_K^T X_K. Each round is
   eps_0-DP and eps_0-bounded-range, hence eps_0^2 / 8-zCDP (Cesar & Rogers 2021), with
   eps_0 = sqrt(8 rho_2 / (K - 1)).
3. **Measure the tree.** For 0/1 codes a pair's 2x2 table is fixed by n, c_i, c_j and the
   co-count c_ij, so only the K - 1 co-counts of the clipped rows are measured. A patient with
   at most k codes holds at most k - 1 tree edges (the tree restricted to its codes is a
   forest), so their L2 sensitivity is sqrt(k - 1): N(0, (sigma_3 sqrt(k-1))^2) per edge,
   ``Mechanism(sigma_3, 1.0, 1)``.
4. **Estimate and sample** (post-processing). p_i = clip(c~_i / n~, 0, 1); each noisy pair rate
   c~_ij / n~ is projected onto the interval of 2x2 tables that are non-negative and keep
   p_i, p_j: [max(0, p_i + p_j - 1), min(p_i, p_j)]. On a tree these tables are consistent and
   define one distribution, sampled as a Bayesian network (root by its marginal, child | parent
   from the pair table). Simplification against Private-PGM: PGM fits all measurements jointly
   by least squares; with these measurements the tree model reproduces any consistent set
   exactly, so the two differ only where a noisy pair rate falls outside its interval (PGM
   would then also move p_i, p_j). Cost: well under a second for 845 codes. Codes outside the
   tree are sampled independently from their noisy marginals (zero below ``zero_below_sd``).

Accounting: every step is a Gaussian-like entry of our accountant's history; the exponential
mechanism is entered as ``Mechanism(2 / eps_0, 1.0, K - 1)``, the Gaussian with the same zCDP
(1 / (2 sigma^2) = eps_0^2 / 8). The released epsilon is composed in **RDP** (``accountant
.epsilon(..., "rdp")``): each entry's Renyi divergence of order alpha is at most alpha rho,
exactly the Gaussian's, so the RDP composition and its conversion (Balle et al. 2020) are valid.
PRV is not used: it composes the Gaussian's exact privacy-loss distribution, which does not bound
the exponential mechanism's. The RDP figure is tighter than rho + 2 sqrt(rho ln(1/delta)).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from fedsynth.common.errors import BudgetExceeded
from fedsynth.common.model.tree import (
    IndependentTail,
    TreeSampler,
    consistent_pairs,
    pair_scores_from_counts,
)
from fedsynth.privacy import secure_random
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.marginals import clip_codes_secure, noisy_counts

log = logging.getLogger(__name__)

ACCOUNTANT = "rdp"


@dataclass
class MSTConfig:
    max_codes: int = 8  # k: codes kept per patient before any count (public, fixed in advance)
    tree_min_sd: float = 3.0  # a code joins the tree when its noisy count exceeds this many sd
    max_tree_codes: int | None = None  # K cap (None: every code passing tree_min_sd)
    zero_below_sd: float = 2.0  # codes outside the tree: noisy counts below this are 0
    shares: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # rho of steps 1, 2, 3


# ---- privacy helpers (shared with aim.py) ------------------------------------------------------


def gaussian_for_rho(rho: float) -> float:
    """The noise multiplier of a Gaussian mechanism that is rho-zCDP: sigma = 1 / sqrt(2 rho)."""
    return 1.0 / math.sqrt(2.0 * rho)


def em_mechanism(eps0: float, rounds: int) -> Mechanism:
    """``rounds`` eps0-exponential mechanisms as the history entry with their zCDP (eps0^2/8 each,
    Cesar & Rogers 2021): the Gaussian with sigma = 2 / eps0 (RDP alpha eps0^2 / 8)."""
    return Mechanism(2.0 / eps0, 1.0, rounds)


def rho_for(target: float, delta: float, prior: tuple[Mechanism, ...] = (),
            noise_multiplier: float | None = None) -> float:
    """Largest total rho (within 1e-4 relative) whose Gaussian, after ``prior``, keeps the RDP
    epsilon at ``delta`` at or below ``target`` (all our entries compose as their rho sum).
    A given ``noise_multiplier`` fixes rho = 1 / (2 sigma^2) (the whole release as private as
    that one Gaussian) and is checked instead: ``BudgetExceeded`` before any data is read."""
    def eps_at(rho: float) -> float:
        return epsilon([*prior, Mechanism(gaussian_for_rho(rho), 1.0, 1)], delta, ACCOUNTANT)

    if prior and epsilon(list(prior), delta, ACCOUNTANT) >= target:
        raise BudgetExceeded(f"the prior spend already reaches epsilon={target} (delta={delta})")
    if noise_multiplier is not None:
        rho = 1.0 / (2.0 * noise_multiplier**2)
        if eps_at(rho) > target * (1 + 1e-9):
            raise BudgetExceeded(f"sigma={noise_multiplier:.4g} (rho={rho:.4g}) reaches epsilon="
                                 f"{eps_at(rho):.3f} > budget {target} (delta={delta})")
        return rho
    lo, hi = 1e-8, 1.0
    while eps_at(hi) <= target:
        lo, hi = hi, hi * 2
    while (hi - lo) / hi > 1e-4:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if eps_at(mid) <= target else (lo, mid)
    return lo


def uniform() -> float:
    """One U(0, 1) from the OS CSPRNG: Phi(z), z from ``secure_random.gaussian``."""
    return float(norm.cdf(secure_random.gaussian(1)[0]))


def exponential_mechanism(scores: np.ndarray, eps0: float, sensitivity: float = 1.0) -> int:
    """Index i drawn with P(i) ~ exp(eps0 score_i / (2 sensitivity)) (McSherry & Talwar 2007),
    by inverse CDF on one secure uniform."""
    logits = eps0 * (scores - scores.max()) / (2.0 * sensitivity)
    cdf = np.cumsum(np.exp(logits))
    return int(min(np.searchsorted(cdf, uniform() * cdf[-1], side="right"), len(cdf) - 1))


# ---- MST proper (the tree model: common.model.tree) -----------------------------------------


def pair_scores(X: np.ndarray, p: np.ndarray, n_est: float) -> np.ndarray:
    """(K, K) L1 distance between each pair's 2x2 table in ``X`` (n x K, 0/1) and the table of
    independent codes with rates ``p`` and total ``n_est``; all pairs from one product."""
    Xf = np.asarray(X, dtype=np.float64)
    C = Xf.T @ Xf
    return pair_scores_from_counts(C, np.diag(C).copy(), float(Xf.shape[0]), p, n_est)


def select_tree(scores: np.ndarray, eps0: float | None) -> list[tuple[int, int]]:
    """Kruskal over the K nodes of the (K, K) ``scores``: each round one pair joining two
    components, by the exponential mechanism with eps0 (or the best pair when eps0 is None)."""
    K = scores.shape[0]
    iu, ju = np.triu_indices(K, 1)
    s = scores[iu, ju]
    comp = np.arange(K)
    edges: list[tuple[int, int]] = []
    for _ in range(K - 1):
        live = np.flatnonzero(comp[iu] != comp[ju])
        iu, ju, s = iu[live], ju[live], s[live]
        pick = int(np.argmax(s)) if eps0 is None else exponential_mechanism(s, eps0)
        a, b = int(iu[pick]), int(ju[pick])
        edges.append((a, b))
        comp[comp == comp[b]] = comp[a]
    return edges


@dataclass
class MSTResult:
    sampler: TreeSampler
    privacy: dict[str, Any] | None
    train_seconds: float
    info: dict[str, Any]


def fit_mst(X: np.ndarray, epsilon_target: float | None = None, delta: float | None = None,
            cfg: MSTConfig | None = None,
            prior_history: tuple[Mechanism, ...] = (),
            noise_multiplier: float | None = None) -> MSTResult:
    """MST on 0/1 ``X`` at (epsilon, delta) (module docstring); ``epsilon=None``: the same
    steps without noise (Chow-Liu-like tree on the exact counts)."""
    cfg = cfg or MSTConfig()
    X = np.asarray(X, dtype=np.uint8)
    n, V = X.shape
    start = time.perf_counter()
    private = epsilon_target is not None
    if private and delta is None:
        raise ValueError("a private release needs delta")
    if cfg.max_codes < 2:
        raise ValueError("max_codes must be >= 2 (the tree's co-counts need a pair)")
    if private:
        rho = rho_for(float(epsilon_target), float(delta), prior_history,  # type: ignore[arg-type]
                      noise_multiplier)
        rho1, rho2, rho3 = (s * rho for s in cfg.shares)
        sig1, sig3 = gaussian_for_rho(rho1), gaussian_for_rho(rho3)
        Xc = clip_codes_secure(X, cfg.max_codes)
        sd1 = sig1 * math.sqrt(cfg.max_codes + 1)
        sd3 = sig3 * math.sqrt(cfg.max_codes - 1)
    else:
        Xc, sd1, sd3 = X, 0.0, 0.0
    counts, n_noisy = noisy_counts(Xc, sd1)
    n_est = max(n_noisy, 1.0)
    p_all = np.clip(counts, 0.0, None) / n_est
    floor = cfg.tree_min_sd * sd1 if private else 0.0
    tree_cols = np.flatnonzero(counts > max(floor, 0.0))
    tree_cols = tree_cols[np.argsort(-counts[tree_cols], kind="stable")]
    if cfg.max_tree_codes is not None:
        tree_cols = tree_cols[:cfg.max_tree_codes]
    tree_cols = np.sort(tree_cols)
    K = len(tree_cols)
    t_sel = time.perf_counter()
    eps0 = math.sqrt(8 * rho2 / (K - 1)) if private and K > 1 else None
    edges = select_tree(pair_scores(X[:, tree_cols], p_all[tree_cols], n_est), eps0) \
        if K > 1 else []
    t_sel = time.perf_counter() - t_sel
    if edges:
        a = tree_cols[[e[0] for e in edges]]
        b = tree_cols[[e[1] for e in edges]]
        co = (Xc[:, a] & Xc[:, b]).sum(0, dtype=np.float64)
        if private:
            co = co + secure_random.gaussian(len(edges), sd3)
    else:
        co = np.zeros(0)
    p_tree = p_all[tree_cols]
    p_pair = consistent_pairs(p_tree, edges, co / n_est)
    tail_p = p_all.copy()
    if private:
        tail_p[counts < cfg.zero_below_sd * sd1] = 0.0
    tail_p[tree_cols] = 0.0
    sampler = TreeSampler(V, tree_cols, edges, p_tree, p_pair, IndependentTail(tail_p))
    info = {"tree_codes": K, "edges": len(edges), "select_seconds": round(t_sel, 2),
            "max_codes": cfg.max_codes, "estimator": "closed-form tree (see mst.py step 4)"}
    report = None
    if private:
        report = mst_report(
            (sig1, eps0, sig3), K, prior_history, float(delta), epsilon_target, rho,
            ("1-way counts (Gaussian)", "tree selection (exponential, as zCDP)",
             "tree co-counts (Gaussian)"),
            f"MST, zCDP rho={rho:.5g} split {cfg.shares}; k={cfg.max_codes} codes per patient; "
            f"1-way noise sd {sd1:.2f}, co-count noise sd {sd3:.2f}, EM eps0 "
            f"{eps0 if eps0 else 0:.4g} x {max(K - 1, 0)}; RDP composition")
    log.info("MST: %d tree codes, %d edges, select %.1f s, total %.1f s", K, len(edges), t_sel,
             time.perf_counter() - start)
    return MSTResult(sampler, report, time.perf_counter() - start, info)


def mst_report(noise: tuple[float, float | None, float], nodes: int,
               prior_history: Sequence[Mechanism], delta: float, epsilon_target: float | None,
               rho: float, phases: tuple[str, str, str], mechanism: str) -> dict[str, Any]:
    """The privacy report of an MST release: the one-way Gaussian (noise multiplier
    ``noise[0]``), then, with more than one node, ``nodes - 1`` exponential-mechanism picks
    (``noise[1]`` = eps0) and the tree tables' Gaussian (``noise[2]``), composed with the
    prior history (RDP)."""
    sig1, eps0, sig3 = noise
    own = [Mechanism(sig1, 1.0, 1)]
    if nodes > 1:
        own += [em_mechanism(eps0, nodes - 1), Mechanism(sig3, 1.0, 1)]  # type: ignore[arg-type]
    history = [*prior_history, *own]
    return {"epsilon": epsilon(history, delta, ACCOUNTANT), "delta": delta,
            "accountant": ACCOUNTANT, "history": [m.to_dict() for m in history],
            "phases": list(phases[:len(own)]), "target_epsilon": epsilon_target, "rho": rho,
            "mechanism": mechanism}
