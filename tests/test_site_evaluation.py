"""Evaluation of the released model stays at the site (issue 14), tested as a curious
coordinator would try it: the ClientApp's evaluate handler is called with crafted messages and
everything the reply holds is checked, and what the site computed is checked to use held-out
patients only, once per run, from a sample the site drew itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedsynth.client.site_training import SitePlan
from fedsynth.common.config import Config, ModelConfig
from fedsynth.common.errors import InputError
from fedsynth.common.model.output import OutputStep
from fedsynth.common.model.store import Generator, model_parts
from fedsynth.common.model.train import build_model
from fedsynth.common.vocabulary import Vocabulary
from fedsynth.federation.protocol import EVALUATE, EvaluateRequest

V = 30
RUN = "run0001"


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity outside a SuperNode."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 2)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


def _vocab() -> Vocabulary:
    return Vocabulary(codes=tuple(f"{200 + i}" for i in range(V)), name="test")


def _site_files(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A simulated site0 (what ehr-simulate writes): train and held-out rows, the vocabulary."""
    rng = np.random.default_rng(0)
    train = (rng.random((120, V)) < 0.2).astype(np.uint8)
    hold = (rng.random((80, V)) < 0.2).astype(np.uint8)
    vocab = json.dumps({"name": "test", "codes": list(_vocab().codes)})
    (root / "sites").mkdir(parents=True, exist_ok=True)
    np.savez(root / "sites" / "site0.npz", train=train, holdout=hold, vocab=np.array(vocab))
    return train, hold


def _context(root: Path, samples: int = 150) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1},
                   state=RecordDict(), run_config={
                       "sim-data-dir": str(root / "sites"), "sim-state-dir": str(root / "state"),
                       "sim-eval-samples": samples, "seed": 0})


def _generator() -> Generator:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=4)
    return Generator(build_model(V, cfg, np.full(V, 0.2)), cfg, _vocab(), OutputStep())


def _message(run_id: str = RUN, extra: dict[str, Any] | None = None,
             audit: bool = False) -> Message:
    """The coordinator's evaluate message (the released model + the plan), plus ``extra``
    records a hostile coordinator adds."""
    conf, state, step = model_parts(_generator())
    plan = SitePlan(round=2, rounds=2, run_id=run_id, target_epsilon=3.0, config=Config(),
                    delta=1e-3)
    content = EvaluateRequest.release(plan, conf, state, step, audit=audit).pack()
    for name, record in (extra or {}).items():
        content[name] = record
    return Message(content=content, dst_node_id=1, message_type=EVALUATE)


