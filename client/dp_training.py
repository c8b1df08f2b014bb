"""DP-SGD training of the EDM denoiser at one site (Opacus 1.6, Abadi et al. 2016).

Each step: Poisson sampling (every row joins the batch independently with probability q),
each example's loss averaged over K noise draws (noise multiplicity, Dockhorn et al. 2022),
per-example gradients clipped to norm C (ghost clipping by default: the per-example norms
without materialising per-example gradients, Li et al. 2022), the sum plus N(0, (sigma C)^2)
noise divided by the expected batch q n. That is ``Mechanism(sigma, q, steps)``; an empty
Poisson batch is a noise-only step (the mechanism the accountant analyses), never a skipped one.

Poisson sampling is drawn here, so the sample rate is exactly the ``sample_rate`` accounted, not
Opacus' 1/len(loader) rounding. Both random choices of the mechanism, the batches and the noise,
come from the OS's CSPRNG (``privacy.secure_random``), never from ``train_cfg.seed``: in a
federation that seed is chosen by the coordinator, who could otherwise rebuild every batch
(no subsampling amplification) or subtract the noise. ``train_cfg.seed`` governs only what is
not private: the initialisation and the diffusion noise levels inside the loss.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import Tensor, nn

from fedsynth.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedsynth.common.device import flush_denormals
from fedsynth.common.model import EMA, per_example_loss
from fedsynth.privacy import secure_random
from fedsynth.privacy.accountant import Mechanism

log = logging.getLogger(__name__)

GRAD_SAMPLE_MODES = ("ghost", "hooks", "functorch")
logging.getLogger("flwr").setLevel(logging.INFO)  # opacus' import sets it to DEBUG
# secure_mode needs torchcsprng (no build here): the noise generator's state comes from the OS.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
# Opacus' hooks on the first layer, whose input needs no gradient: expected, harmless.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass
class DPResult:
    state_dict: dict[str, Tensor]  # trained weights, keys without Opacus' "_module." prefix
    ema_state: dict[str, Tensor] | None  # EMA from the initial weights, with the warm-up
    mechanism: Mechanism  # exactly what ran: sigma, q and the number of steps taken
    mean_loss: float
    examples_per_s: float
    empty_batches: int = 0


class _PerExample(nn.Module):
    """The 'criterion' Opacus' ghost clipping wraps: the per-example losses are computed by
    ``per_example_loss`` already, so it returns them (reduction 'none') or their mean."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, losses: Tensor) -> Tensor:
        return losses if self.reduction == "none" else losses.mean()


@dataclass
class PrivateParts:
    module: nn.Module  # GradSampleModule (keys carry "_module.")
    optimizer: Any  # DPOptimizer
    criterion: Callable[[Tensor], Any] | None  # ghost mode only
    engine: PrivacyEngine
    noise_multiplier: float
    sample_rate: float
    expected_batch: float
    mode: str
    fixed_noise: bool = False  # tests only (make_private's noise_seed): no fresh generator a step


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    n_rows: int,
    mode: str = "ghost",
    accountant: str = "prv",
    noise_seed: int | None = None,
) -> PrivateParts:
    """Wrap ``model``/``optimizer`` with Opacus; noise std ``noise_multiplier * max_grad_norm``,
    divided by the expected batch ``sample_rate * n_rows``.

    The privacy noise comes from a new generator at every step whose state is drawn from the OS
    (``secure_random.torch_generator``). ``noise_seed`` is for tests only (bit-reproducible
    noise); no configuration, plan or CLI flag may reach it (tests/test_secret_sampling.py):
    a noise seed anyone knows would let them remove the noise.
    """
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {mode!r}")
    engine = PrivacyEngine(accountant=accountant)
    device = next(model.parameters()).device
    if noise_seed is None:
        noise_gen = secure_random.torch_generator(device)
    else:
        noise_gen = torch.Generator(device=device).manual_seed(int(noise_seed))
    expected = float(sample_rate * n_rows)
    # The loader only satisfies make_private's signature; batches are drawn by ``poisson_batch``.
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(n_rows, 1)),
                                         batch_size=max(1, round(expected)))
    out = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, criterion=_PerExample(),
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        poisson_sampling=False, grad_sample_mode=mode, loss_reduction="mean",
        noise_generator=noise_gen,
    )
    module, opt = out[0], out[1]
    criterion = out[2] if mode == "ghost" else None
    opt.expected_batch_size = expected  # exact q n, not int(n / len(loader))
    opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return PrivateParts(module, opt, criterion, engine, float(noise_multiplier),
                        float(sample_rate), expected, mode, fixed_noise=noise_seed is not None)


def poisson_batch(n: int, q: float) -> Tensor:
    """Indices of a Poisson-sampled batch: each of the n rows independently with probability q,
    drawn from the OS's CSPRNG (``secure_random.poisson_mask``); no seed can reproduce it."""
    return torch.from_numpy(np.flatnonzero(secure_random.poisson_mask(n, q)))


def _fresh_noise(parts: PrivateParts) -> None:
    """A new secret noise generator for this step (unless a test fixed the noise)."""
    if not parts.fixed_noise:
        opt = parts.optimizer
        opt.generator = secure_random.torch_generator(next(iter(opt.params)).device)


