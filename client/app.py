"""The hospital's Flower ClientApp: unpack the message, call a plain function, pack the reply.

Site configuration comes from the SuperNode's node config (``ehr-client`` sets it):
``site``, ``data-path``, ``format``, ``state-dir``, ``epsilon-budget`` and optional ``holdout``,
``device``. Under the simulation engine the node config only has ``partition-id`` /
``num-partitions``; the run config then names the folder of simulated sites
(``sim-data-dir``: ``site<k>.npz`` written by ``ehr-simulate``; empty: a demo cohort), their
state folder (``sim-state-dir``) and budget (``sim-epsilon-budget``; 0: the server's target).

Message types: ``query`` (site name, vocabulary, counts), ``train`` (weights + EMA + plan ->
update + privacy report, or a refusal with its reason), ``evaluate`` (synthetic sample -> the
site's aggregate fidelity figures on its held-out patients).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site_training import (
    SiteData,
    SitePlan,
    evaluate_site,
    load_site_data,
    run_site_round,
    site_counts,
)

log = logging.getLogger(__name__)
app = ClientApp()


@dataclass
class SiteConfig:
    site: str
    data_path: str
    format: str
    state_dir: str
    epsilon_budget: float  # <= 0: the server's target epsilon
    holdout: float = 0.2
    device: str = "cpu"
    demo_sites: int = 0  # simulation without data: this partition of a demo cohort
    demo_index: int = 0
    seed: int = 0
    threads: int = 0  # torch threads of this site's training; 0: min(2, CPU cores)


def site_config(context: Context) -> SiteConfig:
    """The site's settings from the node config (deployment) or the run config (simulation)."""
    node, run = context.node_config, context.run_config
    if "site" in node:
        return SiteConfig(
            site=str(node["site"]), data_path=str(node.get("data-path", "")),
            format=str(node.get("format", "auto")), state_dir=str(node.get("state-dir", ".")),
            epsilon_budget=float(node.get("epsilon-budget", 0.0)),
            holdout=float(node.get("holdout", run.get("holdout", 0.2))),
            device=str(node.get("device", "cpu")), seed=int(run.get("seed", 0)),
            threads=int(node.get("threads", 0)),
        )
    pid = int(node.get("partition-id", 0))
    n_parts = int(node.get("num-partitions", 1))
    data_dir = str(run.get("sim-data-dir", ""))
    state_root = str(run.get("sim-state-dir", "")) or os.path.join(
        tempfile.gettempdir(), "fedsynth-sim-state")
    return SiteConfig(
        site=f"site{pid}",
        data_path=os.path.join(data_dir, f"site{pid}.npz") if data_dir else "",
        format="npz", state_dir=os.path.join(state_root, f"site{pid}"),
        epsilon_budget=float(run.get("sim-epsilon-budget", 0.0)),
        holdout=float(run.get("holdout", 0.2)), device=str(run.get("device", "cpu")),
        demo_sites=0 if data_dir else n_parts, demo_index=pid, seed=int(run.get("seed", 0)),
    )


def load_data(cfg: SiteConfig) -> SiteData:
    if cfg.demo_sites:
        from common.data import demo_cohort, split_holdout

        cohort = demo_cohort(n_sites=cfg.demo_sites, seed=cfg.seed)
        sites = cohort.covariates["site"].astype(str).to_numpy()
        idx = np.flatnonzero(sites == pd.unique(sites)[cfg.demo_index])
        part = cohort.subset(idx)
        tr, ho = split_holdout(part, cfg.holdout, cfg.seed)
        return SiteData(cfg.site, tr.X, ho.X, cohort.vocab)
    return load_site_data(cfg.data_path, cfg.format, cfg.holdout, cfg.seed, cfg.site)


