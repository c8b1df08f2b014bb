"""The resident site worker (issue 18): the ClientApp forwards each message to it over a Unix
socket and gets the same answers as calling the site directly; only this user with the token
is served; the socket is private; it stops with ehr-client; each round is in the site's JSON
log. Real processes and sockets throughout (a real worker process, a real ehr-client)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_FLOWER_CONFIG as TINY
from flwr.app import Context, Message, RecordDict

from fedsynth.client.worker import resident_worker
from fedsynth.client.worker_ipc import MAGIC, WorkerClient, WorkerError, peer_uid
from fedsynth.common.config import Config
from fedsynth.federation.protocol import (
    EVALUATE,
    QUERY,
    TRAIN,
    QueryReply,
    SitePlan,
    TrainReply,
    TrainRequest,
    check_reply,
    pack_state,
    query_request,
)

BIN = Path(sys.executable).parent
RUN = "run0001"


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity outside a SuperNode."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 2)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


@pytest.fixture(scope="module")
def site_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedsynth.common.data import demo_cohort, write_matrix

    folder = tmp_path_factory.mktemp("site")
    cohort = demo_cohort(n_sites=1, patients_per_site=150, seed=0)
    path = folder / "a.csv"
    write_matrix(path, cohort.X, cohort.vocab, cohort.patient_ids)
    return path


def node_config(data: Path, state: Path) -> dict[str, Any]:
    return {"site": "A", "data-path": str(data), "format": "auto", "state-dir": str(state),
            "epsilon-budget": 3.0, "holdout": 0.2, "device": "cpu", "threads": 1,
            "delta": 1e-4, "eval-samples": 100}


def plan(rnd: int, rounds: int = 2) -> SitePlan:
    import tomllib

    cfg = Config.from_dict(tomllib.loads(TINY), source="test")
    return SitePlan(round=rnd, rounds=rounds, run_id=RUN, target_epsilon=3.0, config=cfg,
                    delta=1e-4, seed=0)


def context(node: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(),
                   run_config={"seed": 0})


def message(content: RecordDict, mtype: str) -> Message:
    return Message(content=content, dst_node_id=1, message_type=mtype, ttl=600)


def run_site(node: dict[str, Any]) -> dict[str, Any]:
    """query, train round 1, evaluate through the ClientApp's handlers, as Flower calls them."""
    from fedsynth.client import app
    from fedsynth.common.model.store import model_parts
    from fedsynth.common.model.train import build_model
    from fedsynth.federation.protocol import EvaluateRequest

    ctx = context(node)
    q = app.query(message(query_request(plan(0)), QUERY), ctx).content
    assert check_reply(QUERY, q) == []
    qr = QueryReply.unpack(q)
    V = len(qr.codes)
    p1 = plan(1)
    model = build_model(V, p1.config.model)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    req = TrainRequest(p1, pack_state(weights), pack_state(weights))
    t = app.train(message(req.pack(), TRAIN), ctx).content
    assert check_reply(TRAIN, t, set(weights)) == []
    tr = TrainReply.unpack(t)
    from fedsynth.common.model.output import OutputStep
    from fedsynth.common.model.store import Generator

    gen = Generator(build_model(V, p1.config.model, np.full(V, 0.2)), p1.config.model,
                    _vocab(qr), OutputStep())
    ev = EvaluateRequest.release(plan(2), *model_parts(gen))
    e = app.evaluate(message(ev.pack(), EVALUATE), ctx).content
    assert check_reply(EVALUATE, e) == []
    return {"query": qr, "train": tr, "evaluate": dict(e["site"].items()), "V": V}


def _vocab(qr: QueryReply) -> Any:
    from fedsynth.common.vocabulary import Vocabulary

    return Vocabulary(codes=tuple(qr.codes), name=qr.vocab_name)


