"""Centralized DP training (``ehr-train --epsilon E``): one site, every data touch accounted.

Two mechanisms touch the patients, both in the ledger and in ``privacy.json``'s history:

1. Private code counts (Gaussian mechanism, Dwork & Roth 2014 App. A; accounted exactly as
   the q = 1, steps = 1 case of the subsampled Gaussian): each patient's 0/1 row is scaled to L2
   norm at most ``count_clip`` (sensitivity ``count_clip`` under add/remove of a patient) and
   ``N(0, (z count_clip)^2)`` is added to each code's count. Everything derived from them is
   post-processing: the codes the model is trained on (noisy count above 3 noise std; the
   other codes are never emitted) and the per-code output thresholds (each code's synthetic
   prevalence matched to its noisy prevalence).
2. Whole records only (``ModelConfig.one_hot_groups``): private counts of the record columns'
   values (``privacy.record_counts``, their own Gaussian mechanism, sensitivity sqrt(columns));
   each column's distribution from them is the model's prior and calibration target.
3. DP-SGD (``client.dp_training``) on those columns, sigma calibrated so that the site's whole
   history (ledger prior + counts + this run) reaches at most the target epsilon.

The noise multiplier of the counts is calibrated to ``privacy.counts.count_epsilon`` (the share
``count_epsilon_share`` of the target, at least ``count_epsilon_min``) alone;
composed with DP-SGD (PRV) it costs less than that share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsynth.common.atomic import write_json
from fedsynth.common.config import Config
from fedsynth.common.data import CodeMatrix
from fedsynth.common.data.record_tokens import group_indices
from fedsynth.common.errors import BudgetExceeded, InputError
from fedsynth.common.model import build_model
from fedsynth.common.model.outcome import pair_tables
from fedsynth.common.model.record_output import attach_outcome
from fedsynth.common.model.release import FIXED_THRESHOLD, release_generator, save_release
from fedsynth.privacy import outcome_counts, record_counts
from fedsynth.privacy.accountant import Mechanism, default_delta, epsilon
from fedsynth.privacy.counts import MECHANISM_NOTE, count_epsilon, estimate, release_counts
from fedsynth.privacy.ledger import Ledger, LedgerCorrupted, user_state_dir
from fedsynth.privacy.outcome_counts import MECHANISM_NOTE as OUTCOME_NOTE
from fedsynth.privacy.outcome_counts import release_pair_counts
from fedsynth.privacy.planning import noise_for_target, poisson_rate, steps_for_epochs
from fedsynth.privacy.record_counts import MECHANISM_NOTE as COLUMN_NOTE
from fedsynth.privacy.record_counts import column_prevalence, release_column_counts

log = logging.getLogger(__name__)

SITE = "central"


@dataclasses.dataclass
class PrivatePlan:
    n: int
    delta: float
    sample_rate: float
    steps: int
    count_noise: float | None  # noise multiplier of the counts mechanism (None: no counts)
    column_noise: float | None  # ... of the record column counts (None: codes only)
    noise_multiplier: float  # DP-SGD sigma
    target_epsilon: float
    prior: list[Mechanism]
    pair_noise: float | None = None  # ... of the outcome pair counts (None: no outcome)

    @property
    def mechanisms(self) -> list[Mechanism]:
        counts = _count_mechanisms(self.count_noise, self.column_noise, self.pair_noise)
        return [*counts, Mechanism(self.noise_multiplier, self.sample_rate, self.steps)]


def _count_mechanisms(*noise: float | None) -> list[Mechanism]:
    """The count releases of a plan, each a q = 1, steps = 1 Gaussian (None: not released)."""
    return [Mechanism(z, 1.0, 1) for z in noise if z]


def plan_private(n: int, config: Config, prior: list[Mechanism]) -> PrivatePlan:
    """Delta, q, steps and the noise multipliers for ``config.privacy.epsilon``
    (``privacy.planning``): the counts' sigma for their share of the target alone (the code
    counts; a records model's column counts and, with an outcome column, its pair counts at
    the same sigma), DP-SGD's for the target over the prior history plus the counts."""
    pc = config.privacy
    if pc.epsilon is None:
        raise ValueError("privacy.epsilon is not set")
    delta = pc.delta if pc.delta is not None else default_delta(n)
    if delta >= 1.0 / n:
        raise InputError("--delta", f"delta {delta:g} is not below 1/n = {1 / n:.3g} "
                         f"for {n} patients")
    q = poisson_rate(config.private_batch(), n)
    steps = steps_for_epochs(pc.epochs, q)
    refusal = f"cannot reach epsilon={pc.epsilon:g}"
    count_noise = column_noise = pair_noise = None
    if pc.count_epsilon_share > 0:
        count_eps = count_epsilon(pc.epsilon, pc.count_epsilon_share, pc.count_epsilon_min)
        count_noise = noise_for_target(count_eps, delta, 1.0, 1, pc.accountant, refusal=refusal)
        if config.model.one_hot_groups:  # the record columns' counts: the same share
            column_noise = count_noise
            if config.model.keeps_outcome():  # ... and the outcome's pair counts
                pair_noise = count_noise
    counts = _count_mechanisms(count_noise, column_noise, pair_noise)
    sigma = noise_for_target(pc.epsilon, delta, q, steps, pc.accountant, [*prior, *counts],
                             refusal)
    return PrivatePlan(n, delta, q, steps, count_noise, column_noise, sigma, pc.epsilon,
                       list(prior), pair_noise)


