"""Beyond one host: the coordinator and two sites each in their own network namespace.

The test builds a small private LAN that exists only while it runs: a "switch" namespace holds a
bridge, and three host namespaces (coordinator, site A, site B) each get one end of a veth pair
(the other end is on the bridge) and an address in 10.213.0.0/24 (a range used only inside these
namespaces). Each namespace has its own loopback, brought up here, and sees none of the host's
interfaces, so ``127.0.0.1`` in a site is not the coordinator's: a site can reach the
coordinator only through its address on the LAN, which is the name in the server certificate
(``ehr-certs init --host 10.213.0.1``). ``ehr-server`` runs in the coordinator's namespace with
TLS and SuperNode authentication (``--certs``), ``ehr-client`` in each site's with its enrolment
key, two rounds on the tiny demo model. The test checks the run completed, privacy.json lists
both sites, and the sites' TCP connections went to the coordinator's address.

Processes inside ``ip netns exec`` still share the filesystem: each gets its own state folder.
Needs root (CAP_NET_ADMIN) and ``ip``; skips with the reason where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLOWER_CONFIG as TINY

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="network namespaces are Linux only")]

BIN = Path(sys.executable).parent
SUBNET = "10.213.0"  # test-only addresses, assigned inside the test's own namespaces
COORD_IP = f"{SUBNET}.1"
PORT = 9092  # a fresh namespace has every port free
HOSTS = {"coord": 1, "A": 2, "B": 3}  # namespace role -> last octet


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    return subprocess.run([ip, *args], capture_output=True, text=True, timeout=30, check=check)


@dataclass
class Lan:
    """Namespaces ``fs<tag>-sw`` (bridge) and ``fs<tag>-<role>``, deleted by ``teardown``."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    made: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"fs{self.tag}-{role}"

    def add(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        switch = self.ns("sw")
        self.add(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for role, octet in HOSTS.items():
            host = self.ns(role)
            self.add(host)
            # created inside the namespaces: no interface ever appears in the host's namespace
            _ip("-n", switch, "link", "add", f"p{role}", "type", "veth",
                "peer", "name", "eth0", "netns", host)
            _ip("-n", switch, "link", "set", f"p{role}", "master", "br0")
            _ip("-n", switch, "link", "set", f"p{role}", "up")
            _ip("-n", host, "addr", "add", f"{SUBNET}.{octet}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")

    def teardown(self) -> None:
        """Deleting a namespace deletes its veth ends (and their peers) and the bridge."""
        for name in reversed(self.made):
            _ip("netns", "delete", name, check=False)
        self.made.clear()

    def exec(self, role: str, *cmd: str) -> list[str]:
        return [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", self.ns(role), *cmd]


def _namespaces_or_skip() -> Lan:
    """A built LAN, or ``pytest.skip`` saying why namespaces cannot be made here."""
    if shutil.which("ip") is None and not Path("/usr/sbin/ip").exists():
        pytest.skip("the `ip` tool (iproute2) is not installed")
    lan = Lan()
    try:
        lan.build()
    except subprocess.CalledProcessError as err:
        lan.teardown()
        why = (err.stderr or err.stdout or "").strip().splitlines()
        pytest.skip("cannot create network namespaces here (needs root / CAP_NET_ADMIN): "
                    f"`ip {' '.join(err.cmd[1:])}`: {why[-1] if why else err.returncode}")
    return lan


@pytest.fixture
def lan() -> Iterator[Lan]:
    built = _namespaces_or_skip()
    try:
        yield built
    finally:
        built.teardown()


@pytest.fixture
def sites(tmp_path: Path) -> dict[str, Path]:
    from fedsynth.common.data import demo_cohort, write_matrix

    cohort = demo_cohort(n_sites=2, patients_per_site=80, seed=0)
    names = cohort.covariates["site"].astype(str).to_numpy()
    out = {}
    for site, name in zip("AB", dict.fromkeys(names), strict=True):
        idx = np.flatnonzero(names == name)
        path = tmp_path / f"site{site}.csv"
        write_matrix(path, cohort.X[idx], cohort.vocab, cohort.patient_ids[idx])
        out[site] = path
    (tmp_path / "tiny.toml").write_text(TINY)
    out["config"] = tmp_path / "tiny.toml"
    return out


class Procs:
    """Processes this test starts (each in its own session); stopped by their own ids."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        # SIGINT first: ehr-server / ehr-client stop their own SuperLink / SuperNode
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def _connections(lan: Lan, role: str) -> set[str]:
    """Remote ``addr:port`` of the namespace's TCP sockets (any state, TIME-WAIT included)."""
    res = subprocess.run(lan.exec(role, "ss", "-tanH"), capture_output=True, text=True,
                         timeout=30)
    peers = set()
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] != "LISTEN":
            peers.add(parts[4])
    return peers


def _rounds(out: Path) -> list[dict]:
    path = out / "rounds.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_coordinator_and_two_sites_in_separate_namespaces(lan: Lan, sites: dict[str, Path],
                                                           tmp_path: Path) -> None:
    from fedsynth.server.certs_cli import main as certs_main

    certs = tmp_path / "certs"
    # the certificate names the coordinator's LAN address, the one the sites dial
    assert certs_main(["init", "--out", str(certs), "--host", COORD_IP]) == 0
    for site in "AB":
        assert certs_main(["enroll", "--site", site, "--out", str(certs)]) == 0
    # each "host" only sees its own files (the filesystem is shared, so copy what it was given)
    for site in "AB":
        given = tmp_path / f"host-{site}"
        given.mkdir()
        shutil.copy(certs / "ca.crt", given / "ca.crt")
        shutil.copy(certs / f"{site}.key", given / f"{site}.key")
        os.chmod(given / f"{site}.key", 0o600)

    if shutil.which("ping"):  # the LAN works before anything runs on it
        probe = subprocess.run(lan.exec("A", "ping", "-c", "1", "-W", "2", COORD_IP),
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, probe.stdout + probe.stderr

    out, procs = tmp_path / "run", Procs()
    seen: dict[str, set[str]] = {"A": set(), "B": set()}
    try:
        server = procs.start(lan.exec(
            "coord", str(BIN / "ehr-server"), "--host", COORD_IP, "--port", str(PORT),
            "--certs", str(certs), "--rounds", "2", "--min-sites", "2", "--epsilon", "3",
            "--samples", "200", "--config", str(sites["config"]), "--out", str(out),
            "--round-timeout", "120", "--wait-sites", "120", "--no-progress"),
            tmp_path / "server.log")
        for site in "AB":
            given = tmp_path / f"host-{site}"
            procs.start(lan.exec(
                site, str(BIN / "ehr-client"), "--site", site, "--data", str(sites[site]),
                "--server", f"{COORD_IP}:{PORT}", "--state-dir", str(tmp_path / f"state-{site}"),
                "--epsilon-budget", "3", "--root-certificates", str(given / "ca.crt"),
                "--auth-key", str(given / f"{site}.key"), "--no-check", "--threads", "1"),
                tmp_path / f"client-{site}.log")
        started = time.monotonic()
        while server.poll() is None and time.monotonic() - started < 500:
            for site in "AB":
                seen[site] |= _connections(lan, site)
            time.sleep(1.0)
        rc = server.poll()
        for site in "AB":
            seen[site] |= _connections(lan, site)
    finally:
        procs.stop()
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert rc == 0, log[-3000:] + "".join(
        (tmp_path / f"state-{s}" / "logs" / "supernode.log").read_text(errors="replace")[-1500:]
        for s in "AB" if (tmp_path / f"state-{s}" / "logs" / "supernode.log").exists())

    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "completed", status
    done = [r for r in _rounds(out) if r["status"] == "completed"]
    assert [r["round"] for r in done] == [1, 2]
    assert all(sorted(r["accepted"]) == ["A", "B"] for r in done)
    privacy = json.loads((out / "privacy.json").read_text())
    assert set(privacy["sites"]) == {"A", "B"}
    assert privacy["epsilon"] == pytest.approx(max(r["epsilon"] for r in
                                                   privacy["sites"].values()))
    assert len((out / "synthetic.csv").read_text().splitlines()) == 201
    # each site spoke to the coordinator's LAN address, and to no other remote address
    for site in "AB":
        remote = {p for p in seen[site] if not p.startswith(("127.", "[::1]", "[::ffff:127."))}
        assert f"{COORD_IP}:{PORT}" in remote, seen[site]
        assert remote <= {f"{COORD_IP}:{PORT}"}, remote
    # round times inside the namespaces (docs/deployment.md quotes them)
    print("round seconds:", [r.get("seconds") for r in done])
