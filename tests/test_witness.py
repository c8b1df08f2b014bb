"""The witness: what the site's state folder alone cannot detect, a signed head held by the
coordinator does (rollback of both files, an edit with a recomputed chain, forged signatures,
a swapped key). Each attack here is accepted by ``Ledger.open`` on its own."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.ledger import Ledger, canonical, entry_hash, genesis_hash
from fedsynth.privacy.witness import (
    SIGNING_CONTEXT,
    SiteKey,
    Witness,
    WitnessError,
    check_progress,
    sign_head,
    verify_head,
)

DELTA = 1e-5
M1, M2, M3 = Mechanism(1.5, 0.02, 300), Mechanism(1.2, 0.02, 200), Mechanism(2.0, 0.05, 100)


def _site(tmp_path: Path) -> tuple[Ledger, SiteKey, Witness]:
    state = tmp_path / "state"
    led = Ledger.open(state, "A", delta=DELTA)
    led.record(M1, "run-1", 1, note="DP-SGD round 1")
    key = SiteKey.load_or_create(state, "A")
    witness = Witness()
    witness.accept(sign_head(led.head(), key), site="A")
    return led, key, witness


def _copy_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("ledger-A.jsonl", "ledger-A.head.json"):
        shutil.copy2(src / name, dst / name)


def test_head_is_signed_and_verifies_independently(tmp_path: Path) -> None:
    led, key, _ = _site(tmp_path)
    signed = sign_head(led.head(), key)
    assert verify_head(signed) == led.head()
    # independent check with the raw primitive: Ed25519 over context + canonical JSON
    pub = serialization.load_ssh_public_key(signed["public_key"].encode())
    assert isinstance(pub, ed25519.Ed25519PublicKey)
    pub.verify(base64.b64decode(signed["signature"]),
               SIGNING_CONTEXT + json.dumps(led.head(), sort_keys=True,
                                            separators=(",", ":")).encode())
    head = signed["head"]
    assert head["seq"] == 1 and head["delta"] == DELTA and head["hashes"] == [led.last_hash]
    assert head["epsilon"] == pytest.approx(led.epsilon())
    key_file = tmp_path / "state" / "site-key-A.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert SiteKey.load_or_create(tmp_path / "state", "A").public_openssh() == \
        key.public_openssh()  # reused, never replaced


def test_progress_is_accepted_and_survives_a_checkpoint(tmp_path: Path) -> None:
    led, key, witness = _site(tmp_path)
    led.record(M2, "run-1", 2)
    restored = Witness.from_dict(json.loads(json.dumps(witness.to_dict())))
    assert restored.accept(sign_head(led.head(), key), site="A")["seq"] == 2
    restored.accept(sign_head(led.head(), key))  # the same head again (a refused round): fine
    assert restored.to_dict()["A"]["head"]["seq"] == 2


def test_rollback_of_both_files_is_refused(tmp_path: Path) -> None:
    led, key, witness = _site(tmp_path)
    state = tmp_path / "state"
    _copy_files(state, tmp_path / "old")  # an older, self-consistent pair
    led.record(M2, "run-1", 2)
    led.record(M3, "run-1", 3)
    witness.accept(sign_head(led.head(), key))  # the coordinator saw 3 entries
    _copy_files(tmp_path / "old", state)  # roll both files back
    rolled = Ledger.open(state, "A")  # the folder alone accepts it
    assert rolled.history == [M1]
    with pytest.raises(WitnessError, match="behind"):
        witness.accept(sign_head(rolled.head(), key))
    rolled.record(M1, "run-2", 1)  # ... and grown again past the last seen count
    rolled.record(M1, "run-2", 2)
    rolled.record(M1, "run-2", 3)
    assert rolled.head()["seq"] == 4
    with pytest.raises(WitnessError, match="do not extend"):
        witness.accept(sign_head(rolled.head(), key))
    assert witness.to_dict()["A"]["head"]["seq"] == 3  # nothing stored on refusal


def test_edit_with_recomputed_chain_is_refused(tmp_path: Path) -> None:
    led, key, witness = _site(tmp_path)
    led.record(M2, "run-1", 2)
    witness.accept(sign_head(led.head(), key))
    state = tmp_path / "state"
    # the attacker lowers entry 0's steps and recomputes the unkeyed chain and the head
    entries = [json.loads(x) for x in (state / "ledger-A.jsonl").read_text().splitlines()]
    entries[0]["site_mechanism"]["steps"] = 10
    prev = genesis_hash("A")
    for e in entries:
        e["prev"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
    (state / "ledger-A.jsonl").write_text("".join(canonical(e).decode() + "\n" for e in entries))
    head = json.loads((state / "ledger-A.head.json").read_text())
    head["last_hash"] = prev
    head["history"][0]["steps"] = 10
    (state / "ledger-A.head.json").write_text(json.dumps(head))
    edited = Ledger.open(state, "A")  # verifies locally
    assert edited.epsilon() < led.epsilon()
    with pytest.raises(WitnessError):
        witness.accept(sign_head(edited.head(), key))
    edited.record(M3, "run-2", 3)  # even with more entries and the spend grown back
    with pytest.raises(WitnessError, match="do not extend"):
        witness.accept(sign_head(edited.head(), key))


def test_forged_or_altered_signature_is_refused(tmp_path: Path) -> None:
    led, key, witness = _site(tmp_path)
    led.record(M2, "run-1", 2)
    signed = sign_head(led.head(), key)
    altered = json.loads(json.dumps(signed))
    altered["head"]["epsilon"] = signed["head"]["epsilon"] + 5  # claim more, to look ahead
    with pytest.raises(WitnessError, match="does not verify"):
        witness.accept(altered)
    garbage = dict(signed, signature=base64.b64encode(b"\0" * 64).decode())
    with pytest.raises(WitnessError, match="does not verify"):
        witness.accept(garbage)
    with pytest.raises(WitnessError, match="malformed"):
        witness.accept({"head": signed["head"], "public_key": signed["public_key"]})
    with pytest.raises(WitnessError, match="malformed"):
        witness.accept(dict(signed, head={**signed["head"], "hashes": []}))
    assert witness.to_dict()["A"]["head"]["seq"] == 1


def test_key_swap_is_refused_once_pinned(tmp_path: Path) -> None:
    led, key, witness = _site(tmp_path)
    state = tmp_path / "state"
    (state / "site-key-A.pem").unlink()  # delete the key: a new one is made
    other = SiteKey.load_or_create(state, "A")
    assert other.public_openssh() != key.public_openssh()
    led.record(M2, "run-1", 2)
    with pytest.raises(WitnessError, match="pinned"):
        witness.accept(sign_head(led.head(), other))
    # an explicitly pinned (enrolment) key wins over trust on first use
    with pytest.raises(WitnessError, match="pinned"):
        Witness().accept(sign_head(led.head(), key), pinned_public_key=other.public_openssh())
    with pytest.raises(WitnessError, match="names site"):
        witness.accept(sign_head(led.head(), key), site="B")


def test_enrolment_key_p384_signs(tmp_path: Path) -> None:
    from fedsynth.server.certs import new_site_keys

    key_path, pub_path = new_site_keys("A", tmp_path / "certs")
    key = SiteKey.from_file(key_path)
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    led = Ledger.open(tmp_path / "state", "A", delta=DELTA)
    led.record(M1, "r", 1)
    head = Witness().accept(sign_head(led.head(), key),
                            pinned_public_key=pub_path.read_text())  # with its comment
    assert head["seq"] == 1


def test_check_progress_rules() -> None:
    base = {"site": "A", "seq": 2, "epsilon": 1.0, "delta": DELTA, "hash": "b" * 64,
            "hashes": ["a" * 64, "b" * 64], "accountant": "prv"}
    check_progress(None, base)
    check_progress(base, {**base, "seq": 3, "epsilon": 1.2, "hash": "c" * 64,
                          "hashes": [*base["hashes"], "c" * 64]})
    bad = [
        {**base, "seq": 1, "hash": "a" * 64, "hashes": ["a" * 64]},  # fewer entries
        {**base, "hash": "c" * 64, "hashes": ["a" * 64, "c" * 64]},  # same seq, other hash
        {**base, "epsilon": 0.5},  # spend lower
        {**base, "delta": 9e-3},  # delta changed
        {**base, "site": "B"},
    ]
    for head in bad:
        with pytest.raises(WitnessError):
            check_progress(base, head)
