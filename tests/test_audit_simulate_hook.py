"""The federated audit's plain functions (no Flower): a site audits the released model against
its own members, held-out patients and canaries, next to its own ledger's epsilon; the
coordinator merges the sites' aggregate figures into audit.json + audit.html."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.site_training import SiteData, SitePlan, audit_at_site
from common.config import Config, ModelConfig
from common.model.output import OutputStep
from common.model.store import Generator, assemble, model_parts
from common.model.train import build_model
from common.vocabulary import Vocabulary
from privacy.accountant import Mechanism
from privacy.audit.canaries import insert_canaries
from privacy.ledger import Ledger
from server.coordinator import Coordinator
from server.settings import RunSettings, config_dict

V = 30


def _generator() -> Generator:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=4)
    vocab = Vocabulary(codes=tuple(f"{200 + i}" for i in range(V)), name="test")
    return Generator(build_model(V, cfg, np.full(V, 0.15)), cfg, vocab, OutputStep())


def _site(name: str, seed: int) -> SiteData:
    rng = np.random.default_rng(seed)
    train = (rng.random((80, V)) < 0.15).astype(np.uint8)
    hold = (rng.random((30, V)) < 0.15).astype(np.uint8)
    with_canaries, canaries, included = insert_canaries(train, 20, seed=seed)
    return SiteData(name, with_canaries, hold, None, canaries, included)


def test_site_audit_and_coordinator_merge(tmp_path: Path) -> None:
    gen = _generator()
    # the model travels as its parts (what the evaluate message carries) and is rebuilt
    conf, state, step = model_parts(gen)
    rebuilt = assemble(json.loads(json.dumps(conf)), state, step, gen.vocab, "cpu")
    synth = rebuilt.sample(100, seed=1)
    assert np.array_equal(synth, gen.sample(100, seed=1))
    cfg = Config()
    plan = SitePlan(round=2, rounds=2, run_id="r", target_epsilon=3.0, config=cfg, delta=1e-3)
    audits, reports = {}, {}
    for k in range(2):
        data = _site(f"site{k}", k)
        assert len(data.members) == 80 and data.included is not None
        ledger = Ledger.open(tmp_path / "state", data.site)
        ledger.record(Mechanism(1.5, 0.1, 20 + k), "r", 1)
        audit = audit_at_site(rebuilt, synth, data, plan, ledger, 3.0)
        json.dumps(audit)  # aggregate figures only: it must serialise as it is sent
        assert audit["n_members"] == 80 and audit["white_box"]["kind"] == "canaries"
        reports[data.site] = ledger.report(1e-3, 3.0, "prv")
        assert audit["epsilon"] == pytest.approx(reports[data.site]["epsilon"])
        audits[data.site] = audit
    coord = Coordinator(RunSettings(out_dir=str(tmp_path / "run"), rounds=2,
                                    config=config_dict(cfg)))
    coord.site_reports = reports
    coord.rounds_log = [{"round": r, "epsilon_spent": {s: rep["epsilon"] * r / 2
                                                       for s, rep in reports.items()}}
                        for r in (1, 2)]
    coord.write_privacy()
    merged = coord.write_audit(audits)
    saved = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert set(saved["sites"]) == {"site0", "site1"} == set(merged["sites"])
    assert saved["epsilon"] == pytest.approx(max(r["epsilon"] for r in reports.values()))
    assert len(saved["epsilon_by_round"]["site1"]) == 2
    assert saved["verdict"]["status"] in ("pass", "fail")
    assert (tmp_path / "run" / "audit.html").stat().st_size > 1000
