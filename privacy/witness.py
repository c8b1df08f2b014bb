"""Signed ledger heads: a witness outside the site that makes a rolled-back ledger visible.

The ledger's hash chain is unkeyed and both its files live in the site's state folder, so the
folder alone cannot tell an older (or re-chained) ledger from the real one. The site therefore
signs its ledger head (``Ledger.head()``: entry count ``seq``, total spend ``epsilon`` at its
``delta``, last ``hash`` and every entry hash ``hashes``) with its own key and sends it with each
reply; the coordinator keeps the last head of every site in its checkpoint (``Witness``) and
refuses a head that

- does not verify (forged or altered signature, malformed head): ``verify_head``;
- is signed by a key other than the one pinned for the site (the enrolment key where TLS is on,
  else the first key seen, trust on first use): a new key after deleting the key file, or
  another party posing as the site;
- is behind the last one (``check_progress``): fewer entries; the same count with another hash;
  entry hashes that do not extend the last head's (rolled back both files and grew again, or
  edited an entry and recomputed the chain and head: the edited entry's hash differs); a lower
  spend; another delta or accountant.

Signature: Ed25519 (a site key in ``STATE/site-key-<site>.pem``), or ECDSA P-384 with SHA-384
(the OpenSSH enrolment key from ``ehr-certs enroll``), over ``SIGNING_CONTEXT`` followed by the
canonical JSON of the head (``privacy.ledger.canonical``); the context keeps a head signature
from ever being valid for another protocol using the same key.

What stays undetectable (see docs/security.md):
- anything before the witness first saw the site, or after the coordinator's checkpoint is lost:
  the witness compares with what it holds, nothing more;
- spend the site never reports: the witness checks that the signed history extends and the
  signed spend never decreases; it cannot recompute epsilon from hashes, so it trusts the
  site's arithmetic, and a host that holds the site's key can keep a second ledger;
- a rollback between two replies is seen at the next reply, after the site has trained on the
  loosened ledger (the update is then refused, but it has left the site).
"""

from __future__ import annotations

import base64
import binascii
import copy
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedsynth.common.atomic import atomic_path
from fedsynth.common.errors import InputError
from fedsynth.common.names import check_site_name
from fedsynth.privacy.ledger import canonical, genesis_hash

log = logging.getLogger(__name__)

SIGNING_CONTEXT = b"fedsynth-ledger-head-v1\n"
SPEND_TOLERANCE = 1e-4  # relative: PRV is not exactly monotone (about 1e-8 seen)
_HEX64 = re.compile(r"[0-9a-f]{64}")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class WitnessError(Exception):
    """A site's signed ledger head was refused; ``str(err)`` is one line naming the site."""


def key_path(state_dir: str | os.PathLike[str], site: str) -> Path:
    return Path(state_dir) / f"site-key-{check_site_name(site)}.pem"


@dataclass(frozen=True)
class SiteKey:
    """The private key a site signs its ledger heads with."""

    private_key: PrivateKey
    path: Path | None = None

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str], site: str) -> SiteKey:
        """``STATE/site-key-<site>.pem`` (Ed25519, PKCS8 PEM, mode 0600), created if absent."""
        path = key_path(state_dir, site)
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            with atomic_path(path.with_name(path.name + ".new")) as tmp:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(pem)
                os.chmod(tmp, 0o600)
            try:
                os.link(path.with_name(path.name + ".new"), path)  # never replaces a key
                log.info("created the site's ledger-signing key %s", path)
            except FileExistsError:
                pass  # another process created it first: use theirs
            finally:
                path.with_name(path.name + ".new").unlink(missing_ok=True)
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SiteKey:
        """A private key file: OpenSSH (the ``ehr-certs enroll`` key: EC P-384) or PKCS8 PEM
        (Ed25519 or EC P-384), unencrypted."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputError(path, f"cannot read the site key ({err.strerror})") from None
        try:
            if b"OPENSSH PRIVATE KEY" in data:
                key: Any = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise InputError(path, f"not an unencrypted private key ({type(err).__name__})",
                             ) from None
        if path.stat().st_mode & 0o077:
            log.warning("%s: the site key is readable by other users (chmod 600 it)", path)
        return cls(_check_key_type(key, path), path)

    def public_openssh(self) -> str:
        """The public key as one OpenSSH line (``ssh-ed25519 AAAA...``), no comment."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA384()))


