"""Centralized non-private training: matrix in, model directory out (what ``ehr-train`` runs).

The network models the codes seen in the training data (a code no training patient has is
never emitted); the binary parameterisation's prior is their training prevalence, and after
training each code's sampled prevalence is calibrated to it (``common.model.calibrate``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.config import Config
from fedsynth.common.model.release import release_generator, save_release
from fedsynth.common.model.train import train_model

log = logging.getLogger(__name__)

def seen_codes(X: np.ndarray, grouped: int = 0) -> np.ndarray:
    """Columns at least one training patient has (at least one column), and every one of the
    first ``grouped`` (whole records: the columns' tokens, a public layout the one-hot groups
    of ``ModelConfig.one_hot_groups`` index; an unseen value keeps its tiny prior)."""
    seen = np.asarray(X).sum(axis=0) > 0
    seen[:grouped] = True
    cols = np.flatnonzero(seen)
    return cols if len(cols) else np.arange(min(1, X.shape[1]))


def train_centralized(X: np.ndarray, vocab: Any, config: Config, out_dir: str | Path,
                      progress: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on all rows of ``X`` (n, n_codes) 0/1, fit the output step, write ``out_dir``.

    Returns the training report (also stored under ``extra.training`` in config.json).
    """
    t0 = time.perf_counter()
    X = np.asarray(X)
    modelled = seen_codes(X, sum(config.model.one_hot_groups))
    result = train_model(X[:, modelled], config.model, config.train, progress=progress)
    gen, calibration = release_generator(
        result.ema.module, config.model, vocab, modelled,
        threshold_source="ModelConfig.threshold", prevalence=X.mean(axis=0),
        prevalence_source="training data", device=result.report["device"],
        training="central")
    report = dict(result.report)
    report["total_seconds"] = round(time.perf_counter() - t0, 2)
    report["output_step"] = gen.output_step.kind
    report["codes_modelled"] = len(modelled)
    report["calibration"] = calibration
    meta = {"training": report, "train_config": config.to_dict()["train"], **(extra or {})}
    save_release(out_dir, gen, extra=meta)  # no tail: every seen code is modelled
    log.info("model written to %s (%.0f s)", out_dir, report["total_seconds"])
    return report
