"""Exponential moving average of a model's parameters (shadow = d_t shadow + (1 - d_t) param).

d_t = min(decay, (1 + t) / (10 + t)) after t updates (the warm-up of TensorFlow's
ExponentialMovingAverage): without it the random initial weights keep a share decay^T of the
average (0.999^1080 = 34% after 12 epochs of 90 steps), which measurably ruined samples
(co-occurrence r 0.92 -> 0.95, dimension-wise prediction 0.75 -> 0.85 once removed).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside an Opacus GradSampleModule / DDP-style wrapper, if any."""
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, nn.Module) else model


class EMA:
    """EMA weights kept as a copy of the (unwrapped) model; ``module`` is what you sample with."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError("decay must be in [0, 1)")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = dict(_unwrap(model).named_parameters())
        for name, shadow in self.module.named_parameters():
            shadow.lerp_(src[name].detach(), 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
