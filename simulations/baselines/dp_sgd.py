"""DP-SGD pieces for the baseline GANs: Poisson batches, per-example clipping, Gaussian noise,
and the privacy plan (noise calibrated with ``privacy.accountant``, the same accountant as our
model).

One DP-SGD step (Abadi et al. 2016, Alg. 1) on a Poisson batch B (each record in with
probability q):  g = (sum_{i in B} clip_C(grad l_i) + N(0, sigma^2 C^2 I)) / (q n),
clip_C(v) = v * min(1, C / ||v||). It is the Poisson-subsampled Gaussian mechanism that
``Mechanism(sigma, q, steps)`` accounts for.

Per-example norms: for networks whose only parameters are ``nn.Linear`` layers on 2-D inputs
the norm is computed without materialising per-example gradients ("ghost" norms, Goodfellow
2015; Li et al. 2022): grad_W l_i = g_i a_i^T, so ||grad_W l_i||^2 = ||g_i||^2 ||a_i||^2 and
||grad_b l_i||^2 = ||g_i||^2, g_i the gradient w.r.t. the layer's output and a_i its input; the
clipped sum is then one backward pass of sum_i c_i l_i. Other networks (the corGAN conv
autoencoder) use ``torch.func`` per-example gradients. Both paths give the same result (tested).

We implement the step here instead of calling Opacus: the design card keeps ``opacus`` inside
``client/dp_training.py`` and ``privacy/accountant.py``; the step is the same as Opacus'
(clip factor C / (||g|| + 1e-6) capped at 1, noise std sigma*C, division by the expected batch
q*n). The batches and the noise come from the OS's CSPRNG (``privacy.secure_random``), never from
the baseline's seed: a seed anyone knows would let them rebuild the batches or remove the noise.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsynth.common.errors import BudgetExceeded
from fedsynth.privacy import secure_random
from fedsynth.privacy.accountant import Mechanism, calibrate_noise, epsilon

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""loss_fn(module_output, x) -> per-example losses, shape (B,)."""

_BATCH_COUPLING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass
class PrivacyPlan:
    """The mechanisms a private baseline will run, fixed before it touches the data."""

    target_epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    phases: dict[str, int]  # phase name -> number of DP-SGD steps (e.g. autoencoder, discriminator)
    accountant: str = "prv"
    prior_history: list[Mechanism] = field(default_factory=list)

    @property
    def history(self) -> list[Mechanism]:
        own = [Mechanism(self.noise_multiplier, self.sample_rate, s) for s in self.phases.values()]
        return [*self.prior_history, *own]

    def epsilon(self) -> float:
        """Recomputed from the history (cached: the plan is immutable once made)."""
        key = (self.noise_multiplier, self.sample_rate, tuple(self.phases.items()))
        if getattr(self, "_eps_key", None) != key:
            self._eps = epsilon(self.history, self.delta, self.accountant)
            self._eps_key = key
        return self._eps

    def report(self) -> dict[str, object]:
        """The project's privacy-report shape (docs/design.md): epsilon, delta, accountant,
        history, plus which phase each history entry is."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "accountant": self.accountant,
            "history": [m.to_dict() for m in self.history],
            "phases": list(self.phases),
            "target_epsilon": self.target_epsilon,
        }


def plan_privacy(
    target_epsilon: float,
    delta: float,
    n_records: int,
    batch_size: int,
    phases: dict[str, int],
    noise_multiplier: float | None = None,
    accountant: str = "prv",
    prior_history: Sequence[Mechanism] = (),
) -> PrivacyPlan:
    """Fix sigma for every phase (one sigma, one q = batch/n, so the phases compose as one
    Poisson-subsampled Gaussian over sum(steps)), or check a given sigma.

    Raises ``BudgetExceeded`` when the plan (with any prior spend) would exceed
    ``target_epsilon``; nothing has been trained at that point.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if n_records <= 0:
        raise ValueError("no records to train on")
    q = min(1.0, batch_size / n_records)
    total = int(sum(phases.values()))
    if total <= 0:
        raise ValueError(f"a private plan needs at least one step, got {phases}")
    prior = list(prior_history)
    if noise_multiplier is None:
        try:
            noise_multiplier = calibrate_noise(
                target_epsilon, delta, q, total, accountant=accountant, prior_history=prior
            )
        except ValueError as err:
            raise BudgetExceeded(
                f"cannot reach epsilon={target_epsilon} (delta={delta}) with {total} steps at "
                f"q={q:.4g}: {err}"
            ) from None
    plan = PrivacyPlan(target_epsilon, delta, float(noise_multiplier), q, dict(phases),
                       accountant, prior)
    spent = plan.epsilon()
    if spent > target_epsilon * (1 + 1e-9):
        raise BudgetExceeded(
            f"plan {phases} at sigma={noise_multiplier:.4g}, q={q:.4g} reaches epsilon="
            f"{spent:.3f} > budget {target_epsilon} (delta={delta}); refused before training"
        )
    log.info("DP plan: sigma=%.4f q=%.4g steps=%s -> epsilon=%.3f (target %.3g, delta=%.3g, %s)",
             noise_multiplier, q, phases, spent, target_epsilon, delta, accountant)
    return plan


