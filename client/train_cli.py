"""ehr-train: train the generator on one data set (non-private, or DP with --epsilon)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsynth.common.config import Config
from fedsynth.common.data import CodeMatrix
from fedsynth.common.data.columns import add_columns_args, load_matrix
from fedsynth.common.errors import InputError, cli_errors

if TYPE_CHECKING:
    from fedsynth.common.data.record_tokens import TokenLayout
    from fedsynth.common.data.records import Records

log = logging.getLogger("ehr-train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="ehr-train", description=__doc__)
    ap.add_argument("--data", required=True, help="input file (MIMIC, diabetes130, long, matrix)")
    ap.add_argument("--format", default="auto", help="auto|mimic|diabetes130|long|matrix")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--config", help="TOML file with [model] / [train] / [privacy] tables")
    ap.add_argument("--epochs", type=int, help="override train.epochs")
    ap.add_argument("--device", help="auto|cpu|cuda (override train.device)")
    ap.add_argument("--seed", type=int, help="override train.seed")
    ap.add_argument("--epsilon", type=float, help="train with DP-SGD to this epsilon")
    ap.add_argument("--delta", type=float,
                    help="DP delta (default: the one pinned in this data set's ledger, else "
                         "min(1e-5, 1/(10 n)) rounded down to a power of ten)")
    ap.add_argument("--state-dir",
                    help="folder of the privacy ledgers (default $XDG_STATE_HOME/fedsynth or "
                         "~/.local/state/fedsynth); every DP run on the same patients composes "
                         "in one ledger there, whatever --out is")
    add_columns_args(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def build_config(args: argparse.Namespace, base: Config | None = None) -> Config:
    """The run's Config: ``base`` (else ``--config``'s TOML, else the defaults) with the flags
    applied on top (the one mapping of flags to fields: ``fedsynth.train`` uses it too)."""
    if base is not None:
        config = base
    else:
        config = Config.from_toml(args.config) if args.config else Config()
    if args.epochs is not None:
        if args.epochs < 1:
            raise InputError("--epochs", "must be at least 1")
        config.train.epochs = args.epochs
    if args.device:
        config.train.device = args.device
    if args.seed is not None:
        config.train.seed = args.seed
    if args.epsilon is not None:
        if args.epsilon <= 0:
            raise InputError("--epsilon", "must be positive")
        config.privacy.epsilon = args.epsilon
    if args.delta is not None:
        if not 0 < args.delta < 1:
            raise InputError("--delta", "must be in (0, 1)")
        config.privacy.delta = args.delta
    return config


def check_device(config: Config, flag: str = "--") -> None:
    """Refuse a device this machine does not have before any work (one line naming it)."""
    from fedsynth.common.device import resolve_device

    try:
        resolve_device(config.train.device)
    except ValueError as err:
        raise InputError(f"{flag}device", str(err)) from None


def train_to_folder(matrix: CodeMatrix, config: Config, out: Path,
                    state_dir: str | Path | None = None, progress: bool = True,
                    flag: str = "--", records: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Train the generator of ``ehr-train`` and ``fedsynth.train`` into the model folder
    ``out``: DP-SGD with the data set's ledger (in ``state_dir``) when ``config.privacy.epsilon``
    is set, else non-private. ``flag``: how errors name a setting (``--device`` on the command
    line, ``device`` in Python). ``records``: a records model's (token layout, schema), for
    the DP trainer's outcome step (``client.private_train``). Returns the training report."""
    check_device(config, flag)
    if matrix.n_patients < 2:
        raise InputError(matrix.source or "data",
                         f"only {matrix.n_patients} patient(s): nothing to train on")
    if config.privacy.epsilon is None:
        from fedsynth.common.model.central import train_centralized

        return train_centralized(matrix.X, matrix.vocab, config, out, progress=progress,
                                 extra={"data": matrix.report.to_dict()})
    from fedsynth.client.private_train import train_centralized_private  # lazy: pulls in opacus

    report = train_centralized_private(matrix, config, out, state_dir=state_dir,
                                       progress=progress, records=records)
    privacy = report["privacy"]
    log.info("epsilon %.2f of %g spent on this data set at delta %g; ledger %s",
             privacy["epsilon"], config.privacy.epsilon, privacy["delta"], privacy["ledger"])
    return report


def train_loaded(matrix: CodeMatrix, records: Records | None, layout: TokenLayout | None,
                 config: Config, out: Path, state_dir: str | Path | None = None,
                 progress: bool = True, flag: str = "--") -> dict[str, Any]:
    """Train on ``load_matrix``' result (``ehr-train`` and ``fedsynth.train``): whole records
    (``records`` and their token ``layout``) or the code matrix alone (both None). The one-hot
    groups and ordinal values come from the public schema only (``record_tokens.
    model_columns``; a codes run has none, whatever a config says);
    a records model's folder gets the layout and schema (``records_layout.json``) beside the
    weights. Returns ``train_to_folder``'s report."""
    if (records is None) != (layout is None):
        raise ValueError("give records with their layout (or neither)")
    from fedsynth.common.data.record_tokens import set_model_columns

    set_model_columns(config.model, None if records is None else records.schema)
    report = train_to_folder(matrix, config, out, state_dir=state_dir, progress=progress,
                             flag=flag, records=None if records is None or layout is None
                             else (layout, records.schema))
    if records is not None and layout is not None:
        from fedsynth.common.data.record_tokens import write_layout

        write_layout(out, layout, records.schema)
    return report


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    config = build_config(args)
    check_device(config)  # before loading the data
    matrix, records, layout = load_matrix(args.data, args.format, args.columns, args.schema)
    report = train_loaded(matrix, records, layout, config, Path(args.out),
                          state_dir=args.state_dir, progress=not args.quiet)
    json.dump({"model_dir": str(args.out), **(report or {})}, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
