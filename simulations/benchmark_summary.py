"""From rows to the table's entries: mean and sd over seeds, and issue 6's target check.

Works on benchmark.json rows (plain dicts), because ``--merge`` summarizes rows read back from
files as well as the rows of a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

from fedsynth.simulations.benchmark_settings import (
    GENERATORS,
    LABELS,
    METRICS,
    Metric,
    eps_key,
    eps_label,
)

Row = dict[str, Any]  # one benchmark.json row: ``benchmark_cells.Cell.row()``


class Stat(TypedDict):
    mean: float | None
    sd: float | None  # None with fewer than two finished seeds


# One (generator, epsilon) of benchmark.json's ``summary``: generator, epsilon, seeds (finished
# ones), status (``ok`` when any seed finished, else the first seed's), and one ``Stat`` per
# ``METRICS`` key.
SummaryEntry = dict[str, Any]


# A generator writing fewer codes per patient than this (real patients have 3-5) produces
# nothing usable: its row is labelled so in the table and never counts as a rival in a claim.
WORKING_MIN_CODES = 0.05
RIVALS = ("medgan", "corgan", "dp_marginals", "mst", "aim", "mst_federated")


def working(entry: SummaryEntry) -> bool:
    """False for a finished row whose synthetic patients carry (almost) no codes."""
    cpp = entry.get("codes_per_patient", {}).get("mean")
    return cpp is None or cpp >= WORKING_MIN_CODES


def summarize(rows: list[Row], metrics: Sequence[Metric] = METRICS,
              order: Sequence[str] = GENERATORS) -> list[SummaryEntry]:
    """Mean and sd over seeds per (generator, epsilon), in ``order`` then epsilon order
    (``metrics``: the codes table's by default; the records table passes its own)."""
    groups: dict[tuple[str, float | None], list[Row]] = {}
    for r in rows:
        groups.setdefault((r["generator"], r["epsilon"]), []).append(r)
    out: list[SummaryEntry] = []
    for (gen, eps), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        entry: SummaryEntry = {"generator": gen, "epsilon": eps, "seeds": len(ok),
                                 "status": "ok" if ok else rs[0]["status"]}
        for key, _, _ in metrics:
            vals = [float(r[key]) for r in ok if isinstance(r.get(key), int | float)
                    and math.isfinite(float(r[key]))]
            entry[key] = Stat(mean=float(np.mean(vals)) if vals else None,
                              sd=float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
        out.append(entry)
    rank = {g: i for i, g in enumerate(order)}
    return sorted(out, key=lambda e: (rank.get(e["generator"], 99), eps_key(e["epsilon"])))


def attribute_baseline(rows: list[Row]) -> float | None:
    """Mean attribute-disclosure F1 of the held-out-data attacker over the scored rows."""
    f1 = [r["attribute_f1_holdout_baseline"] for r in rows if "attribute_f1_holdout_baseline" in r]
    return float(np.mean(f1)) if f1 else None


def target_check(summary: list[SummaryEntry]) -> list[str]:
    """Issue 6's target: ours >= the best baseline (MST and AIM among them, issue 17) on
    co-occurrence r and dim-wise prediction at every epsilon, and > DP marginals on both at
    epsilon >= 3. One line per check; a generator that is not working is no rival."""
    lines = []
    by: dict[tuple[str, float | None], SummaryEntry] = {
        (e["generator"], e["epsilon"]): e for e in summary
        if e["status"] == "ok" and working(e)}
    epsilons = sorted({e["epsilon"] for e in summary}, key=eps_key)
    for ours in ("ours", "ours_federated"):
        for eps in epsilons:
            mine = by.get((ours, eps))
            if mine is None:
                continue
            for key in ("cooccurrence_r", "dimwise_auroc_ratio"):
                v = mine[key]["mean"]
                rivals = [(g, by[(g, eps)][key]["mean"]) for g in RIVALS
                          if (g, eps) in by and by[(g, eps)][key]["mean"] is not None]
                if v is None or not rivals:
                    continue
                best_g, best_v = max(rivals, key=lambda t: t[1])
                ok = v >= best_v
                line = (f"- {LABELS[ours]}, epsilon {eps_label(eps)}, {key}: {v:.3f} vs best "
                        f"baseline {LABELS[best_g]} {best_v:.3f}: {'met' if ok else 'NOT met'}")
                lines.append(line)
                fed = by.get(("mst_federated", eps))
                if ours == "ours_federated" and fed is not None and fed[key]["mean"] is not None:
                    gap = v - fed[key]["mean"]
                    lines.append(f"- {LABELS[ours]}, epsilon {eps_label(eps)}, {key}: {v:.3f} "
                                 f"vs {LABELS['mst_federated']} {fed[key]['mean']:.3f}: "
                                 f"{'ahead' if gap >= 0 else 'behind'} by {abs(gap):.3f}")
                marg = by.get(("dp_marginals", eps))
                if eps is not None and eps < 3 or marg is None or marg[key]["mean"] is None:
                    continue
                ok = v > marg[key]["mean"]
                lines.append(f"- {LABELS[ours]}, epsilon {eps_label(eps)}, {key}: {v:.3f} "
                             f"beats DP marginals {marg[key]['mean']:.3f}: "
                             f"{'met' if ok else 'NOT met'}")
    return lines
