"""ehr-audit on whole-records models (issue 16, items 4 and 5): the attribute attack on records
against a hand-computed case, its default targets, and the real CLI on a tiny records model
trained on 3,000 diabetes130 patients (members) with 1,500 others held out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsynth.common.config import ModelConfig
from fedsynth.common.data.record_tokens import model_layout, record_vocabulary, write_layout
from fedsynth.common.data.schema import Column, Schema, schema_for
from fedsynth.common.errors import InputError
from fedsynth.common.model.store import save_model
from fedsynth.common.model.train import build_model
from fedsynth.common.vocabulary import Vocabulary
from fedsynth.privacy.audit import cli
from fedsynth.privacy.audit.attribute_records import record_attribute_disclosure
from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.records import (
    RecordsAudit,
    attribute_records_audit,
    default_targets,
    parse_targets,
)

BIN = Path(sys.executable).parent
HAND = Schema("hand", (
    Column("a", "categorical", ("p", "q", "r")),
    Column("n", "integer", None, 0, 10),
    Column("t", "categorical", ("x", "y")),
))


def _hand(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    a, n, t = zip(*rows, strict=True)
    return pd.DataFrame({"a": pd.Categorical(a, categories=["p", "q", "r"]),
                         "n": pd.array(n, dtype="Int64"),
                         "t": pd.Categorical(t, categories=["x", "y"])})


def test_record_attribute_attack_hand_computed() -> None:
    """Gower on (a, n): d = ([a != a'] + |n - n'| / 10) / 2. Members' nearest synthetic
    records: (p,1)->(p,0,x) right, (q,9)->(q,10,y) right, (r,4)->(r,5,y) wrong: 2/3. The
    held-out records are six copies of (p,2,y), so whatever the random split, the non-members
    are three of them (nearest synthetic (p,0,x): all wrong, 0) and the reference source holds
    only y (members right only for (q,9): 1/3). Majority among members: x, 2/3."""
    synth = _hand([("p", 0, "x"), ("q", 10, "y"), ("r", 5, "y")])
    members = _hand([("p", 1, "x"), ("q", 9, "y"), ("r", 4, "x")])
    hold = _hand([("p", 2, "y")] * 6)
    res = record_attribute_disclosure(members, hold, synth, HAND, "t", k=1)
    assert res["n_targets"] == 3
    assert res["accuracy_members_synth"] == pytest.approx(2 / 3)
    assert res["accuracy_nonmembers_synth"] == 0.0
    assert res["accuracy_members_holdout"] == pytest.approx(1 / 3)
    assert res["majority_rate"] == pytest.approx(2 / 3)
    assert res["gain_over_nonmembers"] == pytest.approx(2 / 3)
    assert res["gain_over_baseline"] == pytest.approx(1 / 3)
    # k = 3 votes over all three synthetic records: y (2 of 3) for everyone
    k3 = record_attribute_disclosure(members, hold, synth, HAND, "t", k=3)
    assert k3["accuracy_members_synth"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="categorical"):
        record_attribute_disclosure(members, hold, synth, HAND, "n")


def test_attribute_audit_verdict_and_targets() -> None:
    members = _hand([("p", 1, "x"), ("q", 9, "y"), ("r", 4, "x")] * 40)
    hold = _hand([("p", 2, "y"), ("r", 6, "y")] * 60)
    rec = RecordsAudit(HAND, 0, members, hold, ("t",), synth=members)  # a copying generator
    out = attribute_records_audit(rec, AuditConfig(attr_targets=100))
    r = out["by_target"]["t"]
    assert r["accuracy_members_synth"] == 1.0 and out["signal"] and r["signal"]
    assert "beyond chance" in out["verdict"] and "'t'" in out["verdict"]
    fresh = RecordsAudit(HAND, 0, members, hold, ("t",), synth=hold)
    assert not attribute_records_audit(fresh, AuditConfig(attr_targets=100))["signal"]
    # targets: the built-in default, a generic schema's, and the flag's checks
    assert default_targets(schema_for("diabetes130")) == ("readmitted", "race")
    assert default_targets(schema_for("mimic3")) == ("hospital_expire_flag", "ethnicity")
    assert default_targets(HAND) == ("t",)  # no sensitive name: the last categorical column
    assert parse_targets(" race, gender ,race", schema_for("diabetes130")) == ("race", "gender")
    for bad in ("nope", "time_in_hospital"):
        with pytest.raises(InputError, match="--attribute-targets"):
            parse_targets(bad, schema_for("diabetes130"))


# ------------------------------------------------------------------ the CLI, end to end

TINY = """[model]
hidden = [64, 64]
time_dim = 16
sample_steps = 4
calibrate = false

[train]
batch_size = 256
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def trained(diabetes_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch records model on 3,000 random patients; 1,500 others held out."""
    d = tmp_path_factory.mktemp("audit-records")
    raw = pd.read_csv(diabetes_path, dtype=str, keep_default_na=False)
    pids = raw["patient_nbr"].drop_duplicates().to_numpy()
    pids = pids[np.random.default_rng(0).permutation(len(pids))]
    raw[raw["patient_nbr"].isin(pids[:3000])].to_csv(d / "members.csv.gz", index=False)
    raw[raw["patient_nbr"].isin(pids[3000:4500])].to_csv(d / "non.csv.gz", index=False)
    (d / "tiny.toml").write_text(TINY)
    done = _run("ehr-train", "--data", str(d / "members.csv.gz"), "--format", "diabetes130",
                "--columns", "all", "--epochs", "2", "--config", str(d / "tiny.toml"),
                "--out", str(d / "model"), "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    return d


@pytest.mark.slow
def test_ehr_audit_on_a_records_model(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    done = _run("ehr-audit", "--model", str(trained / "model"),
                "--members", str(trained / "members.csv.gz"),
                "--non-members", str(trained / "non.csv.gz"), "--format", "diabetes130",
                "--out", str(out), "--n-synth", "600")
    assert done.returncode == 0, done.stderr[-2000:]
    audit = json.loads((out / "audit.json").read_text())
    site = audit["sites"]["all"]
    assert site["n_members"] == 3000 and site["n_non_members"] == 1500
    assert site["n_synth"] == 600
    # the membership and white-box attacks ran on the model's own vectors (tokens then codes)
    model_width = len(json.loads((trained / "model" / "vocabulary.json").read_text())["codes"])
    assert len(site["prevalence"]["synthetic"]) == model_width
    assert site["white_box"]["kind"] == "loss_attack"
    assert 0.0 <= site["membership"]["dcr_hamming"]["auroc"] <= 1.0
    attr = site["attribute_records"]
    assert attr["targets"] == ["readmitted", "race"] and isinstance(attr["signal"], bool)
    for target in ("readmitted", "race"):
        r = attr["by_target"][target]
        for key in ("accuracy_members_synth", "accuracy_nonmembers_synth",
                    "accuracy_members_holdout", "majority_rate"):
            assert 0.0 <= r[key] <= 1.0, (target, key, r[key])
        assert r["gain_over_nonmembers"] == pytest.approx(
            r["accuracy_members_synth"] - r["accuracy_nonmembers_synth"])
        assert r["gain_over_baseline"] == pytest.approx(
            r["accuracy_members_synth"] - r["accuracy_members_holdout"])
        assert r["n_targets"] == 750  # half the held-out patients are the non-member targets
        assert f"{target!r}" in attr["verdict"]
    assert audit["summary"]["attribute_signal"] == attr["signal"]
    html = (out / "audit.html").read_text()
    section = html[html.index("<section id='attribute-records'>"):]
    section = section[:section.index("</section>")]
    assert "readmitted" in section and "race" in section and "Knowing every other" in section


@pytest.fixture(scope="module")
def untrained(diabetes_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained records model laid out like ehr-train's (tokens then codes, one-hot groups,
    records_layout.json) and 150 + 150 patients: the CLI's paths in seconds."""
    d = tmp_path_factory.mktemp("audit-records-fast")
    raw = pd.read_csv(diabetes_path, dtype=str, keep_default_na=False, nrows=800)
    pids = raw["patient_nbr"].drop_duplicates().to_numpy()
    raw[raw["patient_nbr"].isin(pids[:150])].to_csv(d / "members.csv", index=False)
    raw[raw["patient_nbr"].isin(pids[150:300])].to_csv(d / "non.csv", index=False)
    pd.DataFrame({"patient_id": raw["patient_nbr"], "code": raw["diag_1"]}).to_csv(
        d / "codes.csv", index=False)
    schema = schema_for("diabetes130")
    layout = model_layout(schema)  # the model's: the schema's tokens, then the number of codes
    vocab = record_vocabulary(layout, Vocabulary(codes=("250", "401", "428", "414", "427"),
                                                 name="icd9cm-3digit"))
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=2,
                      one_hot_groups=tuple(len(g.labels) for g in layout.groups))
    save_model(d / "model", build_model(len(vocab), cfg), cfg, vocab)
    write_layout(d / "model", layout, schema)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=2)
    save_model(d / "codes_model", build_model(5, cfg), cfg,
               Vocabulary(codes=("250", "401", "428", "414", "427"), name="t"))
    return d


