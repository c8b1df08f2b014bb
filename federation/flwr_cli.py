"""The ``flwr`` command-line tool, run the one way this project runs it (no ``flwr`` import).

One copy of what every caller of the tool needs: finding a Flower executable of this
environment (``bin_path``), the environment every Flower process gets (``flower_env``: no
telemetry, no update check, no runtime dependency installation, ``FLWR_HOME`` where the caller
says, Ray on the loopback address), the connection file ``$FLWR_HOME/config.toml``
(``write_connection``, insecure or trusting one CA), running the tool (``run_flwr``) and reading
its ``--format json`` answer (``json_reply``). On top: ``flwr run``/``ls``/``log``/``stop`` for
the launcher (``submit_run``, ``wait_run``, ...) and ``flwr supernode register`` for the
certificate tools (``register_supernode``). Starting and stopping the long-running processes
(SuperLink, SuperNode) is ``federation.flower_runtime``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import atomic_open
from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

CONNECTION = "fedsynth"  # the SuperLink connection's name in every config.toml written here


# ---------------------------------------------------------------- finding and environment
def bin_path(name: str) -> str:
    """A console script of this environment (next to the running Python), else from PATH."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise InputError(name, f"not found next to {sys.executable} nor on PATH",
                         "Is Flower (flwr) installed in this environment?")
    return found


