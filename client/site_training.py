"""What a hospital does in one federated round, as plain functions (no Flower here).

``run_site_round``: plan the round's mechanism (the site calibrates its own noise multiplier for
what is left of the plan, counting everything its ledger already holds), check the site's own
budget and delta (refuse and train nothing if the plan would exceed either, or if the
coordinator refused the site), train with DP-SGD, record the spend in the ledger BEFORE the
update is returned, and return the update and the privacy report.

``evaluate_site``: score the global model's synthetic sample against the site's own held-out
patients (never trained on); the figures stay at the site.

What leaves the site is declared in ``federation.protocol``: the DP update, the EMA, the public
privacy report, the signed ledger head and public metadata. The round's loss, timings,
examples/s, the site's size and expected batch go only to the site's own log and files
(``STATE/rounds-<site>.jsonl``, ``STATE/privacy-<site>-<run_id>.json``).

The site's delta is its own (``ehr-client --delta``; default ``default_delta(n)``), pinned
in its ledger at first use (``privacy.ledger``): a plan whose delta exceeds it is refused.

Per-site plan (issue 4): q_k = batch / n_k (Poisson sampling), local steps per round =
ceil(local_epochs / q_k), planned total = rounds x local steps. The server's ``epsilon`` is the
target of the plan; the site's ``--epsilon-budget`` is its own lifetime cap, enforced by its
ledger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.errors import BudgetExceeded, InputError
from fedsynth.federation.protocol import SitePlan
from fedsynth.privacy.accountant import Mechanism, calibrate_noise, default_delta, epsilon
from fedsynth.privacy.planning import noise_for_target, poisson_rate, steps_for_epochs

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]
MIN_LEFT = 0.02  # refuse a round when less than this share of the target epsilon is left
__all__ = ["SitePlan"]  # re-exported: the plan is declared once, in federation.protocol


@dataclass
class SiteData:
    site: str
    train: np.ndarray  # uint8 (n_train, V): the only rows DP-SGD ever sees
    holdout: np.ndarray  # uint8 (n_holdout, V): evaluation and audits only
    vocab: Any  # common.vocabulary.Vocabulary
    # audit canaries of a simulated site (privacy.audit.canaries.insert_canaries): the included
    # ones are the last rows of ``train``; the site's real patients are the rows before them
    canaries: np.ndarray | None = None
    included: np.ndarray | None = None
    # whole records: the public schema (``Schema.to_dict()``) whose tokens open ``vocab``
    # (``common.data.record_tokens``); None: codes only
    schema: dict[str, Any] | None = None
    # whole records: the typed tables (``load_records``' columns) of the real members (rows of
    # ``members``, no canary) and of ``holdout``, for the site's own audit
    # (``privacy.audit.site_records``); None when not kept
    train_table: pd.DataFrame | None = None
    holdout_table: pd.DataFrame | None = None

    @property
    def groups(self) -> tuple[int, ...]:
        """Sizes of the one-hot groups (one per schema column) opening the columns; ()."""
        return self.model_columns[0]

    @property
    def model_columns(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(``ModelConfig.one_hot_groups``, ``ModelConfig.ordinal_values``) of the site's
        public schema; ((), ()) for codes only."""
        if self.schema is None:
            return (), ()
        from fedsynth.common.data.record_tokens import model_columns
        from fedsynth.common.data.schema import schema_from_dict

        return model_columns(schema_from_dict(self.schema, "site data"))

    @property
    def members(self) -> np.ndarray:
        """The real patients trained on (``train`` without the audit canaries)."""
        if self.included is None:
            return self.train
        return self.train[: len(self.train) - int(np.sum(self.included))]


@dataclass
class SiteUpdate:
    """A site's answer to a train request (``federation.protocol.TrainReply`` carries it).
    ``privacy`` is the public report (no size); the round's local figures stay at the site."""

    site: str
    status: str  # "ok" | "refused"
    reason: str = ""
    weights: State | None = None
    ema: State | None = None
    steps: int = 0
    privacy: dict[str, Any] = field(default_factory=dict)


