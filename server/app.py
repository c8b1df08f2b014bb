"""The coordinator's Flower ServerApp (Message API): moves messages, the logic is elsewhere.

Rounds are driven here with ``grid.push_messages`` / ``grid.pull_messages`` and a per-round
timeout (so a dead or silent site never stalls the federation), and the plain
``server.coordinator.Coordinator`` aggregates, checkpoints and writes the outputs.

Flow: wait for ``min_sites`` nodes -> ``query`` (vocabulary, counts) -> rounds of ``train``
(weights + EMA + plan out; update + privacy report or refusal back) -> global model and
synthetic sample -> ``evaluate`` (the released model out; each site evaluates it on its own and
keeps the figures; only its name and a status come back).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsynth.common.atomic import write_json
from fedsynth.federation.protocol import (
    EVALUATE,
    MARGINALS,
    ONE_WAY,
    PAIRS,
    QUERY,
    TRAIN,
    EvaluateReply,
    EvaluateRequest,
    MarginalsReply,
    MarginalsRequest,
    QueryReply,
    TrainReply,
    TrainRequest,
    check_reply,
    describe,
    pack_state,
    query_request,
)
from fedsynth.server.coordinator import Coordinator
from fedsynth.server.settings import RunSettings

log = logging.getLogger(__name__)
app = ServerApp()
# tests: one JSON line per received reply (its message type and full structure) to this file
CAPTURE_ENV = "FEDSYNTH_CAPTURE_REPLIES"


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
    if s.generator == "mst":
        run_mst(grid, coord, vocab)
        return
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
    coord.write_model_and_sample()  # OUT/model and OUT/synthetic.csv
    coord.write_privacy()
    t0 = time.monotonic()
    evaluate_sites(grid, coord)
    coord.stage_seconds["evaluation"] = round(time.monotonic() - t0, 2)


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
    type_of = {mid: m.metadata.message_type for mid, m in zip(ids, messages, strict=True)}
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
            else:
                _capture(type_of[mid], msg)
            got.append(msg)
        replies.extend(got)
        if got and on_reply is not None:
            on_reply(len(replies), total)
        if pending:
            time.sleep(0.5)
    return replies


def _capture(message_type: str, msg: Message) -> None:
    """With ``FEDSYNTH_CAPTURE_REPLIES=PATH``: append the reply's full structure (record names
    and kinds, keys, config values and types, array shapes and dtypes) as one JSON line."""
    path = os.environ.get(CAPTURE_ENV)
    if path:
        line = json.dumps({"message_type": message_type, "node": msg.metadata.src_node_id,
                           "content": describe(msg.content)}, default=str)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def conforming(replies: list[Message], message_type: str) -> tuple[list[Message], list[str]]:
    """(the replies without error that conform to the declared schema, one line per other
    reply). A reply with any undeclared record or key is dropped whole, never read."""
    ok, dropped = [], []
    for r in replies:
        node = r.metadata.src_node_id
        if r.has_error():
            dropped.append(f"node {node}: {r.error.reason[:300]}")
            continue
        problems = check_reply(message_type, r.content)
        if problems:
            dropped.append(f"node {node}: {message_type} reply dropped, not the declared "
                           f"schema: {'; '.join(problems[:5])}")
            continue
        ok.append(r)
    return ok, dropped


def _message(grid: Grid, node: int, mtype: str, content: RecordDict, ttl: float) -> Message:
    return Message(content=content, dst_node_id=node, message_type=mtype, ttl=ttl)


def query_sites(grid: Grid, nodes: list[int], coord: Coordinator) -> dict[str, Any]:
    """Ask every site for its vocabulary (public code list) and DP counts; they must agree."""
    s = coord.settings
    msgs = [_message(grid, n, QUERY, query_request(coord.plan(0)), s.round_timeout)
            for n in nodes]
    replies, dropped = conforming(exchange(grid, msgs, s.round_timeout), QUERY)
    for line in dropped:
        log.warning("query: %s", line)
    if len(replies) < s.min_sites:
        raise RuntimeError(f"only {len(replies)} of {s.min_sites} sites answered the query")
    malformed: list[str] = []
    unpacked = [reply for _, reply in unpack_replies(replies, QueryReply, coord, malformed)]
    for line in malformed:
        log.warning("query: %s", line)
    return coord.receive_query(unpacked)


def unpack_replies(replies: list[Message], reply_type: Any, coord: Coordinator,
                   failures: list[str]) -> list[tuple[Message, Any]]:
    """(message, ``reply_type.unpack`` of it) for each reply that unpacks, noting which site
    each node is; one line in ``failures`` per malformed reply."""
    out: list[tuple[Message, Any]] = []
    for r in replies:
        try:
            out.append((r, reply_type.unpack(r.content)))
        except (KeyError, ValueError, TypeError) as err:
            failures.append(f"node {r.metadata.src_node_id}: malformed reply ({err})")
            continue
        coord.node_sites[r.metadata.src_node_id] = out[-1][1].site
    return out


def train_round(grid: Grid, coord: Coordinator, rnd: int) -> bool:
    s = coord.settings
    nodes = list(grid.get_node_ids())
    weights = pack_state(coord.weights)
    ema = pack_state(coord.ema) if coord.ema is not None else None
    msgs = []
    for node in nodes:  # a site the coordinator refused gets the reason in its plan
        req = TrainRequest(coord.plan(rnd, coord.node_sites.get(node)), weights, ema)
        msgs.append(_message(grid, node, TRAIN, req.pack(), s.round_timeout))
    bytes_out = len(nodes) * (weights.count_bytes() + (ema.count_bytes() if ema else 0))
    coord.progress(stage="training", round=rnd, answered=0, expected=len(nodes))
    t0 = time.monotonic()
    received = exchange(grid, msgs, s.round_timeout, lambda got, total: coord.progress(
        stage="training", round=rnd, answered=got, expected=total))
    replies, failures = conforming(received, TRAIN)
    pairs = unpack_replies(replies, TrainReply, coord, failures)
    bytes_in = sum(rec.count_bytes() for r, _ in pairs for rec in r.content.array_records.values())
    updates, refusals, reports = coord.receive_train([reply for _, reply in pairs])
    missing = len(nodes) - len(received)
    if missing:
        failures.append(f"{missing} site(s) did not answer within {s.round_timeout:g}s")
    for f in failures:
        log.warning("round %d: %s", rnd, f)
    return coord.finish_round(rnd, updates, refusals, failures, len(nodes),
                              time.monotonic() - t0, reports, bytes_out, bytes_in)


def run_mst(grid: Grid, coord: Coordinator, vocab: dict[str, Any]) -> None:
    """Federated MST (``server.mst``): every site's noisy one-way marginals, the tree codes
    from their sum, every site's noisy co-counts of those codes, the tree model from their sum;
    then the outputs (``Coordinator.write_mst``)."""
    from fedsynth.server.mst import MSTSettings, fit_tree, sum_one_way, tree_codes

    s, cfg = coord.settings, MSTSettings()
    coord.vocab = vocab
    V = len(vocab["codes"])
    one = marginals_round(grid, coord, 1, MarginalsRequest(coord.plan(1), ONE_WAY,
                                                           cfg.max_codes, cfg.share), V)
    if len(one) < s.min_sites:
        raise RuntimeError(f"only {len(one)} of {s.min_sites} sites released their one-way "
                           "marginals")
    cols = tree_codes(sum_one_way(one), cfg)
    pairs: list[MarginalsReply] = []
    if len(cols) >= 2:
        pairs = marginals_round(grid, coord, 2, MarginalsRequest(
            coord.plan(2), PAIRS, cfg.max_codes, cfg.share, cols), len(cols) * (len(cols) - 1) // 2)
        both = {r.site for r in pairs}
        one = [r for r in one if r.site in both]
        if len(pairs) < s.min_sites:
            raise RuntimeError(f"only {len(pairs)} of {s.min_sites} sites released their "
                               "two-way marginals")
    coord.progress(stage="sampling", round=coord.next_round - 1)
    sampler, info = fit_tree(sum_one_way(one), cols, pairs, cfg)
    coord.write_mst(sampler, info)


def marginals_round(grid: Grid, coord: Coordinator, rnd: int, request: MarginalsRequest,
                    length: int) -> list[MarginalsReply]:
    """One federated MST stage: the request to every node (each with its own plan, carrying
    the coordinator's refusal where it refused the site), the usable releases back."""
    import dataclasses

    s = coord.settings
    nodes = list(grid.get_node_ids())
    msgs = [_message(grid, n, MARGINALS, dataclasses.replace(
        request, plan=coord.plan(rnd, coord.node_sites.get(n))).pack(), s.round_timeout)
        for n in nodes]
    coord.progress(stage=f"mst {request.stage}", round=rnd, answered=0, expected=len(nodes))
    t0 = time.monotonic()
    received = exchange(grid, msgs, s.round_timeout, lambda got, total: coord.progress(
        stage=f"mst {request.stage}", round=rnd, answered=got, expected=total))
    replies, failures = conforming(received, MARGINALS)
    unpacked = [reply for _, reply in unpack_replies(replies, MarginalsReply, coord, failures)]
    for f in failures:
        log.warning("mst %s: %s", request.stage, f)
    ok = coord.receive_marginals(unpacked, length)
    coord.log_stage(rnd, request.stage, [r.site for r in ok], len(nodes),
                    time.monotonic() - t0, failures)
    return ok


def evaluate_sites(grid: Grid, coord: Coordinator) -> None:
    """Send the released model (weights, config, output step: public DP releases) and the plan;
    each site evaluates it (and audits it, when asked) on its own and keeps the figures. The
    coordinator learns only which sites did: ``evaluation.json`` says where each keeps them.
    The coordinator's own sample is not sent: a site scores only what it draws."""
    from fedsynth.common.model.store import model_parts

    s = coord.settings
    nodes = list(grid.get_node_ids())
    coord.progress(stage="evaluating", round=s.rounds, answered=0, expected=len(nodes))
    req = EvaluateRequest.release(coord.plan(s.rounds), *model_parts(coord.generator),
                                  audit=bool(s.audit))
    msgs = [_message(grid, n, EVALUATE, req.pack(), s.round_timeout) for n in nodes]
    replies, dropped = conforming(exchange(grid, msgs, s.round_timeout), EVALUATE)
    for line in dropped:  # an error, or an undeclared key: dropped, never stored
        log.warning("evaluate: %s", line)
    statuses: dict[str, str] = {}
    for r in replies:
        reply = EvaluateReply.unpack(r.content)
        statuses[reply.site] = reply.status
    coord.write_evaluation(dict(sorted(statuses.items())))
