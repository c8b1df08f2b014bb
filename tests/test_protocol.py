"""The declared site -> coordinator schema (federation/protocol.py): every typed record survives
its pack/unpack round trip, a reply with any undeclared record or key (or a size-revealing
report field) is flagged, and the schema declares none of the leaky names of the old replies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

import fedsynth.federation.protocol as proto
from fedsynth.common.config import Config
from fedsynth.federation.protocol import (
    EVALUATE,
    QUERY,
    SCHEMA,
    TRAIN,
    EvaluateReply,
    QueryReply,
    SitePlan,
    TrainReply,
    check_reply,
    public_report,
)
from fedsynth.privacy.counts import NoisyCounts

# what the replies used to carry (issue 14): none of it may be declared
FORBIDDEN = ("loss", "seconds", "examples_per_s", "n_train", "n_holdout", "planned_examples",
             "dimwise", "expected_batch", "metrics", "audit", "auroc", "sigma", "q")


def _report() -> dict:
    return {"epsilon": 1.25, "delta": 1e-5, "accountant": "prv", "site": "A",
            "history": [{"noise_multiplier": 2.0, "sample_rate": 0.5, "steps": 4,
                         "mechanism": "DP-SGD round 1", "round": 1, "max_grad_norm": 1.0,
                         "expected_batch": 32.0}],
            "budget": 3.0, "epsilon_left": 1.75, "ledger_head": "ab" * 32,
            "software": "fedsynth 0.1.0", "created": "2025-01-01T00:00:00+00:00"}


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"net.0.weight": rng.normal(size=(4, 3)).astype(np.float32),
            "net.0.bias": rng.normal(size=(4,)).astype(np.float32)}


def _head() -> dict:
    return {"head": {"site": "A", "seq": 1}, "public_key": "ssh-ed25519 AAAA", "signature": "x"}


def test_every_declared_key_is_documented_and_none_is_leaky() -> None:
    doc = proto.__doc__ or ""
    for mtype, records in SCHEMA.items():
        for name, rec in records.items():
            for key in (rec.keys or {}):
                assert key in doc, f"{mtype}.{name}.{key} missing from the table"
                assert rec.keys[key].release in (proto.DP, proto.PUBLIC)
                assert not any(bad == key or bad in key.split("_") for bad in FORBIDDEN), key
    for key in proto.PUBLIC_REPORT_KEYS | proto.HISTORY_KEYS:
        assert not {"n", "size", "batch", "loss", "seconds"} & set(key.split("_")), key


def test_query_reply_round_trip() -> None:
    counts = NoisyCounts(np.array([3.5, -1.0, 20.25]), 41.7, 2.5)
    reply = QueryReply("A", "ok", "", "icd9", ["1", "2", "3"], _report(), _head(), counts)
    content = reply.pack()
    assert check_reply(QUERY, content) == []
    back = QueryReply.unpack(content)
    assert (back.site, back.status, back.vocab_name, back.codes) == ("A", "ok", "icd9",
                                                                      ["1", "2", "3"])
    np.testing.assert_array_equal(back.counts.counts, counts.counts)
    assert back.counts.size == 41.7 and back.counts.noise_std == 2.5
    assert back.ledger_head == _head()
    # the report that leaves is the public one: the expected batch q x n stays at the site
    assert back.privacy == public_report(_report())
    assert "expected_batch" not in back.privacy["history"][0]
    assert back.privacy["history"][0]["mechanism"] == "DP-SGD round 1"


def test_train_reply_round_trip_and_refusal() -> None:
    w, e = _state(0), _state(1)
    reply = TrainReply("B", "ok", "", w, e, 7, _report(), _head())
    content = reply.pack()
    assert check_reply(TRAIN, content, model_keys=set(w)) == []
    back = TrainReply.unpack(content)
    assert back.steps == 7 and back.site == "B" and back.status == "ok"
    for k in w:
        np.testing.assert_array_equal(back.weights[k], w[k])
        np.testing.assert_array_equal(back.ema[k], e[k])
    refused = TrainReply("B", "refused", "budget spent").pack()
    assert check_reply(TRAIN, refused) == []
    assert TrainReply.unpack(refused).weights is None
    assert check_reply(TRAIN, content, model_keys={"other"})  # tensor names checked


def test_evaluate_reply_and_plan_round_trip() -> None:
    content = EvaluateReply("A", "kept at site").pack()
    assert check_reply(EVALUATE, content) == []
    assert EvaluateReply.unpack(content) == EvaluateReply("A", "kept at site")
    cfg = Config()
    cfg.model.hidden = (16, 16)
    plan = SitePlan(round=2, rounds=3, run_id="r", target_epsilon=1.5, config=cfg,
                    delta=1e-6, seed=4, kept=[0, 2], refusal="behind")
    back = SitePlan.unpack(RecordDict({proto.PLAN_RECORD: plan.pack()}))
    assert back == plan
    assert SitePlan.unpack(proto.query_request(plan)) == plan


def test_requests_round_trip() -> None:
    """What the coordinator sends: the train request (plan, weights, EMA) and the evaluate
    request (plan, released model parts, audit flag) come back as they were packed."""
    plan = SitePlan(round=1, rounds=2, run_id="r", target_epsilon=1.0, config=Config())
    state = _state()
    for ema in (None, proto.pack_state(state)):
        req = proto.TrainRequest(plan, proto.pack_state(state), ema)
        back = proto.TrainRequest.unpack(req.pack())
        assert back.plan == plan and (back.ema is None) == (ema is None)
        for k, v in proto.unpack_state(back.weights).items():
            np.testing.assert_array_equal(v, state[k])
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    req = proto.EvaluateRequest.release(plan, {"format": "x"}, tensors, {"kind": "threshold"},
                                        audit=True)
    back = proto.EvaluateRequest.unpack(req.pack())
    conf, got, step = back.model_parts()
    assert back.plan == plan and back.audit and conf == {"format": "x"}
    assert step == {"kind": "threshold"} and set(got) == set(state)


@pytest.mark.parametrize("tamper", [
    lambda c: c.__setitem__("metrics", MetricRecord({"loss": 0.5})),  # an undeclared record
    lambda c: c[proto.SITE_RECORD].__setitem__("n_train", 64),  # an undeclared key
    lambda c: c[proto.SITE_RECORD].__setitem__(proto.STEPS, "7"),  # a declared key, other type
    lambda c: c[proto.SITE_RECORD].__setitem__(proto.PRIVACY, json.dumps({**_report(), "n": 64})),
    lambda c: c[proto.SITE_RECORD].__setitem__(proto.PRIVACY, json.dumps(_report())),  # batch
    lambda c: c.__setitem__(proto.WEIGHTS_RECORD, ConfigRecord({"x": 1})),  # another kind
    lambda c: c[proto.SITE_RECORD].pop(proto.LEDGER_HEAD),  # a required key missing
])
def test_any_undeclared_part_is_flagged(tamper) -> None:  # noqa: ANN001
    content = TrainReply("B", "ok", "", _state(), None, 3, _report(), _head()).pack()
    assert check_reply(TRAIN, content) == []
    tamper(content)
    assert check_reply(TRAIN, content)


def test_unknown_message_type_is_flagged() -> None:
    assert check_reply("train-more", RecordDict({}))
