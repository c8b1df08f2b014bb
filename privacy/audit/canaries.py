"""White-box audit: canary patients, denoising-loss scores, and empirical epsilon lower bounds.

Protocol (Steinke, Nasr & Jagielski 2023, one training run): m canary patients with rare,
distinct code patterns; each is added to a site's training rows independently with probability
1/2 (``insert_canaries``). After training, every canary is scored by the model's own denoising
loss at a few fixed noise levels with fixed noise draws (``score_canaries``; a lower loss
means "included"). ``canary_audit`` turns scores into lower bounds on epsilon:

- one-run bound: guess "in" on the r/2 best-scored and "out" on the r/2 worst-scored canaries,
  count correct guesses v, ``one_run_epsilon(m, r, v)``; several r, Bonferroni-corrected;
- Clopper-Pearson bound (Jagielski et al. 2020): the threshold is chosen on a random half of the
  canaries and applied to the other half.

The reported eps_lb is the max of both, each run at alpha/2, so it holds with confidence
1 - alpha. eps_lb > the accountant's epsilon means an accounting or implementation bug.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsynth.common.atomic import atomic_path
from fedsynth.common.errors import InputError
from fedsynth.common.model.binary import BinaryPosterior
from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.membership import roc_summary
from fedsynth.privacy.bounds import clopper_pearson_epsilon, gdp_epsilon_estimate, one_run_epsilon

log = logging.getLogger(__name__)

MAX_THRESHOLDS = 200  # thresholds tried on the selection half
EDM_SIGMAS = (0.02, 0.05, 0.1)
BINARY_SIGMAS = (0.3, 0.6, 1.0)


def make_canaries(X: np.ndarray, m: int, n_codes: int, seed: int, tokens: int = 0) -> np.ndarray:
    """m distinct canary rows, each n_codes codes drawn from the rarer half of the vocabulary.
    ``tokens`` > 0: the first columns are a whole record's tokens (one-hot per schema column,
    ``common.data.record_tokens``): the codes are drawn after them and each canary's tokens are
    a random row's of X, so the canary stays a valid record (its rare codes make it one)."""
    rng = np.random.default_rng(seed)
    codes_X = np.asarray(X[:, tokens:], dtype=np.float64)
    prevalence = codes_X.mean(axis=0) if len(X) else np.zeros(codes_X.shape[1])
    pool = np.flatnonzero(prevalence <= np.median(prevalence))
    if len(pool) < 2 * n_codes:
        pool = np.argsort(prevalence, kind="stable")[: max(2 * n_codes, codes_X.shape[1] // 2)]
    pool = pool + tokens
    n_codes = min(n_codes, len(pool))
    rows: set[tuple[int, ...]] = set()
    canaries = np.zeros((m, X.shape[1]), dtype=np.uint8)
    i = 0
    while i < m:
        codes = tuple(sorted(rng.choice(pool, n_codes, replace=False).tolist()))
        if codes in rows:
            continue
        rows.add(codes)
        canaries[i, list(codes)] = 1
        i += 1
    if tokens and len(X):
        pick = np.random.default_rng([seed, 2]).integers(len(X), size=m)
        canaries[:, :tokens] = np.asarray(X, dtype=np.uint8)[pick, :tokens]
    return canaries


def insert_canaries(
    X: np.ndarray, m: int, seed: int, n_codes: int = AuditConfig.canary_codes, tokens: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X_with, canaries, included_mask): each of m canaries joins X with probability 1/2.

    The included canaries are appended after X's rows (training samples rows at random, so the
    position carries nothing); ``canaries`` (m, n_codes) and the boolean ``included_mask`` (m,)
    stay with the auditor. ``tokens``: whole records (``make_canaries``)."""
    X = np.asarray(X, dtype=np.uint8)
    canaries = make_canaries(X, m, n_codes, seed, tokens)
    included = np.random.default_rng([seed, 1]).random(m) < 0.5
    return np.vstack([X, canaries[included]]), canaries, included


def save_canaries(path: str | Path, canaries: np.ndarray, included: np.ndarray) -> None:
    """canaries + inclusion mask as .npz (atomic), for ``ehr-audit --canaries``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, canaries=np.asarray(canaries, np.uint8), included=np.asarray(included, bool))


