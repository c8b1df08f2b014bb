"""``ehr-train`` keeps one ledger per data set in the user's state folder: a new ``--out``
no longer starts a new budget (it did: the ledger lived in ``OUT/privacy-state``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.client.train_cli import main as train_main
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.ledger import Ledger, user_state_dir
from tests.test_cli_central import tiny_matrix

TOML = """
[model]
time_dim = 16
sample_steps = 4
[privacy]
epochs = 1
batch_size = 100
hidden = [16, 16]
noise_multiplicity = 1
"""


def _train(d: Path, data: Path, out: str, eps: float, *extra: str) -> dict:
    train_main(["--data", str(data), "--format", "matrix", "--out", str(d / out),
                "--config", str(d / "cfg.toml"), "--epsilon", str(eps), "--quiet", *extra])
    return json.loads((d / out / "privacy.json").read_text())


def test_ehr_train_composes_across_out(tmp_path: Path, capsys) -> None:
    tiny_matrix(tmp_path / "train.csv", 400, 0)
    (tmp_path / "cfg.toml").write_text(TOML)
    data = tmp_path / "train.csv"
    first = _train(tmp_path, data, "run1", 1.0)
    assert first["epsilon"] <= 1.0 and first["delta"] == 1e-5
    assert Path(first["ledger"]).parent == user_state_dir()
    assert Path(first["ledger"]).parent == Path(os.environ["XDG_STATE_HOME"]) / "fedsynth"
    assert not (tmp_path / "run1" / "privacy-state").exists()
    assert [h["mechanism"] for h in first["history"]][-1] == "DP-SGD"
    sgd = first["history"][-1]
    assert sgd["max_grad_norm"] == 1.0 and sgd["expected_batch"] == pytest.approx(100.0)
    assert first["ledger_head"] and first["software"].startswith("fedsynth")

    # the same target again, into a new --out: refused, exit 3, nothing written
    with pytest.raises(SystemExit) as ex:
        _train(tmp_path, data, "run2", 1.0)
    assert ex.value.code == 3 and not (tmp_path / "run2" / "privacy.json").exists()
    # another delta for the same patients: refused (exit 2)
    with pytest.raises(SystemExit) as ex:
        _train(tmp_path, data, "run2", 2.0, "--delta", "9e-3")
    assert ex.value.code == 2 and "fixed" in capsys.readouterr().err

    # the same patients in another order and another file: the same ledger; eps 2 trains
    # only with what is left (the total over both runs is <= 2)
    df = pd.read_csv(data)
    shuffled = tmp_path / "shuffled.csv"
    df.sample(frac=1.0, random_state=3).to_csv(shuffled, index=False)
    second = _train(tmp_path, shuffled, "run3", 2.0)
    assert first["epsilon"] < second["epsilon"] <= 2.0
    hist = [Mechanism.from_dict(h) for h in second["history"]]
    assert hist[: len(first["history"])] == [Mechanism.from_dict(h) for h in first["history"]]
    assert second["epsilon"] == pytest.approx(epsilon(hist, 1e-5), rel=1e-6)
    assert Ledger.open(user_state_dir(), Path(first["ledger"]).name[len("ledger-"):-6]) \
        .history == hist


def test_ehr_train_state_dir_flag_and_other_data_sets(tmp_path: Path) -> None:
    tiny_matrix(tmp_path / "a.csv", 300, 0)
    (tmp_path / "cfg.toml").write_text(TOML)
    df = pd.read_csv(tmp_path / "a.csv")
    df["patient_id"] = [f"other-{i}" for i in range(len(df))]  # other patients, same codes
    df.to_csv(tmp_path / "b.csv", index=False)
    state = tmp_path / "mystate"
    a = _train(tmp_path, tmp_path / "a.csv", "a", 1.0, "--state-dir", str(state))
    b = _train(tmp_path, tmp_path / "b.csv", "b", 1.0, "--state-dir", str(state))
    assert Path(a["ledger"]).parent == state == Path(b["ledger"]).parent
    assert a["ledger"] != b["ledger"]  # another data set: its own budget
    assert np.isclose(a["epsilon"], b["epsilon"], rtol=0.05)
    assert not user_state_dir().exists()
