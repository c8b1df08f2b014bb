"""Our model as a benchmark entry, next to the baselines: same ``Fitted`` interface.

- ``ours``: EHRDiff-style diffusion model trained centrally, non-private
  (``common.model.central.train_centralized``) or with DP-SGD
  (``client.private_train.train_centralized_private``, the private-training engineer's code);
- ``ours_federated``: the same model trained by ``ehr-simulate`` (the real Flower simulation)
  over ``sites`` non-IID sites (``--partition dirichlet:0.5``) at the same per-site epsilon; the
  benchmark's training matrix is written to a temporary matrix file and passed with
  ``--format matrix``. Federation is always DP: there is no non-private federated row.
- ``mst_federated``: federated MST (``ehr-simulate --generator mst``) on the same sites.
Presets shrink the epochs (``quick``, ``smoke``); ``full`` uses the project defaults.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.config import Config
from fedsynth.simulations.baselines.registry import Fitted

log = logging.getLogger(__name__)

OURS = ("ours", "ours_federated")

_TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"epochs": 20, "batch_size": 256},
    "smoke": {"epochs": 1, "batch_size": 64},
}
# smoke: no marginal calibration (it samples 4 x 20,000 patients: minutes on 2 cores)
_MODEL_PRESETS: dict[str, dict[str, Any]] = {"full": {}, "quick": {},
                                             "smoke": {"calibrate": False}}
_PRIVATE_PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "quick": {"epochs": 10, "batch_size": 512},
    "smoke": {"epochs": 1, "batch_size": 64},
}
_FED_PRESETS: dict[str, list[str]] = {
    "full": [],
    "quick": ["--rounds", "2", "--local-epochs", "1", "--batch-size", "256"],
    "smoke": ["--rounds", "1", "--local-epochs", "1", "--batch-size", "64"],
}


@dataclass
class FederatedOptions:
    sites: int = 5
    partition: str = "dirichlet:0.5"
    holdout: float = 0.05  # each site's own held-out share (ehr-simulate needs one; keep small)
    timeout: float = 3600.0


def _config(preset: str, seed: int, device: str) -> Config:
    cfg = Config()
    for key, value in _TRAIN_PRESETS[preset].items():
        setattr(cfg.train, key, value)
    for key, value in _PRIVATE_PRESETS[preset].items():
        setattr(cfg.privacy, key, value)
    for key, value in _MODEL_PRESETS[preset].items():
        setattr(cfg.model, key, value)
    cfg.train.seed = seed
    cfg.train.device = device
    return cfg


def fit_ours(
    matrix: Any,
    epsilon: float | None,
    delta: float | None,
    seed: int,
    preset: str,
    workdir: Path,
    device: str = "cpu",
    records: tuple[Any, Any] | None = None,
) -> Fitted:
    """Train our model centrally on ``matrix`` (a CodeMatrix); DP when ``epsilon`` is given.
    ``records``: whole records' (token layout, schema), the model built over them as
    ``ehr-train`` builds it (one-hot groups, ordinal values, the outcome column)."""
    from fedsynth.common.model.store import load_model

    out = workdir / f"ours-eps{epsilon or 'inf'}-seed{seed}"
    cfg = _config(preset, seed, device)
    if records is not None:
        from fedsynth.common.data.record_tokens import set_model_columns

        set_model_columns(cfg.model, records[1])
    start = time.perf_counter()
    privacy = None
    if epsilon is None:
        from fedsynth.common.model.central import train_centralized

        train_centralized(matrix.X, matrix.vocab, cfg, out, progress=False)
    else:
        from fedsynth.client.private_train import train_centralized_private  # privacy engineer

        cfg.privacy.epsilon, cfg.privacy.delta = float(epsilon), delta
        # a benchmark measures a fresh training at each epsilon: its own ledger, not the
        # user's per-data-set one (which would compose the runs and refuse the second)
        train_centralized_private(matrix, cfg, out, state_dir=out / "privacy-state",
                                  progress=False, records=records)
        privacy = json.loads((out / "privacy.json").read_text())
    seconds = time.perf_counter() - start
    return Fitted("ours", load_model(out, device=device), privacy, seconds)


def fit_ours_federated(
    matrix: Any,
    epsilon: float | None,
    delta: float | None,
    seed: int,
    preset: str,
    workdir: Path,
    options: FederatedOptions | None = None,
) -> Fitted:
    """Run ``ehr-simulate`` on ``matrix`` and load the global model it writes."""
    if epsilon is None:
        raise NotImplementedError("the federation always trains with DP-SGD")
    from fedsynth.common.model.store import load_model

    out, seconds, privacy = run_simulation(matrix, epsilon, delta, seed, workdir, options,
                                           "federated", _FED_PRESETS[preset])
    gen = load_model(out / "model", device="cpu")
    return Fitted("ours_federated", gen, privacy, seconds, {"run_dir": str(out)})


def fit_mst_federated(
    matrix: Any,
    epsilon: float | None,
    delta: float | None,
    seed: int,
    workdir: Path,
    options: FederatedOptions | None = None,
) -> Fitted:
    """Federated MST: ``ehr-simulate --generator mst`` on ``matrix`` (the same sites and
    partition as ``ours_federated``); loads the tree model it writes."""
    if epsilon is None:
        raise NotImplementedError("federated MST is always private")
    from fedsynth.common.model.tree import load_tree

    out, seconds, privacy = run_simulation(matrix, epsilon, delta, seed, workdir, options,
                                           "mst-federated", ["--generator", "mst"])
    return Fitted("mst_federated", load_tree(out / "model" / "tree.json"), privacy, seconds,
                  {"run_dir": str(out)})


def run_simulation(matrix: Any, epsilon: float, delta: float | None, seed: int,
                   workdir: Path, options: FederatedOptions | None, name: str,
                   extra: list[str]) -> tuple[Path, float, dict[str, Any]]:
    """``ehr-simulate`` on ``matrix`` (written once to a matrix file in ``workdir``) over
    ``options.sites`` sites: (its output folder, wall seconds, its privacy.json)."""
    from fedsynth.common.data import write_matrix

    opts = options or FederatedOptions()
    out = workdir / f"{name}-eps{epsilon}-seed{seed}"
    data = workdir / "federated-train.csv"
    if not data.exists():
        write_matrix(data, matrix.X, matrix.vocab, matrix.patient_ids)
    cmd = [sys.executable, "-m", "fedsynth.simulations.simulate_cli", "--data", str(data),
           "--format", "matrix", "--sites", str(opts.sites), "--partition", opts.partition,
           "--epsilon", str(epsilon), "--holdout", str(opts.holdout), "--seed", str(seed),
           "--samples", "10", "--no-progress", "--out", str(out), *extra]
    if delta is not None:
        cmd += ["--delta", str(delta)]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log_fh:
        proc = subprocess.run(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env,
                              timeout=opts.timeout, check=False,
                              cwd=Path(__file__).resolve().parents[2])
        if proc.returncode != 0:
            log_fh.seek(0)
            tail = log_fh.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"ehr-simulate exited {proc.returncode}: {tail}")
    seconds = time.perf_counter() - start
    return out, seconds, json.loads((out / "privacy.json").read_text())


def round_overhead(run_dir: str | Path) -> dict[str, Any] | None:
    """Flower round overhead of a simulated federation: the round's wall time (the
    coordinator's ``rounds.jsonl``) minus its sites' local training time, which only the sites
    know (``OUT/state/site<k>/rounds-site<k>.jsonl``: the simulation operator holds every site's
    folder; summed, since the simulation runs the sites one after another here). None without
    timings."""
    run_dir = Path(run_dir)
    path = run_dir / "rounds.jsonl"
    if not path.exists():
        return None
    local: dict[int, list[float]] = {}
    for site_log in sorted(run_dir.glob("state/*/rounds-*.jsonl")):
        for line in site_log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line) if line.strip() else {}
            if entry.get("event") == "train" and isinstance(entry.get("seconds"), int | float):
                local.setdefault(int(entry["round"]), []).append(float(entry["seconds"]))
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        wall, sites = r.get("seconds"), local.get(int(r.get("round", -1)), [])
        if not isinstance(wall, int | float) or not sites:
            continue
        rows.append({"round": r.get("round"), "round_seconds": float(wall),
                     "local_train_seconds": float(np.sum(sites)), "sites": len(sites)})
    if not rows:
        return None
    wall = float(np.mean([r["round_seconds"] for r in rows]))
    local_mean = float(np.mean([r["local_train_seconds"] for r in rows]))
    return {"rounds": rows, "mean_round_seconds": wall, "mean_local_train_seconds": local_mean,
            "mean_overhead_seconds": wall - local_mean, "mode": "simulation (sites run in turn)"}


