"""The benchmark behind ``ehr-benchmark``: every generator at every epsilon, one table.

Generators: medGAN, corGAN, DP marginals (``simulations.baselines``), our model trained
centrally (``ours``) and federated over non-IID sites (``ours_federated``). Epsilons 1, 3, 10
and non-private (``None``). On an 80/20 patient split (``split_holdout``, seed 0) of the named
dataset, for each seed: train on the 80%, sample, score against the held-out 20%:
prevalence r, co-occurrence r, dimension-wise prediction AUROC ratio, discriminator AUROC
(``common.metrics.fidelity``), membership AUROC by distance to the closest synthetic record
(Hamming; members = training patients, non-members = held-out patients) and medGAN's
attribute-disclosure F1 (``privacy.audit``), training wall time and sampling records/s.
Outputs in ``out``: benchmark.json, benchmark.md (Markdown table, mean +- sd over seeds), one
PNG per metric (metric vs epsilon, one line per generator) and benchmark.png (all panels).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import atomic_open, atomic_path, write_json
from fedsynth.common.errors import BudgetExceeded, InputError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "diabetes130" / "diabetic_data_dev.csv.gz"
GENERATORS = ("medgan", "corgan", "dp_marginals", "ours", "ours_federated")
EPSILONS: tuple[float | None, ...] = (1.0, 3.0, 10.0, None)
LABELS = {"medgan": "medGAN", "corgan": "corGAN", "dp_marginals": "DP marginals",
          "ours": "ours (central)", "ours_federated": "ours (federated)"}
# key, column title, plotted
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("prevalence_r", "prevalence r", True),
    ("cooccurrence_r", "co-occurrence r", True),
    ("dimwise_auroc_ratio", "dim-wise AUROC ratio", True),
    ("discriminator_auroc", "discriminator AUROC (0.5 best)", True),
    ("membership_auroc", "membership AUROC, DCR (0.5 best)", True),
    ("attribute_f1", "attribute F1", True),
    ("codes_per_patient", "codes/patient", False),
    ("train_seconds", "train s", False),
    ("sample_per_s", "sampling records/s", False),
    ("epsilon_spent", "epsilon spent", False),
)
Progress = Callable[[str], None]


@dataclass
class BenchmarkSettings:
    """What one ``ehr-benchmark`` run does. ``preset``: full | quick | smoke (tests)."""

    out: Path
    data: Path | None = None
    format: str = "auto"
    preset: str = "full"
    seeds: int = 1
    generators: tuple[str, ...] = GENERATORS
    epsilons: tuple[float | None, ...] = EPSILONS
    holdout: float = 0.2
    max_train: int | None = None
    max_holdout: int | None = None
    n_synth: int = 10_000
    audit_rows: int = 2_000  # members and non-members scored by the membership attack
    delta: float | None = None  # None: min(1e-5, 1/(10 n_train))
    sites: int = 5
    partition: str = "dirichlet:0.5"
    device: str = "cpu"
    speed: bool = True
    demo_patients: int = 2_000  # per site, when the demo cohort stands in for missing data
    time_budget: float | None = None  # seconds; cells not started by then are marked skipped

    @classmethod
    def for_preset(cls, preset: str, out: Path, **overrides: Any) -> BenchmarkSettings:
        """Defaults per preset: ``quick`` subsamples patients (< 10 min on 2 cores);
        ``smoke`` is a seconds-long run on a tiny demo cohort, for tests."""
        base: dict[str, Any] = {}
        if preset == "quick":
            base = dict(max_train=1500, max_holdout=600, n_synth=1000, audit_rows=500,
                        demo_patients=500, time_budget=480.0)
        elif preset == "smoke":
            base = dict(max_train=300, max_holdout=150, n_synth=200, audit_rows=100,
                        generators=("medgan", "corgan", "dp_marginals"), epsilons=(3.0, None),
                        speed=False, demo_patients=150)
        elif preset != "full":
            raise ValueError(f"unknown preset {preset!r}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        if base.get("time_budget") == 0:
            base["time_budget"] = None
        return cls(out=out, preset=preset, **base)


@dataclass
class Dataset:
    train: Any  # CodeMatrix
    holdout: Any
    info: dict[str, Any] = field(default_factory=dict)


def load_dataset(s: BenchmarkSettings) -> Dataset:
    """The named dataset (default: diabetes130 dev split; the demo cohort when absent), split
    80/20 by patient, subsampled for quick runs."""
    from fedsynth.common.data import demo_cohort, load_codes, split_holdout

    if s.data is not None:
        matrix, source = load_codes(s.data, s.format), str(s.data)
    elif DEFAULT_DATA.exists() and s.preset != "smoke":
        matrix, source = load_codes(DEFAULT_DATA, "diabetes130"), str(DEFAULT_DATA)
    else:
        matrix = demo_cohort(n_sites=s.sites, patients_per_site=s.demo_patients, seed=0)
        source = f"demo cohort ({s.sites} sites x {s.demo_patients} patients)"
    train, hold = split_holdout(matrix, s.holdout, seed=0)
    n_train_full, n_hold_full = train.n_patients, hold.n_patients
    rng = np.random.default_rng(0)
    if s.max_train and train.n_patients > s.max_train:
        train = train.subset(np.sort(rng.choice(train.n_patients, s.max_train, replace=False)))
    if s.max_holdout and hold.n_patients > s.max_holdout:
        hold = hold.subset(np.sort(rng.choice(hold.n_patients, s.max_holdout, replace=False)))
    if train.n_patients < 10 or hold.n_patients < 10:
        raise InputError(source, f"too few patients for a benchmark ({matrix.n_patients})")
    info = {"source": source, "patients": matrix.n_patients, "codes": matrix.n_codes,
            "codes_used": int((matrix.X.sum(0) > 0).sum()),
            "codes_per_patient": float(matrix.X.sum(1).mean()),
            "train_patients": train.n_patients, "holdout_patients": hold.n_patients,
            "train_patients_before_subsampling": n_train_full,
            "holdout_patients_before_subsampling": n_hold_full}
    return Dataset(train, hold, info)


def _fit(name: str, ds: Dataset, eps: float | None, delta: float, seed: int,
         s: BenchmarkSettings, workdir: Path) -> Any:
    from fedsynth.simulations.baselines.ours import FederatedOptions, fit_ours, fit_ours_federated
    from fedsynth.simulations.baselines.registry import BASELINES, fit_baseline

    if name in BASELINES:
        return fit_baseline(name, ds.train.X, eps, delta if eps else None, seed=seed,
                            preset=s.preset, device=s.device)
    if name == "ours":
        return fit_ours(ds.train, eps, delta if eps else None, seed, s.preset, workdir, s.device)
    if name == "ours_federated":
        return fit_ours_federated(ds.train, eps, delta if eps else None, seed, s.preset, workdir,
                                  FederatedOptions(sites=s.sites, partition=s.partition))
    raise ValueError(f"unknown generator {name!r} ({', '.join(GENERATORS)})")


def membership_auroc(synth: np.ndarray, members: np.ndarray, non_members: np.ndarray) -> float:
    """AUROC of 'member' = small Hamming distance to the closest synthetic record."""
    from fedsynth.privacy.audit.membership import nearest_stats, roc_summary

    dm = nearest_stats(members, synth).hamming
    dn = nearest_stats(non_members, synth).hamming
    return float(roc_summary(-dm, -dn)["auroc"])


def score(synth: np.ndarray, ds: Dataset, s: BenchmarkSettings, seed: int) -> dict[str, Any]:
    """Fidelity against the held-out patients, and the two disclosure attacks."""
    from fedsynth.common.metrics import fidelity
    from fedsynth.privacy.audit.attribute import attribute_disclosure
    from fedsynth.privacy.audit.config import AuditConfig

    rng = np.random.default_rng(seed)
    train_X, hold_X = ds.train.X, ds.holdout.X
    real_train = train_X[rng.choice(len(train_X), min(len(train_X), len(synth)), replace=False)]
    fid = fidelity(hold_X, synth, real_train=real_train, seed=seed)
    m = min(s.audit_rows, len(train_X), len(hold_X))
    members = train_X[rng.choice(len(train_X), m, replace=False)]
    non_members = hold_X[rng.choice(len(hold_X), m, replace=False)]
    attr = attribute_disclosure(synth, members, hold_X,
                                AuditConfig(seed=seed, attr_targets=min(1000, m)))
    return {
        "prevalence_r": fid["prevalence_r"],
        "cooccurrence_r": fid["cooccurrence_r"],
        "dimwise_auroc_ratio": fid["dimwise_auroc_ratio"],
        "discriminator_auroc": fid["discriminator_auroc"],
        "codes_per_patient": fid["codes_per_patient_synth"]["mean"],
        "codes_per_patient_real": fid["codes_per_patient_real"]["mean"],
        "membership_auroc": membership_auroc(synth, members, non_members),
        "attribute_f1": attr["synthetic"]["f1"],
        "attribute_f1_holdout_baseline": attr["baseline_holdout"]["f1"],
    }


def run_cell(name: str, eps: float | None, seed: int, ds: Dataset, s: BenchmarkSettings,
             workdir: Path) -> tuple[dict[str, Any], Any]:
    """Train, sample and score one (generator, epsilon, seed); failures become a row status."""
    from fedsynth.privacy.accountant import default_delta

    delta = s.delta or default_delta(ds.train.n_patients)
    row: dict[str, Any] = {"generator": name, "epsilon": eps, "seed": seed, "status": "ok"}
    try:
        fitted = _fit(name, ds, eps, delta, seed, s, workdir)
    except NotImplementedError as err:
        row["status"] = f"n/a: {err}"
        return row, None
    except BudgetExceeded as err:
        row["status"] = f"refused: {err}"
        return row, None
    except Exception as err:  # one broken generator must not sink the whole table
        log.error("%s at eps=%s seed=%s failed: %s", name, eps, seed, err)
        log.debug("%s", traceback.format_exc())
        row["status"] = f"error: {type(err).__name__}: {str(err)[:300]}"
        return row, None
    row["train_seconds"] = fitted.train_seconds
    t0 = time.perf_counter()
    synth = np.asarray(fitted.sampler.sample(s.n_synth, seed=10_000 + seed), dtype=np.uint8)
    row["sample_per_s"] = s.n_synth / max(time.perf_counter() - t0, 1e-9)
    if fitted.privacy:
        row["epsilon_spent"] = _released_epsilon(fitted.privacy)
        row["delta"] = fitted.privacy.get("delta") or fitted.privacy.get("released_delta")
        row["privacy"] = fitted.privacy
    row.update(score(synth, ds, s, seed))
    row.update({f"extra_{k}": v for k, v in fitted.extra.items()})
    return row, fitted


def _released_epsilon(report: dict[str, Any]) -> float | None:
    """Central reports carry 'epsilon'; federated ones the max over sites."""
    for key in ("released_epsilon", "epsilon"):
        if isinstance(report.get(key), int | float):
            return float(report[key])
    sites = report.get("sites")
    if isinstance(sites, dict):
        vals = [v.get("epsilon") for v in sites.values() if isinstance(v, dict)]
        vals = [float(v) for v in vals if isinstance(v, int | float)]
        return max(vals) if vals else None
    return None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds per (generator, epsilon), in generator/epsilon order."""
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["generator"], r["epsilon"]), []).append(r)
    out = []
    for (gen, eps), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        entry: dict[str, Any] = {"generator": gen, "epsilon": eps, "seeds": len(ok),
                                 "status": "ok" if ok else rs[0]["status"]}
        for key, _, _ in METRICS:
            vals = [float(r[key]) for r in ok if isinstance(r.get(key), int | float)
                    and math.isfinite(float(r[key]))]
            entry[key] = {"mean": float(np.mean(vals)) if vals else None,
                          "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None}
        out.append(entry)
    order = {g: i for i, g in enumerate(GENERATORS)}
    return sorted(out, key=lambda e: (order.get(e["generator"], 99), _eps_key(e["epsilon"])))


def _eps_key(eps: float | None) -> float:
    return math.inf if eps is None else float(eps)


def _eps_label(eps: float | None) -> str:
    return "non-private" if eps is None else f"{eps:g}"


def _cell(stat: dict[str, Any], key: str) -> str:
    mean, sd = stat["mean"], stat["sd"]
    if mean is None:
        return "-"
    digits = 0 if key in ("sample_per_s", "train_seconds") and mean >= 100 else (
        1 if key in ("train_seconds", "sample_per_s", "codes_per_patient") else 3)
    text = f"{mean:.{digits}f}"
    return f"{text} ± {sd:.{digits}f}" if sd is not None else text


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """One row per (generator, epsilon), one column per metric (mean ± sd over seeds)."""
    head = ["generator", "epsilon", *[title for _, title, _ in METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        label = LABELS.get(e["generator"], e["generator"])
        if e["status"] != "ok":
            status = e["status"].split(":")[0]
            cells = [f"{status} (see notes)"] + ["-"] * (len(METRICS) - 1)
        else:
            cells = [_cell(e[key], key) for key, _, _ in METRICS]
        lines.append("| " + " | ".join([label, _eps_label(e["epsilon"]), *cells]) + " |")
    return "\n".join(lines)


def target_check(summary: list[dict[str, Any]]) -> list[str]:
    """Issue 6's target: ours >= the best baseline on co-occurrence r and dim-wise prediction at
    every epsilon, and > DP marginals on both at epsilon >= 3. One line per check."""
    lines = []
    by = {(e["generator"], e["epsilon"]): e for e in summary if e["status"] == "ok"}
    epsilons = sorted({e["epsilon"] for e in summary}, key=_eps_key)
    for ours in ("ours", "ours_federated"):
        for eps in epsilons:
            mine = by.get((ours, eps))
            if mine is None:
                continue
            for key in ("cooccurrence_r", "dimwise_auroc_ratio"):
                v = mine[key]["mean"]
                rivals = [(g, by[(g, eps)][key]["mean"]) for g in ("medgan", "corgan",
                          "dp_marginals") if (g, eps) in by and by[(g, eps)][key]["mean"]
                          is not None]
                if v is None or not rivals:
                    continue
                best_g, best_v = max(rivals, key=lambda t: t[1])
                ok = v >= best_v
                line = (f"- {LABELS[ours]}, epsilon {_eps_label(eps)}, {key}: {v:.3f} vs best "
                        f"baseline {LABELS[best_g]} {best_v:.3f}: {'met' if ok else 'NOT met'}")
                lines.append(line)
                marg = by.get(("dp_marginals", eps))
                if eps is not None and eps < 3 or marg is None or marg[key]["mean"] is None:
                    continue
                ok = v > marg[key]["mean"]
                lines.append(f"- {LABELS[ours]}, epsilon {_eps_label(eps)}, {key}: {v:.3f} "
                             f"beats DP marginals {marg[key]['mean']:.3f}: "
                             f"{'met' if ok else 'NOT met'}")
    return lines


def plot(summary: list[dict[str, Any]], out: Path) -> list[str]:
    """One PNG per plotted metric (metric vs epsilon, one line per generator) + all panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epsilons = sorted({e["epsilon"] for e in summary}, key=_eps_key)
    xs = {eps: (30.0 if eps is None else float(eps)) for eps in epsilons}
    plotted = [(k, t) for k, t, p in METRICS if p]
    files = []
    cols = 3
    rows_n = math.ceil(len(plotted) / cols)
    big, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    for i, (key, title) in enumerate(plotted):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for target in (ax, axes[i // cols][i % cols]):
            _draw(target, summary, key, title, xs)
        fig.tight_layout()
        name = f"plot_{key}.png"
        _save(fig, out / name)
        plt.close(fig)
        files.append(name)
    for j in range(len(plotted), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    big.tight_layout()
    _save(big, out / "benchmark.png")
    plt.close(big)
    return [*files, "benchmark.png"]


def _draw(ax: Any, summary: list[dict[str, Any]], key: str, title: str,
          xs: dict[float | None, float]) -> None:
    for gen in GENERATORS:
        pts = [(xs[e["epsilon"]], e[key]["mean"], e[key]["sd"] or 0.0) for e in summary
               if e["generator"] == gen and e["status"] == "ok" and e[key]["mean"] is not None]
        if not pts:
            continue
        pts.sort()
        x, y, err = zip(*pts, strict=True)
        # one colour per generator in every panel, also when a generator has no point there
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=LABELS[gen],
                    color=f"C{GENERATORS.index(gen)}")
    ax.set_xscale("log")
    ax.set_xticks(list(xs.values()))
    ax.set_xticklabels(["non-private" if e is None else f"{e:g}" for e in xs])
    ax.set_xlabel("epsilon")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def write_report(result: dict[str, Any], out: Path) -> None:
    """benchmark.json, benchmark.md and the PNGs, all written atomically."""
    summary = result["summary"]
    result["plots"] = plot(summary, out)
    write_json(out / "benchmark.json", result)
    with atomic_open(out / "benchmark.md", "w", encoding="utf-8") as fh:
        fh.write(render_markdown(result))


def render_markdown(result: dict[str, Any]) -> str:
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
    notes = [f"- {LABELS.get(e['generator'], e['generator'])} at epsilon "
             f"{_eps_label(e['epsilon'])}: {e['status']}" for e in summary if e["status"] != "ok"]
    if notes:
        parts += ["", "## Notes", "", *notes]
    if result.get("speed"):
        parts += ["", "## Speed", "", *render_speed(result["speed"])]
    plots = result.get("plots", [])
    if plots:
        parts += ["", "## Plots", "", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(parts) + "\n"


def render_speed(speed: dict[str, Any]) -> list[str]:
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


def speed_section(ours: Any, fed_dirs: list[str], ds: Dataset, s: BenchmarkSettings
                  ) -> dict[str, Any]:
    """DP vs non-private training speed (privacy engineer's bench_dp_speed), sampler steps,
    Flower round overhead (from the federated run's round log)."""
    from fedsynth.simulations.baselines.ours import round_overhead

    out: dict[str, Any] = {}
    try:
        out["dp_vs_nonprivate"] = dp_speed(ds.train.X, full=s.preset == "full")
    except Exception as err:  # a speed figure must not sink the table
        out["dp_vs_nonprivate"] = f"failed: {type(err).__name__}: {err}"
    if ours is not None and hasattr(ours.sampler, "sample_continuous"):
        n = 2000 if s.preset != "full" else 10_000
        rows = []
        for steps in (2, 5, 10, 20, 32):
            t0 = time.perf_counter()
            ours.sampler.sample_continuous(n, seed=0, steps=steps)
            rows.append({"steps": steps, "records_per_s": n / (time.perf_counter() - t0)})
        out["sampler_steps"] = rows
    else:
        out["sampler_steps"] = "our non-private model was not trained in this run"
    fl = None
    for d in fed_dirs:
        fl = round_overhead(d)
        if fl:
            break
    out["flower_round_overhead"] = fl or (
        "no federated run in this benchmark" if not fed_dirs else
        "the federation's rounds.jsonl has no per-round wall and local-training times")
    return out


def run_benchmark(s: BenchmarkSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run every (generator, epsilon, seed) cell, write the report into ``s.out``."""
    import torch

    from fedsynth.privacy.accountant import default_delta

    unknown = set(s.generators) - set(GENERATORS)
    if unknown:
        raise InputError("--generators", f"unknown generator(s) {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    ds = load_dataset(s)
    log.info("benchmark data: %s", ds.info)
    rows: list[dict[str, Any]] = []
    ours_plain, fed_dirs = None, []
    with tempfile.TemporaryDirectory(prefix="ehr-benchmark-") as tmp:
        for seed in range(s.seeds):
            for eps in s.epsilons:  # epsilon-major: a cut-short quick run still compares
                for name in s.generators:
                    if progress:
                        progress(f"{LABELS[name]} eps={_eps_label(eps)} seed={seed}")
                    torch.manual_seed(seed)
                    if s.time_budget and time.perf_counter() - start > s.time_budget:
                        rows.append({"generator": name, "epsilon": eps, "seed": seed,
                                     "status": f"skipped: past the {s.time_budget:.0f} s "
                                               f"budget of the {s.preset} preset"})
                        continue
                    row, fitted = run_cell(name, eps, seed, ds, s, Path(tmp))
                    rows.append(row)
                    write_json(s.out / "benchmark.partial.json", {"dataset": ds.info,
                                                                  "rows": rows})
                    if name == "ours" and eps is None and seed == 0:
                        ours_plain = fitted
                    if fitted is not None and "run_dir" in fitted.extra:
                        fed_dirs.append(fitted.extra["run_dir"])
        speed = speed_section(ours_plain, fed_dirs, ds, s) if s.speed else None
    summary = summarize(rows)
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in dataclasses.asdict(s).items()},
        "dataset": ds.info,
        "delta": s.delta or default_delta(ds.train.n_patients),
        "machine": _machine(),
        "wall_seconds": time.perf_counter() - start,
        "attribute_f1_holdout_baseline": _attribute_baseline(rows),
        "rows": rows,
        "summary": summary,
        "speed": speed,
    }
    write_report(result, s.out)
    return result


def _attribute_baseline(rows: list[dict[str, Any]]) -> float | None:
    """Mean attribute-disclosure F1 of the held-out-data attacker over the scored rows."""
    f1 = [r["attribute_f1_holdout_baseline"] for r in rows if "attribute_f1_holdout_baseline" in r]
    return float(np.mean(f1)) if f1 else None


def read_result(path: Path) -> dict[str, Any]:
    """A run's benchmark.json; InputError naming the file when it is missing or not one."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable benchmark.json ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise InputError(path, "not a benchmark.json (no 'rows' list)")
    return doc


def merge_results(paths: list[Path], out: Path) -> dict[str, Any]:
    """One report from several runs on the same data and split (e.g. one generator re-run after
    a fix): rows keyed by (generator, epsilon, seed), later files winning; the first file's
    settings, dataset and speed section; wall time summed. Written like a run's report."""
    docs = [read_result(path) for path in paths]
    first = docs[0]
    for path, doc in zip(paths[1:], docs[1:], strict=True):
        if doc.get("dataset") != first.get("dataset"):
            raise InputError(path, "another dataset or split than the first file's")
    rows: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for doc in docs:
        for r in doc["rows"]:
            rows[(r["generator"], r["epsilon"], r["seed"])] = r
    result = {**first, "rows": list(rows.values()), "summary": summarize(list(rows.values())),
              "wall_seconds": float(sum(d.get("wall_seconds", 0.0) for d in docs)),
              "merged_from": [str(p) for p in paths]}
    result["attribute_f1_holdout_baseline"] = _attribute_baseline(result["rows"])
    result.pop("plots", None)
    write_report(result, out)
    return result


def _machine() -> str:
    import os
    import platform

    import torch

    return (f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
