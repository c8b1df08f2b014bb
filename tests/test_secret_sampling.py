"""Issue 14, item 1, tried as the coordinator: from everything it chose (plan seed, site, run id,
round) it must not be able to rebuild a site's DP-SGD batches nor its noise."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from fedsynth.client.dp_training import dp_step, make_private, train_dp
from fedsynth.common.config import ModelConfig, PrivacyConfig, TrainConfig
from fedsynth.common.model import build_model
from fedsynth.privacy import secure_random
from fedsynth.simulations.baselines import dp_marginals, dp_sgd

TINY = ModelConfig(hidden=(32, 32), time_dim=16, sample_steps=4)
ROOT = Path(__file__).resolve().parents[1]
N, Q, STEPS = 300, 0.1, 15


def _coordinator_seed(plan_seed: int, site: str, run_id: str, rnd: int) -> int:
    """What the coordinator computes for a site's round (client/site_training.py before issue 14:
    the site's ``train_cfg.seed``)."""
    digest = hashlib.sha256(f"{plan_seed}:{site}:{run_id}:{rnd}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((N, 12)) < np.linspace(0.05, 0.6, 12)).astype(np.uint8)


def _train(seed: int, noise_multiplier: float = 1.0, steps: int = STEPS) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(12, TINY)
    res = train_dp(model, _data(), model_cfg=TINY, train_cfg=TrainConfig(lr=2e-3, seed=seed),
                   privacy_cfg=PrivacyConfig(noise_multiplicity=2),
                   noise_multiplier=noise_multiplier, sample_rate=Q, steps=steps)
    return res.state_dict


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every Poisson mask the training draws, as it ran."""
    masks: list[np.ndarray] = []
    real = secure_random.poisson_mask

    def wrapper(n: int, q: float) -> np.ndarray:
        masks.append(real(n, q))
        return masks[-1]

    monkeypatch.setattr(secure_random, "poisson_mask", wrapper)
    return masks


def _chance_bound(total: int, q: float) -> float:
    """Upper end of |A_t & B_t| summed over steps when B is independent of A: each of the
    ``total`` rows of A is in B with probability q (binomial mean + 6 sd)."""
    return q * total + 6.0 * np.sqrt(total * q * (1 - q))


def test_batches_are_not_rebuilt_from_the_coordinators_seed(recorded: list[np.ndarray]) -> None:
    seed = _coordinator_seed(0, "A", "run1", 1)
    _train(seed)
    first = list(recorded)
    recorded.clear()
    _train(seed)  # same seed, config, plan and data
    second = list(recorded)
    assert len(first) == len(second) == STEPS
    total = int(sum(m.sum() for m in first))
    assert total > 0.5 * N * Q * STEPS
    # 1. the same plan draws different batches, overlapping only by chance
    same = int(sum((a & b).sum() for a, b in zip(first, second, strict=True)))
    assert same < _chance_bound(total, Q), (same, total)
    # 2. the coordinator's reconstruction (the old recipe) finds nothing beyond chance
    gen = torch.Generator().manual_seed(seed + 7919)
    rebuilt = [(torch.rand(N, generator=gen) < Q).numpy() for _ in range(STEPS)]
    hit = int(sum((a & r).sum() for a, r in zip(first, rebuilt, strict=True)))
    assert hit < _chance_bound(total, Q), (hit, total)
    # ... nor does seeding torch/numpy globally with the seed (a first try at reproducing)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    again = [secure_random.poisson_mask(N, Q) for _ in range(STEPS)]
    hit = int(sum((a & r).sum() for a, r in zip(first, again, strict=True)))
    assert hit < _chance_bound(total, Q)


def test_noise_is_not_reproducible_from_any_seed_the_coordinator_sets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Same weights, data, seed and the identical batch at every step: with the noise source
    pinned (what a seed would do) the two runs agree to the bit, so everything else is seeded;
    with the real source they differ. No seed the coordinator sets reproduces the noise."""
    fixed = np.zeros(N, dtype=bool)
    fixed[::7] = True
    monkeypatch.setattr(secure_random, "poisson_mask", lambda n, q: fixed.copy())
    seed = _coordinator_seed(0, "A", "run1", 1)
    a, b = _train(seed, steps=3), _train(seed, steps=3)
    diff = float(torch.cat([(a[k] - b[k]).flatten() for k in a]).norm())
    real = secure_random.torch_generator
    monkeypatch.setattr(secure_random, "torch_generator",
                        lambda device="cpu": torch.Generator().manual_seed(seed))
    a0, b0 = _train(seed, steps=3), _train(seed, steps=3)
    for k in a0:
        torch.testing.assert_close(a0[k], b0[k], rtol=0, atol=0)
    moved = float(torch.cat([(a0[k] - a[k]).flatten() for k in a]).norm())
    assert diff > 0.5 * moved > 0  # the two real runs differ as much as any two noise draws
    monkeypatch.setattr(secure_random, "torch_generator", real)


def test_dp_step_noise_differs_between_identical_steps() -> None:
    """Two private optimizers built the same way (same torch seed) and one step on the same batch:
    the noise differs, and so does it between two steps of one optimizer."""
    def zero_loss(module: torch.nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return module(xb).sum(dim=1) * 0.0

    noises = []
    for _ in range(2):
        torch.manual_seed(0)
        model = torch.nn.Linear(50, 20)
        parts = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0),
                             noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1, n_rows=100)
        for xb in (torch.ones(5, 50), torch.ones(5, 50), torch.zeros(0, 50)):
            dp_step(parts, zero_loss, xb)
            noises.append(torch.cat([p.grad.flatten() for p in parts.module.parameters()]))
    flat = torch.stack(noises)
    corr = np.corrcoef(flat.numpy())
    off = corr[~np.eye(len(noises), dtype=bool)]
    assert np.abs(off).max() < 0.2  # 1020 coordinates: independent draws correlate ~ +-0.03


