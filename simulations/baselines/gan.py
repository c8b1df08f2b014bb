"""Training loop shared by medGAN and corGAN, non-private and DP.

Both papers: (1) pre-train an autoencoder on the real records (binary cross-entropy);
(2) train a GAN whose generator G maps noise to the autoencoder's code space and whose fake
records are ``sigmoid(decoder(G(z)))``; the discriminator D sees real records and fake ones;
the generator step updates G *and* the decoder (the decoder is fine-tuned through D).
medGAN uses the standard GAN loss (D: log D(x) + log(1 - D(fake)); G: -log D(fake)) and D with
minibatch averaging; corGAN uses the WGAN loss with weight clipping (Arjovsky et al. 2017).

DP variant (the standard DP-GAN construction; DP-SGD as in ``dp_sgd``): the two phases that
read real records run DP-SGD with Poisson sampling and the same (sigma, q):
- autoencoder pre-training: every step is a DP-SGD step on the autoencoder;
- D's update: per-example clipped, noised gradient of the real-record term, plus the ordinary
  gradient of the fake-record term (fake records are functions of earlier DP outputs only).
G's and the decoder's updates read only D, so they are post-processing. The accounted history
is both phases (``PrivacyPlan.history``); epsilon is their composition. Minibatch averaging and
batch norm on real data couple records and are switched off in the DP variant.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsynth.simulations.baselines.dp_sgd import (
    PrivacyPlan,
    add_to_grads,
    plan_privacy,
    poisson_batches,
    private_gradient,
)
from fedsynth.simulations.baselines.nets import (
    ConvAutoencoder,
    Discriminator,
    LinearAutoencoder,
    ResidualGenerator,
)

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""progress(phase, done, total), called now and then during training."""


@dataclass
class GANConfig:
    """Hyper-parameters of medGAN / corGAN and of their DP variants (``dp_*``)."""

    autoencoder: str = "linear"  # "linear" (medGAN) or "conv" (corGAN)
    loss: str = "gan"  # "gan" (medGAN) or "wgan" (corGAN, weight clipping)
    latent_dim: int = 128
    noise_dim: int = 128
    d_hidden: tuple[int, ...] = (256, 128)
    minibatch_averaging: bool = True
    ae_epochs: float = 100.0
    gan_epochs: float = 1000.0
    batch_size: int = 100
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3  # medGAN's L2 0.001
    g_every: int = 1  # generator step every g_every discriminator steps (WGAN: 5)
    clip_value: float = 0.01  # WGAN weight clipping
    threshold: float = 0.5  # sigmoid output >= threshold -> code present
    # DP variant: epochs, expected batch and per-example clipping norm of DP-SGD
    dp_ae_epochs: float = 10.0
    dp_gan_epochs: float = 30.0
    dp_batch_size: int = 512
    dp_lr: float = 2e-3
    max_grad_norm: float = 1.0
    accountant: str = "prv"

    def replace(self, **changes: object) -> GANConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class GANSampler:
    """A trained (DP or not) GAN: ``sample(n, seed) -> uint8 (n, n_codes)``.

    Generation uses the generator's batch statistics (batches of ``batch`` noise vectors).
    """

    def __init__(self, generator: nn.Module, autoencoder: nn.Module, threshold: float,
                 device: torch.device) -> None:
        self.generator = generator
        self.autoencoder = autoencoder
        self.threshold = threshold
        self.device = device

    @torch.no_grad()
    def probabilities(self, n: int, seed: int = 0, batch: int = 4096) -> np.ndarray:
        gen = torch.Generator().manual_seed(seed)
        self.generator.train()  # batch statistics, as during training
        self.autoencoder.eval()
        out = []
        for start in range(0, n, batch):
            m = min(batch, n - start)
            z = torch.randn(max(m, 2), self.generator.noise_dim, generator=gen).to(self.device)
            logits = self.autoencoder.decode_logits(self.generator(z))[:m]
            out.append(torch.sigmoid(logits).float().cpu().numpy())
        if not out:
            return np.zeros((0, self._n_codes()), dtype=np.float32)
        return np.concatenate(out)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        return (self.probabilities(n, seed) >= self.threshold).astype(np.uint8)

    def _n_codes(self) -> int:
        return int(self.autoencoder.decode_logits(
            torch.zeros(1, self.autoencoder.latent_dim, device=self.device)).shape[-1])


@dataclass
class GANResult:
    sampler: GANSampler
    privacy: dict[str, object] | None
    train_seconds: float
    losses: dict[str, float]


