"""``ehr-benchmark --columns all``: the benchmark's table on whole records (issue 16, item 7).

Generators (``RECORD_GENERATORS``): our records model (``ehr-train --columns all``: the token
matrix of ``records_matrix``, trained centrally, non-private or with DP-SGD, sampled with
``record_output.sample_records``), independent DP marginals over every column and code
(``baselines.record_marginals``) and MST on records (``baselines.record_mst``), at every
epsilon. Reference rows (``FLOORS``, at "non-private"): the real train part against the
held-out patients, and the train part's columns sampled independently
(``bench_record_floors.independent_columns``): what a perfect generator and a generator with
no association score at this run's sizes.

Every cell is scored against the held-out patients with ``record_fidelity`` (TV, KS,
association r, downstream AUROC ratio for ``target``, discriminator; the train part gives the
TRTR model and the distance-to-closest-record members) plus code co-occurrence r and codes per
patient. Writes benchmark.json and benchmark.md into ``s.out`` (benchmark.partial.json after
every cell).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.atomic import write_json
from fedsynth.common.errors import InputError
from fedsynth.simulations.baselines.registry import Fitted
from fedsynth.simulations.benchmark_cells import Cell, guarded_fit
from fedsynth.simulations.benchmark_records_data import RecordDataset, load_record_dataset
from fedsynth.simulations.benchmark_records_report import write_record_report
from fedsynth.simulations.benchmark_settings import (
    FLOORS,
    RECORD_GENERATORS,
    RECORD_LABELS,
    RECORD_METRICS,
    BenchmarkSettings,
    eps_label,
)
from fedsynth.simulations.benchmark_summary import summarize

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
KEPT = ("tv_mean", "tv_max", "ks_mean", "ks_max", "association_r", "association_r_codes",
        "discriminator_auroc", "dcr_auroc", "dcr_closer_to_members", "dcr_exact_members")


@dataclass
class RecordCell(Cell):
    """A cell of the records table: its metrics are a flat dict (``score_records``)."""

    metrics: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        row = super().row()
        if self.status == "ok":
            row.update(self.metrics)
        return row


class OursRecords:
    """Our records model behind the records sampler interface: (table, codes) per draw, the
    codes in the data's vocabulary order (a code the model does not hold is all 0)."""

    def __init__(self, gen: Any, layout: Any, schema: Any, codes: tuple[str, ...]) -> None:
        self.gen, self.layout, self.schema, self.codes = gen, layout, schema, codes

    def sample_records(self, n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
        from fedsynth.common.model.record_output import sample_records

        table, X, vocab = sample_records(self.gen, self.layout, self.schema, n, seed=seed)
        if tuple(vocab.codes) == self.codes:
            return table, X
        out = np.zeros((n, len(self.codes)), dtype=np.uint8)
        pos = {c: i for i, c in enumerate(self.codes)}
        for j, code in enumerate(vocab.codes):
            if code in pos:
                out[:, pos[code]] = X[:, j]
        return table, out


def fit_record_generator(name: str, ds: RecordDataset, eps: float | None, delta: float,
                         seed: int, s: BenchmarkSettings, workdir: Path) -> Fitted:
    """A ``Fitted`` whose sampler has ``sample_records(n, seed) -> (table, codes)``."""
    d = delta if eps is not None else None
    if name == "dp_marginals":
        from fedsynth.simulations.baselines.record_marginals import fit_record_marginals

        res = fit_record_marginals(ds.train.table, ds.train.codes.X, ds.layout, ds.schema,
                                   eps, d)
        return Fitted(name, res.sampler, res.privacy, res.train_seconds)
    if name == "mst":
        from fedsynth.simulations.baselines.record_mst import fit_record_mst

        mst = fit_record_mst(ds.train.table, ds.train.codes.X, ds.layout, ds.schema, eps, d)
        return Fitted(name, mst.sampler, mst.privacy, mst.train_seconds, dict(mst.info))
    if name == "ours":
        from fedsynth.common.data.record_tokens import records_matrix
        from fedsynth.simulations.baselines.ours import fit_ours

        matrix, layout = records_matrix(ds.train)
        fitted = fit_ours(matrix, eps, d, seed, s.preset, workdir, s.device,
                          records=(layout, ds.schema))
        sampler = OursRecords(fitted.sampler, layout, ds.schema,
                              tuple(ds.train.codes.vocab.codes))
        return Fitted(name, sampler, fitted.privacy, fitted.train_seconds)
    raise ValueError(f"unknown records generator {name!r} ({', '.join(RECORD_GENERATORS)})")


def score_records(table: pd.DataFrame, codes: np.ndarray, ds: RecordDataset,
                  s: BenchmarkSettings, seed: int) -> dict[str, Any]:
    """The table's metrics of one synthetic sample against the held-out records."""
    from threadpoolctl import threadpool_limits

    from fedsynth.common.metrics import cooccurrence_r
    from fedsynth.common.record_metrics import record_fidelity

    hold, train = ds.holdout, ds.train
    # small presets: one OpenMP thread for the gradient boosting. On a shared machine its
    # threads spin against each other: 20 s instead of 0.5 s for the smoke run's tables.
    with threadpool_limits(1, "openmp") if s.preset != "full" else nullcontext():
        m = record_fidelity(hold.table, table, ds.schema, train.table, ds.target,
                            codes_real=hold.codes.X, codes_synth=codes,
                            codes_train=train.codes.X, seed=seed, dcr_rows=s.audit_rows)
    out: dict[str, Any] = {k: m[k] for k in KEPT if k in m}
    out.update({k: v for k, v in m.items() if k.startswith("downstream_")})
    out["per_column"] = {k: v for k, v in m.items() if k.startswith(("tv.", "ks."))}
    out["cooccurrence_r"] = cooccurrence_r(hold.codes.X, codes)
    out["codes_per_patient"] = float(np.asarray(codes).sum(1).mean()) if len(codes) else 0.0
    out["codes_per_patient_real"] = float(hold.codes.X.sum(1).mean())
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v  # JSON null
            for k, v in out.items()}


