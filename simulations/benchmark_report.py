"""The benchmark's report files: benchmark.json, benchmark.md and the PNGs, all written
atomically.

Renders the benchmark.json document (a dict), not the run's objects, because ``--merge``
writes a report for documents read back from files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.simulations.benchmark_plots import plot
from fedsynth.simulations.benchmark_settings import LABELS, METRICS, Metric, eps_label
from fedsynth.simulations.benchmark_summary import Stat, SummaryEntry, target_check, working

BenchmarkDoc = dict[str, Any]  # benchmark.json: settings, dataset, delta, machine, ... summary


def write_report(result: BenchmarkDoc, out: Path) -> None:
    """benchmark.json (with the plots' names added), benchmark.md and the PNGs."""
    summary = result["summary"]
    result["plots"] = plot(summary, out)
    write_json(out / "benchmark.json", result)
    with atomic_open(out / "benchmark.md", "w", encoding="utf-8") as fh:
        fh.write(render_markdown(result))


def _cell(stat: Stat, key: str) -> str:
    mean, sd = stat["mean"], stat["sd"]
    if mean is None:
        return "-"
    digits = 0 if key in ("sample_per_s", "train_seconds") and mean >= 100 else (
        1 if key in ("train_seconds", "sample_per_s", "codes_per_patient") else 3)
    text = f"{mean:.{digits}f}"
    return f"{text} ± {sd:.{digits}f}" if sd is not None else text


def markdown_table(summary: list[SummaryEntry], metrics: Sequence[Metric] = METRICS,
                   labels: dict[str, str] | None = None) -> str:
    """One row per (generator, epsilon), one column per metric (mean ± sd over seeds)."""
    labels = labels or LABELS
    head = ["generator", "epsilon", *[m.title for m in metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        label = labels.get(e["generator"], e["generator"])
        if e["status"] == "ok" and not working(e):
            label += " (not a working generator: no codes)"
        if e["status"] != "ok":
            status = e["status"].split(":")[0]
            cells = [f"{status} (see notes)"] + ["-"] * (len(metrics) - 1)
        else:
            cells = [_cell(e[m.key], m.key) for m in metrics]
        lines.append("| " + " | ".join([label, eps_label(e["epsilon"]), *cells]) + " |")
    return "\n".join(lines)


def render_markdown(result: BenchmarkDoc) -> str:
    s, ds = result["settings"], result["dataset"]
    parts = [
        "# ehr-benchmark",
        "",
        f"Data: {ds['source']}: {ds['patients']} patients, {ds['codes']} codes "
        f"({ds['codes_used']} used, {ds['codes_per_patient']:.2f} per patient); train "
        f"{ds['train_patients']} / held-out {ds['holdout_patients']} patients (80/20 split"
        f"{', subsampled' if s['max_train'] else ''}). Preset `{s['preset']}`, seeds "
        f"{s['seeds']}, {s['n_synth']} synthetic patients per model, delta "
        f"{result['delta']:.3g}. Wall time {result['wall_seconds']:.0f} s on {result['machine']}.",
        *([f"Merged from {', '.join(result['merged_from'])} (`ehr-benchmark --merge`): "
           "later runs' rows replace earlier ones for the same generator, epsilon and seed; "
           "wall time summed.", ""] if result.get("merged_from") else []),
        markdown_table(summary := result["summary"]),
        "",
        "Metrics against held-out patients; membership AUROC: distance to the closest "
        "synthetic record (Hamming), training vs held-out patients; attribute F1: medGAN's "
        f"k-NN attack (held-out real data as the attacker's source gets "
        f"{result.get('attribute_f1_holdout_baseline') or float('nan'):.3f}). "
        "Federated: per-site epsilon, released = max over sites.",
        "",
        "## Target check (issue 6)",
        "",
        *(target_check(summary) or ["- nothing to compare"]),
    ]
    notes = status_notes(summary, LABELS)
    if notes:
        parts += ["", "## Notes", "", *notes]
    if result.get("speed"):
        parts += ["", "## Speed", "", *render_speed(result["speed"])]
    plots = result.get("plots", [])
    if plots:
        parts += ["", "## Plots", "", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(parts) + "\n"


def status_notes(summary: list[SummaryEntry], labels: dict[str, str]) -> list[str]:
    """One note line per cell that did not run to the end: its generator, epsilon and status."""
    return [f"- {labels.get(e['generator'], e['generator'])} at epsilon "
            f"{eps_label(e['epsilon'])}: {e['status']}" for e in summary if e["status"] != "ok"]


def render_speed(speed: dict[str, Any]) -> list[str]:
    """The speed section (``benchmark_speed.SpeedSection.to_json()``) as Markdown lines."""
    lines = []
    dp = speed.get("dp_vs_nonprivate")
    if isinstance(dp, dict) and dp.get("rows"):
        lines += ["DP-SGD vs non-private training of our model (same model, same data):", "",
                  "| mode | examples/s | slowdown vs non-private |", "|---|---|---|"]
        lines += [f"| {r['mode']} | {r['examples_per_s']:.0f} | {r.get('ratio', 1.0):.2f}x |"
                  for r in dp["rows"]]
    else:
        lines.append(f"- DP-SGD vs non-private: not measured ({dp})")
    steps = speed.get("sampler_steps")
    if isinstance(steps, list) and steps:
        lines += ["", "Sampling throughput of our model vs the number of Heun steps:", "",
                  "| steps | records/s |", "|---|---|"]
        lines += [f"| {r['steps']} | {r['records_per_s']:.0f} |" for r in steps]
    else:
        lines.append(f"- sampler steps: not measured ({steps})")
    fl = speed.get("flower_round_overhead")
    if isinstance(fl, dict) and "mean_overhead_seconds" in fl:
        lines += ["", f"Flower round overhead (simulation): round {fl['mean_round_seconds']:.1f} s"
                  f", local training {fl['mean_local_train_seconds']:.1f} s, overhead "
                  f"{fl['mean_overhead_seconds']:.1f} s per round."]
    else:
        lines.append(f"- Flower round overhead: not measured ({fl})")
    return lines