def data_set_site(matrix: CodeMatrix) -> str:
    """The ledger name of a data set: ``central-`` + 16 hex of sha256 over its sorted, distinct
    patient ids.

    Keyed by *who* is in the data, not by the file: the same patients compose whatever the
    file's name, format, row or column order, and also after a re-extract that changed their
    codes (composing too much is the safe error). Files without ids get positional ids
    (``syn-000001`` ...), so such files with equal row counts share a ledger (again the safe
    side). Not detected: another file holding a subset or superset of the patients gets its own
    ledger; a person who trains on overlapping extracts gives them one ``--state-dir`` and keeps
    the same ids."""
    ids = np.unique(np.asarray(matrix.patient_ids).astype(str))
    digest = hashlib.sha256(b"fedsynth-data-set-v1\n" + "\n".join(ids).encode()).hexdigest()
    return f"{SITE}-{digest[:16]}"


def train_centralized_private(matrix: CodeMatrix, config: Config, out_dir: str | Path,
                              state_dir: str | Path | None = None,
                              progress: bool = True, site: str | None = None,
                              records: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """DP training of the generator on all rows of ``matrix``; writes the model directory and
    ``out_dir/privacy.json``. The spend goes into the data set's ledger (``site``, default
    ``data_set_site(matrix)``) in ``state_dir`` (default ``user_state_dir()``:
    ``$XDG_STATE_HOME/fedsynth`` or ``~/.local/state/fedsynth``, *not* the output folder, so
    that every run on the same patients composes) before anything is written out. The ledger's
    delta is pinned at its first run (``privacy.delta`` or ``default_delta(n)``).
    ``records``: a records model's (token layout, schema); with an outcome column
    (``ModelConfig.keeps_outcome``) its pair counts are released and fitted after training
    (``common.model.outcome``); without ``records`` there is no such step, and no plan for it."""
    from fedsynth.client.dp_training import train_dp  # opacus

    t0 = time.perf_counter()
    out = Path(out_dir)
    state = Path(state_dir) if state_dir is not None else user_state_dir()
    site = site or data_set_site(matrix)
    X = matrix.X
    n, n_codes = X.shape
    try:
        ledger = Ledger.open(state, site, config.privacy.delta)  # DeltaFixed if another delta
        delta = ledger.delta if ledger.delta is not None else default_delta(n)
        ledger = Ledger.open(state, site, delta)
    except LedgerCorrupted as err:
        raise InputError(None, str(err)) from None
    log.info("privacy ledger of this data set: %s (delta %g, epsilon spent so far %.2f)",
             ledger.path, delta, ledger.epsilon())
    # the clip of this model (records: their own), so DP-SGD, the ledger and privacy.json
    # all read the one that ran
    config = dataclasses.replace(config, privacy=dataclasses.replace(
        config.privacy, delta=delta, max_grad_norm=config.private_clip()))
    if records is None:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                       outcome_group=-1))
    pc = config.privacy
    plan = plan_private(n, config, ledger.history)
    mechs = plan.mechanisms
    would = _check_all(ledger, mechs, plan, pc.accountant)
    log.info("DP plan: sigma=%.4f, q=%.5f, steps=%d, count-noise=%s, target eps=%g at "
             "delta=%.3g (%s; n=%d; epsilon after this run %.4f)", plan.noise_multiplier,
             plan.sample_rate, plan.steps,
             "none" if plan.count_noise is None else f"{plan.count_noise:.3f}",
             plan.target_epsilon, plan.delta, pc.accountant, n, would)

    # 1. private code counts -> modelled codes and target prevalences (post-processing);
    # whole records: the columns' tokens [0, g) have counts of their own and are all modelled
    groups = tuple(config.model.one_hot_groups)
    g = int(sum(groups))
    kept = np.arange(n_codes)
    prevalence = None
    count_info: dict[str, Any] = {}
    if plan.count_noise is not None:
        ledger.record(Mechanism(plan.count_noise, 1.0, 1), run_id=_run_id(), round=0,
                      note=MECHANISM_NOTE)
        est = estimate(release_counts(X[:, g:], pc.count_clip, plan.count_noise),  # OS random
                       tail_gate=pc.count_tail_gate)
        kept, prevalence, count_info = g + est.kept, est.prevalence, est.info
        log.info("private counts: %d of %d codes modelled, %d more in the tail",
                 len(est.kept), n_codes - g, count_info.get("tail_codes", 0))
    if plan.column_noise is not None:
        ledger.record(Mechanism(plan.column_noise, 1.0, 1), run_id=_run_id(), round=0,
                      note=COLUMN_NOTE)
        columns = column_prevalence(release_column_counts(X[:, :g], groups, plan.column_noise),
                                    groups)
        kept = np.concatenate([np.arange(g), kept])
        prevalence = np.concatenate([columns, prevalence])

    # 2. DP-SGD on those columns (the binary model's prior: the private prevalence)
    model_cfg = config.private_model()
    train_cfg = dataclasses.replace(config.train, lr=pc.lr, ema_decay=pc.ema_decay)
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    device = _device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    model = build_model(len(kept), model_cfg,
                        None if prevalence is None else prevalence[kept])
    with _Bar(progress, plan.steps) as advance:
        res = train_dp(model, X[:, kept], model_cfg=model_cfg, train_cfg=train_cfg,
                       privacy_cfg=pc, noise_multiplier=plan.noise_multiplier,
                       sample_rate=plan.sample_rate, steps=plan.steps, device=device,
                       progress=advance)
    ledger.record(res.mechanism, run_id=_run_id(), round=1, note="DP-SGD",
                  max_grad_norm=pc.max_grad_norm, expected_batch=plan.sample_rate * n)
    train_seconds = time.perf_counter() - t0

    # 3. calibration to the private prevalence (post-processing; none without counts)
    gen, _ = release_generator(res.ema_state, model_cfg, matrix.vocab, kept,
                               threshold_source=FIXED_THRESHOLD, prevalence=prevalence,
                               prevalence_source="Gaussian-mechanism code counts "
                                                 "(in privacy.json)", device=device,
                               training="private")
    outcome_info: dict[str, Any] = {}
    if plan.pair_noise is not None and records is not None:
        # 4. the outcome's pair counts (their own mechanism) and its fit (post-processing)
        def measure(columns: list[int]) -> tuple[list[np.ndarray], float]:
            tables = pair_tables(group_indices(X[:, :g], groups), model_cfg.outcome_group,
                                 columns, groups)
            ledger.record(Mechanism(plan.pair_noise, 1.0, 1), run_id=_run_id(), round=2,
                          note=OUTCOME_NOTE)
            return release_pair_counts(tables, plan.pair_noise)  # OS random

        outcome_info = attach_outcome(gen, *records, measure,
                                      "Gaussian-mechanism pair counts (in privacy.json)")
    report = ledger.report(plan.delta, pc.epsilon, pc.accountant, local=True)
    report.update({
        "n_patients": n,
        "release": "centralized model (one site); the output step uses only the private counts",
        "mechanisms": _describe(plan, res.mechanism, pc, count_info, groups, outcome_info),
        "this_run": [m.to_dict() for m in [*mechs[:-1], res.mechanism]],
        "examples_per_s": round(res.examples_per_s, 1),
        "train_seconds": round(train_seconds, 1),
        "ledger": str(ledger.path),
    })
    training = {"train_seconds": round(train_seconds, 1), "steps": res.mechanism.steps,
                "mean_loss": res.mean_loss, "examples_per_second": round(res.examples_per_s, 1),
                "codes_modelled": int(len(kept)), "privacy_config": dataclasses.asdict(pc)}
    save_release(out, gen, extra={"training": training, "privacy": report})
    write_json(out / "privacy.json", report)
    log.info("DP model written to %s: epsilon=%.2f (%s), delta=%.3g, %.0f s", out,
             report["epsilon"], pc.accountant, plan.delta, time.perf_counter() - t0)
    return {"privacy": report, "training": training}


