"""medGAN (Choi et al. 2017, "Generating Multi-label Discrete Patient Records using Generative
Adversarial Networks"; public code mp2893/medgan), our PyTorch implementation.

Autoencoder: one 128-unit tanh layer, sigmoid output, binary cross-entropy, pre-trained.
Generator: 128-d noise, two residual layers with batch norm (ReLU, then tanh) and shortcuts.
Discriminator: 256-128-1 ReLU MLP with minibatch averaging (input = sample ++ batch mean),
standard GAN loss; the decoder is fine-tuned in the generator step. mp2893/medgan defaults:
batch 100 (we use 100), Adam, L2 0.001, 100 pre-training and 1000 GAN epochs.
DP variant: see ``simulations.baselines.gan`` (DP-SGD on the autoencoder and on D's real term,
both accounted; no minibatch averaging).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsynth.simulations.baselines.gan import GANConfig, GANResult, train_gan


def medgan_config(**overrides: Any) -> GANConfig:
    """The published medGAN settings, with ``overrides``."""
    base = GANConfig(autoencoder="linear", loss="gan", d_hidden=(256, 128),
                     minibatch_averaging=True, ae_epochs=100, gan_epochs=1000, batch_size=100,
                     weight_decay=1e-3, g_every=1)
    return base.replace(**overrides)


def train_medgan(X: np.ndarray, cfg: GANConfig | None = None, **kwargs: Any) -> GANResult:
    """Train medGAN on 0/1 ``X``; ``epsilon=..., delta=...`` for the DP variant (see train_gan)."""
    return train_gan(X, cfg or medgan_config(), **kwargs)
