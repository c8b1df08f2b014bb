"""EDM preconditioning, loss weighting, the sampler on a known Gaussian, EMA, the output step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsynth.common.config import ModelConfig
from fedsynth.common.model import (
    EMA,
    build_model,
    edm_sigmas,
    fit_per_code_thresholds,
    fit_scalar_threshold,
    heun_sample,
    loss_weight,
    per_example_loss,
    preconditioning,
)
from fedsynth.common.model.output import NEVER, OutputStep


def test_preconditioning_matches_hand_computation():
    s, sd = 0.5, 0.14
    c_skip, c_out, c_in, c_noise = preconditioning(torch.tensor([s], dtype=torch.float64), sd)
    assert c_skip.item() == pytest.approx(0.0196 / (0.25 + 0.0196))
    assert c_out.item() == pytest.approx(0.5 * 0.14 / math.sqrt(0.2696))
    assert c_in.item() == pytest.approx(1 / math.sqrt(0.2696))
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4)


@pytest.mark.parametrize("s", [0.002, 0.14, 1.0, 80.0])
def test_loss_weight_makes_effective_target_weight_one(s):
    # EDM: lambda(sigma) * c_out(sigma)^2 = 1, the network's target has unit weight everywhere
    sig = torch.tensor([s], dtype=torch.float64)
    lam = loss_weight(sig, 0.14).item()
    assert lam == pytest.approx((s**2 + 0.14**2) / (s * 0.14) ** 2)
    assert lam * preconditioning(sig, 0.14)[1].item() ** 2 == pytest.approx(1.0)


def test_edm_schedule_ends():
    sig = edm_sigmas(8, 0.02, 80.0, 7.0)
    assert len(sig) == 9 and sig[0].item() == pytest.approx(80.0)
    assert sig[-2].item() == pytest.approx(0.02) and sig[-1].item() == 0.0
    assert torch.all(sig[1:] < sig[:-1])
    # rho = 7 spacing: sigma_i^(1/7) is linear in i
    r = sig[:-1] ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(7), atol=1e-9)


def test_heun_sampler_reproduces_known_gaussian():
    # data x0 ~ N(mu, s0^2) per dimension: the optimal denoiser is
    # D(x; sigma) = mu + s0^2 / (s0^2 + sigma^2) (x - mu); the sampler must give N(mu, s0^2)
    mu = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    s0 = torch.tensor([0.5, 0.1, 1.5], dtype=torch.float64)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mu + s0**2 / (s0**2 + sigma**2) * (x - mu)

    g = torch.Generator().manual_seed(0)
    z = torch.randn(40000, 3, generator=g, dtype=torch.float64)
    x = heun_sample(denoise, z, edm_sigmas(128, 0.002, 80.0, 7.0))
    # the exact ODE flow maps the start N(0, 80^2) (not N(mu, 80^2 + s0^2)) to
    # mu + s0 / sqrt(s0^2 + 80^2) (x_T - mu): mean mu (1 - k), sd 80 k with k = s0 / sqrt(...)
    k = s0 / torch.sqrt(s0**2 + 80.0**2)
    se = s0 / math.sqrt(len(z))
    assert torch.all((x.mean(0) - mu * (1 - k)).abs() < 4 * se)
    assert torch.allclose(x.std(0), 80.0 * k * z.std(0), rtol=0.005)
    # Heun is 2nd order: the discretisation error shrinks ~16x from 32 to 128 steps
    err32 = (heun_sample(denoise, z, edm_sigmas(32, 0.002, 80.0, 7.0)).std(0)
             / (80.0 * k * z.std(0)) - 1).abs()
    err128 = (x.std(0) / (80.0 * k * z.std(0)) - 1).abs()
    assert torch.all(err128 < err32 / 8)


def test_per_example_loss_shape_and_independence():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16, 16), time_dim=8)
    model = build_model(12, cfg)
    x = (torch.rand(5, 12) < 0.3).float()
    loss = per_example_loss(model, x, cfg, multiplicity=3)
    assert loss.shape == (5,) and torch.all(loss > 0)
    # example i's loss has gradient only through row i of the input batch
    xr = x.clone().requires_grad_(True)
    per_example_loss(model, xr, cfg, multiplicity=2)[2].backward()
    assert torch.all(xr.grad[[0, 1, 3, 4]] == 0) and xr.grad[2].abs().sum() > 0


def test_model_forward_keeps_leading_dims():
    cfg = ModelConfig(hidden=(16,), time_dim=8)
    model = build_model(7, cfg)
    out = model(torch.randn(4, 3, 7), torch.rand(4, 3, 1) + 0.1)
    assert out.shape == (4, 3, 7)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_ema_update_rule():
    lin = nn.Linear(2, 1)
    ema = EMA(lin, decay=0.9, warmup=False)
    old = ema.module.weight.clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert torch.allclose(ema.module.weight, 0.9 * old + 0.1 * lin.weight)


def test_ema_warmup_forgets_the_initial_weights():
    lin = nn.Linear(3, 3)
    init = lin.weight.detach().clone()
    ema = EMA(lin, decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        lin.weight.copy_(init + 1.0)
    for _ in range(1000):
        ema.update(lin)
    # without warm-up 0.999^1000 = 37% of the average would still be the initial weights
    share_init = ((lin.weight - ema.module.weight) / (lin.weight - init)).mean().item()
    assert share_init < 0.01


def test_per_code_thresholds_match_prevalence():
    rng = np.random.default_rng(0)
    cont = rng.normal(size=(10000, 4)).astype(np.float32)
    p = np.array([0.0, 0.01, 0.2, 0.5])
    th = fit_per_code_thresholds(cont, p)
    assert th[0] == NEVER
    step = OutputStep("per_code", thresholds=th)
    got = step.apply(rng.normal(size=(50000, 4)).astype(np.float32)).mean(0)
    assert np.allclose(got, p, atol=0.01)
    again = OutputStep.from_dict(step.to_dict())
    assert np.array_equal(again.thresholds, th)


def test_scalar_threshold_matches_codes_per_patient():
    rng = np.random.default_rng(1)
    cont = rng.random((5000, 100))
    t = fit_scalar_threshold(cont, 3.7)
    assert (cont > t).sum(1).mean() == pytest.approx(3.7, rel=0.02)
