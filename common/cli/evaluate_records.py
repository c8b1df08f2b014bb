"""``ehr-evaluate --records``: whole synthetic records (the schema's columns + codes) against
held-out real ones.

REAL is read with ``load_records``; SYNTH is the records output: ``patient_id``, the schema's
columns with the source's labels, then one 0/1 column per code (CSV or Parquet). Its columns are
typed through the same schema as the real ones (a value outside the schema is counted and set
missing, as for real data); its codes are scored with ``common.metrics.fidelity`` as before.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.atomic import atomic_path
from fedsynth.common.data.build import binary_values
from fedsynth.common.data.reading import lower_map, read_header, read_table, resolve_input
from fedsynth.common.data.records import RecordReport, Records, apply_schema, load_records
from fedsynth.common.data.schema import Schema
from fedsynth.common.errors import InputError
from fedsynth.common.gower import category_codes, numeric_values
from fedsynth.common.metrics import fidelity
from fedsynth.common.record_metrics import default_target, parse_target, record_fidelity
from fedsynth.common.vocabulary import Vocabulary

log = logging.getLogger(__name__)

PLOT_CATEGORIES = 25  # bars shown per categorical plot (the most frequent ones)
RECORD_ONLY = ("schema", "target", "plot_dir")  # options that need --records


def read_synthetic_records(source: str | Path | pd.DataFrame, schema: Schema,
                           vocab: Vocabulary | None,
                           ) -> tuple[pd.DataFrame, np.ndarray | None, RecordReport]:
    """(table of the schema's columns, 0/1 codes over ``vocab`` or None, report).

    ``source``: a CSV/Parquet file, or a DataFrame of the same columns (``patient_id`` a column
    or the index: ``fedsynth.Generator.sample``'s output). The code columns are every column
    that is neither ``patient_id`` nor the schema's; each must be a code of ``vocab`` (a code
    the real data lacks means another model's output)."""
    p: object
    if isinstance(source, pd.DataFrame):
        frame = source.reset_index() if source.index.name == "patient_id" else source
        frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
        p, header = "synthetic", list(frame.columns)
        if not frame.columns.is_unique:
            raise InputError(p, "duplicate column names")

        def read(cols: list[str], dtype: object) -> pd.DataFrame:
            return frame[cols]
    else:
        p = path = resolve_input(source)
        header = read_header(path)

        def read(cols: list[str], dtype: object) -> pd.DataFrame:
            return read_table(path, usecols=cols, dtype=dtype)
    low = lower_map(header)
    known = {c.lower() for c in schema.names} | {"patient_id"}
    absent = [c for c in schema.names if c.lower() not in low]
    if absent:
        raise InputError(p, f"column {absent[0]!r} of schema {schema.name!r} not found"
                         + (f" ({len(absent)} schema columns missing)" if len(absent) > 1 else ""),
                         "Synthetic records need patient_id, the schema's columns, then codes")
    record_cols = [low[c.lower()] for c in schema.names]
    code_cols = [c for c in header if c.strip().lower() not in known]
    raw = read(record_cols, str)
    if len(raw) < 2:
        raise InputError(p, "fewer than 2 synthetic records")
    report = RecordReport(str(p), "synthetic records", schema.name, patients=len(raw))
    table = apply_schema(raw, schema, report, strict=False, path=p).reset_index(drop=True)
    if not code_cols or vocab is None:
        return table, None, report
    positions = {c: i for i, c in enumerate(vocab.codes)}
    unknown = [c for c in code_cols if c.strip() not in positions]
    if unknown:
        raise InputError(p, f"{len(unknown)} columns are neither schema {schema.name!r} columns "
                         f"nor codes of the real data's vocabulary (first: {unknown[0][:40]!r})",
                         "Was it sampled from another model or another schema?")
    values = binary_values(Path(str(p)), read(code_cols, None))
    X = np.zeros((len(raw), len(vocab)), dtype=np.uint8)
    X[:, [positions[c.strip()] for c in code_cols]] = values
    return table, X, report


def score_records(real: Records, synthetic: str | Path | pd.DataFrame,
                  train: Records | None = None, target: str | None = None, seed: int = 0,
                  labels: Mapping[str, str] | None = None,
                  ) -> tuple[dict[str, Any], pd.DataFrame, np.ndarray | None]:
    """(metrics, synthetic table, synthetic codes or None) of ``synthetic`` records (a file or
    a DataFrame, ``read_synthetic_records``) against ``real``: the code metrics at the top
    level as without --records, the record metrics under 'records', then the schema, the
    synthetic values outside it, ``labels`` (the command's file names) and the seconds per
    part. ``train``'s codes must be over ``real``'s vocabulary. ``ehr-evaluate --records`` and
    ``fedsynth.evaluate`` both score here."""
    schema = real.schema
    t0 = time.perf_counter()
    synth, X, synth_report = read_synthetic_records(synthetic, schema, real.codes.vocab)
    timings: dict[str, float] = {"read_synthetic": time.perf_counter() - t0}
    m: dict[str, Any] = {}
    if X is not None:
        t0 = time.perf_counter()
        m = fidelity(real.codes.X, X, None if train is None else train.codes.X, seed=seed)
        for c in m["dimwise_per_code"]:
            c["code"] = real.codes.vocab.codes[c["code_index"]]
        timings["codes"] = time.perf_counter() - t0
    else:
        m["codes"] = "not scored: the synthetic file has no code columns"
    m["records"] = record_fidelity(
        real.table, synth, schema, None if train is None else train.table, target,
        codes_real=real.codes.X if X is not None else None, codes_synth=X,
        codes_train=None if train is None or X is None else train.codes.X, seed=seed,
        timings=timings)
    m["schema"] = schema.name
    m["synth_out_of_schema"] = synth_report.out_of_schema
    m.update(labels or {})
    m["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return m, synth, X


def evaluate_records(args: argparse.Namespace,
                     ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """(the metrics of ``ehr-evaluate --records``, (real, synthetic) codes or None): the files
    loaded, then ``score_records``; the marginal plots with --plot-dir."""
    real = load_records(args.real, args.format, schema=args.schema)
    schema = real.schema
    if args.target:
        parse_target(args.target, schema)  # a bad --target fails before any work
    train: Records | None = None
    if args.train:
        train = load_records(args.train, args.format, schema=schema, vocab=real.codes.vocab)
    m, synth, X = score_records(real, args.synth, train, args.target, args.seed,
                                labels={"real": str(args.real), "synth": str(args.synth)})
    if args.plot_dir:
        t0 = time.perf_counter()
        plot_marginals(args.plot_dir, real.table, synth, schema, m["records"])
        m["timings_s"]["plots"] = round(time.perf_counter() - t0, 3)
    return m, None if X is None else (real.codes.X, X)


def _file_name(i: int, column: str) -> str:
    return f"{i:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', column)}.png"


def plot_marginals(out_dir: str | Path, real: pd.DataFrame, synth: pd.DataFrame, schema: Schema,
                   metrics: dict[str, float] | None = None) -> list[Path]:
    """One PNG per schema column: category shares (bars) or a histogram, real vs synthetic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "--plot-dir exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics or {}
    paths = []
    for i, col in enumerate(schema.columns):
        fig, ax = plt.subplots(figsize=(7, 4))
        if col.is_categorical:
            cats = list(col.categories or ())
            p, q = (np.bincount(np.clip(c, 0, None)[c >= 0], minlength=len(cats))
                    / max(int((c >= 0).sum()), 1)
                    for c in (category_codes(t[col.name], col) for t in (real, synth)))
            shown = np.argsort(-np.maximum(p, q), kind="stable")[:PLOT_CATEGORIES]
            shown = np.sort(shown)
            x = np.arange(len(shown))
            ax.bar(x - 0.2, p[shown], 0.4, label="real")
            ax.bar(x + 0.2, q[shown], 0.4, label="synthetic")
            ax.set_xticks(x, [cats[j] for j in shown], rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("share of records")
            more = f", {len(shown)} of {len(cats)} categories" if len(shown) < len(cats) else ""
            stat = f"TV = {metrics[f'tv.{col.name}']:.3f}" if f"tv.{col.name}" in metrics else ""
        else:
            a, b = (numeric_values(t[col.name]) for t in (real, synth))
            a, b = a[~np.isnan(a)], b[~np.isnan(b)]
            both = np.r_[a, b]
            lo, hi = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
            if col.kind == "integer" and hi - lo <= 60:
                bins = np.arange(lo - 0.5, hi + 1.5)
            else:
                bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
            for v, name in ((a, "real"), (b, "synthetic")):
                w = np.full(len(v), 1.0 / max(len(v), 1))
                ax.hist(v, bins=bins, weights=w, histtype="step", lw=1.5, label=name)
            ax.set_ylabel("share of records")
            ax.set_xlabel(col.name)
            more = ""
            stat = f"KS = {metrics[f'ks.{col.name}']:.3f}" if f"ks.{col.name}" in metrics else ""
        ax.set_title(f"{col.name}{more}" + (f" ({stat})" if stat else ""))
        ax.legend()
        fig.tight_layout()
        path = out / _file_name(i, col.name)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def check_record_options(args: argparse.Namespace) -> None:
    """Whole records are scored with --records, or when SYNTH holds every column of REAL's
    schema (``looks_like_records``; then ``args.records`` is set). --schema, --target and
    --plot-dir only mean something with records. Without --target, a schema with
    ``readmitted`` scores the downstream task ``readmitted=<30`` (the issue's task)."""
    if not args.records and looks_like_records(args.real, args.synth, args.format, args.schema):
        log.info("%s holds every column of the real data's schema: scoring whole records",
                 args.synth)
        args.records = True
    if not args.records:
        used = [f"--{o.replace('_', '-')}" for o in RECORD_ONLY if getattr(args, o, None)]
        if used:
            raise InputError(None, f"{', '.join(used)} needs --records")
        return
    if not args.target:
        try:
            args.target = default_target(_real_schema(args.real, args.format, args.schema))
        except (InputError, OSError, ValueError):
            args.target = None


def _real_schema(real: str, fmt: str, schema: str | None) -> Schema:
    from fedsynth.common.data.columns import format_name, resolve_columns
    from fedsynth.common.data.records import resolve_schema

    if resolve_columns("auto", real, fmt, schema) != "all":
        raise InputError(real, "no per-patient columns")
    return resolve_schema(schema, format_name(real, fmt), resolve_input(real))


def looks_like_records(real: str, synth: str, fmt: str = "auto",
                       schema: str | None = None) -> bool:
    """True when REAL has per-patient columns a schema describes and SYNTH's header holds every
    one of them (an ehr-sample records file); False when either cannot be read (the loaders
    then say why in one line)."""
    try:
        names = {c.lower() for c in _real_schema(real, fmt, schema).names}
        header = {str(c).strip().lower() for c in read_header(resolve_input(synth))}
    except (InputError, OSError, ValueError):
        return False
    return names <= header


__all__ = ["check_record_options", "evaluate_records", "plot_marginals",
           "read_synthetic_records", "score_records"]
