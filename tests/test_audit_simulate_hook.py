"""ehr-simulate --audit's hook on a run folder shaped like ehr-server's outputs (no Flower)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import ModelConfig
from common.model.store import save_model
from common.model.train import build_model
from common.vocabulary import Vocabulary
from privacy.accountant import Mechanism
from privacy.report import site_report

V = 30


def test_simulate_audit_hook_writes_json_and_html(tmp_path: Path) -> None:
    simulate_cli = pytest.importorskip("simulations.simulate_cli")
    if not hasattr(simulate_cli, "run_audit"):
        pytest.skip("ehr-simulate has no audit hook")
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=4, threshold=0.2)
    vocab = Vocabulary(codes=tuple(f"{200 + i}" for i in range(V)), name="test")
    save_model(tmp_path / "model", build_model(V, cfg), cfg, vocab)
    rng = np.random.default_rng(0)
    (tmp_path / "sites").mkdir()
    reports = {}
    for k in range(2):
        train = (rng.random((60, V)) < 0.15).astype(np.uint8)
        hold = (rng.random((20, V)) < 0.15).astype(np.uint8)
        np.savez(tmp_path / "sites" / f"site{k}.npz", train=train, holdout=hold)
        reports[f"site{k}"] = site_report(f"site{k}", [Mechanism(1.5, 0.1, 20 + k)] * 2, 1e-5,
                                          cross_check=False)
    eps = max(r["epsilon"] for r in reports.values())
    (tmp_path / "privacy.json").write_text(json.dumps({"epsilon": eps, "delta": 1e-5,
                                                       "sites": reports}))
    rounds = [{"round": r, "epsilon_spent": {s: rep["epsilon"] * r / 2
                                             for s, rep in reports.items()}} for r in (1, 2)]
    (tmp_path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    simulate_cli.run_audit(tmp_path, 2)
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert set(audit["sites"]) == {"site0", "site1"}
    assert audit["epsilon"] == pytest.approx(eps)
    for name, site in audit["sites"].items():
        assert site["epsilon"] == pytest.approx(reports[name]["epsilon"])
        assert site["eps_lb"] is not None
        assert {"membership", "attribute", "white_box"} <= set(site)
    assert len(audit["epsilon_by_round"]["site1"]) == 2
    assert (tmp_path / "audit.html").exists()
