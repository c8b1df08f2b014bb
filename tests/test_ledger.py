"""Ledger: refusal, restarts never lower spend, edit/truncate/rollback detected, recovery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from client.budget_cli import budget_main
from common.errors import BudgetExceeded
from privacy.accountant import Mechanism, epsilon
from privacy.ledger import Ledger, LedgerCorrupted, accept_ledger

DELTA = 1e-5
M1 = Mechanism(1.5, 0.02, 300)
M2 = Mechanism(1.2, 0.02, 200)
M3 = Mechanism(2.0, 0.05, 100)


def _filled(tmp_path: Path, mechs: tuple[Mechanism, ...] = (M1, M2, M3)) -> Ledger:
    led = Ledger.open(tmp_path, "A")
    for i, m in enumerate(mechs):
        led.record(m, run_id="run-1", round=i + 1)
    return led


def test_record_persists_and_restart_never_resets(tmp_path: Path) -> None:
    led = _filled(tmp_path)
    spent = led.epsilon(DELTA)
    assert spent == pytest.approx(epsilon([M1, M2, M3], DELTA))
    again = Ledger.open(tmp_path, "A")  # a restart / new run id / new server
    assert again.history == [M1, M2, M3]
    again.record(M1, run_id="run-2", round=1)
    assert Ledger.open(tmp_path, "A").epsilon(DELTA) > spent
    other = Ledger.open(tmp_path, "B")  # sites are separate
    assert other.history == []


def test_check_refuses_past_budget(tmp_path: Path) -> None:
    led = _filled(tmp_path)
    spent = led.epsilon(DELTA)
    would = led.check(Mechanism(5.0, 0.02, 10), budget_epsilon=spent + 1, delta=DELTA)
    assert spent < would < spent + 1
    with pytest.raises(BudgetExceeded, match="budget"):
        led.check(Mechanism(1.0, 1.0, 3), budget_epsilon=spent + 0.5, delta=DELTA)
    assert Ledger.open(tmp_path, "A").history == [M1, M2, M3]  # refusal records nothing


def test_entries_carry_chain_and_metadata(tmp_path: Path) -> None:
    _filled(tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "ledger-A.jsonl").read_text().splitlines()]
    assert [e["round"] for e in lines] == [1, 2, 3]
    assert all(e["status"] == "recorded-before-send" and e["run_id"] == "run-1" for e in lines)
    assert lines[1]["prev"] == lines[0]["hash"] and lines[2]["prev"] == lines[1]["hash"]
    assert lines[0]["site_mechanism"] == M1.to_dict()


def _corrupt_edit(tmp: Path) -> None:
    p = tmp / "ledger-A.jsonl"
    p.write_text(p.read_text().replace('"noise_multiplier":1.2', '"noise_multiplier":9.2'))


def _corrupt_truncate(tmp: Path) -> None:
    p = tmp / "ledger-A.jsonl"
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:2]))


def _corrupt_torn(tmp: Path) -> None:
    p = tmp / "ledger-A.jsonl"
    p.write_bytes(p.read_bytes()[:-40])


def _corrupt_garbage(tmp: Path) -> None:
    (tmp / "ledger-A.jsonl").write_bytes(b"\x00\xffnot json\n")


def _corrupt_delete_head(tmp: Path) -> None:
    (tmp / "ledger-A.head.json").unlink()


def _corrupt_delete_ledger(tmp: Path) -> None:
    (tmp / "ledger-A.jsonl").unlink()


def _corrupt_rehash_edit(tmp: Path) -> None:
    """Edit an entry and recompute its whole chain: the head still catches it."""
    from privacy.ledger import canonical, entry_hash, genesis_hash

    p = tmp / "ledger-A.jsonl"
    entries = [json.loads(x) for x in p.read_text().splitlines()]
    entries[0]["site_mechanism"]["noise_multiplier"] = 50.0
    prev = genesis_hash("A")
    for e in entries:
        e["prev"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
    p.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_edit, _corrupt_truncate, _corrupt_torn, _corrupt_garbage, _corrupt_delete_head,
     _corrupt_delete_ledger, _corrupt_rehash_edit],
)
def test_damage_is_detected_and_recovery_never_lowers_spend(tmp_path: Path, corrupt) -> None:
    led = _filled(tmp_path)
    spent = led.epsilon(DELTA)
    corrupt(tmp_path)
    with pytest.raises(LedgerCorrupted) as err:
        Ledger.open(tmp_path, "A")
    msg = str(err.value)
    assert "\n" not in msg and "--accept-ledger" in msg and str(tmp_path) in msg
    recovered = accept_ledger(tmp_path, "A")
    assert recovered.epsilon(DELTA) >= spent * (1 - 1e-9)
    reopened = Ledger.open(tmp_path, "A")  # sealed again: verifies
    assert reopened.epsilon(DELTA) >= spent * (1 - 1e-9)
    assert list(tmp_path.glob("ledger-A*.corrupt-*"))  # damaged files kept for inspection


def test_rollback_to_older_valid_copy_is_detected(tmp_path: Path) -> None:
    led = _filled(tmp_path, (M1,))
    backup = tmp_path / "backup.jsonl"
    shutil.copy(tmp_path / "ledger-A.jsonl", backup)
    led.record(M2, "run-1", 2)
    led.record(M3, "run-1", 3)
    shutil.copy(backup, tmp_path / "ledger-A.jsonl")  # a valid, older ledger
    with pytest.raises(LedgerCorrupted, match="rolled back"):
        Ledger.open(tmp_path, "A")
    assert accept_ledger(tmp_path, "A").history == [M1, M2, M3]  # the head kept the rest


def test_crash_between_ledger_and_head_still_counts(tmp_path: Path, monkeypatch) -> None:
    led = _filled(tmp_path, (M1,))
    calls = {"n": 0}
    real = Ledger._write_head

    def crash_after_ledger(self: Ledger) -> None:
        calls["n"] += 1
        raise KeyboardInterrupt("killed after the ledger write, before the head")

    monkeypatch.setattr(Ledger, "_write_head", crash_after_ledger)
    with pytest.raises(KeyboardInterrupt):
        led.record(M2, "run-1", 2)
    monkeypatch.setattr(Ledger, "_write_head", real)
    restarted = Ledger.open(tmp_path, "A")  # accepted: it can only add spend
    assert restarted.history == [M1, M2]
    assert Ledger.open(tmp_path, "A").history == [M1, M2]


def test_budget_cli_table_json_and_recovery(tmp_path: Path, capsys) -> None:
    _filled(tmp_path)
    assert budget_main(["--site", "A", "--state-dir", str(tmp_path), "--budget", "10",
                        "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == pytest.approx(epsilon([M1, M2, M3], DELTA))
    assert out["epsilon_left"] == pytest.approx(10 - out["epsilon"])
    assert out["history"] == [M1.to_dict(), M2.to_dict(), M3.to_dict()]
    assert budget_main(["--site", "A", "--state-dir", str(tmp_path), "--budget", "10"]) == 0
    table = capsys.readouterr().out
    assert "epsilon" in table.lower() and "1.5" in table
    _corrupt_truncate(tmp_path)
    with pytest.raises(SystemExit) as ex:
        budget_main(["--site", "A", "--state-dir", str(tmp_path)])
    assert ex.value.code == 2
    assert "--accept-ledger" in capsys.readouterr().err
    assert budget_main(["--site", "A", "--state-dir", str(tmp_path), "--accept-ledger"]) == 0
    assert Ledger.open(tmp_path, "A").history == [M1, M2, M3]