def load_site_data(path: str | Path, fmt: str, holdout: float, seed: int, site: str,
                   columns: str = "auto", schema: str | None = None) -> SiteData:
    """Load the site's patients and split off its held-out part (deterministic in ``seed``).
    ``columns``/``schema``: whole records or codes (``common.data.columns``); whole records keep
    their typed tables too (``SiteData.train_table`` / ``holdout_table``)."""
    path = Path(path)
    if path.suffix == ".npz":  # a simulated site's partition (written by ehr-simulate)
        return _load_site_file(path, site)
    from fedsynth.common.data import split_holdout
    from fedsynth.common.data.columns import load_matrix

    matrix, records, _ = load_matrix(path, fmt, columns, schema)
    schema_doc = None if records is None else records.schema.to_dict()
    tr, ho = (split_holdout(matrix, holdout, seed) if holdout > 0
              else (matrix, matrix.subset(np.arange(0))))
    data = SiteData(site, tr.X, ho.X, matrix.vocab, schema=schema_doc)
    if records is not None:
        data.train_table = records.of_patients(tr.patient_ids).table
        data.holdout_table = records.of_patients(ho.patient_ids).table
    return data


def _load_site_file(path: Path, site: str) -> SiteData:
    """A simulated site's ``site<k>.npz``: train and held-out rows, vocabulary, and when present
    the schema and its record tables (``privacy.audit.site_records.table_array``), canaries."""
    from fedsynth.common.vocabulary import Vocabulary

    try:
        with np.load(path, allow_pickle=False) as data:
            train, hold = data["train"].astype(np.uint8), data["holdout"].astype(np.uint8)
            vocab = Vocabulary.from_dict(json.loads(str(data["vocab"])), source=path)
            schema_doc = json.loads(str(data["schema"])) if "schema" in data else None
            out = SiteData(site, train, hold, vocab, schema=schema_doc)
            if schema_doc is not None and "train_records" in data:
                from fedsynth.common.data.schema import schema_from_dict
                from fedsynth.privacy.audit.site_records import array_table

                sch = schema_from_dict(schema_doc, path)
                out.train_table = array_table(data["train_records"], sch)
                out.holdout_table = array_table(data["holdout_records"], sch)
            if "canaries" in data:
                out.canaries = data["canaries"].astype(np.uint8)
                out.included = data["included"].astype(bool)
                out.train = np.vstack([train, out.canaries[out.included]])
    except (OSError, KeyError, ValueError) as err:
        raise InputError(path, f"not a simulated site file ({err})") from None
    return out


def sample_rate(n_train: int, plan: SitePlan) -> float:
    """Poisson sampling rate q_k: the federation's ``sample_rate`` when set (for whole records,
    ``records_sample_rate``), else train.batch_size / n_k (capped at 1,
    ``privacy.planning.poisson_rate``); the expected batch is q_k * n_k."""
    fed = plan.config.federation
    q = fed.sample_rate
    if q > 0:
        return min(1.0, fed.records_sample_rate if plan.config.model.one_hot_groups else q)
    return poisson_rate(plan.config.train.batch_size, n_train)


def steps_per_round(n_train: int, plan: SitePlan) -> int:
    """ceil(local_epochs / q): local_epochs passes over the site's data in expectation."""
    return steps_for_epochs(plan.config.federation.local_epochs, sample_rate(n_train, plan))


def open_site_ledger(state_dir: str | Path, site: str, delta: float | None,
                     n_train: int) -> Any:
    """The site's ledger at the site's delta: ``delta`` (its configuration, ``--delta``) or,
    for a ledger that holds none yet, ``default_delta(n)``. An existing ledger keeps its
    pinned delta; a configured one that differs raises ``privacy.ledger.DeltaFixed``."""
    from fedsynth.privacy.ledger import Ledger

    ledger = Ledger.open(state_dir, site, delta if delta and delta > 0 else None)
    if ledger.delta is None:
        ledger = Ledger.open(state_dir, site, default_delta(n_train))
    return ledger


def plan_refusal(plan: SitePlan, ledger: Any, n_train: int) -> str:
    """Why the site refuses ``plan`` before spending anything ("" when it does not): the
    coordinator refused the site (its witness check failed), the plan's delta exceeds the
    site's own, or the site's delta is not below 1/n (the reason never states n)."""
    delta = float(ledger.delta)
    if plan.refusal:
        return f"the coordinator refused site {ledger.site}: {plan.refusal}"
    if plan.delta is not None and plan.delta > delta * (1 + 1e-9):
        return (f"the plan's delta {plan.delta:g} exceeds site {ledger.site}'s own delta "
                f"{delta:g}; nothing trained, nothing sent")
    if delta >= 1.0 / max(1, n_train):
        return (f"site {ledger.site}'s delta {delta:g} is not below 1/n for its number of "
                "patients; set a smaller --delta")
    return ""


