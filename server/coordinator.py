"""The coordinator's state and the calls that change it (no Flower): ``server/app.py`` only
moves messages and calls these methods.

Each job is its own module and the ``Coordinator`` holds the state between them: the site plans
and what is checked of every site (``server.plan``), the aggregation (``server.aggregation``),
the checkpoint after every completed round (``server.checkpoint``) and the output files in
``OUT/`` (``server.report``: ``model/``, ``synthetic.csv``, ``privacy.json``, ``rounds.jsonl``,
``evaluation.json``, ``progress.json``, ``status.json``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.federation.protocol import MarginalsReply, QueryReply, SitePlan, TrainReply
from fedsynth.privacy.counts import NoisyCounts, combine, estimate
from fedsynth.privacy.record_counts import column_prevalence
from fedsynth.privacy.witness import Witness
from fedsynth.server import checkpoint, report
from fedsynth.server import plan as plans
from fedsynth.server.aggregation import SiteUpdate, aggregate, server_optimizer
from fedsynth.server.settings import RunSettings

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]


@dataclass
class Coordinator:
    settings: RunSettings
    weights: State = field(default_factory=dict)
    ema: State | None = None
    vocab: dict[str, Any] = field(default_factory=dict)
    next_round: int = 1
    site_reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    rounds_log: list[dict[str, Any]] = field(default_factory=list)
    rejections: dict[str, int] = field(default_factory=dict)
    kept: list[int] | None = None
    prevalence: list[float] | None = None
    site_counts: list[Any] = field(default_factory=list)  # privacy.counts.NoisyCounts per site
    # whole records: each site's column counts (privacy.record_counts), same sites and order
    column_counts: list[Any] = field(default_factory=list)
    count_info: dict[str, Any] = field(default_factory=dict)  # privacy.counts.estimate's info
    # what the coordinator can check itself, kept in its checkpoint: each site's noisy size
    # (its DP counts release: the FedAvg weight), the witness of the sites' signed ledger
    # heads, and the sites it refused (the next plan to such a site carries the reason)
    site_sizes: dict[str, float] = field(default_factory=dict)
    witness: Witness = field(default_factory=Witness)
    refused_sites: dict[str, str] = field(default_factory=dict)
    node_sites: dict[int, str] = field(default_factory=dict)  # Flower node id -> site (live)
    resumed: checkpoint.Checkpoint | None = field(default=None, repr=False)  # --resume: read once
    generator: Any = None  # the released model, once written (common.model.store.Generator)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # after the last round

    def __post_init__(self) -> None:
        self.out = Path(self.settings.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        cfg = self.settings.model_config()
        self.optimizer = server_optimizer(cfg.federation)
        if self.settings.resume and checkpoint.exists(self.ckpt_dir):
            # the witness must hold the last heads before the sites' query replies are checked
            self.resumed = checkpoint.load(self.ckpt_dir)
            meta = self.resumed.meta
            self.witness = Witness.from_dict(meta.get("witness"))
            self.site_sizes = {k: float(v) for k, v in meta.get("site_sizes", {}).items()}
            self.refused_sites = dict(meta.get("refused_sites", {}))

    # ------------------------------------------------------------------ state
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def start(self, vocab: dict[str, Any], counts: Sequence[NoisyCounts] | None = None) -> None:
        """Initialise the global model, or load the last checkpoint when resuming.

        ``counts``: each site's DP release (noisy per-code counts and size). Their sum (noise
        std sqrt(sum std_k^2), ``privacy.counts.combine``) gives, by ``privacy.counts.estimate``,
        the modelled codes (family-wise test over the vocabulary), every code's shrunk
        prevalence (the binary model's prior, the calibration target, the tail) and
        ``count_info`` (for privacy.json): post-processing of the sites' releases."""
        groups, ordinal = plans.record_columns(vocab)
        model = self.settings.config.setdefault("model", {})
        model["one_hot_groups"], model["ordinal_values"] = list(groups), list(ordinal)
        if self.resumed is not None:
            ck = self.resumed
            if ck.meta.get("vocab", {}).get("codes") != vocab.get("codes"):
                raise RuntimeError("the sites' vocabulary differs from the checkpoint's")
            self.weights, self.ema = ck.weights, ck.ema
            self.optimizer.state = ck.optimizer_state
            self.next_round = ck.round + 1
            self.site_reports = ck.meta.get("site_reports", {})
            self.rounds_log = ck.meta.get("rounds_log", [])
            self.rejections = ck.meta.get("rejections", {})
            self.settings.run_id = ck.run_id
            self.vocab = vocab
            self.kept = ck.meta.get("kept")
            self.prevalence = ck.meta.get("prevalence")
            self.count_info = dict(ck.meta.get("count_info") or {})
            log.info("resuming run %s after round %d", ck.run_id, ck.round)
            return
        self.kept, self.prevalence, self.count_info = None, None, {}
        if counts:
            est = estimate(combine(counts), tail_gate=self.settings.model_config().privacy
                           .count_tail_gate)
            g = int(sum(groups))  # whole records: the columns' tokens come first, all modelled
            self.kept = [*range(g), *(g + int(j) for j in est.kept)]
            self.prevalence = [float(p) for p in est.prevalence]
            self.count_info = {**est.info, "sites": len(counts)}
            if groups:
                if len(self.column_counts) != len(counts):
                    raise RuntimeError("whole records: a site sent code counts without column "
                                       "counts")
                columns = column_prevalence(combine(self.column_counts), groups)
                self.prevalence = [*(float(p) for p in columns), *self.prevalence]
                self.count_info["record_columns"] = {"columns": len(groups), "tokens": g,
                                                     "sites": len(self.column_counts)}
            log.info("private counts of %d sites: %d of %d codes modelled, %d in the tail",
                     len(counts), len(est.kept), len(est.prevalence),
                     est.info.get("tail_codes", 0))
        import torch

        from fedsynth.common.model.train import build_model

        cfg = self.settings.model_config()
        torch.manual_seed(self.settings.seed)
        n_model = len(self.kept) if self.kept is not None else len(vocab["codes"])
        prior = None
        if self.kept is not None and self.prevalence is not None:
            prior = np.asarray(self.prevalence)[self.kept]
        model = build_model(n_model, cfg.model, prior)
        self.weights = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        self.ema = {k: v.copy() for k, v in self.weights.items()}
        self.vocab = vocab
        self.next_round = 1

    def plan(self, rnd: int, site: str | None = None) -> SitePlan:
        """The round's plan for ``site`` (``server.plan.site_plan``), carrying the
        coordinator's refusal when it refused that site."""
        return plans.site_plan(self.settings, rnd, self.kept,
                               self.refused_sites.get(site, "") if site else "")

    # ------------------------------------------------------------------ site replies
    @property
    def max_delta(self) -> float:
        return plans.max_delta(self.settings)

    def pinned_key(self, site: str) -> str | None:
        return plans.pinned_key(self.settings.cert_dir, site)

    def check_site(self, site: str, signed_head: dict[str, Any], privacy: dict[str, Any],
                   status: str) -> str:
        """"" when the reply may be used; else why the coordinator refuses the site (one
        line, logged, kept, and sent in its next plan; ``server.plan.site_problem``)."""
        if site in self.refused_sites:
            return self.refused_sites[site]
        problem = plans.site_problem(self.witness, self.settings, site, signed_head, privacy,
                                     status)
        if problem:
            self.refused_sites[site] = problem
            log.warning("refused site %s: %s", site, problem)
        return problem

    def receive_query(self, replies: list[QueryReply]) -> dict[str, Any]:
        """The sites' query replies: their common vocabulary (returned), their DP counts
        releases (``site_counts``) and noisy sizes (``site_sizes``, the FedAvg weights) from
        every site the witness and the delta check accept."""
        vocabs: dict[str, dict[str, Any]] = {}
        counts: list[Any] = []
        columns: dict[str, Any] = {}
        for rep in replies:
            vocabs[rep.site] = {"name": rep.vocab_name, "codes": list(rep.codes),
                                "schema": rep.schema}
            if rep.column_counts is not None and np.all(np.isfinite(rep.column_counts.counts)) \
                    and rep.column_counts.noise_std > 0:
                columns[rep.site] = rep.column_counts
            if rep.privacy:
                self.site_reports[rep.site] = rep.privacy
            if self.check_site(rep.site, rep.ledger_head, rep.privacy, rep.status):
                continue
            if rep.status == "refused":
                log.warning("site %s refused the counts: %s", rep.site, rep.reason)
            if rep.counts is not None and np.all(np.isfinite(rep.counts.counts)) \
                    and np.isfinite(rep.counts.size) and rep.counts.noise_std > 0:
                counts.append((rep.site, rep.counts))
        first = plans.common_vocabulary(vocabs)
        log.info("%d sites answered the query: %s", len(vocabs), ", ".join(sorted(vocabs)))
        g = int(sum(plans.record_groups(first)))
        ok = [(site, c) for site, c in counts if len(c.counts) == len(first["codes"]) - g
              and (not g or (site in columns and len(columns[site].counts) == g))]
        self.site_counts = [c for _, c in ok]
        self.column_counts = [columns[site] for site, _ in ok] if g else []
        self.site_sizes.update({site: float(c.size) for site, c in ok})
        return first

    def site_weight(self, sites: list[str]) -> list[float]:
        """FedAvg weights (``server.plan.fedavg_weights``): the sites' noisy sizes."""
        return plans.fedavg_weights(self.site_sizes, sites)

    def receive_train(self, replies: list[TrainReply]
                      ) -> tuple[list[SiteUpdate], dict[str, str], dict[str, dict[str, Any]]]:
        """(updates to aggregate, refusals {site: reason}, privacy reports) from the sites'
        train replies; a site the coordinator refuses (``check_site``) is not aggregated."""
        updates: list[SiteUpdate] = []
        refusals: dict[str, str] = {}
        reports: dict[str, dict[str, Any]] = {}
        for rep in replies:
            if rep.privacy:
                reports[rep.site] = rep.privacy  # what a site spent counts, refused or not
            problem = self.check_site(rep.site, rep.ledger_head, rep.privacy, rep.status)
            if problem:
                refusals[rep.site] = f"refused by the coordinator: {problem}"
            elif rep.status != "ok":
                refusals[rep.site] = rep.reason
            elif rep.weights is None:
                refusals[rep.site] = "an ok reply without weights"
            else:
                updates.append(SiteUpdate(rep.site, rep.weights, 1.0, rep.ema, {}))
        for upd, w in zip(updates, self.site_weight([u.site for u in updates]), strict=True):
            upd.weight = w
        return updates, refusals, reports

    def receive_marginals(self, replies: list[MarginalsReply], length: int
                          ) -> list[MarginalsReply]:
        """Federated MST: the usable releases (``server.mst.usable``) of the sites the
        witness and the delta check accept; every site's report is kept (what it spent
        counts, refused or not)."""
        from fedsynth.server.mst import usable

        ok = []
        for rep in replies:
            if rep.privacy:
                self.site_reports[rep.site] = rep.privacy
            if self.check_site(rep.site, rep.ledger_head, rep.privacy, rep.status):
                continue
            if rep.status != "ok":
                log.warning("site %s refused the marginals: %s", rep.site, rep.reason)
            elif usable(rep, length):
                ok.append(rep)
            else:
                log.warning("site %s: marginals of the wrong shape or not finite; dropped",
                            rep.site)
        return ok

    def log_stage(self, rnd: int, stage: str, accepted: list[str], expected: int,
                  seconds: float, failures: list[str]) -> None:
        """One line of rounds.jsonl for a federated MST stage."""
        self.rounds_log.append({
            "round": rnd, "stage": f"mst {stage}", "time": time.time(),
            "status": "completed" if len(accepted) >= self.settings.min_sites else
            "insufficient", "seconds": round(seconds, 3), "sites_expected": expected,
            "accepted": accepted, "failed": failures, "epsilon_spent": self.epsilon_spent()})
        report.write_rounds(self.out, self.rounds_log)
        self.next_round = rnd + 1

    def write_mst(self, sampler: Any, info: dict[str, Any]) -> np.ndarray:
        """Federated MST's outputs: OUT/model/tree.json, synthetic.csv, privacy.json and an
        evaluation.json that says the sites were not asked to evaluate it."""
        synth = report.write_tree_and_sample(self.out, self.settings, self.vocab, sampler, info)
        report.write_privacy(self.out, self.settings, self.site_reports, self.next_round - 1,
                             None, {}, notes={
                                 "generator": "federated MST", "mst": info,
                                 "post_processing": "the sum of the sites' noisy marginals, "
                                 "the tree, its estimate and the sampler only see DP releases",
                                 "evaluation_note": "the sites were not asked to evaluate the "
                                 "tree model",
                                 "site_size_note": "a site's size reaches the coordinator only "
                                 "as the noisy size of its one-way marginals release (recorded "
                                 "in its ledger with them)"})
        report.write_evaluation(self.out, self.settings, {}, note=(
            "federated MST: the sites were not asked to evaluate the released tree model (the "
            "evaluate message carries a diffusion model); the simulation operator's pooled "
            "evaluation, when there is one, is below"))
        return synth

    # ------------------------------------------------------------------ rounds
    def finish_round(
        self, rnd: int, updates: list[SiteUpdate], refusals: dict[str, str],
        failures: list[str], expected: int, seconds: float,
        reports: dict[str, dict[str, Any]] | None = None, bytes_sent: int = 0,
        bytes_received: int = 0,
    ) -> bool:
        """Aggregate one round's answers. Returns False (model unchanged, no checkpoint) when
        fewer than ``min_sites`` updates were accepted."""
        fed = self.settings.model_config().federation
        result = aggregate(self.weights, self.ema, updates, self.optimizer,
                           self.settings.norm_factor, max_weight_ratio=fed.max_weight_ratio)
        # A site's report is its whole ledger: what it spent counts even if its update is
        # rejected or the round does not complete.
        self.site_reports.update(reports or {})
        for rej in result.rejected:
            self.rejections[rej.site] = self.rejections.get(rej.site, 0) + 1
            if self.rejections[rej.site] >= 2:
                log.warning("site %s has sent %d rejected updates", rej.site,
                            self.rejections[rej.site])
        ok = len(result.accepted) >= self.settings.min_sites
        entry = {
            "round": rnd,
            "status": "completed" if ok else "insufficient",
            "time": time.time(),
            "seconds": round(seconds, 3),
            "sites_expected": expected,
            "sites_answered": len(updates) + len(refusals),
            "accepted": [u.site for u in result.accepted],
            "rejected": {r.site: r.reason for r in result.rejected},
            "refused": refusals,
            "failed": failures,
            # only what the coordinator knows itself: no figure computed at a site
            "weights": {u.site: float(u.weight) for u in result.accepted},
            "update_norms": {u.site: float(u.metrics["update_norm"]) for u in result.accepted
                             if "update_norm" in u.metrics},
            "epsilon_spent": self.epsilon_spent(),
            "bytes_sent": bytes_sent,
            "bytes_received": bytes_received,
        }
        self.rounds_log.append(entry)
        report.write_rounds(self.out, self.rounds_log)
        if not ok:
            log.warning("round %d: %d accepted update(s) < min_sites %d", rnd,
                        len(result.accepted), self.settings.min_sites)
            return False
        self.weights, self.ema = result.weights, result.ema
        self.next_round = rnd + 1
        self.save_checkpoint(rnd)
        return True

    def epsilon_spent(self) -> dict[str, float]:
        return {site: float(r["epsilon"]) for site, r in sorted(self.site_reports.items())}

    def save_checkpoint(self, rnd: int) -> None:
        meta = {
            "settings": self.settings.__dict__,
            "vocab": self.vocab,
            "strategy": self.optimizer.strategy,
            "site_reports": self.site_reports,
            "rounds_log": self.rounds_log,
            "rejections": self.rejections,
            "kept": self.kept,
            "prevalence": self.prevalence,
            "count_info": self.count_info,
            "site_sizes": self.site_sizes,
            "witness": self.witness.to_dict(),
            "refused_sites": self.refused_sites,
        }
        checkpoint.save(self.ckpt_dir, checkpoint.Checkpoint(
            rnd, self.settings.run_id, self.weights, self.ema, self.optimizer.state, meta))

    def progress(self, **fields: Any) -> None:
        """Live state for the CLI's progress display."""
        report.write_progress(self.out, self.settings.rounds, self.epsilon_spent(), **fields)

    # ------------------------------------------------------------------ outputs
    def final_state(self) -> State:
        return self.ema if self.ema is not None else self.weights

    def write_model_and_sample(self) -> np.ndarray:
        """The global model (EMA weights) to OUT/model and OUT/synthetic.csv; returns the sample
        (``self.generator``: the released model, read back from OUT/model)."""
        self.generator, synth = report.write_model_and_sample(
            self.out, self.settings, self.vocab, self.kept, self.prevalence, self.final_state(),
            self.next_round - 1, self.stage_seconds)
        return synth

    def write_privacy(self) -> dict[str, Any]:
        """privacy.json: every site's report and the release guarantee (max over sites)."""
        return report.write_privacy(self.out, self.settings, self.site_reports,
                                    self.next_round - 1, self.kept, self.count_info)

    def write_evaluation(self, statuses: dict[str, str]) -> dict[str, Any]:
        """evaluation.json: where each site keeps its own evaluation (no figure)."""
        return report.write_evaluation(self.out, self.settings, statuses)

    def write_status(self, status: str, detail: str = "") -> None:
        report.write_status(self.out, self.settings, status, detail, self.next_round - 1,
                            self.stage_seconds)
