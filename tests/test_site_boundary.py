"""The site's privacy boundary (issue 14), tested as the coordinator-side attacker would:

- a real loopback federation (ehr-server + two ehr-client processes) with every reply the
  coordinator receives captured: each conforms to the declared schema, the schema declares
  none of the old leaky names, and no value anywhere in a reply equals a site's true size;
- a plan whose delta exceeds the site's own is refused and nothing is spent;
- a site that rolls its ledger back (both files) is refused by the coordinator's witness: its
  update is not aggregated and the next plan tells the site, which trains nothing;
- the FedAvg weight is the noisy size from the DP counts release, never a number the train
  reply carries; a site whose delta exceeds the run's is not aggregated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLOWER_CONFIG as TINY
from conftest import tiny_site_config
from test_federation_deploy import BIN, Procs, check_outputs, rounds

from fedsynth.client.site_training import SiteData, open_site_ledger, run_site_round, site_counts
from fedsynth.federation.flower_runtime import free_port
from fedsynth.federation.protocol import SCHEMA, QueryReply, SitePlan, TrainReply, check_structure
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.counts import NoisyCounts
from fedsynth.privacy.ledger import Ledger
from fedsynth.privacy.witness import SiteKey, sign_head
from fedsynth.server.coordinator import Coordinator
from fedsynth.server.settings import RunSettings, config_dict

FORBIDDEN = ("loss", "seconds", "examples_per_s", "n_train", "n_holdout", "planned_examples",
             "dimwise", "expected_batch", "auroc", "metrics")

# ---------------------------------------------------------------------------- plain functions
_config = tiny_site_config


def _data(n: int = 120, v: int = 12) -> SiteData:
    rng = np.random.default_rng(0)
    X = (rng.random((n, v)) < np.linspace(0.5, 0.05, v)).astype(np.uint8)

    class Vocab:
        name, codes = "t", tuple(f"c{i}" for i in range(v))

    return SiteData("A", X[: n * 3 // 4], X[n * 3 // 4:], Vocab())


def _plan(rnd: int, delta: float | None = None, refusal: str = "") -> SitePlan:
    return SitePlan(round=rnd, rounds=2, run_id="r1", target_epsilon=3.0, config=_config(),
                    delta=delta, refusal=refusal)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("ledger-*"))}


def test_plan_delta_above_the_sites_is_refused_and_nothing_spent(tmp_path) -> None:
    data = _data()
    ledger = open_site_ledger(tmp_path, "A", 1e-5, data.train.shape[0])
    plan0 = _plan(0, delta=9e-3)
    counts = site_counts(data, plan0, ledger, 3.0)
    assert counts.status == "refused" and counts.counts is None
    assert "9e-03" in counts.reason or "0.009" in counts.reason
    before = _files(tmp_path)
    from fedsynth.common.model.train import build_model

    g = {k: v.detach().numpy().copy()
         for k, v in build_model(data.train.shape[1], _config().model).state_dict().items()}
    upd = run_site_round(g, g, data, _plan(1, delta=9e-3), ledger, 3.0)
    assert upd.status == "refused" and upd.weights is None and "delta" in upd.reason
    assert _files(tmp_path) == before  # nothing recorded
    assert Ledger.open(tmp_path, "A").history == []
    # a plan at or below the site's delta is accounted at the SITE's delta
    ok = site_counts(data, _plan(0, delta=1e-6), ledger, 3.0)
    assert ok.status == "ok" and ok.privacy["delta"] == 1e-5


def _coordinator(tmp_path: Path, delta: float | None = None) -> Coordinator:
    return Coordinator(RunSettings(out_dir=str(tmp_path / "out"), rounds=3, min_sites=1,
                                   delta=delta, config=config_dict(_config())))


def _query(ledger: Ledger, key: SiteKey, size: float, report: dict | None = None) -> QueryReply:
    return QueryReply(ledger.site, "ok", "", "t", ["a", "b"],
                      report or ledger.report(None, 3.0), sign_head(ledger.head(), key),
                      NoisyCounts(np.array([5.0, 1.0]), size, 2.0))


def _train(ledger: Ledger, key: SiteKey, scale: float = 0.01) -> TrainReply:
    w = {"w": np.full((3,), scale, np.float32)}
    return TrainReply(ledger.site, "ok", "", w, w, 2, ledger.report(None, 3.0),
                      sign_head(ledger.head(), key))


def test_rolled_back_site_is_refused_by_the_witness(tmp_path) -> None:
    state = tmp_path / "A"
    ledger = Ledger.open(state, "A", 1e-5)
    key = SiteKey.load_or_create(state, "A")
    ledger.record(Mechanism(5.0, 1.0, 1), "r1", 0, note="code counts and site size")
    coord = _coordinator(tmp_path)
    coord.receive_query([_query(ledger, key, 90.0)])
    snapshot = tmp_path / "snapshot"
    shutil.copytree(state, snapshot)  # the site keeps a copy of both ledger files
    ledger.record(Mechanism(1.0, 0.25, 2), "r1", 1, note="DP-SGD round 1")
    updates, refusals, _ = coord.receive_train([_train(ledger, key)])
    assert [u.site for u in updates] == ["A"] and not refusals
    # roll BOTH files back (the local check cannot see it) and spend the round again
    shutil.rmtree(state)
    shutil.copytree(snapshot, state)
    rolled = Ledger.open(state, "A")
    rolled.record(Mechanism(1.0, 0.25, 2), "r1", 2, note="DP-SGD round 2")
    updates, refusals, _ = coord.receive_train([_train(rolled, key)])
    assert updates == [] and "behind" in refusals["A"]
    plan = coord.plan(3, "A")
    assert plan.refusal and coord.plan(3, "B").refusal == ""
    # the site, told, trains nothing; its ledger is unchanged
    data = _data()
    before = _files(state)
    upd = run_site_round({}, None, data, plan, Ledger.open(state, "A"), 3.0)
    assert upd.status == "refused" and "coordinator refused" in upd.reason
    assert _files(state) == before
    # the witness (and the refusal) survive a coordinator restart through the checkpoint
    coord.save_checkpoint(1)
    again = Coordinator(RunSettings(out_dir=str(tmp_path / "out"), rounds=3, min_sites=1,
                                    resume=True, config=config_dict(_config())))
    assert again.refused_sites == coord.refused_sites
    assert again.witness.to_dict() == coord.witness.to_dict()


def test_head_signed_by_another_key_is_refused(tmp_path) -> None:
    ledger = Ledger.open(tmp_path / "A", "A", 1e-5)
    coord = _coordinator(tmp_path)
    coord.receive_query([_query(ledger, SiteKey.load_or_create(tmp_path / "A", "A"), 90.0)])
    thief = SiteKey.load_or_create(tmp_path / "other", "A")
    updates, refusals, _ = coord.receive_train([_train(ledger, thief)])
    assert not updates and "key" in refusals["A"]


def test_weight_is_the_noisy_size_never_the_reply(tmp_path) -> None:
    coord = _coordinator(tmp_path)
    sites = {}
    for name, size in (("A", 100.0), ("B", 300.0)):
        led = Ledger.open(tmp_path / name, name, 1e-5)
        key = SiteKey.load_or_create(tmp_path / name, name)
        sites[name] = (led, key)
        coord.receive_query([_query(led, key, size)])
    replies = [_train(*sites["A"]), _train(*sites["B"])]
    replies[0].steps = 10**9  # whatever a site says in its reply is not a weight
    updates, refusals, _ = coord.receive_train(replies)
    assert not refusals and {u.site: u.weight for u in updates} == {"A": 100.0, "B": 300.0}
    # a site without a counts release: equal weights for all
    coord.site_sizes.pop("B")
    updates, _, _ = coord.receive_train([_train(*sites["A"]), _train(*sites["B"])])
    assert [u.weight for u in updates] == [1.0, 1.0]


def test_site_delta_above_the_runs_is_not_aggregated(tmp_path) -> None:
    coord = _coordinator(tmp_path, delta=1e-5)
    led = Ledger.open(tmp_path / "A", "A", 9e-3)
    key = SiteKey.load_or_create(tmp_path / "A", "A")
    led.record(Mechanism(1.0, 0.25, 2), "r1", 1)
    updates, refusals, _ = coord.receive_train([_train(led, key)])
    assert not updates and "delta" in refusals["A"]
    assert coord.plan(2, "A").refusal


# ---------------------------------------------------------------------------- real federation
def _walk(value: object) -> list[float]:
    """Every number in a captured value, JSON strings parsed."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return []
        return _walk(parsed) if isinstance(parsed, dict | list) else []
    if isinstance(value, dict):
        return [x for v in value.values() for x in _walk(v)]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return []


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from fedsynth.common.data import demo_cohort, split_holdout, write_matrix

    folder = tmp_path_factory.mktemp("boundary")
    cohort = demo_cohort(n_sites=2, patients_per_site=80, seed=0)
    names = cohort.covariates["site"].astype(str).to_numpy()
    out: dict[str, object] = {"sizes": {}}
    for i, name in enumerate(dict.fromkeys(names)):
        idx = np.flatnonzero(names == name)
        path = folder / f"site{i}.csv"
        write_matrix(path, cohort.X[idx], cohort.vocab, cohort.patient_ids[idx])
        out["AB"[i]] = path
        # the site's true training size, as ehr-client computes it (holdout 0.2, seed 0)
        part = cohort.subset(idx)
        tr, _ = split_holdout(part, 0.2, 0)
        out["sizes"][("AB"[i])] = int(tr.X.shape[0])  # type: ignore[index]
    (folder / "tiny.toml").write_text(TINY)
    out["config"] = folder / "tiny.toml"
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_every_reply_conforms_and_reveals_no_size(two_sites, tmp_path, monkeypatch) -> None:
    capture = tmp_path / "replies.jsonl"
    monkeypatch.setenv("FEDSYNTH_CAPTURE_REPLIES", str(capture))
    port, out = free_port(), tmp_path / "run"
    procs = Procs()
    try:
        server = procs.start(
            [str(BIN / "ehr-server"), "--host", "127.0.0.1", "--port", str(port), "--insecure",
             "--rounds", "2", "--epsilon", "3", "--samples", "200", "--config",
             str(two_sites["config"]), "--out", str(out), "--no-progress", "--min-sites", "2",
             "--round-timeout", "150"], tmp_path / "server.log")
        for site in "AB":
            procs.start([str(BIN / "ehr-client"), "--site", site, "--data",
                         str(two_sites[site]), "--server", f"127.0.0.1:{port}", "--state-dir",
                         str(tmp_path / f"state-{site}"), "--epsilon-budget", "3",
                         "--insecure", "--no-check", "--threads", "1"],
                        tmp_path / f"client-{site}.log")
        assert server.wait(330) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        procs.stop()
    check_outputs(out, 2, {"A", "B"})
    for r in rounds(out):
        assert sorted(r["accepted"]) == ["A", "B"]
        assert not {"mean_loss", "site_metrics"} & set(r)
    # the declared schema holds none of the old leaky names
    declared = [f"{m}.{rec}.{k}" for m, recs in SCHEMA.items() for rec, spec in recs.items()
                for k in (spec.keys or {})]
    assert not [d for d in declared if any(bad in d for bad in FORBIDDEN)]
    lines = [json.loads(x) for x in capture.read_text().splitlines()]
    kinds = [x["message_type"] for x in lines]
    assert kinds.count("query") == 2 and kinds.count("train") == 4, kinds
    assert kinds.count("evaluate") == 2, kinds
    sizes = set(two_sites["sizes"].values())  # type: ignore[union-attr]
    for line in lines:
        assert check_structure(line["message_type"], line["content"]) == [], line
        for name, record in line["content"].items():
            if record["kind"] == "array":
                continue
            numbers = _walk({k: v.get("value") for k, v in record["keys"].items()})
            assert not sizes & {x for x in numbers if float(x).is_integer()}, (name, sizes)
    # the round's figures stayed at the sites
    for site in "AB":
        local = (tmp_path / f"state-{site}" / f"rounds-{site}.jsonl").read_text().splitlines()
        trained = [json.loads(x) for x in local if json.loads(x)["event"] == "train"]
        assert len(trained) == 2 and all("loss" in x for x in trained)
        assert trained[0]["n_train"] == two_sites["sizes"][site]  # type: ignore[index]