def _columns_refusal(plan: SitePlan, data: SiteData) -> str:
    """Why a whole-records plan does not fit the site's records ("" when it does): its one-hot
    groups must be the site's schema columns, all of them modelled."""
    groups, ordinal = data.model_columns
    g = int(sum(groups))
    planned = tuple(plan.config.model.ordinal_values)
    if tuple(plan.config.model.one_hot_groups) != groups or (planned and planned != ordinal) or (
            g and plan.kept is not None and list(plan.kept[:g]) != list(range(g))):
        return ("the plan's record columns differ from this site's schema; nothing trained, "
                "nothing sent")
    return ""


def plan_mechanism(n_train: int, plan: SitePlan, history: list[Mechanism], budget: float,
                   delta: float) -> Mechanism:
    """This round's mechanism: sigma calibrated so that the site's whole history plus the rest
    of the plan (rounds left x local steps) reaches at most min(target, budget)
    (``privacy.planning.noise_for_target``), unless the previous round's sigma still fits
    (``_reuse_sigma``); refused when less than ``MIN_LEFT`` of the target is left."""
    q = sample_rate(n_train, plan)
    steps = steps_per_round(n_train, plan)
    remaining = (plan.rounds - plan.round + 1) * steps
    target = min(plan.target_epsilon, budget)
    accountant = plan.config.privacy.accountant
    require_left(history, plan, budget, delta, f"round {plan.round}")
    reused = _reuse_sigma(history, q, remaining, target, delta, accountant)
    if reused is not None:
        return Mechanism(reused, q, steps)
    sigma = noise_for_target(target, delta, q, remaining, accountant, history,
                             refusal=f"cannot plan round {plan.round}")
    return Mechanism(sigma, q, steps)


def require_left(history: list[Mechanism], plan: SitePlan, budget: float, delta: float,
                 what: str) -> None:
    """``BudgetExceeded`` when the site's history leaves less than ``MIN_LEFT`` of
    min(target, budget) for ``what`` (a DP-SGD round, a marginals release): a release that
    noisy would be useless."""
    if not history:
        return
    target = min(plan.target_epsilon, budget)
    spent = epsilon(history, delta, plan.config.privacy.accountant)
    if target - spent < MIN_LEFT * target:
        raise BudgetExceeded(
            f"epsilon spent {spent:.4f}: less than {MIN_LEFT:.0%} of min(target "
            f"{plan.target_epsilon:g}, budget {budget:g}) is left for {what}; a release that "
            "noisy would be useless: nothing computed, nothing sent")