def test_ehr_audit_records_in_seconds(untrained: Path, tmp_path: Path) -> None:
    d = untrained
    argv = ["--model", str(d / "model"), "--members", str(d / "members.csv"), "--non-members",
            str(d / "non.csv"), "--format", "diabetes130", "--out", str(tmp_path / "o"),
            "--n-synth", "100", "--attribute-targets", "gender,readmitted"]
    assert cli.main(argv) == 0
    site = json.loads((tmp_path / "o" / "audit.json").read_text())["sites"]["all"]
    assert site["attribute_records"]["targets"] == ["gender", "readmitted"]
    assert site["attribute_records"]["by_target"]["gender"]["n_targets"] == 75
    assert site["attribute"]["n_targets"] == 150  # the code-level attack: on the codes only
    assert "white_box" in site
    assert "<section id='attribute-records'>" in (tmp_path / "o" / "audit.html").read_text()


def test_ehr_audit_records_wrong_inputs(untrained: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """One line each, exit 2: codes-only files for a records model, --columns against the
    model, targets the schema does not have or cannot infer, and targets for a codes model."""
    d = untrained
    base = ["--members", str(d / "members.csv"), "--non-members", str(d / "non.csv"),
            "--out", str(tmp_path / "o"), "--n-synth", "50"]
    model = ["--model", str(d / "model")]
    cases = {
        "patient records": [*model, "--members", str(d / "codes.csv"), *base[2:]],
        "--columns all (or auto)": [*model, *base, "--columns", "codes"],
        "no column 'nope'": [*model, *base, "--attribute-targets", "nope"],
        "is integer": [*model, *base, "--attribute-targets", "num_lab_procedures"],
        "codes-only model": ["--model", str(d / "codes_model"), *base, "--columns", "all"],
        "only for a whole-records model": ["--model", str(d / "codes_model"), *base,
                                           "--attribute-targets", "race"],
    }
    for expect, argv in cases.items():
        with pytest.raises(SystemExit) as ex:
            cli.main(argv)
        err = capsys.readouterr().err
        assert ex.value.code == 2, (expect, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expect in err and "Traceback" not in err, err
