"""Loopback deployment timing (issue 18): how much of a round is not the sites' training, and
how long the coordinator takes to write its outputs after the last round.

    python -m fedsynth.simulations.bench_deploy --out runs/bench-deploy        # the acceptance
    python -m fedsynth.simulations.bench_deploy --data demo --sites 2 --rounds 2 --out /tmp/b

Splits the data into ``--sites`` site files (``OUT/sites/S<k>.csv``), then starts on 127.0.0.1
exactly what a coordinator and the hospitals run: one ``ehr-server`` and one ``ehr-client``
per site, each in its own process group, all stopped at the end (also on an error, Ctrl-C or
SIGTERM). After the coordinator exits it reads, per round, the coordinator's round time
(``OUT/run/rounds.jsonl`` ``seconds``: from sending the train messages to the last reply) and
each site's DP-SGD time (``OUT/state-S<k>/rounds-S<k>.jsonl``, "train" lines), and reports the
overhead share = (round - slowest site's training) / round against the 25% target, and the
time from the last round's log line to ``status.json`` (written last, after the model, the
sample, privacy.json and the sites' evaluation) against the 60 s target. Writes
``OUT/bench_deploy.json`` and ``OUT/bench_deploy.md`` and prints the Markdown. Measures, does
not assert: timings are for a person to read (no timed unit tests).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.errors import InputError, cli_errors

log = logging.getLogger("bench-deploy")
BIN = Path(sys.executable).parent
OVERHEAD_TARGET = 0.25  # issue 18: round - slowest site's training <= 25% of the round
OUTPUTS_TARGET_S = 60.0  # issue 18: outputs written within 60 s of the last round
STOP_GRACE_S = 20.0


def parser() -> argparse.ArgumentParser:
    from fedsynth.simulations.benchmark_settings import DEFAULT_DATA

    p = argparse.ArgumentParser(prog="bench_deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="PATH (default: the diabetes130 dev split), or 'demo'")
    p.add_argument("--format", default="auto")
    p.add_argument("--sites", type=int, default=5)
    p.add_argument("--partition", default="dirichlet:0.5",
                   help="iid | dirichlet:ALPHA | column:NAME (default dirichlet:0.5)")
    p.add_argument("--epsilon", type=float, default=3.0,
                   help="the coordinator's target and every site's budget (default 3)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds (default: the project's default plan; the flag is not passed)")
    p.add_argument("--threads", type=int, default=1, help="ehr-client --threads (default 1)")
    p.add_argument("--config", type=Path, help="TOML passed to ehr-server (small test runs)")
    p.add_argument("--demo-patients", type=int, default=2000,
                   help="patients per site of the demo cohort (default 2000)")
    p.add_argument("--timeout", type=float, default=6 * 3600.0,
                   help="seconds the whole deployment may run (default 6 h)")
    p.add_argument("--out", required=True, type=Path)
    return p


# ---------------------------------------------------------------------------- the site files
def write_site_files(args: argparse.Namespace, folder: Path) -> list[Path]:
    """``S<k>.csv`` per site: the cohort (``--data`` or the demo) split by ``--partition``."""
    from fedsynth.common.data import demo_cohort, load_codes, write_matrix
    from fedsynth.simulations.partition import parse_partition, partition

    spec = parse_partition(args.partition)
    if args.data == "demo":
        if args.demo_patients < 10:
            raise InputError("--demo-patients", "must be at least 10")
        matrix = demo_cohort(n_sites=args.sites, patients_per_site=args.demo_patients, seed=0)
    else:
        path = Path(args.data)
        if not path.exists():
            raise InputError(path, "data file not found", "pass --data PATH, or --data demo")
        matrix = load_codes(path, args.format)
    parts = partition(matrix.X, args.sites, spec, matrix.covariates, seed=0)
    files = []
    for k, idx in enumerate(parts, start=1):
        files.append(write_matrix(folder / f"S{k}.csv", matrix.X[idx], matrix.vocab,
                                  matrix.patient_ids[idx]))
    log.info("%d sites from %s: %s patients", args.sites, args.data,
             ", ".join(str(len(idx)) for idx in parts))
    return files


# ---------------------------------------------------------------------------- the processes
def commands(args: argparse.Namespace, out: Path, files: list[Path], port: int
             ) -> tuple[list[str], list[list[str]]]:
    """The ``ehr-server`` command line and one ``ehr-client`` line per site, as an operator
    and the hospitals would type them (plaintext on the loopback address)."""
    server = [str(BIN / "ehr-server"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
              "--min-sites", str(len(files)), "--epsilon", f"{args.epsilon:g}",
              "--out", str(out / "run"), "--no-progress"]
    if args.rounds is not None:
        server += ["--rounds", str(args.rounds)]
    if args.config is not None:
        server += ["--config", str(args.config.resolve())]
    clients = [[str(BIN / "ehr-client"), "--site", f"S{k}", "--data", str(path),
                "--server", f"127.0.0.1:{port}", "--state-dir", str(out / f"state-S{k}"),
                "--epsilon-budget", f"{args.epsilon:g}", "--insecure", "--no-check",
                "--threads", str(args.threads)]
               for k, path in enumerate(files, start=1)]
    return server, clients


def flower_homes(out: Path, n_sites: int) -> list[Path]:
    """The FLWR_HOME of every Flower process the run starts (``server.launch`` and
    ``client.cli``): what ``flower_runtime.sweep`` looks for."""
    return [out / "run" / "flwr-home"] + [out / f"state-S{k}" / "flwr-home"
                                          for k in range(1, n_sites + 1)]


@contextlib.contextmanager
def deployment(homes: list[Path]) -> Iterator[Any]:
    """A ``flower_runtime`` process group (each process in its own group, SIGTERM if this one
    dies, stopped on exit, exception, Ctrl-C or SIGTERM) whose processes are first all asked
    to stop at once, so each closes its own SuperLink/SuperNode, before the group's own stop
    and the sweep of every FLWR_HOME."""
    from fedsynth.federation import flower_runtime as fr

    with fr.managed() as group:
        group.homes.update(str(h) for h in homes)
        try:
            yield group
        finally:
            _stop_gracefully([p for _, p in group.procs])


def _stop_gracefully(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every live process group, then wait up to ``STOP_GRACE_S`` for them all."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))


def run_deployment(args: argparse.Namespace, out: Path, files: list[Path]) -> dict[str, Any]:
    """Start the coordinator and the sites, wait for the coordinator to exit, stop them all;
    returns its exit status and the wall time."""
    from fedsynth.federation.flower_runtime import free_port

    port = free_port()
    server_cmd, client_cmds = commands(args, out, files, port)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1")
    result: dict[str, Any] = {"port": port, "server_rc": None, "timed_out": False,
                              "commands": [server_cmd, *client_cmds]}
    with deployment(flower_homes(out, len(files))) as group:
        t0 = time.monotonic()
        result["started"] = time.time()
        server = group.start("ehr-server", server_cmd, env, logs / "server.log")
        log.info("ehr-server pid %d on 127.0.0.1:%d (log %s)", server.pid, port,
                 logs / "server.log")
        clients = {}
        for k, cmd in enumerate(client_cmds, start=1):
            clients[f"S{k}"] = group.start(f"ehr-client S{k}", cmd, env,
                                           logs / f"client-S{k}.log")
        log.info("%d ehr-client processes started (--threads %d)", len(clients), args.threads)
        deadline, seen_rounds = t0 + args.timeout, 0
        while server.poll() is None:
            if time.monotonic() > deadline:
                result["timed_out"] = True
                log.error("--timeout %g s reached; stopping the deployment", args.timeout)
                break
            done = len(_jsonl(out / "run" / "rounds.jsonl"))
            if done > seen_rounds:
                seen_rounds = done
                log.info("round %d logged (%.0f s since start)", done, time.monotonic() - t0)
            for site, proc in list(clients.items()):
                if proc.poll() is not None:
                    log.warning("ehr-client %s exited (rc %s); see %s", site, proc.returncode,
                                logs / f"client-{site}.log")
                    del clients[site]
            time.sleep(0.5)
        result["server_rc"] = server.poll()
        result["wall_seconds"] = round(time.monotonic() - t0, 3)
        log.info("coordinator exited (rc %s) after %.1f s; stopping the sites",
                 result["server_rc"], result["wall_seconds"])
    return result


# ---------------------------------------------------------------------------- the figures
def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            if line.strip():
                lines.append(json.loads(line))
    return lines


def _json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def measure(out: Path, sites: list[str]) -> dict[str, Any]:
    """Per round of ``OUT/run/rounds.jsonl``: the round's seconds, the slowest site's DP-SGD
    seconds (each site's last "train" line of that round logged before the coordinator logged
    the round, so a retried round is matched with its own attempt), the overhead and its share;
    and the time from the last round's log line to status.json."""
    run_id = _json(out / "run" / "run.json").get("run_id")
    trains = {s: [e for e in _jsonl(out / f"state-{s}" / f"rounds-{s}.jsonl")
                  if e.get("event") == "train" and (run_id is None or e.get("run_id") == run_id)]
              for s in sites}
    handled = {s: [e for e in _jsonl(out / f"state-{s}" / "logs" / f"site-{s}.jsonl")
                   if e.get("event") == "train" and e.get("status") == "ok"] for s in sites}
    rows = []
    for entry in _jsonl(out / "run" / "rounds.jsonl"):
        if "stage" in entry:  # federated MST's stages are not training rounds
            continue
        rnd, logged, secs = int(entry["round"]), float(entry["time"]), float(entry["seconds"])
        site_secs = {s: _last_before(trains[s], rnd, logged) for s in sites}
        site_secs = {s: v for s, v in site_secs.items() if v is not None}
        worker_secs = [v for s in sites if (v := _last_before(handled[s], rnd, logged))
                       is not None]
        slowest = max(site_secs.values()) if site_secs else None
        overhead = None if slowest is None else secs - slowest
        rows.append({
            "round": rnd, "status": entry.get("status"), "seconds": secs,
            "site_train_seconds": site_secs,
            "slowest_site": max(site_secs, key=site_secs.__getitem__) if site_secs else None,
            "slowest_train_seconds": slowest,
            "max_site_handling_seconds": max(worker_secs) if worker_secs else None,
            "overhead_seconds": None if overhead is None else round(overhead, 3),
            "overhead_share": None if overhead is None or secs <= 0 else overhead / secs,
            "time": logged})
    status = _json(out / "run" / "status.json")
    after = release = None
    if rows and "time" in status:
        after = float(status["time"]) - rows[-1]["time"]
    privacy = out / "run" / "privacy.json"  # written right after model/ and synthetic.csv
    if rows and privacy.exists():
        release = privacy.stat().st_mtime - rows[-1]["time"]
    shares = [r["overhead_share"] for r in rows if r["overhead_share"] is not None]
    return {
        "run_id": run_id, "status": status.get("status"), "status_detail": status.get("detail"),
        "rounds": rows,
        "overhead_share_mean": float(np.mean(shares)) if shares else None,
        "overhead_share_max": max(shares) if shares else None,
        "overhead_target": OVERHEAD_TARGET,
        "release_after_last_round_seconds": None if release is None else round(release, 3),
        "stage_seconds": status.get("stage_seconds", {}),
        "outputs_after_last_round_seconds": None if after is None else round(after, 3),
        "outputs_target_seconds": OUTPUTS_TARGET_S,
    }