def _check_key_type(key: Any, where: object) -> Any:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) \
            and key.curve.name == "secp384r1":
        return key
    raise InputError(where, f"unsupported key type {type(key).__name__}",
                     "a site key is Ed25519 or EC P-384")


def sign_head(head: Mapping[str, Any], key: SiteKey) -> dict[str, Any]:
    """``{"head", "public_key", "signature"}``: the head signed over SIGNING_CONTEXT +
    canonical JSON; the signature base64."""
    head = dict(head)
    sig = key.sign(SIGNING_CONTEXT + canonical(head))
    return {"head": head, "public_key": key.public_openssh(),
            "signature": base64.b64encode(sig).decode()}


def normalise_public_key(text: str) -> str:
    """``type base64`` of an OpenSSH public key line (the comment dropped); ``WitnessError`` if
    it is not an Ed25519 or EC P-384 key."""
    try:
        key = serialization.load_ssh_public_key(str(text).strip().encode())
        _check_key_type(key, "public key")
    except (ValueError, UnsupportedAlgorithm, InputError) as err:
        raise WitnessError(f"the public key is not a usable OpenSSH key ({err})") from None
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()


def _check_head(head: Any) -> dict[str, Any]:
    """The head's shape: the fields ``Ledger.head()`` writes, consistent with each other."""
    try:
        if not isinstance(head, dict):
            raise ValueError("not an object")
        site = check_site_name(head["site"], "head site")
        seq, eps, delta, last, chain = (head["seq"], head["epsilon"], head["delta"],
                                        head["hash"], head["hashes"])
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"seq {seq!r}")
        if not isinstance(eps, int | float) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"epsilon {eps!r}")
        if delta is not None and not (isinstance(delta, float) and 0 < delta < 1):
            raise ValueError(f"delta {delta!r}")
        if seq and delta is None:
            raise ValueError("a ledger with entries has a delta")
        if not isinstance(chain, list) or len(chain) != seq \
                or not all(isinstance(h, str) and _HEX64.fullmatch(h) for h in chain):
            raise ValueError("hashes do not list seq entry hashes")
        if last != (chain[-1] if chain else genesis_hash(site)):
            raise ValueError("hash is not the last entry hash")
        if not isinstance(head["accountant"], str):
            raise ValueError("accountant")
    except (KeyError, TypeError, ValueError, InputError) as err:
        name = head.get("site") if isinstance(head, dict) else None
        raise WitnessError(f"site {name!r}: malformed ledger head ({err})") from None
    return head


def verify_head(signed: Any, pinned_public_key: str | None = None) -> dict[str, Any]:
    """The head of ``signed`` if its signature verifies (under ``pinned_public_key`` when
    given); ``WitnessError`` otherwise (signature invalid, key differs from the pinned one,
    malformed)."""
    if not isinstance(signed, dict) or set(signed) != {"head", "public_key", "signature"}:
        raise WitnessError("malformed signed ledger head (want head, public_key, signature)")
    head = _check_head(signed["head"])
    site = head["site"]
    if not isinstance(signed["public_key"], str) or not isinstance(signed["signature"], str):
        raise WitnessError(f"site {site}: malformed signed ledger head")
    public = normalise_public_key(signed["public_key"])
    if pinned_public_key is not None and public != normalise_public_key(pinned_public_key):
        raise WitnessError(f"site {site}: ledger head signed with a key other than the site's "
                           "pinned key (key replaced or another party); refused")
    try:
        sig = base64.b64decode(signed["signature"], validate=True)
        key = serialization.load_ssh_public_key(public.encode())
        data = SIGNING_CONTEXT + canonical(head)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        else:
            key.verify(sig, data, ec.ECDSA(hashes.SHA384()))  # type: ignore[union-attr]
    except (InvalidSignature, binascii.Error, ValueError):
        raise WitnessError(f"site {site}: ledger head signature does not verify; "
                           "refused") from None
    return head


