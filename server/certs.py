"""Coordinator CA, server certificate and site keys for Flower TLS + SuperNode authentication.

Files in a certificate directory (``ehr-certs init --out DIR``):

    ca.crt, ca.key          coordinator CA (EC P-384; the key is mode 0600)
    server.pem, server.key  SuperLink certificate whose SAN lists the hosts sites dial
    sites/<SITE>.pub        enrolled sites' public keys (OpenSSH, EC P-384): the allow-list
    <SITE>.key              a site's private key (OpenSSH, mode 0600), written where it enrolls

A SuperLink keeps registered nodes in its state, which is in memory unless ``--database`` is given:
``ehr-server`` therefore calls :func:`register_enrolled` after it starts the SuperLink, so every key
in ``sites/`` is registered on each start. Private keys are never logged. Only the cryptography
is here: the ``flwr`` tool (``flwr supernode register``, its connection file) is run by
``federation.flwr_cli``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsynth.common.atomic import atomic_path
from fedsynth.common.errors import InputError
from fedsynth.common.names import check_site_name
from fedsynth.federation.flwr_cli import register_supernode

log = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
SITES_DIR = "sites"
WARN_DAYS = 30
_DNS_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                     r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$")


@dataclass(frozen=True)
class CertInfo:
    """One certificate's expiry as ``ehr-certs status`` shows it."""

    path: Path
    subject: str
    not_after: dt.datetime
    days_left: float
    sans: tuple[str, ...]

    @property
    def expiring(self) -> bool:
        return self.days_left < WARN_DAYS


@dataclass(frozen=True)
class SiteKeys:
    private_key: Path
    public_key: Path
    registered: bool  # True when a running SuperLink accepted it now


# ---------------------------------------------------------------- writing files


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key atomically with mode 0600 (set before any byte is written)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---------------------------------------------------------------- CA and server certificate


def parse_hosts(hosts: list[str]) -> list[x509.GeneralName]:
    """Host names become DNSName SANs, IP literals IPAddress SANs; anything else is an error."""
    if not hosts:
        raise InputError("--host", "at least one host name or IP address is required")
    names: list[x509.GeneralName] = []
    for host in hosts:
        h = host.strip()
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
            continue
        except ValueError:
            pass
        if not _DNS_RE.match(h) or h.replace(".", "").isdigit():
            raise InputError("--host", f"{host!r} is neither a host name nor an IP address")
        names.append(x509.DNSName(h.lower()))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsynth"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    subject = _name("fedsynth coordinator CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str], days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    sans = parse_hosts(hosts)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0].strip()))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, crl_sign=False,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _load_ca(out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise InputError(cert_path, "not a PEM certificate", "Use --new-ca to replace it") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise InputError(key_path, "not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or (
        key.public_key().public_numbers() != cert.public_key().public_numbers()  # type: ignore[union-attr]
    ):
        raise InputError(key_path, f"does not match {cert_path}")
    return key, cert


def init_certs(
    out: str | Path, hosts: list[str], days: int = 365, ca_days: int = 3650, new_ca: bool = False
) -> dict[str, Path]:
    """Create (or reuse) the coordinator CA and issue a server certificate for ``hosts``.

    An existing CA in ``out`` is kept (so enrolled sites keep trusting it) unless ``new_ca``;
    the server certificate and its key are always replaced, which is how a certificate is renewed.
    """
    if days < 1 or ca_days < 1:
        raise InputError("--days", "validity must be at least one day")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a directory")
    parse_hosts(hosts)  # fail before writing anything
    if (out / CA_CERT).exists() and (out / CA_KEY).exists() and not new_ca:
        ca_key, ca_cert = _load_ca(out)
        log.info("reusing CA %s", out / CA_CERT)
    else:
        ca_key, ca_cert = _make_ca(ca_days)
        _write_private(out / CA_KEY, _pem_key(ca_key))
        _write_public(out / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM))
        log.info("created CA %s", out / CA_CERT)
    key, cert = _make_server_cert(ca_key, ca_cert, hosts, days)
    _write_private(out / SERVER_KEY, _pem_key(key))
    _write_public(out / SERVER_CERT, cert.public_bytes(serialization.Encoding.PEM))
    log.info("server certificate %s for %s", out / SERVER_CERT, ", ".join(hosts))
    return {"ca": out / CA_CERT, "ca_key": out / CA_KEY, "cert": out / SERVER_CERT,
            "key": out / SERVER_KEY}


# ---------------------------------------------------------------- site keys and registration


def enrolled_dir(cert_dir: str | Path) -> Path:
    return Path(cert_dir) / SITES_DIR


