"""``ehr-client budget``: print a site's privacy ledger, or re-seal a damaged one.

    ehr-client budget --site A --state-dir DIR [--budget E] [--delta D] [--json]
    ehr-client budget --site A --state-dir DIR --accept-ledger   # operator recovery

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

from rich.console import Console
from rich.table import Table

from common.errors import InputError, cli_errors
from privacy.accountant import ACCOUNTANTS, epsilon
from privacy.ledger import Ledger, LedgerCorrupted, accept_ledger

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehr-client budget", description=__doc__.splitlines()[0])
    p.add_argument("--site", required=True, help="site name (as given to ehr-client --site)")
    p.add_argument("--state-dir", required=True, help="the site's state directory")
    p.add_argument("--budget", type=float, default=None, help="the site's epsilon budget")
    p.add_argument("--delta", type=float, default=1e-5, help="delta (default 1e-5)")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="prv")
    p.add_argument("--json", action="store_true", help="print the privacy report as JSON")
    p.add_argument("--accept-ledger", action="store_true",
                   help="operator recovery of a damaged ledger; never lowers the spend")
    return p


@cli_errors
def budget_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.delta < 1:
        raise InputError("--delta", f"must be in (0, 1), got {args.delta}")
    try:
        if args.accept_ledger:
            before = _quiet_open(args.state_dir, args.site)
            ledger = accept_ledger(args.state_dir, args.site)
            verb = "verified, unchanged" if before else "re-sealed"
            print(f"ledger {ledger.path}: {verb}, {len(ledger.entries)} entries", file=sys.stderr)
        else:
            ledger = Ledger.open(args.state_dir, args.site)
    except LedgerCorrupted as err:
        raise InputError(None, str(err)) from None
    except ValueError as err:
        raise InputError("--site", str(err)) from None
    report = ledger.report(args.delta, args.budget, args.accountant)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(ledger, report, args.delta, args.accountant)
    return 0


def _quiet_open(state_dir: str, site: str) -> bool:
    try:
        Ledger.open(state_dir, site)
        return True
    except LedgerCorrupted:
        return False


def _print_table(ledger: Ledger, report: dict, delta: float, accountant: str) -> None:
    table = Table(title=f"privacy ledger of site {ledger.site} ({ledger.path})")
    for col in ("#", "run", "round", "recorded (UTC)", "steps", "sigma", "q",
                f"epsilon spent ({accountant})"):
        table.add_column(col, justify="right" if col not in ("run", "recorded (UTC)") else "left")
    for i, e in enumerate(ledger.entries):
        cumulative = epsilon(ledger.history[: i + 1], delta, accountant)
        when = datetime.fromtimestamp(e.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
        m = e.mechanism
        table.add_row(str(i + 1), e.run_id, str(e.round), when, str(m.steps),
                      f"{m.noise_multiplier:.4g}", f"{m.sample_rate:.4g}", f"{cumulative:.4f}")
    console = Console()
    console.print(table)
    left = report["epsilon_left"]
    other = "rdp" if accountant == "prv" else "prv"
    console.print(
        f"site {ledger.site}: epsilon spent {report['epsilon']:.4f} at delta={delta:g} "
        f"({accountant}; {other} cross-check {report[f'epsilon_{other}']:.4f}); "
        f"budget {report['budget'] if report['budget'] is not None else 'not given'}; "
        f"epsilon left {'n/a' if left is None else f'{left:.4f}'}"
    )


def main() -> None:  # pragma: no cover - convenience entry for `python -m client.budget_cli`
    sys.exit(budget_main())


if __name__ == "__main__":  # pragma: no cover
    main()
