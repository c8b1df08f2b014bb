"""``sweep`` stops what a run left behind, also helpers that scrub their environment (Ray's
agents do), through the session of a process that names the run's FLWR_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fedsynth.federation.flower_runtime import sweep

# A parent that keeps FLWR_HOME, and a child in its session started with an empty environment.
PARENT = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], env={})\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_sweep_stops_env_scrubbed_helpers_in_the_run_session(tmp_path: Path) -> None:
    home = str(tmp_path / "flwr-home")
    env = {**os.environ, "FLWR_HOME": home}
    proc = subprocess.Popen([sys.executable, "-c", PARENT], env=env, stdout=subprocess.PIPE,
                            start_new_session=True, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while not (kids := _children(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kids, "the helper child did not start"
        proc_env = Path(f"/proc/{kids[0]}/environ").read_bytes()
        assert b"FLWR_HOME" not in proc_env  # only its session ties it to the run
        sweep(home, grace=3.0)
        proc.wait(5)
        deadline = time.monotonic() + 5
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(k) for k in kids)
    finally:
        if proc.poll() is None:
            proc.kill()
