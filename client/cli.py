"""``ehr-client``: a hospital joins the federation. Starts a Flower SuperNode with the site's
node config; the site's data, ledger and budget stay local and are enforced here.

    ehr-client --site A --data sites/a.csv --server 127.0.0.1:9092 --state-dir state/a \\
        --epsilon-budget 3 --insecure
    ehr-client budget --site A --state-dir state/a          # the site's privacy ledger
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fedsynth.client import refusal
from fedsynth.client.site_budget import check_budget, site_budget
from fedsynth.common.data.columns import add_columns_args
from fedsynth.common.errors import InputError, cli_errors
from fedsynth.common.names import check_site_name

log = logging.getLogger("ehr-client")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ehr-client", description=__doc__.split("\n\n")[0],
        epilog="The site's privacy ledger: `ehr-client budget --site A --state-dir DIR "
               "[--budget E] [--json]` (see `ehr-client budget --help`). "
               + refusal.EXIT_CODES_HELP + ".")
    p.add_argument("--site", required=True, help="site name (letters, digits, _ . -)")
    p.add_argument("--data", required=True, type=Path, help="the site's patients")
    p.add_argument("--format", default="auto",
                   help="auto|mimic|diabetes130|long|matrix (default auto)")
    add_columns_args(p, " (public: the site sends it to the coordinator)")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the SuperLink")
    p.add_argument("--state-dir", required=True, type=Path,
                   help="the site's private state: privacy ledger, Flower home, logs")
    p.add_argument("--epsilon-budget", type=float, default=None,
                   help="the site's own lifetime epsilon budget, enforced by its ledger; "
                        "stored in --state-dir at first use (later runs may leave it out; a "
                        "different value is refused: `ehr-client budget --set-budget` "
                        "changes it)")
    p.add_argument("--delta", type=float, default=None,
                   help="the site's own delta, pinned in its ledger at first use (default: the "
                        "ledger's, or default_delta(n) for a new site); a plan asking for "
                        "another delta is refused")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="share of patients held out for evaluation, never trained on")
    p.add_argument("--device", default="cpu", help="cpu|cuda|auto")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for training (default: min(2, cores)); with several "
                        "clients on one host, give each its share of the cores")
    p.add_argument("--no-check", action="store_true", help="skip loading the data at start")
    p.add_argument("--once", action="store_true",
                   help="no retry: exit at the first failed connection or SuperNode exit")
    p.add_argument("--max-retries", type=int, default=20, metavar="N",
                   help="failed connections (coordinator unreachable, SuperNode exited) "
                        "retried, with a growing pause, before giving up with exit code 4 "
                        "(default 20; counted again from 0 after each successful join); a "
                        "refusal no retry can fix (key, CA, host name, TLS) exits at once")
    tls = p.add_argument_group("transport security")
    tls.add_argument("--insecure", action="store_true",
                     help="plaintext, no authentication (tests and local trials only)")
    tls.add_argument("--root-certificates", type=Path, help="the coordinator's CA certificate")
    tls.add_argument("--auth-key", type=Path,
                     help="the site's private key (from `ehr-certs enroll`)")
    return p


def _check(args: argparse.Namespace) -> list[str]:
    check_site_name(args.site)
    host, sep, port = args.server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("--server", f"'{args.server}' is not HOST:PORT")
    if not args.data.exists():
        raise InputError(args.data, "data file not found")
    if args.epsilon_budget is not None:
        check_budget(args.epsilon_budget, "--epsilon-budget")
    if args.max_retries < 0:
        raise InputError("--max-retries", f"must be 0 or more (got {args.max_retries})")
    if args.threads < 0:
        raise InputError("--threads", f"must be 0 (automatic) or positive (got {args.threads})")
    try:
        from fedsynth.common.device import resolve_device

        resolve_device(args.device)
    except ValueError as err:
        raise InputError("--device", str(err)) from None
    if not 0 < args.holdout < 1:
        raise InputError("--holdout", f"must be in (0, 1) (got {args.holdout})")
    if args.delta is not None and not 0 < args.delta < 1:
        raise InputError("--delta", f"must be in (0, 1) (got {args.delta})")
    if args.insecure:
        log.warning("--insecure: plaintext connection, the server is not authenticated")
        return []
    if args.root_certificates is None:
        raise InputError("ehr-client", "TLS is the default and needs --root-certificates CA",
                         "get the coordinator's CA certificate, or pass --insecure locally")
    tls = ["--root-certificates", str(args.root_certificates.resolve())]
    if args.auth_key is not None:
        tls += ["--auth-supernode-private-key", str(args.auth_key.resolve())]
    for path in (args.root_certificates, args.auth_key):
        if path is not None and not path.is_file():
            raise InputError(path, "file not found")
    return tls


def site_delta(args: argparse.Namespace, state: Path) -> float:
    """The site's delta: ``--delta``, else the one pinned in its ledger, else
    ``default_delta(n)`` of its training patients. A ``--delta`` other than the pinned one is
    refused here (one line, exit 2) before the SuperNode starts."""
    from fedsynth.privacy.accountant import default_delta
    from fedsynth.privacy.ledger import Ledger, LedgerCorrupted

    try:
        ledger = Ledger.open(state, args.site, args.delta)
    except LedgerCorrupted as err:
        raise InputError(None, str(err)) from None
    if ledger.delta is not None and (args.no_check or args.delta is not None):
        log.info("site %s: delta %g (%s)", args.site, ledger.delta,
                 "given" if args.delta is not None else "pinned in its ledger")
        return float(ledger.delta)
    from fedsynth.client.site_training import load_site_data

    data = load_site_data(args.data, args.format, args.holdout, 0, args.site, args.columns,
                          args.schema)
    log.info("site %s: %d training and %d held-out patients, %d codes", args.site,
             data.train.shape[0], data.holdout.shape[0], data.train.shape[1])
    delta = ledger.delta if ledger.delta is not None else default_delta(data.train.shape[0])
    log.info("site %s: delta %g (%s)", args.site, delta,
             "pinned in its ledger" if ledger.delta is not None else "default for its size")
    return float(delta)


def run_client(args: argparse.Namespace, tls: list[str]) -> int:
    """Start the SuperNode and wait for it (Ctrl-C stops it)."""
    from fedsynth.federation import flower_runtime as fr

    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    budget, how = site_budget(state, args.site, args.epsilon_budget)
    log.info("site %s: epsilon budget %g (%s)", args.site, budget, how)
    delta = site_delta(args, state)
    node_config = {
        "site": args.site, "data-path": str(args.data.resolve()), "format": args.format,
        "state-dir": str(state), "epsilon-budget": budget,
        "holdout": float(args.holdout), "device": args.device, "threads": int(args.threads),
        "delta": delta, "columns": args.columns,
        "schema": str(Path(args.schema).resolve()) if args.schema and Path(args.schema).exists()
        else (args.schema or ""),
    }
    if args.auth_key is not None:  # the enrolment key also signs the site's ledger heads
        node_config["signing-key"] = str(args.auth_key.resolve())
    spent = refusal.budget_spent(state, args.site, budget)
    if spent is not None:
        log.error("%s", spent.line(args.site))
        return spent.exit_code
    delay = 2.0
    failures = 0  # failed connections since the site was last connected
    connected = False
    retries = 0 if args.once else args.max_retries
    log_file = state / "logs" / "supernode.log"
    from fedsynth.client.worker import resident_worker

    # the resident worker keeps torch and the data loaded; each ClientApp forwards to it
    with fr.managed() as group, resident_worker(node_config, state) as worker:
        node_config.update(worker)
        while True:
            tail = refusal.LogTail(log_file)
            proc = fr.start_supernode(group, superlink=args.server, node_config=node_config,
                                      flwr_home=state / "flwr-home", insecure=args.insecure,
                                      tls_args=tls, log_file=log_file)
            log.info("site %s: SuperNode pid %d connecting to %s (log %s)", args.site,
                     proc.pid, args.server, log_file)
            started = time.monotonic()
            # the SuperNode writes why it was refused only to its log (and may retry forever):
            # read it while it runs, so a refusal ends the client in seconds with its reason
            seen = refusal.watch(proc, tail, server=args.server, insecure=args.insecure,
                                 retries_left=retries - failures, rejoin=connected)
            why = seen.refusal
            final = why is not None and (why.permanent or why.kind == "unreachable")
            if final:
                log.error("%s", why.line(args.site))
            # a node that never joined has nothing to finish: no grace period
            group.stop(proc, grace=5.0 if seen.connected else 1.0)
            if final:
                return why.exit_code
            if seen.connected:
                connected, failures = True, 0
            failures += max(1, seen.failures)
            if failures > retries:
                gave_up = refusal.unreachable(args.server, failures)
                log.error("%s%s", gave_up.line(args.site),
                          f" (last: {why.reason})" if why is not None else "")
                return gave_up.exit_code
            # The SuperNode gives up when the SuperLink restarts (a resumed coordinator does
            # not know its node id): rejoin as a new node, with a growing pause.
            delay = 2.0 if time.monotonic() - started > 60 else min(30.0, delay * 1.5)
            log.warning("site %s: %s; reconnecting in %.0f s (%d of %d retries left)",
                        args.site, why.reason if why else f"SuperNode exited ({seen.rc})",
                        delay, retries - failures, retries)
            time.sleep(delay)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "budget":
        from fedsynth.client.budget_cli import budget_main

        return budget_main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    return run_client(args, _check(args))


if __name__ == "__main__":
    sys.exit(main())