def load_canaries(path: str | Path, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """(canaries, included) from ``save_canaries``; InputError when unreadable or mismatched."""
    try:
        with np.load(path, allow_pickle=False) as d:
            canaries, included = d["canaries"].astype(np.uint8), d["included"].astype(bool)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (KeyError, ValueError, OSError) as err:
        raise InputError(path, f"not a canary .npz ('canaries', 'included'): {err}") from None
    if canaries.ndim != 2 or canaries.shape[1] != n_codes or included.shape != (len(canaries),):
        raise InputError(path, f"canaries {canaries.shape} / mask {included.shape} do not match "
                               f"the model's {n_codes} codes")
    return canaries, included


def torch_module(model: Any) -> nn.Module:
    """The torch denoiser D(x, sigma) inside a Generator (or the module itself)."""
    if isinstance(model, nn.Module):
        return model
    for name in ("model", "module", "net", "denoiser", "precond"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return inner
    raise TypeError(f"cannot find the torch module inside {type(model).__name__}")


def model_sigma_data(model: Any, module: nn.Module) -> float:
    if hasattr(module, "sigma_data"):
        return float(module.sigma_data)
    for name in ("config", "model_cfg", "cfg", "model_config"):
        cfg = getattr(model, name, None)
        if cfg is not None and hasattr(cfg, "sigma_data"):
            return float(cfg.sigma_data)
    return 0.14


@torch.no_grad()
def denoising_losses(
    model: Any, X: np.ndarray, sigmas: tuple[float, ...] | None, draws: int = 8, seed: int = 0
) -> np.ndarray:
    """(n, len(sigmas)) per-row denoising loss, mean over ``draws`` fixed noise draws (the same
    draws for every row, so rows are compared like for like): the model's own training loss,
    the binary cross-entropy of its log-odds (binary parameterisation, summed over codes) or
    EDM's lambda(s) |D(x + s n; s) - x|^2 (mean over codes). Only the columns the model covers
    are scored (a Generator's ``modelled`` codes). ``sigmas`` None: the parameterisation's
    default noise levels (``audit_sigmas``)."""
    module = torch_module(model)
    binary = isinstance(module, BinaryPosterior)
    sigmas = tuple(sigmas) if sigmas else audit_sigmas(module)
    cols = getattr(model, "modelled", None)
    if cols is not None:
        X = np.asarray(X)[:, cols]
    sd = model_sigma_data(model, module)
    param = next(module.parameters())
    was_training = module.training
    module.eval()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((draws, X.shape[1]), generator=gen).to(param.device, param.dtype)
    out = np.zeros((len(X), len(sigmas)), dtype=np.float64)
    try:
        for start in range(0, len(X), 256):
            x = torch.as_tensor(np.asarray(X[start : start + 256]), dtype=param.dtype)
            x = x.to(param.device)
            x0 = x.unsqueeze(1).expand(-1, draws, -1)
            for j, s in enumerate(sigmas):
                sig = torch.full((x.shape[0], draws, 1), float(s), dtype=param.dtype,
                                 device=param.device)
                if binary:
                    logits = module(x0 + noise * s, sig, logits=True)
                    loss = F.binary_cross_entropy_with_logits(logits, x0, reduction="none")
                    row = loss.sum(dim=2).mean(dim=1)
                else:
                    err = (module(x0 + noise * s, sig) - x0) ** 2
                    row = (s**2 + sd**2) / (s * sd) ** 2 * err.mean(dim=(1, 2))
                out[start : start + x.shape[0], j] = row.cpu().numpy()
    finally:
        module.train(was_training)
    return out


def audit_sigmas(module: nn.Module) -> tuple[float, ...]:
    """Noise levels where memorisation shows: low noise for EDM's denoiser; for the binary
    posterior the evidence term decides every code by itself at low noise, so the levels where
    the network's own prediction of a code from the others carries the loss."""
    return BINARY_SIGMAS if isinstance(module, BinaryPosterior) else EDM_SIGMAS


def score_canaries(
    model: Any,
    canaries: np.ndarray,
    sigmas: tuple[float, ...] | None = AuditConfig.canary_sigmas,
    draws: int = AuditConfig.canary_draws,
    seed: int = 0,
) -> np.ndarray:
    """Membership score per canary (higher = more likely included): minus the mean over sigmas
    of the log denoising loss (logs put every noise level on one scale)."""
    losses = denoising_losses(model, canaries, tuple(sigmas), draws, seed)
    return -np.log(np.maximum(losses, 1e-12)).mean(axis=1)


def one_run_bound(
    scores: np.ndarray, included: np.ndarray, fractions: tuple[float, ...], alpha: float,
    delta: float = 0.0,
) -> dict:
    """Best one-run bound over r = fraction * m guesses, each tested at alpha / len(fractions)."""
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    a = alpha / len(fractions)
    rows = []
    for f in fractions:
        half = max(1, int(round(f * m / 2)))
        half = min(half, m // 2)
        guess_in, guess_out = order[:half], order[m - half :]
        v = int(included[guess_in].sum() + (~included[guess_out]).sum())
        eps = one_run_epsilon(m, 2 * half, v, a, delta)
        rows.append({"r": 2 * half, "correct": v, "eps_lb": eps})
    best = max(rows, key=lambda row: row["eps_lb"])
    return {"eps_lb": best["eps_lb"], "alpha": alpha, "m": m, "best": best, "by_r": rows}


def split_threshold_bound(
    scores: np.ndarray, included: np.ndarray, alpha: float, delta: float = 0.0, seed: int = 0
) -> dict:
    """Clopper-Pearson bound with the threshold chosen on one random half, applied to the other."""
    rng = np.random.default_rng([seed, 2])
    perm = rng.permutation(len(scores))
    pick, test = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    best_t, best_eps = math.inf, -1.0
    candidates = np.unique(scores[pick])
    if len(candidates) > MAX_THRESHOLDS:  # quantiles keep the search linear in the rows
        candidates = np.unique(np.quantile(scores[pick], np.linspace(0, 1, MAX_THRESHOLDS)))
    for t in candidates:
        c = _confusion(scores[pick], included[pick], t)
        eps = clopper_pearson_epsilon(*c, alpha=alpha, delta=delta)
        if eps > best_eps:
            best_t, best_eps = float(t), eps
    tp, fn, fp, tn = _confusion(scores[test], included[test], best_t)
    eps_lb = clopper_pearson_epsilon(tp, fn, fp, tn, alpha=alpha, delta=delta)
    # Gaussian-DP point estimate from the same rates (Nasr et al. 2023): an estimate, not a bound
    fpr, fnr = fp / max(fp + tn, 1), fn / max(tp + fn, 1)
    gdp = gdp_epsilon_estimate(fpr, fnr, delta if delta > 0 else 1e-5)
    return {"eps_lb": eps_lb, "alpha": alpha, "threshold": best_t,
            "tp": tp, "fn": fn, "fp": fp, "tn": tn, "gdp_estimate_not_a_bound": gdp}


def _confusion(scores: np.ndarray, included: np.ndarray, t: float) -> tuple[int, int, int, int]:
    guess = scores >= t
    tp = int((guess & included).sum())
    fp = int((guess & ~included).sum())
    return tp, int(included.sum()) - tp, fp, int((~included).sum()) - fp


def canary_audit(
    scores: np.ndarray,
    included: np.ndarray,
    eps_accountant: float | None = None,
    delta: float = 0.0,
    cfg: AuditConfig | None = None,
) -> dict:
    """eps_lb (confidence 1 - alpha) from canary scores, next to the accountant's epsilon.

    ``passed`` is False when eps_lb > eps_accountant: the privacy claim is refuted."""
    cfg = cfg or AuditConfig()
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or len(scores) < 4:
        raise ValueError("need one score per canary and at least 4 canaries")
    one_run = one_run_bound(scores, included, cfg.one_run_guess_fractions, cfg.alpha / 2, delta)
    cp = split_threshold_bound(scores, included, cfg.alpha / 2, delta, cfg.seed)
    eps_lb = max(one_run["eps_lb"], cp["eps_lb"])
    passed = eps_accountant is None or eps_lb <= eps_accountant
    if not passed:
        log.error("AUDIT FAILED: eps_lb %.3f > accountant epsilon %.3f", eps_lb, eps_accountant)
    return {
        "kind": "canaries",
        "m": int(len(scores)),
        "included": int(included.sum()),
        "eps_lb": eps_lb,
        "confidence": 1 - cfg.alpha,
        "eps_accountant": eps_accountant,
        "delta": delta,
        "passed": passed,
        "one_run": one_run,
        "clopper_pearson": cp,
        "roc": roc_summary(scores[included], scores[~included], cfg.roc_points),
    }


def loss_attack(
    model: Any,
    members: np.ndarray,
    non_members: np.ndarray,
    eps_accountant: float | None = None,
    delta: float = 0.0,
    cfg: AuditConfig | None = None,
) -> dict:
    """White-box loss attack on real members vs held-out patients (no canaries needed).

    A Clopper-Pearson bound (split threshold) is valid only if membership was decided at random
    (e.g. a random holdout split); it is far from tight on typical patients."""
    cfg = cfg or AuditConfig()
    rng = np.random.default_rng(cfg.seed)
    n = min(len(members), len(non_members), cfg.white_box_rows)
    mi = rng.choice(len(members), n, replace=False)
    ni = rng.choice(len(non_members), n, replace=False)
    rows = np.vstack([members[mi], non_members[ni]])
    included = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = score_canaries(model, rows, cfg.canary_sigmas, cfg.canary_draws, cfg.seed)
    cp = split_threshold_bound(scores, included, cfg.alpha, delta, cfg.seed)
    passed = eps_accountant is None or cp["eps_lb"] <= eps_accountant
    if not passed:
        log.error("AUDIT FAILED: eps_lb %.3f > accountant eps %.3f", cp["eps_lb"], eps_accountant)
    return {
        "kind": "loss_attack",
        "m": int(2 * n),
        "eps_lb": cp["eps_lb"],
        "confidence": 1 - cfg.alpha,
        "eps_accountant": eps_accountant,
        "delta": delta,
        "passed": passed,
        "clopper_pearson": cp,
        "roc": roc_summary(scores[included], scores[~included], cfg.roc_points),
    }
