"""Centralized non-private training: matrix in, model directory out (what ``ehr-train`` runs).

The network models the codes seen in the training data (a code no training patient has is
never emitted); the binary parameterisation's prior is their training prevalence.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from common.config import Config
from common.model.output import OutputStep, fit_per_code_thresholds
from common.model.store import Generator, save_model
from common.model.train import train_model

log = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 20000


def calibrate_output_step(
    generator: Generator, prevalence: np.ndarray, n: int = CALIBRATION_SAMPLES,
    seed: int = 10_007, source: str = "training data",
) -> OutputStep:
    """Per-code thresholds so the generator's per-code prevalence matches ``prevalence``.

    ``prevalence`` is a statistic of the data: the training data for the non-private model; a
    private model must pass a privately estimated prevalence (and account for it).
    """
    cont = generator.sample_continuous(n, seed=seed)
    th = fit_per_code_thresholds(cont, prevalence)
    return OutputStep("per_code", thresholds=th,
                      info={"method": "per-code quantile of model output matched to prevalence",
                            "prevalence_source": source, "calibration_samples": n,
                            "calibration_seed": seed})


def seen_codes(X: np.ndarray) -> np.ndarray:
    """Columns at least one training patient has (at least one column)."""
    cols = np.flatnonzero(np.asarray(X).sum(axis=0) > 0)
    return cols if len(cols) else np.arange(min(1, X.shape[1]))


def train_centralized(X: np.ndarray, vocab: Any, config: Config, out_dir: str | Path,
                      progress: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on all rows of ``X`` (n, n_codes) 0/1, fit the output step, write ``out_dir``.

    Returns the training report (also stored under ``extra.training`` in config.json).
    """
    t0 = time.perf_counter()
    X = np.asarray(X)
    modelled = seen_codes(X)
    result = train_model(X[:, modelled], config.model, config.train, progress=progress)
    gen = Generator(result.ema.module, config.model, vocab,
                    OutputStep("threshold", config.model.threshold,
                               info={"source": "ModelConfig.threshold"}),
                    result.report["device"], modelled=modelled)
    if config.model.output_kind() == "per_code":
        n_cal = min(CALIBRATION_SAMPLES, max(5000, 2 * len(X)))
        gen.output_step = calibrate_output_step(gen, X.mean(axis=0), n=n_cal)
    report = dict(result.report)
    report["total_seconds"] = round(time.perf_counter() - t0, 2)
    report["output_step"] = gen.output_step.kind
    report["codes_modelled"] = len(modelled)
    meta = {"training": report, "train_config": config.to_dict()["train"], **(extra or {})}
    save_model(out_dir, result.ema, config.model, vocab, extra=meta, output_step=gen.output_step,
               modelled=modelled)
    log.info("model written to %s (%.0f s)", out_dir, report["total_seconds"])
    return report
