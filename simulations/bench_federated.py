"""Federation benchmark: run ``ehr-simulate`` (or summarise finished runs) and tabulate wall time
per round, bytes sent/received per round, peak memory of the whole process tree, the privacy
release and the pooled held-out figures.

    python -m fedsynth.simulations.bench_federated \\
        --data ../shared/data/diabetes130/diabetic_data_dev.csv.gz \\
        --format diabetes130 --sites 5 --partition dirichlet:0.5 --epsilon 3 --out runs/bench
    python -m fedsynth.simulations.bench_federated --sites 50 --rounds 3 \\
        --data demo --out runs/scale50
    python -m fedsynth.simulations.bench_federated --summarise runs/deploy runs/bench/sim
    python -m fedsynth.simulations.bench_federated --compare \
        --data ../shared/data/diabetes130/diabetic_data_dev.csv.gz --format diabetes130 \
        --sites 5 --partition dirichlet:0.5 --epsilon 3 --out runs/compare

``--compare --from-benchmark runs/benchmark/benchmark.json`` builds the same table from an
``ehr-benchmark`` run (its ``ours`` and ``ours_federated`` rows are these fits).

``--compare``: one 80/20 patient split; on the 80%, centralized non-private, centralized DP
and federated DP (``ehr-simulate`` over ``--sites`` sites, the same epsilon per site), all with
the package defaults; every model scored against the same held-out 20% (the core metrics).

Deployment runs (``ehr-server`` + ``ehr-client``) write the same ``rounds.jsonl``, so their
per-round wall time and bytes sit in the same table as the simulation's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.errors import cli_errors
from fedsynth.federation.flower_runtime import run_processes


def _tree_rss(pid: int, home: Path) -> int:
    """Resident memory (bytes) of ``pid`` plus every process started under ``home``."""
    total = 0
    for p in {pid, *run_processes(str(home.resolve()))}:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def run_simulation(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    out = Path(args.out) / "sim"
    cmd = [str(Path(sys.executable).with_name("ehr-simulate")), "--data", args.data,
           "--format", args.format, "--sites", str(args.sites), "--epsilon", str(args.epsilon),
           "--out", str(out), "--no-progress", *extra]
    if args.partition:
        cmd += ["--partition", args.partition]
    if args.rounds:
        cmd += ["--rounds", str(args.rounds)]
    t0, peak = time.monotonic(), 0
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid, out / "flwr-home"))
        time.sleep(1.0)
    return {"command": " ".join(cmd), "returncode": proc.returncode,
            "wall_seconds": round(time.monotonic() - t0, 1), "peak_rss_gb": round(peak / 2**30, 2),
            **summarise(out)}


def summarise(run: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines() if x.strip()]
    out: dict[str, Any] = {"run": str(run), "rounds": len(rows)}
    done = [r for r in rows if r["status"] == "completed"]
    if done:
        out["seconds_per_round"] = round(sum(r["seconds"] for r in done) / len(done), 1)
        out["mb_sent_per_round"] = round(sum(r["bytes_sent"] for r in done) / len(done) / 1e6, 1)
        out["mb_received_per_round"] = round(
            sum(r["bytes_received"] for r in done) / len(done) / 1e6, 1)
        out["sites_per_round"] = round(sum(len(r["accepted"]) for r in done) / len(done), 1)
    for name in ("privacy.json", "evaluation.json", "run.json"):
        try:
            doc = json.loads((run / name).read_text())
        except (OSError, ValueError):
            continue
        if name == "privacy.json":
            out["epsilon_released"] = doc.get("epsilon")
            out["epsilon_per_site"] = {s: round(r["epsilon"], 4)
                                       for s, r in doc.get("sites", {}).items()}
        elif name == "evaluation.json":
            out["pooled"] = {k: round(v, 4) for k, v in doc.get("pooled", {}).items()}
        else:
            out["mode"] = doc.get("mode")
    return out


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Centralized non-private vs centralized DP vs federated DP on one held-out split."""
    from fedsynth.common.data import load_codes, split_holdout
    from fedsynth.common.metrics import fidelity
    from fedsynth.simulations.baselines.ours import FederatedOptions, fit_ours, fit_ours_federated

    matrix = load_codes(args.data, args.format)
    train, hold = split_holdout(matrix, 0.2, seed=args.seed)
    work = Path(args.out) / "compare"
    work.mkdir(parents=True, exist_ok=True)
    opts = FederatedOptions(sites=args.sites, partition=args.partition or "dirichlet:0.5")
    runs = [
        ("centralized, non-private", lambda: fit_ours(train, None, None, args.seed, "full", work)),
        (f"centralized DP, eps {args.epsilon:g}",
         lambda: fit_ours(train, args.epsilon, None, args.seed, "full", work)),
        (f"federated DP, {opts.sites} sites {opts.partition}, eps {args.epsilon:g} per site",
         lambda: fit_ours_federated(train, args.epsilon, None, args.seed, "full", work, opts)),
    ]
    rows = []
    for label, fit in runs:
        fitted = fit()
        synth = fitted.sampler.sample(args.n_synth, seed=args.seed + 1)
        m = fidelity(hold.X, synth, train.X, seed=args.seed)
        row = {"model": label, "train_minutes": round(fitted.train_seconds / 60, 1),
               "epsilon": None if fitted.privacy is None else fitted.privacy.get("epsilon"),
               **{k: round(float(m[k]), 4) for k in COMPARE_KEYS},
               "codes_per_patient": round(m["codes_per_patient_synth"]["mean"], 2)}
        if "run_dir" in fitted.extra:
            row.update({k: v for k, v in summarise(Path(fitted.extra["run_dir"])).items()
                        if k in ("seconds_per_round", "mb_sent_per_round",
                                 "mb_received_per_round", "rounds")})
        rows.append(row)
        print(row, flush=True)
    central_dp, federated = rows[1]["cooccurrence_r"], rows[2]["cooccurrence_r"]
    return {"data": str(args.data), "n_train": train.n_patients, "n_heldout": hold.n_patients,
            "rows": rows, "federated_vs_central_dp_cooccurrence": round(federated / central_dp, 4)}


