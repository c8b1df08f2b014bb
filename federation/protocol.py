"""The one declared schema of what crosses the site <-> coordinator boundary (issue 14).

Everything a site sends the coordinator is listed below, and nothing else may be sent: the
ClientApp packs its replies only through the typed records here (``QueryReply``,
``TrainReply``, ``EvaluateReply``), the ServerApp unpacks them only through them, and
``check_reply`` lists every record or key of a received reply that is not declared (or whose
kind differs): the ServerApp drops and logs such a reply. What the coordinator sends is
packed and unpacked here too (``query_request``, ``TrainRequest``, ``EvaluateRequest``), each
carrying the round's ``SitePlan`` (one definition for both sides). Record names and keys are the
constants below: neither side spells one as a string literal.

Every declared key of a site's reply, and what it is:

============  ========  ==============  ===================  ====================================
message       record    kind            key                  class: content
============  ========  ==============  ===================  ====================================
query         site      config          site                 public metadata: the site's name
query         site      config          status               public metadata: ok | refused | off
query         site      config          reason               public metadata: one-line refusal
query         site      config          vocab_name           public metadata: the code list's name
query         site      config          vocab_codes          public metadata: the public code list
query         site      config          privacy              DP release (accounting): the public
                                                             privacy report (``public_report``)
query         site      config          ledger_head          public metadata: the site's signed
                                                             ledger head (seq, spend, hash, sig)
query         site      config          noisy_size           DP release: the site's noisy size
                                                             (recorded in its ledger first)
query         site      config          noise_std            public metadata: the counts' noise
                                                             std (z x clip: public constants)
query         counts    array           counts               DP release: noisy per-code counts
query         site      config          schema               public metadata: whole records, the
                                                             record schema (built-in or the
                                                             site's TOML: columns, public domains)
query         site      config          column_noise_std     public metadata: whole records, the
                                                             column counts' noise std
query         columns   array           counts               DP release: whole records, noisy
                                                             counts of the columns' values
                                                             (``privacy.record_counts``)
train         site      config          site                 public metadata
train         site      config          status               public metadata: ok | refused
train         site      config          reason               public metadata: one-line refusal
train         site      config          steps                public metadata: the mechanism's
                                                             local steps (planned, not measured)
train         site      config          privacy              DP release (accounting): as above
train         site      config          ledger_head          public metadata: as above
train         weights   array           (model tensors)      DP release: the DP-SGD iterate
train         ema       array           (model tensors)      DP release: post-processing of the
                                                             DP-SGD iterates
evaluate      site      config          site                 public metadata
evaluate      site      config          status               public metadata (evaluation stays
                                                             at the site)
marginals     site      config          site, status,        public metadata: as above
                                        reason
marginals     site      config          privacy              DP release (accounting): as above
marginals     site      config          ledger_head          public metadata: as above
marginals     site      config          noisy_size           DP release: one-way only, the
                                                             noisy size (same Gaussian release)
marginals     site      config          noise_std            public metadata: sigma x Delta_2
marginals     marginals array           counts               DP release: noisy one-way counts
                                                             or two-way co-counts (federated
                                                             MST, ``client.site_marginals``)
============  ========  ==============  ===================  ====================================

The public privacy report keeps only ``PUBLIC_REPORT_KEYS`` (and ``HISTORY_KEYS`` per history
entry): no site size, no expected batch q x n. The full report stays at the site
(``STATE/privacy-<site>-<run_id>.json``). Note: with ``--batch-size`` the sample rate is
q_k = batch / n_k, so the history's sample rate reveals n_k up to rounding; the default (one
sample rate for every site) reveals nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.common.config import Config

State = dict[str, np.ndarray]

# message types ("query.marginals": Flower routes it to ``@app.query("marginals")``)
QUERY, TRAIN, EVALUATE = "query", "train", "evaluate"
MARGINALS = "query.marginals"
ONE_WAY, PAIRS = "one-way", "pairs"  # the stages of a marginals request

# record names
SITE_RECORD = "site"
COUNTS_RECORD = "counts"
COLUMNS_RECORD = "columns"  # query reply, whole records: the record columns' noisy counts
WEIGHTS_RECORD = "weights"
EMA_RECORD = "ema"
PLAN_RECORD = "plan"
MODEL_RECORD = "model"  # evaluate request: the released model's tensors
MODEL_INFO_RECORD = "model_info"  # evaluate request: its config, output step, audit request
MARGINALS_RECORD = "marginals"  # marginals reply: the noisy counts
MST_RECORD = "mst"  # marginals request: stage, k, share, codes

# keys
SITE, STATUS, REASON = "site", "status", "reason"
VOCAB_NAME, VOCAB_CODES = "vocab_name", "vocab_codes"
PRIVACY, LEDGER_HEAD = "privacy", "ledger_head"
NOISY_SIZE, NOISE_STD = "noisy_size", "noise_std"
RECORD_SCHEMA, COLUMN_NOISE_STD = "schema", "column_noise_std"
COUNTS = "counts"
STEPS = "steps"
PLAN = "plan"
MODEL_CONFIG, OUTPUT_STEP, AUDIT = "config", "output_step", "audit"
STAGE, MAX_CODES, SHARE, COLS = "stage", "max_codes", "share", "cols"

DP, PUBLIC = "DP release", "public metadata"

# the public privacy report: what a site's report may hold (nothing that reveals its size)
# (privacy.report.site_report; Ledger.report(local=False)). "ledger_head" there is the hash.
PUBLIC_REPORT_KEYS = frozenset({
    "site", "epsilon", "delta", "accountant", "history", "guarantee", "budget",
    "epsilon_left", "epsilon_prv", "epsilon_rdp", "ledger_head", "software", "created",
})
# per history entry: the mechanism, which one it is, its round and clipping norm; never the
# expected batch q x n (``expected_batch``, kept in the site's local report)
HISTORY_KEYS = frozenset({"noise_multiplier", "sample_rate", "steps", "mechanism", "round",
                          "max_grad_norm"})


@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    release: str  # DP | PUBLIC
    required: bool = True


@dataclass(frozen=True)
class Record:
    kind: str  # "config" | "array" | "metric"
    keys: Mapping[str, Key] | None  # None: the model's tensors (any name; checked by shape)
    required: bool = True


_SITE_KEYS = {SITE: Key((str,), PUBLIC), STATUS: Key((str,), PUBLIC),
              REASON: Key((str,), PUBLIC, required=False)}
_REPORTED = {PRIVACY: Key((str,), DP), LEDGER_HEAD: Key((str,), PUBLIC)}

SCHEMA: dict[str, dict[str, Record]] = {
    QUERY: {
        SITE_RECORD: Record("config", {
            **_SITE_KEYS, VOCAB_NAME: Key((str,), PUBLIC), VOCAB_CODES: Key((list,), PUBLIC),
            **_REPORTED, NOISY_SIZE: Key((float,), DP, required=False),
            NOISE_STD: Key((float,), PUBLIC, required=False),
            RECORD_SCHEMA: Key((str,), PUBLIC, required=False),
            COLUMN_NOISE_STD: Key((float,), PUBLIC, required=False)}),
        COUNTS_RECORD: Record("array", {COUNTS: Key((np.ndarray,), DP)}, required=False),
        COLUMNS_RECORD: Record("array", {COUNTS: Key((np.ndarray,), DP)}, required=False),
    },
    TRAIN: {
        SITE_RECORD: Record("config", {**_SITE_KEYS, STEPS: Key((int,), PUBLIC), **_REPORTED}),
        WEIGHTS_RECORD: Record("array", None, required=False),
        EMA_RECORD: Record("array", None, required=False),
    },
    EVALUATE: {
        SITE_RECORD: Record("config", {SITE: Key((str,), PUBLIC), STATUS: Key((str,), PUBLIC)}),
    },
    MARGINALS: {
        SITE_RECORD: Record("config", {
            **_SITE_KEYS, **_REPORTED, NOISY_SIZE: Key((float,), DP, required=False),
            NOISE_STD: Key((float,), PUBLIC, required=False)}),
        MARGINALS_RECORD: Record("array", {COUNTS: Key((np.ndarray,), DP)}, required=False),
    },
}

_KIND = {ConfigRecord: "config", ArrayRecord: "array", MetricRecord: "metric"}


# ---------------------------------------------------------------------------- the plan
@dataclass
class SitePlan:
    """The coordinator's plan for one round, as the site receives it."""

    round: int
    rounds: int
    run_id: str
    target_epsilon: float
    config: Config
    delta: float | None = None  # None: the site's own delta; else a site with a smaller refuses
    seed: int = 0  # initialisation and sampling only, never a DP random choice
    kept: list[int] | None = None  # modelled code columns (from the private counts); None: all
    refusal: str = ""  # the coordinator refuses this site (its witness check failed): why

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["config"] = {sec: {k: v for k, v in vals.items() if v is not None}
                       for sec, vals in d["config"].items()}
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> SitePlan:
        d = json.loads(text)
        d["config"] = Config.from_dict(d["config"], source="plan")
        return cls(**d)

    def pack(self) -> ConfigRecord:
        return ConfigRecord({PLAN: self.to_json()})

    @classmethod
    def unpack(cls, content: RecordDict) -> SitePlan:
        return cls.from_json(str(content[PLAN_RECORD][PLAN]))


