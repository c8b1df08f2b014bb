"""ehr-audit: audit a trained generator against its members and held-out patients.

    ehr-audit --model MODEL_DIR --members A.csv --non-members B.csv [--format F] [--out DIR]
              [--privacy PRIVACY_JSON] [--canaries CANARIES_NPZ]
              [--columns auto|all|codes] [--attribute-targets COL1,COL2]

A whole-records model (ehr-train --columns all) is audited on whole records: members and
non-members are read with its schema, the attacks run on its own vectors (tokens then codes),
and an attribute-disclosure attack infers each target column from the others.
Writes DIR/audit.json and DIR/audit.html. Exit 1 when the audit fails (empirical lower bound
above the accountant's epsilon), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fedsynth.common.errors import InputError, cli_errors
from fedsynth.privacy.audit.config import AuditConfig

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ehr-audit", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model directory (ehr-train / ehr-simulate)")
    p.add_argument("--members", required=True, help="patients the model was trained on")
    p.add_argument("--non-members", required=True, help="held-out patients, same population")
    p.add_argument("--format", default="auto", help="auto|mimic|diabetes130|long|matrix")
    p.add_argument("--out", default="audit", help="output directory (default: ./audit)")
    p.add_argument("--privacy", help="privacy report JSON (epsilon, delta, accountant, history); "
                   "default: privacy.json in or next to the model directory")
    p.add_argument("--canaries", help=".npz with 'canaries' and 'included' (save_canaries) when "
                   "the model was trained with canaries: gives the canary epsilon lower bound")
    p.add_argument("--n-synth", type=int, default=AuditConfig.n_synth,
                   help="synthetic records drawn for the attacks")
    p.add_argument("--alpha", type=float, default=AuditConfig.alpha,
                   help="1 - confidence of the epsilon lower bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda")
    p.add_argument("--no-white-box", action="store_true", help="skip the loss attack")
    p.add_argument("--columns", choices=("auto", "all", "codes"), default="auto",
                   help="all: the model is a whole-records model and members / non-members are "
                   "patient records; codes: a codes-only model; auto (default): what the model "
                   "is (records_layout.json in its folder)")
    p.add_argument("--attribute-targets", metavar="COL1,COL2",
                   help="whole records: the categorical columns the attribute attack infers from "
                   "the others (default: readmitted,race for diabetes130, "
                   "hospital_expire_flag and ethnicity/race for MIMIC; other schemas: columns "
                   "named like race, ethnicity, readmitted or death, else the last categorical "
                   "column)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def read_privacy(
    path: str | None, extra: dict[str, Any], model_dir: str | Path | None = None
) -> dict[str, Any] | None:
    """The privacy report from --privacy, else privacy.json in the model directory (ehr-train)
    or next to it (ehr-server / ehr-simulate OUT/model), else the model config, else None."""
    if path is None and model_dir is not None:
        for cand in (Path(model_dir) / "privacy.json", Path(model_dir).parent / "privacy.json"):
            if cand.is_file():
                log.info("privacy report: %s", cand)
                return read_privacy(str(cand), extra)
    if path is None:
        found = extra.get("privacy") if isinstance(extra, dict) else None
        return found if isinstance(found, dict) and "epsilon" in found else None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a privacy report must be a JSON object")
    if "epsilon" not in data and "sites" not in data:
        found = data.get("privacy")
        if isinstance(found, dict) and "epsilon" in found:
            return found
        raise InputError(path, "no 'epsilon' key", "Pass the privacy report written by training")
    return data


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from rich.console import Console

    from fedsynth.common.data import load_codes
    from fedsynth.common.model.store import load_model
    from fedsynth.privacy.audit.run import run_audit

    console = Console(stderr=True)
    if args.n_synth < 10:
        raise InputError("--n-synth", f"must be at least 10, got {args.n_synth}")
    if not 0 < args.alpha < 1:
        raise InputError("--alpha", f"must be in (0, 1), got {args.alpha}")
    generator = load_model(args.model, device=args.device)
    privacy = read_privacy(args.privacy, getattr(generator, "extra", {}), args.model)
    layout = _records_layout(args)
    records = None
    if layout is None:
        members = load_codes(args.members, args.format, vocab=generator.vocab)
        non_members = load_codes(args.non_members, args.format, vocab=generator.vocab)
    else:
        from fedsynth.privacy.audit.records import RecordsAudit, load_members, parse_targets

        tokens, schema = layout
        targets = parse_targets(args.attribute_targets, schema)
        members, mem_table = load_members(args.members, args.format, tokens, schema,
                                          generator.vocab)
        non_members, non_table = load_members(args.non_members, args.format, tokens, schema,
                                              generator.vocab)
        records = RecordsAudit(schema, tokens.n_tokens, mem_table, non_table, targets)
    for name, m in ((args.members, members), (args.non_members, non_members)):
        if m.X.shape[0] < 2:
            raise InputError(name, f"needs at least 2 patients, found {m.X.shape[0]}")
    canaries = included = None
    if args.canaries:
        from fedsynth.privacy.audit.canaries import load_canaries

        canaries, included = load_canaries(args.canaries, members.X.shape[1])
    cfg = AuditConfig(n_synth=args.n_synth, alpha=args.alpha, seed=args.seed)
    identity = _identity(args, privacy, getattr(generator, "extra", {}), members.X.shape[0],
                         non_members.X.shape[0])
    with console.status("auditing: sampling, attacks, white-box scores ..."):
        synth = None
        if records is not None and layout is not None:
            from fedsynth.privacy.audit.records import sample_synthetic

            synth, records.synth = sample_synthetic(generator, layout[0], layout[1], cfg)
        audit = run_audit(generator, members.X, non_members.X, args.out, privacy, cfg,
                          canaries=canaries, included=included, white_box=not args.no_white_box,
                          identity=identity, synth=synth, records=records)
    out = Path(args.out)
    verdict = audit["verdict"]
    console.print(f"[bold]{verdict['headline']}[/bold]: {verdict['text']}")
    console.print(f"wrote {out / 'audit.json'} and {out / 'audit.html'}")
    if verdict["status"] == "fail":
        return 1
    return 0


def _records_layout(args: argparse.Namespace) -> tuple[Any, Any] | None:
    """The model's (token layout, schema) when it is a whole-records model, else None; a
    --columns that contradicts the model, or targets for a codes model, is an InputError."""
    from fedsynth.common.data.record_tokens import read_layout

    layout = read_layout(args.model)
    if layout is None and args.columns == "all":
        raise InputError(args.model, "a codes-only model (no records_layout.json): it has no "
                         "record columns to audit", "Pass --columns codes (or auto)")
    if layout is not None and args.columns == "codes":
        raise InputError(args.model, "a whole-records model: its vectors hold the schema's "
                         "columns before the codes, so it is audited on whole records",
                         "Pass --columns all (or auto) and patient records")
    if layout is None and args.attribute_targets:
        raise InputError("--attribute-targets", "only for a whole-records model (ehr-train "
                         "--columns all)")
    return layout


def _identity(args: argparse.Namespace, privacy: dict[str, Any] | None, extra: Any,
              n_members: int, n_non_members: int) -> dict[str, Any]:
    """Run id, data and model digests of this audit (the CLI holds the files)."""
    from fedsynth.privacy.audit.identity import (
        audit_identity,
        data_identity,
        find_run_id,
        model_identity,
    )

    data = [data_identity(args.members, n_members, "members"),
            data_identity(args.non_members, n_non_members, "non-members")]
    extra = extra if isinstance(extra, dict) else {}
    return audit_identity(find_run_id(privacy, extra), data, model_identity(args.model))


def entry() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
