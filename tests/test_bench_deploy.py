"""``simulations.bench_deploy`` end to end on 127.0.0.1 at demo size: a real ehr-server and two
ehr-client processes, a tiny model, two rounds. Checks what it measures is well formed and
that it leaves no process behind; the figures themselves are not asserted (no timed tests).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_FLOWER_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _processes_naming(text: str) -> list[str]:
    """``pid cmdline`` of every live process whose command line or environment names
    ``text`` (the ehr-server/ehr-client lines name the output folder; the SuperLink,
    SuperNodes and Flower's helpers have their FLWR_HOME inside it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if stat[0] != "Z" and (text.encode() in cmd or text.encode() in env):
            line = cmd.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{proc.name} {line}")
    return found


def test_demo_deployment_is_measured_and_stopped(tmp_path: Path) -> None:
    from fedsynth.federation.flower_runtime import run_processes
    from fedsynth.simulations.bench_deploy import flower_homes

    config = tmp_path / "tiny.toml"
    config.write_text(TINY_FLOWER_CONFIG)
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "fedsynth.simulations.bench_deploy", "--data", "demo",
         "--sites", "2", "--demo-patients", "300", "--rounds", "2", "--config", str(config),
         "--timeout", "240", "--out", str(out)],
        capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "bench_deploy.json").read_text())
    assert doc["status"] == "completed" and doc["server_rc"] == 0
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    for r in doc["rounds"]:
        assert set(r["site_train_seconds"]) == {"S1", "S2"}
        assert 0.0 <= r["overhead_share"] <= 1.0, r
    assert 0.0 <= doc["overhead_share_max"] <= 1.0
    after = doc["outputs_after_last_round_seconds"]
    assert isinstance(after, float) and math.isfinite(after) and after >= 0.0
    release = doc["release_after_last_round_seconds"]
    assert isinstance(release, float) and 0.0 <= release <= after
    assert doc["wall_seconds"] > 0
    md = (out / "bench_deploy.md").read_text()
    assert "overhead share" in md and "written" in md and "after the last round" in md
    assert md.strip() in done.stdout
    # nothing of the run is left: no ehr-server/ehr-client, SuperLink, SuperNode or helper
    for home in flower_homes(out.resolve(), 2):
        assert run_processes(str(home)) == [], home
    assert _processes_naming(str(out.resolve())) == []
