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

One-hot groups (whole records, ``ModelConfig.one_hot_groups``): a schema column is a group of
K tokens of which exactly one is 1, x0 = e_k. Under the same Gaussian noise the exact posterior
is the softmax generalisation of the binary one: log N(x; e_k, s^2 I) = (x_k - 1/2) / s^2 + a
term that is the same for every k, so

    P(x0 = e_k | x) = softmax_k( prior_k + (x_k - 1/2) / s^2 + F_k(x, s) ),

with ``prior_k`` = log of the category's prevalence. The network sees the group through that
softmax of the evidence; the loss of a group is its cross-entropy -log P(x0 = e_true | x) (0
when the value is missing: no token set). Codes outside the groups stay independent 0/1.

Numeric columns' groups are ordered tokens (``ModelConfig.ordinal_values``: each token's value
v_k on the schema's [-1, 1] scale). One-hot inputs alone make the network learn each value's
links separately, so a rare count (3 earlier inpatient stays) learns little from its
neighbours. For each numeric group j the network therefore also reads the expected value
m_j = sum_{k in j} P_k v_k under the evidence softmax, and emits one more output t_j that tilts
the group along the same scale, F_k += t_j v_k (an exponential-family tilt: a shift of the
group's mean value in one parameter). Both are fixed linear maps of public numbers, so the
posterior stays exact and the model's last layer still starts at zero (t = 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from fedsynth.common.config import ModelConfig
from fedsynth.common.model.edm import run_net, sample_sigma

DEFAULT_PREVALENCE = 0.005  # the prior when no (private) prevalence is available
MIN_PREVALENCE = 1e-5
EXP_FLOOR = -80.0  # OneHotGroups._shifted


def prior_logit(prevalence: np.ndarray | None, n_codes: int,
                groups: tuple[int, ...] = ()) -> Tensor:
    """logit of each code's prevalence, clipped to [1e-5, 1 - 1e-5]; a constant when None.
    In the one-hot ``groups`` (sizes, from column 0): log of the prevalence (a softmax's
    log-prior; a constant group when None)."""
    if prevalence is None:
        p = np.full(n_codes, DEFAULT_PREVALENCE)
    else:
        p = np.asarray(prevalence, dtype=np.float64)
        if p.shape != (n_codes,):
            raise ValueError(f"prevalence has shape {p.shape}, expected ({n_codes},)")
    p = np.clip(p, MIN_PREVALENCE, 1.0 - MIN_PREVALENCE)
    out = np.log(p / (1.0 - p))
    g = int(sum(groups))
    out[:g] = np.log(p[:g])
    return torch.as_tensor(out, dtype=torch.float32)


class OneHotGroups(nn.Module):
    """The grouped columns' softmax (module docstring), computed per group without padding:
    ``probs(z)``: the group softmax on the tokens, sigmoid on the codes; ``loss(z, x0)``: each
    group's cross-entropy plus the codes' binary cross-entropies, summed, (...,)."""

    def __init__(self, groups: tuple[int, ...], n_codes: int) -> None:
        super().__init__()
        if sum(groups) > n_codes or any(k < 1 for k in groups):
            raise ValueError(f"one-hot groups {groups} do not fit {n_codes} columns")
        self.n_grouped, self.n_groups = int(sum(groups)), len(groups)
        # numpy, not torch.repeat_interleave: store.py builds models on the meta device
        group_of = torch.as_tensor(np.repeat(np.arange(len(groups)), groups), dtype=torch.long)
        self.register_buffer("group_of", group_of, persistent=False)

    def _index(self, t: Tensor) -> Tensor:
        """Each grouped token's group, for ``t`` of shape (..., any): (..., n_grouped)."""
        return self.group_of.expand(*t.shape[:-1], self.n_grouped)

    def _shifted(self, zg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(m, e, s) of the grouped tokens' logits ``zg`` (..., n_grouped): each group's max m
        (..., G), e = exp(zg - m) (..., n_grouped) and each group's sum s of e (..., G)."""
        idx = self._index(zg)
        shape = (*zg.shape[:-1], self.n_groups)
        # the group's max (no gradient needed: the softmax does not depend on the shift)
        m = torch.full(shape, -torch.inf, dtype=zg.dtype, device=zg.device).scatter_reduce(
            -1, idx, zg.detach(), "amax")
        # z - m >= EXP_FLOOR: exp's vector path ends where its result leaves the normal floats
        # (x < -87.3 took 40x longer); e^-80 < 2e-35 beside the max's 1 changes no sum
        e = torch.exp((zg - m.gather(-1, idx)).clamp(min=EXP_FLOOR))  # gather: 5x [..., idx]
        s = torch.zeros(shape, dtype=zg.dtype, device=zg.device).scatter_add(-1, idx, e)
        return m, e, s

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(grouped tokens, codes) of ``z``: one split, whose gradient is one concatenation
        (two slices would each fill a zero tensor of z's size in the backward pass)."""
        return z.split([self.n_grouped, z.shape[-1] - self.n_grouped], dim=-1)

    def probs(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """``out``: written in place (same shape as z, no gradient) instead of a new tensor."""
        zg, zc = self._split(z)
        _, e, s = self._shifted(zg)
        s = s.gather(-1, self._index(s))
        if out is None:
            return torch.cat([e / s, torch.sigmoid(zc)], dim=-1)
        og, oc = self._split(out)
        torch.div(e, s, out=og)
        torch.sigmoid(zc, out=oc)
        return out

    def loss(self, z: Tensor, x0: Tensor) -> Tensor:
        """-log P(x0 = e_true) = lse_group - z_true summed over the groups that have a token
        (a missing value has none and adds 0), plus the codes' binary cross-entropies."""
        zg, zc = self._split(z)
        x0g, x0c = self._split(x0)
        bce = F.binary_cross_entropy_with_logits(zc, x0c, reduction="none")
        return _GroupCrossEntropy.apply(zg, x0g, self) + bce.sum(dim=-1)


class _GroupCrossEntropy(torch.autograd.Function):
    """The groups' summed cross-entropy of ``OneHotGroups.loss`` with its gradient written out:

        ce = sum_g present_g (m_g + log s_g) - sum_k x0_k z_k      (lse_g = m_g + log s_g)
        d ce / d z_k = present_{g(k)} e_k / s_{g(k)} - x0_k        (softmax_k = e_k / s_g)

    (present_g: 1 when group g has its token in x0, 0 for a missing value). The same numbers
    as autograd through ``_shifted``'s gathers and scatters, in one gather backward instead of
    their chain (``tests/test_model_binary.py`` compares both). The backward does not write
    into what it saved: Opacus' ghost clipping runs it twice on one graph."""

    @staticmethod
    def forward(ctx: Any, zg: Tensor, x0g: Tensor, groups: OneHotGroups) -> Tensor:
        m, e, s = groups._shifted(zg)
        present = torch.zeros_like(m).scatter_add(-1, groups._index(x0g), x0g)  # 1 per group
        ctx.save_for_backward(e, present / s, x0g)
        ctx.groups = groups
        return (present * (m + s.log())).sum(dim=-1) - (x0g * zg).sum(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        e, weight, x0g = ctx.saved_tensors
        softmax = e * weight.gather(-1, ctx.groups._index(e))  # present_g e_k / s_g
        return (softmax - x0g) * grad.unsqueeze(-1), None, None


def ordinal_groups(groups: tuple[int, ...],
                   values: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """(numeric group of each grouped token, its value v_k, number of numeric groups J): a
    numeric group is one of >= 2 tokens with a nonzero value; tokens of other groups get index
    J (a slot that is dropped) and value 0. O(tokens) memory, whatever a config claims."""
    g = int(sum(groups))
    if not values:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), 0
    if len(values) != g:
        raise ValueError(f"{len(values)} ordinal values for {g} grouped tokens")
    v = np.asarray(values, dtype=np.float32)
    group_of = np.repeat(np.arange(len(groups)), groups)
    nonzero = np.zeros(len(groups), dtype=bool)
    np.logical_or.at(nonzero, group_of, v != 0)
    numeric = nonzero & (np.asarray(groups) >= 2)
    J = int(numeric.sum())
    index = np.cumsum(numeric) - 1  # numeric group -> its slot 0..J-1
    slot = np.where(numeric[group_of], index[group_of], J).astype(np.int64)
    return slot, np.where(slot < J, v, 0.0).astype(np.float32), J


def network_width(n_codes: int, cfg: ModelConfig) -> int:
    """The MLP's input and output width: the codes, plus one per numeric group (its expected
    value in, its tilt out) when ``cfg.ordinal_values`` is set."""
    return n_codes + ordinal_groups(tuple(cfg.one_hot_groups), tuple(cfg.ordinal_values))[2]


class BinaryPosterior(nn.Module):
    """D(x; sigma) = sigmoid(ev + F(sigmoid(ev), ln(sigma)/4)), ev = prior + (x - 1/2)/sigma^2.

    ``forward(x, sigma)`` gives probabilities (the sampler's E[x0 | x]); ``forward(x, sigma,
    logits=True)`` the log-odds (the loss). Shapes as ``EDMPrecond``: x (..., n_codes), sigma
    broadcastable to (..., 1).
    """

    def __init__(self, net: nn.Module, prior: Tensor, groups: tuple[int, ...] = (),
                 ordinal: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.net = net
        self.groups = OneHotGroups(tuple(groups), len(prior)) if groups else None
        slot, value, self.n_ordinal = ordinal_groups(tuple(groups), tuple(ordinal))
        self.register_buffer("ordinal_slot", torch.as_tensor(slot), persistent=False)
        self.register_buffer("ordinal_value", torch.as_tensor(value), persistent=False)
        self.register_buffer("prior_logit", prior.detach().clone().float())
        # added to the output log-odds only (not to the network's input): set after training by
        # common.model.calibrate.calibrate_marginals, zero until then
        self.register_buffer("logit_offset", torch.zeros_like(self.prior_logit))
        out = getattr(net, "out", None)
        if isinstance(out, nn.Linear):  # F = 0 at the start: independent codes at the prior
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: Tensor, sigma: Tensor, logits: bool = False,
                dependency_scale: float = 1.0) -> Tensor:
        """``dependency_scale`` w: the network's term F enters as w F (sampling only,
        ``common.model.guidance``)."""
        sigma = sigma.to(x.dtype)
        while sigma.dim() < x.dim():
            sigma = sigma.unsqueeze(-1)
        with torch.no_grad():  # a function of the noisy x alone: nothing differentiates D in x
            ev = (x - 0.5).div_(sigma**2).add_(self.prior_logit.to(x.dtype))
            x_in = self._network_input(ev)
        h = run_net(self.net, x_in, sigma.log() / 4.0)
        if dependency_scale != 1.0:
            h = h * dependency_scale if h.requires_grad else h.mul_(dependency_scale)
        base = ev.add_(self.logit_offset)  # ev is not needed any more
        # training (h carries a gradient): out of place; sampling (no_grad): into base
        if self.n_ordinal:  # numeric groups: one tilt per group out (module docstring)
            v, g, n = self.ordinal_value.to(x.dtype), self.ordinal_value.shape[0], x.shape[-1]
            h_tokens, h_codes, t = h.split([g, n - g, self.n_ordinal], dim=-1)  # see _split
            slot = self.ordinal_slot.expand(*x.shape[:-1], g)
            h_tokens = h_tokens + F.pad(t, (0, 1)).gather(-1, slot) * v  # + t_j v_k on group j
            if h.requires_grad:
                out = torch.cat([base[..., :g] + h_tokens, base[..., g:] + h_codes], dim=-1)
            else:
                out = base
                out[..., :g] += h_tokens
                out[..., g:] += h_codes
        else:
            out = base + h if h.requires_grad else base.add_(h)
        if logits:
            return out
        if self.groups is not None and not h.requires_grad:  # sampling: into out's own memory
            return self.groups.probs(out, out=out)
        return self.probs(out)

    def _network_input(self, ev: Tensor) -> Tensor:
        """What the network reads: P(x0 | x) under the evidence ``ev`` alone (sigmoid; the
        group softmax over one-hot groups) and, for each numeric group j, its expected value
        m_j = sum_{k in j} P_k v_k (module docstring), written into one (..., n + J) tensor."""
        if self.groups is None:
            return torch.sigmoid(ev)
        n, J = ev.shape[-1], self.n_ordinal
        x_in = ev.new_empty(*ev.shape[:-1], n + J)
        p = self.groups.probs(ev, out=x_in[..., :n])
        if J:
            g = self.ordinal_value.shape[0]
            slot = self.ordinal_slot.expand(*ev.shape[:-1], g)
            x_in[..., n:] = torch.zeros(*ev.shape[:-1], J + 1, dtype=ev.dtype,
                                        device=ev.device).scatter_add(
                -1, slot, p[..., :g] * self.ordinal_value.to(ev.dtype))[..., :J]
        return x_in

    def probs(self, z: Tensor) -> Tensor:
        """P(x0_j = 1 | x) from the log-odds / group logits ``z``."""
        return torch.sigmoid(z) if self.groups is None else self.groups.probs(z)

    def nll(self, z: Tensor, x0: Tensor) -> Tensor:
        """Negative log-likelihood of the clean ``x0`` under ``z``, summed over codes and
        groups: shape ``z.shape[:-1]``."""
        if self.groups is None:
            return F.binary_cross_entropy_with_logits(z, x0, reduction="none").sum(dim=-1)
        return self.groups.loss(z, x0)


def per_example_bce(model: nn.Module, x: Tensor, cfg: ModelConfig, multiplicity: int = 1) -> Tensor:
    """Each example's loss: the sum over codes of the binary cross-entropy of its log-odds
    (over one-hot groups: their cross-entropy), averaged over ``multiplicity`` (sigma, noise)
    draws; shape (batch,). Summed, so a patient's gradient scale does not depend on how many
    codes are modelled."""
    b, d = x.shape
    k = int(multiplicity)
    x0 = x.unsqueeze(1).expand(b, k, d)
    sigma = sample_sigma((b, k, 1), cfg, x)
    out = model(x0 + torch.randn_like(x0) * sigma, sigma, logits=True)
    return _posterior(model).nll(out, x0).mean(dim=1)


def _posterior(model: nn.Module) -> BinaryPosterior:
    """The BinaryPosterior inside an Opacus wrapper (GradSampleModule's ``_module``)."""
    inner = getattr(model, "_module", model)
    if not isinstance(inner, BinaryPosterior):
        raise TypeError(f"the binary loss needs a BinaryPosterior, got {type(inner).__name__}")
    return inner
