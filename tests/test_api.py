"""Issue 15: the notebook API (``import fedsynth``). The README's example runs here as written,
so README and API cannot drift; DP training from the API shares the CLI's ledger."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SHARED_DATA

import fedsynth
import fedsynth.common.model.calibrate as calibration
from fedsynth.common.config import Config
from fedsynth.common.data import CodeMatrix
from fedsynth.common.data.records import Records
from fedsynth.common.errors import BudgetExceeded, InputError

README_DATA = "../shared/data"  # how the README names the shared data (from the repo root)
TINY = {"model": {"hidden": [32, 32], "time_dim": 16, "sample_steps": 4},
        "privacy": {"hidden": [32, 32], "time_dim": 16, "noise_multiplicity": 1,
                    "epochs": 2, "batch_size": 50},
        "train": {"epochs": 2}}


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch and one OpenMP thread inside (restored after)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def readme_example() -> str:
    """The fenced python block of the README's "Python API" section (exactly one)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert len(blocks) == 1, "the Python API section must hold exactly one python block"
    return blocks[0]


@pytest.fixture(scope="module")
def mimic(mimic_path: Path) -> CodeMatrix:
    return fedsynth.load(mimic_path, columns="codes")


@pytest.fixture(scope="module")
def tiny_gen(mimic: CodeMatrix) -> fedsynth.Generator:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibration, "CALIBRATION_SAMPLES", 1000)
        return fedsynth.train(mimic, config=TINY, seed=0, progress=False)


def test_readme_example_runs(mimic_path: Path, tmp_path: Path, monkeypatch) -> None:
    code = readme_example()
    assert README_DATA in code  # the README points at the shared MIMIC-III demo ...
    code = code.replace(README_DATA, str(SHARED_DATA))  # ... which tests find via conftest
    monkeypatch.setattr(calibration, "CALIBRATION_SAMPLES", 2000)  # speed only
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    # speed only: on a shared 2-core machine OpenMP threads spin against each other (the
    # records discriminator's gradient boosting: a minute instead of a second)
    with one_thread():
        exec(compile(code, "README.md (Python API)", "exec"), ns)  # noqa: S102

    data, gen, synthetic, metrics = ns["data"], ns["gen"], ns["synthetic"], ns["metrics"]
    # the demo's default is whole records: PATIENTS.csv and ADMISSIONS.csv sit beside it
    assert isinstance(data, Records) and data.n_patients == 100 and gen.privacy is None
    assert gen.is_records and gen.columns == data.schema.names
    codes = list(data.codes.vocab.codes)
    assert isinstance(synthetic, pd.DataFrame)
    assert list(synthetic.columns) == data.schema.names + codes
    assert synthetic.index.name == "patient_id" and synthetic.index[0] == "syn-000001"
    X = synthetic[codes].to_numpy()
    assert set(np.unique(X)) <= {0, 1} and X.sum() > 0
    assert {"prevalence_r", "cooccurrence_r", "dimwise_auroc_ratio",
            "discriminator_auroc"} <= set(metrics)
    assert metrics["n_real"] == metrics["n_synth"] == 100 and metrics["prevalence_r"] > 0.5
    assert all(c["code"] in data.codes.vocab for c in metrics["dimwise_per_code"])
    assert metrics["schema"] == "mimic3" and {"tv_mean", "ks_mean"} <= set(metrics["records"])
    assert isinstance(ns["codes"], CodeMatrix) and list(ns["codes"].vocab.codes) == codes

    # the saved folder is ehr-train's: ehr-sample reads it and draws the same patients
    from fedsynth.common.cli.sample import main as ehr_sample

    model = tmp_path / "runs" / "mimic-demo-model"
    assert {"model.pt", "config.json", "vocabulary.json", "output_step.json",
            "records_layout.json"} <= {p.name for p in model.iterdir()}
    ehr_sample(["--model", str(model), "--n", "100", "--seed", "0", "--out",
                str(tmp_path / "syn.parquet"), "--quiet"])
    written = pd.read_parquet(tmp_path / "syn.parquet").set_index("patient_id")
    pd.testing.assert_frame_equal(written, synthetic)


def test_load_generator_round_trip(tiny_gen: fedsynth.Generator, tmp_path: Path) -> None:
    folder = tiny_gen.save(tmp_path / "m")
    again = fedsynth.load_generator(folder)
    assert again.privacy is None and again.codes == tiny_gen.codes
    assert again.training == tiny_gen.training
    assert again.sample(50, seed=3).equals(tiny_gen.sample(50, seed=3))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_gen.save(folder)
    assert tiny_gen.save(folder, overwrite=True) == folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left
    with pytest.raises(ValueError, match="at least 1"):
        tiny_gen.sample(0)


