"""corGAN (Torfi & Fox 2020, "CorGAN: Correlation-Capturing Convolutional Generative
Adversarial Networks for Generating Synthetic Healthcare Records"), our PyTorch implementation.

A 1-D convolutional autoencoder (``nets.ConvAutoencoder``: its layers derived from the
vocabulary size instead of corGAN's hard-wired 1,071), medGAN's residual MLP generator, and a
WGAN critic (256-256-256-1 ReLU MLP, minibatch averaging, no sigmoid) with weight clipping at
0.01 and a generator step every 5 critic steps (Arjovsky et al. 2017). Adam(0.5, 0.99) as in
corGAN's code. DP variant: see ``simulations.baselines.gan`` (GroupNorm instead of BatchNorm in
the autoencoder, no minibatch averaging, DP-SGD on the autoencoder and the critic's real term).

Known limitation of the DP variant (measured on diabetes130, 45,743 training patients, sigma
0.91, q = 512/n): the DP autoencoder learns (it reconstructs 1.9 of a patient's 3.6 codes), but
the weight-clipped critic cannot learn under DP-SGD: its per-example gradient norm is 1.0, all
of it the output bias (which cancels in the WGAN objective), while the first layer, the one that
sees the codes, gets a gradient of norm 0.002; the noise DP-SGD adds to that layer's averaged
gradient has norm 1.3 per step (std 0.91/512 on each of its 535k weights). The generator
then follows noise, and fine-tuning the decoder through it drives every output probability
below the 0.5 rounding: DP corGAN generates no codes (with the decoder frozen, 0.3-0.8 codes per
patient). Per-layer clipping or a critic without weight clipping would be a different model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsynth.simulations.baselines.gan import GANConfig, GANResult, train_gan


def corgan_config(**overrides: Any) -> GANConfig:
    """The published corGAN settings, with ``overrides``."""
    base = GANConfig(autoencoder="conv", loss="wgan", d_hidden=(256, 256, 256),
                     minibatch_averaging=True, ae_epochs=100, gan_epochs=1000, batch_size=512,
                     betas=(0.5, 0.99), weight_decay=1e-4, g_every=5, clip_value=0.01)
    return base.replace(**overrides)


def train_corgan(X: np.ndarray, cfg: GANConfig | None = None, **kwargs: Any) -> GANResult:
    """Train corGAN on 0/1 ``X``; ``epsilon=..., delta=...`` for the DP variant (see train_gan)."""
    return train_gan(X, cfg or corgan_config(), **kwargs)
