"""What the site does for each coordinator message, as plain calls on typed requests and replies
(``federation.protocol``), with no Flower message in sight.

Two callers: the ClientApp (``client.app``) calls ``SiteService`` directly in simulation, and the
resident site worker (``client.worker``) calls it for every message a deployed site receives, so
torch, Opacus and the site's data stay loaded across messages and rounds (issue 18: a fresh
ClientApp process per message re-imported them every time). The heavy imports are inside the
methods: importing this module is cheap.

Site configuration comes from the SuperNode's node config (``ehr-client`` sets it): ``site``,
``data-path``, ``format``, ``state-dir``, ``epsilon-budget`` and optional ``holdout``,
``device``. Under the simulation engine the node config only has ``partition-id`` /
``num-partitions``; the run config then names the folder of simulated sites
(``sim-data-dir``: ``site<k>.npz`` written by ``ehr-simulate``; empty: a demo cohort), their
state folder (``sim-state-dir``) and budget (``sim-epsilon-budget``; 0: the server's target).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.federation.protocol import (
    EvaluateReply,
    MarginalsReply,
    MarginalsRequest,
    QueryReply,
    SitePlan,
    TrainReply,
)

log = logging.getLogger(__name__)
State = dict[str, np.ndarray]
RUN_KEYS = ("seed", "holdout")  # the run config values a deployed site's settings read


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
    delta: float = 0.0  # the site's own delta; <= 0: default_delta(n) (a new ledger)
    # the enrolment key (ehr-client --auth-key, node config ``signing-key``) signs the ledger
    # heads; "": the state folder's site key (privacy.witness.SiteKey.load_or_create)
    auth_key: str = ""
    columns: str = "auto"  # whole records or codes (common.data.columns)
    schema: str = ""  # whole records: a built-in schema name or a TOML file; "": the format's

    def budget(self, plan: SitePlan) -> float:
        """The site's epsilon budget: its own, else (none configured) the plan's target."""
        return self.epsilon_budget if self.epsilon_budget > 0 else plan.target_epsilon


def site_config_from(node: Mapping[str, Any], run: Mapping[str, Any]) -> SiteConfig:
    """The site's settings from the node config (deployment) or the run config (simulation)."""
    if "site" in node:
        return SiteConfig(
            site=str(node["site"]), data_path=str(node.get("data-path", "")),
            format=str(node.get("format", "auto")), state_dir=str(node.get("state-dir", ".")),
            epsilon_budget=float(node.get("epsilon-budget", 0.0)),
            holdout=float(node.get("holdout", run.get("holdout", 0.2))),
            device=str(node.get("device", "cpu")), seed=int(run.get("seed", 0)),
            threads=int(node.get("threads", 0)), delta=float(node.get("delta", 0.0)),
            auth_key=str(node.get("signing-key", "")),
            columns=str(node.get("columns", "auto")), schema=str(node.get("schema", "")),
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
        delta=float(run.get("sim-delta", 0.0)),
    )


def set_threads(threads: int = 0) -> None:
    """torch threads: the site's ``--threads``, else min(2, CPU cores). Several sites sharing
    one host must split its cores: oversubscribed, DP-SGD ran 30-40x slower (5 sites on 2
    cores, 2 threads each: 122-178 s for a local round that takes 3-5 s alone)."""
    import torch

    torch.set_num_threads(threads if threads > 0 else max(1, min(2, os.cpu_count() or 1)))
    logging.getLogger("flwr").setLevel(logging.INFO)  # opacus import sets it to DEBUG


def evaluation_settings(node: Mapping[str, Any], run: Mapping[str, Any],
                        requested: bool) -> tuple[int, bool]:
    """(synthetic patients to draw, whether to audit): the site's own node config
    (``eval-samples``, ``audit``), in simulation the operator's run config (``sim-eval-samples``,
    ``sim-audit``); the coordinator's ``audit`` request only adds a local audit (its result
    stays here too)."""
    from fedsynth.client.site_evaluation import EVAL_SAMPLES

    if "site" in node:
        samples = int(node.get("eval-samples", EVAL_SAMPLES))
        audit = bool(node.get("audit", False))
    else:
        samples = int(run.get("sim-eval-samples", EVAL_SAMPLES))
        audit = bool(run.get("sim-audit", False))
    return samples, audit or requested


