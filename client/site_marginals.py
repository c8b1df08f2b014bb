"""What a hospital releases for federated MST (issue 17), as a plain function (no Flower here).

FLAIM-style (Maddock et al. 2024) with a stated simplification: each site measures its own
noisy marginals through its own ledger and the coordinator sums them; the tree is chosen by the
coordinator from the summed noisy two-way marginals (post-processing), not by an exponential
mechanism at each site. Two requests per run (``federation.protocol.MarginalsRequest``):

1. ``one-way``: the noisy (c_1..c_V, n) of the site's clipped rows (``privacy.marginals
   .release_one_way``), noise multiplier sigma_1 = sigma / sqrt(share), where sigma is the noise
   multiplier that would spend everything the plan leaves (min(target, the site's budget) after
   its whole ledger) on one Gaussian: the release takes rho_1 = share x rho, rho = 1/(2 sigma^2);
2. ``pairs``: the noisy co-counts of the codes the coordinator names (``release_pairs``), at the
   noise multiplier that spends everything the plan still leaves.

Gaussians compose as one Gaussian with the sum of their rho (exactly: their privacy-loss
distributions are Gaussian), so the two releases together reach the target; the ledger checks
each against the site's budget and records it BEFORE the release leaves. The coordinator chooses
k, the share and the codes: none of them changes the sensitivity bound (``privacy.marginals``),
and a request the plan has no epsilon left for is refused. Asked again for the same release in
the same run (a retried message), the site re-sends what it already released: no new spend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.client.site_training import (
    SiteData,
    keep_locally,
    keep_release,
    kept_release,
    plan_refusal,
    require_left,
)
from fedsynth.common.errors import BudgetExceeded
from fedsynth.federation.protocol import ONE_WAY, PAIRS, MarginalsRequest
from fedsynth.privacy.accountant import Mechanism, calibrate_noise
from fedsynth.privacy.marginals import (
    one_way_sensitivity,
    pair_sensitivity,
    release_one_way,
    release_pairs,
)

log = logging.getLogger(__name__)

MAX_CODES_PER_PATIENT = 64  # k above this is refused (the noise would drown every count)
MAX_PAIR_CODES = 2000  # at most this many codes in a pairs request (2M co-counts)


@dataclass
class SiteMarginals:
    """A site's answer to a marginals request: the release or a refusal."""

    site: str
    status: str  # ok | refused
    reason: str = ""
    counts: np.ndarray | None = None  # one-way: (V,) counts; pairs: triu co-counts of cols
    size: float | None = None  # one-way only: the noisy number of patients
    noise_std: float = 0.0
    privacy: dict[str, Any] = field(default_factory=dict)


def request_problem(req: MarginalsRequest, n_codes: int) -> str:
    """Why the request is malformed ("" when it is not)."""
    if req.stage not in (ONE_WAY, PAIRS):
        return f"unknown marginals stage {req.stage!r}"
    if not 2 <= req.max_codes <= MAX_CODES_PER_PATIENT:
        return f"max_codes must be in [2, {MAX_CODES_PER_PATIENT}] (got {req.max_codes})"
    if req.stage == ONE_WAY and not 0 < req.share <= 1:
        return f"share must be in (0, 1] (got {req.share})"
    if req.stage == PAIRS:
        cols = list(req.cols)
        if len(cols) < 2 or len(set(cols)) != len(cols) or len(cols) > MAX_PAIR_CODES:
            return f"pairs need 2 to {MAX_PAIR_CODES} distinct codes (got {len(cols)})"
        if min(cols) < 0 or max(cols) >= n_codes:
            return f"a code index is outside the vocabulary of {n_codes} codes"
    return ""


def site_marginals(data: SiteData, req: MarginalsRequest, ledger: Any, budget: float,
                   state_dir: str | Path | None = None) -> SiteMarginals:
    """The release of ``req`` (module docstring) or a refusal, recorded in ``ledger`` first."""
    plan = req.plan
    acc = plan.config.privacy.accountant
    n = int(data.train.shape[0])

    def refused(why: str) -> SiteMarginals:
        log.warning("site %s refuses the %s marginals: %s", data.site, req.stage, why)
        return SiteMarginals(data.site, "refused", why, privacy=ledger.report(None, budget, acc))

    why = plan_refusal(plan, ledger, n) or request_problem(req, data.train.shape[1])
    if why:
        return refused(why)
    folder = Path(state_dir) if state_dir is not None else Path(ledger.state_dir)
    key = hashlib.sha256(json.dumps([req.stage, req.max_codes, req.share, list(req.cols)])
                         .encode()).hexdigest()[:16]
    cache = folder / f"marginals-{data.site}-{plan.run_id}-{key}.npz"
    saved = kept_release(cache)
    if saved is not None:
        size = float(saved["size"][0]) if saved["size"].size else None
        return SiteMarginals(data.site, "ok", counts=saved["counts"], size=size,
                             noise_std=float(saved["noise_std"]),
                             privacy=ledger.report(None, budget, acc))
    delta = float(ledger.delta)
    target = min(plan.target_epsilon, budget)
    history = list(ledger.history)
    try:
        require_left(history, plan, budget, delta, f"the {req.stage} marginals")
        sigma = calibrate_noise(target, delta, 1.0, 1, acc, prior_history=history)
        if req.stage == ONE_WAY:
            sigma /= math.sqrt(req.share)  # rho_1 = share x rho
        mech = Mechanism(sigma, 1.0, 1)
        ledger.check(mech, budget, delta, acc)
    except (BudgetExceeded, ValueError) as err:
        return refused(str(err))
    k = int(req.max_codes)
    sens = one_way_sensitivity(k) if req.stage == ONE_WAY else pair_sensitivity(k)
    ledger.record(mech, plan.run_id, plan.round, note=f"MST {req.stage} marginals (Gaussian)",
                  max_grad_norm=sens, expected_batch=float(n))
    if req.stage == ONE_WAY:
        one = release_one_way(data.train, k, sigma)
        counts, size, sd = one.counts, one.size, one.noise_std
    else:
        pairs = release_pairs(data.train, np.asarray(req.cols), k, sigma)
        counts, size, sd = pairs.counts, None, pairs.noise_std
    keep_release(cache, counts=counts, size=np.array([] if size is None else [size]),
                 noise_std=np.array(sd))
    keep_locally(ledger, plan, budget, {
        "event": f"mst-{req.stage}", "run_id": plan.run_id, "round": plan.round,
        "n_train": n, "noise_multiplier": sigma, "noise_std": sd, "delta": delta})
    return SiteMarginals(data.site, "ok", counts=counts, size=size, noise_std=sd,
                         privacy=ledger.report(None, budget, acc))
