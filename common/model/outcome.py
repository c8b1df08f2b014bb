"""The outcome column of a records model, kept at its measured rate within other columns.

A diffusion model trained under DP-SGD learns the outcome's strongest links but shrinks the
rest: on diabetes130 at epsilon 3, patients discharged to rehabilitation are 26% readmitted
within 30 days in the real records and 9% in the synthetic ones. This module fixes that after
training, as post-processing of measured tables:

1. ``choose_columns``: the P columns (default 10, ``ModelConfig.outcome_columns``) with the
   highest mutual information with the outcome *in the released model's own sample* (nothing
   of the data beyond what the model already released);
2. the caller measures the P tables outcome x column on the training data, under DP as their
   own accounted mechanism (``privacy.outcome_counts``; exact tables are the std 0 case: the
   non-private trainer does not run the step, its model keeps the outcome's links itself);
3. ``fit_outcome``: the outcome of a synthetic record with columns x is redrawn from
   q(y | x) proportional to p0(y | x) exp(sum_c theta_c[x_c, y]), where p0 is the model's
   own draw softened towards its outcome rate pi (p0 = (1 - a) onehot(y_model) + a pi,
   a = ``SOFTEN``) and the theta are fitted by iterative proportional fitting (Deming &
   Stephan 1940) so that, over a sample of the model, the expected (x_c, y) counts match the
   measured conditional rates; a noisy table's rates are shrunk towards the model's own
   (the posterior mean of a rate measured with noise, a prior sd of ``PRIOR_SD``). This is
   the maximum-entropy (multinomial logistic) model closest to the model's draw that has the
   measured pair tables (Csiszar 1975);
4. ``redraw``: every sample of the released model (``record_output.records_of``) draws its
   outcome from q with a generator seeded by the sample's seed.

Only the outcome column changes: the other columns, their marginals and their associations are
the model's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FILE = "records_outcome.json"
SOFTEN = 0.5  # a: how far the model's own outcome draw is softened towards its outcome rate
SWEEPS = 20
MAX_STEP = 1.0  # |log change| of a theta per sweep
EPS = 1e-6
PRIOR_SD = 0.05  # how far a value's outcome rate may sit from the model's, a priori


@dataclass
class OutcomeModel:
    """What ``redraw`` needs (all public: the schema's layout and the released tables'
    post-processing). ``theta[i]``: (tokens of ``columns[i]``, outcome tokens) log factors."""

    outcome: int  # the outcome's group (ModelConfig.outcome_group)
    columns: list[int]
    prior: list[float]  # pi, the model's outcome rates in its fit sample
    theta: list[list[list[float]]]
    soften: float = SOFTEN
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> OutcomeModel:
        return cls(int(doc["outcome"]), [int(c) for c in doc["columns"]],
                   [float(p) for p in doc["prior"]], doc["theta"], float(doc["soften"]),
                   dict(doc.get("info", {})))


def mutual_information(x: np.ndarray, y: np.ndarray, kx: int, ky: int) -> float:
    """I(X; Y) in nats of the rows where both are present (-1: missing)."""
    ok = (x >= 0) & (y >= 0)
    if not ok.any():
        return 0.0
    joint = np.bincount(x[ok] * ky + y[ok], minlength=kx * ky).reshape(kx, ky) / ok.sum()
    px, py = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())


def choose_columns(index: np.ndarray, outcome: int, sizes: tuple[int, ...], k: int) -> list[int]:
    """The ``k`` groups other than ``outcome`` with the highest mutual information with it in
    ``index`` (a sample of the model: (n, groups) tokens, -1 missing), highest first."""
    y = index[:, outcome]
    scores = [(mutual_information(index[:, c], y, sizes[c], sizes[outcome]), -c)
              for c in range(len(sizes)) if c != outcome]
    return [-c for _, c in sorted(scores, reverse=True)[:k]]


def pair_tables(index: np.ndarray, outcome: int, columns: list[int],
                sizes: tuple[int, ...]) -> list[np.ndarray]:
    """The exact tables: for each column c of ``columns``, (sizes[c], sizes[outcome]) counts of
    the patients' (value of c, outcome value) pairs; ``index`` is (n, groups) each patient's
    token per group, -1 where missing (``record_tokens.group_indices``)."""
    y = index[:, outcome]
    k_out = sizes[outcome]
    out = []
    for c in columns:
        if c == outcome:
            raise ValueError("a pair table needs a column other than the outcome")
        x = index[:, c]
        ok = (x >= 0) & (y >= 0)
        cells = np.bincount(x[ok] * k_out + y[ok], minlength=sizes[c] * k_out)
        out.append(cells.reshape(sizes[c], k_out).astype(np.float64))
    return out


def _base_logits(y: np.ndarray, prior: np.ndarray, soften: float) -> np.ndarray:
    """log p0: the model's draw ``y`` (-1: none, then pi alone) softened towards ``prior``."""
    p0 = np.tile(soften * prior, (len(y), 1))
    drawn = y >= 0
    p0[np.flatnonzero(drawn), y[drawn]] += 1.0 - soften
    p0[~drawn] = prior
    return np.log(np.maximum(p0, EPS))