def _check_all(ledger: Ledger, mechs: list[Mechanism], plan: PrivatePlan,
               accountant: str) -> float:
    """Budget check of the whole run (counts + DP-SGD) on top of the ledger's history."""
    total = epsilon([*ledger.history, *mechs], plan.delta, accountant)
    if total > plan.target_epsilon:
        raise BudgetExceeded(
            f"site {SITE}: this run would reach epsilon={total:.3f} > {plan.target_epsilon:g} "
            f"(ledger {ledger.path} already holds {len(ledger.entries)} entries)")
    return total


def _describe(plan: PrivatePlan, ran: Mechanism, pc: Any, count_info: dict[str, Any],
              groups: tuple[int, ...] = (), outcome: dict[str, Any] | None = None) -> list[dict]:
    out = []
    if plan.pair_noise is not None and outcome:
        out.append({"name": OUTCOME_NOTE, "kind": "Gaussian mechanism (q=1, steps=1 entry)",
                    "noise_multiplier": plan.pair_noise,
                    "l2_sensitivity": outcome_counts.sensitivity(len(outcome["columns"])),
                    "use": "the outcome's rate within each value of the columns chosen from "
                           "the released model's own sample (the outcome's redraw)",
                    "columns": outcome["columns"]})
    if plan.column_noise is not None:
        out.append({"name": COLUMN_NOTE, "kind": "Gaussian mechanism (q=1, steps=1 entry)",
                    "noise_multiplier": plan.column_noise,
                    "l2_sensitivity": record_counts.sensitivity(groups),
                    "use": "each record column's distribution over its public values (the "
                           "model's prior and calibration target)"})
    if plan.count_noise is not None:
        out.append({"name": MECHANISM_NOTE, "kind": "Gaussian mechanism (q=1, steps=1 entry)",
                    "noise_multiplier": plan.count_noise, "l2_sensitivity": pc.count_clip,
                    "use": "codes modelled (family-wise test over the vocabulary), every "
                           "code's prevalence (empirical-Bayes shrinkage; calibration target "
                           "and the independently sampled tail)", "estimate": count_info})
    out.append({"name": "DP-SGD", "kind": "Poisson-subsampled Gaussian (Opacus, ghost clipping)",
                **ran.to_dict(), "max_grad_norm": pc.max_grad_norm,
                "noise_multiplicity": pc.noise_multiplicity, "epochs": pc.epochs,
                "expected_batch": round(plan.sample_rate * plan.n, 1)})
    return out


def _run_id() -> str:
    return time.strftime("ehr-train-%Y%m%dT%H%M%S")


def _device(name: str) -> torch.device:
    from fedsynth.common.device import resolve_device

    return resolve_device(name)


class _Bar:
    """A rich progress bar over DP-SGD steps (or nothing)."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.progress = enabled, total, None

    def __enter__(self):  # type: ignore[no-untyped-def]
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress("DP-SGD", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn())
        self.progress.__enter__()
        task = self.progress.add_task("DP-SGD", total=self.total)
        return lambda k=1: self.progress.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
