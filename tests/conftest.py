"""Shared test fixtures: the real public data lives in ../shared/data (never copied here)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
DIABETES = SHARED_DATA / "diabetes130" / "diabetic_data_dev.csv.gz"
MIMIC_DIAG = SHARED_DATA / "mimic3-demo" / "DIAGNOSES_ICD.csv"

# A model small enough that a Flower round with real processes takes seconds.
TINY_FLOWER_CONFIG = """
[model]
time_dim = 16
sample_steps = 4

[privacy]
hidden = [32, 32]
noise_multiplicity = 1

[federation]
hidden = [32, 32]
sample_rate = 0.5
local_epochs = 1.0
"""

# Module- and session-scoped fixtures run before the per-test fixture below: they (and any
# subprocess) get this session-wide folder, so nothing ever reaches ~/.local/state.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="fedsynth-test-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], ignore_errors=True)  # no leftovers
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


@pytest.fixture(autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own ``$XDG_STATE_HOME``: no test writes a ledger into the real home
    or composes its privacy spend with another test's."""
    state = tmp_path_factory.mktemp("xdg-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture(scope="session")
def diabetes_path() -> Path:
    if not DIABETES.exists():
        pytest.skip(f"{DIABETES} not present")
    return DIABETES


@pytest.fixture(scope="session")
def mimic_path() -> Path:
    if not MIMIC_DIAG.exists():
        pytest.skip(f"{MIMIC_DIAG} not present")
    return MIMIC_DIAG


def tiny_site_config():  # -> common.config.Config
    """A site-training config small enough for plain-function round tests (seconds)."""
    from fedsynth.common.config import Config

    cfg = Config()
    cfg.model.hidden = (16, 16)
    cfg.model.time_dim = 8
    cfg.privacy.noise_multiplicity = 1
    cfg.federation.sample_rate = 0.25
    cfg.federation.local_epochs = 0.5
    return cfg


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail (not hang) when the block runs longer than ``seconds`` (SIGALRM; main thread)."""
    def _alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
