"""Whole records through a federation (issue 16 item 4): ehr-simulate on diabetes130 records.
Each site sends its public schema and two count releases (the codes', and the record columns'
as their own mechanism), trains the one-hot-group model, and the coordinator writes records
(the schema's columns beside the codes) with the model's layout; the operator scores them.
With --audit each site's own audit runs the attribute attack on its record tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.common.data.schema import schema_for
from fedsynth.privacy.record_counts import MECHANISM_NOTE

BIN = Path(sys.executable).parent
TINY = """
[model]
hidden = [32, 32]
time_dim = 16
sample_steps = 4
[privacy]
hidden = [32]
time_dim = 16
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_simulate_whole_records_two_sites(tmp_path: Path, diabetes_path: Path) -> None:
    data = tmp_path / "d.csv.gz"
    pd.read_csv(diabetes_path, dtype=str).head(3000).to_csv(data, index=False)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "sim"
    res = subprocess.run(
        [str(BIN / "ehr-simulate"), "--data", str(data), "--format", "diabetes130", "--sites",
         "2", "--rounds", "1", "--local-epochs", "1", "--epsilon", "3", "--config", str(cfg),
         "--samples", "300", "--out", str(out), "--no-progress", "--audit"],
        capture_output=True, text=True, timeout=580)
    assert res.returncode == 0, res.stderr[-3000:]
    schema = schema_for("diabetes130")
    synth = pd.read_csv(out / "synthetic.csv", dtype=str, keep_default_na=False)  # "None"
    assert list(synth.columns[:1 + len(schema.columns)]) == ["patient_id", *schema.names]
    assert len(synth) == 300
    for col in schema.columns:  # every value inside the public schema
        if col.is_categorical:
            assert set(synth[col.name]) <= set(col.categories or ())
        else:
            v = synth[col.name].astype(float)
            assert v.between(col.low, col.high).all()
    assert (out / "model" / "records_layout.json").is_file()
    model_cfg = json.loads((out / "model" / "config.json").read_text())["model"]
    assert model_cfg["dependency_scale"] == 4.0  # auto guidance of a federated records model
    privacy = json.loads((out / "privacy.json").read_text())
    for site in privacy["sites"].values():  # code counts, column counts, one DP-SGD round
        assert len(site["history"]) == 3
    assert privacy["epsilon"] <= 3.0 + 1e-6
    ev = json.loads((out / "evaluation.json").read_text())
    rec = ev["pooled_records"]
    assert rec["n_synth"] == 300 and 0 <= rec["tv_mean"] <= 1 and "association_r" in rec
    assert ev["pooled_records_target"] == "readmitted=<30"
    # the sites' ledgers name the record columns' release as its own mechanism
    ledgers = list((out / "state").rglob("*.jsonl"))
    assert any(MECHANISM_NOTE in p.read_text() for p in ledgers)
    # each site's kept audit (its canaries stay valid records) has the attribute attack on its
    # record tables; the operator's merge carries it
    for k in range(2):
        kept = json.loads(next((out / "state" / f"site{k}").glob("audit-*/audit.json"))
                          .read_text())["sites"][f"site{k}"]
        assert kept["attribute_records"]["targets"] == ["readmitted", "race"]
        assert kept["white_box"]["kind"] == "canaries"
    merged = json.loads((out / "audit.json").read_text())
    assert all("attribute_records" in s for s in merged["sites"].values())
    assert isinstance(merged["summary"]["attribute_signal"], bool)
