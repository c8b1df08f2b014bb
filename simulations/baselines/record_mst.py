"""MST (McKenna, Miklau & Sheldon 2021) on whole records: the schema's columns and the codes.

``mst.py`` fits MST on 0/1 codes; here the attributes are the C schema columns, each over its
PUBLIC domain (categories, or the numeric token bins of ``record_tokens.token_layout``, plus a
"missing" cell), and the codes. The steps and the accounting are ``mst.py``'s (zCDP budget rho
split 1/3 per step, every entry composed in RDP, every draw from ``privacy.secure_random``);
what changes is what a patient touches:

1. **1-way.** The C column histograms (all cells, missing included: every patient is in exactly
   one cell per column) and the per-code counts of the rows clipped to k codes, and n. One
   patient moves this vector by at most C + k + 1 ones: L2 sensitivity sqrt(C + k + 1);
   N(0, (sigma_1 sqrt(C + k + 1))^2) per entry. Tree codes: noisy count above ``tree_min_sd``
   noise sd (at most ``max_tree_codes``, the largest first).
2. **Select.** The nodes are the C columns and the K tree codes; a pair's score is the L1
   distance between its table in the (unclipped) data and the independent estimate from step 1
   (Delta = 1: one patient lands in one cell of each table). N - 1 exponential-mechanism rounds
   pick a spanning tree (``mst.select_tree``), eps_0 = sqrt(8 rho_2 / (N - 1)).
3. **Measure the tree.** For each edge the cells in which both ends are "active": a column is
   always active (every cell), a code when it is present (its 1 cell), on the clipped rows. A
   patient is active on at most C + k nodes, and the tree restricted to them is a forest: at
   most C + k - 1 edges, one cell each: L2 sensitivity sqrt(C + k - 1). The other cells of a
   table involving a code follow from the step-1 counts (a column's cell total minus its
   co-count with the code; the 2x2 table of two codes from n, c_i, c_j, c_ij).
4. **Estimate and sample** (post-processing). Each edge table: noisy cells clipped at 0, then
   iterative proportional fitting to the two nodes' noisy 1-way distributions, so that the
   conditionals child | parent agree with the marginals (Private-PGM fits all measurements
   jointly by least squares; on a tree this per-edge fit is the simplification). Sampling: the
   Bayesian network on the tree rooted at the first column, breadth first; codes outside the
   tree independently from their noisy marginals (zero below ``zero_below_sd``).

Non-private: the same steps without noise (a Chow-Liu-like tree on exact counts).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from fedsynth.common.data.record_tokens import TokenLayout, records_to_tokens
from fedsynth.common.data.schema import Schema
from fedsynth.common.model.tree import pair_scores_from_counts
from fedsynth.privacy import secure_random
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.marginals import clip_codes_secure
from fedsynth.simulations.baselines.mst import (
    MSTConfig,
    gaussian_for_rho,
    mst_report,
    rho_for,
    select_tree,
)
from fedsynth.simulations.baselines.record_marginals import decode_columns, normalised

log = logging.getLogger(__name__)

IPF_ITERATIONS = 20


def one_hot_columns(table: pd.DataFrame, layout: TokenLayout) -> sparse.csr_matrix:
    """(n, D) sparse 0/1: per column its token cells then a missing cell (exactly one 1 per
    column and row)."""
    tokens = records_to_tokens(table, layout)
    blocks = []
    for g in layout.groups:
        block = tokens[:, g.start:g.stop]
        blocks.append(np.c_[block, 1 - block.sum(1, keepdims=True)])
    return sparse.csr_matrix(np.hstack(blocks).astype(np.float64)) if blocks \
        else sparse.csr_matrix((len(table), 0))


def ipf(table: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """A joint distribution close to ``table`` (clipped at 0) with margins ``row`` and ``col``
    (both distributions): iterative proportional fitting from a floored start."""
    t = np.clip(table, 0.0, None) + 1e-9
    t = t / t.sum()
    for _ in range(IPF_ITERATIONS):
        t *= (row / np.maximum(t.sum(1), 1e-300))[:, None]
        t *= (col / np.maximum(t.sum(0), 1e-300))[None, :]
    return t


@dataclass
class RecordTreeSampler:
    """The tree (nodes: columns 0..C-1, then the tree codes), its conditionals and the
    independent codes outside it."""

    layout: TokenLayout
    schema: Schema
    n_codes: int
    tree_codes: np.ndarray  # code index of node C + t
    order: list[tuple[int, int]]  # (node, parent) breadth first; parent -1 for the root
    marginals: list[np.ndarray]  # per node: its distribution (root's, and for orphans)
    conditionals: dict[int, np.ndarray]  # node -> (d_parent, d_node) rows P(node | parent)
    tail: np.ndarray  # independent rates of the codes outside the tree (0 inside)

    def sample_records(self, n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
        rng = np.random.default_rng([int(seed) % 2**63, 0x4D57])
        values: dict[int, np.ndarray] = {}
        for node, parent in self.order:
            if parent < 0:
                p = self.marginals[node]
                values[node] = rng.choice(len(p), size=n, p=p)
                continue
            cum = np.cumsum(self.conditionals[node], axis=1)
            u = rng.random(n) * cum[:, -1][values[parent]]
            values[node] = np.minimum((cum[values[parent]] < u[:, None]).sum(1),
                                      cum.shape[1] - 1)
        C = len(self.layout.groups)
        table = decode_columns([values[i] for i in range(C)], self.layout, self.schema, seed)
        codes = (rng.random((n, self.n_codes)) < self.tail).astype(np.uint8)
        for t, j in enumerate(self.tree_codes):
            codes[:, j] = values[C + t]
        return table, codes

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        return self.sample_records(n, seed)[1]


@dataclass
class RecordMSTResult:
    sampler: RecordTreeSampler
    privacy: dict[str, Any] | None
    train_seconds: float
    info: dict[str, Any]


def _scores(G: np.ndarray, sizes: list[int], n: float, p_nodes: list[np.ndarray],
            n_est: float, C: int, code_counts: np.ndarray, p_codes: np.ndarray) -> np.ndarray:
    """(N, N) MST scores: L1 between each pair's exact table and n_est p_a (x) p_b. ``G``: the
    Gram matrix of [column one-hots | tree codes]; ``code_counts``: exact counts of the codes."""
    starts = np.r_[0, np.cumsum(sizes)].astype(int)
    K = len(p_codes)
    N = C + K
    S = np.zeros((N, N))
    for a in range(C):
        ra = slice(starts[a], starts[a + 1])
        ha = np.diag(G)[ra]
        for b in range(a + 1, C):
            T = G[ra, starts[b]:starts[b + 1]]
            S[a, b] = S[b, a] = np.abs(T - n_est * np.outer(p_nodes[a], p_nodes[b])).sum()
        if K:
            T1 = G[ra, starts[C]:]  # (d_a, K): column cell & code present
            e = n_est * p_nodes[a][:, None]
            s = (np.abs(T1 - e * p_codes[None, :]).sum(0)
                 + np.abs(ha[:, None] - T1 - e * (1 - p_codes[None, :])).sum(0))
            S[a, C:] = S[C:, a] = s
    if K:
        Cc = G[starts[C]:, starts[C]:]
        S[C:, C:] = pair_scores_from_counts(Cc, code_counts, n, p_codes, n_est)
    return S


def fit_record_mst(table: pd.DataFrame, codes: np.ndarray, layout: TokenLayout, schema: Schema,
                   epsilon_target: float | None = None, delta: float | None = None,
                   cfg: MSTConfig | None = None, prior_history: tuple[Mechanism, ...] = (),
                   noise_multiplier: float | None = None) -> RecordMSTResult:
    """MST over the records' columns and codes at (epsilon, delta) (module docstring)."""
    cfg = cfg or MSTConfig()
    X = np.asarray(codes, dtype=np.uint8)
    n, V = X.shape
    C = len(layout.groups)
    start = time.perf_counter()
    private = epsilon_target is not None
    if private and delta is None:
        raise ValueError("a private release needs delta")
    k = cfg.max_codes
    onehot = one_hot_columns(table, layout)
    sizes = [len(g.labels) + 1 for g in layout.groups]
    if private:
        rho = rho_for(float(epsilon_target), float(delta), prior_history,  # type: ignore[arg-type]
                      noise_multiplier)
        rho1, rho2, rho3 = (s * rho for s in cfg.shares)
        sig1, sig3 = gaussian_for_rho(rho1), gaussian_for_rho(rho3)
        sd1, sd3 = sig1 * math.sqrt(C + k + 1), sig3 * math.sqrt(max(C + k - 1, 1))
        Xc = clip_codes_secure(X, k)
    else:
        Xc, sd1, sd3 = X, 0.0, 0.0

    def noise(size: int, sd: float) -> np.ndarray:
        return secure_random.gaussian(size, sd) if sd > 0 else np.zeros(size)

    # step 1: column histograms, code counts, n
    hist = np.asarray(onehot.sum(0)).ravel() + noise(onehot.shape[1], sd1)
    counts = Xc.sum(0, dtype=np.float64) + noise(V, sd1)
    n_est = max(float(n + noise(1, sd1)[0]), 1.0)
    starts = np.r_[0, np.cumsum(sizes)].astype(int)
    p_cols = [normalised(hist[starts[a]:starts[a + 1]], cfg.zero_below_sd * sd1)
              for a in range(C)]
    p_all = np.clip(counts, 0.0, None) / n_est
    p_all = np.minimum(p_all, 1.0)
    tree_cols = np.flatnonzero(counts > (cfg.tree_min_sd * sd1 if private else 0.0))
    tree_cols = tree_cols[np.argsort(-counts[tree_cols], kind="stable")]
    if cfg.max_tree_codes is not None:
        tree_cols = tree_cols[:cfg.max_tree_codes]
    tree_cols = np.sort(tree_cols)
    K = len(tree_cols)
    N = C + K

    # step 2: select the tree on exact tables (unclipped codes)
    t_sel = time.perf_counter()
    M = sparse.hstack([onehot, sparse.csr_matrix(X[:, tree_cols].astype(np.float64))]).tocsr()
    G = (M.T @ M).toarray()
    S = _scores(G, sizes, float(n), p_cols, n_est, C,
                X[:, tree_cols].sum(0, dtype=np.float64), p_all[tree_cols])
    eps0 = math.sqrt(8 * rho2 / (N - 1)) if private and N > 1 else None
    edges = select_tree(S, eps0) if N > 1 else []
    t_sel = time.perf_counter() - t_sel

    # step 3: measure each edge's active cells on the clipped rows
    Mc = sparse.hstack([onehot, sparse.csr_matrix(Xc[:, tree_cols].astype(np.float64))]).tocsc()
    node_cols = [np.arange(starts[a], starts[a + 1]) for a in range(C)] + \
        [np.array([starts[C] + t]) for t in range(K)]
    node_p = [*p_cols, *[np.array([1 - p, p]) for p in p_all[tree_cols]]]
    joint: dict[tuple[int, int], np.ndarray] = {}
    for a, b in edges:
        A, B = Mc[:, node_cols[a]], Mc[:, node_cols[b]]
        T = (A.T @ B).toarray() + noise(len(node_cols[a]) * len(node_cols[b]), sd3).reshape(
            len(node_cols[a]), len(node_cols[b]))
        floor3 = cfg.zero_below_sd * sd3
        T[floor3 > T] = 0.0  # noise on an empty cell is not mass
        joint[(a, b)] = ipf(_full_table(T, a, b, C, hist, starts, counts, tree_cols, n_est),
                            node_p[a], node_p[b])

    # step 4: the Bayesian network, rooted at node 0, breadth first
    nbrs: dict[int, list[int]] = {i: [] for i in range(N)}
    for a, b in edges:
        nbrs[a].append(b)
        nbrs[b].append(a)
    order: list[tuple[int, int]] = []
    cond: dict[int, np.ndarray] = {}
    seen = np.zeros(N, dtype=bool)
    for root in range(N):
        if seen[root]:
            continue
        seen[root] = True
        order.append((root, -1))
        queue = deque([root])
        while queue:
            u = queue.popleft()
            for v in nbrs[u]:
                if seen[v]:
                    continue
                seen[v] = True
                P = joint[(u, v)] if (u, v) in joint else joint[(v, u)].T
                cond[v] = P / np.maximum(P.sum(1, keepdims=True), 1e-300)
                order.append((v, u))
                queue.append(v)
    tail = p_all.copy()
    if private:
        tail[counts < cfg.zero_below_sd * sd1] = 0.0
    tail[tree_cols] = 0.0
    sampler = RecordTreeSampler(layout, schema, V, tree_cols, order, node_p, cond, tail)
    info = {"columns": C, "tree_codes": K, "edges": len(edges),
            "column_edges": sum(a < C and b < C for a, b in edges),
            "select_seconds": round(t_sel, 2), "max_codes": k,
            "estimator": "per-edge IPF on a tree (see record_mst.py step 4)"}
    report = None
    if private:
        report = mst_report(
            (sig1, eps0, sig3), N, prior_history, float(delta), epsilon_target, rho,
            ("1-way histograms and code counts (Gaussian)",
             "tree selection (exponential, as zCDP)", "tree edge tables (Gaussian)"),
            f"MST on records, zCDP rho={rho:.5g} split {cfg.shares}; {C} columns, k={k} codes "
            f"per patient; 1-way noise sd {sd1:.2f} (sensitivity sqrt(C+k+1)), edge noise sd "
            f"{sd3:.2f} (sqrt(C+k-1)), EM eps0 {eps0 if eps0 else 0:.4g} x {max(N - 1, 0)}; "
            "RDP composition")
    log.info("record MST: %d columns + %d tree codes, %d edges, select %.1f s, total %.1f s",
             C, K, len(edges), t_sel, time.perf_counter() - start)
    return RecordMSTResult(sampler, report, time.perf_counter() - start, info)


def _full_table(T: np.ndarray, a: int, b: int, C: int, hist: np.ndarray, starts: np.ndarray,
                counts: np.ndarray, tree_cols: np.ndarray, n_est: float) -> np.ndarray:
    """The whole table of edge (a, b) from its measured active cells ``T`` and the step-1
    counts (module docstring, step 3)."""
    if a < C and b < C:
        return T
    if a < C:  # column x code: T is (d_a, 1), the code present
        ha = hist[starts[a]:starts[a + 1]]
        return np.c_[ha - T[:, 0], T[:, 0]]
    if b < C:
        return _full_table(T.T, b, a, C, hist, starts, counts, tree_cols, n_est).T
    ci, cj, cij = counts[tree_cols[a - C]], counts[tree_cols[b - C]], T[0, 0]
    return np.array([[n_est - ci - cj + cij, cj - cij], [ci - cij, cij]])
