"""Trained weights -> calibrated ``Generator`` -> model directory: the one release path.

Every trainer ends the same way: the centralized one (``common.model.central``), the
centralized DP one (``client.private_train``) and the federated coordinator (the global EMA).
Each wraps its trained weights in a Generator with the fixed scalar threshold of
``ModelConfig.threshold``, calibrates it to a target prevalence when it has one
(``common.model.calibrate.calibrate``: output thresholds or the binary model's log-odds
offsets, plus the tail of unmodelled codes) and writes the model directory. Done once here so
that the three releases cannot drift apart (sample size, tail, output-step info).

The calibration is post-processing of its target (training data, or private counts already
accounted): it costs no privacy.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsynth.common.config import ModelConfig
from fedsynth.common.model import calibrate as calibration
from fedsynth.common.model.guidance import resolve_scale
from fedsynth.common.model.output import OutputStep
from fedsynth.common.model.store import Generator, save_model
from fedsynth.common.model.train import build_model
from fedsynth.common.vocabulary import Vocabulary

log = logging.getLogger(__name__)

FIXED_THRESHOLD = "ModelConfig.threshold (fixed in advance)"  # info of a private release


def release_generator(
    weights: nn.Module | Mapping[str, torch.Tensor | np.ndarray],
    cfg: ModelConfig,
    vocab: Vocabulary,
    modelled: np.ndarray | Sequence[int] | None,
    *,
    threshold_source: str,
    prevalence: np.ndarray | None = None,
    prevalence_source: str = "",
    device: torch.device | str = "cpu",
    training: str = "central",
) -> tuple[Generator, dict[str, Any]]:
    """The calibrated Generator of trained ``weights`` and what the calibration did.

    ``weights``: the trained module (e.g. ``EMA.module``) or its state dict (tensors or numpy
    arrays, loaded into a fresh ``build_model`` of the modelled codes). ``modelled``: the
    vocabulary columns the network models (None: all). The output step starts as the scalar
    ``cfg.threshold`` with ``info={"source": threshold_source}``. With a ``prevalence`` (one
    entry per vocabulary code) the generator is calibrated to it
    (``calibrate.calibrate`` on ``calibrate.CALIBRATION_SAMPLES`` samples, read at call time);
    without one it stays as it is and the returned info is ``{}``. ``training`` ("central",
    "private" or "federated") decides an auto ``cfg.dependency_scale`` before the calibration
    (``guidance.resolve_scale``); the Generator's config, and so config.json, holds the value
    its sampler uses. A whole-records model is released with ``cfg.records_sample_steps``
    sampler steps; its calibration runs at ``cfg.sample_steps`` (each calibration pass is a
    20,000-record sample: at 16 steps instead of 8 they would add about 8% to the records
    model's training time) and says so in its info (``sampler_steps``)."""
    cfg = resolve_scale(cfg, training)
    g = int(sum(cfg.one_hot_groups))
    if g and modelled is not None and list(np.asarray(modelled)[:g]) != list(range(g)):
        raise ValueError("whole records: every token of the one-hot groups must be modelled")
    if isinstance(weights, nn.Module):
        model = weights
    else:
        model = build_model(len(vocab) if modelled is None else len(modelled), cfg)
        model.load_state_dict({k: _cpu_tensor(v) for k, v in weights.items()})
    gen = Generator(model, cfg, vocab,
                    OutputStep("threshold", cfg.threshold, info={"source": threshold_source}),
                    device, modelled=modelled)
    info: dict[str, Any] = {}
    if prevalence is not None:
        info = calibration.calibrate(gen, np.asarray(prevalence), prevalence_source,
                                     n=calibration.CALIBRATION_SAMPLES)
    if cfg.records_posterior():
        gen.cfg = dataclasses.replace(cfg, sample_steps=cfg.records_sample_steps)
        gen.reset()
    return gen, info


def save_release(directory: str | Path, gen: Generator,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``gen`` (weights, config with its modelled codes and tail, vocabulary, output
    step) and ``extra`` (config.json's ``extra``) into ``directory``: ``store.save_model``."""
    return save_model(directory, gen.model, gen.cfg, gen.vocab, extra=extra,
                      output_step=gen.output_step, modelled=gen.modelled, tail=gen.tail,
                      outcome=gen.outcome)


def _cpu_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.from_numpy(np.array(value))
