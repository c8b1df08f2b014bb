"""DP-SGD at a site: per-example clipping bound, calibrated noise scale, the model samples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from fedsynth.client.dp_training import dp_step, make_private, poisson_batch, train_dp
from fedsynth.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedsynth.common.device import flush_denormals
from fedsynth.common.model import Generator, OutputStep, build_model, per_example_loss
from fedsynth.privacy.accountant import Mechanism

TINY = ModelConfig(hidden=(32, 32), time_dim=16, sample_steps=4)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.SiLU(), nn.Linear(16, 3))


def _sq_loss(module: nn.Module, xb: torch.Tensor) -> torch.Tensor:
    """Deterministic per-example loss with large gradients (so clipping is active)."""
    return ((module(xb) - 5.0) ** 2).sum(dim=1) * 10.0


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_sum_of_individually_clipped_gradients(mode: str) -> None:
    """The step's gradient equals sum_i clip_C(grad_i) / (q n), recomputed one example at a time."""
    C, n, q = 0.5, 40, 0.25
    model = _mlp()
    ref = _mlp()
    xb = torch.randn(9, 6, generator=torch.Generator().manual_seed(1))
    expected = torch.zeros(sum(p.numel() for p in ref.parameters()))
    for x in xb:
        ref.zero_grad()
        _sq_loss(ref, x[None]).sum().backward()
        g = torch.cat([p.grad.flatten() for p in ref.parameters()])
        expected += g * min(1.0, C / (float(g.norm()) + 1e-6))
    parts = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                         max_grad_norm=C, sample_rate=q, n_rows=n, mode=mode, noise_seed=0)
    dp_step(parts, _sq_loss, xb)
    got = torch.cat([p.grad.flatten() for p in parts.module.parameters()]) * (q * n)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_single_example_gradient_never_exceeds_clip_on_the_denoiser() -> None:
    C = 0.1
    torch.manual_seed(0)
    model = build_model(12, TINY)
    parts = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                         max_grad_norm=C, sample_rate=0.5, n_rows=2, mode="ghost", noise_seed=0)
    x = torch.zeros(1, 12)
    x[0, [1, 5, 7]] = 1.0
    norms = []
    for _ in range(5):
        dp_step(parts, lambda m, xb: per_example_loss(m, xb, TINY, multiplicity=4) * 100.0, x)
        g = torch.cat([p.grad.flatten() for p in parts.module.parameters()]) * parts.expected_batch
        norms.append(float(g.norm()))
    assert max(norms) <= C * (1 + 1e-4)
    assert min(norms) > 0.9 * C  # the scaled-up loss is clipped, not zeroed


def test_records_model_gradient_never_exceeds_clip_with_denormals_flushed() -> None:
    """The whole-records model (one-hot groups, ordered numeric tokens) under DP-SGD as
    ``train_dp`` runs it: inside ``flush_denormals`` on every pool thread, at tiny and large
    noise levels, a single patient's clipped gradient stays within C."""
    C = 0.1
    groups, values = (3, 4), (0.0, 0.0, 0.0, -1.0, -1 / 3, 1 / 3, 1.0)
    cfg = ModelConfig(hidden=(32, 32), time_dim=16, one_hot_groups=groups, ordinal_values=values)
    torch.manual_seed(0)
    model = build_model(12, cfg)
    for p in model.net.out.parameters():  # a trained-looking last layer: the tilt is active
        nn.init.normal_(p, std=0.5)
    parts = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                         max_grad_norm=C, sample_rate=0.5, n_rows=2, mode="ghost", noise_seed=0)
    x = torch.zeros(1, 12)
    x[0, [1, 5, 8, 10]] = 1.0  # a category, a numeric value, two codes
    norms = []
    with flush_denormals():
        for p_mean in (-6.0, -1.2, 2.0):  # sigma ~ 0.002, ~0.3, ~7
            loss_cfg = dataclasses.replace(cfg, p_mean=p_mean, p_std=0.1)
            dp_step(parts, lambda m, xb, c=loss_cfg: per_example_loss(m, xb, c, 4) * 100.0, x)
            g = torch.cat([p.grad.flatten() for p in parts.module.parameters()])
            norms.append(float(g.norm()) * parts.expected_batch)
    assert max(norms) <= C * (1 + 1e-4)
    # at sigma 0.002 the evidence alone decides (|x - 1/2| / sigma^2 ~ 1e5): loss and gradient
    # are 0; at the other two the scaled-up loss is clipped, not zeroed
    assert min(norms[1:]) > 0.9 * C


