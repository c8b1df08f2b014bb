"""``ehr-client budget``: print a site's privacy ledger, or re-seal a damaged one.

    ehr-client budget --site A --state-dir DIR [--budget E] [--json]
    ehr-client budget --site A --state-dir DIR --set-budget E   # change the stored budget
    ehr-client budget --site A --state-dir DIR --accept-ledger   # operator recovery
    ehr-client budget --site A --state-dir DIR --accept-ledger --delta 1e-05   # pin an old ledger

Epsilon is recomputed from the whole ledger history (cumulative after each entry), never read
from a stored running total. ``--accept-ledger`` never lowers the recorded spend (see
``privacy.ledger``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedsynth.client.site_budget import check_budget, store_budget, stored_budget
from fedsynth.common.errors import InputError, cli_errors
from fedsynth.common.names import check_site_name
from fedsynth.privacy.accountant import ACCOUNTANTS, epsilon
from fedsynth.privacy.ledger import Ledger, LedgerCorrupted, accept_ledger, check_delta

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehr-client budget", description=__doc__.splitlines()[0])
    p.add_argument("--site", required=True, help="site name (as given to ehr-client --site)")
    p.add_argument("--state-dir", required=True, help="the site's state directory")
    p.add_argument("--budget", type=float, default=None,
                   help="compare with this epsilon budget (default: the site's stored one)")
    p.add_argument("--set-budget", type=float, default=None, metavar="E",
                   help="change the site's stored lifetime epsilon budget to E (what "
                        "ehr-client enforces from its next run)")
    p.add_argument("--delta", type=float, default=None,
                   help="the site's delta (default: the one pinned in its ledger; a different "
                        "one is refused). Needed only to pin a ledger written without one")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="prv")
    p.add_argument("--json", action="store_true", help="print the privacy report as JSON")
    p.add_argument("--accept-ledger", action="store_true",
                   help="operator recovery of a damaged ledger; never lowers the spend")
    return p


@cli_errors
def budget_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.delta is not None:
        check_delta(args.delta)
    if args.budget is not None:
        check_budget(args.budget, "--budget")
    if args.set_budget is not None:
        check_budget(args.set_budget, "--set-budget")
    state = Path(args.state_dir)
    if not state.is_dir():
        raise InputError(state, "no such state folder (the site's --state-dir)",
                         "check the path; nothing was created")
    check_site_name(args.site)
    if args.set_budget is not None:
        before = stored_budget(state, args.site)
        path = store_budget(state, args.site, args.set_budget, "ehr-client budget --set-budget")
        print(f"site {args.site}: epsilon budget {args.set_budget:g} stored in {path} (was "
              f"{'not set' if before is None else f'{before:g}'})", file=sys.stderr)
    if args.budget is None:
        args.budget = stored_budget(state, args.site)
    if not args.accept_ledger and not any(p.exists() for p in Ledger.paths(state, args.site)):
        print(f"site {args.site}: no privacy ledger in {state} (nothing spent, nothing created)",
              file=sys.stderr)
        return 0
    try:
        if args.accept_ledger:
            before = _quiet_open(args.state_dir, args.site)
            ledger = accept_ledger(args.state_dir, args.site, args.delta)
            verb = "verified, unchanged" if before else "re-sealed"
            print(f"ledger {ledger.path}: {verb}, {len(ledger.entries)} entries", file=sys.stderr)
        else:
            ledger = Ledger.open(args.state_dir, args.site, args.delta)
    except LedgerCorrupted as err:
        raise InputError(None, str(err)) from None
    if ledger.delta is None:  # nothing recorded yet: epsilon 0 at any delta
        print(f"site {args.site}: no privacy spend recorded in {ledger.path}", file=sys.stderr)
        ledger = Ledger.open(args.state_dir, args.site, args.delta or 1e-5)
    delta = float(ledger.delta)  # type: ignore[arg-type]
    report = ledger.report(delta, args.budget, args.accountant, local=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(ledger, report, delta, args.accountant)
    if args.budget is not None and report["epsilon"] > args.budget:
        print(f"warning: site {args.site} has spent epsilon {report['epsilon']:.2f}, more than "
              f"its budget {args.budget:g}: it refuses to train", file=sys.stderr)
        return 3
    return 0


def _quiet_open(state_dir: str, site: str) -> bool:
    try:
        Ledger.open(state_dir, site)
        return True
    except LedgerCorrupted:
        return False


def _print_table(ledger: Ledger, report: dict, delta: float, accountant: str) -> None:
    table = Table(title=f"privacy ledger of site {ledger.site} ({ledger.path})")
    left_cols = ("mechanism", "run", "recorded (UTC)")
    for col in ("#", "mechanism", "run", "round", "recorded (UTC)", "steps", "sigma", "q",
                f"epsilon spent ({accountant})"):
        table.add_column(col, justify="left" if col in left_cols else "right")
    for i, e in enumerate(ledger.entries):
        cumulative = epsilon(ledger.history[: i + 1], delta, accountant)
        when = datetime.fromtimestamp(e.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
        m = e.mechanism
        table.add_row(str(i + 1), e.note or "-", e.run_id, str(e.round), when, str(m.steps),
                      f"{m.noise_multiplier:.4g}", f"{m.sample_rate:.4g}", f"{cumulative:.2f}")
    console = Console()
    console.print(table)
    left = report["epsilon_left"]
    other = "rdp" if accountant == "prv" else "prv"
    console.print(
        f"site {ledger.site}: epsilon spent {report['epsilon']:.2f} at delta={delta:g} "
        f"({accountant}; {other} cross-check {report[f'epsilon_{other}']:.2f}); "
        f"budget {report['budget'] if report['budget'] is not None else 'not given'}; "
        f"epsilon left {'n/a' if left is None else f'{left:.2f}'}; "
        f"ledger head {report['ledger_head'][:16]}"
    )


def main() -> None:  # pragma: no cover - `python -m fedsynth.client.budget_cli`
    sys.exit(budget_main())


if __name__ == "__main__":  # pragma: no cover
    main()
