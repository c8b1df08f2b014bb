"""Baselines: medGAN, corGAN (plain and DP) and DP marginals train, sample 0/1 of the right
shape, clip and noise as DP-SGD says, and refuse to run past their budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from fedsynth.common.errors import BudgetExceeded
from fedsynth.privacy.accountant import Mechanism, calibrate_noise
from fedsynth.privacy.marginals import clip_codes_secure
from fedsynth.simulations.baselines import dp_sgd
from fedsynth.simulations.baselines.dp_marginals import (
    MarginalsConfig,
    fit_marginals,
    l2_sensitivity,
    noisy_counts,
)
from fedsynth.simulations.baselines.nets import (
    OUTPUT_PRIOR,
    ConvAutoencoder,
    Discriminator,
    conv_layout,
)
from fedsynth.simulations.baselines.registry import BASELINES, fit_baseline


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: threads only add contention on a shared 2-core box
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> np.ndarray:
    rng = np.random.default_rng(0)
    X = (rng.random((120, 24)) < 0.12).astype(np.uint8)
    X[:, 0] |= X[:, 1]  # one correlated pair
    return X


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("private", [False, True])
def test_baseline_trains_and_samples_binary(tiny: np.ndarray, name: str, private: bool) -> None:
    kwargs = {"epsilon": 50.0, "delta": 1e-3} if private else {}
    if private and name != "dp_marginals":
        kwargs["noise_multiplier"] = 1.0  # skip calibration: keeps the test fast
    fitted = fit_baseline(name, tiny, seed=0, preset="smoke", **kwargs)
    out = fitted.sampler.sample(37, seed=3)
    assert out.shape == (37, tiny.shape[1])
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1}
    np.testing.assert_array_equal(out, fitted.sampler.sample(37, seed=3))  # seeded
    if private:
        rep = fitted.privacy
        assert rep is not None and set(rep) >= {"epsilon", "delta", "accountant", "history"}
        assert 0 < rep["epsilon"] <= 50.0
        assert all(set(h) == {"noise_multiplier", "sample_rate", "steps"} for h in rep["history"])
    else:
        assert fitted.privacy is None


@pytest.mark.parametrize("name", ["medgan", "corgan"])
def test_dp_gan_history_composes_both_phases(tiny: np.ndarray, name: str) -> None:
    fitted = fit_baseline(name, tiny, epsilon=50.0, delta=1e-3, preset="smoke",
                          noise_multiplier=1.0)
    rep = fitted.privacy
    assert rep is not None and rep["phases"] == ["autoencoder", "discriminator"]
    assert len(rep["history"]) == 2 and all(h["steps"] > 0 for h in rep["history"])
    # q = expected batch / n (Poisson), the same in both phases
    assert all(math.isclose(h["sample_rate"], 16 / tiny.shape[0]) for h in rep["history"])


@pytest.mark.parametrize("name", BASELINES)
def test_dp_variant_refuses_past_budget(tiny: np.ndarray, name: str) -> None:
    calls: list[str] = []
    with pytest.raises(BudgetExceeded):
        fit_baseline(name, tiny, epsilon=0.05, delta=1e-3, preset="smoke",
                     noise_multiplier=0.5, progress=lambda *a: calls.append(a[0]))
    assert calls == []  # refused before any training step


def test_prior_spend_counts_against_budget(tiny: np.ndarray) -> None:
    spent = [Mechanism(0.6, 1.0, 1)]  # alone worth more than epsilon 1
    with pytest.raises(BudgetExceeded):
        fit_marginals(tiny, epsilon=1.0, delta=1e-5, prior_history=tuple(spent))
    with pytest.raises(BudgetExceeded):
        dp_sgd.plan_privacy(1.0, 1e-5, 100, 10, {"d": 10}, prior_history=spent)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1))


def _loss(out: torch.Tensor, _x: torch.Tensor) -> torch.Tensor:
    return (out.squeeze(-1) - 3.0) ** 2


def _per_example_grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    rows = []
    for xi in x:
        model.zero_grad()
        _loss(model(xi[None]), xi[None]).sum().backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return rows


def test_clipped_sum_matches_explicit_per_example_clipping() -> None:
    model = _mlp()
    x = torch.randn(9, 6) * 3
    C = 0.5
    rows = _per_example_grads(model, x)
    assert max(float(r.norm()) for r in rows) > C  # clipping is active
    expected = sum(r * min(1.0, C / (float(r.norm()) + 1e-6)) for r in rows)
    ghost = torch.cat([g.flatten() for g in dp_sgd._ghost_clipped_sum(model, _loss, x, C)])
    vm = torch.cat([g.flatten() for g in dp_sgd._vmap_clipped_sum(model, _loss, x, C)])
    torch.testing.assert_close(ghost, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vm, expected, rtol=1e-4, atol=1e-6)
    for xi in x:  # a single example's clipped gradient never exceeds C
        one = torch.cat([g.flatten() for g in dp_sgd.clipped_sum(model, _loss, xi[None], C)])
        assert float(one.norm()) <= C * (1 + 1e-5)


def test_private_gradient_noise_has_calibrated_scale() -> None:
    model = nn.Sequential(nn.Linear(50, 40))
    x = torch.zeros(0, 50)  # empty Poisson batch: the gradient is pure noise / (q n)
    sigma, C, expected = 1.7, 0.3, 25.0
    g = dp_sgd.private_gradient(model, _loss, x, max_grad_norm=C, noise_multiplier=sigma,
                                expected_batch=expected)
    flat = torch.cat([t.flatten() for t in g]) * expected
    n = flat.numel()
    assert n == 50 * 40 + 40
    # the noise comes from the OS source (unseeded): bounds of 5 standard errors (a false
    # alarm about once in 2 million runs; 0.05 sigma C, 2.3 standard errors, failed in CI):
    # the sample sd's relative error has sd 1/sqrt(2n), the mean's sd is sigma C / sqrt(n)
    assert abs(float(flat.std()) / (sigma * C) - 1) < 5 / math.sqrt(2 * n)
    assert abs(float(flat.mean())) < 5 * sigma * C / math.sqrt(n)


def test_dp_rejects_batch_coupling_layers() -> None:
    with pytest.raises(ValueError, match="batch-coupling"):
        dp_sgd.check_dp_compatible(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="batch-coupling"):
        dp_sgd.check_dp_compatible(Discriminator(5, (4,), minibatch_averaging=True))
    dp_sgd.check_dp_compatible(ConvAutoencoder(40, norm="group"))


def test_poisson_batches_have_rate_q() -> None:
    sizes = [len(b) for b in dp_sgd.poisson_batches(1000, 0.05, 400)]
    assert abs(np.mean(sizes) / 50 - 1) < 0.03
    assert np.std(sizes) > 3  # not fixed-size batches


@pytest.mark.parametrize("V", [1, 7, 24, 300, 1071, 2090])
def test_conv_autoencoder_sized_from_vocabulary(V: int) -> None:
    ae = ConvAutoencoder(V, latent_dim=16)
    x = torch.rand(3, V)
    assert ae.encode(x).shape == (3, 16)
    assert ae(x).shape == (3, V)
    assert conv_layout(V)[-1][1] == 1


@pytest.mark.parametrize("norm_kind", ["batch", "group"])
def test_conv_autoencoder_starts_at_a_public_output_prior(norm_kind: str) -> None:
    """corGAN's decoder shares one output bias across codes; from 0 it decoded p = 0.5 for every
    code and, at a CPU budget of pre-training steps, never learned that codes are rare (the
    benchmark's corGAN produced no codes at all). It starts at a constant instead."""
    torch.manual_seed(0)
    ae = ConvAutoencoder(300, latent_dim=16, norm=norm_kind)
    last = ae.decoder[-1]
    assert isinstance(last, nn.ConvTranspose1d)
    assert torch.allclose(torch.sigmoid(last.bias), torch.tensor([OUTPUT_PRIOR]), rtol=1e-4)
    x = (torch.rand(64, 300) < 0.01).float()
    with torch.no_grad():
        p = torch.sigmoid(ae(x))
    assert p.shape == (64, 300)
    assert float(p.mean()) < 0.05  # not 0.5: an untrained decoder already says codes are rare


def test_marginals_sensitivity_and_noise_scale() -> None:
    k = 4
    rng = np.random.default_rng(0)
    X = (rng.random((300, 30)) < 0.3).astype(np.uint8)
    clipped = clip_codes_secure(X, k)
    assert clipped.sum(1).max() <= k and np.all(clipped <= X)
    # brute force: removing any one patient moves (counts, n) by at most sqrt(k+1) in L2
    full = np.append(clipped.sum(0), clipped.shape[0])
    worst = max(np.linalg.norm(full - np.append(np.delete(clipped, i, 0).sum(0), 299))
                for i in range(300))
    assert worst <= l2_sensitivity(k) + 1e-12
    sd = 2.5
    draws = np.array([noisy_counts(clipped, sd)[0] for _ in range(400)])
    assert abs((draws - clipped.sum(0)).std() / sd - 1) < 0.03


def test_marginals_sigma_against_analytic_gaussian() -> None:
    """Independent check: the exact (eps, delta) of the Gaussian mechanism (Balle & Wang
    2018, Thm 8) at the calibrated sigma must give delta <= target and close to it."""
    eps, delta = 1.0, 1e-5
    X = np.zeros((1000, 10), dtype=np.uint8)
    res = fit_marginals(X, eps, delta, MarginalsConfig(max_codes=3))
    sigma = res.noise_sd / l2_sensitivity(3)
    exact = norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(
        -1 / (2 * sigma) - eps * sigma)
    assert exact <= delta * 1.02
    assert exact >= delta * 0.5
    assert math.isclose(sigma, calibrate_noise(eps, delta, 1.0, 1), rel_tol=1e-9)


def test_nonprivate_marginals_are_exact_prevalences(tiny: np.ndarray) -> None:
    res = fit_marginals(tiny)
    np.testing.assert_allclose(res.sampler.prevalence, tiny.mean(0))
    big = res.sampler.sample(20000, seed=0)
    np.testing.assert_allclose(big.mean(0), tiny.mean(0), atol=0.015)