def dp_step(parts: PrivateParts, loss_fn: Callable[[nn.Module, Tensor], Tensor],
            xb: Tensor) -> float | None:
    """One DP-SGD step on batch ``xb``; ``loss_fn(module, xb)`` returns per-example losses.

    Returns the batch's mean loss (None for an empty batch, which takes a noise-only step)."""
    opt = parts.optimizer
    opt.zero_grad(set_to_none=True)
    _fresh_noise(parts)
    if xb.shape[0] == 0:
        _noise_only_step(parts)
        return None
    losses = loss_fn(parts.module, xb)
    if parts.criterion is not None:
        loss = parts.criterion(losses)  # ghost: wraps the two backward passes
        loss.backward()
        value = float(loss.item())
    else:
        mean = losses.mean()
        mean.backward()
        value = float(mean.detach())
    opt.step()
    return value


@torch.no_grad()
def _noise_only_step(parts: PrivateParts) -> None:
    """An empty Poisson batch: clipped sum 0, plus N(0, (sigma C)^2), over the expected batch."""
    opt = parts.optimizer
    std = parts.noise_multiplier * opt.max_grad_norm
    for p in opt.params:
        noise = torch.normal(0.0, std, p.shape, device=p.device, dtype=p.dtype,
                             generator=opt.generator)
        p.grad = noise / parts.expected_batch
    opt.original_optimizer.step()
    parts.engine.accountant.step(noise_multiplier=parts.noise_multiplier,
                                 sample_rate=parts.sample_rate)


def strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("_module."): v.detach().clone() for k, v in state.items()}


def train_dp(
    model: nn.Module,
    X: np.ndarray,
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    privacy_cfg: PrivacyConfig,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    noise_seed: int | None = None,
) -> DPResult:
    """Train ``model`` on the 0/1 rows of ``X`` for ``steps`` DP-SGD steps (Poisson rate
    ``sample_rate``, clip ``privacy_cfg.max_grad_norm``, noise multiplier ``noise_multiplier``,
    K = ``privacy_cfg.noise_multiplicity``; Adam at ``train_cfg.lr``; EMA ``train_cfg.ema_decay``).
    Batches and noise are secret (``privacy.secure_random``); ``noise_seed``: tests only.
    """
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = torch.device(device)
    n = int(X.shape[0])
    if n == 0:
        raise ValueError("no rows to train on")
    # C order: each batch gathers rows (an F-order matrix made the gather 20x slower)
    Xt = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32, device=device)
    torch.manual_seed(train_cfg.seed)  # initialisation and diffusion noise levels: not private
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr,
                           weight_decay=train_cfg.weight_decay)
    parts = make_private(model, opt, noise_multiplier=noise_multiplier,
                         max_grad_norm=privacy_cfg.max_grad_norm, sample_rate=sample_rate,
                         n_rows=n, mode=privacy_cfg.grad_sample_mode,
                         accountant=privacy_cfg.accountant, noise_seed=noise_seed)
    # with the warm-up, always: a federated round's EMA restarts at the round's global weights
    # and the site's release rule assumes it (client.site_training.run_site_round)
    ema = EMA(parts.module, train_cfg.ema_decay, warmup=True)
    k = int(privacy_cfg.noise_multiplicity)

    def loss_fn(module: nn.Module, xb: Tensor) -> Tensor:
        return per_example_loss(module, xb, model_cfg, multiplicity=k)

    total, seen, empty, taken = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    for _ in range(int(steps)):
        idx = poisson_batch(n, sample_rate).to(device)
        with flush_denormals():  # the model's compute only (common.device)
            value = dp_step(parts, loss_fn, Xt[idx])
        taken += 1
        if value is None:
            empty += 1
        else:
            total += value * idx.numel()
            seen += idx.numel()
        ema.update(parts.module)
        if progress is not None:
            progress(1)
        if taken % max(1, int(steps) // 10) == 0:
            log.info("DP-SGD step %d/%d: mean loss %.4f, %.0f examples/s", taken, steps,
                     total / max(seen, 1), seen / max(time.perf_counter() - t0, 1e-9))
    seconds = time.perf_counter() - t0
    mech = Mechanism(noise_multiplier, sample_rate, taken)
    _check_accountant(parts, mech)
    if empty:
        log.info("%d empty Poisson batches took noise-only steps", empty)
    module = parts.module._module if hasattr(parts.module, "_module") else parts.module
    return DPResult(
        state_dict=strip_module_prefix(module.state_dict()),
        ema_state=strip_module_prefix(ema.state_dict()),
        mechanism=mech,
        mean_loss=total / max(seen, 1),
        examples_per_s=seen / max(seconds, 1e-9),
        empty_batches=empty,
    )


def _check_accountant(parts: PrivateParts, mech: Mechanism) -> None:
    """Opacus' own accountant saw the same (sigma, q, steps) as the Mechanism we report."""
    hist = list(parts.engine.accountant.history)
    steps = sum(h[2] for h in hist)
    if mech.steps and (steps != mech.steps or any(
            (h[0], h[1]) != (mech.noise_multiplier, mech.sample_rate) for h in hist)):
        raise RuntimeError(f"Opacus accountant history {hist} differs from {mech}")