def new_site_keys(site: str, out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write ``out/<site>.key`` (OpenSSH private, 0600) and ``out/sites/<site>.pub`` (OpenSSH)."""
    check_site_name(site)
    out = Path(out)
    key_path, pub_path = out / f"{site}.key", enrolled_dir(out) / f"{site}.pub"
    if key_path.exists() and not force:
        raise InputError(key_path, "already exists", "Use --force to replace this site's key")
    key = _new_key()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_private(key_path, priv)
    _write_public(pub_path, pub + f" fedsynth-site-{site}\n".encode())
    return key_path, pub_path


def load_public_key(path: str | Path) -> bytes:
    """Validate an OpenSSH EC P-384 public key file (what ``flwr supernode register`` accepts)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"cannot read ({err.strerror})") from None
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise InputError(path, f"not an OpenSSH public key ({type(err).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise InputError(path, "must be an EC SECP384R1 public key")
    return data


def register_public_key(
    pub: str | Path, address: str, ca: str | Path | None, timeout: float = 60.0
) -> bool:
    """Register one public key with a running SuperLink (``federation.flwr_cli``:
    ``flwr supernode register``, TLS trusting ``ca``; insecure when None).

    The node is registered under the site's name (the file's stem) so ``flwr supernode ls``
    shows which hospital each node is. Returns True when registered now or already registered;
    False when the SuperLink cannot be reached.
    """
    load_public_key(pub)
    ok, message = register_supernode(pub, check_site_name(Path(pub).stem), address, ca, timeout)
    if ok:
        log.info("registered %s with %s", Path(pub).name, address)
        return True
    if "already in use" in message:
        log.info("%s already registered with %s", Path(pub).name, address)
        return True
    log.warning("could not register %s with %s: %s", Path(pub).name, address,
                " ".join(message.split())[-300:])
    return False


def register_enrolled(
    cert_dir: str | Path, address: str, ca: str | Path | None = None, workers: int = 4
) -> list[str]:
    """Register every ``cert_dir/sites/*.pub`` with the SuperLink at ``address``.

    ``ehr-server`` calls this right after starting its SuperLink. Returns the sites registered
    (sorted). Each registration is one ``flwr`` CLI process; a few run at once.
    """
    ca = Path(cert_dir) / CA_CERT if ca is None else ca
    pubs = sorted(enrolled_dir(cert_dir).glob("*.pub"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok = list(pool.map(lambda pub: register_public_key(pub, address, ca), pubs))
    return [pub.stem for pub, good in zip(pubs, ok, strict=True) if good]


def enroll_site(
    site: str, out: str | Path, superlink: str | None = None, ca: str | Path | None = None,
    force: bool = False,
) -> SiteKeys:
    """Create a site's key pair; register its public key now when ``superlink`` is reachable.

    If it is not, the public key stays in ``out/sites/`` and ``ehr-server`` (which calls
    :func:`register_enrolled`) registers it when it starts.
    """
    check_site_name(site)
    if superlink:  # find the CA before writing anything
        if ca is None:  # the cert dir itself, or a site folder inside it
            found = [d / CA_CERT for d in (Path(out), Path(out).resolve().parent)
                     if (d / CA_CERT).exists()]
            ca = found[0] if found else Path(out) / CA_CERT
        if not Path(ca).exists():
            raise InputError(ca, "CA certificate not found", "Pass --ca or run ehr-certs init")
    key, pub = new_site_keys(site, out, force=force)
    registered = register_public_key(pub, superlink, ca) if superlink else False
    return SiteKeys(private_key=key, public_key=pub, registered=registered)


# ---------------------------------------------------------------- status


def cert_info(path: Path, now: dt.datetime | None = None) -> CertInfo:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise InputError(path, "not a PEM certificate") from None
    now = now or dt.datetime.now(dt.UTC)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        sans = ()
    after = cert.not_valid_after_utc
    return CertInfo(path=path, subject=cert.subject.rfc4514_string(), not_after=after,
                    days_left=(after - now).total_seconds() / 86400.0, sans=sans)


def status(cert_dir: str | Path) -> tuple[list[CertInfo], list[str]]:
    """Every certificate in ``cert_dir`` with its expiry, and the enrolled site names."""
    cert_dir = Path(cert_dir)
    if not cert_dir.is_dir():
        raise InputError(cert_dir, "not a directory")
    certs = [cert_info(p) for p in sorted(cert_dir.glob("*.crt")) + sorted(cert_dir.glob("*.pem"))]
    sites = sorted(p.stem for p in enrolled_dir(cert_dir).glob("*.pub"))
    return certs, sites


def loose_private_keys(cert_dir: str | Path) -> list[tuple[Path, int]]:
    """Private keys (``*.key``) in ``cert_dir`` that group or others may read: (path, mode)."""
    out = []
    for key in sorted(Path(cert_dir).glob("*.key")):
        mode = key.stat().st_mode & 0o777
        if mode & 0o077:
            out.append((key, mode))
    return out


# ---------------------------------------------------------------- Flower process arguments


def superlink_tls_args(cert_dir: str | Path) -> list[str]:
    """``flower-superlink`` arguments for TLS with this CA and SuperNode authentication."""
    cert_dir = Path(cert_dir)
    paths = [cert_dir / CA_CERT, cert_dir / SERVER_CERT, cert_dir / SERVER_KEY]
    for p in paths:
        if not p.exists():
            raise InputError(p, "not found", f"Run: ehr-certs init --out {cert_dir} --host HOST")
    return ["--ssl-ca-certfile", str(paths[0].resolve()), "--ssl-certfile",
            str(paths[1].resolve()), "--ssl-keyfile", str(paths[2].resolve()),
            "--enable-supernode-auth"]


def supernode_tls_args(ca: str | Path, key: str | Path) -> list[str]:
    """``flower-supernode`` arguments: trust ``ca`` for the server and authenticate with ``key``."""
    for p in (Path(ca), Path(key)):
        if not p.exists():
            raise InputError(p, "not found", "Copy ca.crt from the coordinator; ehr-certs enroll")
    return ["--root-certificates", str(Path(ca).resolve()),
            "--auth-supernode-private-key", str(Path(key).resolve())]
