"""The resident site worker (issue 18): one process per site that keeps torch, Opacus and the
site's data loaded across messages and rounds.

Flower 1.41 starts a fresh ClientApp process for every message (``flwr-clientapp`` pulls one
message, loads the app, answers, exits), so every message re-imported torch and Opacus and
reloaded the site's data. ``ehr-client`` now starts this worker before its SuperNode
(``resident_worker``) and stops it on exit; the ClientApp only forwards each message to it
(``WorkerClient``) and packs the answer.

Transport: a Unix domain socket in ``STATE/worker/`` (folder 0700, socket 0600; nothing listens
on a network interface). A connection is served only when its peer runs as this user
(``SO_PEERCRED``) and its first frame carries the token of ``STATE/worker/token`` (32 random
bytes, file 0600, fresh at every start). Frames: ``client.worker_ipc`` (JSON header + ``np.save``
arrays, no pickle anywhere). One request at a time; a request that is not read within
``READ_TIMEOUT`` is dropped, and the ClientApp gives up after its own timeout.

    python -m fedsynth.client.worker --dir STATE/worker   # started by ehr-client
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.client.worker_ipc import (
    EVALUATE,
    MARGINALS,
    QUERY,
    READ_TIMEOUT,
    SOCKET_KEY,
    TOKEN_KEY,
    TRAIN,
    Arrays,
    WorkerError,
    group,
    grouped,
    peer_uid,
    recv_arrays,
    recv_header,
    send_frame,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 600.0  # seconds for the worker to import torch and load the site's data
SOCKET_NAME, TOKEN_NAME, CONFIG_NAME = "worker.sock", "token", "config.json"


# ---------------------------------------------------------------------------- worker side
@dataclass
class Worker:
    """Serves one site's requests with ``client.site_service.SiteService`` (data kept)."""

    node: dict[str, Any]
    token: bytes
    service: Any = None
    console: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from fedsynth.client.site_console import SiteConsole
        from fedsynth.client.site_service import SiteService

        self.service = SiteService(keep_data=True)
        self.console = SiteConsole(str(self.node["site"]), Path(str(self.node["state-dir"])))

    def warm_up(self) -> None:
        """Import torch and Opacus and load the site's data now, before the first message."""
        from fedsynth.client.site_service import set_threads, site_config_from
        from fedsynth.privacy import accountant  # noqa: F401  (imports Opacus)

        cfg = site_config_from(self.node, {})
        set_threads(cfg.threads)
        self.service.data(cfg)

    def serve(self, path: Path, stop: threading.Event,
              on_ready: Callable[[], None] | None = None, parent: int | None = None) -> None:
        """Serve requests one at a time until ``stop`` is set or, when ``parent`` is given,
        until this process is no longer that process's child (ehr-client is gone: the parent
        death signal alone can be lost, e.g. when ehr-client died before it was armed)."""
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)  # the socket is created 0600, never wider
        try:
            srv.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        srv.listen(8)
        srv.settimeout(0.5)
        if on_ready is not None:
            on_ready()
        try:
            while not stop.is_set():
                if parent is not None and os.getppid() != parent:
                    log.warning("ehr-client (pid %d) is gone: the worker stops", parent)
                    break
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                with conn:
                    try:
                        self.handle(conn)
                    except Exception:  # noqa: BLE001 - a malformed request never ends the worker
                        log.exception("dropped a malformed request")
        finally:
            srv.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def handle(self, conn: socket.socket) -> None:
        """One request: check the peer and the token, serve it, answer."""
        uid = peer_uid(conn)
        if uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            return
        conn.settimeout(READ_TIMEOUT)
        try:
            header = recv_header(conn)
            if not hmac.compare_digest(str(header.get("token", "")).encode(),
                                       self.token.hex().encode()):
                log.warning("refused a request with a wrong token")
                send_frame(conn, {"ok": False, "error": "wrong token"}, {})
                return
            arrays = recv_arrays(conn, header)
        except (WorkerError, OSError, ValueError) as err:
            log.warning("dropped a request: %s", err)
            return
        conn.settimeout(None)  # a request may take long to serve ...
        with self.lock:
            self.dispatch(conn, header, arrays)

    def dispatch(self, conn: socket.socket, header: dict[str, Any], arrays: Arrays) -> None:
        from fedsynth.client.site_service import site_config_from
        from fedsynth.federation.protocol import SitePlan

        op = str(header.get("op"))
        t0 = time.monotonic()
        try:
            cfg = site_config_from(self.node, dict(header.get("run", {})))
            plan = SitePlan.from_json(str(header["plan"]))
            if op == QUERY:
                reply, out = self._query(cfg, plan)
            elif op == TRAIN:
                before = self.console.last_epsilon
                if before is None:
                    before = _total_before(cfg, self.service, plan)
                reply, out = self._train(cfg, plan, arrays)
            elif op == EVALUATE:
                reply, out = self._evaluate(cfg, plan, header, arrays)
            elif op == MARGINALS:
                reply, out = self._marginals(cfg, plan, header)
            else:
                raise WorkerError(f"unknown request {op!r}")
        except Exception as err:  # noqa: BLE001 - the ClientApp reports it as its error
            log.exception("%s failed", op)
            self.console.error(op, f"{type(err).__name__}: {err}")
            with contextlib.suppress(OSError):
                send_frame(conn, {"ok": False, "error": f"{type(err).__name__}: {err}"}, {})
            return
        sent = True
        conn.settimeout(READ_TIMEOUT)  # ... but a ClientApp that stops reading is given up
        try:
            send_frame(conn, {"ok": True, "reply": reply}, out)
        except OSError as err:
            log.warning("%s: the reply could not be handed back: %s", op, err)
            sent = False
        seconds = time.monotonic() - t0
        if op in (QUERY, MARGINALS):
            self.console.query(reply["status"], reply["reason"], reply["privacy"], sent, seconds,
                               what=op if op == QUERY else f"mst {header.get('stage')}")
        elif op == TRAIN:
            self.console.train(plan.round, plan.rounds, reply["status"], reply["reason"],
                               reply["steps"], reply["privacy"], sent, seconds, before)
        else:
            self.console.evaluate(plan.run_id, reply["status"], sent, seconds)

    def _query(self, cfg: Any, plan: Any) -> tuple[dict[str, Any], Arrays]:
        r = self.service.query(cfg, plan)
        reply = {"site": r.site, "status": r.status, "reason": r.reason,
                 "vocab_name": r.vocab_name, "codes": list(r.codes), "privacy": r.privacy,
                 "ledger_head": r.ledger_head}
        out: Arrays = {}
        if r.counts is not None:
            reply["counts_size"] = float(r.counts.size)
            reply["counts_noise_std"] = float(r.counts.noise_std)
            out["counts"] = np.asarray(r.counts.counts, np.float64)
        return _plain(reply), out

    def _train(self, cfg: Any, plan: Any, arrays: Arrays) -> tuple[dict[str, Any], Arrays]:
        weights = group(arrays, "weights") or {}
        r = self.service.train(cfg, plan, weights, group(arrays, "ema"))
        reply = {"site": r.site, "status": r.status, "reason": r.reason, "steps": int(r.steps),
                 "privacy": r.privacy, "ledger_head": r.ledger_head}
        return _plain(reply), {**grouped("weights", r.weights), **grouped("ema", r.ema)}

    def _marginals(self, cfg: Any, plan: Any, header: dict[str, Any]
                   ) -> tuple[dict[str, Any], Arrays]:
        from fedsynth.federation.protocol import MarginalsRequest

        req = MarginalsRequest(plan, str(header["stage"]), int(header["max_codes"]),
                               float(header["share"]), [int(c) for c in header["cols"]])
        r = self.service.marginals(cfg, req)
        reply = {"site": r.site, "status": r.status, "reason": r.reason,
                 "size": r.size, "noise_std": float(r.noise_std), "privacy": r.privacy,
                 "ledger_head": r.ledger_head}
        return _plain(reply), ({} if r.counts is None else {"counts": np.asarray(r.counts)})

    def _evaluate(self, cfg: Any, plan: Any, header: dict[str, Any], arrays: Arrays
                  ) -> tuple[dict[str, Any], Arrays]:
        from fedsynth.client.site_service import Evaluation, evaluation_settings

        samples, audit = evaluation_settings(self.node, dict(header.get("run", {})),
                                             bool(header.get("audit_requested", False)))
        req = Evaluation(plan, json.loads(header["config_json"]), group(arrays, "model") or {},
                         json.loads(header["output_step_json"]), samples, audit)
        r = self.service.evaluate(cfg, req)
        return {"site": r.site, "status": r.status, "reason": ""}, {}