def test_dp_training_uses_the_ledger_and_composes(mimic: CodeMatrix, mimic_path: Path,
                                                  tmp_path: Path, monkeypatch) -> None:
    from fedsynth.client.private_train import data_set_site
    from fedsynth.client.train_cli import main as ehr_train
    from fedsynth.privacy.ledger import Ledger

    monkeypatch.setattr(calibration, "CALIBRATION_SAMPLES", 1000)
    state = tmp_path / "state"
    gen = fedsynth.train(mimic, epsilon=2.0, config=TINY, state_dir=state, progress=False)
    first = gen.privacy
    assert first is not None and first["epsilon"] <= 2.0 and first["delta"] == 1e-5
    ledger = Ledger.open(state, data_set_site(mimic))  # the CLI's ledger of these patients
    assert len(ledger.entries) == 2 and Path(first["ledger"]) == ledger.path  # counts + DP-SGD

    # a second run on the same patients composes: the same target is out of reach ...
    with pytest.raises(BudgetExceeded):
        fedsynth.train(mimic, epsilon=2.0, config=TINY, state_dir=state, progress=False)
    # ... and ehr-train --epsilon, sharing the ledger, spends on top of the API's run
    toml = tmp_path / "tiny.toml"
    toml.write_text("[model]\nhidden = [32, 32]\ntime_dim = 16\nsample_steps = 4\n"
                    "[privacy]\nhidden = [32, 32]\ntime_dim = 16\nnoise_multiplicity = 1\n"
                    "epochs = 2\nbatch_size = 50\n")
    ehr_train(["--data", str(mimic_path), "--out", str(tmp_path / "cli"), "--columns", "codes",
               "--config", str(toml), "--epsilon", "4", "--state-dir", str(state), "--quiet"])
    second = json.loads((tmp_path / "cli" / "privacy.json").read_text())
    assert len(second["history"]) == 4 and first["epsilon"] < second["epsilon"] <= 4.0
    assert second["history"][:2] == first["history"]
    with pytest.raises(BudgetExceeded):  # and the API sees the CLI's spend
        fedsynth.train(mimic, epsilon=4.0, config=str(toml), state_dir=state, progress=False)

    saved = fedsynth.load_generator(gen.save(tmp_path / "dp"))
    assert saved.privacy == first  # privacy.json written and read back
    assert json.loads((tmp_path / "dp" / "privacy.json").read_text()) == first


def test_unknown_options_are_refused(mimic: CodeMatrix, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) epoch;.*epochs"):
        fedsynth.train(mimic, epoch=3)
    with pytest.raises(InputError, match="unknown key"):
        fedsynth.train(mimic, config={"train": {"epoch": 3}})
    with pytest.raises(InputError, match="--epochs"):
        fedsynth.train(mimic, epochs=0)
    with pytest.raises(TypeError, match="config must be"):
        fedsynth.train(mimic, config=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) round;.*rounds"):
        fedsynth.simulate("demo", tmp_path / "sim", round=2)


def test_config_object_and_flags(monkeypatch) -> None:
    from fedsynth.api import _train_config

    base = Config()
    base.train.seed, base.train.epochs, base.privacy.epochs = 7, 9, 3
    cfg = _train_config(1.5, None, {"config": base, "epochs": 4})
    assert (cfg.train.seed, cfg.train.epochs, cfg.privacy.epochs) == (7, 4, 3)
    assert cfg.privacy.epsilon == 1.5 and cfg.privacy.delta is None
    assert _train_config(None, None, {"config": base, "seed": 0}).train.seed == 0


def test_simulate_is_ehr_simulate(tmp_path: Path, monkeypatch) -> None:
    import fedsynth.simulations.simulate_cli as sim

    seen = {}

    def fake_run(args):  # the federation itself is tested in test_federation_sim.py
        seen["args"] = args
        out = args.out.resolve()
        out.mkdir(parents=True)
        (out / "privacy.json").write_text(json.dumps({"epsilon": 2.9, "delta": 1e-5}))
        (out / "evaluation.json").write_text(json.dumps({"pooled": {"prevalence_r": 0.9}}))
        return sim.Outcome(out, {"status": "completed"})

    monkeypatch.setattr(sim, "run", fake_run)
    result = fedsynth.simulate("demo", tmp_path / "sim", sites=2, epsilon=3, rounds=2,
                               audit=True, partition="iid", progress=False)
    args = seen["args"]
    assert (args.data, args.sites, args.epsilon, args.rounds) == ("demo", 2, 3.0, 2)
    assert args.audit and args.no_progress and args.partition == "iid"
    assert result.privacy["epsilon"] == 2.9 and result.evaluation["pooled"]["prevalence_r"]
    assert result.audit is None and not result.audit_refutes
    assert result.model_dir == (tmp_path / "sim").resolve() / "model"

    monkeypatch.setattr(sim, "run", lambda args: sim.Outcome(args.out, {"status": "failed",
                                                                         "detail": "boom"}))
    with pytest.raises(RuntimeError, match="boom"):
        fedsynth.simulate("demo", tmp_path / "sim2")
    with pytest.raises(InputError, match="strategy"):
        fedsynth.simulate("demo", tmp_path / "sim3", strategy="nope")


def test_evaluate_matches_columns_by_code(mimic: CodeMatrix) -> None:
    frame = pd.DataFrame(mimic.X, columns=list(mimic.vocab.codes))
    used = [c for c in frame.columns if frame[c].any()]
    shuffled = frame[used[::-1]]  # other column order, absent codes dropped
    a = fedsynth.evaluate(mimic, shuffled)
    b = fedsynth.evaluate(mimic, mimic)
    assert a["prevalence_r"] == pytest.approx(1.0) and a["cooccurrence_r"] == pytest.approx(1.0)
    assert a["dimwise_per_code"] == b["dimwise_per_code"]
    with pytest.raises(ValueError, match="lacks"):
        fedsynth.evaluate(mimic, frame.assign(**{"not-a-code": 0}))
    with pytest.raises(ValueError, match="0/1"):
        fedsynth.evaluate(mimic, frame * 2)


def _python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, timeout=120)


def test_import_fedsynth_is_light() -> None:
    r = _python("import sys, fedsynth; assert 'torch' not in sys.modules; "
                "fedsynth.load; fedsynth.Generator; assert 'torch' not in sys.modules; "
                "print(fedsynth.__version__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == fedsynth.__version__


def test_only_fedsynth_is_installed() -> None:
    r = _python("import common")  # from /tmp: the parts exist only as fedsynth.<part>
    assert r.returncode != 0 and "No module named 'common'" in r.stderr
