"""``ehr-simulate``: the same ServerApp and ClientApp under Flower's simulation engine, on one
machine, with the data split into simulated sites. Same outputs as ``ehr-server``.

    ehr-simulate --data demo --sites 3 --out runs/demo
    ehr-simulate --data diabetic_data_dev.csv.gz --format diabetes130 --sites 5 \\
        --partition dirichlet:0.5 --epsilon 3 --out runs/d5

Each site keeps a held-out part of its patients (default 20%) that it never trains on; it is
used for evaluation (and ``--audit``) at the site, which keeps the figures in its state folder
(``OUT/state/site<k>/``). Afterwards ``ehr-simulate`` itself, holding every site's data, scores
``OUT/synthetic.csv`` against all sites' held-out patients pooled (``OUT/evaluation.json``) and
merges the sites' kept audits (``OUT/audit.json``): ``simulations.pooled``. Ray runs on
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.data.columns import add_columns_args
from fedsynth.common.errors import InputError, cli_errors
from fedsynth.server.options import add_plan_args, build_config, settings_from_args

log = logging.getLogger("ehr-simulate")
SIM_ROUND_TIMEOUT = 24 * 3600.0  # sites run one after another: no per-round deadline
# --data demo without --config, unless flags say: sites big enough for DP to learn (10,000
# patients each: about 100 of the cohort's 329 codes pass the counts' test), and no tail
# ([privacy] count_tail_gate 0): the demo writes no code that no site has
DEMO = {"rounds": 3, "local_epochs": 2.0, "samples": 2000, "count_tail_gate": 0.0}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehr-simulate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="PATH, or 'demo' for the built-in cohort")
    p.add_argument("--format", default="auto")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--partition", default=None,
                   help="iid | dirichlet:ALPHA | column:NAME (default: column:site for demo, "
                        "else iid)")
    p.add_argument("--demo-patients", type=int, default=10000,
                   help="patients per site of the demo cohort (default 10000)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--canaries", type=int, default=None,
                   help="with --audit: canary patients per site, each added to the site's "
                        "training rows with probability 1/2 (default 200; 0: none)")
    add_columns_args(p)
    p.add_argument("--no-progress", action="store_true")
    add_plan_args(p)
    return p


def load_cohort(args: argparse.Namespace) -> tuple[Any, Any]:
    """(a CodeMatrix from --data, or the demo cohort with one site per simulated site; the
    ``Records`` when the run models whole records, else None). Whole records: the matrix is
    the records' tokens then their codes (``common.data.record_tokens.records_matrix``)."""
    from fedsynth.common.data import demo_cohort
    from fedsynth.common.data.columns import load_matrix

    if args.data == "demo":
        if args.demo_patients < 10:
            raise InputError("--demo-patients", "must be at least 10")
        return demo_cohort(n_sites=args.sites, patients_per_site=args.demo_patients,
                           seed=args.seed), None
    matrix, records, _ = load_matrix(Path(args.data), args.format, args.columns, args.schema)
    return matrix, records


def write_sites(matrix: Any, parts: list[np.ndarray], holdout: float, seed: int,
                folder: Path, canaries: int = 0, records: Any = None) -> list[dict[str, int]]:
    """``site<k>.npz`` per simulated site: its train and held-out rows, the vocabulary, the
    held-out patients' ids (the operator's pooled evaluation) and, with ``canaries`` > 0, the
    site's audit canaries (``privacy.audit.canaries.make_canaries``) and which of them the
    site trains on (each with probability 1/2). Whole records (``records``: the cohort's
    ``Records``, rows of ``matrix``): the public schema too, and the site's train and held-out
    record tables (``privacy.audit.site_records.table_array``) for its own audit."""
    from fedsynth.common.atomic import atomic_path
    from fedsynth.common.data import split_holdout

    folder.mkdir(parents=True, exist_ok=True)
    vocab = json.dumps({"name": matrix.vocab.name, "codes": list(matrix.vocab.codes)})
    # whole records: the canaries keep a real row's columns and get their own number of codes
    layout = None
    if records is not None:
        from fedsynth.common.data.record_tokens import model_layout, recount_codes

        layout = model_layout(records.schema)
    tokens = 0 if layout is None else layout.n_tokens
    sizes = []
    for k, idx in enumerate(parts):
        train, hold = split_holdout(matrix.subset(idx), holdout, seed + k)
        arrays = {"train": train.X, "holdout": hold.X, "vocab": np.array(vocab),
                  "holdout_ids": np.asarray(hold.patient_ids).astype(str)}
        if records is not None:
            from fedsynth.privacy.audit.site_records import table_array

            arrays["schema"] = np.array(json.dumps(records.schema.to_dict()))
            for part, rows in (("train", train), ("holdout", hold)):
                arrays[f"{part}_records"] = table_array(
                    records.of_patients(rows.patient_ids).table, records.schema)
        if canaries > 0:
            from fedsynth.privacy.audit.canaries import insert_canaries

            _, arrays["canaries"], arrays["included"] = insert_canaries(
                train.X, canaries, seed=seed + 1000 + k, tokens=tokens)
            if layout is not None:
                recount_codes(arrays["canaries"], layout)
        with atomic_path(folder / f"site{k}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        sizes.append({"train": int(train.X.shape[0]), "holdout": int(hold.X.shape[0]),
                      "canaries_in": int(np.sum(arrays.get("included", 0)))})
    return sizes