def test_noise_std_is_sigma_times_clip_over_expected_batch() -> None:
    """A zero-loss model: the update is pure noise N(0, (sigma C)^2) / (q n) per coordinate."""
    sigma, C, q, n = 2.0, 0.5, 0.1, 500
    torch.manual_seed(0)
    model = nn.Linear(100, 100)

    def zero_loss(module: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return module(xb).sum(dim=1) * 0.0

    parts = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0),
                         noise_multiplier=sigma, max_grad_norm=C, sample_rate=q, n_rows=n,
                         noise_seed=3)
    for xb in (torch.randn(50, 100), torch.zeros(0, 100)):  # a batch, then an empty batch
        dp_step(parts, zero_loss, xb)
        g = torch.cat([p.grad.flatten() for p in parts.module.parameters()]).numpy()
        assert g.std() * q * n == pytest.approx(sigma * C, rel=0.03)
        assert abs(g.mean()) * q * n < 0.05 * sigma * C
    assert list(parts.engine.accountant.history) == [(sigma, q, 2)]  # the empty step counts


def test_poisson_batch_rate() -> None:
    sizes = [len(poisson_batch(1000, 0.05)) for _ in range(200)]
    assert np.mean(sizes) == pytest.approx(50, rel=0.05)
    assert np.std(sizes) == pytest.approx(np.sqrt(1000 * 0.05 * 0.95), rel=0.2)


def test_train_dp_reports_what_ran_and_the_model_samples() -> None:
    rng = np.random.default_rng(0)
    X = (rng.random((300, 12)) < np.linspace(0.05, 0.6, 12)).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model(12, TINY)
    res = train_dp(model, X, model_cfg=TINY, train_cfg=TrainConfig(lr=2e-3, ema_decay=0.9),
                   privacy_cfg=PrivacyConfig(noise_multiplicity=2), noise_multiplier=1.0,
                   sample_rate=0.1, steps=15, noise_seed=0)
    assert res.mechanism == Mechanism(1.0, 0.1, 15)
    assert not any(k.startswith("_module") for k in res.state_dict)
    assert res.examples_per_s > 0 and np.isfinite(res.mean_loss)
    fresh = build_model(12, TINY)
    fresh.load_state_dict(res.ema_state)
    gen = Generator(fresh, TINY, _vocab(12), OutputStep("threshold", 0.5))
    S = gen.sample(50, seed=0)
    assert S.shape == (50, 12) and S.dtype == np.uint8 and set(np.unique(S)) <= {0, 1}


def _vocab(n: int):  # noqa: ANN202
    from fedsynth.common.vocabulary import Vocabulary

    return Vocabulary(tuple(f"C{i:02d}" for i in range(n)), {}, "test")


def test_train_dp_ema_starts_at_the_initial_weights_with_the_warm_up() -> None:
    """The EMA train_dp returns is built with the warm-up (common.model.ema): after one step
    d_0 = min(decay, 1/10), so it is 0.1 w0 + 0.9 w1, not decay w0 + (1 - decay) w1. The
    federated release rule (client.site_training) assumes exactly this."""
    X = (np.random.default_rng(0).random((40, 12)) < 0.3).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model(12, TINY)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res = train_dp(model, X, model_cfg=TINY, train_cfg=TrainConfig(lr=0.05, ema_decay=0.9),
                   privacy_cfg=PrivacyConfig(noise_multiplicity=1), noise_multiplier=1.0,
                   sample_rate=0.5, steps=1, noise_seed=0)
    w1 = res.state_dict
    moved = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert moved  # the step changed the weights
    for k in moved:
        torch.testing.assert_close(res.ema_state[k], 0.1 * w0[k] + 0.9 * w1[k],
                                   rtol=0, atol=1e-6)