def build_autoencoder(n_codes: int, cfg: GANConfig, private: bool) -> nn.Module:
    if cfg.autoencoder == "linear":
        return LinearAutoencoder(n_codes, cfg.latent_dim)
    if cfg.autoencoder == "conv":
        return ConvAutoencoder(n_codes, cfg.latent_dim, norm="group" if private else "batch")
    raise ValueError(f"unknown autoencoder {cfg.autoencoder!r} (linear|conv)")


def _ae_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example binary cross-entropy summed over codes."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def _d_real_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-example discriminator loss on real records: -log D(x) or, WGAN, -D(x)."""
    if kind == "gan":
        return lambda out, _x: F.softplus(-out)
    return lambda out, _x: -out


def _d_fake_loss(kind: str, out: torch.Tensor) -> torch.Tensor:
    return F.softplus(out).mean() if kind == "gan" else out.mean()


def _g_loss(kind: str, out: torch.Tensor) -> torch.Tensor:
    return F.softplus(-out).mean() if kind == "gan" else -out.mean()


def _fake(gen: nn.Module, ae: nn.Module, m: int, noise_dim: int, device: torch.device
          ) -> torch.Tensor:
    z = torch.randn(max(m, 2), noise_dim, device=device)  # batch norm needs 2 rows
    return torch.sigmoid(ae.decode_logits(gen(z)))[:m]


