"""The hospital's Flower ClientApp: unpack the message, hand it to the site, pack the reply.

Where the node config names a resident site worker (``worker-socket``, set by ``ehr-client``:
``client.worker``), each handler only forwards the unpacked request to it and packs its answer:
Flower 1.41 starts a new ClientApp process for every message, and this module imports neither
torch nor Opacus, so that process starts in about the time ``flwr`` itself takes to import
(issue 18). Without a worker (``ehr-simulate``: Ray actors keep the modules loaded anyway) the
handlers call ``client.site_service.SiteService`` directly. Site settings:
``client.site_service.site_config_from``.

Message types: ``query`` (site name, vocabulary, counts), ``query.marginals`` (federated MST:
noisy one- or two-way marginals), ``train`` (weights + EMA + plan ->
update + privacy report, or a refusal with its reason), ``evaluate`` (the released model ->
the site evaluates, and audits when asked, on its own; the figures stay in its state folder,
the reply is the site's name and a constant status; ``client.site_evaluation``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedsynth.client.site_service import (
    RUN_KEYS,
    Evaluation,
    SiteConfig,
    SiteService,
    evaluation_settings,
    site_config_from,
)
from fedsynth.client.worker_ipc import (
    EVALUATE,
    MARGINALS,
    QUERY,
    TRAIN,
    WorkerClient,
    group,
    grouped,
)
from fedsynth.federation.protocol import (
    EvaluateReply,
    EvaluateRequest,
    MarginalsReply,
    MarginalsRequest,
    QueryReply,
    SitePlan,
    TrainReply,
    TrainRequest,
    unpack_state,
)

log = logging.getLogger(__name__)
app = ClientApp()
WORKER_TIMEOUT = 3600.0  # seconds to wait for the worker when the message has no TTL
__all__ = ["SiteConfig", "app", "site_config"]


def site_config(context: Context) -> SiteConfig:
    """The site's settings from the node config (deployment) or the run config (simulation)."""
    return site_config_from(context.node_config, context.run_config)


@dataclass
class _Counts:
    """The counts release as the worker returned it (``privacy.counts.NoisyCounts``' fields,
    without importing scipy here)."""

    counts: np.ndarray
    size: float
    noise_std: float


def _forward(msg: Message, context: Context, op: str, header: Mapping[str, Any],
             arrays: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The worker's (reply, arrays), or None when this node has no worker."""
    client = WorkerClient.from_node_config(context.node_config)
    if client is None:
        return None
    run = {k: context.run_config[k] for k in RUN_KEYS if k in context.run_config}
    ttl = float(msg.metadata.ttl or 0)
    reply, out = client.call(op, {"run": run, **header}, arrays,
                             timeout=ttl if ttl > 0 else WORKER_TIMEOUT)
    return dict(reply["reply"]), out


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The site's vocabulary (a public code list) and its DP release of code counts and size
    (``federation.protocol.QueryReply``)."""
    plan = SitePlan.unpack(msg.content)
    got = _forward(msg, context, QUERY, {"plan": plan.to_json()}, {})
    if got is None:
        reply = SiteService().query(site_config(context), plan)
    else:
        r, arrays = got
        counts = None
        if "counts" in arrays:
            counts = _Counts(arrays["counts"], float(r["counts_size"]),
                             float(r["counts_noise_std"]))
        reply = QueryReply(r["site"], r["status"], r["reason"], r["vocab_name"], r["codes"],
                           r["privacy"], r["ledger_head"], counts)
    return Message(content=reply.pack(), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One DP-SGD round at the site (``client.site_training.run_site_round``); the reply is
    ``federation.protocol.TrainReply``: the update, the EMA, the public report, the signed
    ledger head, or a refusal with its reason."""
    req = TrainRequest.unpack(msg.content)
    weights = unpack_state(req.weights)
    ema = unpack_state(req.ema) if req.ema is not None else None
    got = _forward(msg, context, TRAIN, {"plan": req.plan.to_json()},
                   {**grouped("weights", weights), **grouped("ema", ema)})
    if got is None:
        reply = SiteService().train(site_config(context), req.plan, weights, ema)
    else:
        r, arrays = got
        reply = TrainReply(r["site"], r["status"], r["reason"], group(arrays, "weights"),
                           group(arrays, "ema"), int(r["steps"]), r["privacy"],
                           r["ledger_head"])
    return Message(content=reply.pack(), reply_to=msg)


@app.query("marginals")
def marginals(msg: Message, context: Context) -> Message:
    """Federated MST (message type ``query.marginals``): the site's noisy one- or two-way
    marginals, recorded in its ledger first (``client.site_marginals``); the reply is
    ``federation.protocol.MarginalsReply``."""
    req = MarginalsRequest.unpack(msg.content)
    got = _forward(msg, context, MARGINALS, {
        "plan": req.plan.to_json(), "stage": req.stage, "max_codes": req.max_codes,
        "share": req.share, "cols": list(req.cols)}, {})
    if got is None:
        reply = SiteService().marginals(site_config(context), req)
    else:
        r, arrays = got
        reply = MarginalsReply(r["site"], r["status"], r["reason"], arrays.get("counts"),
                               r["size"], float(r["noise_std"]), r["privacy"],
                               r["ledger_head"])
    return Message(content=reply.pack(), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The site evaluates the released model itself and keeps the figures (and, when the run
    is audited, its privacy audit) in its state folder and on its console; the reply carries
    only the site's name and a constant status. The message brings the released model (weights,
    config, output step: public DP releases) and the plan (run id, for the file names and the
    ledger); whatever else it carries (e.g. a matrix to score) is ignored: the site draws its
    own sample, of its own size (``eval-samples``). Once per run (``client.site_evaluation``)."""
    req = EvaluateRequest.unpack(msg.content)
    model = {k: arr.numpy() for k, arr in req.model.items()}
    got = _forward(msg, context, EVALUATE, {
        "plan": req.plan.to_json(), "config_json": req.config_json,
        "output_step_json": req.output_step_json, "audit_requested": bool(req.audit)},
        grouped("model", model))
    if got is None:
        conf, state, step = req.model_parts()
        samples, audit = evaluation_settings(context.node_config, context.run_config,
                                             req.audit)
        reply = SiteService().evaluate(site_config(context), Evaluation(
            req.plan, conf, state, step, samples, audit))
    else:
        reply = EvaluateReply(str(got[0]["site"]), str(got[0]["status"]))
    return Message(content=reply.pack(), reply_to=msg)

