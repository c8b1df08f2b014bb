"""A damaged coordinator checkpoint (``ehr-server --resume DIR``) is a one-line InputError."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.common.errors import InputError
from fedsynth.server import checkpoint

EXAMPLES = int(os.environ.get("FEDSYNTH_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
                derandomize=EXAMPLES <= 25,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ck") / "checkpoint"
    rng = np.random.default_rng(0)
    w = {"a.weight": rng.normal(size=(4, 3)).astype(np.float32), "a.bias": np.zeros(3, np.float32)}
    checkpoint.save(d, checkpoint.Checkpoint(2, "run-1", w, w, {"m": w}, {"settings": {}}))
    return d


@FUZZ
@given(target=st.sampled_from(["checkpoint.json", "round-2.npz"]), data=st.data())
def test_damaged_checkpoint(good: Path, tmp_path_factory: pytest.TempPathFactory,
                            target: str, data: st.DataObject) -> None:
    d = tmp_path_factory.mktemp("dmg") / "checkpoint"
    shutil.copytree(good, d)
    raw = bytearray((d / target).read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "delete"]))
    if how == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 10))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif how == "random":
        raw = bytearray(data.draw(st.binary(max_size=300)))
    if how == "delete":
        (d / target).unlink()
    else:
        (d / target).write_bytes(bytes(raw))
    try:
        ck = checkpoint.load(d)
    except InputError as err:
        assert "\n" not in str(err)
        return
    # harmless damage (e.g. a flipped byte in unused zip padding): the data must be intact
    assert ck.round == 2 and set(ck.weights) == {"a.weight", "a.bias"}


def test_pickled_arrays_are_refused(good: Path, tmp_path: Path) -> None:
    d = tmp_path / "checkpoint"
    shutil.copytree(good, d)
    with open(d / "round-2.npz", "wb") as fh:
        np.savez(fh, **{"w/a.weight": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(InputError):
        checkpoint.load(d)
