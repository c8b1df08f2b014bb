"""EDM step schedule and the deterministic Heun sampler (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N; sigma_N = 0."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps == 1:
        sig = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        i = torch.arange(steps, dtype=torch.float64)
        a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
        sig = (a + i / (steps - 1) * (b - a)) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def heun_sample(denoise: Denoiser, noise: Tensor, sigmas: Tensor) -> Tensor:
    """Integrate dx/dsigma = (x - D(x; sigma)) / sigma from sigmas[0] to sigmas[-1] (= 0).

    ``noise`` is standard normal; the start is noise * sigmas[0]. Heun's 2nd-order correction is
    applied on every step except the last one to sigma = 0 (2N - 1 denoiser calls for N steps).
    """
    x = noise * sigmas[0].item()
    n = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        s_t = torch.full((n, 1), s, dtype=x.dtype, device=x.device)
        d = torch.sub(x, denoise(x, s_t)).div_(s)  # in place where the tensor is our own
        x_next = torch.add(x, d, alpha=s_next - s)
        if s_next > 0:
            s_nt = torch.full((n, 1), s_next, dtype=x.dtype, device=x.device)
            d2 = torch.sub(x_next, denoise(x_next, s_nt)).div_(s_next)
            x_next = torch.add(x, d.add_(d2), alpha=(s_next - s) * 0.5)
        x = x_next
    return x