@dataclass
class Outcome:
    """What a simulation left behind: its output folder, the launcher's status (``"status"``
    is ``"completed"`` when the federation ran to the end) and ``audit_rc`` (0 without
    ``--audit``; 1 when the audit refutes the accountant)."""

    out: Path
    status: dict[str, Any]
    audit_rc: int = 0

    @property
    def completed(self) -> bool:
        return self.status.get("status") == "completed"


def simulate(args: argparse.Namespace) -> int:
    """``ehr-simulate``: ``run`` plus the summary lines; the exit status."""
    from fedsynth.server.launch import summary

    outcome = run(args)
    print(summary(outcome.out))
    if not outcome.completed:
        print(f"simulation failed: {outcome.status.get('detail', '')}; logs in "
              f"{outcome.out / 'logs'}", file=sys.stderr)
        return 1
    return outcome.audit_rc


def run(args: argparse.Namespace) -> Outcome:
    """The simulation of ``args`` (``parser()``'s namespace): split the cohort into sites, run
    the federation, then the operator's outputs (``operator_outputs``). Also what
    ``fedsynth.simulate`` calls."""
    from fedsynth.server.launch import Launch, launch
    from fedsynth.simulations.partition import parse_partition, partition

    if args.sites < 1:
        raise InputError("--sites", f"must be at least 1 (got {args.sites})")
    if args.data == "demo" and args.config is None:  # quick preset: minutes on 2 cores
        args.rounds = args.rounds if args.rounds is not None else DEMO["rounds"]
        args.local_epochs = args.local_epochs or DEMO["local_epochs"]
        args.samples = args.samples or DEMO["samples"]
    cfg = build_config(args)
    if args.data == "demo" and args.config is None:
        cfg.privacy.count_tail_gate = DEMO["count_tail_gate"]
    if args.round_timeout is None:
        cfg.federation.round_timeout = SIM_ROUND_TIMEOUT
    spec = parse_partition(args.partition or ("column:site" if args.data == "demo" else "iid"))
    out: Path = args.out.resolve()
    if (out / "checkpoint").exists():
        raise InputError(out, "holds an earlier run", "choose a new --out")
    matrix, records = load_cohort(args)
    parts = partition(matrix.X, args.sites, spec, matrix.covariates, seed=args.seed)
    n_canaries = 0
    if args.audit:
        n_canaries = 200 if args.canaries is None else args.canaries
        if n_canaries < 0:
            raise InputError("--canaries", f"must be at least 0 (got {n_canaries})")
    sizes = write_sites(matrix, parts, cfg.federation.holdout, args.seed, out / "sites",
                        n_canaries, records)
    log.info("%d sites: %s", args.sites, ", ".join(f"site{k} {s['train']}+{s['holdout']}"
                                                   for k, s in enumerate(sizes)))
    settings = settings_from_args(args, cfg, out, min_sites=args.sites, mode="simulation")
    settings.wait_sites_timeout = 600.0
    run_config = {
        "sim-data-dir": str(out / "sites"), "sim-state-dir": str(out / "state"),
        "sim-epsilon-budget": float(args.epsilon), "holdout": cfg.federation.holdout,
        "seed": int(args.seed),
        # each simulated site's own delta (pinned in its ledger): --delta, else 0 = the site's
        # default (privacy.accountant.default_delta)
        "sim-delta": float(args.delta or 0.0),
        # each site's own evaluation (kept in its state folder) draws this many patients
        "sim-eval-samples": int(settings.samples), "sim-audit": bool(args.audit),
    }
    federation_config = {"num-supernodes": args.sites, "client-resources-num-cpus": 2,
                         "client-resources-num-gpus": 0.0}
    status = launch(Launch(settings=settings, simulation=True, run_config=run_config,
                           federation_config=federation_config, progress=not args.no_progress))
    outcome = Outcome(out, status)
    if outcome.completed:
        outcome.audit_rc = operator_outputs(out, settings.run_id, args.audit, args.seed, records)
    return outcome


def operator_outputs(out: Path, run_id: str, audit: bool, seed: int, records: Any = None) -> int:
    """What the simulation operator (who holds every site's data) computes after the run: the
    pooled evaluation into OUT/evaluation.json and, with --audit, the sites' kept audits
    merged into OUT/audit.json + audit.html; returns ``audit_status`` (0 without --audit)."""
    from fedsynth.server.launch import audit_status
    from fedsynth.simulations.pooled import merge_local_audits, pooled_evaluation

    pooled_evaluation(out, seed, records)
    if not audit:
        return 0
    if merge_local_audits(out, run_id) is None:
        log.warning("--audit: no site kept an audit of run %s in %s", run_id, out / "state")
        return 1
    return audit_status(out)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return simulate(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
