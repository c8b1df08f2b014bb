"""Attribute disclosure on whole records: infer one column (``readmitted``, ``race``) of a patient
from all the others.

The attacker knows every other schema column of a target record and takes the majority value
of the target column among the k records of a source set closest to it (Gower distance on the
known columns, ``fedsynth.common.gower``; ties in distance broken at random), as the code-level
attack does (``attribute.py``, medGAN protocol). Three runs:

- members (records the generator was trained on) with the synthetic records as the source;
- non-members (held-out half A) with the synthetic records as the source;
- members with real non-members (held-out half B) as the source: what any attacker holding
  data from the same population infers anyway.

What the generator discloses about its own patients is the accuracy on members beyond both:
``gain_over_nonmembers`` (the synthetic data tells more about members than about patients it
never saw: memorisation) and ``gain_over_baseline``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedsynth.common.data.schema import Schema
from fedsynth.common.gower import category_codes, gower_chunks, prepare


def knn_vote(targets: pd.DataFrame, source: pd.DataFrame, schema: Schema, target: str,
             k: int, seed: int) -> np.ndarray:
    """Predicted category code of ``target`` for every target record (k-NN majority vote over
    the source's records that have the column; vote ties broken at random)."""
    col = schema.column(target)
    known = [c for c in schema.names if c != target]
    y = category_codes(source[target], col)
    keep = y >= 0
    src, y = source.iloc[np.flatnonzero(keep)], y[keep]
    k = max(1, min(k, len(src)))
    rng = np.random.default_rng(seed)
    n_cat = len(col.categories or ())
    Q, S = prepare(targets, schema, known), prepare(src, schema, known)
    pred = np.empty(len(targets), dtype=np.int64)
    for rows, d in gower_chunks(Q, S):
        d += rng.random(d.shape, dtype=np.float32) * 1e-6  # below any real Gower step
        nn = np.argpartition(d, k - 1, axis=1)[:, :k]
        votes = np.zeros((d.shape[0], n_cat))
        np.add.at(votes, (np.repeat(np.arange(d.shape[0]), k), y[nn].ravel()), 1.0)
        votes += rng.random(votes.shape) * 1e-3  # vote ties
        pred[rows] = votes.argmax(axis=1)
    return pred


def record_attribute_disclosure(members: pd.DataFrame, holdout: pd.DataFrame,
                                synth: pd.DataFrame, schema: Schema, target: str = "readmitted",
                                k: int = 1, n_targets: int = 1000,
                                seed: int = 0) -> dict[str, float | str]:
    """Accuracy of inferring categorical ``target`` of members and non-members (module
    docstring), the majority-class rate of the targets, and the two gains."""
    col = schema.column(target)
    if not col.is_categorical:
        raise ValueError(f"{target!r} is not categorical: the attack infers a category")
    rng = np.random.default_rng((seed, 0xA77))
    perm = rng.permutation(len(holdout))
    half = len(perm) // 2
    if half < 1 or len(members) < 1 or len(synth) < 1:
        raise ValueError("the attack needs members, two held-out records and synthetic records")
    non_members, reference = holdout.iloc[perm[:half]], holdout.iloc[perm[half:]]
    n = min(n_targets, len(members), len(non_members))
    mem = members.iloc[np.sort(rng.choice(len(members), n, replace=False))]
    non = non_members.iloc[np.sort(rng.choice(len(non_members), n, replace=False))]

    def accuracy(tgt: pd.DataFrame, source: pd.DataFrame) -> float:
        truth = category_codes(tgt[target], col)
        pred = knn_vote(tgt, source, schema, target, k, seed)
        ok = truth >= 0
        return float((pred[ok] == truth[ok]).mean()) if ok.any() else float("nan")

    truth = category_codes(mem[target], col)
    present = truth[truth >= 0]
    out: dict[str, float | str] = {
        "target": target, "k": float(k), "n_targets": float(n),
        "accuracy_members_synth": accuracy(mem, synth),
        "accuracy_nonmembers_synth": accuracy(non, synth),
        "accuracy_members_holdout": accuracy(mem, reference),
        "majority_rate": float(np.bincount(present).max() / len(present)) if len(present)
        else float("nan"),
    }
    out["gain_over_nonmembers"] = (float(out["accuracy_members_synth"])
                                   - float(out["accuracy_nonmembers_synth"]))
    out["gain_over_baseline"] = (float(out["accuracy_members_synth"])
                                 - float(out["accuracy_members_holdout"]))
    return out


__all__ = ["knn_vote", "record_attribute_disclosure"]
