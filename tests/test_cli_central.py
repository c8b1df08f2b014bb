"""End to end on a tiny matrix: ehr-train -> ehr-sample -> ehr-evaluate, plus bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsynth.client.train_cli import main as train_main
from fedsynth.common.cli.evaluate import main as evaluate_main
from fedsynth.common.cli.sample import main as sample_main
from fedsynth.common.data import icd9_categories, load_codes, write_matrix
from fedsynth.common.model import load_model

CODES = ["250", "401", "428", "414", "427", "584", "276", "V45", "E888", "038", "486", "599"]


def tiny_matrix(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = icd9_categories()
    X = np.zeros((n, len(vocab)), np.uint8)
    cols = [vocab.index(c) for c in CODES]
    cluster = rng.integers(0, 2, n)
    p = np.where(cluster[:, None] == 0, [0.8, 0.7, 0.6, 0.1, 0.05, 0.05] * 2,
                 [0.1, 0.1, 0.05, 0.7, 0.6, 0.5] * 2)
    X[:, cols] = rng.random((n, len(cols))) < p
    write_matrix(path, X, vocab)


TOML = """
[model]
hidden = [32, 32]
time_dim = 16
sample_steps = 4
[train]
epochs = 3
batch_size = 64
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("central")
    tiny_matrix(d / "train.csv", 300, 0)
    tiny_matrix(d / "real.csv", 200, 1)
    (d / "cfg.toml").write_text(TOML)
    train_main(["--data", str(d / "train.csv"), "--format", "matrix", "--out", str(d / "model"),
                "--config", str(d / "cfg.toml"), "--seed", "1", "--quiet"])
    return d


def test_train_writes_a_model_directory(trained):
    m = trained / "model"
    for name in ("model.pt", "config.json", "vocabulary.json", "output_step.json"):
        assert (m / name).exists(), name
    conf = json.loads((m / "config.json").read_text())
    assert conf["model"]["hidden"] == [32, 32] and conf["extra"]["training"]["epochs"] == 3
    gen = load_model(m)
    a, b = gen.sample(50, seed=3), gen.sample(50, seed=3, batch=7)
    assert a.dtype == np.uint8 and a.shape == (50, 2090) and np.array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1}
    # codes the training data never has are never emitted by the calibrated output step
    used = {icd9_categories().index(c) for c in CODES}
    assert a[:, sorted(set(range(2090)) - used)].sum() == 0


def test_sample_and_evaluate(trained, capsys):
    syn = trained / "syn.csv"
    sample_main(["--model", str(trained / "model"), "--n", "400", "--out", str(syn), "--quiet"])
    m = load_codes(syn, format="matrix")
    assert m.n_patients == 400 and m.X.shape[1] == 2090
    capsys.readouterr()
    evaluate_main([str(trained / "real.csv"), str(syn), "--format", "matrix",
                   "--out", str(trained / "metrics.json"), "--plot", str(trained / "prev.png")])
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads((trained / "metrics.json").read_text())
    assert out["prevalence_r"] > 0.8
    assert abs(out["codes_per_patient_synth"]["mean"] - out["codes_per_patient_real"]["mean"]) < 1
    assert (trained / "prev.png").read_bytes()[:4] == b"\x89PNG"


def test_parquet_output(trained):
    out = trained / "syn.parquet"
    sample_main(["--model", str(trained / "model"), "--n", "20", "--out", str(out), "--quiet"])
    assert load_codes(out, format="matrix").n_patients == 20


@pytest.mark.parametrize("argv", [
    ["--model", "nowhere", "--n", "5", "--out", "x.csv"],
    ["--model", ".", "--n", "0", "--out", "x.csv"],
])
def test_sample_bad_input_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        sample_main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_train_bad_input_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,250\np1,7\n")
    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(bad), "--format", "matrix", "--out", str(tmp_path / "m")])
    assert e.value.code == 2
    assert "bad.csv" in capsys.readouterr().err
