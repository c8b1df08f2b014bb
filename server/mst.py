"""Federated MST at the coordinator (issue 17), as plain functions (no Flower here).

The sites' releases (``client.site_marginals``) are summed here and everything after the sum is
post-processing (``common.model.tree``):

1. the one-way releases of every accepted site are summed: noisy counts c~ and size n~, noise
   std sqrt(sum_k sd_k^2) (independent Gaussians); the tree codes are the codes whose summed
   noisy count exceeds ``tree_min_sd`` noise std (at most ``max_tree_codes``, largest first);
2. the sites' noisy co-counts of those codes are summed (over the sites that released both:
   the one-way sum is redone over the same sites, so n~, c~ and C~ count the same patients);
3. MST's score of every pair, the L1 distance of its noisy 2x2 table from independence
   (``pair_scores_from_counts``), gives a maximum spanning tree (Kruskal); each tree edge's
   rate C~_ab / n~ is projected onto the tables consistent with p_a, p_b; codes outside the
   tree are sampled from their noisy marginals (0 below ``zero_below_sd`` noise std).

Simplification against FLAIM / central MST: no exponential mechanism chooses the tree; the sites
release all pairs of the tree codes once (sensitivity sqrt(k (k - 1) / 2)) and the coordinator
picks the tree from their sum. It costs more noise per pair than measuring K - 1 chosen edges,
but needs no per-round interaction and no site-side tree selection.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsynth.common.model.tree import (
    IndependentTail,
    TreeSampler,
    consistent_pairs,
    max_spanning_tree,
    pair_scores_from_counts,
)
from fedsynth.federation.protocol import MarginalsReply

log = logging.getLogger(__name__)


@dataclass
class MSTSettings:
    """The coordinator's public choices for federated MST (sent in every request)."""

    max_codes: int = 8  # k: codes kept per patient (public, fixed in advance)
    share: float = 1 / 3  # the one-way release's share of each site's plan (zCDP rho)
    tree_min_sd: float = 3.0
    max_tree_codes: int = 1000  # at most this many codes in the pairs request
    zero_below_sd: float = 2.0


@dataclass
class OneWaySum:
    counts: np.ndarray
    size: float
    noise_std: float
    sites: list[str]


def usable(reply: MarginalsReply, length: int) -> bool:
    """An ok reply whose counts have the expected length and are finite."""
    return (reply.status == "ok" and reply.counts is not None and reply.noise_std > 0
            and reply.counts.shape == (length,) and bool(np.all(np.isfinite(reply.counts)))
            and (reply.size is None or math.isfinite(reply.size)))


def sum_one_way(replies: Sequence[MarginalsReply]) -> OneWaySum:
    """Sum of the sites' one-way releases; noise std sqrt(sum_k sd_k^2)."""
    counts = np.sum([r.counts for r in replies], axis=0)
    size = float(sum(float(r.size or 0.0) for r in replies))
    sd = math.sqrt(sum(r.noise_std**2 for r in replies))
    return OneWaySum(counts, size, sd, [r.site for r in replies])


def tree_codes(one: OneWaySum, cfg: MSTSettings) -> list[int]:
    """Codes whose summed noisy count exceeds ``tree_min_sd`` noise std (largest first, at
    most ``max_tree_codes``), sorted."""
    cols = np.flatnonzero(one.counts > cfg.tree_min_sd * one.noise_std)
    cols = cols[np.argsort(-one.counts[cols], kind="stable")][:cfg.max_tree_codes]
    return sorted(int(c) for c in cols)


def fit_tree(one: OneWaySum, cols: Sequence[int], pairs: Sequence[MarginalsReply],
             cfg: MSTSettings) -> tuple[TreeSampler, dict[str, Any]]:
    """The tree model (module docstring, steps 2-3) from the summed releases."""
    V = one.counts.shape[0]
    cols_arr = np.asarray(cols, dtype=int)
    K = len(cols_arr)
    n_est = max(one.size, 1.0)
    p_all = np.clip(one.counts, 0.0, None) / n_est
    p_all = np.clip(p_all, 0.0, 1.0)
    edges: list[tuple[int, int]] = []
    p_pair = np.zeros(0)
    pair_sd = 0.0
    if K >= 2 and pairs:
        iu, ju = np.triu_indices(K, 1)
        C = np.zeros((K, K))
        C[iu, ju] = np.sum([r.counts for r in pairs], axis=0)
        C = C + C.T
        pair_sd = math.sqrt(sum(r.noise_std**2 for r in pairs))
        c = np.clip(one.counts[cols_arr], 0.0, n_est)
        np.fill_diagonal(C, c)
        scores = pair_scores_from_counts(C, c, n_est, p_all[cols_arr], n_est)
        edges = max_spanning_tree(scores)
        raw = np.array([C[a, b] for a, b in edges]) / n_est
        p_pair = consistent_pairs(p_all[cols_arr], edges, raw)
    tail = p_all.copy()
    tail[one.counts < cfg.zero_below_sd * one.noise_std] = 0.0
    tail[cols_arr] = 0.0
    sampler = TreeSampler(V, cols_arr, edges, p_all[cols_arr], p_pair, IndependentTail(tail))
    info = {"generator": "federated MST", "tree_codes": K, "edges": len(edges),
            "max_codes_per_patient": cfg.max_codes, "one_way_share": cfg.share,
            "one_way_noise_std": one.noise_std, "pair_noise_std": pair_sd,
            "sites_one_way": len(one.sites), "sites_pairs": len(pairs),
            "tail_codes": int(np.sum(tail > 0)),
            "estimator": "sum of the sites' noisy marginals -> maximum spanning tree of MST's "
                         "pair scores -> closed-form tree (common.model.tree)"}
    log.info("federated MST: %d tree codes, %d edges, %d tail codes (%d sites)", K,
             len(edges), info["tail_codes"], len(one.sites))
    return sampler, info