def train_gan(
    X: np.ndarray,
    cfg: GANConfig,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    noise_multiplier: float | None = None,
    prior_history: tuple = (),
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> GANResult:
    """Train a medGAN/corGAN on the 0/1 matrix ``X``; DP-SGD when ``epsilon`` is given.

    The DP plan (sigma for the target epsilon, or the given ``noise_multiplier`` checked
    against it) is fixed before any record is read; past the budget: ``BudgetExceeded``.
    """
    if cfg.loss not in ("gan", "wgan"):
        raise ValueError(f"unknown loss {cfg.loss!r} (gan|wgan)")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"need a 2-D matrix with at least 2 records, got shape {X.shape}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, V = X.shape
    private = epsilon is not None
    plan: PrivacyPlan | None = None
    if private:
        if delta is None:
            raise ValueError("a private run needs delta")
        q = min(1.0, cfg.dp_batch_size / n)
        phases = {"autoencoder": max(1, round(cfg.dp_ae_epochs / q)),
                  "discriminator": max(1, round(cfg.dp_gan_epochs / q))}
        plan = plan_privacy(epsilon, delta, n, cfg.dp_batch_size, phases, noise_multiplier,
                            cfg.accountant, prior_history)
    start = time.perf_counter()
    data = torch.from_numpy(X.astype(np.float32)).to(dev)
    ae = build_autoencoder(V, cfg, private).to(dev)
    gen = ResidualGenerator(cfg.noise_dim).to(dev)
    if cfg.noise_dim != cfg.latent_dim:
        raise ValueError("G feeds the decoder: noise_dim must equal latent_dim")
    disc = Discriminator(V, cfg.d_hidden, cfg.minibatch_averaging and not private).to(dev)
    if private:
        assert plan is not None
        losses = _train_private(data, ae, gen, disc, cfg, plan, progress)
    else:
        losses = _train_plain(data, ae, gen, disc, cfg, rng, progress)
    seconds = time.perf_counter() - start
    sampler = GANSampler(gen, ae, cfg.threshold, dev)
    return GANResult(sampler, plan.report() if plan else None, seconds, losses)


def _adam(params: list[nn.Parameter], cfg: GANConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def _batches(n: int, batch: int, epochs: float, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    steps = max(1, round(epochs * n / batch))
    perm = rng.permutation(n)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = rng.permutation(n), 0
        yield perm[pos:pos + batch]
        pos += batch


def _gan_step_g(gen: nn.Module, ae: nn.Module, disc: nn.Module, opt_g: torch.optim.Optimizer,
                cfg: GANConfig, m: int, dev: torch.device) -> float:
    opt_g.zero_grad(set_to_none=True)
    loss = _g_loss(cfg.loss, disc(_fake(gen, ae, m, cfg.noise_dim, dev)))
    loss.backward()
    opt_g.step()
    return float(loss.detach())


def _clip_weights(disc: nn.Module, cfg: GANConfig) -> None:
    if cfg.loss == "wgan":
        with torch.no_grad():
            for p in disc.parameters():
                p.clamp_(-cfg.clip_value, cfg.clip_value)


def _train_plain(data: torch.Tensor, ae: nn.Module, gen: nn.Module, disc: nn.Module,
                 cfg: GANConfig, rng: np.random.Generator, progress: Progress | None
                 ) -> dict[str, float]:
    n = data.shape[0]
    batch = min(cfg.batch_size, n)
    dev = data.device
    opt_ae = _adam(list(ae.parameters()), cfg, cfg.lr)
    ae.train()
    ae_loss = float("nan")
    idxs = list(_batches(n, batch, cfg.ae_epochs, rng))
    for i, idx in enumerate(idxs):
        x = data[idx]
        opt_ae.zero_grad(set_to_none=True)
        loss = _ae_loss(ae(x), x).mean()
        loss.backward()
        opt_ae.step()
        ae_loss = float(loss.detach())
        if progress and i % 50 == 0:
            progress("autoencoder", i, len(idxs))
    opt_d = _adam(list(disc.parameters()), cfg, cfg.lr)
    opt_g = _adam([*gen.parameters(), *_decoder_params(ae)], cfg, cfg.lr)
    d_loss = g_loss = float("nan")
    idxs = list(_batches(n, batch, cfg.gan_epochs, rng))
    for i, idx in enumerate(idxs):
        x = data[idx]
        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = _fake(gen, ae, len(idx), cfg.noise_dim, dev)
        loss = _d_real_loss(cfg.loss)(disc(x), x).mean() + _d_fake_loss(cfg.loss, disc(fake))
        loss.backward()
        opt_d.step()
        _clip_weights(disc, cfg)
        d_loss = float(loss.detach())
        if i % cfg.g_every == 0:
            g_loss = _gan_step_g(gen, ae, disc, opt_g, cfg, len(idx), dev)
        if progress and i % 50 == 0:
            progress("gan", i, len(idxs))
    return {"autoencoder": ae_loss, "discriminator": d_loss, "generator": g_loss}


def _decoder_params(ae: nn.Module) -> list[nn.Parameter]:
    return list(ae.decoder.parameters())  # type: ignore[union-attr]


def _train_private(data: torch.Tensor, ae: nn.Module, gen: nn.Module, disc: nn.Module,
                   cfg: GANConfig, plan: PrivacyPlan,
                   progress: Progress | None) -> dict[str, float]:
    """DP-SGD on every step that touches real records; batches and noise are secret
    (``dp_sgd.poisson_batches``, ``dp_sgd.private_gradient``), not drawn from the seed."""
    n = data.shape[0]
    dev = data.device
    q, sigma, C = plan.sample_rate, plan.noise_multiplier, cfg.max_grad_norm
    expected = q * n
    opt_ae = _adam(list(ae.parameters()), cfg, cfg.dp_lr)
    ae.train()
    steps = plan.phases["autoencoder"]
    for i, idx in enumerate(poisson_batches(n, q, steps)):
        opt_ae.zero_grad(set_to_none=True)
        grads = private_gradient(ae, _ae_loss, data[idx], max_grad_norm=C,
                                 noise_multiplier=sigma, expected_batch=expected)
        add_to_grads(ae, grads)
        opt_ae.step()
        if progress and i % 20 == 0:
            progress("autoencoder (DP)", i, steps)
    opt_d = _adam(list(disc.parameters()), cfg, cfg.dp_lr)
    opt_g = _adam([*gen.parameters(), *_decoder_params(ae)], cfg, cfg.dp_lr)
    m = max(2, round(expected))
    real_loss = _d_real_loss(cfg.loss)
    g_loss = float("nan")
    steps = plan.phases["discriminator"]
    for i, idx in enumerate(poisson_batches(n, q, steps)):
        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = _fake(gen, ae, m, cfg.noise_dim, dev)
        _d_fake_loss(cfg.loss, disc(fake)).backward()  # no real record involved
        add_to_grads(disc, private_gradient(disc, real_loss, data[idx], max_grad_norm=C,
                                            noise_multiplier=sigma, expected_batch=expected))
        opt_d.step()
        _clip_weights(disc, cfg)
        if i % cfg.g_every == 0:
            g_loss = _gan_step_g(gen, ae, disc, opt_g, cfg, m, dev)
        if progress and i % 20 == 0:
            progress("gan (DP)", i, steps)
    return {"generator": g_loss}  # losses on real records would be unaccounted releases