# ---------------------------------------------------------------------------- requests
def query_request(plan: SitePlan) -> RecordDict:
    """The coordinator's query message: the plan only (round 0)."""
    return RecordDict({PLAN_RECORD: plan.pack()})


@dataclass
class TrainRequest:
    """The coordinator's train message: the round's plan, the global weights and EMA.

    The weights travel as ArrayRecords (``pack_state``) so that one packing serves every
    site's message of a round."""

    plan: SitePlan
    weights: ArrayRecord
    ema: ArrayRecord | None = None

    def pack(self) -> RecordDict:
        records: dict[str, Any] = {WEIGHTS_RECORD: self.weights, PLAN_RECORD: self.plan.pack()}
        if self.ema is not None:
            records[EMA_RECORD] = self.ema
        return RecordDict(records)

    @classmethod
    def unpack(cls, content: RecordDict) -> TrainRequest:
        arrays = content.array_records
        return cls(plan=SitePlan.unpack(content), weights=arrays[WEIGHTS_RECORD],
                   ema=arrays.get(EMA_RECORD))


@dataclass
class EvaluateRequest:
    """The coordinator's evaluate message: the plan (run id), the released model (a public DP
    release: ``common.model.store.model_parts``' config, weights and output step) and whether
    the coordinator asks the sites for a local audit.

    The model stays packed (``model``, JSON texts) until ``model_parts`` is called: a site that
    already evaluated this run reads only the plan and ``audit``."""

    plan: SitePlan
    model: ArrayRecord
    config_json: str
    output_step_json: str
    audit: bool = False

    @classmethod
    def release(cls, plan: SitePlan, config: Mapping[str, Any], state: Mapping[str, Any],
                output_step: Mapping[str, Any], audit: bool = False) -> EvaluateRequest:
        """From ``model_parts``' (config, torch state dict, output step)."""
        return cls(plan, ArrayRecord(torch_state_dict=dict(state)), json.dumps(config),
                   json.dumps(output_step), bool(audit))

    def model_parts(self) -> tuple[Any, dict[str, Any], Any]:
        """(config, torch state dict, output step) as sent: unchecked, for
        ``common.model.store.assemble``, which checks every part."""
        return (json.loads(self.config_json), dict(self.model.to_torch_state_dict()),
                json.loads(self.output_step_json))

    def pack(self) -> RecordDict:
        return RecordDict({
            PLAN_RECORD: self.plan.pack(),
            MODEL_RECORD: self.model,
            MODEL_INFO_RECORD: ConfigRecord({MODEL_CONFIG: self.config_json,
                                             OUTPUT_STEP: self.output_step_json,
                                             AUDIT: bool(self.audit)}),
        })

    @classmethod
    def unpack(cls, content: RecordDict) -> EvaluateRequest:
        info = content.config_records[MODEL_INFO_RECORD]
        return cls(plan=SitePlan.unpack(content), model=content.array_records[MODEL_RECORD],
                   config_json=str(info[MODEL_CONFIG]),
                   output_step_json=str(info[OUTPUT_STEP]),
                   audit=bool(info.get(AUDIT, False)))


