"""Run one federation end to end from the coordinator's machine: start a SuperLink (deployment
or simulation runtime) on 127.0.0.1/--host, submit the fedsynth app with ``flwr run``, follow
its progress, and stop every process started (also on Ctrl-C / SIGTERM / parent death).

The process helpers live in ``federation.flower_runtime``, the ``flwr`` tool's in
``federation.flwr_cli`` (no ``flwr`` import in either).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.server.progress import RoundProgress
from fedsynth.server.refused_nodes import RefusedNodes
from fedsynth.server.settings import RUN_FILE, RunSettings

log = logging.getLogger(__name__)


@dataclass
class Launch:
    settings: RunSettings
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    simulation: bool = False
    insecure: bool = True
    superlink_tls_args: Sequence[str] = ()
    root_certificates: str | None = None
    run_config: Mapping[str, Any] = field(default_factory=dict)
    federation_config: Mapping[str, Any] | None = None
    progress: bool = True
    timeout: float | None = None
    on_started: Callable[[int], None] | None = None  # called with the SuperLink pid
    after_start: Callable[[str], None] | None = None  # called with "host:port" (e.g. enrol)


def launch(job: Launch) -> dict[str, Any]:
    """Run the federation; returns OUT/status.json's content (status completed|failed)."""
    from fedsynth.federation import flower_runtime as fr
    from fedsynth.federation import flwr_cli

    out = Path(job.settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    home = out / "flwr-home"
    job.settings.launch_id = uuid.uuid4().hex
    run_file = job.settings.save(out / RUN_FILE)
    status_file = out / "status.json"
    status_file.unlink(missing_ok=True)

    def done() -> bool:  # this launch's ServerApp wrote its final status
        status = read_status(out, wait=0.0, missing_ok=True)
        return status.get("launch_id") == job.settings.launch_id
    port = job.port or fr.free_port(job.host)
    # A crashed coordinator's detached helpers (SuperExec, ServerApp) may still run and would
    # grab the new run from the new SuperLink: stop them first (found by this FLWR_HOME).
    fr.sweep(str(home.resolve()))
    # every SuperNode the SuperLink refuses gets one line on this console
    refused = RefusedNodes(out / "logs" / "superlink.out", job.settings.cert_dir or None,
                           job.insecure)
    with fr.managed() as group:
        link = fr.start_superlink(group, host=job.host, port=port, flwr_home=home,
                                  simulation=job.simulation, insecure=job.insecure,
                                  tls_args=job.superlink_tls_args,
                                  log_file=out / "logs" / "superlink.log")
        if job.on_started is not None:
            job.on_started(link.pid)
        if job.after_start is not None:
            job.after_start(f"{job.host}:{port}")
        log.info("SuperLink on %s:%d (pid %d); FLWR_HOME=%s", job.host, port, link.pid, home)
        flwr_cli.write_connection(home, f"{job.host}:{port}", insecure=job.insecure,
                                  root_certificates=job.root_certificates)
        run_config = {"run-file": str(run_file), **job.run_config}
        run_id = flwr_cli.submit_run(home, run_config, job.federation_config)
        log.info("submitted Flower run %d", run_id)
        try:
            with RoundProgress(out, job.settings.rounds, enabled=job.progress) as bar:
                def tick() -> None:
                    bar.tick()
                    refused.poll()
                flwr_cli.wait_run(home, run_id, done=done, alive=lambda: link.poll() is None,
                                  timeout=job.timeout, tick=tick)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the run and every process it started")
            raise
        except BaseException:
            if link.poll() is None:
                flwr_cli.save_run_log(home, run_id, out / "logs" / "serverapp.log")
            raise
        if link.poll() is None:
            flwr_cli.save_run_log(home, run_id, out / "logs" / "serverapp.log")
    status = read_status(out)
    if status.get("launch_id", job.settings.launch_id) != job.settings.launch_id:
        return {"status": "failed", "detail": "the ServerApp ended without a status; see "
                f"{out / 'logs'}"}
    return status


def read_status(out: Path, wait: float = 2.0, missing_ok: bool = False) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        try:
            return json.loads((out / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            if missing_ok:
                return {}
            if time.monotonic() > deadline:
                return {"status": "failed", "detail": "the ServerApp ended without a status; "
                        f"see {out / 'logs'}"}
            time.sleep(0.2)


def summary(out: Path) -> str:
    """A few lines for the end of a run."""
    lines = [f"outputs in {out}"]
    try:
        priv = json.loads((out / "privacy.json").read_text(encoding="utf-8"))
        per_site = ", ".join(f"{s} {r['epsilon']:.3f}" for s, r in priv["sites"].items())
        lines.append(f"privacy: released epsilon {priv['epsilon']:.3f} (max over sites; "
                     f"delta {priv['delta']:.3g}); per site: {per_site}")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        ev = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
        pooled = ev.get("pooled") or {}
        keys = [k for k in ("cooccurrence_r", "dimwise_auroc_ratio", "prevalence_r") if k in pooled]
        if keys:
            lines.append(f"evaluation (by the simulation operator, all sites' held-out patients "
                         f"pooled, n={ev.get('pooled_n_holdout')}): "
                         + ", ".join(f"{k} {pooled[k]:.3f}" if pooled[k] is not None
                                     else f"{k} n/a" for k in keys))
        if ev.get("sites"):
            lines.append(f"each site's own evaluation is kept at the site "
                         f"(STATE/evaluation-<site>-{ev.get('run_id')}.json), not sent: "
                         + ", ".join(sorted(ev["sites"])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return "\n".join(lines)


def audit_status(out: Path) -> int:
    """1 when OUT/audit.json says the audit refutes a site's accountant epsilon, else 0."""
    path = out / "audit.json"
    if not path.exists():
        if _audits_kept_at_sites(out):  # a deployment: each site holds its own audit
            log.info("--audit: each site audited the released model and keeps the result in "
                     "its state folder (STATE/audit-<site>-<run_id>/audit.html); the "
                     "coordinator holds no audit figure")
            return 0
        log.warning("--audit: no audit was written (no site answered the evaluation)")
        return 1
    verdict = json.loads(path.read_text(encoding="utf-8")).get("verdict", {})
    log.info("audit written to %s: %s", out / "audit.html", verdict.get("headline", verdict))
    return 1 if verdict.get("status") == "fail" else 0


def _audits_kept_at_sites(out: Path) -> bool:
    """Whether OUT/evaluation.json records sites that kept their evaluation (and audit)."""
    try:
        ev = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
        return any(v.get("audit") for v in ev.get("sites", {}).values())
    except (OSError, ValueError, AttributeError):
        return False
