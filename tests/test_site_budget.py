"""The site's budget is stored at first use, enforced as stored, and changed only deliberately."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsynth.client.budget_cli import budget_main
from fedsynth.client.site_budget import budget_path, site_budget, stored_budget
from fedsynth.common.errors import InputError
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.ledger import Ledger


def test_first_use_stores_and_later_runs_use_it(tmp_path: Path) -> None:
    assert stored_budget(tmp_path, "A") is None
    assert site_budget(tmp_path, "A", 3.0) == (3.0, "given at first use, now stored")
    assert json.loads(budget_path(tmp_path, "A").read_text())["epsilon_budget"] == 3.0
    assert site_budget(tmp_path, "A", None) == (3.0, "stored")
    assert site_budget(tmp_path, "A", 3.0) == (3.0, "stored")
    assert stored_budget(tmp_path, "B") is None  # per site


@pytest.mark.parametrize("given", [5.0, 1.0])
def test_a_different_budget_is_refused_not_adopted(tmp_path: Path, given: float) -> None:
    site_budget(tmp_path, "A", 3.0)
    with pytest.raises(InputError, match="stored as 3.*--set-budget"):
        site_budget(tmp_path, "A", given)
    assert stored_budget(tmp_path, "A") == 3.0


def test_no_budget_at_first_use_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no stored budget"):
        site_budget(tmp_path, "A", None)
    assert not budget_path(tmp_path, "A").exists()


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf")])
def test_bad_budgets_are_refused(tmp_path: Path, bad: float) -> None:
    with pytest.raises(InputError):
        site_budget(tmp_path, "A", bad)
    with pytest.raises(SystemExit) as exit_:
        budget_main(["--site", "A", "--state-dir", str(tmp_path), "--set-budget", str(bad)])
    assert exit_.value.code == 2 and not budget_path(tmp_path, "A").exists()


def test_budget_view_reads_the_stored_budget_and_flags_overspending(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger.open(tmp_path, "A", delta=1e-5)
    ledger.record(Mechanism(0.8, 0.05, 400), run_id="r1", round=1, note="DP-SGD")
    site_budget(tmp_path, "A", 100.0)
    assert budget_main(["--site", "A", "--state-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["budget"] == 100.0 and report["epsilon_left"] is not None
    spent = report["epsilon"]
    # the privacy officer lowers the budget below the spend: stored, and the view flags it
    assert budget_main(["--site", "A", "--state-dir", str(tmp_path),
                        "--set-budget", f"{spent / 2:g}"]) == 3
    err = capsys.readouterr().err
    assert "stored in" in err and "was 100" in err and "more than its budget" in err
    assert stored_budget(tmp_path, "A") == pytest.approx(spent / 2, rel=1e-5)
    with pytest.raises(InputError, match="stored as"):
        site_budget(tmp_path, "A", 100.0)  # ehr-client with the old flag is refused
