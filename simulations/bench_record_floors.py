"""The floors of the record metrics (issue 16): what real data and independent columns score.

    python -m fedsynth.simulations.bench_record_floors --out DIR [--data PATH] [--n-synth N]

On the diabetes130 development split, 80/20 by patient (``split_holdout``, seed 0):

- real: the train part, subsampled to ``--n-synth`` records, against the held-out patients:
  what a perfect generator would score (and, for the distances, what copying its training
  records looks like);
- independent: every column (schema column and code) sampled on its own from the train part's
  marginal, ``--n-synth`` records: exact marginals, no association.

Both are scored with ``record_fidelity`` (the train part as the real training set and the DCR
members), plus code co-occurrence r and the records attribute disclosure (``readmitted`` and
``race`` inferred from the rest). Writes DIR/record_floors.json and DIR/record_floors.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.data.records import Records, load_records
from fedsynth.common.data.split import split_holdout
from fedsynth.common.errors import cli_errors
from fedsynth.common.metrics import cooccurrence_r
from fedsynth.common.record_metrics import association_r, record_fidelity
from fedsynth.privacy.audit.attribute_records import record_attribute_disclosure

log = logging.getLogger(__name__)

DEFAULT_DATA = (Path(__file__).resolve().parents[2] / "shared" / "data" / "diabetes130"
                / "diabetic_data_dev.csv.gz")
ATTRIBUTES = ("readmitted", "race")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_record_floors", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for record_floors.json / .md")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="diabetes130 file")
    ap.add_argument("--format", default="diabetes130")
    ap.add_argument("--n-synth", type=int, default=20_000, help="records per floor")
    ap.add_argument("--max-holdout", type=int, default=0, help="cap held-out records (0: all)")
    ap.add_argument("--max-train", type=int, default=0, help="cap train records (0: all)")
    ap.add_argument("--target", default="readmitted=<30", help="downstream task COLUMN=VALUE")
    ap.add_argument("--dcr-rows", type=int, default=2000)
    ap.add_argument("--disc-rows", type=int, default=10_000)
    ap.add_argument("--attr-targets", type=int, default=1000,
                    help="records attacked per attribute run (0: no attribute disclosure)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def split_records(records: Records, seed: int) -> tuple[Records, Records]:
    """(train, held-out) by patient, the same patients as ``split_holdout`` on the codes."""
    train, hold = split_holdout(records.codes, 0.2, seed)
    pos = pd.Index(records.patient_ids)
    return (records.subset(pos.get_indexer(train.patient_ids)),
            records.subset(pos.get_indexer(hold.patient_ids)))


def cap(records: Records, n: int, rng: np.random.Generator) -> Records:
    if n <= 0 or n >= len(records):
        return records
    return records.subset(np.sort(rng.choice(len(records), n, replace=False)))


def independent_columns(train: Records, n: int,
                        rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """n records whose every column (and every code) is drawn from the train part's marginal
    on its own: each value comes from an independently drawn train record."""
    table = pd.DataFrame({c: train.table[c].to_numpy()[rng.integers(0, len(train), n)]
                          for c in train.schema.names})
    table = table.astype({c: train.table[c].dtype for c in train.schema.names})
    prevalence = train.codes.X.mean(axis=0)
    codes = (rng.random((n, len(prevalence))) < prevalence).astype(np.uint8)
    return table, codes


def score(name: str, hold: Records, train: Records, synth: pd.DataFrame, codes: np.ndarray,
          args: argparse.Namespace) -> dict[str, Any]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    m: dict[str, Any] = dict(record_fidelity(
        hold.table, synth, hold.schema, train.table, args.target, codes_real=hold.codes.X,
        codes_synth=codes, codes_train=train.codes.X, seed=args.seed, dcr_rows=args.dcr_rows,
        disc_rows=args.disc_rows, timings=timings))
    timings["record_fidelity"] = time.perf_counter() - t0
    m["association_r_uncorrected"] = association_r(hold.table, synth, hold.schema,
                                                   corrected=False)
    m["cooccurrence_r"] = cooccurrence_r(hold.codes.X, codes)
    if args.attr_targets:
        t0 = time.perf_counter()
        m["attribute"] = {a: record_attribute_disclosure(
            train.table, hold.table, synth, hold.schema, a, n_targets=args.attr_targets,
            seed=args.seed) for a in ATTRIBUTES if a in hold.schema.names}
        timings["attribute"] = time.perf_counter() - t0
    m["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    log.info("%s floor scored in %.1f s", name, timings["record_fidelity"])
    return m


ROWS = (  # (label, key, format)
    ("categorical TV (mean)", "tv_mean", "{:.4f}"),
    ("categorical TV (max)", "tv_max", "{:.4f}"),
    ("numeric KS (mean)", "ks_mean", "{:.4f}"),
    ("numeric KS (max)", "ks_max", "{:.4f}"),
    ("association r", "association_r", "{:.3f}"),
    ("association r, uncorrected V / eta", "association_r_uncorrected", "{:.3f}"),
    ("association r, with the top 10 codes", "association_r_codes", "{:.3f}"),
    ("code co-occurrence r", "cooccurrence_r", "{:.3f}"),
    ("downstream AUROC trained on synthetic (TSTR)", "downstream_auroc_tstr", "{:.3f}"),
    ("downstream AUROC trained on real (TRTR)", "downstream_auroc_trtr", "{:.3f}"),
    ("downstream ratio TSTR / TRTR", "downstream_auroc_ratio", "{:.3f}"),
    ("discriminator AUROC", "discriminator_auroc", "{:.3f}"),
    ("DCR median, members", "dcr_members_median", "{:.4f}"),
    ("DCR median, held-out", "dcr_holdout_median", "{:.4f}"),
    ("DCR exact copies of members", "dcr_exact_members", "{:.3f}"),
    ("DCR members vs held-out AUROC", "dcr_auroc", "{:.3f}"),
    ("synthetic closer to a member than to held-out", "dcr_closer_to_members", "{:.3f}"),
)


def markdown(result: dict[str, Any]) -> str:
    floors = result["floors"]
    names = list(floors)
    s = result["sizes"]
    lines = [f"Record metrics floors: {s['holdout']} held-out patients vs {s['synthetic']} "
             f"records per floor (train part: {s['train']} patients; target "
             f"{result['settings']['target']}).", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in ROWS:
        vals = [fmt.format(floors[n][key]) if key in floors[n] else "-" for n in names]
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    for a in ATTRIBUTES:
        if all(a in floors[n].get("attribute", {}) for n in names):
            for label, key in (("members, synthetic source", "accuracy_members_synth"),
                               ("non-members, synthetic source", "accuracy_nonmembers_synth"),
                               ("members, held-out source", "accuracy_members_holdout")):
                vals = [f"{floors[n]['attribute'][a][key]:.3f}" for n in names]
                lines.append(f"| infer {a} (1-NN): {label} | " + " | ".join(vals) + " |")
    lines.append("| seconds (record_fidelity) | " + " | ".join(
        f"{floors[n]['timings_s']['record_fidelity']:.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    t0 = time.perf_counter()
    records = load_records(args.data, args.format)
    load_s = time.perf_counter() - t0
    train, hold = split_records(records, args.seed)
    rng = np.random.default_rng((args.seed, 1))  # its own stream (see gower.gower_dcr)
    train, hold = cap(train, args.max_train, rng), cap(hold, args.max_holdout, rng)
    real = cap(train, args.n_synth, rng)
    indep_table, indep_codes = independent_columns(train, args.n_synth, rng)
    floors = {"real": score("real", hold, train, real.table, real.codes.X, args),
              "independent": score("independent", hold, train, indep_table, indep_codes, args)}
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "sizes": {"patients": len(records), "train": len(train), "holdout": len(hold),
                  "synthetic": len(real)},
        "load_s": round(load_s, 2),
        "floors": floors,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "record_floors.json", result)
    table = markdown(result)
    with atomic_open(out / "record_floors.md", "w", encoding="utf-8") as fh:
        fh.write(table)
    print(table, end="")


if __name__ == "__main__":
    main()
