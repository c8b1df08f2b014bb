"""Issue 16 in the notebook API: ``fedsynth.load`` gives whole records where ``ehr-train
--columns auto`` would, and ``train`` / ``Generator`` / ``evaluate`` handle them through the
CLIs' own functions: the samples are ``ehr-sample``'s rows, a DP run is ``ehr-train --epsilon
--columns all``'s, the metrics are ``ehr-evaluate --records``' dict."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_api import one_thread

import fedsynth
import fedsynth.common.model.calibrate as calibration
from fedsynth.common.data import CodeMatrix
from fedsynth.common.data.record_tokens import LAYOUT_FILE
from fedsynth.common.data.records import Records
from fedsynth.common.errors import InputError
from fedsynth.privacy.record_counts import MECHANISM_NOTE as COLUMN_COUNTS

TINY = {"model": {"hidden": [32, 32], "time_dim": 16, "sample_steps": 4},
        "privacy": {"hidden": [32, 32], "time_dim": 16, "noise_multiplicity": 1,
                    "epochs": 2, "batch_size": 50},
        "train": {"epochs": 2}}
TINY_TOML = ("[model]\nhidden = [32, 32]\ntime_dim = 16\nsample_steps = 4\n"
             "[privacy]\nhidden = [32, 32]\ntime_dim = 16\nnoise_multiplicity = 1\n"
             "epochs = 2\nbatch_size = 50\n[train]\nepochs = 2\n")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():  # speed only (test_api.one_thread)
        yield


@pytest.fixture(scope="module")
def records(mimic_path: Path) -> Records:
    return fedsynth.load(mimic_path)  # PATIENTS.csv and ADMISSIONS.csv sit beside it


@pytest.fixture(scope="module")
def records_gen(records: Records) -> fedsynth.Generator:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibration, "CALIBRATION_SAMPLES", 1000)
        return fedsynth.train(records, config=TINY, seed=0, progress=False)


def test_load_picks_records_like_the_cli(records: Records, mimic_path: Path,
                                         tmp_path: Path) -> None:
    assert isinstance(records, Records) and records.schema.name == "mimic3"
    assert records.n_patients == 100 and list(records.table.columns) == records.schema.names
    codes = fedsynth.load(mimic_path, columns="codes")
    assert isinstance(codes, CodeMatrix)
    assert np.array_equal(codes.X, records.codes.X)
    assert isinstance(fedsynth.load(mimic_path, columns="all"), Records)

    alone = tmp_path / "DIAGNOSES_ICD.csv"  # no PATIENTS/ADMISSIONS beside it
    shutil.copy(mimic_path, alone)
    assert isinstance(fedsynth.load(alone), CodeMatrix)
    with pytest.raises(InputError):
        fedsynth.load(alone, columns="all")
    with pytest.raises(InputError, match="schema"):
        fedsynth.load(mimic_path, columns="codes", schema="mimic3")
    with pytest.raises(InputError, match="columns"):
        fedsynth.load(mimic_path, columns="everything")


def test_records_sample_save_and_ehr_sample_agree(records_gen: fedsynth.Generator,
                                                  records: Records, tmp_path: Path) -> None:
    from fedsynth.common.cli.sample import main as ehr_sample

    gen = records_gen
    assert gen.is_records and gen.schema is not None and gen.schema.name == "mimic3"
    assert gen.columns == records.schema.names
    assert gen.codes == list(records.codes.vocab.codes) and gen.vocab.codes == tuple(gen.codes)
    assert "records of schema 'mimic3': 8 columns" in repr(gen)

    syn = gen.sample(120, seed=4)
    assert syn.index.name == "patient_id" and syn.index[0] == "syn-000001"
    assert list(syn.columns) == gen.columns + gen.codes
    pd.testing.assert_series_equal(syn[gen.columns].dtypes, records.table.dtypes)
    assert (syn[gen.codes].dtypes == np.uint8).all()
    assert set(np.unique(syn[gen.codes].to_numpy())) <= {0, 1}
    for col in records.schema.columns:
        if col.is_categorical:
            assert list(syn[col.name].cat.categories) == list(col.categories or ())

    folder = gen.save(tmp_path / "m")
    assert (folder / LAYOUT_FILE).is_file()
    again = fedsynth.load_generator(folder)
    assert again.columns == gen.columns and again.codes == gen.codes and again.privacy is None
    pd.testing.assert_frame_equal(again.sample(120, seed=4), syn)
    # ehr-sample reads the saved folder as a records model and writes the same rows
    ehr_sample(["--model", str(folder), "--n", "120", "--seed", "4", "--out",
                str(tmp_path / "syn.parquet"), "--quiet"])
    written = pd.read_parquet(tmp_path / "syn.parquet").set_index("patient_id")
    pd.testing.assert_frame_equal(written, syn)


def test_train_from_a_path_takes_the_load_options(mimic_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(calibration, "CALIBRATION_SAMPLES", 1000)
    gen = fedsynth.train(mimic_path, columns="codes", config=TINY, progress=False)
    assert not gen.is_records and gen.columns == [] and gen.schema is None
    assert "records" not in repr(gen) and len(gen.codes) == gen.sampler.vocab.__len__()
    assert list(gen.sample(5, seed=0).columns) == gen.codes
    with pytest.raises(TypeError, match="only apply when data is a file path"):
        fedsynth.train(fedsynth.load(mimic_path, columns="codes"), columns="all")


def test_dp_records_training_is_ehr_train_columns_all(records: Records, mimic_path: Path,
                                                      tmp_path: Path, monkeypatch) -> None:
    from fedsynth.client.train_cli import main as ehr_train

    monkeypatch.setattr(calibration, "CALIBRATION_SAMPLES", 1000)
    gen = fedsynth.train(records, epsilon=3.0, config=TINY, seed=0, state_dir=tmp_path / "a",
                         progress=False)
    api = gen.privacy
    assert api is not None and gen.is_records and api["epsilon"] <= 3.0
    names = [m["name"] for m in api["mechanisms"]]
    assert COLUMN_COUNTS in names and "DP-SGD" in names and len(names) == 4
    assert "outcome pair counts (Gaussian)" in names  # hospital_expire_flag, the outcome
    col = next(m for m in api["mechanisms"] if m["name"] == COLUMN_COUNTS)
    # one value per schema column and patient, and its number of codes (codes:count)
    assert col["l2_sensitivity"] == pytest.approx(np.sqrt(len(records.schema.columns) + 1))
    assert len(api["history"]) == 4  # code, column and pair counts, DP-SGD in the ledger

    toml = tmp_path / "tiny.toml"
    toml.write_text(TINY_TOML)
    ehr_train(["--data", str(mimic_path), "--out", str(tmp_path / "cli"), "--columns", "all",
               "--config", str(toml), "--seed", "0", "--epsilon", "3", "--state-dir",
               str(tmp_path / "b"), "--quiet"])
    cli = json.loads((tmp_path / "cli" / "privacy.json").read_text())

    def plan(p: dict) -> list:
        return [(m["name"], m.get("noise_multiplier"), m.get("l2_sensitivity"),
                 m.get("sample_rate"), m.get("steps")) for m in p["mechanisms"]]

    assert plan(api) == plan(cli)  # the same mechanisms, calibrated the same way
    assert api["epsilon"] == pytest.approx(cli["epsilon"]) and api["delta"] == cli["delta"]
    saved = gen.save(tmp_path / "dp")
    assert (saved / LAYOUT_FILE).is_file() and (saved / "privacy.json").is_file()
    assert fedsynth.load_generator(saved).privacy == api


def test_evaluate_records_is_ehr_evaluate_records(records_gen: fedsynth.Generator,
                                                  records: Records, mimic_path: Path,
                                                  tmp_path: Path) -> None:
    from fedsynth.common.cli.evaluate import main as ehr_evaluate
    from fedsynth.common.cli.sample import main as ehr_sample

    syn = records_gen.sample(100, seed=0)
    got = fedsynth.evaluate(records, syn, train=records, target="hospital_expire_flag=1")
    r = got["records"]
    assert got["schema"] == "mimic3" and got["synth_out_of_schema"] == {}
    assert {"tv_mean", "ks_mean", "association_r", "discriminator_auroc",
            "downstream_auroc_tstr"} <= set(r)
    assert r["dcr_exact_members"] == 0.0 and 0 <= got["prevalence_r"] <= 1

    csv, out = tmp_path / "syn.csv", tmp_path / "m.json"
    ehr_sample(["--model", str(records_gen.save(tmp_path / "m")), "--n", "100", "--seed", "0",
                "--out", str(csv), "--quiet"])
    ehr_evaluate([str(mimic_path), str(csv), "--records", "--train", str(mimic_path),
                  "--target", "hospital_expire_flag=1", "--out", str(out)])
    cli = json.loads(out.read_text())
    assert (cli.pop("real"), cli.pop("synth")) == (str(mimic_path), str(csv))

    def same(m: dict) -> dict:
        return json.loads(json.dumps({k: v for k, v in m.items() if k != "timings_s"},
                                     default=float))

    assert same(got) == same(cli)  # key order too: the CLI's JSON is unchanged
    assert list(got) == [k for k in json.loads(out.read_text()) if k not in ("real", "synth")]
    assert same(fedsynth.evaluate(records, csv, train=records,
                                  target="hospital_expire_flag=1")) == same(cli)

    plain = fedsynth.evaluate(records, syn)  # no train, target "auto": mimic3 has none
    assert "dcr_auroc" not in plain["records"] and "downstream_auroc_tstr" not in plain["records"]
    with pytest.raises(InputError, match="gender"):
        fedsynth.evaluate(records, syn[records_gen.codes])  # codes only: not records
    with pytest.raises(InputError, match="no_such_column"):
        fedsynth.evaluate(records, syn, target="no_such_column=1")
    with pytest.raises(ValueError, match="Records"):
        fedsynth.evaluate(records.codes, syn[records_gen.codes], target="x=1")
    codes_only = fedsynth.evaluate(records.codes, syn[records_gen.codes])
    assert codes_only["prevalence_r"] == plain["prevalence_r"]
