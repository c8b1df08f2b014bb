"""The federated audit's plain functions (no Flower): a site audits the released model against
its own members, held-out patients and canaries, next to its own ledger's epsilon, and keeps
the result in its state folder; in a simulation the operator (who holds every site's folder)
merges the kept audits into OUT/audit.json + audit.html. The coordinator receives none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsynth.client.site_training import SiteData, SitePlan
from fedsynth.common.config import Config, ModelConfig
from fedsynth.common.model.output import OutputStep
from fedsynth.common.model.store import Generator, assemble, model_parts
from fedsynth.common.model.train import build_model
from fedsynth.common.vocabulary import Vocabulary
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.audit.canaries import insert_canaries
from fedsynth.privacy.ledger import Ledger

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


def test_site_audit_kept_at_site_and_operator_merge(tmp_path: Path) -> None:
    """Each site keeps its audit in its state folder (nothing of it is sent); the simulation
    operator, who holds every site's folder, merges them into OUT/audit.json + audit.html."""
    from fedsynth.client.site_evaluation import keep_audit
    from fedsynth.simulations.pooled import merge_local_audits

    gen = _generator()
    # the model travels as its parts (what the evaluate message carries) and is rebuilt
    conf, state, step = model_parts(gen)
    rebuilt = assemble(json.loads(json.dumps(conf)), state, step, gen.vocab, "cpu")
    synth = rebuilt.sample(100, seed=1)
    assert np.array_equal(synth, gen.sample(100, seed=1))
    cfg = Config()
    plan = SitePlan(round=2, rounds=2, run_id="r", target_epsilon=3.0, config=cfg, delta=1e-3)
    out = tmp_path / "run"
    reports = {}
    for k in range(2):
        data = _site(f"site{k}", k)
        assert len(data.members) == 80 and data.included is not None
        np.savez(_mkdir(out / "sites") / f"site{k}.npz", train=data.train, holdout=data.holdout)
        state_dir = out / "state" / data.site
        ledger = Ledger.open(state_dir, data.site, delta=1e-3)
        ledger.record(Mechanism(1.5, 0.1, 20 + k), "r", 1)
        folder = keep_audit(rebuilt, synth, data, plan, ledger, 3.0, state_dir)
        kept = json.loads((folder / "audit.json").read_text())["sites"][data.site]
        assert kept["n_members"] == 80 and kept["white_box"]["kind"] == "canaries"
        reports[data.site] = ledger.report(None, 3.0, "prv")
        assert kept["epsilon"] == pytest.approx(reports[data.site]["epsilon"])
        # once per run: asked again, the site re-reads its folder (the file is unchanged)
        before = (folder / "audit.json").read_bytes()
        assert keep_audit(rebuilt, synth, data, plan, ledger, 3.0, state_dir) == folder
        assert (folder / "audit.json").read_bytes() == before
    privacy = {"epsilon": max(r["epsilon"] for r in reports.values()), "delta": 1e-3,
               "sites": reports, "run_id": "r"}
    (out / "privacy.json").write_text(json.dumps(privacy))
    (out / "rounds.jsonl").write_text("".join(
        json.dumps({"round": r, "epsilon_spent": {s: rep["epsilon"] * r / 2
                                                  for s, rep in reports.items()}}) + "\n"
        for r in (1, 2)))
    merged = merge_local_audits(out, "r")
    saved = json.loads((out / "audit.json").read_text())
    assert merged is not None and set(saved["sites"]) == {"site0", "site1"} == set(merged["sites"])
    assert saved["epsilon"] == pytest.approx(max(r["epsilon"] for r in reports.values()))
    assert len(saved["epsilon_by_round"]["site1"]) == 2
    assert saved["verdict"]["status"] in ("pass", "fail")
    assert (out / "audit.html").stat().st_size > 1000


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_no_kept_audit_means_no_merged_audit(tmp_path: Path) -> None:
    from fedsynth.simulations.pooled import merge_local_audits

    _mkdir(tmp_path / "sites")
    np.savez(tmp_path / "sites" / "site0.npz", train=np.zeros((2, V)), holdout=np.zeros((2, V)))
    assert merge_local_audits(tmp_path, "r") is None and not (tmp_path / "audit.json").exists()
