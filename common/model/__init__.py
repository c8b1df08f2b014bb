"""The EHRDiff generator: EDM preconditioning + loss, MLP denoiser, Heun sampler, EMA, storage.

Public API used by site (DP) training and the CLIs::

    build_model(n_codes, cfg) -> EDMPrecond          # forward(x, sigma) -> D(x; sigma)
    per_example_loss(model, x, cfg, multiplicity=1)  # Tensor[B], K-averaged EDM loss
    EMA(model, decay); train_epoch(...); train_model(X, model_cfg, train_cfg)
    save_model(dir, model_or_state, cfg, vocab, extra, output_step=None); load_model(dir)
    Generator.sample(n, seed=0, batch=1000) -> uint8; Generator.sample_continuous(...)
    OutputStep, fit_per_code_thresholds, fit_scalar_threshold, set_output_step
    release_generator(weights, cfg, vocab, modelled, threshold_source=..., prevalence=...)
        -> (calibrated Generator, calibration info); save_release(dir, gen, extra)
"""

from fedsynth.common.model.edm import EDMPrecond, loss_weight, per_example_loss, preconditioning
from fedsynth.common.model.ema import EMA
from fedsynth.common.model.output import OutputStep, fit_per_code_thresholds, fit_scalar_threshold
from fedsynth.common.model.release import release_generator, save_release
from fedsynth.common.model.sampler import edm_sigmas, heun_sample
from fedsynth.common.model.store import Generator, load_model, save_model, set_output_step
from fedsynth.common.model.train import build_model, train_epoch, train_model

__all__ = [
    "EMA",
    "EDMPrecond",
    "Generator",
    "OutputStep",
    "build_model",
    "edm_sigmas",
    "fit_per_code_thresholds",
    "fit_scalar_threshold",
    "heun_sample",
    "load_model",
    "loss_weight",
    "per_example_loss",
    "preconditioning",
    "release_generator",
    "save_model",
    "save_release",
    "set_output_step",
    "train_epoch",
    "train_model",
]