COMPARE_KEYS = ("prevalence_r", "cooccurrence_r", "dimwise_auroc_ratio", "discriminator_auroc")


def compare_from_benchmark(path: Path, eps: float) -> dict[str, Any]:
    """The same table from an ``ehr-benchmark`` run (benchmark.json), whose ``ours`` and
    ``ours_federated`` rows are these three fits on the same 80/20 split (seed 0)."""
    from fedsynth.simulations.benchmark_merge import read_result

    doc = read_result(path)
    want = [("ours", None, "centralized, non-private"),
            ("ours", eps, f"centralized DP, eps {eps:g}"),
            ("ours_federated", eps, f"federated DP, {doc['settings']['sites']} sites "
             f"{doc['settings']['partition']}, eps {eps:g} per site")]
    rows = []
    for gen, e, label in want:
        match = [r for r in doc["rows"] if r["generator"] == gen and r["epsilon"] == e
                 and r.get("seed", 0) == 0 and r["status"] == "ok"]
        if not match:
            raise SystemExit(f"{path}: no finished {gen} row at epsilon {e}")
        r = match[0]
        rows.append({"model": label, "epsilon": r.get("epsilon_spent"),
                     **{k: round(float(r[k]), 4) for k in COMPARE_KEYS},
                     "codes_per_patient": round(float(r["codes_per_patient"]), 2),
                     "train_minutes": round(float(r["train_seconds"]) / 60, 1)})
    ds = doc["dataset"]
    return {"data": ds["source"], "n_train": ds["train_patients"],
            "n_heldout": ds["holdout_patients"], "rows": rows, "from": str(path),
            "federated_vs_central_dp_cooccurrence": round(
                rows[2]["cooccurrence_r"] / rows[1]["cooccurrence_r"], 4)}


def compare_markdown(res: dict[str, Any]) -> str:
    cols = ["model", "epsilon", *COMPARE_KEYS, "codes_per_patient", "train_minutes",
            "seconds_per_round", "mb_sent_per_round"]
    lines = [f"Train {res['n_train']} / held-out {res['n_heldout']} patients of {res['data']}.",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in res["rows"]:
        lines.append("| " + " | ".join(
            f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols)
            + " |")
    lines.append("")
    lines.append("Federated / centralized DP co-occurrence r: "
                 f"{res['federated_vs_central_dp_cooccurrence']:.3f} (target >= 0.95)")
    return "\n".join(lines) + "\n"


def markdown(results: list[dict[str, Any]]) -> str:
    head = ("| run | mode | rounds | s/round | MB sent/round | MB recv/round | peak GB | eps "
            "| cooc r | dimwise ratio |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in results:
        pooled = r.get("pooled", {})
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["run"], r.get("mode", ""), r.get("rounds"), r.get("seconds_per_round", ""),
            r.get("mb_sent_per_round", ""), r.get("mb_received_per_round", ""),
            r.get("peak_rss_gb", ""), r.get("epsilon_released", ""),
            pooled.get("cooccurrence_r", ""), pooled.get("dimwise_auroc_ratio", "")))
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_federated", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="demo")
    p.add_argument("--format", default="auto")
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--partition", default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--epsilon", type=float, default=3.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--summarise", nargs="*", type=Path, default=None,
                   help="only summarise these finished run folders")
    p.add_argument("--compare", action="store_true",
                   help="centralized non-private vs centralized DP vs federated DP")
    p.add_argument("--from-benchmark", type=Path,
                   help="with --compare: build the table from an ehr-benchmark benchmark.json")
    p.add_argument("--n-synth", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    args, extra = p.parse_known_args(argv)
    if args.compare:
        res = (compare_from_benchmark(args.from_benchmark, args.epsilon)
               if args.from_benchmark else compare(args))
        write_json(args.out / "compare.json", res)
        md = compare_markdown(res)
        with atomic_open(args.out / "compare.md", "w", encoding="utf-8") as fh:
            fh.write(md)
        print(md)
        return 0
    if args.summarise is not None:
        results = [summarise(r) for r in args.summarise]
    else:
        results = [run_simulation(args, extra)]
    write_json(args.out / "bench_federated.json", results)
    with atomic_open(args.out / "bench_federated.md", "w", encoding="utf-8") as fh:
        fh.write(markdown(results))
    print(markdown(results))
    return 0 if all(r.get("returncode", 0) == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
