"""The denoiser for 0/1 codes as a Bayes posterior (``ModelConfig.parameterization="binary"``).

EHRDiff's denoiser D(x; s) = c_skip x + c_out F regresses the clean code vector like any real
signal. For 0/1 codes the posterior mean has an exact form. With x = x0 + s e (e ~ N(0, I)) and
x0_j in {0, 1}, x_j depends on x0 only through x0_j, so Bayes' rule splits the log-odds into the
evidence of code j's own noisy value and what the other codes say:

    logit P(x0_j = 1 | x) = (x_j - 1/2) / s^2  +  logit P(x0_j = 1 | x_-j)
                          = ev_j(x, s) + F_j(x, s),   ev_j = prior_j + (x_j - 1/2) / s^2

(the Gaussian likelihood ratio N(x_j; 1, s^2) / N(x_j; 0, s^2) = exp((x_j - 1/2) / s^2)).
The network F learns the second term relative to a prior log-odds; it sees every code through
its naive posterior sigmoid(ev_j), a [0, 1] input at every noise level. D = sigmoid(ev + F)
is E[x0 | x], what the EDM sampler needs; at small s the evidence term makes D exactly 0/1,
so the sampler's output is already binary and EHRDiff's round-at-0.5 output step needs no
threshold fitted to data. Trained with the per-code binary cross-entropy (a proper scoring rule
for P(x0_j = 1 | x)), noise levels drawn as in EDM (ln s ~ N(P_mean, P_std^2)).

``prior_j`` = logit of code j's prevalence: the training prevalence for the non-private model,
the private (noisy-count) prevalence under DP, a constant fixed in advance otherwise. It is a
buffer (saved with the weights, identical at every site, never trained). The network's last
layer starts at zero, so an untrained (or noise-drowned DP) model is independent per-code
sampling at the prior, and training adds the dependencies between codes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsynth.common.config import ModelConfig
from fedsynth.common.model.edm import run_net, sample_sigma

DEFAULT_PREVALENCE = 0.005  # the prior when no (private) prevalence is available
MIN_PREVALENCE = 1e-5


def prior_logit(prevalence: np.ndarray | None, n_codes: int) -> Tensor:
    """logit of each code's prevalence, clipped to [1e-5, 1 - 1e-5]; a constant when None."""
    if prevalence is None:
        p = np.full(n_codes, DEFAULT_PREVALENCE)
    else:
        p = np.asarray(prevalence, dtype=np.float64)
        if p.shape != (n_codes,):
            raise ValueError(f"prevalence has shape {p.shape}, expected ({n_codes},)")
    p = np.clip(p, MIN_PREVALENCE, 1.0 - MIN_PREVALENCE)
    return torch.as_tensor(np.log(p / (1.0 - p)), dtype=torch.float32)


class BinaryPosterior(nn.Module):
    """D(x; sigma) = sigmoid(ev + F(sigmoid(ev), ln(sigma)/4)), ev = prior + (x - 1/2)/sigma^2.

    ``forward(x, sigma)`` gives probabilities (the sampler's E[x0 | x]); ``forward(x, sigma,
    logits=True)`` the log-odds (the loss). Shapes as ``EDMPrecond``: x (..., n_codes), sigma
    broadcastable to (..., 1).
    """

    def __init__(self, net: nn.Module, prior: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("prior_logit", prior.detach().clone().float())
        # added to the output log-odds only (not to the network's input): set after training by
        # common.model.calibrate.calibrate_marginals, zero until then
        self.register_buffer("logit_offset", torch.zeros_like(self.prior_logit))
        out = getattr(net, "out", None)
        if isinstance(out, nn.Linear):  # F = 0 at the start: independent codes at the prior
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: Tensor, sigma: Tensor, logits: bool = False) -> Tensor:
        sigma = sigma.to(x.dtype)
        while sigma.dim() < x.dim():
            sigma = sigma.unsqueeze(-1)
        ev = self.prior_logit.to(x.dtype) + (x - 0.5) / sigma**2
        out = ev + run_net(self.net, torch.sigmoid(ev), sigma.log() / 4.0) + self.logit_offset
        return out if logits else torch.sigmoid(out)


def per_example_bce(model: nn.Module, x: Tensor, cfg: ModelConfig, multiplicity: int = 1) -> Tensor:
    """Each example's loss: the sum over codes of the binary cross-entropy of its log-odds,
    averaged over ``multiplicity`` (sigma, noise) draws; shape (batch,). Summed over codes, so
    a patient's gradient scale does not depend on how many codes are modelled."""
    b, d = x.shape
    k = int(multiplicity)
    x0 = x.unsqueeze(1).expand(b, k, d)
    sigma = sample_sigma((b, k, 1), cfg, x)
    out = model(x0 + torch.randn_like(x0) * sigma, sigma, logits=True)
    bce = F.binary_cross_entropy_with_logits(out, x0, reduction="none")
    return bce.sum(dim=2).mean(dim=1)