def poisson_batches(n: int, sample_rate: float, steps: int) -> Iterator[np.ndarray]:
    """``steps`` Poisson batches: each record independently with probability ``sample_rate``,
    from the OS's CSPRNG (``secure_random.poisson_indices``; no seed reproduces them).
    Batches may be empty; the step still runs (noise only) and is still accounted."""
    for _ in range(steps):
        yield secure_random.poisson_indices(n, sample_rate)


def check_dp_compatible(module: nn.Module) -> None:
    """Per-example clipping bounds one record's influence only if no layer mixes examples."""
    bad = [type(m).__name__ for m in module.modules() if isinstance(m, _BATCH_COUPLING)]
    bad += [type(m).__name__ for m in module.modules() if getattr(m, "minibatch_averaging", False)]
    if bad:
        raise ValueError(f"{type(module).__name__} has batch-coupling layers {bad}: not DP-safe")


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _linear_only(module: nn.Module) -> bool:
    owners = {id(p) for m in module.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    return all(id(p) in owners for _, p in _trainable(module))


def _ghost_clipped_sum(
    module: nn.Module, loss_fn: LossFn, x: torch.Tensor, max_grad_norm: float
) -> list[torch.Tensor]:
    """sum_i clip_C(grad l_i) for a Linear-only network, via per-layer ghost norms."""
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        records.append((inputs[0].detach(), output))

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in linears]
    try:
        losses = loss_fn(module(x), x)
    finally:
        for h in handles:
            h.remove()
    if any(a.dim() != 2 for a, _ in records):
        raise ValueError("ghost norms need 2-D Linear inputs")
    outs = [o for _, o in records]
    g_outs = torch.autograd.grad(losses.sum(), outs, retain_graph=True, allow_unused=True)
    sq = torch.zeros(x.shape[0], device=x.device)
    for (a, _), g in zip(records, g_outs, strict=True):
        if g is None:
            continue
        g2 = g.pow(2).sum(1)
        sq = sq + g2 * a.pow(2).sum(1) + g2  # weight + bias
    factor = (max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0).detach()
    params = [p for _, p in _trainable(module)]
    grads = torch.autograd.grad((losses * factor).sum(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _vmap_clipped_sum(
    module: nn.Module, loss_fn: LossFn, x: torch.Tensor, max_grad_norm: float, chunk: int = 64
) -> list[torch.Tensor]:
    """sum_i clip_C(grad l_i) from materialised per-example gradients (torch.func)."""
    named = _trainable(module)
    names = [n for n, _ in named]
    buffers = dict(module.named_buffers())

    def one(pvals: tuple[torch.Tensor, ...], xi: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(names, pvals, strict=True)), **buffers}
        out = functional_call(module, state, (xi.unsqueeze(0),))
        return loss_fn(out, xi.unsqueeze(0)).sum()

    per_example = vmap(grad(one), in_dims=(None, 0))
    pvals = tuple(p.detach() for _, p in named)
    total = [torch.zeros_like(p) for p in pvals]
    for part in x.split(chunk):
        grads = per_example(pvals, part)
        sq = sum(g.flatten(1).pow(2).sum(1) for g in grads)
        factor = (max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for t, g in zip(total, grads, strict=True):
            t += torch.tensordot(factor, g, dims=1)
    return total


def clipped_sum(
    module: nn.Module, loss_fn: LossFn, x: torch.Tensor, max_grad_norm: float
) -> list[torch.Tensor]:
    """sum over the batch of per-example gradients clipped to L2 norm ``max_grad_norm``,
    aligned with the module's trainable parameters."""
    check_dp_compatible(module)
    if x.shape[0] == 0:
        return [torch.zeros_like(p) for _, p in _trainable(module)]
    if _linear_only(module):
        return _ghost_clipped_sum(module, loss_fn, x, max_grad_norm)
    return _vmap_clipped_sum(module, loss_fn, x, max_grad_norm)


def private_gradient(
    module: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch: float,
) -> list[torch.Tensor]:
    """(sum_i clip_C(grad l_i) + N(0, sigma^2 C^2)) / (q n): one DP-SGD gradient; the noise from
    a generator whose state is drawn from the OS for this step (``secure_random``)."""
    if expected_batch <= 0 or not math.isfinite(expected_batch):
        raise ValueError(f"expected batch must be positive, got {expected_batch}")
    sums = clipped_sum(module, loss_fn, x, max_grad_norm)
    std = noise_multiplier * max_grad_norm
    generator = secure_random.torch_generator()
    out = []
    for s in sums:
        noise = torch.normal(0.0, std, size=s.shape, generator=generator, device="cpu")
        out.append((s + noise.to(s.device)) / expected_batch)
    return out


def add_to_grads(module: nn.Module, grads: Sequence[torch.Tensor]) -> None:
    """p.grad += g for each trainable parameter (p.grad created when absent)."""
    for (_, p), g in zip(_trainable(module), grads, strict=True):
        p.grad = g.detach().clone() if p.grad is None else p.grad + g.detach()
