"""Fidelity of a synthetic binary patient x code matrix against held-out real patients.

All metrics take 0/1 matrices with the same columns (codes). ``fidelity`` returns a dict:
prevalence_r, cooccurrence_r (top 100 codes of the held-out set), dimwise_* (medGAN's
dimension-wise prediction on the top 10 codes), codes-per-patient summaries and a
real-vs-synthetic discriminator AUROC. A 20k x 2,090 pair takes seconds.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

log = logging.getLogger(__name__)

TOP_COOC = 100
TOP_DIMWISE = 10
HIST_MAX = 20


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def prevalence(X: np.ndarray) -> np.ndarray:
    return np.asarray(X, dtype=np.float64).mean(axis=0)


def prevalence_r(real: np.ndarray, synth: np.ndarray) -> float:
    """Pearson r between per-code prevalences over all codes (EHRDiff's headline)."""
    return _pearson(prevalence(real), prevalence(synth))


def top_codes(X: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most prevalent codes (ties broken by column order)."""
    return np.argsort(-prevalence(X), kind="stable")[:k]


def cooccurrence_rates(X: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """C_ab = fraction of patients having both code a and code b, for the given columns."""
    S = np.asarray(X[:, cols], dtype=np.float32)
    return (S.T @ S) / max(X.shape[0], 1)


def cooccurrence_r(real: np.ndarray, synth: np.ndarray, k: int = TOP_COOC) -> float:
    """Pearson r of the upper triangle (off-diagonal) of the co-occurrence-rate matrices."""
    cols = top_codes(real, k)
    iu = np.triu_indices(len(cols), k=1)
    return _pearson(cooccurrence_rates(real, cols)[iu], cooccurrence_rates(synth, cols)[iu])


def _fit_auroc(
    X_train: sparse.csr_matrix, y_train: np.ndarray, X_test: sparse.csr_matrix, y_test: np.ndarray
) -> float:
    if len(np.unique(y_test)) < 2:
        return float("nan")
    if len(np.unique(y_train)) < 2:
        return 0.5  # a constant predictor
    clf = LogisticRegression(max_iter=200, C=1.0, solver="liblinear")
    clf.fit(X_train, y_train)
    return float(roc_auc_score(y_test, clf.decision_function(X_test)))


def dimension_wise_prediction(
    real_test: np.ndarray, synth: np.ndarray, real_train: np.ndarray, k: int = TOP_DIMWISE
) -> dict[str, Any]:
    """medGAN's dimension-wise prediction: for each of the k most common codes (of ``real_test``),
    logistic regression predicting it from all other codes, trained on synthetic vs trained on
    real, both tested on held-out real patients (AUROC)."""
    cols = top_codes(real_test, k)
    per_code = []
    for j in cols:
        keep = np.ones(real_test.shape[1], dtype=bool)
        keep[j] = False
        Xte = sparse.csr_matrix(real_test[:, keep], dtype=np.float32)
        a_real = _fit_auroc(sparse.csr_matrix(real_train[:, keep], dtype=np.float32),
                            real_train[:, j], Xte, real_test[:, j])
        a_syn = _fit_auroc(sparse.csr_matrix(synth[:, keep], dtype=np.float32),
                           synth[:, j], Xte, real_test[:, j])
        per_code.append({"code_index": int(j), "auroc_real": a_real, "auroc_synth": a_syn})
    # an AUROC of 0 trained on real (a tiny held-out half at a site) gives no ratio
    ratios = [c["auroc_synth"] / c["auroc_real"] for c in per_code
              if np.isfinite(c["auroc_real"]) and np.isfinite(c["auroc_synth"])
              and c["auroc_real"] > 0]
    return {
        "dimwise_auroc_ratio": float(np.mean(ratios)) if ratios else float("nan"),
        "dimwise_auroc_real": float(np.nanmean([c["auroc_real"] for c in per_code])),
        "dimwise_auroc_synth": float(np.nanmean([c["auroc_synth"] for c in per_code])),
        "dimwise_per_code": per_code,
    }


def codes_per_patient(X: np.ndarray) -> dict[str, Any]:
    n = np.asarray(X).sum(axis=1)
    hist = np.bincount(np.minimum(n, HIST_MAX).astype(np.int64), minlength=HIST_MAX + 1)
    return {
        "mean": float(n.mean()) if len(n) else float("nan"),
        "sd": float(n.std()) if len(n) else float("nan"),
        "histogram": (hist / max(len(n), 1)).round(5).tolist(),  # last bin: >= HIST_MAX
    }


def discriminator_auroc(real: np.ndarray, synth: np.ndarray, seed: int = 0,
                        max_rows: int = 10000, folds: int = 3) -> float:
    """Cross-validated AUROC of a logistic regression telling real from synthetic rows
    (codes plus the number of codes); 0.5 = indistinguishable."""
    rng = np.random.default_rng(seed)
    m = min(len(real), len(synth), max_rows)
    if m < folds * 2:
        return float("nan")
    R = real[rng.choice(len(real), m, replace=False)]
    S = synth[rng.choice(len(synth), m, replace=False)]
    X = np.vstack([R, S]).astype(np.float32)
    X = sparse.hstack([sparse.csr_matrix(X), sparse.csr_matrix(X.sum(1, keepdims=True) / 10.0)])
    X = X.tocsr()
    y = np.r_[np.ones(m), np.zeros(m)]
    scores = np.zeros(len(y))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for tr, te in cv.split(np.zeros(len(y)), y):
        clf = LogisticRegression(max_iter=300, solver="liblinear").fit(X[tr], y[tr])
        scores[te] = clf.decision_function(X[te])
    return float(roc_auc_score(y, scores))


def fidelity(real_heldout: np.ndarray, synth: np.ndarray, real_train: np.ndarray | None = None,
             seed: int = 0) -> dict[str, Any]:
    """All fidelity metrics of ``synth`` against ``real_heldout`` (see the module docstring).

    ``real_train``: the real patients the dimension-wise baseline is trained on; if None the
    held-out set is split in half (train the real baseline on one half, test both on the other).
    """
    real_heldout = np.asarray(real_heldout, dtype=np.uint8)
    synth = np.asarray(synth, dtype=np.uint8)
    if real_heldout.shape[1] != synth.shape[1]:
        raise ValueError(f"real has {real_heldout.shape[1]} codes, synthetic {synth.shape[1]}")
    if real_train is None:
        perm = np.random.default_rng(seed).permutation(len(real_heldout))
        half = len(perm) // 2
        real_train, real_test = real_heldout[perm[:half]], real_heldout[perm[half:]]
    else:
        real_train, real_test = np.asarray(real_train, dtype=np.uint8), real_heldout
    out: dict[str, Any] = {
        "n_real": int(len(real_heldout)),
        "n_synth": int(len(synth)),
        "prevalence_r": prevalence_r(real_heldout, synth),
        "cooccurrence_r": cooccurrence_r(real_heldout, synth),
    }
    out.update(dimension_wise_prediction(real_test, synth, real_train))
    out["codes_per_patient_real"] = codes_per_patient(real_heldout)
    out["codes_per_patient_synth"] = codes_per_patient(synth)
    out["discriminator_auroc"] = discriminator_auroc(real_heldout, synth, seed)
    return out
