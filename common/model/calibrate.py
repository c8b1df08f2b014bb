"""Post-training calibration of a generator's per-code prevalence to a target prevalence.

The target is a statistic of the data: the training prevalence for the non-private model, the
private (Gaussian-mechanism, accounted) prevalence under DP. Given the trained model and that
target, the calibration is post-processing and costs no privacy.

- ``calibrate_marginals`` (binary parameterisation): a per-code offset added to the output
  log-odds, fitted by a few fixed-point steps offset_j += logit(p_j) - logit(phat_j), where
  phat_j is code j's prevalence in a sample. It moves each code's marginal and leaves what the
  network learned about the dependencies between codes alone.
- ``calibrate_output_step`` (EHRDiff's parameterisation, continuous output): per-code
  thresholds at the (1 - p_j) quantile of the model's own output.
- the tail: codes the network does not model but whose target prevalence is positive (a
  private model's shrunk estimate, ``privacy.counts.estimate``) are drawn independently at
  that prevalence by ``Generator.sample`` (``Generator.tail``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fedsynth.common.model.binary import BinaryPosterior
from fedsynth.common.model.output import OutputStep, fit_per_code_thresholds

log = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 20000
CALIBRATION_SEED = 10_007
# the codes per patient after the last step (a logged check, not a fit) is read on this many of
# the same seed's records: the mean of ~50 0/1 columns, +-0.05 at 4,000 records, at a fifth of
# a full sample's time (diabetes130 records: 8 s of the model's ~300 s training at 20,000)
CHECK_SAMPLES = 4000
MAX_STEP = 2.0  # |log-odds change| per iteration


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def calibrate_marginals(generator: Any, prevalence: np.ndarray, n: int = CALIBRATION_SAMPLES,
                        iterations: int = 3, seed: int = CALIBRATION_SEED) -> dict[str, Any]:
    """Fit ``logit_offset`` of a binary model so that each modelled code's sampled prevalence
    matches ``prevalence`` (one entry per vocabulary code; a one-hot group's tokens by the
    log-ratio log p_j - log phat_j, the softmax's fixed point). Returns a summary for the model's
    config (mean codes per patient before and after, iterations, sample size, seed, the
    sampler's steps)."""
    module = generator.model
    if not isinstance(module, BinaryPosterior):
        raise TypeError("calibrate_marginals needs the binary parameterisation")
    cols = generator.modelled if generator.modelled is not None else np.arange(generator.n_codes)
    floor = 0.5 / n
    grouped = sum(generator.cfg.one_hot_groups)  # network columns [0, grouped) are groups
    target = np.clip(np.asarray(prevalence, dtype=np.float64)[cols], floor, 1.0 - floor)
    before = None
    for _ in range(iterations):
        got = generator.sample(n, seed=seed)[:, cols].mean(axis=0)
        before = float(got.sum()) if before is None else before
        step = _logit(target) - _logit(np.clip(got, floor, 1.0 - floor))
        # a one-hot group's tokens are a softmax: its logits move by the log-ratio
        g = np.asarray(cols) < grouped
        step[g] = np.log(target[g]) - np.log(np.clip(got[g], floor, 1.0))
        with torch.no_grad():
            module.logit_offset += torch.as_tensor(np.clip(step, -MAX_STEP, MAX_STEP),
                                                   dtype=module.logit_offset.dtype,
                                                   device=module.logit_offset.device)
        generator.reset()
    check = min(n, CHECK_SAMPLES)
    after = float(generator.sample(check, seed=seed)[:, cols].mean(axis=0).sum())
    log.info("marginal calibration: %.2f -> %.2f codes per patient (target %.2f)",
             before, after, float(target.sum()))
    return {"method": "per-code log-odds offset matched to prevalence",
            "codes_per_patient_before": round(before or 0.0, 3),
            "codes_per_patient_after": round(after, 3),
            "codes_per_patient_target": round(float(target.sum()), 3),
            "iterations": iterations, "samples": n, "check_samples": check,
            "seed": seed,
            "sampler_steps": int(generator.cfg.sample_steps)}


def calibrate_output_step(
    generator: Any, prevalence: np.ndarray, n: int = CALIBRATION_SAMPLES,
    seed: int = CALIBRATION_SEED, source: str = "training data",
) -> OutputStep:
    """Per-code thresholds so the generator's per-code prevalence matches ``prevalence``."""
    cont = generator.sample_continuous(n, seed=seed)
    target = np.asarray(prevalence, dtype=np.float64)
    if generator.modelled is not None:  # the others are the tail's: never from the network
        target = np.where(np.isin(np.arange(len(target)), generator.modelled), target, 0.0)
    th = fit_per_code_thresholds(cont, target)
    return OutputStep("per_code", thresholds=th,
                      info={"method": "per-code quantile of model output matched to prevalence",
                            "prevalence_source": source, "calibration_samples": n,
                            "calibration_seed": seed})


def set_tail(generator: Any, prevalence: np.ndarray) -> None:
    """``generator.tail`` = ``prevalence`` on the codes the network does not model (None when
    they are all zero)."""
    tail = np.clip(np.asarray(prevalence, dtype=np.float64), 0.0, 1.0).copy()
    if generator.modelled is None:
        tail[:] = 0.0
    else:
        tail[generator.modelled] = 0.0
    generator.tail = tail if np.any(tail > 0) else None
    if generator.tail is not None:
        log.info("tail: %d codes drawn independently, %.3f codes per patient",
                 int((tail > 0).sum()), float(tail.sum()))


def calibrate(generator: Any, prevalence: np.ndarray, source: str,
              n: int = CALIBRATION_SAMPLES) -> dict[str, Any]:
    """What every trainer runs after training (``ModelConfig.calibrate``): per-code output
    thresholds for an ``output_step="per_code"`` model, else the binary model's marginal
    calibration; the codes not modelled with a positive ``prevalence`` become the generator's
    tail. Changes ``generator`` in place; returns what was done (for config.json)."""
    set_tail(generator, prevalence)
    if generator.cfg.output_kind() == "per_code":
        generator.output_step = calibrate_output_step(generator, prevalence, n, source=source)
        return dict(generator.output_step.info)
    if not generator.cfg.calibrate or not isinstance(generator.model, BinaryPosterior):
        return {}
    info = {**calibrate_marginals(generator, prevalence, n), "prevalence_source": source}
    generator.output_step.info["calibration"] = info
    return info
