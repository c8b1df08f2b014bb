"""Every command with wrong arguments: a one-line error and a non-zero exit, never a traceback
(bad device, bad or busy port, missing files and folders, out-of-range numbers)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _cases(tmp: Path, busy_port: int) -> list[list[str]]:
    data = tmp / "d.csv"
    data.write_text("patient_id,code\n1,250\n2,401\n3,250\n")
    missing = str(tmp / "missing")
    return [
        ["ehr-train", "--data", str(data), "--format", "long", "--out", str(tmp / "m"),
         "--device", "gpu"],
        ["ehr-train", "--data", missing, "--out", str(tmp / "m")],
        ["ehr-train", "--data", str(data), "--format", "long", "--out", str(tmp / "m"),
         "--epsilon", "-1"],
        ["ehr-sample", "--model", missing, "--n", "10", "--out", str(tmp / "s.csv")],
        ["ehr-evaluate", missing, missing],
        ["ehr-server", "--port", "99999", "--insecure", "--out", str(tmp / "srv")],
        ["ehr-server", "--port", str(busy_port), "--insecure", "--out", str(tmp / "srv")],
        ["ehr-client", "--site", "A", "--data", missing, "--server", "127.0.0.1:9092",
         "--state-dir", str(tmp / "st"), "--epsilon-budget", "3", "--insecure"],
        ["ehr-client", "--site", "A", "--data", str(data), "--server", "127.0.0.1:9092",
         "--state-dir", str(tmp / "st"), "--epsilon-budget", "3", "--insecure",
         "--device", "gpu"],
        ["ehr-client", "budget", "--site", "A", "--state-dir", missing],
        ["ehr-client", "budget", "--site", "A", "--state-dir", str(tmp), "--budget", "-1"],
        ["ehr-simulate", "--data", "demo", "--sites", "0", "--out", str(tmp / "sim")],
        ["ehr-simulate", "--data", missing, "--out", str(tmp / "sim")],
        ["ehr-audit", "--model", missing, "--members", missing, "--non-members", missing,
         "--out", str(tmp / "a")],
        ["ehr-certs", "status", "--dir", missing],
    ]


@pytest.fixture()
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def test_no_command_answers_wrong_arguments_with_a_traceback(tmp_path: Path,
                                                              busy_port: int) -> None:
    failures = []
    for args in _cases(tmp_path, busy_port):
        proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0 or "Traceback" in out:
            failures.append(f"{' '.join(args)} -> rc {proc.returncode}: {out[-400:]}")
        if "budget" in args and "missing" in " ".join(args):
            assert not (tmp_path / "missing").exists()  # nothing created
    assert not failures, "\n\n".join(failures)
