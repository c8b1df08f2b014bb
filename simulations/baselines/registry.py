"""One way to fit any baseline: ``fit_baseline(name, X, epsilon, delta, seed, preset)``.

Presets scale the epochs: ``full`` (the benchmark), ``quick`` (``ehr-benchmark --quick``),
``smoke`` (tests, a few steps). ``epsilon=None`` is the non-private variant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedsynth.privacy.accountant import Mechanism
from fedsynth.simulations.baselines.aim import AIMConfig, fit_aim
from fedsynth.simulations.baselines.corgan import corgan_config
from fedsynth.simulations.baselines.dp_marginals import fit_marginals
from fedsynth.simulations.baselines.gan import GANConfig, train_gan
from fedsynth.simulations.baselines.medgan import medgan_config
from fedsynth.simulations.baselines.mst import fit_mst

BASELINES = ("medgan", "corgan", "dp_marginals", "mst", "aim")
PRESETS = ("full", "quick", "smoke")

# Epochs per preset. One medGAN step costs ~10M multiply-adds per example (D's 2V-wide input
# with minibatch averaging dominates at V = 2,090), so epochs are what the budget buys:
# ``full`` ~ the published shape at a CPU budget (about 5 min per non-private GAN and 2-3 min
# per DP GAN on the diabetes130 split on 2 cores; medGAN's paper trained 1,000 epochs on a GPU),
# ``quick`` minutes on 2 cores, ``smoke`` seconds.
_SMOKE: dict[str, Any] = dict(ae_epochs=1, gan_epochs=1, dp_ae_epochs=0.5, dp_gan_epochs=0.5,
                              batch_size=16, dp_batch_size=16)
_GAN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "medgan": {
        "full": dict(ae_epochs=10, gan_epochs=20, dp_ae_epochs=3, dp_gan_epochs=10),
        "quick": dict(ae_epochs=3, gan_epochs=5, dp_ae_epochs=2, dp_gan_epochs=5,
                      dp_batch_size=256),
        "smoke": _SMOKE,
    },
    "corgan": {
        "full": dict(ae_epochs=10, gan_epochs=20, dp_ae_epochs=3, dp_gan_epochs=10),
        "quick": dict(ae_epochs=3, gan_epochs=10, batch_size=128, dp_ae_epochs=2,
                      dp_gan_epochs=5, dp_batch_size=256),  # WGAN: G steps = D steps / 5
        "smoke": _SMOKE,
    },
}

# AIM per preset: K codes modelled jointly (2^K cells) and the wall-clock cap after which the
# cell reads "did not finish". Measured on the diabetes130 split (45,743 patients, 2 shared
# cores): K=12 took 157 s at epsilon 3 (57 rounds); quick runs on 1,500 patients.
_AIM_PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(joint_codes=12, max_seconds=1200.0),
    "quick": dict(joint_codes=8, fit_iters=100, max_seconds=90.0),
    "smoke": dict(joint_codes=4, fit_iters=30, rounds_per_code=4, max_seconds=30.0),
}


class Sampler(Protocol):
    def sample(self, n: int, seed: int = 0) -> np.ndarray: ...


@dataclass
class Fitted:
    """A trained generator and what it cost."""

    name: str
    sampler: Sampler
    privacy: dict[str, Any] | None  # epsilon, delta, accountant, history (None: non-private)
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a federated run's directory


def gan_config(name: str, preset: str = "full", **overrides: Any) -> GANConfig:
    if name not in _GAN_PRESETS:
        raise ValueError(f"{name!r} is not a GAN baseline ({', '.join(_GAN_PRESETS)})")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} ({', '.join(PRESETS)})")
    base = medgan_config() if name == "medgan" else corgan_config()
    return base.replace(**{**_GAN_PRESETS[name][preset], **overrides})


def fit_baseline(
    name: str,
    X: np.ndarray,
    epsilon: float | None = None,
    delta: float | None = None,
    seed: int = 0,
    preset: str = "full",
    device: str = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    noise_multiplier: float | None = None,
    prior_history: tuple[Mechanism, ...] = (),
    **overrides: Any,
) -> Fitted:
    """Fit baseline ``name`` (one of ``BASELINES``) on 0/1 ``X``; DP when ``epsilon`` is given
    (sigma calibrated for it, or ``noise_multiplier`` checked against it: ``BudgetExceeded``
    before any training when the plan plus ``prior_history`` exceeds ``epsilon``).
    ``overrides``: GANConfig fields."""
    if name == "dp_marginals":
        res = fit_marginals(X, epsilon, delta, noise_multiplier=noise_multiplier,
                            prior_history=prior_history, seed=seed)
        return Fitted(name, res.sampler, res.privacy, res.train_seconds)
    if name == "mst":
        mst = fit_mst(X, epsilon, delta, prior_history=prior_history,
                      noise_multiplier=noise_multiplier)
        return Fitted(name, mst.sampler, mst.privacy, mst.train_seconds, dict(mst.info))
    if name == "aim":  # non-private: every 2-way marginal of the K codes, exact, one fit
        aim = fit_aim(X, epsilon, delta, AIMConfig(**_AIM_PRESETS[preset]),
                      prior_history=prior_history, noise_multiplier=noise_multiplier)
        return Fitted(name, aim.sampler, aim.privacy, aim.train_seconds, dict(aim.info))
    if name not in _GAN_PRESETS:
        raise ValueError(f"unknown baseline {name!r} ({', '.join(BASELINES)})")
    cfg = gan_config(name, preset, **overrides)
    start = time.perf_counter()
    res = train_gan(X, cfg, epsilon=epsilon, delta=delta, noise_multiplier=noise_multiplier,
                    prior_history=prior_history, seed=seed, device=device, progress=progress)
    return Fitted(name, res.sampler, res.privacy, time.perf_counter() - start)
