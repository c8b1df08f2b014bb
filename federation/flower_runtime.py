"""Start, watch and stop Flower's processes (SuperLink, SuperNodes) on 127.0.0.1.

Plain subprocess management, no ``flwr`` import: every process is started in its own process
group and recorded in a ``ProcessGroup``; leaving the group (normally, on an exception, on
Ctrl-C or SIGTERM) stops them all, SIGTERM first, then SIGKILL, and sweeps what Flower started
detached. Every process gets ``federation.flwr_cli.flower_env`` (no telemetry, no update
checks, no runtime dependency installation, ``FLWR_HOME`` inside the run directory, Ray on the
loopback address); the ``flwr`` tool itself (``flwr run``, the connection file) is
``federation.flwr_cli``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.federation.flwr_cli import bin_path, config_args, flower_env, ray_tmpdir

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the parent dies, even by SIGKILL,
    so a killed ``ehr-server``/``ehr-client`` leaves no orphan SuperLink/SuperNode."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ProcessGroup:
    """Processes started for one command; ``stop_all`` ends every one of them."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    homes: set[str] = field(default_factory=set)  # FLWR_HOME of every process started

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str],
              log_file: Path | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        out: Any = subprocess.DEVNULL
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_file, "ab")  # noqa: SIM115 - closed in stop_all
            self.logs.append(out)
        log.debug("starting %s: %s", name, " ".join(cmd))
        proc = subprocess.Popen(
            list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.procs.append((name, proc))
        if "FLWR_HOME" in env:
            self.homes.add(str(env["FLWR_HOME"]))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # The whole process group: ServerApp/ClientApp/Ray children too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2)

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            log.debug("stopping %s (pid %d)", name, proc.pid)
            self.stop(proc)
        self.procs.clear()
        for home in self.homes:
            sweep(home)
            shutil.rmtree(ray_tmpdir(home), ignore_errors=True)
        for fh in self.logs:
            with contextlib.suppress(OSError):
                fh.close()
        self.logs.clear()


def _other_pids() -> list[int]:
    """Every PID in /proc but this process's own."""
    own = os.getpid()
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and int(e.name) != own]


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name: [state, ppid, pgrp, session, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _descendants_with_home(home: str) -> list[int]:
    """PIDs of this user's processes whose environment has ``FLWR_HOME=home``: the detached
    helpers Flower starts in their own sessions (SuperExec, ServerApp, simulation, Ray)."""
    marker = f"FLWR_HOME={home}".encode()
    found = []
    for pid in _other_pids():
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def _sessions_of(pids: list[int]) -> set[int]:
    """The session ids of ``pids``, without this process's own session."""
    own = os.getsid(0)
    sids = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            sids.add(os.getsid(pid))
    return sids - {own}


def _members_of_sessions(sids: set[int]) -> list[int]:
    """PIDs whose session is in ``sids``."""
    found = []
    for pid in _other_pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(_stat_fields(pid)[3]) in sids:
                found.append(pid)
    return found


def run_processes(home: str) -> list[int]:
    """Every live process of a run: those whose environment names ``home`` and every process
    in their sessions."""
    pids = _descendants_with_home(home)
    return sorted(set(pids) | set(_members_of_sessions(_sessions_of(pids))))


def sweep(home: str, grace: float = 3.0) -> None:
    """Stop every leftover process started under ``home`` (SIGTERM, then SIGKILL): those whose
    environment names it, and every process in their sessions (Ray's agents rewrite their
    command line and environment, so only their session gives them away when a run is
    interrupted before Ray shuts them down)."""
    pids = run_processes(home)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return _stat_fields(pid)[0] == "Z"
    return True


@contextlib.contextmanager
def managed() -> Iterator[ProcessGroup]:
    """A ProcessGroup whose processes are stopped on exit, exception, Ctrl-C or SIGTERM."""
    group = ProcessGroup()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, on_term)
    try:
        yield group
    finally:
        group.stop_all()
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, old)


def wait_http_health(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float,
                     what: str, log_file: Path | None = None) -> None:
    """Wait until ``http://host:port/health`` answers, or the process dies / time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}"
                               + (f"; see {log_file}" if log_file else ""))
        url = f"http://{host}:{port}/health"
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError), \
                urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status < 500:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not come up on {host}:{port} within {timeout:.0f}s"
                       + (f"; see {log_file}" if log_file else ""))


def start_superlink(
    group: ProcessGroup, *, host: str, port: int, flwr_home: Path, simulation: bool = False,
    insecure: bool = True, tls_args: Sequence[str] = (), log_file: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.Popen[bytes]:
    """``flower-superlink`` on host:port (Fleet, Control and ServerAppIo over one HTTP port)."""
    cmd = [bin_path("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation", "--isolation", "subprocess"]
    if insecure:
        cmd.append("--insecure")
    cmd += list(tls_args)
    if simulation:
        cmd.append("--simulation")
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    env = flower_env(flwr_home)
    proc = group.start("superlink", cmd, env, log_file=log_file.with_suffix(".out")
                       if log_file else None)
    if insecure:
        wait_http_health(host, port, proc, timeout, "flower-superlink", log_file)
    else:
        _wait_port(host, port, proc, timeout, "flower-superlink")
    return proc


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float,
               what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if port_open(host, port):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not open {host}:{port} within {timeout:.0f}s")


def node_config_arg(config: Mapping[str, str | int | float | bool]) -> str:
    """Flower's ``--node-config`` syntax: space separated ``key=value``, strings quoted."""
    return " ".join(config_args(config))


def start_supernode(
    group: ProcessGroup, *, superlink: str, node_config: Mapping[str, Any], flwr_home: Path,
    insecure: bool = True, tls_args: Sequence[str] = (), port: int | None = None,
    log_file: Path | None = None, max_wait_time: float | None = None,
) -> subprocess.Popen[bytes]:
    """``flower-supernode`` connecting to ``superlink``; its local ClientAppIo port is chosen
    automatically (so several SuperNodes can run on one host)."""
    local_port = port or free_port()
    cmd = [bin_path("flower-supernode"), "--superlink", superlink,
           "--host", LOOPBACK, "--port", str(local_port),
           "--node-config", node_config_arg(node_config)]
    if insecure:
        cmd.append("--insecure")
    cmd += list(tls_args)
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return group.start("supernode", cmd, flower_env(flwr_home), log_file=log_file)
