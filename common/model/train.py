"""One training epoch / a whole non-private training run of the EDM model (centralized or site).

``train_epoch`` is what site training reuses; ``train_model`` is the centralized reference.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsynth.common.config import ModelConfig, TrainConfig
from fedsynth.common.device import flush_denormals, resolve_device
from fedsynth.common.model.binary import BinaryPosterior, network_width, prior_logit
from fedsynth.common.model.denoiser import MLPDenoiser
from fedsynth.common.model.edm import EDMPrecond, per_example_loss
from fedsynth.common.model.ema import EMA

log = logging.getLogger(__name__)


def build_model(n_codes: int, cfg: ModelConfig,
                prevalence: np.ndarray | None = None) -> nn.Module:
    """The denoiser D(x; sigma) around the MLP: ``BinaryPosterior`` (``cfg.parameterization``
    "binary"; ``prevalence`` sets its prior, see ``common.model.binary``) or EHRDiff's
    ``EDMPrecond`` ("edm"; ``prevalence`` unused)."""
    if cfg.parameterization == "binary":
        groups = tuple(cfg.one_hot_groups)
        net = MLPDenoiser(network_width(n_codes, cfg), tuple(cfg.hidden), cfg.time_dim)
        return BinaryPosterior(net, prior_logit(prevalence, n_codes, groups), groups,
                               tuple(cfg.ordinal_values))
    return EDMPrecond(MLPDenoiser(n_codes, tuple(cfg.hidden), cfg.time_dim), cfg.sigma_data)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor,
    cfg: ModelConfig,
    batch_size: int,
    generator: torch.Generator,
    ema: EMA | None = None,
    multiplicity: int = 1,
    scheduler: Any = None,
    on_step: Callable[[], None] | None = None,
) -> float:
    """One pass over ``X`` in shuffled mini-batches; returns the mean loss."""
    model.train()
    perm = torch.randperm(X.shape[0], generator=generator).to(X.device)
    total, count = 0.0, 0
    for start in range(0, X.shape[0], batch_size):
        xb = X[perm[start : start + batch_size]]
        loss = per_example_loss(model, xb, cfg, multiplicity).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
        total += float(loss.detach()) * xb.shape[0]
        count += xb.shape[0]
        if on_step is not None:
            on_step()
    return total / max(count, 1)


@dataclass
class TrainResult:
    model: nn.Module
    ema: EMA
    report: dict[str, Any]


def train_model(
    X: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    progress: bool = True,
) -> TrainResult:
    """Train the EDM model on the binary matrix ``X`` (n, n_codes) without privacy (the binary
    parameterisation's prior is the training prevalence)."""
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    # C order: each batch gathers rows (an F-order matrix made the gather 20x slower)
    Xt = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32, device=device)
    model = build_model(Xt.shape[1], model_cfg, np.asarray(X).mean(axis=0)).to(device)
    ema = EMA(model, train_cfg.ema_decay)
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    steps_per_epoch = math.ceil(Xt.shape[0] / train_cfg.batch_size)
    total_steps = steps_per_epoch * train_cfg.epochs
    sched = _schedule(opt, train_cfg, total_steps)
    losses: list[float] = []
    t0 = time.perf_counter()
    with ProgressBar(progress, total_steps, "training") as advance, flush_denormals():
        for epoch in range(train_cfg.epochs):
            loss = train_epoch(model, opt, Xt, model_cfg, train_cfg.batch_size, gen, ema,
                               train_cfg.noise_multiplicity, sched, advance)
            losses.append(loss)
            log.info("epoch %d/%d loss %.4f", epoch + 1, train_cfg.epochs, loss)
    seconds = time.perf_counter() - t0
    report = {
        "train_seconds": round(seconds, 2),
        "epochs": train_cfg.epochs,
        "examples": int(Xt.shape[0]),
        "examples_per_second": round(Xt.shape[0] * train_cfg.epochs / max(seconds, 1e-9), 1),
        "parameters": count_parameters(model),
        "device": str(device),
        "loss_per_epoch": [round(v, 5) for v in losses],
    }
    return TrainResult(model=model, ema=ema, report=report)


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    if getattr(cfg, "lr_schedule", "constant") == "cosine" and total_steps > 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return None


class ProgressBar:
    """A rich progress bar (or nothing) that yields an ``advance()`` callback."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self._bar: Any = None

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda k=1: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda k=1: self._bar.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