def ray_tmpdir(flwr_home: str | Path) -> Path:
    """Ray's session folder: short (AF_UNIX socket paths must stay under 108 bytes, so not
    inside a deep run directory), one per FLWR_HOME, removed when the processes stop."""
    tag = hashlib.sha256(str(Path(flwr_home).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"fedsynth-ray-{tag}"


def flower_env(flwr_home: str | Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process and ``flwr`` call this project starts."""
    env = dict(os.environ)
    home = Path(flwr_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        # Ray: single-node cluster on the loopback address only, no dashboard, no usage stats.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DISABLE_DOCKER_CPU_WARNING="1",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        RAY_TMPDIR=str(ray_tmpdir(home)),
        PYTHONUNBUFFERED="1",
    )
    # Flower's SuperExec asks for a new app task every 1 s by default: 0.2 s cuts that wait
    # from every message of a round (the SuperNode's own 3 s idle sleep is hard-coded)
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    # Flower starts its helpers (flower-superexec, flwr-serverapp, ...) by name: this venv first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if extra:
        env.update(extra)
    return env


# ---------------------------------------------------------------- arguments and config.toml
def toml_value(value: Any) -> str:
    """One value in Flower's ``key=value`` syntax (TOML): booleans lower case, numbers as they
    are, anything else a quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def config_args(values: Mapping[str, Any]) -> list[str]:
    """``--run-config`` / ``--federation-config`` / ``--node-config`` items."""
    return [f"{key}={toml_value(value)}" for key, value in values.items()]


def connection_toml(address: str, insecure: bool = True,
                    root_certificates: str | Path | None = None, name: str = CONNECTION) -> str:
    """``$FLWR_HOME/config.toml`` text with one SuperLink connection, the default: insecure, or
    TLS trusting ``root_certificates`` (else the system's roots; Flower's default is TLS)."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]",
             f"address = {json.dumps(address)}"]
    if insecure:
        lines.append("insecure = true")
    elif root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}")
    return "\n".join(lines) + "\n"


def write_connection(flwr_home: str | Path, address: str, insecure: bool = True,
                     root_certificates: str | Path | None = None,
                     name: str = CONNECTION) -> Path:
    """Write ``connection_toml`` to ``$FLWR_HOME/config.toml`` (atomically)."""
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(connection_toml(address, insecure, root_certificates, name))
    return path


# ---------------------------------------------------------------- running the tool
def run_flwr(args: Sequence[str], flwr_home: str | Path, timeout: float = 120.0,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """``flwr ARGS`` with ``flower_env(flwr_home)``; output captured, no stdin.
    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    return subprocess.run(
        [bin_path("flwr"), *args], env=flower_env(flwr_home), capture_output=True, text=True,
        timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL,
    )


def json_reply(text: str) -> dict[str, Any]:
    """The JSON object ``flwr ... --format json`` prints (from its first ``{``); ``{}`` when
    there is none or it is not an object."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        reply = json.loads(text[start:])
    except json.JSONDecodeError:
        return {}
    return reply if isinstance(reply, dict) else {}


def app_dir(flwr_home: str | Path) -> Path:
    """The Flower app folder ``flwr run`` builds its FAB from: ``FLWR_HOME/app`` holding only
    the pyproject.toml of ``flower_app.toml`` (components refer to the installed package)."""
    from fedsynth import __version__

    folder = Path(flwr_home) / "app"
    folder.mkdir(parents=True, exist_ok=True)
    template = (Path(__file__).with_name("flower_app.toml")).read_text(encoding="utf-8")
    with atomic_open(folder / "pyproject.toml", "w", encoding="utf-8") as fh:
        fh.write(template.replace("{version}", __version__))
    return folder


# ---------------------------------------------------------------- runs
def submit_run(flwr_home: Path, run_config: Mapping[str, Any],
               federation_config: Mapping[str, Any] | None = None,
               name: str = CONNECTION) -> int:
    """``flwr run APP NAME`` with the run config; returns the run id."""
    app = app_dir(flwr_home)
    args = ["run", str(app), name, "--format", "json"]
    for item in config_args(run_config):
        args += ["--run-config", item]
    for item in config_args(federation_config or {}):
        args += ["--federation-config", item]
    res = run_flwr(args, flwr_home, cwd=app)
    payload = json_reply(res.stdout)
    if payload.get("success") and payload.get("run-id") is not None:
        return int(payload["run-id"])
    raise RuntimeError(f"flwr run failed (exit {res.returncode}): "
                       f"{(res.stdout + res.stderr).strip()[-800:]}")


def run_status(flwr_home: Path, run_id: int, name: str = CONNECTION) -> str:
    """The run's status text, e.g. ``running`` or ``finished:completed`` ('' if unknown)."""
    try:
        res = run_flwr(["ls", name, "--run-id", str(run_id), "--format", "json"], flwr_home,
                       timeout=60)
    except subprocess.TimeoutExpired:
        return ""
    for run in json_reply(res.stdout).get("runs", []):
        if isinstance(run, dict) and str(run.get("run-id")) == str(run_id):
            return str(run.get("status", ""))
    return ""


def save_run_log(flwr_home: Path, run_id: int, path: Path, name: str = CONNECTION) -> None:
    """``flwr log RUN --show`` (the ServerApp's output) into ``path``."""
    try:
        res = run_flwr(["log", str(run_id), name, "--show"], flwr_home, timeout=60)
    except (subprocess.TimeoutExpired, OSError) as err:
        log.debug("no run log: %s", err)
        return
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(res.stdout + res.stderr)


def stop_run(flwr_home: Path, run_id: int, name: str = CONNECTION) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        run_flwr(["stop", str(run_id), name], flwr_home, timeout=30)


def wait_run(
    flwr_home: Path, run_id: int, *, done: Callable[[], bool], alive: Callable[[], bool],
    timeout: float | None = None, poll: float = 1.0, tick: Callable[[], None] | None = None,
    status_every: float = 15.0, name: str = CONNECTION,
) -> str:
    """Wait for the run to end: ``done()`` (the ServerApp wrote its final status file) or Flower
    reporting it finished. Returns the final status; raises if ``alive()`` turns false."""
    start = last_status = time.monotonic()
    while True:
        if tick is not None:
            tick()
        if done():
            return "finished:completed"
        if not alive():
            raise RuntimeError("the SuperLink process died")
        now = time.monotonic()
        if now - last_status >= status_every:
            last_status = now
            status = run_status(flwr_home, run_id, name)
            if status.startswith("finished"):
                # give the ServerApp's final file a moment to land
                time.sleep(1.0)
                return "finished:completed" if done() else status
        if timeout is not None and now - start > timeout:
            raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f}s")
        time.sleep(poll)


# ---------------------------------------------------------------- SuperNode registration
def register_supernode(public_key: str | Path, node_name: str, address: str,
                       root_certificates: str | Path | None,
                       timeout: float = 60.0) -> tuple[bool, str]:
    """``flwr supernode register KEY --name NAME`` with the SuperLink at ``address`` (TLS
    trusting ``root_certificates``; insecure when None), from a throwaway FLWR_HOME so the
    user's own Flower config is never touched. Returns (registered now, "") or (False, the
    tool's error message; "timeout" when it did not answer in ``timeout`` seconds)."""
    with tempfile.TemporaryDirectory(prefix="ehr-flwr-") as home:
        write_connection(home, address, insecure=root_certificates is None,
                         root_certificates=root_certificates)
        try:
            proc = run_flwr(["supernode", "register", str(Path(public_key).resolve()),
                             CONNECTION, "--name", node_name, "--format", "json"],
                            home, timeout=timeout, cwd=home)
        except subprocess.TimeoutExpired:
            return False, "timeout"
    reply = json_reply(proc.stdout)
    if reply.get("success") is True:
        return True, ""
    return False, str(reply.get("error-message") or proc.stderr or f"exit {proc.returncode}")