def _last_before(events: list[dict[str, Any]], rnd: int, logged: float) -> float | None:
    """``seconds`` of the last event of round ``rnd`` logged at or before ``logged``."""
    best = None
    for e in events:
        if e.get("round") == rnd and float(e.get("time", 0.0)) <= logged + 1e-3:
            best = float(e["seconds"])
    return best


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _verdict(value: float | None, target: float) -> str:
    return "not measured" if value is None else ("met" if value <= target else "NOT met")


def markdown(doc: dict[str, Any]) -> str:
    """The per-round table and the summary against issue 18's targets."""
    s = doc["settings"]
    lines = [f"Loopback deployment: {s['sites']} sites, --threads {s['threads']}, data "
             f"{s['data']}, partition {s['partition']}, epsilon {s['epsilon']:g}, rounds "
             f"{s['rounds'] if s['rounds'] is not None else 'default'}"
             f"{', config ' + s['config'] if s['config'] else ''}; run {doc['status']}, "
             f"wall {_fmt(doc['wall_seconds'])} s", "",
             "| round | status | round s | slowest site | its DP-SGD s | max site handling s "
             "| overhead s | overhead share |",
             "|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in doc["rounds"]:
        lines.append(f"| {r['round']} | {r['status']} | {r['seconds']:.1f} | "
                     f"{r['slowest_site'] or '-'} | {_fmt(r['slowest_train_seconds'])} | "
                     f"{_fmt(r['max_site_handling_seconds'])} | {_fmt(r['overhead_seconds'])} | "
                     f"{_fmt(r['overhead_share'], '.1%')} |")
    mean, peak = doc["overhead_share_mean"], doc["overhead_share_max"]
    after = doc["outputs_after_last_round_seconds"]
    release = doc.get("release_after_last_round_seconds")
    lines += ["", f"Overhead share: mean {_fmt(mean, '.1%')}, max {_fmt(peak, '.1%')} "
              f"(target <= {OVERHEAD_TARGET:.0%} every round: {_verdict(peak, OVERHEAD_TARGET)}); "
              f"model, synthetic.csv and privacy.json written {_fmt(release)} s after the last "
              f"round (target <= {OUTPUTS_TARGET_S:g} s: {_verdict(release, OUTPUTS_TARGET_S)}); "
              f"run ended (after the sites' evaluation) {_fmt(after)} s after it"
              + ("; stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                          doc.get("stage_seconds", {}).items())
                 if doc.get("stage_seconds") else "") + ".", "",
              "Round s: the coordinator's, from sending the train messages to the last reply. "
              "DP-SGD s: the site's own training (STATE/rounds-<site>.jsonl). Site handling s: "
              "its resident worker's whole train request, DP-SGD included "
              "(STATE/logs/site-<site>.jsonl). Overhead = round - slowest DP-SGD. Written after "
              "the last round: privacy.json's mtime - the last round's log time; run ended: "
              "status.json's time (written last).",
              ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the command
def bench(args: argparse.Namespace) -> int:
    if args.sites < 1:
        raise InputError("--sites", f"must be at least 1 (got {args.sites})")
    if args.threads < 1:
        raise InputError("--threads", f"must be at least 1 (got {args.threads})")
    if args.timeout <= 0:
        raise InputError("--timeout", f"must be positive (got {args.timeout})")
    if args.config is not None and not args.config.is_file():
        raise InputError(args.config, "file not found")
    out: Path = args.out.resolve()
    if (out / "run").exists() or any(out.glob("state-S*")):
        raise InputError(out, "holds an earlier deployment (its sites' ledgers would carry "
                         "their spend)", "choose a new --out")
    t0 = time.monotonic()
    files = write_site_files(args, out / "sites")
    setup = time.monotonic() - t0
    ran = run_deployment(args, out, files)
    doc = {
        "settings": {"data": str(args.data), "format": args.format, "sites": args.sites,
                     "partition": args.partition, "epsilon": args.epsilon,
                     "rounds": args.rounds, "threads": args.threads,
                     "config": str(args.config) if args.config else None},
        "setup_seconds": round(setup, 3), **ran,
        **measure(out, [f"S{k}" for k in range(1, args.sites + 1)]),
    }
    text = markdown(doc)
    write_json(out / "bench_deploy.json", doc)
    with atomic_open(out / "bench_deploy.md", "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text)
    if ran["server_rc"] != 0 or doc["status"] != "completed":
        log.error("the deployment did not complete (ehr-server rc %s, status %s); logs in %s",
                  ran["server_rc"], doc["status"], out / "logs")
        return 1
    return 0


@cli_errors
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return bench(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