def test_worker_answers_as_the_direct_call(site_csv: Path, tmp_path: Path) -> None:
    """The same site through the worker and directly: the same vocabulary, spend, steps,
    shapes and status (the DP noise itself is drawn from a secure source, so the numbers of
    the counts and weights differ, as two direct calls do too)."""
    direct = run_site(node_config(site_csv, tmp_path / "direct"))
    node = node_config(site_csv, tmp_path / "worker")
    with resident_worker(node, tmp_path / "worker") as entries:
        via = run_site({**node, **entries})
    for got in (direct, via):
        assert got["query"].status == "ok" and got["train"].status == "ok"
    assert via["query"].codes == direct["query"].codes
    assert via["query"].vocab_name == direct["query"].vocab_name
    assert via["query"].counts.counts.shape == direct["query"].counts.counts.shape
    assert via["query"].counts.noise_std == pytest.approx(direct["query"].counts.noise_std)
    assert via["query"].privacy["epsilon"] == pytest.approx(direct["query"].privacy["epsilon"])
    assert via["train"].steps == direct["train"].steps
    assert via["train"].privacy["epsilon"] == pytest.approx(direct["train"].privacy["epsilon"])
    assert via["train"].privacy["history"] == direct["train"].privacy["history"]
    assert {k: v.shape for k, v in via["train"].weights.items()} == {
        k: v.shape for k, v in direct["train"].weights.items()}
    assert set(via["train"].ema) == set(direct["train"].ema)
    assert via["evaluate"] == direct["evaluate"]
    # the site's own files are the same ones
    for name in ("rounds-A.jsonl", "ledger-A.jsonl"):
        assert (tmp_path / "worker" / name).exists()
    assert list((tmp_path / "worker").glob("**/evaluation*.json"))
    # the round is in the site's JSON log and was sent
    events = [json.loads(line) for line in
              (tmp_path / "worker" / "logs" / "site-A.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["query", "train", "evaluate"]
    train = events[1]
    assert train["round"] == 1 and train["status"] == "ok" and train["sent"] is True
    assert train["steps"] == via["train"].steps and train["sigma"] > 0
    assert train["epsilon_total"] == pytest.approx(via["train"].privacy["epsilon"])
    assert train["epsilon_round"] == pytest.approx(
        via["train"].privacy["epsilon"] - via["query"].privacy["epsilon"])
    assert train["epsilon_left"] == pytest.approx(3.0 - train["epsilon_total"], abs=1e-6)


def test_socket_private_and_token_checked(site_csv: Path, tmp_path: Path) -> None:
    node = node_config(site_csv, tmp_path / "s")
    with resident_worker(node, tmp_path / "s", wait=True) as entries:
        sock, token = Path(entries["worker-socket"]), Path(entries["worker-token-file"])
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert len(token.read_bytes()) == 32
        wrong = tmp_path / "wrong-token"
        wrong.write_bytes(os.urandom(32))
        with pytest.raises(WorkerError, match="wrong token"):
            WorkerClient(str(sock), str(wrong)).call(
                QUERY, {"plan": plan(0).to_json()}, {}, timeout=30)
        # the right token is served
        reply, _ = WorkerClient(str(sock), str(token)).call(
            QUERY, {"plan": plan(0).to_json()}, {}, timeout=120)
        assert reply["reply"]["status"] == "ok"
        # a pickled array is never read: the frame is refused, nothing answered
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(sock))
            buf = io.BytesIO()
            np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
            head = json.dumps({"op": TRAIN, "token": token.read_bytes().hex(),
                               "plan": plan(1).to_json(),
                               "arrays": [["weights/x", len(buf.getvalue())]]}).encode()
            s.sendall(MAGIC + struct.pack(">I", len(head)) + head + buf.getvalue())
            assert s.recv(1) == b""
    assert not sock.exists() and not token.exists()


def test_peer_uid_is_checked(site_csv: Path, tmp_path: Path) -> None:
    """SO_PEERCRED gives the connecting process's uid; a process of another user is not
    served even with the right token (run as root: a child that drops to uid 65534 connects
    to a worker serving from a folder it may reach, which only this test opens)."""
    import tempfile
    import threading

    from fedsynth.client.worker import Worker

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.getuid()
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    token = os.urandom(32)
    worker = Worker(node_config(site_csv, tmp_path / "u"), token)
    folder = Path(tempfile.mkdtemp(prefix="fedsynth-uid-test-"))
    os.chmod(folder, 0o755)
    sock, stop, ready = folder / "w.sock", threading.Event(), threading.Event()
    thread = threading.Thread(target=worker.serve, args=(sock, stop, ready.set), daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        os.chmod(sock, 0o666)
        code = (
            "import os, socket, sys\n"
            "from fedsynth.client.worker_ipc import send_frame\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(30)\n"
            f"s.connect({str(sock)!r})\n"
            "try:\n"
            f"    send_frame(s, {{'op': 'query', 'token': {token.hex()!r}, "
            "'plan': sys.argv[1]}, {})\n"
            "    sys.exit(0 if s.recv(1) == b'' else 3)\n"
            "except OSError:\n"  # closed unread (broken pipe, reset): refused
            "    sys.exit(0)\n")
        rc = subprocess.run([sys.executable, "-c", code, plan(0).to_json()], timeout=60,
                            capture_output=True)
        assert rc.returncode == 0, rc.stderr.decode()[-500:]
        assert not (tmp_path / "u" / "logs" / "site-A.jsonl").exists()  # nothing served
    finally:
        stop.set()
        thread.join(10)
        folder.rmdir()


def _worker_pids(folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"fedsynth.client.worker" in cmd and str(folder).encode() in cmd:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_worker_stops_with_ehr_client(site_csv: Path, tmp_path: Path, how: int) -> None:
    """ehr-client (its SuperNode waiting on a SuperLink that never answers) starts the worker;
    stopping ehr-client, even by SIGKILL, stops the worker."""
    state = tmp_path / "state"
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # accepts, never answers:
    silent.bind(("127.0.0.1", 0))  # the SuperNode keeps trying while ehr-client runs
    silent.listen(8)
    port = silent.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "ehr-client"), "--site", "A", "--data", str(site_csv), "--server",
         f"127.0.0.1:{port}", "--state-dir", str(state), "--epsilon-budget", "3",
         "--insecure", "--no-check", "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (state / "worker" / "worker.sock").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.3)
        pids = _worker_pids(state / "worker")
        assert len(pids) == 1
        os.kill(proc.pid, how)
        proc.wait(60)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pids[0]}").exists() and time.monotonic() < deadline:
            if Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.2)
        alive = Path(f"/proc/{pids[0]}").exists() and Path(
            f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        assert not alive, "the worker outlived ehr-client"
    finally:
        silent.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _worker_pids(state / "worker"):
            os.kill(pid, signal.SIGKILL)
        from fedsynth.federation.flower_runtime import sweep

        sweep(str((state / "flwr-home").resolve()))


def test_worker_stops_when_its_parent_is_gone_without_the_death_signal(
        site_csv: Path, tmp_path: Path) -> None:
    """The parent death signal is armed between fork and exec and is lost when the parent dies
    first; the worker also checks that its parent is still the one that started it. A parent
    that starts the worker without the signal and exits: the worker stops by itself."""
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700)
    (folder / "config.json").write_text(json.dumps(node_config(site_csv, tmp_path / "state")))
    (folder / "token").write_bytes(os.urandom(32))
    code = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'fedsynth.client.worker', '--dir', "
        f"{str(folder)!r}, '--parent', str(os.getpid())], stdout=subprocess.PIPE, "
        "stdin=subprocess.DEVNULL, start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "assert p.stdout.readline().strip() == b'ready'\n"
        "os._exit(0)\n")
    parent = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180)
    assert parent.returncode == 0, parent.stderr[-2000:]
    pid = int(parent.stdout.split()[0])
    try:
        deadline = time.monotonic() + 30
        while pid in _worker_pids(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid not in _worker_pids(folder), "the worker outlived its parent"
        log = (tmp_path / "state" / "logs" / "worker.log").read_text()
        assert "is gone: the worker stops" in log
        assert not (folder / "worker.sock").exists()
    finally:
        for left in _worker_pids(folder):
            os.kill(left, signal.SIGKILL)