def _plain(obj: Any) -> Any:
    """JSON-safe copy (numpy scalars to Python numbers)."""
    from fedsynth.common.atomic import _json_default

    return json.loads(json.dumps(obj, default=_json_default))


def _total_before(cfg: Any, service: Any, plan: Any) -> float | None:
    """The site's epsilon before this round, for the console (the first round this worker
    serves; later ones use the total after the previous reply)."""
    from fedsynth.client.site_service import open_ledger

    with contextlib.suppress(Exception):
        ledger, _ = open_ledger(cfg, service.data(cfg))
        if ledger is not None:
            return float(ledger.report(None, cfg.budget(plan),
                                       plan.config.privacy.accountant)["epsilon"])
    return None


def worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedsynth.client.worker", description=__doc__)
    p.add_argument("--dir", required=True, type=Path, help="the worker folder (0700)")
    p.add_argument("--socket", type=Path, help="socket path (default DIR/worker.sock)")
    p.add_argument("--parent", type=int, help="stop when this process (ehr-client) is gone")
    args = p.parse_args(argv)
    node = json.loads((args.dir / CONFIG_NAME).read_text(encoding="utf-8"))
    token = (args.dir / TOKEN_NAME).read_bytes()
    logs = Path(str(node["state-dir"])) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, filename=logs / "worker.log",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(node, token)
    try:  # SIGTERM still ends it at once here: ehr-client may stop seconds after it started
        worker.warm_up()
    except Exception:  # noqa: BLE001 - served anyway: each request then reports the error
        log.exception("warm-up failed")
    stop = threading.Event()  # from now on a request in progress is finished first
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.serve(args.socket or args.dir / SOCKET_NAME, stop, _announce, args.parent)
    return 0