def test_poisson_mask_inclusion_rate_and_independence() -> None:
    n, draws, q = 2000, 200, 0.05
    M = np.stack([secure_random.poisson_mask(n, q) for _ in range(draws)])
    assert M.dtype == bool and M.shape == (draws, n)
    # rate: binomial test on all inclusions
    assert stats.binomtest(int(M.sum()), M.size, q).pvalue > 1e-4
    # every row included at rate q (no row favoured): chi-square of the per-row counts
    per_row = M.sum(0)
    chi2 = float(((per_row - draws * q) ** 2).sum() / (draws * q * (1 - q)))
    assert stats.chi2.sf(chi2, n - 1) > 1e-4 and stats.chi2.cdf(chi2, n - 1) > 1e-4
    # independence: neighbouring rows, and the same row in consecutive draws, together at q^2
    pairs = [(M[:, :-1] & M[:, 1:]), (M[:-1] & M[1:])]
    for both in pairs:
        assert stats.binomtest(int(both.sum()), both.size, q * q).pvalue > 1e-4
    # batch sizes vary as a binomial (Poisson sampling, not a fixed batch)
    assert np.std(M.sum(1)) == pytest.approx(np.sqrt(n * q * (1 - q)), rel=0.25)


def test_poisson_mask_edges() -> None:
    assert secure_random.poisson_mask(50, 1.0).all()
    assert not secure_random.poisson_mask(50, 0.0).any()
    assert secure_random.poisson_mask(0, 0.3).shape == (0,)
    with pytest.raises(ValueError):
        secure_random.poisson_mask(5, 1.5)
    with pytest.raises(ValueError):
        secure_random.poisson_mask(5, float("nan"))


def test_torch_generator_state_is_secret_and_full() -> None:
    """``manual_seed`` on CPU keeps 32 bits (why it is not used); the generator's 624-word state
    is drawn whole, is new each time, and ignores torch's global seed."""
    a = torch.Generator().manual_seed(5)
    b = torch.Generator().manual_seed(5 + 2**32)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    torch.manual_seed(0)
    g1 = secure_random.torch_generator()
    torch.manual_seed(0)
    g2 = secure_random.torch_generator()
    w1 = g1.get_state().numpy()[24:24 + 8 * 624].view("<u8")
    w2 = g2.get_state().numpy()[24:24 + 8 * 624].view("<u8")
    assert (w1 != w2).sum() > 600 and len(np.unique(w1)) > 600
    z1, z2 = torch.normal(0.0, 1.0, (20000,), generator=g1), torch.normal(0.0, 1.0, (20000,),
                                                                            generator=g2)
    assert abs(float(torch.corrcoef(torch.stack([z1, z2]))[0, 1])) < 0.05
    assert float(z1.std()) == pytest.approx(1.0, abs=0.03)


def test_gaussian_from_urandom_matches_the_normal_law() -> None:
    z = secure_random.gaussian((400, 100), 2.5)
    assert z.shape == (400, 100)
    assert stats.kstest(z.ravel() / 2.5, "norm").pvalue > 1e-4
    assert not np.array_equal(secure_random.gaussian(7), secure_random.gaussian(7))
    assert secure_random.gaussian(3, 0.0).tolist() == [0.0, 0.0, 0.0]


def test_baselines_draw_secret_batches_and_noise() -> None:
    a = list(dp_sgd.poisson_batches(500, 0.2, 5))
    b = list(dp_sgd.poisson_batches(500, 0.2, 5))
    same = sum(np.intersect1d(x, y).size for x, y in zip(a, b, strict=True))
    assert same < _chance_bound(sum(x.size for x in a), 0.2)
    X = (np.random.default_rng(0).random((200, 10)) < 0.3).astype(np.uint8)
    one = dp_marginals.fit_marginals(X, epsilon=1.0, delta=1e-5, seed=0)
    two = dp_marginals.fit_marginals(X, epsilon=1.0, delta=1e-5, seed=0)
    assert not np.array_equal(one.sampler.prevalence, two.sampler.prevalence)


def test_no_configuration_reaches_the_test_only_seeds() -> None:
    """``noise_seed`` (tests only) appears in no config, CLI, plan, app or simulation code: only
    in client/dp_training.py, which takes it, and in tests."""
    hits = []
    for path in [p for d in ("client", "common", "privacy", "server", "simulations")
                 for p in (ROOT / d).glob("**/*.py")]:
        rel = path.relative_to(ROOT)
        if str(rel) == "client/dp_training.py":
            continue
        if re.search(r"noise_seed|batch_source|fixed_noise", path.read_text(encoding="utf-8")):
            hits.append(str(rel))
    assert not hits, f"test-only noise seed reachable from {hits}"
    # and no DP randomness drawn from a seeded generator in the private paths
    for rel in ("client/dp_training.py", "simulations/baselines/dp_sgd.py"):
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert "7919" not in text and "torch.rand(" not in text, rel
