"""End to end on 127.0.0.1: a real SuperLink (ehr-server) and SuperNodes (ehr-client processes),
tiny demo data and a tiny model so each test takes about a minute.

1. three clients, two rounds: synthetic data and privacy.json written (released eps = max);
2. one client killed in round 1: the round closes after the timeout, the run completes;
3. the server killed after round 1: ``--resume`` finishes with the same total rounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLOWER_CONFIG as TINY

from fedsynth.federation.flower_runtime import free_port

BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]



@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from fedsynth.common.data import demo_cohort, write_matrix

    folder = tmp_path_factory.mktemp("sites")
    cohort = demo_cohort(n_sites=3, patients_per_site=80, seed=0)
    names = cohort.covariates["site"].astype(str).to_numpy()
    out = {}
    for i, name in enumerate(dict.fromkeys(names)):
        idx = np.flatnonzero(names == name)
        path = folder / f"site{i}.csv"
        write_matrix(path, cohort.X[idx], cohort.vocab, cohort.patient_ids[idx])
        out["ABC"[i]] = path
    (folder / "tiny.toml").write_text(TINY)
    out["config"] = folder / "tiny.toml"
    return out


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
        fh = open(log, "ab")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        fh.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


@pytest.fixture
def procs() -> Iterator[Procs]:
    group = Procs()
    yield group
    group.stop()


def server_cmd(out: Path, port: int, sites: dict[str, Path], *extra: str) -> list[str]:
    return [str(BIN / "ehr-server"), "--host", "127.0.0.1", "--port", str(port), "--insecure",
            "--rounds", "2", "--epsilon", "3", "--samples", "200", "--config",
            str(sites["config"]), "--out", str(out), "--no-progress", *extra]


def client(procs: Procs, site: str, sites: dict[str, Path], port: int, tmp: Path
           ) -> subprocess.Popen[bytes]:
    return procs.start([str(BIN / "ehr-client"), "--site", site, "--data", str(sites[site]),
                        "--server", f"127.0.0.1:{port}", "--state-dir", str(tmp / f"state-{site}"),
                        "--epsilon-budget", "3", "--insecure", "--no-check", "--threads", "1"],
                       tmp / f"client-{site}.log")


def rounds(out: Path) -> list[dict]:
    path = out / "rounds.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def check_outputs(out: Path, n_rounds: int, sites: set[str]) -> dict:
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "completed", status
    logged = rounds(out)
    done = [r for r in logged if r["status"] == "completed"]
    assert [r["round"] for r in done] == list(range(1, n_rounds + 1))
    synth = (out / "synthetic.csv").read_text().splitlines()
    assert len(synth) == 201  # header + --samples
    privacy = json.loads((out / "privacy.json").read_text())
    assert set(privacy["sites"]) == sites
    eps = [r["epsilon"] for r in privacy["sites"].values()]
    assert privacy["epsilon"] == pytest.approx(max(eps))  # max over sites, never a sum
    assert all(0 < e <= 3.0 + 1e-6 for e in eps)
    for report in privacy["sites"].values():
        assert {"epsilon", "delta", "accountant", "history"} <= set(report)
    assert (out / "model" / "config.json").exists()
    return privacy


def test_three_clients_two_rounds(sites, procs, tmp_path) -> None:
    port, out = free_port(), tmp_path / "run"
    server = procs.start(server_cmd(out, port, sites, "--min-sites", "3",
                                    "--round-timeout", "120"), tmp_path / "server.log")
    for site in "ABC":
        client(procs, site, sites, port, tmp_path)
    assert server.wait(300) == 0, (tmp_path / "server.log").read_text()[-3000:]
    check_outputs(out, 2, {"A", "B", "C"})
    for r in rounds(out):
        assert sorted(r["accepted"]) == ["A", "B", "C"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["sites"]) == {"A", "B", "C"}
    # the SuperLink the server started is gone
    assert not _listening(port)


def test_client_killed_in_round_one_run_completes(sites, procs, tmp_path) -> None:
    port, out = free_port(), tmp_path / "run"
    server = procs.start(server_cmd(out, port, sites, "--min-sites", "2",
                                    "--round-timeout", "90"), tmp_path / "server.log")
    clients = {s: client(procs, s, sites, port, tmp_path) for s in "ABC"}

    def training_round_1() -> bool:
        try:
            p = json.loads((out / "progress.json").read_text())
        except (OSError, ValueError):
            return False
        return p.get("stage") == "training" and p.get("round") == 1

    wait_for(training_round_1, 180, "round 1 to start", server)
    os.killpg(clients["C"].pid, signal.SIGKILL)  # the site dies mid-round
    wait_for(lambda: len(rounds(out)) >= 1, 200, "round 1 to close", server)
    first = rounds(out)[0]
    assert first["status"] == "completed" and sorted(first["accepted"]) == ["A", "B"]
    client(procs, "C", sites, port, tmp_path)  # the dead site may rejoin later
    assert server.wait(300) == 0, (tmp_path / "server.log").read_text()[-3000:]
    check_outputs(out, 2, {"A", "B"} | ({"C"} if "C" in json.loads(
        (out / "privacy.json").read_text())["sites"] else set()))


def test_server_killed_after_round_one_resume_finishes(sites, procs, tmp_path) -> None:
    port, out = free_port(), tmp_path / "run"
    server = procs.start(server_cmd(out, port, sites, "--min-sites", "2",
                                    "--round-timeout", "120"), tmp_path / "server.log")
    for site in "AB":
        client(procs, site, sites, port, tmp_path)
    wait_for(lambda: (out / "checkpoint" / "checkpoint.json").exists(), 240,
             "the round-1 checkpoint", server)
    os.kill(server.pid, signal.SIGKILL)  # the coordinator crashes; nothing can clean up
    server.wait(10)
    wait_for(lambda: not _listening(port), 30, "the orphaned SuperLink to stop")
    resumed = procs.start([str(BIN / "ehr-server"), "--resume", str(out), "--host", "127.0.0.1",
                           "--port", str(port), "--insecure", "--no-progress"],
                          tmp_path / "server2.log")
    assert resumed.wait(300) == 0, (tmp_path / "server2.log").read_text()[-3000:]
    privacy = check_outputs(out, 2, {"A", "B"})
    assert privacy["rounds"] == 2
    ckpt = json.loads((out / "checkpoint" / "checkpoint.json").read_text())
    assert ckpt["round"] == 2


def _listening(port: int) -> bool:
    from fedsynth.federation.flower_runtime import port_open

    return port_open("127.0.0.1", port)
