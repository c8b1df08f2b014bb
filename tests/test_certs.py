"""ehr-certs: CA + server certificate with the right SANs, site keys Flower accepts, 0600 keys."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedsynth.common.errors import InputError
from fedsynth.federation import flwr_cli
from fedsynth.server import certs
from fedsynth.server.certs_cli import main


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_ca_and_server_cert_with_sans(tmp_path: Path) -> None:
    out = tmp_path / "c"
    assert main(["init", "--out", str(out), "--host", "127.0.0.1", "--host", "coord.example",
                 "--host", "::1", "--days", "40"]) == 0
    ca, server = _load(out / "ca.crt"), _load(out / "server.pem")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["coord.example"]
    # the server certificate is signed by the CA (independent check with the CA's public key)
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes,
                           ec.ECDSA(server.signature_hash_algorithm))
    assert server.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (server.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert 38 <= days <= 40
    for key in ("ca.key", "server.key"):
        assert _mode(out / key) == 0o600
        k = serialization.load_pem_private_key((out / key).read_bytes(), None)
        assert isinstance(k, ec.EllipticCurvePrivateKey)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_reinit_renews_server_cert_but_keeps_ca(tmp_path: Path) -> None:
    certs.init_certs(tmp_path, ["127.0.0.1"], days=5)
    ca_before = (tmp_path / "ca.crt").read_bytes()
    server_before = (tmp_path / "server.pem").read_bytes()
    certs.init_certs(tmp_path, ["127.0.0.1", "localhost"], days=300)
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "server.pem").read_bytes() != server_before
    certs.init_certs(tmp_path, ["127.0.0.1"], new_ca=True)
    assert (tmp_path / "ca.crt").read_bytes() != ca_before


@pytest.mark.parametrize("host", ["", "not a host", "bad_host!", "1.2.3.4.5", "-x.example"])
def test_bad_host_is_input_error_and_writes_nothing(tmp_path: Path, host: str) -> None:
    with pytest.raises(InputError):
        certs.init_certs(tmp_path / "c", [host])
    assert not (tmp_path / "c").exists()


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["init", "--out", str(tmp_path), "--host", "no such host"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: --host:")
    with pytest.raises(SystemExit) as exc:
        main(["enroll", "--site", "../../etc", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_enroll_writes_openssh_p384_keys_flower_can_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert main(["enroll", "--site", "A", "--out", str(tmp_path)]) == 0
    key_path, pub_path = tmp_path / "A.key", tmp_path / "sites" / "A.pub"
    assert _mode(key_path) == 0o600
    # the same loaders flower-supernode and `flwr supernode register` use
    key = serialization.load_ssh_private_key(key_path.read_bytes(), None)
    pub = serialization.load_ssh_public_key(pub_path.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert key.public_key().public_numbers() == pub.public_numbers()  # type: ignore[union-attr]
    sig = key.sign(b"m", ec.ECDSA(hashes.SHA256()))
    pub.verify(sig, b"m", ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr]
    out = capsys.readouterr().out
    assert "not registered yet" in out and "ehr-server" in out
    secret = key_path.read_text()
    for line in secret.splitlines()[2:-1]:  # the key material, not the constant header
        assert line not in out and line not in caplog.text
    # a second enroll refuses to silently replace the site's key
    with pytest.raises(InputError):
        certs.new_site_keys("A", tmp_path)
    certs.new_site_keys("A", tmp_path, force=True)
    assert key_path.read_text() != secret


def test_status_warns_before_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs.init_certs(tmp_path, ["127.0.0.1"], days=10)
    certs.new_site_keys("A", tmp_path)
    assert main(["status", "--dir", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert "server.pem" in cap.out and "ca.crt" in cap.out and "enrolled sites: A" in cap.out
    assert "WARNING" in cap.out and "server.pem expires in 10 days" in cap.err
    assert "ca.crt expires" not in cap.err
    certs.init_certs(tmp_path, ["127.0.0.1"], days=365)
    assert main(["status", "--dir", str(tmp_path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_status_on_expired_cert(tmp_path: Path) -> None:
    certs.init_certs(tmp_path, ["127.0.0.1"], days=1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    info = certs.cert_info(tmp_path / "server.pem", now=later)
    assert info.days_left < 0 and info.expiring


def test_public_key_validation(tmp_path: Path) -> None:
    rsa_like = tmp_path / "x.pub"
    rsa_like.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb4V2Z0g2X0u8v3j0W5bq1U2w5c1hKc"
                        "0Ew5Y5m5Z8Qn x\n")
    with pytest.raises(InputError):
        certs.load_public_key(rsa_like)
    garbage = tmp_path / "g.pub"
    garbage.write_bytes(b"\xff\x00garbage")
    with pytest.raises(InputError):
        certs.load_public_key(garbage)


def test_flower_args(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        certs.superlink_tls_args(tmp_path)
    certs.init_certs(tmp_path, ["127.0.0.1"])
    key, _ = certs.new_site_keys("A", tmp_path)
    args = certs.superlink_tls_args(tmp_path)
    assert args[-1] == "--enable-supernode-auth"
    assert args[args.index("--ssl-certfile") + 1] == str((tmp_path / "server.pem").resolve())
    assert certs.supernode_tls_args(tmp_path / "ca.crt", key) == [
        "--root-certificates", str((tmp_path / "ca.crt").resolve()),
        "--auth-supernode-private-key", str(key.resolve())]
    toml = flwr_cli.connection_toml("127.0.0.1:9092", insecure=False,
                                    root_certificates=tmp_path / "ca.crt")
    assert 'root-certificates = "' in toml and "insecure" not in toml
    assert "insecure = true" in flwr_cli.connection_toml("127.0.0.1:9092")


def test_status_warns_about_readable_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs.init_certs(tmp_path, ["127.0.0.1"])
    assert main(["status", "--dir", str(tmp_path)]) == 0
    assert "readable by others" not in capsys.readouterr().err
    (tmp_path / "server.key").chmod(0o644)
    assert main(["status", "--dir", str(tmp_path)]) == 0
    assert "server.key is readable by others (mode 0644)" in capsys.readouterr().err


def test_enroll_with_superlink_needs_the_ca_and_writes_nothing_without_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="CA certificate not found"):
        certs.enroll_site("A", tmp_path / "site", superlink="127.0.0.1:9")
    assert not (tmp_path / "site").exists()
    # a site folder inside the cert dir finds the CA one level up; nothing listens: not registered
    certs.init_certs(tmp_path, ["127.0.0.1"])
    keys = certs.enroll_site("A", tmp_path / "site", superlink="127.0.0.1:9")
    assert not keys.registered and keys.private_key.exists()
