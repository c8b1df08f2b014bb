"""The benchmark behind ``ehr-benchmark``: every generator at every epsilon, one table.

Generators: medGAN, corGAN, DP marginals, MST, AIM (``simulations.baselines``), federated MST
(``mst_federated``, ``ehr-simulate --generator mst``), our model trained centrally (``ours``)
and federated over non-IID sites (``ours_federated``). Epsilons 1, 3, 10
and non-private (``None``). On an 80/20 patient split (``split_holdout``, seed 0) of the named
dataset, for each seed: train on the 80%, sample, score against the held-out 20%:
prevalence r, co-occurrence r, dimension-wise prediction AUROC ratio, discriminator AUROC
(``common.metrics.fidelity``), membership AUROC by distance to the closest synthetic record
(Hamming; members = training patients, non-members = held-out patients) and medGAN's
attribute-disclosure F1 (``privacy.audit``), training wall time and sampling records/s.
Outputs in ``out``: benchmark.json, benchmark.md (Markdown table, mean +- sd over seeds), one
PNG per metric (metric vs epsilon, one line per generator) and benchmark.png (all panels).

This module runs the cells in order; each job lives in its own module: ``benchmark_settings``
(what to run), ``benchmark_data`` (the split), ``benchmark_cells`` (fit, sample, score one
cell), ``benchmark_scores``, ``benchmark_summary`` (mean and sd, target check),
``benchmark_speed``, ``benchmark_report`` and ``benchmark_plots`` (the files),
``benchmark_merge`` (``--merge``). ``--columns all`` (whole records: the schema's columns
beside the codes) is ``benchmark_records``, with its own generators, metrics and floors.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import write_json
from fedsynth.common.errors import InputError
from fedsynth.simulations.benchmark_cells import Cell, run_cell
from fedsynth.simulations.benchmark_data import Dataset, DatasetInfo, load_dataset
from fedsynth.simulations.benchmark_report import BenchmarkDoc, write_report
from fedsynth.simulations.benchmark_settings import (
    GENERATORS,
    LABELS,
    BenchmarkSettings,
    eps_label,
)
from fedsynth.simulations.benchmark_speed import SpeedSection, speed_section
from fedsynth.simulations.benchmark_summary import attribute_baseline, summarize

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class BenchmarkRun:
    """A finished run, before it becomes benchmark.json (``to_json``)."""

    settings: BenchmarkSettings
    dataset: DatasetInfo
    delta: float
    machine: str
    wall_seconds: float
    cells: list[Cell]
    speed: SpeedSection | None

    def to_json(self) -> BenchmarkDoc:
        rows = [c.row() for c in self.cells]
        return {
            "settings": self.settings.to_json(),
            "dataset": self.dataset.to_json(),
            "delta": self.delta,
            "machine": self.machine,
            "wall_seconds": self.wall_seconds,
            "attribute_f1_holdout_baseline": attribute_baseline(rows),
            "rows": rows,
            "summary": summarize(rows),
            "speed": self.speed.to_json() if self.speed is not None else None,
        }


@dataclass
class _Keep:
    """What the speed section needs from the cells: our non-private fit (seed 0) and the
    federated runs' directories."""

    ours_plain: Any = None
    fed_dirs: list[str] = field(default_factory=list)

    def see(self, cell: Cell, fitted: Any) -> None:
        if cell.generator == "ours" and cell.epsilon is None and cell.seed == 0:
            self.ours_plain = fitted
        if cell.generator == "ours_federated" and fitted is not None \
                and "run_dir" in fitted.extra:
            self.fed_dirs.append(fitted.extra["run_dir"])


def run_benchmark(s: BenchmarkSettings, progress: Progress | None = None) -> BenchmarkDoc:
    """Run every (generator, epsilon, seed) cell, write the report into ``s.out``; the
    benchmark.json document."""
    import torch

    from fedsynth.privacy.accountant import default_delta

    unknown = set(s.generators) - set(GENERATORS)
    if unknown:
        raise InputError("--generators", f"unknown generator(s) {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    ds = load_dataset(s)
    log.info("benchmark data: %s", ds.info)
    delta = s.delta or default_delta(ds.train.n_patients)
    cells: list[Cell] = []
    keep = _Keep()
    with tempfile.TemporaryDirectory(prefix="ehr-benchmark-") as tmp:
        for seed in range(s.seeds):
            for eps in s.epsilons:  # epsilon-major: a cut-short quick run still compares
                for name in s.generators:
                    if progress:
                        progress(f"{LABELS[name]} eps={eps_label(eps)} seed={seed}")
                    torch.manual_seed(seed)
                    if s.time_budget and time.perf_counter() - start > s.time_budget:
                        cells.append(Cell(name, eps, seed, status=(
                            f"skipped: past the {s.time_budget:.0f} s budget of the "
                            f"{s.preset} preset")))
                        continue
                    cell, fitted = run_cell(name, eps, seed, ds, s, delta, Path(tmp))
                    cells.append(cell)
                    _write_partial(s.out, ds, cells)
                    keep.see(cell, fitted)
        speed = speed_section(keep.ours_plain, keep.fed_dirs, ds, s) if s.speed else None
    doc = BenchmarkRun(settings=s, dataset=ds.info, delta=delta, machine=_machine(),
                       wall_seconds=time.perf_counter() - start, cells=cells,
                       speed=speed).to_json()
    write_report(doc, s.out)
    return doc


def _write_partial(out: Path, ds: Dataset, cells: list[Cell]) -> None:
    """benchmark.partial.json after every cell: what a killed run had finished."""
    write_json(out / "benchmark.partial.json",
               {"dataset": ds.info.to_json(), "rows": [c.row() for c in cells]})


def _machine() -> str:
    import os
    import platform

    import torch

    return (f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