@dataclass
class Evaluation:
    """What ``SiteService.evaluate`` needs besides the site's settings: the plan, the released
    model's parts (config, torch state dict or numpy arrays, output step: public DP releases,
    unchecked until ``assemble``) and the site's own evaluation settings."""

    plan: SitePlan
    config: Any
    state: Mapping[str, Any]
    output_step: Any
    samples: int
    audit: bool


@dataclass
class SiteService:
    """The site's handlers. ``keep_data``: the resident worker keeps each site's data loaded
    (keyed by everything that selects it); the ClientApp's direct path loads it per message,
    as before (a simulation's Ray actors keep the modules loaded anyway)."""

    keep_data: bool = False
    _data: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def data(self, cfg: SiteConfig) -> Any:
        """The site's data (``client.site_training.SiteData``)."""
        key = (cfg.data_path, cfg.format, cfg.holdout, cfg.seed, cfg.site, cfg.demo_sites,
               cfg.demo_index)
        if key in self._data:
            return self._data[key]
        data = load_data(cfg)
        if self.keep_data:
            self._data = {key: data}  # one site per worker: never more than one copy
        return data

    def query(self, cfg: SiteConfig, plan: SitePlan) -> QueryReply:
        """The site's vocabulary (a public code list) and its DP release of code counts and
        size (``federation.protocol.QueryReply``)."""
        from fedsynth.client.site_training import site_counts

        data = self.data(cfg)
        budget = cfg.budget(plan)
        reply = QueryReply(cfg.site, "refused", vocab_name=str(data.vocab.name),
                           codes=[str(c) for c in data.vocab.codes], schema=data.schema)
        ledger, reply.reason = open_ledger(cfg, data)
        if ledger is not None:
            res = site_counts(data, plan, ledger, budget, cfg.state_dir)
            reply.status, reply.reason, reply.privacy = res.status, res.reason, res.privacy
            reply.counts, reply.column_counts = res.counts, res.column_counts
            reply.ledger_head = signed_head(cfg, ledger)
        return reply

    def train(self, cfg: SiteConfig, plan: SitePlan, weights: State,
              ema: State | None) -> TrainReply:
        """One DP-SGD round at the site (``client.site_training.run_site_round``): the update,
        the EMA, the public report, the signed ledger head, or a refusal with its reason."""
        from fedsynth.client.site_training import run_site_round

        set_threads(cfg.threads)
        data = self.data(cfg)
        ledger, why = open_ledger(cfg, data)
        if ledger is None:
            return TrainReply(cfg.site, "refused", why)
        upd = run_site_round(weights, ema, data, plan, ledger, cfg.budget(plan), cfg.device)
        return TrainReply(upd.site, upd.status, upd.reason, upd.weights, upd.ema, upd.steps,
                          upd.privacy, signed_head(cfg, ledger))

    def marginals(self, cfg: SiteConfig, req: MarginalsRequest) -> MarginalsReply:
        """Federated MST: the site's noisy one- or two-way marginals, recorded in its ledger
        first (``client.site_marginals``), or a refusal with its reason."""
        from fedsynth.client.site_marginals import site_marginals

        data = self.data(cfg)
        ledger, why = open_ledger(cfg, data)
        if ledger is None:
            return MarginalsReply(cfg.site, "refused", why)
        r = site_marginals(data, req, ledger, cfg.budget(req.plan), cfg.state_dir)
        return MarginalsReply(r.site, r.status, r.reason, r.counts, r.size, r.noise_std,
                              r.privacy, signed_head(cfg, ledger))

    def evaluate(self, cfg: SiteConfig, req: Evaluation) -> EvaluateReply:
        """The site evaluates the released model itself and keeps the figures (and, when
        asked, its privacy audit) in its state folder; the reply is only its name and a
        constant status. Once per run (``client.site_evaluation``)."""
        from fedsynth.client.site_evaluation import KEPT, keep_evaluation, site_sample

        plan = req.plan
        if not evaluation_kept(cfg, plan.run_id, req.audit):
            set_threads(cfg.threads)
            data = self.data(cfg)
            gen = released_model(req, data)
            synth = site_sample(gen, req.samples, cfg.seed)
            keep_evaluation(gen, data, plan.run_id, cfg.state_dir, req.samples, cfg.seed,
                            synth=synth)
            if req.audit:
                _audit(gen, synth, cfg, data, plan)
        else:
            log.info("site %s: run %s already evaluated here; nothing recomputed", cfg.site,
                     plan.run_id)
        return EvaluateReply(cfg.site, KEPT)