def kept_release(path: Path) -> dict[str, np.ndarray] | None:
    """A release this site already sent in this run (``keep_release``), or None: asked again
    (a resumed coordinator, a retried message), the site re-sends it and spends nothing."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as saved:
        return {k: saved[k] for k in saved.files}


def keep_release(path: Path, **arrays: np.ndarray) -> None:
    """Keep a release (atomically) once it is recorded in the ledger, for ``kept_release``."""
    from fedsynth.common.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _reuse_sigma(history: list[Mechanism], q: float, remaining: int, target: float,
                 delta: float, accountant: str) -> float | None:
    """The previous round's noise multiplier when the history plus the rest of the plan at it
    still stays within ``target`` (one accountant call). Keeping sigma constant keeps the
    history a few mergeable entries: recalibrating every round gave a slightly different sigma
    each time, and the PRV composition of ever more distinct mechanisms made later rounds
    slower and slower."""
    if not history or history[-1].sample_rate != q:
        return None
    sigma = history[-1].noise_multiplier
    if epsilon([*history, Mechanism(sigma, q, remaining)], delta, accountant) <= target:
        return sigma
    return None


def _round_seed(seed: int, site: str, run_id: str, rnd: int) -> int:
    """Distinct per site, run and round: sites must never draw the same batches or noise."""
    digest = hashlib.sha256(f"{seed}:{site}:{run_id}:{rnd}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _ema_decay(plan: SitePlan, steps: int) -> float:
    """EMA decay for the whole run: at most the private path's, and such that the initial
    weights weigh less than e^-3 at the end of the plan."""
    total = max(1, plan.rounds * steps)
    return float(min(plan.config.privacy.ema_decay, max(0.0, 1.0 - 3.0 / total)))


def run_site_round(
    global_state: State,
    global_ema: State | None,
    data: SiteData,
    plan: SitePlan,
    ledger: Any,  # privacy.ledger.Ledger, opened at the site's delta (open_site_ledger)
    budget: float,
    device: str = "cpu",
) -> SiteUpdate:
    """Check the plan, the delta and the ledger, train with DP-SGD, record the spend, return
    the update. Everything is computed at the ledger's delta (the site's own)."""
    import torch

    from fedsynth.client.dp_training import train_dp
    from fedsynth.common.device import resolve_device
    from fedsynth.common.model.train import build_model

    n = int(data.train.shape[0])
    accountant = plan.config.privacy.accountant
    refusal = plan_refusal(plan, ledger, n) or _columns_refusal(plan, data)
    if refusal:
        log.warning("site %s refuses round %d: %s", data.site, plan.round, refusal)
        return SiteUpdate(data.site, "refused", reason=refusal,
                          privacy=ledger.report(None, budget, accountant))
    delta = float(ledger.delta)
    try:
        mech = plan_mechanism(n, plan, list(ledger.history), budget, delta)
        ledger.check(mech, budget, delta, accountant)
    except BudgetExceeded as err:
        log.warning("site %s refuses round %d: %s", data.site, plan.round, err)
        return SiteUpdate(data.site, "refused", reason=str(err),
                          privacy=ledger.report(None, budget, accountant))
    log.info("site %s round %d: sigma=%.4g q=%.4g steps=%d (target eps %.3g, budget %.3g)",
             data.site, plan.round, mech.noise_multiplier, mech.sample_rate, mech.steps,
             plan.target_epsilon, budget)

    cfg = plan.config
    # the plan's clip for this model (records: their own); DP-SGD and the ledger read this one
    privacy_cfg = dataclasses.replace(cfg.privacy, max_grad_norm=cfg.private_clip())
    train_cfg = dataclasses.replace(
        cfg.train, ema_decay=_ema_decay(plan, mech.steps),
        lr=cfg.federation.lr if cfg.federation.lr > 0 else cfg.privacy.lr,
        seed=_round_seed(cfg.train.seed, data.site, plan.run_id, plan.round))
    dev = resolve_device(device)
    torch.manual_seed(train_cfg.seed)
    X = data.train[:, plan.kept] if plan.kept is not None else data.train
    model = build_model(X.shape[1], cfg.model)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in global_state.items()})
    model.to(dev)
    t0 = time.perf_counter()
    res = train_dp(model, X, model_cfg=cfg.model, train_cfg=train_cfg,
                   privacy_cfg=privacy_cfg, noise_multiplier=mech.noise_multiplier,
                   sample_rate=mech.sample_rate, steps=mech.steps, device=dev)
    ran: Mechanism = res.mechanism
    # Record what actually ran BEFORE anything leaves the site.
    ledger.record(ran, plan.run_id, plan.round, note=f"DP-SGD round {plan.round}",
                  max_grad_norm=privacy_cfg.max_grad_norm,
                  expected_batch=ran.sample_rate * n)
    weights = {k: v.detach().cpu().numpy() for k, v in res.state_dict.items()}
    ema = None
    if res.ema_state is not None:
        ema = {k: v.detach().cpu().numpy() for k, v in res.ema_state.items()}
        if global_ema is not None:
            # The released EMA: train_dp's EMA restarts every round at the round's global
            # weights w0 WITH the warm-up of common.model.ema (d_t = min(d, (1+t)/(10+t))), so
            # it is mostly this round's later iterates; the site adds d^S (e0 - w0), the
            # previous global EMA e0's offset from w0 at the weight d^S that S plain EMA steps
            # would leave it. Deliberately not the EMA the whole run would have had (continued
            # from e0, no warm-up): that measured lower (ehr-benchmark ours_federated, epsilon
            # 3, one run each: co-occurrence 0.946 / dim-wise 0.864 against 0.955 / 0.885 with
            # this rule). Pinned by tests/test_federation_site.py (test_released_ema_rule, and
            # with the real train_dp test_released_ema_restarts_with_the_warm_up).
            factor = train_cfg.ema_decay ** ran.steps
            for k in ema:
                if k in global_ema and np.issubdtype(ema[k].dtype, np.floating):
                    ema[k] = (ema[k] + factor * (global_ema[k] - global_state[k])).astype(
                        ema[k].dtype)
    report = ledger.report(None, budget, accountant)
    keep_locally(ledger, plan, budget, {
        "event": "train", "run_id": plan.run_id, "round": plan.round,
        "loss": float(res.mean_loss), "steps": int(ran.steps),
        "expected_batch": float(ran.sample_rate * n), "n_train": n,
        "examples_per_s": float(res.examples_per_s),
        "seconds": round(time.perf_counter() - t0, 3),
        "sigma": float(ran.noise_multiplier), "q": float(ran.sample_rate),
        "epsilon": float(report["epsilon"]), "delta": delta})
    log.info("site %s round %d: mean loss %.4f, %.0f examples/s, epsilon %.2f (kept here, "
             "not sent)", data.site, plan.round, res.mean_loss, res.examples_per_s,
             report["epsilon"])
    return SiteUpdate(data.site, "ok", weights=weights, ema=ema, steps=ran.steps,
                      privacy=report)


def keep_locally(ledger: Any, plan: SitePlan, budget: float, entry: dict[str, Any]) -> None:
    """What stays at the site: one line of ``STATE/rounds-<site>.jsonl`` (the round's loss,
    timings, size, expected batch) and the full privacy report, expected batch q x n included,
    ``STATE/privacy-<site>-<run_id>.json``. Both rewritten atomically."""
    folder = Path(ledger.state_dir)
    log_path = folder / f"rounds-{ledger.site}.jsonl"
    old = log_path.read_text(encoding="utf-8") if log_path.exists() else ""
    with atomic_open(log_path, "w", encoding="utf-8") as fh:
        fh.write(old + json.dumps({"time": time.time(), **entry}, default=float) + "\n")
    write_json(folder / f"privacy-{ledger.site}-{plan.run_id}.json",
               ledger.report(None, budget, plan.config.privacy.accountant, local=True))


@dataclass
class SiteCounts:
    """A site's answer to the query: its DP release of code counts and size
    (``privacy.counts.NoisyCounts``), or a refusal."""

    site: str
    status: str  # "ok" | "refused" | "off"
    reason: str = ""
    counts: Any = None  # privacy.counts.NoisyCounts
    privacy: dict[str, Any] = field(default_factory=dict)
    column_counts: Any = None  # whole records: privacy.record_counts' release (NoisyCounts)


def site_counts(data: SiteData, plan: SitePlan, ledger: Any, budget: float,
                state_dir: str | Path | None = None) -> SiteCounts:
    """Private per-code counts and site size for the coordinator (which codes to model, their
    prevalences, the FedAvg weight): ``privacy.counts.release_counts``, one Gaussian mechanism
    on (counts, size) with sensitivity ``count_clip``, noise multiplier calibrated to
    ``count_epsilon_share`` of the target at the site's delta; recorded in the ledger (round 0,
    "code counts and site size") before anything leaves. Whole records: the codes' counts
    over the code columns only, and the record columns' counts as a second mechanism of their
    own (``privacy.record_counts``, same noise multiplier, sensitivity sqrt(columns)). Asked
    again in the same run (a resumed coordinator), the site re-sends what it already released:
    no new spend."""
    from fedsynth.privacy import record_counts
    from fedsynth.privacy.counts import MECHANISM_NOTE, NoisyCounts, count_epsilon, release_counts

    pc = plan.config.privacy
    n = int(data.train.shape[0])
    folder = Path(state_dir) if state_dir is not None else Path(ledger.state_dir)
    refusal = plan_refusal(plan, ledger, n)
    if refusal:
        log.warning("site %s refuses the query: %s", data.site, refusal)
        return SiteCounts(data.site, "refused", reason=refusal,
                          privacy=ledger.report(None, budget, pc.accountant))
    delta = float(ledger.delta)
    if pc.count_epsilon_share <= 0:
        return SiteCounts(data.site, "off", privacy=ledger.report(None, budget, pc.accountant))
    cache = folder / f"counts-{data.site}-{plan.run_id}.npz"
    saved = kept_release(cache)
    groups = data.groups
    g = int(sum(groups))
    if saved is not None:
        release = NoisyCounts(saved["counts"], float(saved["size"]), float(saved["noise_std"]))
        columns = None if "column_counts" not in saved else NoisyCounts(
            saved["column_counts"], float(saved["column_size"]), float(saved["column_std"]))
        return SiteCounts(data.site, "ok", counts=release, column_counts=columns,
                          privacy=ledger.report(None, budget, pc.accountant))
    target = min(plan.target_epsilon, budget)
    try:
        z = calibrate_noise(count_epsilon(target, pc.count_epsilon_share, pc.count_epsilon_min),
                            delta, 1.0, 1, pc.accountant, prior_history=())
        mechs = [Mechanism(z, 1.0, 1)] * (2 if groups else 1)
        # both releases at once: two q = 1 Gaussian steps of the same z
        ledger.check(Mechanism(z, 1.0, len(mechs)), budget, delta, pc.accountant)
    except (BudgetExceeded, ValueError) as err:
        log.warning("site %s refuses the counts: %s", data.site, err)
        return SiteCounts(data.site, "refused", reason=str(err),
                          privacy=ledger.report(None, budget, pc.accountant))
    ledger.record(mechs[0], plan.run_id, 0, note=MECHANISM_NOTE, max_grad_norm=pc.count_clip,
                  expected_batch=float(n))
    release = release_counts(data.train[:, g:], pc.count_clip, z)
    kept: dict[str, np.ndarray] = {}
    columns = None
    if groups:
        ledger.record(mechs[1], plan.run_id, 0, note=record_counts.MECHANISM_NOTE,
                      max_grad_norm=record_counts.sensitivity(groups), expected_batch=float(n))
        columns = record_counts.release_column_counts(data.train[:, :g], groups, z)
        kept = {"column_counts": columns.counts, "column_size": np.array(columns.size),
                "column_std": np.array(columns.noise_std)}
    keep_release(cache, counts=release.counts, size=np.array(release.size),
                 noise_std=np.array(release.noise_std), **kept)
    keep_locally(ledger, plan, budget, {
        "event": "counts", "run_id": plan.run_id, "round": 0, "n_train": n,
        "noise_multiplier": z, "noisy_size": release.size, "delta": delta,
        "mechanisms": len(mechs)})
    return SiteCounts(data.site, "ok", counts=release, column_counts=columns,
                      privacy=ledger.report(None, budget, pc.accountant))


def evaluate_site(synthetic: np.ndarray, data: SiteData, seed: int = 0) -> dict[str, Any]:
    """The core metrics of ``synthetic`` against this site's held-out patients ONLY (never a
    training member: the dimension-wise baseline is fitted on one half of the held-out
    patients and tested on the other, ``common.metrics.fidelity`` without ``real_train``).
    Aggregates only (correlations, AUROC ratios, means; never a row); they stay at the site
    (``client.site_evaluation``)."""
    from fedsynth.common.metrics import fidelity

    if data.holdout.shape[0] < 10:
        return {"site": data.site, "n_holdout": int(data.holdout.shape[0]),
                "skipped": "fewer than 10 held-out patients"}
    try:
        out = fidelity(data.holdout, synthetic, seed=seed)
    except ValueError as err:  # e.g. too few patients for a metric's classifier
        log.warning("site %s: evaluation failed: %s", data.site, err)
        return {"site": data.site, "n_holdout": int(data.holdout.shape[0]),
                "skipped": f"evaluation failed: {err}"}
    flat = {k: v for k, v in out.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    flat.update(site=data.site, n_holdout=int(data.holdout.shape[0]))
    return flat


def audit_at_site(generator: Any, synthetic: np.ndarray, data: SiteData, plan: SitePlan,
                  ledger: Any, budget: float) -> dict[str, Any]:
    """The privacy audit of the released generator against this site's own members and
    held-out patients (and its canaries, in simulation), next to the site's own accountant
    epsilon from its ledger: ``privacy.audit.run.audit_site``. A records site also runs the
    attribute attack on the schema's columns against its record tables, on the released records
    (``privacy.audit.site_records``, as ``ehr-audit``). It is computed on the site's members, so
    it stays at the site (``client.site_evaluation.keep_audit``): never sent."""
    from fedsynth.privacy.audit.config import AuditConfig
    from fedsynth.privacy.audit.run import audit_site
    from fedsynth.privacy.audit.site_records import site_records_audit

    report = ledger.report(None, budget, plan.config.privacy.accountant)
    cfg = AuditConfig(n_synth=len(synthetic))
    synth, records = site_records_audit(generator, data, synthetic, cfg)
    return audit_site(generator, data.members, data.holdout, cfg, synth=synth,
                      canaries=data.canaries, included=data.included, privacy=report,
                      site=data.site, records=records)
