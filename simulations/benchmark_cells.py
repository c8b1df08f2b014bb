"""One cell of the table: train one generator at one epsilon and seed, sample, score.

A failure becomes the cell's status instead of an exception, so one broken generator cannot
sink the whole table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.errors import BudgetExceeded
from fedsynth.simulations.baselines.aim import DidNotFinishError
from fedsynth.simulations.benchmark_data import Dataset
from fedsynth.simulations.benchmark_scores import Scores, score
from fedsynth.simulations.benchmark_settings import GENERATORS, BenchmarkSettings

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One (generator, epsilon, seed) result. ``status``: ``ok``, or ``n/a: ...``,
    ``refused: ...``, ``error: ...``, ``skipped: ...``, ``did not finish in N min (...)``
    (then nothing else is set)."""

    generator: str
    epsilon: float | None
    seed: int
    status: str = "ok"
    train_seconds: float | None = None
    sample_per_s: float | None = None
    privacy: dict[str, Any] | None = None  # the generator's privacy report; None: non-private
    scores: Scores | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. a federated run's directory

    def row(self) -> dict[str, Any]:
        """The cell as a benchmark.json row (privacy keys only for a private fit, the
        generator's extras prefixed ``extra_``)."""
        row: dict[str, Any] = {"generator": self.generator, "epsilon": self.epsilon,
                               "seed": self.seed, "status": self.status}
        if self.status != "ok":
            return row
        row["train_seconds"] = self.train_seconds
        row["sample_per_s"] = self.sample_per_s
        if self.privacy:
            row["epsilon_spent"] = released_epsilon(self.privacy)
            row["delta"] = self.privacy.get("delta") or self.privacy.get("released_delta")
            row["privacy"] = self.privacy
        if self.scores is not None:
            row.update(dataclasses.asdict(self.scores))
        row.update({f"extra_{k}": v for k, v in self.extra.items()})
        return row


def released_epsilon(report: dict[str, Any]) -> float | None:
    """Central reports carry 'epsilon'; federated ones the max over sites (each site's data
    is protected by its own budget, so the release is as private as its weakest site)."""
    for key in ("released_epsilon", "epsilon"):
        if isinstance(report.get(key), int | float):
            return float(report[key])
    sites = report.get("sites")
    if isinstance(sites, dict):
        vals = [v.get("epsilon") for v in sites.values() if isinstance(v, dict)]
        vals = [float(v) for v in vals if isinstance(v, int | float)]
        return max(vals) if vals else None
    return None


def fit_generator(name: str, ds: Dataset, eps: float | None, delta: float, seed: int,
                  s: BenchmarkSettings, workdir: Path) -> Any:
    """A ``baselines.registry.Fitted`` for any of ``GENERATORS`` (delta only when private)."""
    from fedsynth.simulations.baselines.ours import (
        FederatedOptions,
        fit_mst_federated,
        fit_ours,
        fit_ours_federated,
    )
    from fedsynth.simulations.baselines.registry import BASELINES, fit_baseline

    if name in BASELINES:
        return fit_baseline(name, ds.train.X, eps, delta if eps else None, seed=seed,
                            preset=s.preset, device=s.device)
    if name == "ours":
        return fit_ours(ds.train, eps, delta if eps else None, seed, s.preset, workdir, s.device)
    if name == "ours_federated":
        return fit_ours_federated(ds.train, eps, delta if eps else None, seed, s.preset, workdir,
                                  FederatedOptions(sites=s.sites, partition=s.partition))
    if name == "mst_federated":
        return fit_mst_federated(ds.train, eps, delta if eps else None, seed, workdir,
                                 FederatedOptions(sites=s.sites, partition=s.partition))
    raise ValueError(f"unknown generator {name!r} ({', '.join(GENERATORS)})")


def guarded_fit(cell: Cell, fit: Callable[[], Any]) -> Any:
    """``fit()``, or None with ``cell.status`` saying why it gave no generator."""
    try:
        return fit()
    except NotImplementedError as err:
        cell.status = f"n/a: {err}"
    except BudgetExceeded as err:
        cell.status = f"refused: {err}"
    except DidNotFinishError as err:  # its time budget ran out: the table says so
        cell.status = str(err)
    except Exception as err:  # one broken generator must not sink the whole table
        log.error("%s at eps=%s seed=%s failed: %s", cell.generator, cell.epsilon, cell.seed, err)
        log.debug("%s", traceback.format_exc())
        cell.status = f"error: {type(err).__name__}: {str(err)[:300]}"
    return None


def run_cell(name: str, eps: float | None, seed: int, ds: Dataset, s: BenchmarkSettings,
             delta: float, workdir: Path) -> tuple[Cell, Any]:
    """Train, sample ``s.n_synth`` records and score one cell; the fitted generator comes back
    too (the speed section times our non-private sampler), None when the fit failed."""
    cell = Cell(name, eps, seed)
    fitted = guarded_fit(cell, lambda: fit_generator(name, ds, eps, delta, seed, s, workdir))
    if fitted is None:
        return cell, None
    cell.train_seconds = fitted.train_seconds
    t0 = time.perf_counter()
    synth = np.asarray(fitted.sampler.sample(s.n_synth, seed=10_000 + seed), dtype=np.uint8)
    cell.sample_per_s = s.n_synth / max(time.perf_counter() - t0, 1e-9)
    cell.privacy = fitted.privacy
    cell.scores = score(synth, ds, s.audit_rows, seed)
    cell.extra = dict(fitted.extra)
    return cell, fitted
