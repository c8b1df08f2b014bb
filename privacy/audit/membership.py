"""Black-box membership inference against synthetic data alone.

Attacks (higher score = "member"):
- distance to closest synthetic record, Hamming and Jaccard (score = -distance);
- medGAN presence disclosure (Choi et al. 2017): claim "present" when a synthetic record is within
  Hamming distance h; precision / sensitivity over h for an attacker holding a share r of records;
- density ratio in the spirit of DOMIAS (van Breugel et al. 2023): p_synth(x) / p_ref(x) with a
  Hamming kernel density exp(-d / h) over the synthetic set and over a reference set of real,
  non-member patients.

Distances come from matrix products on the binary matrices, in chunks:
Hamming(a, b) = |a| + |b| - 2 a.b, Jaccard(a, b) = 1 - a.b / (|a| + |b| - a.b).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.metrics import roc_auc_score, roc_curve

from fedsynth.privacy.audit.config import AuditConfig

log = logging.getLogger(__name__)

CHUNK = 512


@dataclass
class NearestStats:
    """Per query row: distance to the closest row of a set, and a log kernel density."""

    hamming: np.ndarray  # (n,) int
    jaccard: np.ndarray  # (n,) float in [0, 1]
    log_kde: np.ndarray  # (n,) float: log mean_b exp(-Hamming(x, b) / h)


def shared_columns(*matrices: np.ndarray) -> np.ndarray:
    """Indices of the columns where any matrix has a 1 (the others add nothing to a distance)."""
    used = np.zeros(matrices[0].shape[1], dtype=bool)
    for m in matrices:
        used |= np.asarray(m, dtype=bool).any(axis=0)
    return np.flatnonzero(used)


def intersection_chunks(
    Q: np.ndarray, B: np.ndarray, chunk: int = CHUNK
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (row slice of Q, |q & b| for every b in B) as float32 (chunk, len(B)).

    Sparse products: code vectors hold a handful of ones, so this is ~10x a dense matmul."""
    Bt = sparse.csr_matrix(np.asarray(B, dtype=np.float32)).T.tocsc()
    for start in range(0, len(Q), chunk):
        rows = slice(start, min(start + chunk, len(Q)))
        q = sparse.csr_matrix(np.asarray(Q[rows], dtype=np.float32))
        yield rows, (q @ Bt).toarray()


def nearest_stats(Q: np.ndarray, B: np.ndarray, bandwidth: float = 1.0) -> NearestStats:
    """Closest-record distances of every row of Q to the rows of B (both binary)."""
    cols = shared_columns(Q, B)
    Q, B = Q[:, cols], B[:, cols]
    nq = Q.sum(axis=1).astype(np.float32)
    nb = B.sum(axis=1).astype(np.float32)
    ham = np.empty(len(Q), dtype=np.int64)
    jac = np.empty(len(Q), dtype=np.float64)
    kde = np.empty(len(Q), dtype=np.float64)
    for rows, inter in intersection_chunks(Q, B):
        union = nq[rows, None] + nb[None, :] - inter
        d = union - inter  # Hamming = |a| + |b| - 2 a.b
        dmin = d.min(axis=1)
        ham[rows] = np.rint(dmin).astype(np.int64)
        sim = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
        jac[rows] = 1.0 - sim.max(axis=1)
        # log mean exp(-d / h), shifted by the closest distance for stability
        d -= dmin[:, None]
        d *= -1.0 / bandwidth
        np.exp(d, out=d)
        kde[rows] = np.log(d.sum(axis=1)) - dmin / bandwidth - np.log(len(B))
    return NearestStats(ham, jac, kde)


