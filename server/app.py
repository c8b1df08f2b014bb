"""The coordinator's Flower ServerApp (Message API): moves messages, the logic is elsewhere.

Rounds are driven here with ``grid.push_messages`` / ``grid.pull_messages`` and a per-round
timeout (so a dead or silent site never stalls the federation), and the plain
``server.coordinator.Coordinator`` aggregates, checkpoints and writes the outputs.

Flow: wait for ``min_sites`` nodes -> ``query`` (vocabulary, counts) -> rounds of ``train``
(weights + EMA + plan out; update + privacy report or refusal back) -> global model and
synthetic sample -> ``evaluate`` (the sample out; each site's aggregate figures back).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.atomic import write_json
from server.aggregation import SiteUpdate
from server.coordinator import Coordinator
from server.settings import RunSettings

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.getLogger("flwr").setLevel(logging.INFO)
    settings = RunSettings.from_run_config(dict(context.run_config))
    try:
        coord = Coordinator(settings)
    except BaseException as err:
        write_json(Path(settings.out_dir) / "status.json",
                   {"status": "failed", "detail": f"{type(err).__name__}: {err}",
                    "launch_id": settings.launch_id})
        raise
    try:
        run_federation(grid, coord)
    except BaseException as err:
        coord.write_status("failed", f"{type(err).__name__}: {err}")
        raise
    coord.write_status("completed")


def run_federation(grid: Grid, coord: Coordinator) -> None:
    s = coord.settings
    nodes = wait_for_nodes(grid, s.min_sites, s.wait_sites_timeout, coord)
    vocab = query_sites(grid, nodes, coord)
    coord.start(vocab, coord.site_counts)
    rnd = coord.next_round
    attempts = 0
    while rnd <= s.rounds:
        ok = train_round(grid, coord, rnd)
        if ok:
            rnd, attempts = rnd + 1, 0
            continue
        attempts += 1
        if attempts >= s.max_round_attempts:
            raise RuntimeError(f"round {rnd}: fewer than {s.min_sites} sites answered in "
                               f"{attempts} attempts")
        wait_for_nodes(grid, s.min_sites, s.wait_sites_timeout, coord)
    coord.progress(stage="sampling", round=s.rounds)
    synth = coord.write_model_and_sample()
    coord.write_privacy()
    evaluate_sites(grid, coord, synth)


def wait_for_nodes(grid: Grid, k: int, timeout: float, coord: Coordinator) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        coord.progress(stage="waiting for sites", connected=len(nodes), needed=k)
        if len(nodes) >= k:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {k} sites connected within {timeout:.0f}s")
        time.sleep(1.0)


def exchange(
    grid: Grid, messages: list[Message], timeout: float,
    on_reply: Callable[[int, int], None] | None = None,
) -> list[Message]:
    """Push messages and pull replies until all are in or ``timeout`` seconds passed."""
    ids = list(grid.push_messages(messages))
    node_of = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages, strict=True)}
    pending = set(ids)
    total = len(pending)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        got = []
        for msg in grid.pull_messages(list(pending)):
            mid = msg.metadata.reply_to_message_id
            if mid not in pending:  # e.g. a second error for a message already closed
                continue
            pending.discard(mid)
            if msg.has_error():
                log.warning("node %s: %s", node_of.get(mid), msg.error.reason[:200])
            got.append(msg)
        replies.extend(got)
        if got and on_reply is not None:
            on_reply(len(replies), total)
        if pending:
            time.sleep(0.5)
    return replies


def _message(grid: Grid, node: int, mtype: str, content: RecordDict, ttl: float) -> Message:
    return Message(content=content, dst_node_id=node, message_type=mtype, ttl=ttl)


def query_sites(grid: Grid, nodes: list[int], coord: Coordinator) -> dict[str, Any]:
    """Ask every site for its vocabulary (public code list) and counts; they must agree."""
    s = coord.settings
    plan = ConfigRecord({"plan": coord.plan(0)})
    msgs = [_message(grid, n, "query", RecordDict({"plan": plan}), s.round_timeout)
            for n in nodes]
    replies = [r for r in exchange(grid, msgs, s.round_timeout) if not r.has_error()]
    if len(replies) < s.min_sites:
        raise RuntimeError(f"only {len(replies)} of {s.min_sites} sites answered the query")
    vocabs = {}
    counts: list[tuple[np.ndarray, float, int]] = []
    for r in replies:
        info = r.content["site"]
        site = str(info["site"])
        vocabs[site] = json.loads(str(info["vocab"]))
        if info.get("privacy"):
            coord.site_reports[site] = json.loads(str(info["privacy"]))
        if str(info.get("status")) == "refused":
            log.warning("site %s refused the counts: %s", site, info.get("reason"))
        if "counts" in r.content:
            arr = next(iter(r.content["counts"].values())).numpy()
            m = r.content["metrics"]
            counts.append((arr.astype(np.float64), float(m["count_noise_std"]),
                           int(m["n_train"])))
    first = next(iter(vocabs.values()))
    for site, v in vocabs.items():
        if v["codes"] != first["codes"]:
            raise RuntimeError(f"site {site} uses another vocabulary ({v.get('name')}, "
                               f"{len(v['codes'])} codes) than {first.get('name')}")
    log.info("%d sites answered the query: %s", len(vocabs), ", ".join(sorted(vocabs)))
    coord.site_counts = [c for c in counts if len(c[0]) == len(first["codes"])]
    return first


def _state_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    import torch

    return ArrayRecord(torch_state_dict={k: torch.from_numpy(np.ascontiguousarray(v))
                                         for k, v in state.items()})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def train_round(grid: Grid, coord: Coordinator, rnd: int) -> bool:
    s = coord.settings
    nodes = list(grid.get_node_ids())
    weights = _state_record(coord.weights)
    ema = _state_record(coord.ema) if coord.ema is not None else None
    plan = ConfigRecord({"plan": coord.plan(rnd)})
    msgs = []
    for node in nodes:
        rec: dict[str, Any] = {"weights": weights, "plan": plan}
        if ema is not None:
            rec["ema"] = ema
        msgs.append(_message(grid, node, "train", RecordDict(rec), s.round_timeout))
    bytes_out = len(nodes) * (weights.count_bytes() + (ema.count_bytes() if ema else 0))
    coord.progress(stage="training", round=rnd, answered=0, expected=len(nodes))
    t0 = time.monotonic()
    replies = exchange(grid, msgs, s.round_timeout, lambda got, total: coord.progress(
        stage="training", round=rnd, answered=got, expected=total))
    updates: list[SiteUpdate] = []
    refusals: dict[str, str] = {}
    failures: list[str] = []
    reports: dict[str, dict[str, Any]] = {}
    bytes_in = 0
    for r in replies:
        if r.has_error():
            failures.append(f"node {r.metadata.src_node_id}: {r.error.reason[:300]}")
            continue
        try:
            info = r.content["site"]
            site = str(info["site"])
            privacy = json.loads(str(info["privacy"])) if info.get("privacy") else {}
            if privacy:
                reports[site] = privacy
            if str(info["status"]) != "ok":
                refusals[site] = str(info.get("reason", ""))
                continue
            metrics = {k: float(v) for k, v in r.content["metrics"].items()}
            w = _numpy(r.content["weights"])
            e = _numpy(r.content["ema"]) if "ema" in r.content else None
            bytes_in += r.content["weights"].count_bytes()
            weight = float(metrics.get("planned_examples", metrics.get("steps", 0.0)))
            updates.append(SiteUpdate(site, w, weight, e, metrics))
        except (KeyError, ValueError, TypeError) as err:
            failures.append(f"node {r.metadata.src_node_id}: malformed reply ({err})")
    missing = len(nodes) - len(replies)
    if missing:
        failures.append(f"{missing} site(s) did not answer within {s.round_timeout:g}s")
    for f in failures:
        log.warning("round %d: %s", rnd, f)
    return coord.finish_round(rnd, updates, refusals, failures, len(nodes),
                              time.monotonic() - t0, reports, bytes_out, bytes_in)


def evaluate_sites(grid: Grid, coord: Coordinator, synth: np.ndarray) -> None:
    """Send the synthetic sample; each site returns aggregate figures on its held-out part."""
    s = coord.settings
    nodes = list(grid.get_node_ids())
    coord.progress(stage="evaluating", round=s.rounds, answered=0, expected=len(nodes))
    sample = ArrayRecord(numpy_ndarrays=[np.ascontiguousarray(synth, dtype=np.uint8)])
    record = ArrayRecord()
    record["X"] = next(iter(sample.values()))
    content: dict[str, Any] = {"synthetic": record}
    if s.audit:  # the sites audit the released model itself (white-box parts need the weights)
        from common.model.store import model_parts

        conf, state, step = model_parts(coord.generator)
        content["model"] = ArrayRecord(torch_state_dict=state)
        content["model_info"] = ConfigRecord({
            "config": json.dumps(conf), "output_step": json.dumps(step),
            "plan": coord.plan(s.rounds)})
    msgs = [_message(grid, n, "evaluate", RecordDict(content), s.round_timeout) for n in nodes]
    per_site: dict[str, dict[str, Any]] = {}
    audits: dict[str, dict[str, Any]] = {}
    for r in exchange(grid, msgs, s.round_timeout):
        if r.has_error():
            log.warning("evaluation failed at node %s: %s", r.metadata.src_node_id,
                        r.error.reason[:300])
            continue
        site = str(r.content["site"]["site"])
        figures: dict[str, Any] = {k: float(v) for k, v in r.content["metrics"].items()}
        figures.update({k: str(v) for k, v in r.content["site"].items()
                        if k not in ("site", "audit")})
        per_site[site] = figures
        if "audit" in r.content["site"]:
            try:
                audits[site] = json.loads(str(r.content["site"]["audit"]))
            except ValueError as err:
                log.warning("site %s sent an unreadable audit: %s", site, err)
    coord.write_evaluation(dict(sorted(per_site.items())))
    if s.audit:
        if audits:
            coord.write_audit(audits)
        else:
            log.warning("no site returned an audit")