@dataclass
class MarginalsRequest:
    """The coordinator's marginals message (federated MST): the plan, the stage (``ONE_WAY``
    or ``PAIRS``), k (codes kept per patient), the one-way release's share of what the plan
    leaves, and the codes whose pairs are asked (``PAIRS``). Public choices of the
    coordinator; none of them changes a release's sensitivity bound."""

    plan: SitePlan
    stage: str
    max_codes: int = 8
    share: float = 1 / 3
    cols: list[int] = field(default_factory=list)

    def pack(self) -> RecordDict:
        return RecordDict({PLAN_RECORD: self.plan.pack(), MST_RECORD: ConfigRecord({
            STAGE: self.stage, MAX_CODES: int(self.max_codes), SHARE: float(self.share),
            COLS: [int(c) for c in self.cols]})})

    @classmethod
    def unpack(cls, content: RecordDict) -> MarginalsRequest:
        info = content[MST_RECORD]
        return cls(plan=SitePlan.unpack(content), stage=str(info[STAGE]),
                   max_codes=int(info[MAX_CODES]), share=float(info[SHARE]),  # type: ignore
                   cols=[int(c) for c in info.get(COLS, [])])  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- replies
@dataclass
class QueryReply:
    """A site's answer to the query: its public vocabulary and its DP counts release."""

    site: str
    status: str  # ok | refused | off
    reason: str = ""
    vocab_name: str = ""
    codes: list[str] = field(default_factory=list)
    privacy: dict[str, Any] = field(default_factory=dict)
    ledger_head: dict[str, Any] = field(default_factory=dict)
    counts: Any = None  # privacy.counts.NoisyCounts (counts, size, noise_std) or None
    # whole records: the public schema (Schema.to_dict()) and the column counts' release
    # (privacy.record_counts; its noisy size is never sent)
    schema: dict[str, Any] | None = None
    column_counts: Any = None

    def pack(self) -> RecordDict:
        info: dict[str, Any] = {
            **_reported(self), VOCAB_NAME: self.vocab_name, VOCAB_CODES: list(self.codes)}
        records: dict[str, Any] = {}
        if self.counts is not None:
            info[NOISY_SIZE] = float(self.counts.size)
            info[NOISE_STD] = float(self.counts.noise_std)
            records[COUNTS_RECORD] = _arrays({COUNTS: np.asarray(self.counts.counts, np.float64)})
        if self.schema is not None:
            info[RECORD_SCHEMA] = json.dumps(self.schema)
        if self.column_counts is not None:
            info[COLUMN_NOISE_STD] = float(self.column_counts.noise_std)
            records[COLUMNS_RECORD] = _arrays(
                {COUNTS: np.asarray(self.column_counts.counts, np.float64)})
        records[SITE_RECORD] = ConfigRecord(info)
        return RecordDict(records)

    @classmethod
    def unpack(cls, content: RecordDict) -> QueryReply:
        info = content[SITE_RECORD]
        from fedsynth.privacy.counts import NoisyCounts

        counts = columns = None
        if COUNTS_RECORD in content:
            arr = content[COUNTS_RECORD][COUNTS].numpy().astype(np.float64)
            counts = NoisyCounts(counts=arr, size=float(info[NOISY_SIZE]),
                                 noise_std=float(info[NOISE_STD]))
        if COLUMNS_RECORD in content:
            arr = content[COLUMNS_RECORD][COUNTS].numpy().astype(np.float64)
            columns = NoisyCounts(counts=arr, size=float("nan"),
                                  noise_std=float(info[COLUMN_NOISE_STD]))
        schema = _json_dict(info[RECORD_SCHEMA]) if RECORD_SCHEMA in info else None
        return cls(site=str(info[SITE]), status=str(info[STATUS]),
                   reason=str(info.get(REASON, "")), vocab_name=str(info[VOCAB_NAME]),
                   codes=[str(c) for c in info[VOCAB_CODES]],  # type: ignore[union-attr]
                   privacy=_json_dict(info[PRIVACY]), ledger_head=_json_dict(info[LEDGER_HEAD]),
                   counts=counts, schema=schema, column_counts=columns)


