"""EHRDiff's denoiser network: an MLP with a sinusoidal time embedding added in every block.

Only ``nn.Linear`` and ``nn.SiLU`` (optionally ``nn.LayerNorm``): layers Opacus supports, including
ghost clipping. The embedding of c_noise is computed inside ``forward`` so a wrapped model needs
nothing but (x, sigma).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer-style embedding of a scalar per row: (..., 1) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half
    )
    args = t * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class MLPDenoiser(nn.Module):
    """F(x_in, c_noise): widths ``hidden`` (EHRDiff MIMIC: 1024-384-384-384-1024).

    Block i: h_i = SiLU(W_i h_{i-1} + T_i e(c_noise)), where e is the sinusoidal embedding passed
    through a small MLP; the last block feeds a linear layer back to ``n_codes``.
    """

    def __init__(self, n_codes: int, hidden: tuple[int, ...], time_dim: int = 256) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden must list at least one width")
        self.time_dim = int(time_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim), nn.SiLU()
        )
        widths = (n_codes, *hidden)
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.time_proj = nn.ModuleList(nn.Linear(time_dim, b) for b in hidden)
        self.act = nn.SiLU()
        self.out = nn.Linear(hidden[-1], n_codes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        temb = self.time_mlp(sinusoidal_embedding(c_noise, self.time_dim))
        h = x
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = self.act(layer(h) + proj(temb))
        return self.out(h)
