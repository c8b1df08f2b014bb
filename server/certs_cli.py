"""``ehr-certs``: coordinator CA, server certificate, site enrollment, expiry status.

    ehr-certs init   --out DIR --host H [--host H2] [--days N] [--ca-days N] [--new-ca]
    ehr-certs enroll --site A --out DIR [--superlink HOST:PORT] [--ca ca.crt] [--force]
    ehr-certs register --dir DIR --superlink HOST:PORT [--pub A.pub]
    ehr-certs status --dir DIR
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from fedsynth.common.atomic import atomic_path
from fedsynth.common.errors import InputError, cli_errors
from fedsynth.common.names import check_site_name
from fedsynth.server import certs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehr-certs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", help="create the coordinator CA and a server certificate")
    init.add_argument("--out", required=True, type=Path)
    init.add_argument("--host", action="append", required=True,
                      help="host name or IP address sites dial (repeatable)")
    init.add_argument("--days", type=int, default=365, help="server certificate validity")
    init.add_argument("--ca-days", type=int, default=3650, help="CA validity (new CA only)")
    init.add_argument("--new-ca", action="store_true",
                      help="replace an existing CA (every site must get the new ca.crt)")
    enroll = sub.add_parser("enroll", help="create a site's key pair and register it")
    enroll.add_argument("--site", required=True)
    enroll.add_argument("--out", required=True, type=Path)
    enroll.add_argument("--superlink", help="HOST:PORT of a running coordinator SuperLink")
    enroll.add_argument("--ca", type=Path, help="CA certificate (default: OUT/ca.crt)")
    enroll.add_argument("--force", action="store_true", help="replace the site's existing key")
    reg = sub.add_parser("register", help="register enrolled public keys with a SuperLink")
    reg.add_argument("--dir", required=True, type=Path)
    reg.add_argument("--superlink", required=True, help="HOST:PORT")
    reg.add_argument("--pub", type=Path, action="append",
                     help="a site's .pub file received from the site (copied into DIR/sites/)")
    reg.add_argument("--ca", type=Path, help="CA certificate (default: DIR/ca.crt)")
    st = sub.add_parser("status", help="list certificates with expiry; warn < 30 days")
    st.add_argument("--dir", required=True, type=Path)
    return p


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("--superlink", f"{address!r} is not HOST:PORT")
    return address


def _init(args: argparse.Namespace) -> int:
    paths = certs.init_certs(args.out, args.host, days=args.days, ca_days=args.ca_days,
                             new_ca=args.new_ca)
    info = certs.cert_info(paths["cert"])
    print(f"CA certificate:     {paths['ca']}  (give this file to every site)")
    print(f"CA key:             {paths['ca_key']}  (mode 0600; keep offline)")
    print(f"server certificate: {paths['cert']}  SAN: {', '.join(info.sans)}")
    print(f"server key:         {paths['key']}  (mode 0600)")
    print(f"expires:            {info.not_after:%Y-%m-%d}")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    if args.superlink:
        _check_address(args.superlink)
    keys = certs.enroll_site(args.site, args.out, superlink=args.superlink, ca=args.ca,
                             force=args.force)
    print(f"site {args.site}: private key {keys.private_key} (mode 0600; stays at the site)")
    print(f"site {args.site}: public key  {keys.public_key}")
    if keys.registered:
        print(f"site {args.site}: registered with the SuperLink at {args.superlink}")
    else:
        why = (f"the SuperLink at {args.superlink} did not accept it now" if args.superlink
               else "no --superlink given")
        print(f"site {args.site}: not registered yet ({why}); ehr-server registers every key in "
              f"{certs.enrolled_dir(args.out)} when it starts, or run: ehr-certs register "
              f"--dir {args.out} --superlink HOST:PORT")
    return 0


def _register(args: argparse.Namespace) -> int:
    _check_address(args.superlink)
    for pub in args.pub or []:
        certs.load_public_key(pub)
        site = check_site_name(pub.stem)
        dest = certs.enrolled_dir(args.dir) / f"{site}.pub"
        with atomic_path(dest) as tmp:
            shutil.copyfile(pub, tmp)
    done = certs.register_enrolled(args.dir, args.superlink, ca=args.ca)
    known = certs.status(args.dir)[1]
    print(f"registered: {', '.join(done) or '-'}")
    missing = sorted(set(known) - set(done))
    if missing:
        print(f"not registered: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    infos, sites = certs.status(args.dir)
    if not infos:
        raise InputError(args.dir, "no certificates (*.crt, *.pem) found",
                         "Run: ehr-certs init --out DIR --host HOST")
    width = max(len(i.path.name) for i in infos)
    expired = False
    for i in infos:
        flag = ""
        if i.days_left <= 0:
            flag, expired = "  EXPIRED", True
        elif i.expiring:
            flag = f"  WARNING: expires in < {certs.WARN_DAYS} days"
        sans = f"  SAN: {', '.join(i.sans)}" if i.sans else ""
        print(f"{i.path.name:<{width}}  expires {i.not_after:%Y-%m-%d %H:%M} UTC "
              f"({i.days_left:.0f} days){flag}{sans}")
    print(f"enrolled sites: {', '.join(sites) or '-'}")
    for i in infos:
        if i.days_left <= 0:
            print(f"warning: {i.path} has EXPIRED; renew: ehr-certs init --out {args.dir} "
                  f"--host HOST", file=sys.stderr)
        elif i.expiring:
            print(f"warning: {i.path} expires in {i.days_left:.0f} days "
                  f"({i.not_after:%Y-%m-%d}); renew: ehr-certs init --out {args.dir} --host HOST",
                  file=sys.stderr)
    for key, mode in certs.loose_private_keys(args.dir):
        print(f"warning: {key} is readable by others (mode {mode:04o}); run: chmod 600 {key}",
              file=sys.stderr)
    return 1 if expired else 0


@cli_errors
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    handler = {"init": _init, "enroll": _enroll, "register": _register, "status": _status}
    code = handler[args.cmd](args)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