def roc_summary(
    member_scores: np.ndarray, non_member_scores: np.ndarray, points: int = 200
) -> dict:
    """AUROC, TPR at FPR 1% and 0.1%, and a downsampled ROC curve (higher score = member)."""
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(non_member_scores))]
    s = np.r_[member_scores, non_member_scores].astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s)
    keep = np.unique(np.r_[0, np.linspace(0, len(fpr) - 1, points).astype(int), len(fpr) - 1])
    return {
        "auroc": float(roc_auc_score(y, s)),
        "tpr_at_fpr_1pct": _tpr_at(fpr, tpr, 0.01),
        "tpr_at_fpr_0.1pct": _tpr_at(fpr, tpr, 0.001),
        "n_members": int(len(member_scores)),
        "n_non_members": int(len(non_member_scores)),
        "roc": {"fpr": np.round(fpr[keep], 5).tolist(), "tpr": np.round(tpr[keep], 5).tolist()},
    }


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def presence_disclosure(
    member_dist: np.ndarray,
    non_member_dist: np.ndarray,
    fractions: tuple[float, ...],
    max_distance: int,
    seed: int = 0,
) -> list[dict]:
    """medGAN presence disclosure: the attacker holds a share r of the members and as many
    non-members, and claims "present" when the closest synthetic record is within Hamming h.
    Returns, per r, precision and sensitivity for h = 0..max_distance."""
    rng = np.random.default_rng(seed)
    out = []
    for r in fractions:
        n = max(1, int(round(r * len(member_dist))))
        n = min(n, len(member_dist), len(non_member_dist))
        dm = rng.choice(member_dist, n, replace=False)
        dn = rng.choice(non_member_dist, n, replace=False)
        rows = []
        for h in range(max_distance + 1):
            tp, fp = int((dm <= h).sum()), int((dn <= h).sum())
            rows.append(
                {
                    "h": h,
                    "precision": tp / (tp + fp) if tp + fp else None,
                    "sensitivity": tp / n,
                }
            )
        out.append({"fraction": r, "n_each": n, "by_distance": rows})
    return out


def membership_attacks(
    synth: np.ndarray,
    members: np.ndarray,
    non_members: np.ndarray,
    reference: np.ndarray | None = None,
    cfg: AuditConfig | None = None,
) -> dict:
    """Run every black-box attack; aggregate figures only (no rows leave this function).

    reference: real non-member patients for the density-ratio attack; when None the non-members
    are split in half (one half is the reference, the other half is scored)."""
    cfg = cfg or AuditConfig()
    rng = np.random.default_rng(cfg.seed)
    members = _subsample(members, cfg.max_eval, rng)
    non_members = _subsample(non_members, cfg.max_eval, rng)
    if len(members) < 2 or len(non_members) < 2:
        raise ValueError("membership audit needs at least 2 members and 2 non-members")
    sm = nearest_stats(members, synth, cfg.kde_bandwidth)
    sn = nearest_stats(non_members, synth, cfg.kde_bandwidth)
    out = {
        "n_synth": int(len(synth)),
        "dcr_hamming": roc_summary(-sm.hamming, -sn.hamming, cfg.roc_points),
        "dcr_jaccard": roc_summary(-sm.jaccard, -sn.jaccard, cfg.roc_points),
    }
    pairs = (("dcr_hamming", sm.hamming, sn.hamming), ("dcr_jaccard", sm.jaccard, sn.jaccard))
    for key, a, b in pairs:
        out[key]["median_member"] = float(np.median(a))
        out[key]["median_non_member"] = float(np.median(b))
        out[key]["share_exact_copies_member"] = float(np.mean(a == 0))
        out[key]["share_exact_copies_non_member"] = float(np.mean(b == 0))
    out["presence"] = presence_disclosure(
        sm.hamming, sn.hamming, cfg.presence_fractions, cfg.presence_max_distance, cfg.seed
    )
    out["domias"] = _density_ratio(synth, members, non_members, sm, sn, reference, cfg, rng)
    return out


def _density_ratio(
    synth: np.ndarray,
    members: np.ndarray,
    non_members: np.ndarray,
    sm: NearestStats,
    sn: NearestStats,
    reference: np.ndarray | None,
    cfg: AuditConfig,
    rng: np.random.Generator,
) -> dict:
    """score(x) = log p_synth(x) - log p_ref(x), both Hamming kernel densities."""
    eval_idx = np.arange(len(non_members))
    if reference is None:
        perm = rng.permutation(len(non_members))
        half = len(perm) // 2
        reference, eval_idx = non_members[perm[:half]], np.sort(perm[half:])
    ref_m = nearest_stats(members, reference, cfg.kde_bandwidth).log_kde
    ref_n = nearest_stats(non_members[eval_idx], reference, cfg.kde_bandwidth).log_kde
    res = roc_summary(sm.log_kde - ref_m, sn.log_kde[eval_idx] - ref_n, cfg.roc_points)
    res["n_reference"] = int(len(reference))
    return res


def _subsample(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    X = np.asarray(X, dtype=np.uint8)
    return X if len(X) <= n else X[np.sort(rng.choice(len(X), n, replace=False))]