@dataclass
class TrainReply:
    """A site's answer to a train request: the DP update or a refusal with its reason."""

    site: str
    status: str  # ok | refused
    reason: str = ""
    weights: State | None = None
    ema: State | None = None
    steps: int = 0
    privacy: dict[str, Any] = field(default_factory=dict)
    ledger_head: dict[str, Any] = field(default_factory=dict)

    def pack(self) -> RecordDict:
        records: dict[str, Any] = {SITE_RECORD: ConfigRecord({
            **_reported(self), STEPS: int(self.steps)})}
        if self.weights is not None:
            records[WEIGHTS_RECORD] = pack_state(self.weights)
        if self.ema is not None:
            records[EMA_RECORD] = pack_state(self.ema)
        return RecordDict(records)

    @classmethod
    def unpack(cls, content: RecordDict) -> TrainReply:
        info = content[SITE_RECORD]
        return cls(
            site=str(info[SITE]), status=str(info[STATUS]), reason=str(info.get(REASON, "")),
            weights=unpack_state(content[WEIGHTS_RECORD]) if WEIGHTS_RECORD in content else None,
            ema=unpack_state(content[EMA_RECORD]) if EMA_RECORD in content else None,
            steps=int(info[STEPS]), privacy=_json_dict(info[PRIVACY]),  # type: ignore[arg-type]
            ledger_head=_json_dict(info[LEDGER_HEAD]))


