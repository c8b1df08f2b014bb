"""DP-SGD planning shared by the centralized DP trainer and a federated site.

Both plan the same way (Abadi et al. 2016, with Poisson subsampling):

- sample rate q = min(1, B / n): every one of the n rows joins a step's batch independently
  with probability q, so the expected batch is q n = B (capped at all rows);
- steps = ceil(E / q): E passes over the data in expectation (a step touches q n rows);
- noise multiplier sigma: the smallest one such that the whole history, the prior mechanisms
  plus ``steps`` more of the subsampled Gaussian ``Mechanism(sigma, q, steps)``, stays at or
  below the target epsilon at delta (``accountant.calibrate_noise``: binary search on the
  monotone map sigma -> epsilon of the composed history). A target the prior history alone
  reaches is a ``BudgetExceeded``: nothing may be trained.

What differs stays with the callers: the federated site's sample-rate override, its rule that
keeps the previous round's sigma and its ``MIN_LEFT`` refusal (``client.site_training``); the
private counts' share of the target (``client.private_train``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedsynth.common.errors import BudgetExceeded
from fedsynth.privacy.accountant import Mechanism, calibrate_noise


def poisson_rate(batch_size: float, n: int) -> float:
    """q = min(1, B / n), the Poisson sampling rate of an expected batch B out of n rows."""
    return min(1.0, batch_size / max(1, n))


def steps_for_epochs(epochs: float, sample_rate: float) -> int:
    """ceil(E / q), at least 1: E expected passes over the data at sampling rate q (the
    1e-9 keeps an exact ratio such as 2 / 0.25 from rounding up to 9 in floating point)."""
    return max(1, math.ceil(epochs / sample_rate - 1e-9))


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str, prior: Sequence[Mechanism] = (),
                     refusal: str = "cannot reach the target epsilon") -> float:
    """The smallest sigma with epsilon(prior + Mechanism(sigma, q, steps), delta) <= target
    (``accountant.calibrate_noise``); ``BudgetExceeded("<refusal>: <why>")`` when there is
    none (the prior already reaches the target, or the target is not positive)."""
    try:
        return calibrate_noise(target_epsilon, delta, sample_rate, steps, accountant,
                               prior_history=prior)
    except ValueError as err:
        raise BudgetExceeded(f"{refusal}: {err}") from None
