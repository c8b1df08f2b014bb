"""Ledger: refusal, restarts never lower spend, edit/truncate/rollback detected, recovery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fedsynth.client.budget_cli import budget_main
from fedsynth.common.errors import BudgetExceeded
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.ledger import (
    DeltaFixed,
    Ledger,
    LedgerCorrupted,
    LedgerUnpinned,
    accept_ledger,
    canonical,
    entry_hash,
    genesis_hash,
)

DELTA = 1e-5
M1 = Mechanism(1.5, 0.02, 300)
M2 = Mechanism(1.2, 0.02, 200)
M3 = Mechanism(2.0, 0.05, 100)


def _filled(tmp_path: Path, mechs: tuple[Mechanism, ...] = (M1, M2, M3)) -> Ledger:
    led = Ledger.open(tmp_path, "A", delta=DELTA)
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
    would = led.check(Mechanism(5.0, 0.02, 10), budget=spent + 1, delta=DELTA)
    assert spent < would < spent + 1
    with pytest.raises(BudgetExceeded, match="budget"):
        led.check(Mechanism(1.0, 1.0, 3), budget=spent + 0.5, delta=DELTA)
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
    from fedsynth.privacy.ledger import canonical, entry_hash, genesis_hash

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
    assert [Mechanism.from_dict(h) for h in out["history"]] == [M1, M2, M3]
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


# ---------------------------------------------------------------- delta pinned in the ledger


def test_delta_is_pinned_at_first_use(tmp_path: Path) -> None:
    _filled(tmp_path)
    spent = Ledger.open(tmp_path, "A").epsilon()
    assert spent == pytest.approx(epsilon([M1, M2, M3], DELTA))
    # whoever opens the ledger (the coordinator's plan, a flag) cannot pick a looser delta
    with pytest.raises(DeltaFixed) as err:
        Ledger.open(tmp_path, "A", delta=9e-3)
    assert str(err.value) == ("site A's ledger is at delta 1e-05; a site's delta is fixed at its "
                              "first use (asked for 0.009)")
    led = Ledger.open(tmp_path, "A")
    assert led.delta == DELTA
    for call in (lambda: led.report(9e-3), lambda: led.epsilon(9e-3),
                 lambda: led.check(M1, 100.0, 9e-3), lambda: led.report(1e-6, 10.0, "prv")):
        with pytest.raises(DeltaFixed):
            call()
    assert epsilon([M1, M2, M3], 9e-3) < spent  # what a looser delta would have printed
    assert led.report()["epsilon"] == pytest.approx(spent)
    assert led.report(DELTA)["delta"] == DELTA  # the same delta may be named explicitly
    # every entry and the head carry it
    lines = [json.loads(x) for x in (tmp_path / "ledger-A.jsonl").read_text().splitlines()]
    assert all(e["delta"] == DELTA for e in lines)
    assert json.loads((tmp_path / "ledger-A.head.json").read_text())["delta"] == DELTA


def test_new_ledger_needs_a_delta_and_takes_the_first(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no delta"):
        Ledger.open(tmp_path, "A").record(M1, "r", 1)
    assert not (tmp_path / "ledger-A.jsonl").exists()
    led = Ledger.open(tmp_path, "A")
    led.check(M1, 100.0, 1e-6)  # an older caller passing its delta: adopted, then fixed
    with pytest.raises(DeltaFixed):
        led.report(1e-5)
    led.record(M1, "r", 1)
    assert Ledger.open(tmp_path, "A").delta == 1e-6


def test_editing_the_pinned_delta_is_detected(tmp_path: Path) -> None:
    _filled(tmp_path)
    head = json.loads((tmp_path / "ledger-A.head.json").read_text())
    head["delta"] = 9e-3
    (tmp_path / "ledger-A.head.json").write_text(json.dumps(head))
    with pytest.raises(LedgerCorrupted, match="delta"):
        Ledger.open(tmp_path, "A")
    # recovery keeps the strictest delta it can read, and refuses to be told another
    with pytest.raises(DeltaFixed):
        accept_ledger(tmp_path, "A", delta=9e-3)
    rec = accept_ledger(tmp_path, "A")
    assert rec.delta == DELTA and rec.history == [M1, M2, M3]
    assert Ledger.open(tmp_path, "A").epsilon() == pytest.approx(epsilon([M1, M2, M3], DELTA))


def test_ledger_written_without_delta_is_refused_until_pinned(tmp_path: Path, capsys) -> None:
    _filled(tmp_path)
    lines = []
    prev = genesis_hash("A")
    for raw in (tmp_path / "ledger-A.jsonl").read_text().splitlines():  # an old-format ledger
        e = json.loads(raw)
        del e["delta"]
        e["prev"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
        lines.append(canonical(e).decode())
    (tmp_path / "ledger-A.jsonl").write_text("\n".join(lines) + "\n")
    head = json.loads((tmp_path / "ledger-A.head.json").read_text())
    del head["delta"]
    head["last_hash"] = prev
    (tmp_path / "ledger-A.head.json").write_text(json.dumps(head))
    with pytest.raises(LedgerUnpinned, match="--accept-ledger --delta"):
        Ledger.open(tmp_path, "A", delta=9e-3)  # not adopted: the asker would choose it
    with pytest.raises(SystemExit) as ex:
        budget_main(["--site", "A", "--state-dir", str(tmp_path), "--accept-ledger"])
    assert ex.value.code == 2 and "--delta" in capsys.readouterr().err
    assert budget_main(["--site", "A", "--state-dir", str(tmp_path), "--accept-ledger",
                        "--delta", "1e-5"]) == 0
    led = Ledger.open(tmp_path, "A")
    assert led.delta == DELTA and led.history == [M1, M2, M3]


def test_budget_cli_uses_the_pinned_delta(tmp_path: Path, capsys) -> None:
    _filled(tmp_path)
    assert budget_main(["--site", "A", "--state-dir", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["delta"] == DELTA
    assert out["epsilon"] == pytest.approx(epsilon([M1, M2, M3], DELTA))
    with pytest.raises(SystemExit) as ex:
        budget_main(["--site", "A", "--state-dir", str(tmp_path), "--delta", "9e-3"])
    assert ex.value.code == 2 and "fixed" in capsys.readouterr().err


def test_report_labels_every_entry_for_a_reviewer(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path, "A", delta=DELTA)
    led.record(Mechanism(3.0, 1.0, 1), "r", 0, note="code counts and site size",
               max_grad_norm=4.0)
    led.record(M1, "r", 1, note="DP-SGD round 1", max_grad_norm=1.0, expected_batch=31.4)
    sent = led.report(budget=5.0)  # what may travel: no q x n (it reveals the site's size)
    assert [h["mechanism"] for h in sent["history"]] == ["code counts and site size",
                                                         "DP-SGD round 1"]
    assert [h["max_grad_norm"] for h in sent["history"]] == [4.0, 1.0]
    assert all("expected_batch" not in h for h in sent["history"])
    assert sent["ledger_head"] == led.head()["hash"] == led.entries[-1].hash
    assert sent["software"].startswith("fedsynth ") and sent["created"].endswith("+00:00")
    local = led.report(local=True)
    assert local["history"][1]["expected_batch"] == 31.4
    # the labelled history still recomputes to the reported epsilon
    assert epsilon([Mechanism.from_dict(h) for h in local["history"]], DELTA) == \
        pytest.approx(local["epsilon"])


def test_ehr_client_delta_is_the_sites(tmp_path: Path, capsys) -> None:
    import argparse

    from fedsynth.client.cli import main, site_delta
    from fedsynth.common.data import demo_cohort, write_matrix
    from fedsynth.privacy.accountant import default_delta

    m = demo_cohort(n_sites=1, patients_per_site=200, seed=0)
    data = tmp_path / "a.csv"
    write_matrix(data, m.X, m.vocab, m.patient_ids)
    args = argparse.Namespace(site="A", data=data, format="matrix", holdout=0.2, no_check=True,
                              delta=None, columns="auto", schema=None)
    # a new site: default_delta of its training patients (rounded to a decade)
    assert site_delta(args, tmp_path / "new") == default_delta(160) == 1e-5
    _filled(tmp_path / "state")  # a site pinned at 1e-5
    args.delta = None
    assert site_delta(args, tmp_path / "state") == DELTA
    with pytest.raises(SystemExit) as ex:  # refused before any SuperNode starts
        main(["--site", "A", "--data", str(data), "--server", "127.0.0.1:9",
              "--state-dir", str(tmp_path / "state"), "--epsilon-budget", "3", "--insecure",
              "--delta", "9e-3", "--format", "matrix", "--once"])
    assert ex.value.code == 2 and "fixed at its first use" in capsys.readouterr().err
    assert not (tmp_path / "state" / "flwr-home").exists()