@dataclass
class EvaluateReply:
    """A site's answer to the evaluate request: its name and status (evaluation stays there)."""

    site: str
    status: str

    def pack(self) -> RecordDict:
        return RecordDict({SITE_RECORD: ConfigRecord({SITE: self.site, STATUS: self.status})})

    @classmethod
    def unpack(cls, content: RecordDict) -> EvaluateReply:
        info = content[SITE_RECORD]
        return cls(site=str(info[SITE]), status=str(info[STATUS]))


@dataclass
class MarginalsReply:
    """A site's answer to a marginals request: its noisy marginals or a refusal."""

    site: str
    status: str  # ok | refused
    reason: str = ""
    counts: np.ndarray | None = None
    size: float | None = None  # one-way only
    noise_std: float = 0.0
    privacy: dict[str, Any] = field(default_factory=dict)
    ledger_head: dict[str, Any] = field(default_factory=dict)

    def pack(self) -> RecordDict:
        info: dict[str, Any] = _reported(self)
        records: dict[str, Any] = {}
        if self.counts is not None:
            info[NOISE_STD] = float(self.noise_std)
            if self.size is not None:
                info[NOISY_SIZE] = float(self.size)
            records[MARGINALS_RECORD] = _arrays({COUNTS: np.asarray(self.counts, np.float64)})
        records[SITE_RECORD] = ConfigRecord(info)
        return RecordDict(records)

    @classmethod
    def unpack(cls, content: RecordDict) -> MarginalsReply:
        info = content[SITE_RECORD]
        counts = None
        if MARGINALS_RECORD in content:
            counts = content[MARGINALS_RECORD][COUNTS].numpy().astype(np.float64)
        size = info.get(NOISY_SIZE)
        return cls(site=str(info[SITE]), status=str(info[STATUS]),
                   reason=str(info.get(REASON, "")), counts=counts,
                   size=None if size is None else float(size),  # type: ignore[arg-type]
                   noise_std=float(info.get(NOISE_STD, 0.0)),  # type: ignore[arg-type]
                   privacy=_json_dict(info[PRIVACY]), ledger_head=_json_dict(info[LEDGER_HEAD]))


def _reported(reply: Any) -> dict[str, Any]:
    """The keys every reporting reply carries: site, status, reason, the PUBLIC privacy report
    (``public_report``: never the site's full one) and the signed ledger head."""
    return {SITE: reply.site, STATUS: reply.status, REASON: reply.reason,
            PRIVACY: json.dumps(public_report(reply.privacy)),
            LEDGER_HEAD: json.dumps(reply.ledger_head)}


