"""A tree-structured model of 0/1 codes (MST's graphical model), from noisy marginals only.

Everything here is post-processing of released counts: the pair scores, the maximum spanning
tree, the estimate and the sampler. Used by the central MST baseline
(``simulations.baselines.mst``) and by the federated MST coordinator (``server.mst``).

- ``pair_scores_from_counts``: MST's score of a pair, the L1 distance between its 2x2 table and
  the table of independent codes, from the counts n, c_i, c_j, c_ij (McKenna et al. 2021).
- ``max_spanning_tree``: Kruskal, the best-scoring pair joining two components each time.
- ``consistent_pairs``: each pair rate projected onto [max(0, p_a + p_b - 1), min(p_a, p_b)],
  the 2x2 tables that are non-negative and keep the marginals p_a, p_b.
- ``TreeSampler``: the Bayesian network on the tree (root by its marginal, child | parent from
  the pair table) plus independent codes outside the tree (``IndependentTail``); saved to and
  loaded from one JSON file (``save`` / ``load_tree``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import write_json

FORMAT = "fedsynth-tree-model/1"
TREE_FILE = "tree.json"  # in a run's model/ folder


def pair_scores_from_counts(C: np.ndarray, c: np.ndarray, n: float, p: np.ndarray,
                            n_est: float) -> np.ndarray:
    """(K, K) L1 distance between each pair's 2x2 table, from the co-counts ``C`` (K, K),
    counts ``c`` and size ``n``, and the table of independent codes with rates ``p`` and total
    ``n_est``."""
    e = n_est * p
    e11 = np.outer(e, p)
    e10 = e[:, None] - e11
    e01 = e[None, :] - e11
    e00 = n_est - e[:, None] - e[None, :] + e11
    return (np.abs(C - e11) + np.abs(c[:, None] - C - e10) + np.abs(c[None, :] - C - e01)
            + np.abs(n - c[:, None] - c[None, :] + C - e00))


def max_spanning_tree(scores: np.ndarray) -> list[tuple[int, int]]:
    """Kruskal over the K nodes of the (K, K) ``scores``: the K - 1 edges of a maximum
    spanning tree (ties: the first pair in ``np.triu_indices`` order)."""
    K = scores.shape[0]
    iu, ju = np.triu_indices(K, 1)
    order = np.argsort(-scores[iu, ju], kind="stable")
    comp = np.arange(K)
    edges: list[tuple[int, int]] = []
    for idx in order:
        a, b = int(iu[idx]), int(ju[idx])
        if comp[a] == comp[b]:
            continue
        edges.append((a, b))
        comp[comp == comp[b]] = comp[a]
        if len(edges) == K - 1:
            break
    return edges


def consistent_pairs(p: np.ndarray, edges: list[tuple[int, int]], raw: np.ndarray) -> np.ndarray:
    """Each pair rate ``raw[e]`` of ``edges[e]`` clipped to [max(0, p_a + p_b - 1),
    min(p_a, p_b)]."""
    a = np.array([e[0] for e in edges], dtype=int)
    b = np.array([e[1] for e in edges], dtype=int)
    return np.clip(raw, np.maximum(0.0, p[a] + p[b] - 1.0), np.minimum(p[a], p[b]))


class IndependentTail:
    """Independent Bernoulli(p_j) codes: what is not modelled jointly."""

    def __init__(self, prevalence: np.ndarray) -> None:
        self.prevalence = np.clip(np.asarray(prevalence, dtype=np.float64), 0.0, 1.0)

    def fill(self, out: np.ndarray, rng: np.random.Generator) -> None:
        cols = np.flatnonzero(self.prevalence > 0)
        out[:, cols] = rng.random((out.shape[0], cols.size)) < self.prevalence[cols]


class TreeSampler:
    """A Bayesian network over a tree of 0/1 codes plus independent codes elsewhere."""

    def __init__(self, n_codes: int, tree_cols: np.ndarray, edges: list[tuple[int, int]],
                 p: np.ndarray, p_pair: np.ndarray, tail: IndependentTail) -> None:
        """``p``: rates of the K tree codes; ``p_pair[e]``: P(both) for ``edges[e]`` (tree
        indices), already consistent with ``p``."""
        self.n_codes, self.tree_cols, self.tail = n_codes, np.asarray(tree_cols), tail
        self.edges = [(int(a), int(b)) for a, b in edges]
        self.p_pair = np.asarray(p_pair, dtype=np.float64)
        K = len(tree_cols)
        adj: list[list[tuple[int, float]]] = [[] for _ in range(K)]
        for (a, b), pab in zip(self.edges, self.p_pair, strict=True):
            adj[a].append((b, float(pab)))
            adj[b].append((a, float(pab)))
        self.order: list[int] = []
        self.parent = np.full(K, -1)
        self.cond1 = np.zeros(K)  # P(child = 1 | parent = 1)
        self.cond0 = np.zeros(K)  # P(child = 1 | parent = 0)
        self.p = np.asarray(p, dtype=np.float64)
        seen = np.zeros(K, dtype=bool)
        for root in range(K):  # a forest when fewer than K - 1 edges are given
            if seen[root]:
                continue
            seen[root] = True
            queue = [root]
            while queue:
                u = queue.pop(0)
                self.order.append(u)
                for v, puv in adj[u]:
                    if seen[v]:
                        continue
                    seen[v] = True
                    self.parent[v] = u
                    pu, pv = self.p[u], self.p[v]
                    self.cond1[v] = puv / pu if pu > 0 else pv
                    self.cond0[v] = (pv - puv) / (1 - pu) if pu < 1 else pv
                    queue.append(v)
        self.cond1, self.cond0 = np.clip(self.cond1, 0, 1), np.clip(self.cond0, 0, 1)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.zeros((n, self.n_codes), dtype=np.uint8)
        self.tail.fill(out, rng)
        T = np.zeros((n, len(self.tree_cols)), dtype=bool)
        for v in self.order:
            u = rng.random(n)
            par = self.parent[v]
            if par < 0:
                T[:, v] = u < self.p[v]
            else:
                T[:, v] = u < np.where(T[:, par], self.cond1[v], self.cond0[v])
        out[:, self.tree_cols] = T
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "n_codes": int(self.n_codes),
                "tree_cols": [int(c) for c in self.tree_cols], "edges": self.edges,
                "p": self.p.tolist(), "p_pair": self.p_pair.tolist(),
                "tail": self.tail.prevalence.tolist()}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """One JSON file (written atomically): the model and ``extra`` (e.g. the codes)."""
        write_json(Path(path), {**self.to_dict(), **(extra or {})})


def load_tree(path: str | Path) -> TreeSampler:
    """The ``TreeSampler`` saved by ``TreeSampler.save``."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    return TreeSampler(int(doc["n_codes"]), np.asarray(doc["tree_cols"], dtype=int),
                       [tuple(e) for e in doc["edges"]], np.asarray(doc["p"]),
                       np.asarray(doc["p_pair"]), IndependentTail(np.asarray(doc["tail"])))


def load_tree_release(path: str | Path) -> tuple[TreeSampler, Any]:
    """(the sampler, its ``Vocabulary``) from a federated MST run's ``model/tree.json``;
    ``InputError`` naming the file when it is not one."""
    from fedsynth.common.errors import InputError
    from fedsynth.common.vocabulary import Vocabulary

    try:
        sampler = load_tree(path)
        doc = json.loads(Path(path).read_text(encoding="utf-8"))["vocabulary"]
        vocab = Vocabulary(tuple(str(c) for c in doc["codes"]), name=str(doc.get("name", "")))
        if len(vocab.codes) != sampler.n_codes:
            raise ValueError("its vocabulary and model differ in size")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise InputError(path, f"not a tree model ({err})") from None
    return sampler, vocab
