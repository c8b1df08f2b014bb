"""The coordinator's plain logic: modelled codes and prior from the private counts, rounds that
lack min_sites change nothing, checkpoints and logs after each round, released epsilon = max
over sites."""

from __future__ import annotations

import json

import numpy as np

from fedsynth.common.config import Config
from fedsynth.privacy.counts import NoisyCounts
from fedsynth.server.aggregation import SiteUpdate
from fedsynth.server.coordinator import Coordinator
from fedsynth.server.settings import RunSettings, config_dict


def _cfg() -> Config:
    cfg = Config()
    cfg.model.hidden = (16, 16)
    cfg.model.time_dim = 8
    cfg.privacy.hidden = (16, 16)
    return cfg


def _coord(tmp_path, min_sites: int = 2) -> Coordinator:
    s = RunSettings(out_dir=str(tmp_path), rounds=2, min_sites=min_sites,
                    config=config_dict(_cfg()))
    c = Coordinator(s)
    counts = [NoisyCounts(np.array([50.0, 1.0, 30.0, 0.0]), 100.0, 2.0),
              NoisyCounts(np.array([40.0, 2.0, 35.0, 1.0]), 100.0, 2.0)]
    c.start({"name": "t", "codes": ["a", "b", "c", "d"]}, counts)
    return c


def _upd(c: Coordinator, site: str, scale: float) -> SiteUpdate:
    rng = np.random.default_rng(len(site))
    w = {k: v + scale * rng.normal(size=v.shape).astype(v.dtype) for k, v in c.weights.items()}
    return SiteUpdate(site, w, 10.0, {k: v.copy() for k, v in w.items()}, {"loss": 0.5})


def test_round_without_enough_sites_changes_nothing(tmp_path) -> None:
    c = _coord(tmp_path)
    assert c.kept == [0, 2]  # count > Phi^-1(1 - 0.01/4) x sqrt(2^2 + 2^2)
    # modelled codes: about their noisy prevalence; the others shrunk and capped (tail)
    assert np.allclose(np.asarray(c.prevalence)[[0, 2]], [0.45, 0.325], atol=0.01)
    assert max(c.prevalence[1], c.prevalence[3]) <= 5e-4
    assert c.count_info["method"] == "eb" and c.count_info["sites"] == 2
    before = {k: v.copy() for k, v in c.weights.items()}
    big = _upd(c, "B", 1000.0)
    ok = c.finish_round(1, [_upd(c, "A", 0.01), big], {}, [], 2, 1.0,
                        reports={"A": {"epsilon": 1.0, "delta": 1e-5, "accountant": "prv",
                                       "history": []}})
    assert not ok  # B rejected (x1000) -> 1 accepted < min_sites 2
    for k in before:
        np.testing.assert_array_equal(c.weights[k], before[k])
    assert not (tmp_path / "checkpoint" / "checkpoint.json").exists()
    row = json.loads((tmp_path / "rounds.jsonl").read_text().splitlines()[0])
    assert row["status"] == "insufficient" and "B" in row["rejected"]
    assert c.epsilon_spent() == {"A": 1.0}  # spend counts even without a completed round


def test_completed_round_checkpoints_and_release_is_max(tmp_path) -> None:
    c = _coord(tmp_path)
    reports = {s: {"epsilon": e, "delta": 1e-5, "accountant": "prv", "history": []}
               for s, e in (("A", 1.5), ("B", 2.5))}
    assert c.finish_round(1, [_upd(c, "A", 0.01), _upd(c, "B", 0.01)], {}, [], 2, 1.0,
                          reports=reports)
    ck = json.loads((tmp_path / "checkpoint" / "checkpoint.json").read_text())
    assert ck["round"] == 1 and ck["kept"] == [0, 2]
    doc = c.write_privacy()
    assert doc["epsilon"] == 2.5 and set(doc["sites"]) == {"A", "B"}
    assert "one site" in doc["assumption"]
    # resume: a new coordinator continues after round 1 with the same state
    s2 = RunSettings.load(tmp_path / "run.json") if (tmp_path / "run.json").exists() else None
    assert s2 is None  # run.json is the launcher's; build settings again
    r = RunSettings(out_dir=str(tmp_path), rounds=2, min_sites=2, resume=True,
                    config=config_dict(_cfg()))
    c2 = Coordinator(r)
    c2.start({"name": "t", "codes": ["a", "b", "c", "d"]}, None)
    assert c2.next_round == 2 and c2.kept == [0, 2] and c2.settings.run_id == c.settings.run_id
    for k in c.weights:
        np.testing.assert_array_equal(c2.weights[k], c.weights[k])