def public_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The privacy report a site sends: ``PUBLIC_REPORT_KEYS`` only, and ``HISTORY_KEYS`` of
    each history entry (an allow-list: a field added to the full report stays at the site)."""
    out = {k: v for k, v in report.items() if k in PUBLIC_REPORT_KEYS}
    if isinstance(out.get("history"), list):
        out["history"] = [{k: v for k, v in e.items() if k in HISTORY_KEYS}
                          for e in out["history"] if isinstance(e, Mapping)]
    return out


# ---------------------------------------------------------------------------- arrays
def pack_state(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """A model state dict as an ArrayRecord (tensor names kept)."""
    return _arrays(state)


def unpack_state(record: ArrayRecord) -> State:
    return {k: v.numpy() for k, v in record.items()}


def _arrays(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    import torch

    return ArrayRecord(torch_state_dict={k: torch.from_numpy(np.ascontiguousarray(v))
                                         for k, v in state.items()})


def _json_dict(value: object) -> dict[str, Any]:
    out = json.loads(str(value)) if value not in (None, "") else {}
    if not isinstance(out, dict):
        raise ValueError(f"expected a JSON object, got {type(out).__name__}")
    return out


# ---------------------------------------------------------------------------- conformance
def describe(content: RecordDict) -> dict[str, Any]:
    """The full structure of a message's content, JSON-serialisable: per record its kind and,
    per key, the value's type (and the value of config/metric entries, or an array's shape and
    dtype). ``check_structure`` checks it; the ServerApp's reply capture writes it."""
    out: dict[str, Any] = {}
    for name, record in content.items():
        kind = _KIND.get(type(record), type(record).__name__)
        keys: dict[str, Any] = {}
        for key, value in record.items():
            if kind == "array":
                keys[key] = {"type": "array", "shape": list(value.shape),
                             "dtype": str(value.dtype)}
            elif isinstance(value, bytes):
                keys[key] = {"type": "bytes", "length": len(value)}
            else:
                keys[key] = {"type": type(value).__name__, "value": value}
        out[name] = {"kind": kind, "keys": keys}
    return out


_TYPE_NAMES = {str: "str", int: "int", float: "float", list: "list", np.ndarray: "array"}


def check_structure(message_type: str, structure: Mapping[str, Any],
                    model_keys: set[str] | None = None) -> list[str]:
    """Every record or key of ``structure`` (``describe``'s output) that the schema does not
    declare for ``message_type``, every kind or type that differs, every required one missing,
    and every privacy-report field outside ``PUBLIC_REPORT_KEYS``. Empty: the reply conforms."""
    declared = SCHEMA.get(message_type)
    if declared is None:
        return [f"undeclared message type {message_type!r}"]
    problems: list[str] = []
    for name, spec in declared.items():
        if spec.required and name not in structure:
            problems.append(f"{name}: required record missing")
    for name, rec in structure.items():
        spec = declared.get(name)
        if spec is None:
            problems.append(f"{name}: undeclared record ({rec.get('kind')})")
            continue
        if rec.get("kind") != spec.kind:
            problems.append(f"{name}: a {rec.get('kind')} record, declared {spec.kind}")
            continue
        keys: Mapping[str, Any] = rec.get("keys", {})
        if spec.keys is None:  # model tensors
            if model_keys is not None and set(keys) != model_keys:
                problems.append(f"{name}: tensor names differ from the model's")
            problems += [f"{name}.{k}: {v.get('type')}" for k, v in keys.items()
                         if v.get("type") != "array"]
            continue
        for key, kspec in spec.keys.items():
            if kspec.required and key not in keys:
                problems.append(f"{name}.{key}: required key missing")
        for key, value in keys.items():
            kspec = spec.keys.get(key)
            if kspec is None:
                problems.append(f"{name}.{key}: undeclared key")
                continue
            allowed = {_TYPE_NAMES[t] for t in kspec.types}
            if value.get("type") not in allowed:
                problems.append(f"{name}.{key}: {value.get('type')}, declared "
                                f"{'|'.join(sorted(allowed))}")
            elif key == PRIVACY:
                problems += [f"{name}.{key}.{p}" for p in _report_problems(value.get("value"))]
    return problems


def check_reply(message_type: str, content: RecordDict,
                model_keys: set[str] | None = None) -> list[str]:
    """``check_structure`` of a received message's content."""
    return check_structure(message_type, describe(content), model_keys)


def _report_problems(text: object) -> list[str]:
    try:
        report = json.loads(str(text)) if text else {}
    except ValueError:
        return ["not JSON"]
    if not isinstance(report, dict):
        return ["not a JSON object"]
    problems = [f"{k}: undeclared report field" for k in report if k not in PUBLIC_REPORT_KEYS]
    history = report.get("history", [])
    for i, entry in enumerate(history if isinstance(history, list) else []):
        if not isinstance(entry, dict):
            problems.append(f"history[{i}]: not an object")
            continue
        problems += [f"history[{i}].{k}: undeclared" for k in entry if k not in HISTORY_KEYS]
    for k in ("epsilon", "delta"):
        v = report.get(k)
        if v is not None and not (isinstance(v, int | float) and math.isfinite(v)):
            problems.append(f"{k}: not a finite number")
    return problems
