"""Whole records through the model (issue 16): the public token layout, and ehr-train
--columns all -> ehr-sample -> ehr-evaluate --records on the MIMIC-III demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from fedsynth.common.data.record_tokens import (
    read_layout,
    record_vocabulary,
    records_to_tokens,
    token_layout,
    tokens_to_table,
)
from fedsynth.common.data.records import load_records
from fedsynth.common.data.schema import schema_for

BIN = Path(sys.executable).parent


def test_layout_comes_from_the_schema_alone() -> None:
    a, b = token_layout(schema_for("diabetes130")), token_layout(schema_for("diabetes130"))
    assert a.to_dict() == b.to_dict() and a.n_tokens == 490
    g = {x.name: x for x in a.groups}
    assert g["readmitted"].labels == list(schema_for("diabetes130").column("readmitted")
                                          .categories or ())
    assert g["time_in_hospital"].labels == [str(v) for v in range(1, 15)]  # one per value
    bounds = g["num_lab_procedures"].bounds
    assert bounds[0] == (0, 0) and bounds[-1][1] == 200  # the schema's public bounds
    assert all(lo <= hi for lo, hi in bounds)
    assert all(bounds[i][1] + 1 == bounds[i + 1][0] for i in range(len(bounds) - 1))


def test_tokens_round_trip_on_real_records(diabetes_path) -> None:
    rec = load_records(diabetes_path, "diabetes130").subset(np.arange(5000))
    layout = token_layout(rec.schema)
    T = records_to_tokens(rec.table, layout)
    assert (T.sum(axis=1) == len(rec.schema.columns)).all()  # one token per column
    back = tokens_to_table(T.astype(float), layout, rec.schema)
    for col in rec.schema.columns:
        real, got = rec.table[col.name], back[col.name]
        if col.is_categorical:
            assert (real.astype(str).to_numpy() == got.astype(str).to_numpy()).all()
        else:  # exact for one-token values, uniform inside a bin: a small KS floor
            assert ks_2samp(real.astype(float), got.astype(float)).statistic < 0.02
    vocab = record_vocabulary(layout, rec.codes.vocab)
    assert len(vocab) == layout.n_tokens + len(rec.codes.vocab)


def _run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=600)
    if ok:
        assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.slow
def test_train_sample_evaluate_whole_records(mimic_path, tmp_path) -> None:
    model = tmp_path / "m"
    _run("ehr-train", "--data", str(mimic_path), "--format", "mimic", "--columns", "all",
         "--epochs", "2", "--out", str(model), "--quiet")
    layout, schema = read_layout(model)
    assert schema.name == "mimic3" and layout.n_tokens > 0
    # auto dependency guidance, decided at the release and kept with the model
    assert json.loads((model / "config.json").read_text())["model"]["dependency_scale"] == 1.5
    syn = tmp_path / "syn.parquet"
    _run("ehr-sample", "--model", str(model), "--n", "300", "--out", str(syn), "--quiet")
    df = pd.read_parquet(syn)
    assert list(df.columns[:1 + len(schema.columns)]) == ["patient_id", *schema.names]
    for col in schema.columns:
        if col.is_categorical:
            assert isinstance(df[col.name].dtype, pd.CategoricalDtype)
            assert set(df[col.name].dropna()) <= set(col.categories or ())
        else:
            assert df[col.name].between(col.low, col.high).all()
    assert str(df["n_admissions"].dtype) == "Int64"
    codes = df.columns[1 + len(schema.columns):]
    assert set(np.unique(df[codes].to_numpy())) <= {0, 1}
    csv = tmp_path / "syn.csv"
    _run("ehr-sample", "--model", str(model), "--n", "300", "--out", str(csv), "--quiet")
    out = tmp_path / "metrics.json"
    _run("ehr-evaluate", str(mimic_path), str(csv), "--format", "mimic", "--records",
         "--out", str(out))
    assert out.exists()


def test_schema_flag_needs_whole_records(mimic_path, tmp_path) -> None:
    done = _run("ehr-train", "--data", str(mimic_path), "--format", "mimic", "--columns",
                "codes", "--schema", "mimic3", "--out", str(tmp_path / "m"), ok=False)
    assert done.returncode == 2 and "--schema" in done.stderr
    assert "Traceback" not in done.stderr


def test_pick_tokens_keeps_single_tokens_and_the_group_rates() -> None:
    from fedsynth.common.model.record_output import pick_tokens

    rng = np.random.default_rng(0)
    n = 20000
    truth = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    on = np.eye(3, dtype=bool)[truth]
    on[:2000] = False  # no token on
    on[2000:3000, :2] = True  # two tokens on
    scores = np.where(on, 0.5, -0.5)
    pick = pick_tokens(scores, np.random.default_rng(1))
    single = on.sum(axis=1) == 1
    assert (pick[single] == truth[single]).all()
    assert on[np.arange(2000, 3000), pick[2000:3000]].all()  # only among those on
    rate = on.mean(axis=0) / on.mean(axis=0).sum()
    share = np.bincount(pick, minlength=3) / n
    assert np.abs(share - rate).max() < 0.01