def _softmax(logits: np.ndarray) -> np.ndarray:
    q = np.exp(logits - logits.max(axis=1, keepdims=True))
    return q / q.sum(axis=1, keepdims=True)


def _logits(index: np.ndarray, base: np.ndarray, columns: list[int],
            theta: list[np.ndarray]) -> np.ndarray:
    """log q up to a constant: ``base`` (log p0) plus each column's theta at the row's value."""
    out = base.copy()
    for c, th in zip(columns, theta, strict=True):
        x = index[:, c]
        ok = x >= 0
        out[ok] += th[x[ok]]
    return out


def fit_outcome(index: np.ndarray, outcome: int, sizes: tuple[int, ...], columns: list[int],
                tables: list[np.ndarray], std: float, sweeps: int = SWEEPS) -> OutcomeModel:
    """The OutcomeModel whose q matches the measured ``tables`` (``pair_tables``' layout;
    noise std ``std``, 0 when exact) on the model sample ``index``."""
    y = index[:, outcome]
    k_out = sizes[outcome]
    prior = np.bincount(y[y >= 0], minlength=k_out).astype(np.float64)
    prior = prior / prior.sum() if prior.sum() > 0 else np.full(k_out, 1.0 / k_out)
    base = _base_logits(y, prior, SOFTEN)
    theta = [np.zeros((sizes[c], k_out)) for c in columns]
    targets = []
    for c, t in zip(columns, tables, strict=True):
        x = index[:, c]
        ok = x >= 0
        n_v = np.bincount(x[ok], minlength=sizes[c]).astype(np.float64)
        own = np.bincount(x[ok & (y >= 0)] * k_out + y[ok & (y >= 0)],
                          minlength=sizes[c] * k_out).reshape(sizes[c], k_out) + EPS
        own = own / own.sum(axis=1, keepdims=True)  # the model's P(y | x_c = v)
        measured = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
        total = measured.sum(axis=1, keepdims=True)
        # shrinkage towards the model's rate: weight m^2 / (m^2 + (std / PRIOR_SD)^2) for a
        # value measured m times, the posterior mean's for a rate with noise std/m and a prior
        # of sd PRIOR_SD around the model's (1 when exact; 0 when nobody has the value)
        w = total ** 2 / np.maximum(total ** 2 + (std / PRIOR_SD) ** 2, EPS)
        rate = w * measured / np.maximum(total, EPS) + (1.0 - w) * own
        targets.append((x, ok, n_v[:, None] * rate))
    for _ in range(sweeps):
        for i, (x, ok, target) in enumerate(targets):
            q = _softmax(_logits(index, base, columns, theta))
            expected = np.zeros_like(target)
            np.add.at(expected, x[ok], q[ok])
            step = np.log((target + EPS) / (expected + EPS))
            theta[i] = theta[i] + np.clip(step, -MAX_STEP, MAX_STEP)
    return OutcomeModel(outcome, list(columns), prior.tolist(),
                        [np.round(t, 6).tolist() for t in theta], SOFTEN)


def redraw(index: np.ndarray, model: OutcomeModel, rng: np.random.Generator) -> np.ndarray:
    """Each row's outcome token drawn from q(y | its other columns) (module docstring)."""
    base = _base_logits(index[:, model.outcome], np.asarray(model.prior), model.soften)
    q = _softmax(_logits(index, base, model.columns,
                         [np.asarray(t, dtype=np.float64) for t in model.theta]))
    u = rng.random(len(q))[:, None]
    return np.minimum((u > np.cumsum(q, axis=1)).sum(axis=1), q.shape[1] - 1)


def release_outcome(sample_index: np.ndarray, sizes: tuple[int, ...], outcome: int, k: int,
                    measure: Callable[[list[int]], tuple[list[np.ndarray], float]],
                    source: str) -> OutcomeModel:
    """The whole step: ``choose_columns`` on the model's sample, ``measure(columns)`` ->
    (tables, noise std) by the caller (exact, or the accounted release), ``fit_outcome``."""
    columns = choose_columns(sample_index, outcome, sizes, k)
    tables, std = measure(columns)
    model = fit_outcome(sample_index, outcome, sizes, columns, tables, std)
    model.info = {"tables_source": source, "noise_std": round(float(std), 4),
                  "fit_samples": int(len(sample_index)), "sweeps": SWEEPS,
                  "method": "outcome redrawn from the max-entropy fit of measured pair tables "
                            "to the model's draw (common.model.outcome)"}
    log.info("outcome kept within %d columns (%s, noise std %.1f)", len(columns), source, std)
    return model