def _announce() -> None:
    """Tell the parent (one line on stdout) that the socket listens."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdout.close()


# ---------------------------------------------------------------------------- ehr-client side
def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when ehr-client dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a fresh 0600 file (replacing any older one)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def worker_paths(state: Path) -> tuple[Path, Path]:
    """(the worker folder, the socket path). The socket lives in ``STATE/worker`` unless that
    path is too long for a Unix socket (108 bytes): then in a fresh 0700 temporary folder."""
    folder = state / "worker"
    sock = folder / SOCKET_NAME
    if len(os.fsencode(sock)) > 100:
        sock = Path(tempfile.mkdtemp(prefix="fedsynth-worker-")) / SOCKET_NAME
    return folder, sock


@dataclass
class Supervisor:
    """Starts the worker, restarts it when it dies unexpectedly, stops it on ``stop``."""

    folder: Path
    sock: Path
    proc: subprocess.Popen[bytes] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self, timeout: float = START_TIMEOUT, wait: bool = True) -> None:
        """Start the worker; with ``wait``, until it serves (else the watcher logs it)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedsynth.client.worker", "--dir", str(self.folder),
             "--socket", str(self.sock), "--parent", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None,
            start_new_session=True, preexec_fn=_die_with_parent)
        proc = self.proc
        ready: list[bytes] = []

        def read() -> None:
            assert proc.stdout is not None
            ready.append(proc.stdout.readline())
            if ready[0].strip() == b"ready":
                log.info("site worker pid %d serving %s", proc.pid, self.sock)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if not wait:
            return
        reader.join(timeout)
        if not ready or ready[0].strip() != b"ready":
            self.kill()
            raise WorkerError(f"the site worker did not start within {timeout:.0f} s (see "
                              f"{self.folder.parent / 'logs' / 'worker.log'})")

    def watch(self) -> None:
        """Restart the worker if it dies while ehr-client runs."""
        delay = 2.0
        while not self.stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("site worker exited (code %s); restarting in %.0f s",
                            self.proc.returncode, delay)
                if self.stopping.wait(delay):
                    return
                try:
                    self.start()
                    delay = 2.0
                except WorkerError as err:
                    log.warning("%s", err)
                    delay = min(60.0, delay * 2)

    def kill(self, grace: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def resident_worker(node_config: Mapping[str, Any], state: Path,
                    wait: bool = False) -> Iterator[dict[str, str]]:
    """Start the site's worker and yield the node config entries that point the ClientApp to
    it; stop it on exit. It imports torch and loads the data while the SuperNode connects
    (``wait``: before this yields); a message that comes first waits for its socket."""
    folder, sock = worker_paths(state)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    _private_file(folder / TOKEN_NAME, secrets.token_bytes(32))
    _private_file(folder / CONFIG_NAME, json.dumps(dict(node_config)).encode("utf-8"))
    sup = Supervisor(folder, sock)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # a crashed worker's socket would look like a live one
    sup.start(wait=wait)
    sup.thread = threading.Thread(target=sup.watch, daemon=True, name="worker-watch")
    sup.thread.start()
    try:
        yield {SOCKET_KEY: str(sock), TOKEN_KEY: str(folder / TOKEN_NAME)}
    finally:
        sup.stopping.set()
        sup.thread.join(5)
        sup.kill()
        with contextlib.suppress(FileNotFoundError):
            (folder / TOKEN_NAME).unlink()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        if sock.parent != folder:
            with contextlib.suppress(OSError):
                sock.parent.rmdir()


if __name__ == "__main__":
    sys.exit(worker_main())
