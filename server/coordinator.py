"""The coordinator's plain logic (no Flower): global model state, rounds, checkpoints, logs and
the run's outputs. ``server/app.py`` only moves messages and calls these methods.

Outputs in ``OUT/``: ``model/`` (the global model, EMA weights), ``synthetic.csv``,
``privacy.json`` (per-site reports; released epsilon = MAX over sites), ``rounds.jsonl`` (one
line per round), ``evaluation.json`` (per site and pooled), ``checkpoint/``, ``progress.json``
(live state for the CLI) and ``status.json`` (written last: completed or failed).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_open, write_json
from privacy.counts import keep_codes
from server import checkpoint
from server.aggregation import SiteUpdate, aggregate, server_optimizer
from server.settings import RunSettings

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]
RELEASE_ASSUMPTION = (
    "each patient's records are at one site only (sites hold disjoint patients): the released "
    "model is (max_k eps_k, max_k delta_k)-DP per patient by parallel composition; a patient "
    "present at several sites composes over those sites"
)


CALIBRATION_SAMPLES = 20_000


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
    site_counts: list[tuple[np.ndarray, float, int]] = field(default_factory=list)
    generator: Any = None  # the released model, once written (common.model.store.Generator)

    def __post_init__(self) -> None:
        self.out = Path(self.settings.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        cfg = self.settings.model_config()
        self.optimizer = server_optimizer(cfg.federation)

    # ------------------------------------------------------------------ state
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def start(self, vocab: dict[str, Any],
              counts: list[tuple[np.ndarray, float, int]] | None = None) -> None:
        """Initialise the global model, or load the last checkpoint when resuming.

        ``counts``: each site's (noisy per-code counts, their noise std, n_train). Their sum
        (noise std sqrt(sum std_k^2)) decides the modelled codes (noisy count above
        ``privacy.counts.KEEP_STD`` std) and their prevalences (the binary model's prior; the
        per-code output thresholds of the edm parameterisation): post-processing of the
        sites' Gaussian-mechanism releases."""
        if self.settings.resume and checkpoint.exists(self.ckpt_dir):
            ck = checkpoint.load(self.ckpt_dir)
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
            log.info("resuming run %s after round %d", ck.run_id, ck.round)
            return
        self.kept, self.prevalence = None, None
        if counts:
            total = np.sum([c for c, _, _ in counts], axis=0)
            std = float(np.sqrt(sum(s * s for _, s, _ in counts)))
            n = sum(k for _, _, k in counts)
            kept = keep_codes(total, std)
            self.kept = [int(j) for j in kept]
            self.prevalence = [float(p) for p in np.clip(total / max(1, n), 0.0, 1.0)]
            log.info("private counts of %d sites: %d of %d codes modelled", len(counts),
                     len(kept), len(total))
        import torch

        from common.model.train import build_model

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

    def plan(self, rnd: int) -> str:
        """The round's plan for the sites (JSON; read by client.site_training.SitePlan)."""
        s = self.settings
        return json.dumps({
            "round": rnd, "rounds": s.rounds, "run_id": s.run_id,
            "target_epsilon": s.epsilon, "config": s.config, "delta": s.delta, "seed": s.seed,
            "kept": self.kept,
        })

    # ------------------------------------------------------------------ rounds
    def finish_round(
        self, rnd: int, updates: list[SiteUpdate], refusals: dict[str, str],
        failures: list[str], expected: int, seconds: float,
        reports: dict[str, dict[str, Any]] | None = None, bytes_sent: int = 0,
        bytes_received: int = 0,
    ) -> bool:
        """Aggregate one round's answers. Returns False (model unchanged, no checkpoint) when
        fewer than ``min_sites`` updates were accepted."""
        result = aggregate(self.weights, self.ema, updates, self.optimizer,
                           self.settings.norm_factor)
        # A site's report is its whole ledger: what it spent counts even if its update is
        # rejected or the round does not complete.
        self.site_reports.update(reports or {})
        for rej in result.rejected:
            self.rejections[rej.site] = self.rejections.get(rej.site, 0) + 1
            if self.rejections[rej.site] >= 2:
                log.warning("site %s has sent %d rejected updates", rej.site,
                            self.rejections[rej.site])
        ok = len(result.accepted) >= self.settings.min_sites
        losses = [float(u.metrics.get("loss", np.nan)) for u in result.accepted]
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
            "mean_loss": float(np.nanmean(losses)) if losses else None,
            "site_metrics": {u.site: {k: v for k, v in u.metrics.items()
                                      if isinstance(v, int | float)} for u in updates},
            "epsilon_spent": self.epsilon_spent(),
            "bytes_sent": bytes_sent,
            "bytes_received": bytes_received,
        }
        self.rounds_log.append(entry)
        self._write_rounds()
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
        }
        checkpoint.save(self.ckpt_dir, checkpoint.Checkpoint(
            rnd, self.settings.run_id, self.weights, self.ema, self.optimizer.state, meta))

    def _write_rounds(self) -> None:
        with atomic_open(self.out / "rounds.jsonl", "w", encoding="utf-8") as fh:
            for entry in self.rounds_log:
                fh.write(json.dumps(entry, default=float) + "\n")

    def progress(self, **fields: Any) -> None:
        """Live state for the CLI's progress display."""
        write_json(self.out / "progress.json", {
            "time": time.time(), "rounds": self.settings.rounds,
            "epsilon_spent": self.epsilon_spent(), **fields})

    # ------------------------------------------------------------------ outputs
    def final_state(self) -> State:
        return self.ema if self.ema is not None else self.weights

    def write_model_and_sample(self) -> np.ndarray:
        """The global model (EMA weights) to OUT/model and OUT/synthetic.csv; returns the sample."""
        import torch

        from common.model import Generator, OutputStep, build_model
        from common.model.calibrate import calibrate
        from common.model.store import load_model, save_model
        from common.vocabulary import Vocabulary

        cfg = self.settings.model_config()
        codes = tuple(self.vocab["codes"])
        vocab = Vocabulary(codes, name=str(self.vocab.get("name", "custom")))
        state = {k: torch.from_numpy(np.array(v)) for k, v in self.final_state().items()}
        model = build_model(len(self.kept) if self.kept is not None else len(codes), cfg.model)
        model.load_state_dict(state)
        gen = Generator(model, cfg.model, vocab, OutputStep(
            "threshold", cfg.model.threshold,
            info={"source": "ModelConfig.threshold (fixed in advance)"}), "cpu",
            modelled=self.kept)
        if self.prevalence is not None:  # post-processing of the sites' private counts
            calibrate(gen, np.asarray(self.prevalence),
                      "sum of the sites' Gaussian-mechanism code counts", n=CALIBRATION_SAMPLES)
        model_dir = self.out / "model"
        save_model(model_dir, gen.model, cfg.model, vocab, extra={
            "federated": True, "run_id": self.settings.run_id,
            "rounds": self.next_round - 1, "privacy": "see ../privacy.json"},
            output_step=gen.output_step, modelled=self.kept)
        self.generator = load_model(model_dir, device="cpu")
        synth = self.generator.sample(self.settings.samples, seed=self.settings.seed)
        from common.data import write_matrix

        write_matrix(self.out / "synthetic.csv", synth, vocab)
        return synth

    def write_privacy(self) -> dict[str, Any]:
        """privacy.json: every site's report and the release guarantee (max over sites)."""
        sites = dict(sorted(self.site_reports.items()))
        released: dict[str, Any] = {"epsilon": None, "delta": None}
        if sites:
            released = {
                "epsilon": max(float(r["epsilon"]) for r in sites.values()),
                "delta": max(float(r["delta"]) for r in sites.values()),
            }
        accountants = sorted({str(r.get("accountant")) for r in sites.values()})
        doc = {
            **released,
            "accountant": accountants[0] if len(accountants) == 1 else accountants,
            "composition": "max over sites (never the sum or the mean)",
            "assumption": RELEASE_ASSUMPTION,
            "target_epsilon": self.settings.epsilon,
            "unit": "patient (one row of the patient x code matrix)",
            "sites": sites,
            "run_id": self.settings.run_id,
            "rounds": self.next_round - 1,
            "post_processing": "FedAvg, the server, EMA and the sampler only see DP updates",
            "evaluation_note": "evaluation.json holds aggregate figures each site computed on "
                               "held-out patients it never trained on (not covered by epsilon)",
            "site_size_note": "each site's number of training patients is sent to the "
                              "coordinator in the clear (prevalence and FedAvg weights); the "
                              "code counts and model updates are DP",
            "codes_modelled": None if self.kept is None else len(self.kept),
        }
        write_json(self.out / "privacy.json", doc)
        return doc

    def write_evaluation(self, per_site: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """evaluation.json: per site and pooled (weighted by held-out patients)."""
        pooled: dict[str, float] = {}
        weights = {s: float(m.get("n_holdout", 0)) for s, m in per_site.items()
                   if "skipped" not in m}
        keys = {k for s in weights for k, v in per_site[s].items() if isinstance(v, int | float)}
        total = sum(weights.values())
        for key in sorted(keys - {"n_holdout"}):
            vals = [(weights[s], per_site[s][key]) for s in weights
                    if isinstance(per_site[s].get(key), int | float)
                    and np.isfinite(per_site[s][key])]
            if vals and total > 0:
                pooled[key] = float(sum(w * v for w, v in vals) / sum(w for w, _ in vals))
        doc = {"sites": per_site, "pooled": pooled, "pooled_n_holdout": int(total),
               "pooling": "mean over sites weighted by held-out patients",
               "note": "each site scores the global sample against its own held-out patients, "
                       "who follow that site's case mix; with non-IID sites these figures are "
                       "below what the same sample reaches against all sites' patients together"}
        write_json(self.out / "evaluation.json", doc)
        return doc

    def write_audit(self, audits: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """audit.json + audit.html: the sites' own audits side by side with their accountant
        epsilons and the release epsilon (``privacy.audit.merge_site_audits``)."""
        from privacy.audit.run import merge_site_audits, write_audit

        privacy = json.loads((self.out / "privacy.json").read_text(encoding="utf-8"))
        audit = merge_site_audits(dict(sorted(audits.items())), privacy, self.rounds_log)
        write_audit(self.out, audit)
        log.info("audit of %d site(s): %s", len(audits), audit["verdict"]["headline"])
        return audit

    def write_status(self, status: str, detail: str = "") -> None:
        write_json(self.out / "status.json", {"status": status, "detail": detail,
                                              "launch_id": self.settings.launch_id,
                                              "rounds_completed": self.next_round - 1,
                                              "time": time.time()})
