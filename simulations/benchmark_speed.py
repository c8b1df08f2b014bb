"""The benchmark's speed section: DP-SGD vs non-private training of our model, sampling
throughput vs Heun steps, and the Flower round overhead of the federated runs.

A figure that cannot be measured becomes a sentence saying why, never an exception: the speed
section must not sink the table.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsynth.simulations.benchmark_data import Dataset
from fedsynth.simulations.benchmark_settings import BenchmarkSettings

SAMPLER_STEPS = (2, 5, 10, 20, 32)


@dataclass
class SpeedSection:
    """benchmark.json's ``speed`` object; each figure is its measurement or why it is missing."""

    dp_vs_nonprivate: dict[str, Any] | str
    sampler_steps: list[dict[str, float]] | str
    flower_round_overhead: dict[str, Any] | str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dp_speed(X: np.ndarray, full: bool) -> dict[str, Any]:
    """Examples/s of our model's training step: non-private vs Opacus DP-SGD with hooks,
    functorch and ghost clipping (``simulations.bench_dp_speed.time_mode``, the privacy
    engineer's measurement), same model (the DP defaults), data and batches, in one run."""
    from fedsynth.common.config import Config, PrivacyConfig
    from fedsynth.simulations.bench_dp_speed import MODES, time_mode

    pc = PrivacyConfig()
    cfg = Config().private_model()
    X = X[: 10_000 if full else 2_000]
    batch, steps = min(512, len(X)), (6 if full else 2)
    rows = [time_mode(mode, X, cfg, pc, batch, steps, seed=0) for mode in MODES]
    base = rows[0]["examples_per_s"]
    for r in rows:
        r["ratio"] = base / r["examples_per_s"]
    return {"rows": rows, "batch": batch, "steps": steps, "n_codes": int(X.shape[1]),
            "noise_multiplicity": pc.noise_multiplicity, "hidden": list(pc.hidden)}


def sampler_steps(ours: Any, full: bool) -> list[dict[str, float]] | str:
    """Records/s of our non-private model's sampler at several Heun step counts."""
    if ours is None or not hasattr(ours.sampler, "sample_continuous"):
        return "our non-private model was not trained in this run"
    n = 10_000 if full else 2000
    rows = []
    for steps in SAMPLER_STEPS:
        t0 = time.perf_counter()
        ours.sampler.sample_continuous(n, seed=0, steps=steps)
        rows.append({"steps": steps, "records_per_s": n / (time.perf_counter() - t0)})
    return rows


def flower_overhead(fed_dirs: list[str]) -> dict[str, Any] | str:
    """Round wall time minus local training time, from the first federated run that logged
    both (``baselines.ours.round_overhead``)."""
    from fedsynth.simulations.baselines.ours import round_overhead

    for d in fed_dirs:
        fl = round_overhead(d)
        if fl:
            return fl
    if not fed_dirs:
        return "no federated run in this benchmark"
    return "the federation's rounds.jsonl has no per-round wall and local-training times"


def speed_section(ours: Any, fed_dirs: list[str], ds: Dataset, s: BenchmarkSettings
                  ) -> SpeedSection:
    """All three figures; ``ours``: the fitted non-private central model (seed 0) or None,
    ``fed_dirs``: the federated runs' directories."""
    full = s.preset == "full"
    try:
        dp: dict[str, Any] | str = dp_speed(ds.train.X, full=full)
    except Exception as err:  # a speed figure must not sink the table
        dp = f"failed: {type(err).__name__}: {err}"
    return SpeedSection(dp_vs_nonprivate=dp, sampler_steps=sampler_steps(ours, full),
                        flower_round_overhead=flower_overhead(fed_dirs))
