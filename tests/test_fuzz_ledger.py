"""Any byte-level damage to a site's privacy ledger or its head is detected (LedgerCorrupted),
never another exception and never a smaller history (issue 7 item 4, fuzzed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.ledger import Ledger, LedgerCorrupted

EXAMPLES = int(os.environ.get("FEDSYNTH_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=EXAMPLES <= 25,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
HISTORY = [Mechanism(1.5, 0.02, 300), Mechanism(1.2, 0.02, 200), Mechanism(2.0, 0.05, 100)]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ledger")
    led = Ledger.open(d, "A", delta=1e-5)
    for i, m in enumerate(HISTORY):
        led.record(m, run_id="run-1", round=i + 1)
    return d


@FUZZ
@given(data=st.data())
def test_byte_damage_to_the_ledger_is_detected(good: Path,
                                               tmp_path_factory: pytest.TempPathFactory,
                                               data: st.DataObject) -> None:
    _damage_and_open(good, tmp_path_factory, "ledger-A.jsonl", data)


@FUZZ
@given(data=st.data())
def test_byte_damage_to_the_head_is_detected(good: Path,
                                             tmp_path_factory: pytest.TempPathFactory,
                                             data: st.DataObject) -> None:
    _damage_and_open(good, tmp_path_factory, "ledger-A.head.json", data)


def _damage_and_open(good: Path, tmp_path_factory: pytest.TempPathFactory, target: str,
                     data: st.DataObject) -> None:
    d = tmp_path_factory.mktemp("dmg")
    for f in good.iterdir():
        if f.is_file():
            shutil.copy2(f, d / f.name)
    raw = bytearray((d / target).read_bytes())
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "random"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if how == "flip":
        new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
        raw[i] = new
    elif how == "truncate":
        del raw[i:]
    elif how == "insert":
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=20))
    elif how == "delete":
        del raw[i:i + data.draw(st.integers(1, 30))]
    else:
        raw = bytearray(data.draw(st.binary(max_size=300)))
    (d / target).write_bytes(bytes(raw))
    try:
        led = Ledger.open(d, "A")
    except LedgerCorrupted as err:
        assert "\n" not in str(err)
        return
    # undetected only if the damage changed nothing that matters (e.g. JSON whitespace in the
    # head): the full spend history must be intact
    assert led.history == HISTORY
    assert led.delta == 1e-5  # the pinned delta is part of what must survive or be caught