def _reply(msg: Message, ctx: Context) -> dict[str, dict[str, Any]]:
    """Every record and every value the reply carries, as plain data; checked against the
    declared reply schema (``federation.protocol``: any other record or key fails)."""
    from fedsynth.client.app import evaluate
    from fedsynth.federation.protocol import EVALUATE, check_reply

    out = evaluate(msg, ctx).content
    assert check_reply(EVALUATE, out) == []
    assert not out.array_records and not out.metric_records
    return {name: dict(rec.items()) for name, rec in out.config_records.items()}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every ``fidelity`` call the site makes, with its arguments."""
    from fedsynth.common import metrics

    seen: list[dict[str, Any]] = []
    real_fidelity = metrics.fidelity

    def spy(real: np.ndarray, synth: np.ndarray, real_train: np.ndarray | None = None,
            seed: int = 0) -> dict[str, Any]:
        seen.append({"real": np.array(real), "synth": np.array(synth), "real_train": real_train})
        return real_fidelity(real, synth, real_train=real_train, seed=seed)

    monkeypatch.setattr(metrics, "fidelity", spy)
    return seen


def test_reply_is_only_the_declared_keys(tmp_path: Path, calls: list) -> None:
    _site_files(tmp_path)
    reply = _reply(_message(), _context(tmp_path))
    assert reply == {"site": {"site": "site0", "status": "kept at site"}}


def test_crafted_matrix_learns_nothing(tmp_path: Path, calls: list) -> None:
    """Whatever the coordinator sends (a matrix to score, here the site's own members or an
    all-zero matrix), the reply is the same and the site scores only the sample it drew."""
    train, hold = _site_files(tmp_path)
    crafted = {
        "members": train, "zeros": np.zeros((150, V), np.uint8),
    }
    replies = [_reply(_message(f"{RUN}a"), _context(tmp_path))]
    for i, (name, X) in enumerate(crafted.items()):
        rec = ArrayRecord()
        rec["X"] = next(iter(ArrayRecord(numpy_ndarrays=[X]).values()))
        replies.append(_reply(_message(f"{RUN}{i}", extra={
            "synthetic": rec, "config": ConfigRecord({"evaluate": name, "real_train": "members"}),
        }), _context(tmp_path)))
    assert all(r == replies[0] for r in replies)
    assert len(calls) == 3
    for call in calls:
        assert call["synth"].shape == (150, V)  # the site's own sample size
        assert not any(np.array_equal(call["synth"], X) for X in crafted.values())


def test_local_figures_use_held_out_patients_only(tmp_path: Path, calls: list) -> None:
    train, hold = _site_files(tmp_path)
    _reply(_message(), _context(tmp_path))
    (call,) = calls
    assert call["real_train"] is None  # no training reference: the held-out part is split
    assert np.array_equal(call["real"], hold)
    path = tmp_path / "state" / "site0" / f"evaluation-site0-{RUN}.json"
    doc = json.loads(path.read_text())
    assert doc["site"] == "site0" and doc["run_id"] == RUN and doc["n_synthetic"] == 150
    figures = doc["figures"]
    assert "skipped" not in figures and figures["n_holdout"] == figures["n_real"] == len(hold)
    assert {"prevalence_r", "cooccurrence_r", "dimwise_auroc_ratio"} <= set(figures)


def test_second_evaluate_in_a_run_computes_nothing(tmp_path: Path, calls: list,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _site_files(tmp_path)
    first = _reply(_message(), _context(tmp_path))
    path = tmp_path / "state" / "site0" / f"evaluation-site0-{RUN}.json"
    before = path.read_bytes()

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("the model was sampled again")

    monkeypatch.setattr(Generator, "sample", boom)
    again = _reply(_message(extra={"synthetic": ArrayRecord()}), _context(tmp_path, 500))
    assert again == first and len(calls) == 1 and path.read_bytes() == before


def test_run_id_never_chooses_where_the_site_writes(tmp_path: Path, calls: list) -> None:
    _site_files(tmp_path)
    with pytest.raises(InputError, match="run id"):
        _reply(_message("../../escape"), _context(tmp_path))
    assert not list(tmp_path.rglob("*escape*")) and not calls


def test_audit_is_kept_at_the_site(tmp_path: Path, calls: list) -> None:
    from fedsynth.privacy.accountant import Mechanism
    from fedsynth.privacy.ledger import Ledger

    _site_files(tmp_path)
    ledger = Ledger.open(tmp_path / "state" / "site0", "site0", delta=1e-3)
    ledger.record(Mechanism(1.5, 0.1, 20), RUN, 1)
    reply = _reply(_message(audit=True), _context(tmp_path))
    assert reply == {"site": {"site": "site0", "status": "kept at site"}}
    folder = tmp_path / "state" / "site0" / f"audit-site0-{RUN}"
    audit = json.loads((folder / "audit.json").read_text())
    assert set(audit["sites"]) == {"site0"} and audit["sites"]["site0"]["n_members"] == 120
    assert audit["sites"]["site0"]["epsilon"] == pytest.approx(
        ledger.report(1e-3, 3.0, "prv")["epsilon"])
    assert "<html" in (folder / "audit.html").read_text()[:500].lower()


def test_coordinator_evaluation_holds_no_figure(tmp_path: Path) -> None:
    from fedsynth.server.coordinator import Coordinator
    from fedsynth.server.settings import RunSettings

    coord = Coordinator(RunSettings(out_dir=str(tmp_path), run_id=RUN))
    coord.write_evaluation({"A": "kept at site", "B": "kept at site"})
    doc = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(doc["sites"]) == {"A", "B"} and "pooled" not in doc

    def numbers(x: Any) -> list[float]:
        if isinstance(x, dict):
            return [n for v in x.values() for n in numbers(v)]
        return [x] if isinstance(x, int | float) and not isinstance(x, bool) else []

    assert numbers(doc) == []
    assert doc["sites"]["A"]["evaluation"] == f"STATE/evaluation-A-{RUN}.json"


def test_simulation_operator_pools_all_held_out_patients(tmp_path: Path, calls: list) -> None:
    from fedsynth.common.data import write_matrix
    from fedsynth.simulations.pooled import pooled_evaluation

    rng = np.random.default_rng(3)
    holds = []
    (tmp_path / "sites").mkdir()
    vocab = json.dumps({"name": "test", "codes": list(_vocab().codes)})
    for k in range(3):
        hold = (rng.random((30 + 10 * k, V)) < 0.2).astype(np.uint8)
        np.savez(tmp_path / "sites" / f"site{k}.npz", train=hold[:0], holdout=hold,
                 vocab=np.array(vocab))
        holds.append(hold)
    synth = (rng.random((200, V)) < 0.2).astype(np.uint8)
    write_matrix(tmp_path / "synthetic.csv", synth, _vocab())
    (tmp_path / "evaluation.json").write_text(json.dumps({"sites": {"site0": {}}}))
    doc = pooled_evaluation(tmp_path)
    (call,) = calls
    assert np.array_equal(call["real"], np.vstack(holds)) and np.array_equal(call["synth"], synth)
    assert call["real_train"] is None
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(doc)) and saved["pooled_n_holdout"] == 120
    assert "simulation operator" in saved["computed_by"] and "sites" in saved
