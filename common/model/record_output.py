"""Decoding a whole-records model's tokens per column (post-processing of its sample).

Each schema column is a group of 0/1 tokens (``common.data.record_tokens``). The sampler's
outputs x_j are (almost exactly) 0 or 1, and the output step calibrates every token's own rate
P(x_j > t_j) to its target (the training prevalence, or under DP the one from the accounted
counts). Most records have exactly one token of a group on; that token is their value. The
rest (none on, or several) are assigned so that the group's distribution stays at the tokens'
calibrated rates, normalised within the group: each such record draws a token (among those on,
when several are) with weight max(0, n p_j - c_j), where c_j counts the records already
assigned to j (a seeded draw; it reads nothing but the model's own sample).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

WEIGHT_FLOOR = 1e-9


def token_scores(gen: Any, continuous: np.ndarray, n_tokens: int) -> np.ndarray:
    """(n, n_tokens) x_j - t_j of ``gen``'s sampler outputs (> 0: the token is on)."""
    thresholds = gen.output_step.thresholds_for(continuous.shape[1])[:n_tokens]
    return continuous[:, :n_tokens] - thresholds[None, :]


def pick_tokens(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The token index (within the group) of each record (module docstring)."""
    on = scores > 0
    n, k = on.shape
    rate = on.mean(axis=0)
    target = rate / rate.sum() if rate.sum() > 0 else np.full(k, 1.0 / k)
    count = on.sum(axis=1)
    pick = np.where(count == 1, np.argmax(on, axis=1), -1)
    deficit = np.maximum(target * n - np.bincount(pick[pick >= 0], minlength=k), 0.0)
    for i in np.flatnonzero(pick < 0):
        allowed = on[i] if count[i] > 1 else np.ones(k, dtype=bool)
        w = np.where(allowed, deficit + WEIGHT_FLOOR, 0.0)
        j = int(rng.choice(k, p=w / w.sum()))
        pick[i] = j
        deficit[j] = max(deficit[j] - 1.0, 0.0)
    return pick


def sample_records(gen: Any, layout: Any, schema: Any, n: int, seed: int = 0, batch: int = 1000,
                   progress: bool = False) -> tuple[pd.DataFrame, np.ndarray, Any]:
    """``n`` whole records from a records model ``gen`` (``common.model.store.Generator``) with
    its ``layout`` and ``schema`` (``record_tokens.read_layout``): (the schema's columns typed
    like ``load_records``' table, the (n, n_codes) 0/1 codes, the codes' vocabulary)."""
    cont = gen.sample_continuous(n, seed=seed, batch=batch, progress=progress)
    return records_of(gen, cont, gen.finish(cont, seed=seed), layout, schema, seed)


def records_of(gen: Any, cont: np.ndarray, X: np.ndarray, layout: Any, schema: Any,
               seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, Any]:
    """``sample_records``' result from one sample of ``gen``: its sampler outputs ``cont`` and
    their 0/1 patients ``X`` (``Generator.finish``); the codes and each column's token
    (``pick_tokens``) both come from it."""
    from fedsynth.common.data.record_tokens import tokens_to_table
    from fedsynth.common.vocabulary import Vocabulary

    T = layout.n_tokens
    table = tokens_to_table(token_scores(gen, cont, T), layout, schema, seed=seed,
                            pick=pick_tokens)
    codes = Vocabulary(tuple(gen.vocab.codes[T:]), name=gen.vocab.name)
    X = np.ascontiguousarray(X[:, T:])
    if getattr(gen, "outcome", None) is not None:
        redraw_outcome(table, X, layout, gen.outcome, seed)
    return table, X, codes


def group_index(table: pd.DataFrame, X: np.ndarray, layout: Any) -> np.ndarray:
    """(n, groups) each record's token per group of ``layout`` (-1: missing), the number of
    codes' from its codes ``X``."""
    from fedsynth.common.data.record_tokens import group_indices, records_to_tokens

    return group_indices(records_to_tokens(table, layout, X), layout.group_sizes())


def redraw_outcome(table: pd.DataFrame, X: np.ndarray, layout: Any, model: Any,
                   seed: int) -> None:
    """``table``'s outcome column redrawn in place (``common.model.outcome.redraw``; seeded by
    the sample's ``seed``: post-processing)."""
    from fedsynth.common.model.outcome import redraw

    group = layout.groups[model.outcome]
    y = redraw(group_index(table, X, layout), model,
               np.random.default_rng([int(seed) % 2**63, 0x0C7]))
    labels = np.array(group.labels, dtype=object)[y]
    table[group.name] = pd.Categorical(labels, categories=table[group.name].cat.categories)


def attach_outcome(gen: Any, layout: Any, schema: Any,
                   measure: Callable[[list[int]], tuple[list[np.ndarray], float]],
                   source: str) -> dict[str, Any]:
    """Fit and set ``gen.outcome`` (``common.model.outcome.release_outcome``) on a
    ``calibrate.CALIBRATION_SAMPLES``-record sample of ``gen`` as released (its sampler steps;
    its outcome as the network draws it). ``measure(columns)``: (the pair tables, their noise
    std), exact or the accounted release. Returns the fit's info."""
    from fedsynth.common.model.calibrate import CALIBRATION_SAMPLES, CALIBRATION_SEED
    from fedsynth.common.model.outcome import release_outcome

    gen.outcome = None
    table, X, _ = sample_records(gen, layout, schema, CALIBRATION_SAMPLES, seed=CALIBRATION_SEED)
    gen.outcome = release_outcome(group_index(table, X, layout), layout.group_sizes(),
                                  gen.cfg.outcome_group, gen.cfg.outcome_columns, measure,
                                  source)
    return {**gen.outcome.info, "columns": [layout.groups[c].name for c in gen.outcome.columns]}