def load_data(cfg: SiteConfig) -> Any:
    """The site's patients, split into training and held-out rows (``SiteData``)."""
    from fedsynth.client.site_training import SiteData, load_site_data

    if cfg.demo_sites:
        import pandas as pd

        from fedsynth.common.data import demo_cohort, split_holdout

        cohort = demo_cohort(n_sites=cfg.demo_sites, seed=cfg.seed)
        sites = cohort.covariates["site"].astype(str).to_numpy()
        idx = np.flatnonzero(sites == pd.unique(sites)[cfg.demo_index])
        part = cohort.subset(idx)
        tr, ho = split_holdout(part, cfg.holdout, cfg.seed)
        return SiteData(cfg.site, tr.X, ho.X, cohort.vocab)
    return load_site_data(cfg.data_path, cfg.format, cfg.holdout, cfg.seed, cfg.site,
                          cfg.columns, cfg.schema or None)


def open_ledger(cfg: SiteConfig, data: Any) -> tuple[Any, str]:
    """(the site's ledger at its own delta, "") or (None, why the site refuses: a damaged
    ledger, or a configured delta other than the one its ledger is pinned at). Opened for
    every message, never kept: ``ehr-client budget`` may change the ledger between two."""
    from fedsynth.client.site_training import open_site_ledger
    from fedsynth.privacy.ledger import LedgerCorrupted

    Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
    try:
        return open_site_ledger(cfg.state_dir, cfg.site, cfg.delta, int(data.train.shape[0])), ""
    except (LedgerCorrupted, ValueError) as err:  # DeltaFixed is a ValueError
        log.warning("site %s refuses: %s", cfg.site, err)
        return None, str(err)


def signed_head(cfg: SiteConfig, ledger: Any) -> dict[str, Any]:
    """The ledger head signed with the site's key: the enrolment key (``--auth-key``) where TLS
    is on, else ``STATE/site-key-<site>.pem`` (``privacy.witness``)."""
    from fedsynth.privacy.witness import SiteKey, sign_head

    if ledger is None:
        return {}
    key = (SiteKey.from_file(cfg.auth_key) if cfg.auth_key
           else SiteKey.load_or_create(cfg.state_dir, cfg.site))
    return sign_head(ledger.head(), key)


def evaluation_kept(cfg: SiteConfig, run_id: str, audit: bool) -> bool:
    """Whether this run's evaluation (and audit, when asked) is already kept at the site."""
    from fedsynth.client.site_evaluation import audit_dir, evaluation_path

    done = evaluation_path(cfg.state_dir, cfg.site, run_id).exists()
    if audit:
        done = done and (audit_dir(cfg.state_dir, cfg.site, run_id) / "audit.json").exists()
    return done


def released_model(req: Evaluation, data: Any) -> Any:
    """The released model from the message's parts, every part checked (``assemble``)."""
    import torch

    from fedsynth.common.model.store import assemble

    state = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v
             for k, v in req.state.items()}
    return assemble(req.config, state, req.output_step, data.vocab, "cpu",
                    sources=("coordinator's model", data.vocab.name, "coordinator's weights",
                             "coordinator's output step"))


def _audit(gen: Any, synth: np.ndarray, cfg: SiteConfig, data: Any, plan: SitePlan) -> None:
    """The site's privacy audit of the released model, kept in its state folder."""
    from fedsynth.client.site_evaluation import keep_audit
    from fedsynth.client.site_training import open_site_ledger

    budget = cfg.budget(plan)
    ledger = open_site_ledger(cfg.state_dir, cfg.site, cfg.delta, int(data.train.shape[0]))
    keep_audit(gen, synth, data, plan, ledger, budget, cfg.state_dir)
