"""The shared output format: patient_id + one 0/1 column per vocabulary code, atomic, fast."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.data import Vocabulary, icd9_categories, load_codes, write_matrix
from fedsynth.common.data.writer import synthetic_ids


def test_csv_layout_exact(tmp_path):
    vocab = Vocabulary(("008", "250", "V45", "E888"), name="t")
    X = np.array([[1, 0, 0, 1], [0, 1, 1, 0]], dtype=np.uint8)
    write_matrix(tmp_path / "s.csv", X, vocab)
    assert (tmp_path / "s.csv").read_text() == (
        "patient_id,008,250,V45,E888\nsyn-000001,1,0,0,1\nsyn-000002,0,1,1,0\n"
    )


def test_given_patient_ids_and_quoting(tmp_path):
    vocab = Vocabulary(("250",), name="t")
    write_matrix(tmp_path / "s.csv", np.array([[1], [0]]), vocab, patient_ids=["a,b", "c"])
    df = pd.read_csv(tmp_path / "s.csv", dtype=str)
    assert list(df["patient_id"]) == ["a,b", "c"] and list(df["250"]) == ["1", "0"]


def test_parquet(tmp_path):
    vocab = icd9_categories()
    X = np.zeros((3, len(vocab)), dtype=np.uint8)
    X[1, vocab.index("V45")] = 1
    write_matrix(tmp_path / "s.parquet", X, vocab)
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert list(df.columns[:3]) == ["patient_id", "001", "002"] and df.shape == (3, 2091)
    assert df.loc[1, "V45"] == 1 and df.drop(columns="patient_id").to_numpy().sum() == 1


def test_round_trip_through_load_codes(tmp_path):
    vocab = icd9_categories()
    rng = np.random.default_rng(1)
    X = (rng.random((200, len(vocab))) < 0.002).astype(np.uint8)
    for name in ("s.csv", "s.parquet"):
        write_matrix(tmp_path / name, X, vocab)
        m = load_codes(tmp_path / name)
        np.testing.assert_array_equal(m.X, X)
        assert m.vocab.codes == vocab.codes
        assert list(m.patient_ids[:2]) == ["syn-000001", "syn-000002"]


def test_20000_by_2090_is_fast(tmp_path):
    vocab = icd9_categories()
    X = (np.random.default_rng(0).random((20000, len(vocab))) < 0.002).astype(np.uint8)
    t = time.perf_counter()
    write_matrix(tmp_path / "big.csv", X, vocab)
    assert time.perf_counter() - t < 15
    with open(tmp_path / "big.csv") as fh:
        lines = sum(1 for _ in fh)
    assert lines == 20001


def test_atomic_failure_leaves_old_file(tmp_path):
    vocab = Vocabulary(("250",), name="t")
    f = tmp_path / "s.csv"
    write_matrix(f, np.array([[1]]), vocab)
    before = f.read_text()
    with pytest.raises(ValueError):
        write_matrix(f, np.array([[2]]), vocab)
    with pytest.raises(ValueError):
        write_matrix(f, np.array([[1, 0]]), vocab)
    assert f.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


def test_synthetic_ids():
    assert list(synthetic_ids(2)) == ["syn-000001", "syn-000002"]
