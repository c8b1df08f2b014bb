"""Canaries: insertion protocol, denoising-loss scores, and the audit verdict they drive."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsynth.common.config import ModelConfig
from fedsynth.common.model.train import build_model
from fedsynth.privacy.audit.canaries import (
    audit_sigmas,
    canary_audit,
    denoising_losses,
    insert_canaries,
    make_canaries,
    score_canaries,
)
from fedsynth.privacy.audit.config import AuditConfig


def _data(n: int = 200, V: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.where(np.arange(V) < V // 2, 0.15, 0.002)
    return (rng.random((n, V)) < p).astype(np.uint8)


def test_insert_canaries_protocol() -> None:
    X = _data()
    X_with, canaries, included = insert_canaries(X, 200, seed=3, n_codes=6)
    assert canaries.shape == (200, X.shape[1]) and included.dtype == bool
    assert len({row.tobytes() for row in canaries}) == 200  # distinct patterns
    assert (canaries.sum(axis=1) == 6).all()
    assert 70 < included.sum() < 130  # each in with probability 1/2
    assert X_with.shape[0] == len(X) + included.sum()
    assert np.array_equal(X_with[: len(X)], X)
    assert np.array_equal(X_with[len(X):], canaries[included])
    # rare codes only: every canary code is in the rarer half of the vocabulary
    assert canaries[:, : X.shape[1] // 2].sum() == 0
    again = insert_canaries(X, 200, seed=3, n_codes=6)
    assert np.array_equal(again[2], included) and np.array_equal(again[1], canaries)


class Memoriser(nn.Module):
    """D(x; sigma): pulls x to the nearest remembered row (a model that memorised its data)."""

    def __init__(self, rows: np.ndarray) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.as_tensor(rows, dtype=torch.float32), requires_grad=False)
        self.sigma_data = 0.14

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x.reshape(-1, x.shape[-1]), self.rows)
        return self.rows[d.argmin(dim=1)].reshape(x.shape)


def test_memorised_canaries_break_a_false_claim() -> None:
    X = _data()
    _, canaries, included = insert_canaries(X, 120, seed=1)
    model = Memoriser(np.vstack([X, canaries[included]]))
    scores = score_canaries(model, canaries, sigmas=(0.05, 0.1), draws=2)
    assert scores[included].min() > scores[~included].max()  # lower loss -> "in"
    res = canary_audit(scores, included, eps_accountant=0.5, delta=1e-5)
    assert res["eps_lb"] > 1.5 and res["passed"] is False
    assert res["one_run"]["best"]["correct"] == res["one_run"]["best"]["r"]
    assert res["roc"]["auroc"] == 1.0


def test_random_scores_never_refute_a_claim() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(400) < 0.5
    failures = 0
    for seed in range(10):
        scores = np.random.default_rng(seed).normal(size=400)
        res = canary_audit(scores, included, eps_accountant=0.1, cfg=AuditConfig(seed=seed))
        failures += not res["passed"]
    assert failures <= 1


@torch.no_grad()
def test_denoising_loss_matches_the_edm_formula() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, parameterization="edm")
    model = build_model(10, cfg)
    X = make_canaries(np.zeros((5, 10), dtype=np.uint8), 4, 3, seed=0)
    got = denoising_losses(model, X, sigmas=(0.1, 1.0), draws=3, seed=7)
    noise = torch.randn((3, 10), generator=torch.Generator().manual_seed(7))
    x = torch.as_tensor(X, dtype=torch.float32)
    for j, s in enumerate((0.1, 1.0)):
        for i in range(len(X)):
            total = 0.0
            for k in range(3):
                den = model(x[i : i + 1] + s * noise[k : k + 1], torch.tensor([[s]]))
                total += float(((den - x[i]) ** 2).mean())
            weight = (s**2 + 0.14**2) / (s * 0.14) ** 2
            assert abs(got[i, j] - weight * total / 3) < 1e-4 * max(1.0, got[i, j])


@torch.no_grad()
def test_denoising_loss_of_the_binary_model_is_its_cross_entropy() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8)
    model = build_model(10, cfg, np.full(10, 0.2))
    torch.nn.init.normal_(model.net.out.weight, std=0.5)  # a network that says something
    X = make_canaries(np.zeros((5, 10), dtype=np.uint8), 4, 3, seed=0)
    got = denoising_losses(model, X, sigmas=None, draws=3, seed=7)
    noise = torch.randn((3, 10), generator=torch.Generator().manual_seed(7))
    x = torch.as_tensor(X, dtype=torch.float32)
    for j, s in enumerate(audit_sigmas(model)):
        for i in range(len(X)):
            total = 0.0
            for k in range(3):
                p = model(x[i : i + 1] + s * noise[k : k + 1], torch.tensor([[s]]))[0]
                # -sum_j [x log p + (1 - x) log (1 - p)], written out
                total += float(-(x[i] * p.log() + (1 - x[i]) * (1 - p).log()).sum())
            assert got[i, j] == pytest.approx(total / 3, rel=1e-4)


def test_split_threshold_gdp_estimate_is_reported_apart_from_the_bound() -> None:
    from fedsynth.privacy.audit.canaries import split_threshold_bound

    rng = np.random.default_rng(0)
    included = rng.random(400) < 0.5
    scores = included + rng.normal(scale=0.8, size=400)
    res = split_threshold_bound(scores, included, alpha=0.05)
    assert 0 < res["eps_lb"] < res["gdp_estimate_not_a_bound"]
    assert res["tp"] + res["fn"] + res["fp"] + res["tn"] == 200
