"""ehr-sample: draw synthetic patients from a trained model directory."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from fedsynth.common.data import write_matrix
from fedsynth.common.data.record_tokens import read_layout
from fedsynth.common.data.writer import write_records
from fedsynth.common.device import resolve_device
from fedsynth.common.errors import InputError, cli_errors
from fedsynth.common.model.record_output import sample_records
from fedsynth.common.model.store import load_model
from fedsynth.common.model.tree import TREE_FILE, load_tree_release

log = logging.getLogger("ehr-sample")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ehr-sample", description=__doc__)
    ap.add_argument("--model", required=True,
                    help="model directory written by ehr-train, ehr-server or ehr-simulate "
                         "(a federated MST run's model/ too)")
    ap.add_argument("--n", type=int, required=True, help="number of synthetic patients")
    ap.add_argument("--out", required=True, help="synthetic.csv or synthetic.parquet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda")
    ap.add_argument("--batch", type=int, default=1000, help="patients per sampler batch")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.n < 1:
        raise InputError("--n", "must be at least 1")
    if args.batch < 1:
        raise InputError("--batch", "must be at least 1")
    if not str(args.out).lower().endswith((".csv", ".parquet")):
        raise InputError(args.out, "output must end in .csv or .parquet")
    try:
        resolve_device(args.device)
    except ValueError as err:
        raise InputError("--device", str(err)) from None
    tree = Path(args.model) / TREE_FILE
    t0 = time.perf_counter()
    if tree.is_file():  # a federated MST release (ehr-server/ehr-simulate --generator mst)
        sampler, vocab = load_tree_release(tree)
        X = sampler.sample(args.n, seed=args.seed)
    else:
        gen = load_model(args.model, device=args.device)
        records = read_layout(args.model)
        if records is not None:  # a whole-records model (ehr-train --columns all)
            table, X, codes = sample_records(gen, *records, args.n, seed=args.seed,
                                             batch=args.batch, progress=not args.quiet)
            write_records(args.out, table, X, codes)
            log.info("%d records (%d columns and %d codes), %.2f codes per patient -> %s",
                     args.n, len(table.columns), len(codes), X.sum(axis=1).mean(), args.out)
            return
        t0 = time.perf_counter()
        X = gen.sample(args.n, seed=args.seed, batch=args.batch, progress=not args.quiet)
        vocab = gen.vocab
    dt = time.perf_counter() - t0
    write_matrix(args.out, X, vocab)
    log.info("%d patients in %.1f s (%.0f patients/s), %.2f codes per patient -> %s",
             args.n, dt, args.n / max(dt, 1e-9), X.sum(axis=1).mean(), args.out)


if __name__ == "__main__":
    main()
