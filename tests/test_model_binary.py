"""The binary (Bayes posterior) denoiser: exact posterior when the network adds nothing, the
sampler reproduces known Bernoulli marginals and a known correlation, the BCE loss is per
example, and its output is already 0/1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm
from torch import nn

from fedsynth.common.config import ModelConfig
from fedsynth.common.model import build_model, edm_sigmas, heun_sample, per_example_loss
from fedsynth.common.model.binary import BinaryPosterior, OneHotGroups, prior_logit


class _Zero(nn.Module):
    """A 'network' that says nothing beyond the prior: F = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x) * self.w


def test_posterior_with_no_network_is_the_exact_bayes_posterior() -> None:
    # independent codes with prevalence p: P(x0 = 1 | x) = p N(x; 1, s^2) / (p N(x; 1, s^2)
    # + (1 - p) N(x; 0, s^2)), computed here with scipy, independently of the module's formula
    p = np.array([0.02, 0.3, 0.7])
    model = BinaryPosterior(_Zero(), prior_logit(p, 3)).double()
    rng = np.random.default_rng(0)
    for s in (0.05, 0.3, 1.0, 4.0):
        x = rng.normal(0.5, 1.0, size=(50, 3))
        like1, like0 = norm.pdf(x, 1.0, s), norm.pdf(x, 0.0, s)
        expected = p * like1 / (p * like1 + (1 - p) * like0)
        with torch.no_grad():
            got = model(torch.as_tensor(x), torch.full((50, 1), s, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_sampler_reproduces_independent_bernoulli_marginals() -> None:
    p = np.array([0.01, 0.1, 0.35, 0.8])
    model = BinaryPosterior(_Zero(), prior_logit(p, 4)).double()
    z = torch.randn(20000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = heun_sample(model, z, edm_sigmas(64, 0.02, 20.0, 7.0)).numpy()
    assert np.all((x < 1e-6) | (x > 1 - 1e-6))  # the output is already 0/1
    se = np.sqrt(p * (1 - p) / len(z))
    assert np.all(np.abs(x.mean(axis=0) - p) < 5 * se + 0.01)


def test_sampler_reproduces_a_known_correlation() -> None:
    # two codes, P(11) = 0.2, P(10) = P(01) = 0.05, P(00) = 0.7: the exact posterior of each code
    # given both noisy values, as a network output relative to the prior, through the module
    joint = {(1, 1): 0.2, (1, 0): 0.05, (0, 1): 0.05, (0, 0): 0.7}
    p1 = 0.25
    prior = prior_logit(np.array([p1, p1]), 2).double()

    class Exact(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
            self.sigma = 1.0

        def forward(self, q: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            # recover x from the naive posterior input: ev = logit(q) = prior + (x - 1/2)/s^2
            s = torch.exp(4 * c_noise)
            x = (torch.logit(q.clamp(1e-15, 1 - 1e-15)) - prior) * s**2 + 0.5
            lik = {a: torch.exp(-(x[:, :1] - a[0]) ** 2 / (2 * s**2)
                                - (x[:, 1:] - a[1]) ** 2 / (2 * s**2)) for a in joint}
            tot = sum(joint[a] * lik[a] for a in joint)
            post1 = (joint[(1, 1)] * lik[(1, 1)] + joint[(1, 0)] * lik[(1, 0)]) / tot
            post2 = (joint[(1, 1)] * lik[(1, 1)] + joint[(0, 1)] * lik[(0, 1)]) / tot
            post = torch.cat([post1, post2], dim=1).clamp(1e-12, 1 - 1e-12)
            ev = prior + (x - 0.5) / s**2
            return torch.logit(post) - ev + 0 * self.w

    model = BinaryPosterior(Exact(), prior.float()).double()
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = np.rint(heun_sample(model, z, edm_sigmas(64, 0.05, 10.0, 7.0)).numpy())
    both = float(np.mean(x[:, 0] * x[:, 1]))
    assert x.mean(axis=0) == pytest.approx([0.25, 0.25], abs=0.02)
    assert both == pytest.approx(0.2, abs=0.02)  # independent sampling would give 0.0625


def test_bce_loss_per_example_and_finite_at_tiny_sigma() -> None:
    cfg = ModelConfig(hidden=(16, 16), time_dim=8, p_mean=-6.0, p_std=0.5)  # sigma ~ 0.0025
    torch.manual_seed(0)
    model = build_model(6, cfg, np.full(6, 0.2))
    x = (torch.rand(5, 6) < 0.3).float()
    loss = per_example_loss(model, x, cfg, multiplicity=3)
    assert loss.shape == (5,) and torch.all(torch.isfinite(loss)) and torch.all(loss >= 0)
    # example 2's loss does not depend on example 0's data
    x2 = x.clone()
    x2[0] = 1 - x2[0]
    torch.manual_seed(1)
    a = per_example_loss(model, x, cfg, multiplicity=3)[2]
    torch.manual_seed(1)
    b = per_example_loss(model, x2, cfg, multiplicity=3)[2]
    assert a.item() == pytest.approx(b.item())


def test_prior_is_a_buffer_not_a_parameter() -> None:
    model = build_model(4, ModelConfig(hidden=(8,), time_dim=8), np.array([0.1, 0.2, 0.3, 0.0]))
    assert "prior_logit" in dict(model.named_buffers())
    assert "prior_logit" not in dict(model.named_parameters())
    assert torch.sigmoid(model.prior_logit)[:3].numpy() == pytest.approx([0.1, 0.2, 0.3])
    assert model.prior_logit[3].item() < -11  # prevalence 0 is clipped, not -inf


def test_one_hot_group_posterior_is_the_exact_bayes_posterior() -> None:
    # a 3-category group then one code: P(x0 = e_k | x) = p_k N(x_g; e_k, s^2 I) / sum_l (...),
    # computed here from the Gaussian densities of the whole group vector, independently of the
    # module's softmax; the code's posterior is still the binary one
    p = np.array([0.6, 0.3, 0.1, 0.2])
    model = BinaryPosterior(_Zero(), prior_logit(p, 4, (3,)), (3,)).double()
    rng = np.random.default_rng(0)
    eye = np.eye(3)
    for s in (0.05, 0.3, 1.0, 4.0):
        x = rng.normal(0.4, 1.0, size=(40, 4))
        logd = np.stack([np.log(p[k]) + norm.logpdf(x[:, :3], eye[k], s).sum(axis=1)
                         for k in range(3)], 1)
        expected_g = np.exp(logd - logsumexp(logd, axis=1, keepdims=True))
        l1 = np.log(p[3]) + norm.logpdf(x[:, 3], 1.0, s)
        l0 = np.log(1 - p[3]) + norm.logpdf(x[:, 3], 0.0, s)
        expected_c = np.exp(l1 - np.logaddexp(l1, l0))
        with torch.no_grad():
            got = model(torch.as_tensor(x), torch.full((40, 1), s, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(got[:, :3], expected_g, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got[:, 3], expected_c, rtol=1e-6, atol=1e-9)


def test_one_hot_group_loss_is_the_cross_entropy_and_sampling_keeps_one_hot() -> None:
    cfg = ModelConfig(hidden=(16,), time_dim=8, one_hot_groups=(3, 2))
    p = np.array([0.5, 0.3, 0.2, 0.9, 0.1, 0.25])
    model = build_model(6, cfg, p).double()
    x0 = torch.tensor([[0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.float64)
    s = torch.full((2, 1), 0.7, dtype=torch.float64)
    z = model(x0 + 0.3, s, logits=True)
    ce = (-torch.log_softmax(z[:, :3], -1)[torch.arange(2), torch.tensor([1, 0])]
          - torch.log_softmax(z[:, 3:5], -1) @ torch.tensor([1.0, 0.0], dtype=torch.float64)
          * torch.tensor([1.0, 0.0], dtype=torch.float64))  # row 2's second group: missing
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 5], x0[:, 5], reduction="none")
    np.testing.assert_allclose(model.nll(z, x0).detach().numpy(), (ce + bce).detach().numpy())
    noise = torch.randn(4000, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = heun_sample(model, noise, edm_sigmas(32, 0.02, 5.0, 7.0)).numpy()
    assert np.allclose(x[:, :3].sum(axis=1), 1.0, atol=1e-6)  # exactly one category
    se = np.sqrt(p[:3] * (1 - p[:3]) / 4000)
    assert np.all(np.abs(x[:, :3].mean(axis=0) - p[:3]) < 5 * se + 0.01)  # untrained: the prior


def test_group_loss_gradient_is_softmax_minus_the_one_hot_as_autograd_computes_it() -> None:
    # the loss's written-out backward against autograd through an independent per-group
    # log_softmax, with a missing value (row 1, group 2), logits far apart (the EXP_FLOOR
    # clamp) and a gradient that is not all ones; also torch's numerical gradcheck
    groups = (3, 4, 1)
    module = OneHotGroups(groups, 10).double()
    rng = np.random.default_rng(0)
    z = torch.as_tensor(rng.normal(0, 30, size=(5, 10))).requires_grad_()
    x0 = torch.zeros(5, 10, dtype=torch.float64)
    for row in range(5):
        x0[row, rng.integers(0, 3)] = 1.0
        if row != 1:
            x0[row, 3 + rng.integers(0, 4)] = 1.0
        x0[row, 7] = 1.0
    x0[:, 8:] = torch.as_tensor(rng.integers(0, 2, size=(5, 2)), dtype=torch.float64)
    weight = torch.as_tensor(rng.uniform(0.5, 2.0, size=5))
    (module.loss(z, x0) * weight).sum().backward()
    got = z.grad.clone()
    z.grad = None
    ref, start = torch.zeros(5, dtype=torch.float64), 0
    for k in groups:
        ref = ref - (torch.log_softmax(z[:, start:start + k], -1) * x0[:, start:start + k]).sum(-1)
        start += k
    ref = ref + torch.nn.functional.binary_cross_entropy_with_logits(
        z[:, 8:], x0[:, 8:], reduction="none").sum(-1)
    np.testing.assert_allclose(module.loss(z, x0).detach().numpy(), ref.detach().numpy(),
                               rtol=1e-12)
    (ref * weight).sum().backward()
    np.testing.assert_allclose(got.numpy(), z.grad.numpy(), rtol=1e-9, atol=1e-12)
    small = torch.as_tensor(rng.normal(0, 2, size=(5, 10))).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: module.loss(t, x0), (small,))
