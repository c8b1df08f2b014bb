"""Attribute disclosure, medGAN protocol (Choi et al. 2017).

The attacker knows s codes of a member patient (their 0/1 values; plus demographics when the
source carries them) and infers every other code by a k-nearest-neighbour majority vote over a
source data set, neighbours by Hamming distance on the known part. The source is the synthetic
data; the baseline runs the same attack with held-out real patients as the source, which any
attacker with data from the same population has anyway. Disclosure attributable to the generator
is the gap between the two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.membership import intersection_chunks


def known_columns(source: np.ndarray, s: int, mode: str, seed: int) -> np.ndarray:
    """The s codes the attacker knows: the most common in the attacker's source, or random."""
    s = min(s, source.shape[1] - 1)
    if mode == "top":
        return np.sort(np.argsort(-source.mean(axis=0), kind="stable")[:s])
    if mode == "random":
        return np.sort(np.random.default_rng(seed).choice(source.shape[1], s, replace=False))
    raise ValueError(f"unknown known-codes mode {mode!r} (top|random)")


def knn_infer(
    targets_known: np.ndarray, source_known: np.ndarray, source_rest: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """Majority vote of the k sources closest (Hamming on the known part) to each target;
    ties in distance broken at random."""
    rng = np.random.default_rng(seed)
    k = min(k, len(source_known))
    nt = targets_known.sum(axis=1).astype(np.float32)
    ns = source_known.sum(axis=1).astype(np.float32)
    pred = np.zeros((len(targets_known), source_rest.shape[1]), dtype=np.uint8)
    for rows, inter in intersection_chunks(targets_known, source_known):
        d = nt[rows, None] + ns[None, :] - 2 * inter
        d += rng.random(d.shape, dtype=np.float32) * 0.5  # random tie-break, keeps the order
        nn = np.argpartition(d, k - 1, axis=1)[:, :k]
        votes = source_rest[nn].astype(np.float32).mean(axis=1)
        pred[rows] = votes > 0.5
    return pred


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((pred & truth).sum())
    fp = int((pred & (1 - truth)).sum())
    fn = int(((1 - pred) & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def _with_demographics(
    X: np.ndarray, cov: pd.DataFrame | None, columns: list[str], categories: dict
) -> np.ndarray:
    if cov is None or not columns:
        return X
    parts = [X]
    for col in columns:
        values = cov[col].astype(str).to_numpy()
        parts.append((values[:, None] == np.asarray(categories[col])[None, :]).astype(np.uint8))
    return np.hstack(parts)


def attribute_disclosure(
    synth: np.ndarray,
    members: np.ndarray,
    holdout: np.ndarray,
    cfg: AuditConfig | None = None,
    member_cov: pd.DataFrame | None = None,
    synth_cov: pd.DataFrame | None = None,
    holdout_cov: pd.DataFrame | None = None,
) -> dict:
    """Attack up to cfg.attr_targets members with synthetic data, and with held-out real data
    (baseline). Demographic columns are used only where the target and both sources have them."""
    cfg = cfg or AuditConfig()
    rng = np.random.default_rng(cfg.seed)
    if len(members) > cfg.attr_targets:
        idx = np.sort(rng.choice(len(members), cfg.attr_targets, replace=False))
        members = members[idx]
        if member_cov is not None:
            member_cov = member_cov.iloc[idx].reset_index(drop=True)
    known = known_columns(synth, cfg.attr_known, cfg.attr_known_mode, cfg.seed)
    rest = np.setdiff1d(np.arange(synth.shape[1]), known)
    demo_cols: list[str] = []
    if member_cov is not None and synth_cov is not None and holdout_cov is not None:
        shared = set(member_cov.columns) & set(synth_cov.columns) & set(holdout_cov.columns)
        demo_cols = sorted(shared)
        demo_cols = [c for c in demo_cols if c not in ("site", "patient_id")]
    categories = {c: sorted(set(member_cov[c].astype(str))) for c in demo_cols} if demo_cols else {}
    tgt = _with_demographics(members[:, known], member_cov, demo_cols, categories)
    truth = members[:, rest].astype(np.uint8)
    out = {
        "known_codes": int(len(known)),
        "known_mode": cfg.attr_known_mode,
        "k": cfg.attr_k,
        "n_targets": int(len(members)),
        "demographics_used": demo_cols,
    }
    sources = (("synthetic", synth, synth_cov), ("baseline_holdout", holdout, holdout_cov))
    for name, src, cov in sources:
        src_known = _with_demographics(src[:, known], cov, demo_cols, categories)
        pred = knn_infer(tgt, src_known, src[:, rest].astype(np.uint8), cfg.attr_k, cfg.seed)
        out[name] = _scores(pred, truth)
    out["f1_gain_over_baseline"] = out["synthetic"]["f1"] - out["baseline_holdout"]["f1"]
    return out
