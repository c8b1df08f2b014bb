"""``ehr-server``: the coordinator. Starts a SuperLink on --host/--port, submits the run, waits,
writes the global model, synthetic.csv, privacy.json, rounds.jsonl and evaluation.json to --out.

    ehr-server --host 127.0.0.1 --port 9092 --rounds 5 --min-sites 2 --epsilon 3 --out runs/a \\
        --insecure
    ehr-server --resume runs/a --host 127.0.0.1 --port 9092 --insecure   # after a crash

TLS: without --insecure the SuperLink needs --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile
(from ``ehr-certs init``), and --enable-supernode-auth restricts it to enrolled sites.

Every SuperNode the SuperLink refuses gets one WARNING line on this console (a key that is not
enrolled, with its SHA256 fingerprint and the peer address; no key; a TLS client on an
--insecure coordinator), from ``server/refused_nodes.py``. A failed TLS handshake (the site's
CA or host name is wrong, or it dials plaintext) leaves no trace at the SuperLink: only the
site's ``ehr-client`` can say why.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fedsynth.common.errors import InputError, cli_errors
from fedsynth.server.options import add_plan_args, build_config, settings_from_args
from fedsynth.server.settings import RUN_FILE, RunSettings

log = logging.getLogger("ehr-server")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehr-server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address the SuperLink listens on")
    p.add_argument("--port", type=int, default=9092, help="SuperLink port (Fleet + Control)")
    p.add_argument("--min-sites", type=int, default=2,
                   help="sites needed to start and to close a round")
    p.add_argument("--out", type=Path, help="output folder (new run)")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue the run in DIR from its last completed round")
    p.add_argument("--wait-sites", type=float, default=300.0,
                   help="seconds to wait for --min-sites sites to connect (default 300)")
    p.add_argument("--no-progress", action="store_true")
    tls = p.add_argument_group("transport security")
    tls.add_argument("--insecure", action="store_true",
                     help="plaintext, no site authentication (tests and local trials only)")
    tls.add_argument("--certs", type=Path, metavar="DIR",
                     help="folder from `ehr-certs init`: TLS + SuperNode authentication, and "
                          "every site enrolled there is registered at start")
    tls.add_argument("--ssl-ca-certfile", type=Path)
    tls.add_argument("--ssl-certfile", type=Path)
    tls.add_argument("--ssl-keyfile", type=Path)
    tls.add_argument("--enable-supernode-auth", action="store_true",
                     help="only SuperNodes whose public key is registered may join")
    add_plan_args(p)
    return p


def tls_args(args: argparse.Namespace) -> list[str]:
    if args.insecure:
        log.warning("--insecure: plaintext connections and no site authentication")
        return []
    if args.certs is not None:
        from fedsynth.server.certs import superlink_tls_args

        out = superlink_tls_args(args.certs)
        args.ssl_ca_certfile = Path(out[out.index("--ssl-ca-certfile") + 1])
        return out
    files = {"--ssl-ca-certfile": args.ssl_ca_certfile, "--ssl-certfile": args.ssl_certfile,
             "--ssl-keyfile": args.ssl_keyfile}
    missing = [k for k, v in files.items() if v is None]
    if missing:
        raise InputError("ehr-server", f"TLS is the default and needs {', '.join(missing)}",
                         "create them with `ehr-certs init`, or pass --insecure for a local trial")
    out: list[str] = []
    for flag, path in files.items():
        if not Path(path).is_file():
            raise InputError(path, "certificate/key file not found")
        out += [flag, str(Path(path).resolve())]
    if args.enable_supernode_auth:
        out.append("--enable-supernode-auth")
    return out


def check_port(host: str, port: int) -> None:
    """A port the SuperLink can listen on: 1-65535 and free on ``host`` (one-line errors)."""
    import socket

    if not 0 < port < 65536:
        raise InputError("--port", f"{port} is not a TCP port (1-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise InputError("--host", f"{host!r} does not resolve ({err})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a stopped SuperLink in TIME_WAIT (a --resume on the same
        # port) do not count; a socket listening there does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise InputError("--port", f"cannot listen on {host}:{port} ({err.strerror})",
                             "another process holds it: choose another --port") from None


@cli_errors
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    check_port(args.host, args.port)
    from fedsynth.server.launch import Launch, audit_status, launch, summary

    if args.resume is not None:
        out = args.resume
        settings = RunSettings.load(out / RUN_FILE)
        settings.resume = True
        if args.round_timeout is not None:
            settings.round_timeout = args.round_timeout
    else:
        if args.out is None:
            raise InputError("ehr-server", "--out DIR is required (or --resume DIR)")
        out = args.out
        if (out / "checkpoint").exists():
            raise InputError(out, "holds a checkpoint of an earlier run",
                             f"use --resume {out} to continue it, or another --out")
        if args.min_sites < 1:
            raise InputError("--min-sites", f"must be at least 1 (got {args.min_sites})")
        settings = settings_from_args(args, build_config(args), out, args.min_sites,
                                      "deployment")
    settings.wait_sites_timeout = args.wait_sites
    if args.certs is not None and not args.insecure:  # the witness pins the enrolled keys
        settings.cert_dir = str(args.certs.resolve())
    tls = tls_args(args)
    after_start = None
    if args.certs is not None and not args.insecure:
        def after_start(address: str) -> None:
            from fedsynth.server.certs import register_enrolled

            sites = register_enrolled(args.certs, address)
            log.info("registered %d enrolled site key(s): %s", len(sites), ", ".join(sites))

    status = launch(Launch(
        settings=settings, host=args.host, port=args.port, insecure=args.insecure,
        superlink_tls_args=tls,
        root_certificates=None if args.insecure else str(args.ssl_ca_certfile),
        progress=not args.no_progress, after_start=after_start))
    print(summary(out))
    if status.get("status") != "completed":
        print(f"run failed: {status.get('detail', '')}", file=sys.stderr)
        return 1
    return audit_status(out) if settings.audit else 0


if __name__ == "__main__":
    sys.exit(main())