def check_progress(last_head: Mapping[str, Any] | None, head: Mapping[str, Any]) -> None:
    """``WitnessError`` when ``head`` is behind ``last_head`` (the last one this witness kept).

    Refused: another site; fewer entries; entry hashes that do not extend the last head's (so the
    same count with another hash, a rollback regrown to any length, an edit re-chained); spend
    lower than before (beyond SPEND_TOLERANCE); another delta or accountant once the ledger
    has an entry (a ledger's delta is pinned by its first record)."""
    if last_head is None:
        return
    site = head.get("site")
    if last_head.get("site") != site:
        raise WitnessError(f"ledger head of site {site!r} checked against site "
                           f"{last_head.get('site')!r}'s")
    old_seq, new_seq = int(last_head["seq"]), int(head["seq"])
    behind = f"site {site}: privacy ledger is behind the coordinator's record ("
    if new_seq < old_seq:
        raise WitnessError(f"{behind}{new_seq} entries, last seen {old_seq}: rolled back); "
                           "refused")
    if list(head["hashes"][:old_seq]) != list(last_head["hashes"]):
        raise WitnessError(f"{behind}its entries do not extend the {old_seq} last seen: "
                           "rolled back, edited or replaced); refused")
    old_eps, new_eps = float(last_head["epsilon"]), float(head["epsilon"])
    if new_eps < old_eps * (1 - SPEND_TOLERANCE) - 1e-12:
        raise WitnessError(f"{behind}spend {new_eps:.4f}, last seen {old_eps:.4f}); refused")
    if old_seq and head.get("delta") != last_head.get("delta"):  # pinned at the first entry
        raise WitnessError(f"site {site}: ledger delta changed from {last_head.get('delta')} "
                           f"to {head.get('delta')}; a site's delta is fixed; refused")
    if old_seq and head.get("accountant") != last_head.get("accountant"):
        raise WitnessError(f"site {site}: ledger head accountant changed; refused")


@dataclass
class Witness:
    """The coordinator's record of every site's last signed head and pinned key.

    ``to_dict()`` is ``{site: {"public_key", "head"}}`` (plain JSON for the checkpoint meta)."""

    sites: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.sites)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Witness:
        out = cls()
        for site, rec in (data or {}).items():
            if not isinstance(rec, Mapping) or "public_key" not in rec or "head" not in rec:
                raise WitnessError(f"site {site!r}: malformed witness record in checkpoint")
            out.sites[check_site_name(site, "checkpoint witness")] = {
                "public_key": normalise_public_key(rec["public_key"]),
                "head": _check_head(copy.deepcopy(dict(rec["head"]))),
            }
        return out

    def accept(self, signed: Any, pinned_public_key: str | None = None,
               site: str | None = None) -> dict[str, Any]:
        """Verify ``signed`` (against ``pinned_public_key``, else the key pinned at the site's
        first accepted head), check it does not go back, store it; return the head.

        ``site``: the name the coordinator knows the sender by (the head must name it). Nothing
        is stored when a check fails (``WitnessError``)."""
        name = signed.get("head", {}).get("site") if isinstance(signed, dict) else None
        if site is not None and name != site:
            raise WitnessError(f"site {site}: ledger head names site {name!r}; refused")
        record = self.sites.get(name) if isinstance(name, str) else None
        pin = pinned_public_key or (record["public_key"] if record else None)
        head = verify_head(signed, pin)
        check_progress(record["head"] if record else None, head)
        self.sites[head["site"]] = {"public_key": normalise_public_key(signed["public_key"]),
                                    "head": copy.deepcopy(head)}
        return head
