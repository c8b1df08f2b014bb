"""Hostile model directories (``ehr-sample --model DIR``): a malicious pickle never runs, and
every damaged file is a one-line InputError, never another exception."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.common.config import ModelConfig
from fedsynth.common.errors import InputError
from fedsynth.common.model import build_model, load_model, save_model
from fedsynth.common.vocabulary import Vocabulary

EXAMPLES = int(os.environ.get("FEDSYNTH_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=EXAMPLES <= 25,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
CFG = ModelConfig(hidden=(8, 8), time_dim=4, sample_steps=2)
VOCAB = Vocabulary(("250", "401", "428", "V45"), {}, "tiny")


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model") / "m"
    torch.manual_seed(0)
    save_model(d, build_model(len(VOCAB), CFG), CFG, VOCAB)
    load_model(d, device="cpu")  # sanity: the undamaged model loads
    return d


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _expect_input_error(d: Path) -> None:
    """Damage that must be refused: a one-line InputError, nothing else (loading is a failure)."""
    with pytest.raises(InputError) as info:
        load_model(d, device="cpu")
    assert "\n" not in str(info.value)


def _input_error_or_a_working_model(d: Path) -> None:
    """Fuzzed damage may be harmless (e.g. an unused JSON key): then the model must load AND
    work (0/1 rows over the whole vocabulary); otherwise a one-line InputError."""
    try:
        gen = load_model(d, device="cpu")
    except InputError as err:
        assert "\n" not in str(err)
        return
    except Exception as err:  # noqa: BLE001 - the property under test
        pytest.fail(f"{type(err).__name__} instead of InputError: {err}")
    rows = gen.sample(5, seed=0)
    assert rows.shape == (5, len(VOCAB)) and set(rows.ravel().tolist()) <= {0, 1}


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(good_model: Path, tmp_path: Path) -> None:
    d = _copy(good_model, tmp_path / "evil")
    marker = tmp_path / "pwned"
    with open(d / "model.pt", "wb") as fh:
        pickle.dump({"net.out.weight": _Exploit(marker)}, fh)
    with pytest.raises(InputError):
        load_model(d, device="cpu")
    assert not marker.exists()
    torch.save({"x": _Exploit(marker)}, d / "model.pt")  # the same inside a torch zip file
    with pytest.raises(InputError):
        load_model(d, device="cpu")
    assert not marker.exists()


@FUZZ
@given(target=st.sampled_from(["model.pt", "config.json", "vocabulary.json"]), data=st.data())
def test_damaged_files(good_model: Path, tmp_path_factory: pytest.TempPathFactory,
                       target: str, data: st.DataObject) -> None:
    d = _copy(good_model, tmp_path_factory.mktemp("dmg") / "m")
    raw = bytearray((d / target).read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "empty", "delete"]))
    if how == "truncate":
        del raw[data.draw(st.integers(0, max(0, len(raw) - 1))):]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == "random":
        raw = bytearray(data.draw(st.binary(max_size=400)))
    elif how == "empty":
        raw = bytearray()
    if how == "delete":
        (d / target).unlink()
    else:
        (d / target).write_bytes(bytes(raw))
    _input_error_or_a_working_model(d)


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6),
                               st.floats(allow_nan=False), st.text(max_size=6)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=6), inner,
                                                             max_size=3)), max_leaves=6)


@FUZZ
@given(key=st.sampled_from(["n_codes", "model", "format", "hidden", "time_dim", "sigma_data",
                            "threshold"]), value=_JSON)
def test_tampered_config_values(good_model: Path, tmp_path_factory: pytest.TempPathFactory,
                                key: str, value: object) -> None:
    d = _copy(good_model, tmp_path_factory.mktemp("cfg") / "m")
    conf = json.loads((d / "config.json").read_text())
    if key in conf:
        conf[key] = value
    else:
        conf["model"][key] = value
    (d / "config.json").write_text(json.dumps(conf))
    _input_error_or_a_working_model(d)


def test_weights_of_another_shape(good_model: Path, tmp_path: Path) -> None:
    d = _copy(good_model, tmp_path / "m")
    other = build_model(len(VOCAB) + 3, CFG).state_dict()
    torch.save(other, d / "model.pt")
    _expect_input_error(d)
    (d / "vocabulary.json").write_text(json.dumps({"codes": ["1", "2"], "name": "x"}))
    _expect_input_error(d)


@pytest.mark.parametrize("step", [{"kind": "nope"}, {"kind": "per_code"},
                                  {"kind": "per_code", "thresholds": ["a"]},
                                  {"kind": "per_code", "thresholds": [0.5]},
                                  {"kind": "threshold", "threshold": "x"}, [1, 2], "x"])
def test_damaged_output_step(good_model: Path, tmp_path: Path, step: object) -> None:
    d = _copy(good_model, tmp_path / "m")
    (d / "output_step.json").write_text(json.dumps(step))
    _expect_input_error(d)
