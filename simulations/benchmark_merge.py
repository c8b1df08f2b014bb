"""``ehr-benchmark --merge``: one report from several runs' benchmark.json files, e.g. after
re-running one generator, without retraining the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsynth.common.errors import InputError
from fedsynth.simulations.benchmark_report import BenchmarkDoc, write_report
from fedsynth.simulations.benchmark_summary import Row, attribute_baseline, summarize


def read_result(path: Path) -> BenchmarkDoc:
    """A run's benchmark.json; InputError naming the file when it is missing or not one."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable benchmark.json ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise InputError(path, "not a benchmark.json (no 'rows' list)")
    return doc


def merge_results(paths: list[Path], out: Path) -> BenchmarkDoc:
    """One report from several runs on the same data and split (e.g. one generator re-run after
    a fix): rows keyed by (generator, epsilon, seed), later files winning; the first file's
    settings, dataset and speed section; wall time summed. Written like a run's report."""
    docs = [read_result(path) for path in paths]
    first = docs[0]
    for path, doc in zip(paths[1:], docs[1:], strict=True):
        if doc.get("dataset") != first.get("dataset"):
            raise InputError(path, "another dataset or split than the first file's")
    rows: dict[tuple[Any, Any, Any], Row] = {}
    for doc in docs:
        for r in doc["rows"]:
            rows[(r["generator"], r["epsilon"], r["seed"])] = r
    result = {**first, "rows": list(rows.values()), "summary": summarize(list(rows.values())),
              "wall_seconds": float(sum(d.get("wall_seconds", 0.0) for d in docs)),
              "merged_from": [str(p) for p in paths]}
    result["attribute_f1_holdout_baseline"] = attribute_baseline(result["rows"])
    result.pop("plots", None)
    write_report(result, out)
    return result
