"""TLS + SuperNode authentication with real Flower 1.41 processes on 127.0.0.1.

One SuperLink started with ``superlink_tls_args`` (TLS, ``--enable-supernode-auth``); sites enrolled
with ``ehr-certs``. Two enrolled sites complete a round of a throwaway Flower app; an unregistered
key, a client without the CA certificate, a client dialing a name not in the certificate's SAN
and a plaintext client are all refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsynth.federation import flwr_cli
from fedsynth.server import certs
from fedsynth.server.certs_cli import main as certs_main

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyapp"
version = "0.1.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedsynth-test"

[tool.flwr.app.components]
serverapp = "tinyapp.app:server"
clientapp = "tinyapp.app:client"

[tool.flwr.app.config]
num-server-rounds = 1
"""

APP_CODE = '''\
import json

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    site = float(context.node_config["site-value"])
    new = [a + site for a in msg.content["arrays"].to_numpy_ndarrays()]
    content = RecordDict({"arrays": ArrayRecord(new),
                          "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=content, reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=2,
                      min_available_nodes=2)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(3)]),
                            num_rounds=int(context.run_config["num-server-rounds"]))
    print("TINY_RESULT", json.dumps(result.arrays.to_numpy_ndarrays()[0].tolist()), flush=True)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=log.parent, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started, and its process group (by its own id)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"port {port} not open: {log.read_text(errors='replace')[-2000:]}")


class Federation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = root / "certs"
        self.home = root / "flwr-home"
        self.home.mkdir()
        self.env = _env(self.home)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def supernode(self, name: str, extra: list[str], superlink: str | None = None,
                  value: float = 0.0, retries: bool = False) -> subprocess.Popen[bytes]:
        cmd = [str(BIN / "flower-supernode"), "--superlink", superlink or self.address,
               "--port", str(_free_port()), "--node-config", f"site-value={value}", *extra]
        if retries:
            cmd += ["--max-retries", "1", "--max-wait-time", "10"]
        proc = _start(cmd, self.root / f"{name}.log", self.env)
        self.procs.append(proc)
        return proc


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("tls"))
    # the SAN lists only 127.0.0.1: "localhost" is a name the certificate does not carry
    assert certs_main(["init", "--out", str(f.certs), "--host", "127.0.0.1"]) == 0
    for site in ("A", "C"):  # enrolled before the SuperLink runs: registered at its start
        assert certs_main(["enroll", "--site", site, "--out", str(f.certs)]) == 0
    certs.new_site_keys("U", f.root / "outsider")  # never enrolled with the coordinator
    superlink = _start(
        [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(f.port),
         "--disable-runtime-dependency-installation", *certs.superlink_tls_args(f.certs)],
        f.root / "superlink.log", f.env)
    f.procs.append(superlink)
    try:
        _wait_port(f.port, superlink, f.root / "superlink.log")
        # what ehr-server does right after starting its SuperLink
        assert certs.register_enrolled(f.certs, f.address) == ["A", "C"]
        # a site enrolled while the SuperLink runs is registered at once
        keys = certs.enroll_site("B", f.certs, superlink=f.address)
        assert keys.registered
        flwr_cli.write_connection(f.home, f.address, insecure=False,
                                  root_certificates=f.certs / "ca.crt")
        yield f
    finally:
        for proc in reversed(f.procs):
            _stop(proc)


def test_enrolled_sites_complete_a_round(fed: Federation) -> None:
    ca = fed.certs / "ca.crt"
    fed.supernode("A", certs.supernode_tls_args(ca, fed.certs / "A.key"), value=1.0)
    fed.supernode("B", certs.supernode_tls_args(ca, fed.certs / "B.key"), value=3.0)
    app = fed.root / "app"
    (app / "tinyapp").mkdir(parents=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    (app / "tinyapp" / "__init__.py").write_text("")
    (app / "tinyapp" / "app.py").write_text(textwrap.dedent(APP_CODE))
    run = subprocess.run([str(BIN / "flwr"), "run", str(app), "fedsynth", "--stream"],
                         env=fed.env, capture_output=True, text=True, timeout=180, cwd=fed.root)
    out = run.stdout + run.stderr
    assert "Sampled 2 nodes" in out, out[-4000:]
    # FedAvg of the two sites' updates (0+1, 0+3 with equal weight) over TLS
    assert "TINY_RESULT [2.0, 2.0, 2.0]" in out, out[-4000:]
    ls = subprocess.run([str(BIN / "flwr"), "supernode", "ls", "fedsynth", "--format", "json"],
                        env=fed.env, capture_output=True, text=True, timeout=60, cwd=fed.root)
    nodes = json.loads(ls.stdout[ls.stdout.find("{"):])["nodes"]
    # exactly the enrolled keys A, B, C are known to the SuperLink; A and B are online
    assert len(nodes) == 3, nodes
    assert sum(n["status"] == "online" for n in nodes) >= 2, nodes


@pytest.fixture(scope="module")
def refused(fed: Federation) -> dict[str, str]:
    """Start every refused SuperNode at once (they only wait on the network), collect logs."""
    ca, c_key = fed.certs / "ca.crt", fed.certs / "C.key"
    cases = {
        "U": (certs.supernode_tls_args(ca, fed.root / "outsider" / "U.key"), None),
        "noca": (["--auth-supernode-private-key", str(c_key)], None),
        "wrongname": (certs.supernode_tls_args(ca, c_key), f"localhost:{fed.port}"),
        # flower-supernode itself refuses a key over plaintext (exit 303); without a key the
        # TLS SuperLink must refuse the plaintext connection
        "insecure": (["--insecure"], None),
    }
    procs = {name: fed.supernode(name, extra, superlink=link, retries=True)
             for name, (extra, link) in cases.items()}
    logs = {}
    for name, proc in procs.items():
        try:
            rc = proc.wait(timeout=120)
        finally:
            _stop(proc)
        log = (fed.root / f"{name}.log").read_text(errors="replace")
        assert rc != 0, log[-3000:]
        assert "SuperNode ID:" not in log  # it never got a node id
        logs[name] = log
    return logs


def test_unregistered_key_is_refused(fed: Federation, refused: dict[str, str]) -> None:
    assert "Failed to activate SuperNode" in refused["U"]
    superlink_log = (fed.root / "superlink.log").read_text(errors="replace")
    assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in superlink_log


def test_client_without_ca_cannot_connect(refused: dict[str, str]) -> None:
    assert "CERTIFICATE_VERIFY_FAILED" in refused["noca"]


def test_wrong_server_name_fails_tls(refused: dict[str, str]) -> None:
    log = refused["wrongname"]
    assert "CERTIFICATE_VERIFY_FAILED" in log
    assert "Hostname mismatch" in log and "localhost" in log


def test_plaintext_client_cannot_join(refused: dict[str, str]) -> None:
    assert "could not establish a connection" in refused["insecure"]
