"""Hostile config files: Config.from_toml gives a valid Config or a one-line InputError."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.common.config import Config
from fedsynth.common.errors import InputError

EXAMPLES = int(os.environ.get("FEDSYNTH_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES * 4, deadline=None, database=None,
                derandomize=EXAMPLES <= 25,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
DEFAULT = Config()
SECTIONS = {f.name: getattr(DEFAULT, f.name) for f in dataclasses.fields(Config)}
KEYS = {s: [f.name for f in dataclasses.fields(part)] for s, part in SECTIONS.items()}

_SCALAR = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=20), st.sampled_from(["prv", "rdp", "cpu", "auto", "ghost",
                                                          "fedavg", "fedadam"]),
)
_VALUE = st.recursive(_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def _section(name: str) -> st.SearchStrategy[dict[str, object]]:
    key = st.one_of(st.sampled_from(KEYS[name]), st.text(max_size=10))
    return st.dictionaries(key, _VALUE, max_size=4)


_DOC = st.fixed_dictionaries({}, optional={s: _section(s) for s in SECTIONS}).flatmap(
    lambda d: st.dictionaries(st.text(max_size=8), _VALUE, max_size=2).map(
        lambda extra: {**d, **extra}))


def check_config(path: Path) -> Config | InputError:
    try:
        cfg = Config.from_toml(path)
    except InputError as err:
        assert "\n" not in str(err) and str(path) in str(err)
        return err
    for name, default_part in SECTIONS.items():
        part = getattr(cfg, name)
        for f in dataclasses.fields(part):
            value, default = getattr(part, f.name), getattr(default_part, f.name)
            if isinstance(default, tuple):
                assert isinstance(value, tuple) and (value or not default)  # () may default
                assert all(isinstance(v, int) and v > 0 for v in value)
            elif default is None:
                assert value is None or (isinstance(value, float) and math.isfinite(value))
            else:
                assert type(value) is type(default), (f.name, value)
                if isinstance(value, float):
                    assert math.isfinite(value), (f.name, value)
    return cfg


@FUZZ
@given(doc=_DOC)
def test_random_toml_documents(tmp_path_factory: pytest.TempPathFactory,
                               doc: dict[str, object]) -> None:
    p = tmp_path_factory.mktemp("cfg") / "c.toml"
    try:
        p.write_text(tomli_w.dumps(doc), encoding="utf-8", errors="surrogatepass")
    except (TypeError, ValueError):  # not representable in TOML (e.g. mixed types)
        return
    check_config(p)


@FUZZ
@given(data=st.binary(max_size=2000), prefix=st.sampled_from(
    [b"", b"[model]\n", b"[train]\nlr = ", b"\xef\xbb\xbf", b"\xff\xfe", b"[[model]]\n"]))
def test_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                      prefix: bytes) -> None:
    p = tmp_path_factory.mktemp("cfgb") / "c.toml"
    p.write_bytes(prefix + data)
    check_config(p)


@pytest.mark.parametrize("text", [
    "[train]\nlr = nan\n", "[train]\nlr = inf\n", "[train]\nepochs = -5\n",
    "[train]\nbatch_size = 0\n", "[model]\nhidden = []\n", "[model]\nhidden = [[1]]\n",
    "[privacy]\nepsilon = -1\n", "[privacy]\nepsilon = inf\n", "[privacy]\ndelta = 1.5\n",
    "[privacy]\naccountant = \"bogus\"\n", "[federation]\nrounds = 0\n",
    "[federation]\nstrategy = \"=cmd|' /C calc'!A0\"\n", "[train]\ndevice = \"quantum\"\n",
    "model = 3\n", "[model]\nsigma_min = 90.0\n", "[train]\nlr = \"0.1\"\n",
    "[train]\nepochs = true\n", "[nonsense]\n", "[train]\nlrr = 1\n",
])
def test_invalid_values_are_input_errors(tmp_path: Path, text: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    assert isinstance(check_config(p), InputError)


def test_valid_config_round_trips(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[train]\nepochs = 3\nlr = 2e-3\n[privacy]\nepsilon = 3\ndelta = 1e-5\n"
                 "[model]\nhidden = [64, 64]\n[federation]\nstrategy = \"fedadam\"\n")
    cfg = check_config(p)
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3 and cfg.privacy.epsilon == 3.0 and cfg.model.hidden == (64, 64)
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict(Config().to_dict()) == Config()  # epsilon=None (non-private) too


def test_huge_and_missing_files(tmp_path: Path) -> None:
    p = tmp_path / "big.toml"
    p.write_text("[train]\ndevice = \"" + "x" * 5_000_000 + "\"\n")
    assert isinstance(check_config(p), InputError)
    assert isinstance(check_config(tmp_path / "absent.toml"), InputError)
    assert isinstance(check_config(tmp_path), InputError)  # a directory
