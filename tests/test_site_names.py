"""One site-name check, matched in full: ``'A\\n'`` passed ``^...$`` with ``re.match`` (``$``
matches before a trailing newline) and opened a second, empty ledger for site A."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsynth.common.errors import InputError
from fedsynth.common.names import check_site_name
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.ledger import Ledger

BAD = ["A\n", "A\r\n", "\nA", "", "-A", ".A", "A/B", "../A", "A B", "a" * 65, "Å", "A\x00"]


@pytest.mark.parametrize("name", BAD)
def test_check_refuses_in_full(name: str) -> None:
    with pytest.raises(InputError) as err:
        check_site_name(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["A", "site-1", "h.o_s-p", "0", "a" * 64])
def test_check_accepts(name: str) -> None:
    assert check_site_name(name) == name


def test_ledger_refuses_newline_site_and_keeps_one_budget(tmp_path: Path) -> None:
    led = Ledger.open(tmp_path, "A", delta=1e-5)
    led.record(Mechanism(1.0, 1.0, 1), "r", 0)
    with pytest.raises(ValueError):  # also an InputError: exit 2 in the CLIs
        Ledger.open(tmp_path, "A\n", delta=1e-5)
    assert sorted(p.name for p in tmp_path.glob("ledger-*")) == ["ledger-A.head.json",
                                                                 "ledger-A.jsonl"]


def test_ehr_client_refuses_newline_site(tmp_path: Path, capsys) -> None:
    from fedsynth.client.cli import main

    data = tmp_path / "a.csv"
    data.write_text("patient_id,250\np1,1\n")
    with pytest.raises(SystemExit) as ex:
        main(["--site", "A\n", "--data", str(data), "--server", "127.0.0.1:9092",
              "--state-dir", str(tmp_path / "state"), "--epsilon-budget", "3", "--insecure"])
    assert ex.value.code == 2
    assert "not a valid site name" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_ehr_client_budget_refuses_newline_site(tmp_path: Path, capsys) -> None:
    from fedsynth.client.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["budget", "--site", "A\n", "--state-dir", str(tmp_path)])
    assert ex.value.code == 2 and "not a valid site name" in capsys.readouterr().err
    assert not list(tmp_path.glob("ledger-*"))


def test_ehr_certs_enroll_refuses_newline_site(tmp_path: Path, capsys) -> None:
    from fedsynth.server.certs_cli import main

    with pytest.raises(SystemExit) as ex:
        main(["enroll", "--site", "A\n", "--out", str(tmp_path)])
    assert ex.value.code == 2 and "not a valid site name" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.key")) and not list(tmp_path.rglob("*.pub"))
