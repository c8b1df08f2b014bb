"""EDM preconditioning and training loss (Karras et al. 2022, Table 1; as used by EHRDiff).

With s = sigma and sd = sigma_data the preconditioned denoiser is

    D(x; s) = c_skip(s) x + c_out(s) F(c_in(s) x; c_noise(s))
    c_skip = sd^2 / (s^2 + sd^2)      c_out = s sd / sqrt(s^2 + sd^2)
    c_in   = 1 / sqrt(s^2 + sd^2)     c_noise = ln(s) / 4

and the loss draws ln(s) ~ N(P_mean, P_std^2) and weights the squared error by
lambda(s) = (s^2 + sd^2) / (s sd)^2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedsynth.common.config import ModelConfig


def preconditioning(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 for noise level(s) ``sigma``."""
    s2 = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / s2
    c_out = sigma * sigma_data / s2.sqrt()
    c_in = 1.0 / s2.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM eq. 8 with Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(shape: tuple[int, ...], cfg: ModelConfig, like: Tensor) -> Tensor:
    """Training noise levels: ln(sigma) ~ N(p_mean, p_std^2)."""
    z = torch.randn(shape, device=like.device, dtype=like.dtype)
    return (cfg.p_mean + cfg.p_std * z).exp()


class EDMPrecond(nn.Module):
    """The preconditioned denoiser D(x; sigma) around a raw network F(x_in, c_noise).

    ``forward(x, sigma)`` accepts ``x`` of shape (..., n_codes) and ``sigma`` broadcastable to
    (..., 1) (training passes one sigma per row; the sampler one (1, 1) sigma for the whole
    batch, so the time embedding is computed once). Leading dimensions are kept, so a
    (batch, K, n_codes) input (noise multiplicity) keeps the batch dimension first, as Opacus'
    per-sample gradient code expects.
    """

    def __init__(self, net: nn.Module, sigma_data: float) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(x.dtype)
        while sigma.dim() < x.dim():
            sigma = sigma.unsqueeze(-1)
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data)
        f = run_net(self.net, c_in * x, c_noise)
        return c_skip * x + c_out * f


def run_net(net: nn.Module, x_in: Tensor, c_noise: Tensor) -> Tensor:
    """net(x_in, c_noise) in the net's own dtype (a bfloat16 copy samples faster on some CPUs),
    the result in the caller's dtype."""
    dt = next(net.parameters()).dtype
    if dt == x_in.dtype:
        return net(x_in, c_noise)
    return net(x_in.to(dt), c_noise.to(dt)).to(x_in.dtype)


def per_example_loss(
    model: nn.Module, x: Tensor, cfg: ModelConfig, multiplicity: int = 1
) -> Tensor:
    """Each example's EDM loss, averaged over ``multiplicity`` independent (sigma, noise) draws.

    Returns a tensor of shape (batch,). With multiplicity K the model sees one (batch, K, n_codes)
    input, so every draw of an example stays in that example's row (the per-example gradient that
    DP-SGD clips is the gradient of the K-averaged loss, DPDM / EHRDiff's noise multiplicity).
    With ``cfg.parameterization == "binary"`` it is ``common.model.binary.per_example_bce``.
    """
    if cfg.parameterization == "binary":
        from fedsynth.common.model.binary import per_example_bce

        return per_example_bce(model, x, cfg, multiplicity)
    b, d = x.shape
    k = int(multiplicity)
    x0 = x.unsqueeze(1).expand(b, k, d)
    sigma = sample_sigma((b, k, 1), cfg, x)
    noise = torch.randn_like(x0) * sigma
    denoised = model(x0 + noise, sigma)
    err = (denoised - x0) ** 2
    per_draw = loss_weight(sigma, cfg.sigma_data) * err  # (b, k, d)
    return per_draw.mean(dim=(1, 2))
