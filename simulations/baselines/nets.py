"""The networks of medGAN (Choi et al. 2017) and corGAN (Torfi & Fox 2020).

- ``LinearAutoencoder``: medGAN's autoencoder, one hidden layer of ``latent_dim`` units with
  tanh, a sigmoid output (we return logits and apply the sigmoid in the loss / at decoding).
- ``ConvAutoencoder``: corGAN's 1-D convolutional autoencoder. corGAN's layer sizes are
  hard-wired to 1,071 codes; here the stride-2/3, kernel-5 encoder layers are stacked until the
  length is small, a last convolution spans what is left (length 1, ``latent_dim`` channels),
  and the decoder mirrors it with ``output_padding`` chosen so it returns exactly V codes.
- ``ResidualGenerator``: both papers' generator: two layers of ``noise_dim`` units, batch norm,
  ReLU then tanh, each with a shortcut (h = act(BN(W h)) + h).
- ``Discriminator``: an MLP; with minibatch averaging (medGAN) its input is the sample
  concatenated with the batch mean. Minibatch averaging and batch norm couple examples, so the
  private variants switch them off (the per-example clipping of DP-SGD must bound one record's
  influence) and use GroupNorm in the conv autoencoder (as Opacus' ModuleValidator.fix does).
"""

from __future__ import annotations

import math

import torch
from torch import nn

OUTPUT_PRIOR = 0.005  # initial output probability of the conv decoder (a constant, not data)


class LinearAutoencoder(nn.Module):
    """medGAN: x -> tanh(W_e x + b_e) -> W_d h + b_d (logits; sigmoid: probabilities)."""

    def __init__(self, n_codes: int, latent_dim: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_codes, latent_dim), nn.Tanh())
        self.decoder = nn.Linear(latent_dim, n_codes)
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_logits(self.encode(x))


def conv_layout(n_codes: int, min_length: int = 8, kernel: int = 5) -> list[tuple[int, int]]:
    """corGAN-style encoder (kernel, stride) list for ``n_codes``: stride 2 twice, then 3, until
    the length is at most ``min_length``; a final layer with kernel = the remaining length and
    stride 1 takes it to length 1."""
    layout: list[tuple[int, int]] = []
    length = n_codes
    while length > min_length:
        stride = 2 if len(layout) < 2 else 3
        layout.append((kernel, stride))
        length = (length - kernel) // stride + 1
    layout.append((length, 1))
    return layout


def _lengths(n_codes: int, layout: list[tuple[int, int]]) -> list[int]:
    out = [n_codes]
    for k, s in layout:
        out.append((out[-1] - k) // s + 1)
    return out


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    groups = 4 if channels % 4 == 0 else 1
    return nn.GroupNorm(groups, channels)


class ConvAutoencoder(nn.Module):
    """corGAN's 1-D convolutional autoencoder, sized from the vocabulary.

    Encoder: Conv1d(1 -> c) LeakyReLU(0.2), then Conv1d + norm + LeakyReLU with doubling
    channels, then a spanning Conv1d to ``latent_dim`` channels of length 1 and tanh (corGAN's
    code). Decoder: the mirror image with ConvTranspose1d, norm and ReLU, then logits.
    ``norm``: "batch" (as published) or "group" (DP-SGD safe).
    """

    def __init__(
        self, n_codes: int, latent_dim: int = 128, base_channels: int = 4, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.n_codes = n_codes
        self.latent_dim = latent_dim
        layout = conv_layout(n_codes)
        lengths = _lengths(n_codes, layout)
        chans = [1] + [min(base_channels * 2**i, 64) for i in range(len(layout) - 1)] + [latent_dim]
        enc: list[nn.Module] = []
        for i, (k, s) in enumerate(layout):
            enc.append(nn.Conv1d(chans[i], chans[i + 1], k, stride=s))
            last = i == len(layout) - 1
            if not last and i > 0:
                enc.append(_norm(norm, chans[i + 1]))
            enc.append(nn.Tanh() if last else nn.LeakyReLU(0.2))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for i in reversed(range(len(layout))):
            k, s = layout[i]
            pad = (lengths[i] - k) % s  # output_padding that restores the encoder's input length
            dec.append(nn.ConvTranspose1d(chans[i + 1], chans[i], k, stride=s, output_padding=pad))
            if i > 0:
                if i < len(layout) - 1:
                    dec.append(_norm(norm, chans[i]))
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)
        # One output bias is shared by every code: from 0 (p = 0.5 everywhere) Adam at 1e-3
        # needs thousands of steps only to learn that codes are rare, which corGAN's 100
        # pre-training epochs paid for and a CPU budget does not. Start it at a public constant
        # (never a statistic of the data): logit(OUTPUT_PRIOR).
        last = dec[-1]
        assert isinstance(last, nn.ConvTranspose1d) and last.bias is not None
        nn.init.constant_(last.bias, math.log(OUTPUT_PRIOR / (1.0 - OUTPUT_PRIOR)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.unsqueeze(1)).squeeze(-1)

    def decode_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(h.unsqueeze(-1)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_logits(self.encode(x))


class ResidualGenerator(nn.Module):
    """z (noise_dim) -> two residual layers: h = ReLU(BN(W1 z)) + z; out = tanh(BN(W2 h)) + h."""

    def __init__(self, noise_dim: int = 128, bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.fc1 = nn.Linear(noise_dim, noise_dim)
        self.bn1 = nn.BatchNorm1d(noise_dim, eps=1e-3, momentum=bn_momentum)
        self.fc2 = nn.Linear(noise_dim, noise_dim)
        self.bn2 = nn.BatchNorm1d(noise_dim, eps=1e-3, momentum=bn_momentum)
        self.noise_dim = noise_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.fc1(z))) + z
        return torch.tanh(self.bn2(self.fc2(h))) + h


class Discriminator(nn.Module):
    """MLP critic; returns one logit (medGAN) or score (WGAN) per example."""

    def __init__(
        self, n_codes: int, hidden: tuple[int, ...] = (256, 128), minibatch_averaging: bool = True
    ) -> None:
        super().__init__()
        self.minibatch_averaging = minibatch_averaging
        layers: list[nn.Module] = []
        width = 2 * n_codes if minibatch_averaging else n_codes
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.minibatch_averaging:
            x = torch.cat([x, x.mean(0, keepdim=True).expand_as(x)], dim=1)
        return self.net(x).squeeze(-1)