def run_record_cell(name: str, eps: float | None, seed: int, ds: RecordDataset,
                    s: BenchmarkSettings, delta: float, workdir: Path) -> RecordCell:
    """Fit, sample ``s.n_synth`` records and score one cell (a failure becomes its status)."""
    cell = RecordCell(name, eps, seed)
    fitted = guarded_fit(cell, lambda: fit_record_generator(name, ds, eps, delta, seed, s,
                                                            workdir))
    if fitted is None:
        return cell
    cell.train_seconds, cell.privacy = fitted.train_seconds, fitted.privacy
    cell.extra = dict(fitted.extra)
    t0 = time.perf_counter()
    table, codes = fitted.sampler.sample_records(s.n_synth, seed=10_000 + seed)
    cell.sample_per_s = s.n_synth / max(time.perf_counter() - t0, 1e-9)
    cell.metrics = score_records(table, codes, ds, s, seed)
    return cell


def floor_cells(ds: RecordDataset, s: BenchmarkSettings) -> list[RecordCell]:
    """The reference rows: the real train part (up to ``n_synth`` records) and its columns
    sampled independently (``n_synth`` records)."""
    from fedsynth.simulations.bench_record_floors import cap, independent_columns

    rng = np.random.default_rng((0, 1))
    real = cap(ds.train, s.n_synth, rng)
    indep_table, indep_codes = independent_columns(ds.train, s.n_synth, rng)
    cells = []
    for name, table, codes in (("real", real.table, real.codes.X),
                               ("independent", indep_table, indep_codes)):
        cell = RecordCell(name, None, 0, extra={"reference": True})
        cell.metrics = score_records(table, codes, ds, s, 0)
        cells.append(cell)
    return cells


def run_record_benchmark(s: BenchmarkSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Every (generator, epsilon, seed) cell on records plus the floors; writes the report
    into ``s.out`` and returns the benchmark.json document."""
    import torch

    from fedsynth.privacy.accountant import default_delta
    from fedsynth.simulations.benchmark import _machine

    unknown = set(s.generators) - set(RECORD_GENERATORS)
    if unknown:
        raise InputError("--generators", f"not a records generator: {', '.join(sorted(unknown))}",
                         f"with --columns all choose from {', '.join(RECORD_GENERATORS)}")
    start = time.perf_counter()
    ds = load_record_dataset(s)
    log.info("records benchmark data: %s", ds.info)
    delta = s.delta or default_delta(len(ds.train))
    if progress:
        progress("floors (real vs real, independent columns)")
    cells: list[RecordCell] = floor_cells(ds, s)
    with tempfile.TemporaryDirectory(prefix="ehr-benchmark-records-") as tmp:
        for seed in range(s.seeds):
            for eps in s.epsilons:
                for name in s.generators:
                    if progress:
                        progress(f"{RECORD_LABELS[name]} eps={eps_label(eps)} seed={seed}")
                    torch.manual_seed(seed)
                    if s.time_budget and time.perf_counter() - start > s.time_budget:
                        cells.append(RecordCell(name, eps, seed, status=(
                            f"skipped: past the {s.time_budget:.0f} s budget of the "
                            f"{s.preset} preset")))
                        continue
                    cells.append(run_record_cell(name, eps, seed, ds, s, delta, Path(tmp)))
                    write_json(s.out / "benchmark.partial.json",
                               {"dataset": ds.info, "rows": [c.row() for c in cells]})
    rows = [c.row() for c in cells]
    doc = {"columns": "all", "settings": s.to_json(), "dataset": ds.info, "delta": delta,
           "machine": _machine(), "wall_seconds": time.perf_counter() - start, "rows": rows,
           "summary": summarize(rows, RECORD_METRICS, (*FLOORS, *RECORD_GENERATORS))}
    write_record_report(doc, s.out)
    return doc