def _threads(threads: int = 0) -> None:
    """torch threads: the site's ``--threads``, else min(2, CPU cores). Several sites sharing
    one host must split its cores: oversubscribed, DP-SGD ran 30-40x slower (5 sites on 2
    cores, 2 threads each: 122-178 s for a local round that takes 3-5 s alone)."""
    import torch

    torch.set_num_threads(threads if threads > 0 else max(1, min(2, os.cpu_count() or 1)))
    logging.getLogger("flwr").setLevel(logging.INFO)  # opacus import sets it to DEBUG


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The site's vocabulary (a public code list) and its private code counts."""
    from privacy.ledger import Ledger

    cfg = site_config(context)
    data = load_data(cfg)
    plan = SitePlan.from_json(str(msg.content["plan"]["plan"]))
    budget = cfg.epsilon_budget if cfg.epsilon_budget > 0 else plan.target_epsilon
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(cfg.state_dir, cfg.site)
    res = site_counts(data, plan, ledger, budget, cfg.state_dir)
    records: dict[str, Any] = {
        "site": ConfigRecord({
            "site": cfg.site, "status": res.status, "reason": res.reason,
            "vocab": json.dumps({"name": data.vocab.name, "codes": list(data.vocab.codes)}),
            "privacy": json.dumps(res.privacy),
        }),
        "metrics": MetricRecord({"n_train": int(data.train.shape[0]),
                                 "n_holdout": int(data.holdout.shape[0]),
                                 "count_noise_std": float(res.noise_std)}),
    }
    if res.counts is not None:
        records["counts"] = ArrayRecord(numpy_ndarrays=[np.asarray(res.counts, np.float64)])
    return Message(content=RecordDict(records), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    from privacy.ledger import Ledger

    cfg = site_config(context)
    _threads(cfg.threads)
    plan = SitePlan.from_json(str(msg.content["plan"]["plan"]))
    data = load_data(cfg)
    budget = cfg.epsilon_budget if cfg.epsilon_budget > 0 else plan.target_epsilon
    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(cfg.state_dir, cfg.site)
    weights = _numpy(msg.content["weights"])
    ema = _numpy(msg.content["ema"]) if "ema" in msg.content else None
    upd = run_site_round(weights, ema, data, plan, ledger, budget, cfg.device)
    records: dict[str, Any] = {
        "site": ConfigRecord({"site": upd.site, "status": upd.status, "reason": upd.reason,
                              "privacy": json.dumps(upd.privacy)}),
        "metrics": MetricRecord({k: float(v) for k, v in upd.metrics.items()}),
    }
    if upd.weights is not None:
        records["weights"] = _array_record(upd.weights)
    if upd.ema is not None:
        records["ema"] = _array_record(upd.ema)
    return Message(content=RecordDict(records), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The site's fidelity figures on its held-out patients; with a model in the message (the
    coordinator's ``--audit``), also the site's privacy audit of it (aggregates only)."""
    cfg = site_config(context)
    _threads(cfg.threads)
    data = load_data(cfg)
    synth = msg.content["synthetic"]["X"].numpy().astype(np.uint8)
    figures = evaluate_site(synth, data, seed=cfg.seed)
    numbers = {k: float(v) for k, v in figures.items() if isinstance(v, int | float)}
    text = {k: str(v) for k, v in figures.items() if not isinstance(v, int | float)}
    site = {"site": cfg.site, **text}
    if "model" in msg.content:
        site["audit"] = json.dumps(_audit(msg, cfg, data, synth))
    content = RecordDict({"metrics": MetricRecord(numbers), "site": ConfigRecord(site)})
    return Message(content=content, reply_to=msg)


def _audit(msg: Message, cfg: SiteConfig, data: SiteData, synth: np.ndarray) -> dict[str, Any]:
    from client.site_training import audit_at_site
    from common.model.store import assemble
    from privacy.ledger import Ledger

    info = msg.content["model_info"]
    plan = SitePlan.from_json(str(info["plan"]))
    state = dict(msg.content["model"].to_torch_state_dict())
    gen = assemble(json.loads(str(info["config"])), state,
                   json.loads(str(info["output_step"])), data.vocab, "cpu",
                   sources=("coordinator's model", data.vocab.name, "coordinator's weights",
                            "coordinator's output step"))
    budget = cfg.epsilon_budget if cfg.epsilon_budget > 0 else plan.target_epsilon
    ledger = Ledger.open(cfg.state_dir, cfg.site)
    return audit_at_site(gen, synth, data, plan, ledger, budget)


def _array_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    import torch

    return ArrayRecord(torch_state_dict={k: torch.from_numpy(np.ascontiguousarray(v))
                                         for k, v in state.items()})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}
