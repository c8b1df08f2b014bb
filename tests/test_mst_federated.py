"""Federated MST (issue 17): the sites' marginal releases (sensitivity, OS noise, ledger first,
the plan's epsilon recomputed independently), the coordinator's tree, and a real deployment
(ehr-server --generator mst + two ehr-clients) whose every reply conforms to the schema."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from conftest import tiny_site_config
from scipy.optimize import brentq
from scipy.stats import norm
from test_federation_deploy import BIN, Procs

from fedsynth.client.site_marginals import site_marginals
from fedsynth.client.site_training import SiteData, SitePlan, open_site_ledger
from fedsynth.common.model.tree import load_tree
from fedsynth.federation.flower_runtime import free_port
from fedsynth.federation.protocol import (
    MARGINALS,
    ONE_WAY,
    PAIRS,
    MarginalsReply,
    MarginalsRequest,
    check_reply,
    check_structure,
)
from fedsynth.privacy.marginals import (
    clip_codes_secure,
    pair_counts,
    pair_sensitivity,
    release_one_way,
    release_pairs,
)
from fedsynth.server.mst import MSTSettings, fit_tree, sum_one_way, tree_codes

DELTA = 1e-5


def _data(n: int = 400, v: int = 10, seed: int = 0) -> SiteData:
    rng = np.random.default_rng(seed)
    X = (rng.random((n, v)) < np.linspace(0.6, 0.05, v)).astype(np.uint8)

    class Vocab:
        name, codes = "t", tuple(f"c{i}" for i in range(v))

    return SiteData("A", X, X[:0], Vocab())


def _plan(rnd: int, eps: float = 1.0) -> SitePlan:
    return SitePlan(round=rnd, rounds=2, run_id="r1", target_epsilon=eps,
                    config=tiny_site_config())


def _request(stage: str, rnd: int, cols: list[int] | None = None, k: int = 4,
             eps: float = 1.0) -> MarginalsRequest:
    return MarginalsRequest(_plan(rnd, eps), stage, k, 1 / 3, cols or [])


# ---------------------------------------------------------------------------- the releases
def test_pair_sensitivity_is_the_largest_change_one_patient_makes() -> None:
    """Independent count: a patient with m codes kept adds 1 to C(m, 2) co-counts."""
    for k in (2, 3, 5, 8):
        assert pair_sensitivity(k) == pytest.approx(math.sqrt(len(list(
            itertools.combinations(range(k), 2)))))
        rng = np.random.default_rng(k)
        for _ in range(20):
            row = (rng.random((1, 12)) < rng.uniform(0.1, 0.9)).astype(np.uint8)
            kept = clip_codes_secure(row, k)
            assert kept.sum() == min(k, row.sum()) and np.all(kept <= row)
            assert np.linalg.norm(pair_counts(kept)) <= pair_sensitivity(k) + 1e-12
        full = clip_codes_secure(np.ones((1, 12), np.uint8), k)
        assert np.linalg.norm(pair_counts(full)) == pytest.approx(pair_sensitivity(k))


def test_releases_add_noise_of_the_stated_std_from_the_os() -> None:
    X = np.ones((3, 4), np.uint8)
    draws = np.array([release_pairs(X, np.arange(4), 4, 2.0).counts for _ in range(300)])
    assert draws.mean(0) == pytest.approx(np.full(6, 3.0), abs=1.5)
    assert draws.std() == pytest.approx(2.0 * pair_sensitivity(4), rel=0.15)
    np.random.seed(0)
    a = release_one_way(X, 4, 1.0).counts
    np.random.seed(0)
    b = release_one_way(X, 4, 1.0).counts
    assert not np.allclose(a, b)  # not numpy's seeded generator


def _gaussian_delta(eps: float, mu: float) -> float:
    """Exact delta(eps) of a Gaussian mechanism with mu = Delta / sigma (Balle & Wang 2018,
    Thm 8): Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    return float(norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2))


def test_two_releases_reach_the_target_by_an_independent_computation(tmp_path) -> None:
    data = _data()
    ledger = open_site_ledger(tmp_path, "A", DELTA, len(data.train))
    one = site_marginals(data, _request(ONE_WAY, 1), ledger, 5.0, tmp_path)
    assert one.status == "ok" and one.counts.shape == (10,) and one.size is not None
    assert len(ledger.history) == 1  # recorded before it was returned
    cols = [0, 1, 2, 3, 4]
    pairs = site_marginals(data, _request(PAIRS, 2, cols), ledger, 5.0, tmp_path)
    assert pairs.status == "ok" and pairs.counts.shape == (10,)
    sigmas = [m.noise_multiplier for m in ledger.history]
    assert all(m.sample_rate == 1.0 and m.steps == 1 for m in ledger.history)
    # the one-way release took a third of the plan's rho: sigma_1^-2 = (sigma_1^-2 + sigma_2^-2)/3
    rho = [1 / (2 * s**2) for s in sigmas]
    assert rho[0] / sum(rho) == pytest.approx(1 / 3, rel=0.02)
    # two Gaussians compose as one with mu^2 = sum 1/sigma^2: its exact delta at the reported
    # epsilon is the site's delta (the accountant is tight, and within the target)
    mu = math.sqrt(sum(1 / s**2 for s in sigmas))
    eps_exact = brentq(lambda e: _gaussian_delta(e, mu) - DELTA, 1e-6, 50)
    reported = pairs.privacy["epsilon"]
    assert reported <= 1.0 + 1e-6 and eps_exact <= 1.0 + 1e-3
    assert reported == pytest.approx(eps_exact, rel=0.02)
    # the noise std is sigma x Delta_2
    assert one.noise_std == pytest.approx(sigmas[0] * math.sqrt(4 + 1))
    assert pairs.noise_std == pytest.approx(sigmas[1] * pair_sensitivity(4))


def test_a_repeated_request_is_resent_and_a_further_one_refused(tmp_path) -> None:
    data = _data()
    ledger = open_site_ledger(tmp_path, "A", DELTA, len(data.train))
    first = site_marginals(data, _request(ONE_WAY, 1), ledger, 5.0, tmp_path)
    again = site_marginals(data, _request(ONE_WAY, 1), ledger, 5.0, tmp_path)
    assert np.array_equal(first.counts, again.counts) and len(ledger.history) == 1
    site_marginals(data, _request(PAIRS, 2, [0, 1, 2]), ledger, 5.0, tmp_path)
    more = site_marginals(data, _request(PAIRS, 2, [3, 4, 5]), ledger, 5.0, tmp_path)
    assert more.status == "refused" and "left" in more.reason and more.counts is None
    assert len(ledger.history) == 2  # nothing spent on the refusal


@pytest.mark.parametrize("req, words", [
    (MarginalsRequest(_plan(1), ONE_WAY, 1), "max_codes"),
    (MarginalsRequest(_plan(1), ONE_WAY, 4, 0.0), "share"),
    (MarginalsRequest(_plan(2), PAIRS, 4, 1 / 3, [0, 99]), "outside"),
    (MarginalsRequest(_plan(2), PAIRS, 4, 1 / 3, [1, 1]), "distinct"),
    (MarginalsRequest(_plan(2), "three-way", 4), "stage"),
])
def test_a_malformed_request_is_refused_before_any_spend(tmp_path, req, words) -> None:
    data = _data()
    ledger = open_site_ledger(tmp_path, "A", DELTA, len(data.train))
    out = site_marginals(data, req, ledger, 5.0, tmp_path)
    assert out.status == "refused" and words in out.reason and len(ledger.history) == 0


def test_a_site_over_its_budget_refuses(tmp_path) -> None:
    data = _data()
    ledger = open_site_ledger(tmp_path, "A", DELTA, len(data.train))
    out = site_marginals(data, _request(ONE_WAY, 1, eps=3.0), ledger, 0.5, tmp_path)
    assert out.status == "ok" and out.privacy["epsilon"] <= 0.5 + 1e-6  # min(target, budget)


# ---------------------------------------------------------------------------- coordinator
def _chain(n: int, seed: int = 0) -> np.ndarray:
    """Codes 0-1-2-3 a strongly dependent chain, 4-5 independent noise."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 6), np.uint8)
    X[:, 0] = rng.random(n) < 0.4
    for j in (1, 2, 3):
        X[:, j] = np.where(rng.random(n) < 0.9, X[:, j - 1], rng.random(n) < 0.5)
    X[:, 4:] = rng.random((n, 2)) < 0.3
    return X


def _reply(site: str, counts: np.ndarray, size: float | None, sd: float) -> MarginalsReply:
    return MarginalsReply(site, "ok", counts=counts, size=size, noise_std=sd)


def test_the_coordinator_finds_the_chain_from_summed_releases() -> None:
    parts = [_chain(4000, s) for s in range(3)]
    ones = [release_one_way(X, 6, 0.05) for X in parts]
    one = sum_one_way([_reply(f"s{i}", o.counts, o.size, o.noise_std)
                       for i, o in enumerate(ones)])
    cfg = MSTSettings(max_codes=6)
    cols = tree_codes(one, cfg)
    assert cols == list(range(6))
    pairs = [release_pairs(X, np.array(cols), 6, 0.05) for X in parts]
    sampler, info = fit_tree(one, cols, [_reply(f"s{i}", p.counts, None, p.noise_std)
                                         for i, p in enumerate(pairs)], cfg)
    assert {(0, 1), (1, 2), (2, 3)} <= {tuple(sorted(e)) for e in sampler.edges}
    synth = sampler.sample(20000, seed=1)
    real = np.vstack(parts)
    assert np.abs(synth.mean(0) - real.mean(0)).max() < 0.02
    co = lambda M: (M[:, :4].T.astype(float) @ M[:, :4]) / len(M)  # noqa: E731
    assert np.abs(co(synth) - co(real))[np.triu_indices(4, 1)].max() < 0.06
    assert info["tree_codes"] == 6 and info["edges"] == 5


def test_protocol_round_trip_and_schema() -> None:
    req = MarginalsRequest(_plan(2), PAIRS, 8, 1 / 3, [2, 5, 7])
    back = MarginalsRequest.unpack(req.pack())
    assert (back.stage, back.max_codes, back.cols) == (PAIRS, 8, [2, 5, 7])
    rep = MarginalsReply("A", "ok", counts=np.arange(3.0), size=None, noise_std=1.5,
                         privacy={"epsilon": 1.0, "delta": 1e-5, "n_train": 9},
                         ledger_head={"seq": 1})
    content = rep.pack()
    assert check_reply(MARGINALS, content) == []
    assert "n_train" not in MarginalsReply.unpack(content).privacy  # public report only
    content["site"]["n_train"] = 412
    assert any("undeclared" in p for p in check_reply(MARGINALS, content))


# ---------------------------------------------------------------------------- deployment
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ehr_server_generator_mst_with_two_clients(tmp_path, monkeypatch) -> None:
    from fedsynth.common.data import demo_cohort, write_matrix

    cohort = demo_cohort(n_sites=2, patients_per_site=300, seed=0)
    names = cohort.covariates["site"].astype(str).to_numpy()
    paths = {}
    for i, name in enumerate(dict.fromkeys(names)):
        idx = np.flatnonzero(names == name)
        paths["AB"[i]] = tmp_path / f"site{i}.csv"
        write_matrix(paths["AB"[i]], cohort.X[idx], cohort.vocab, cohort.patient_ids[idx])
    capture = tmp_path / "replies.jsonl"
    monkeypatch.setenv("FEDSYNTH_CAPTURE_REPLIES", str(capture))
    port, out = free_port(), tmp_path / "run"
    procs = Procs()
    try:
        server = procs.start(
            [str(BIN / "ehr-server"), "--host", "127.0.0.1", "--port", str(port), "--insecure",
             "--generator", "mst", "--epsilon", "2", "--samples", "200", "--out", str(out),
             "--no-progress", "--min-sites", "2", "--round-timeout", "120"],
            tmp_path / "server.log")
        for site in "AB":
            procs.start([str(BIN / "ehr-client"), "--site", site, "--data", str(paths[site]),
                         "--server", f"127.0.0.1:{port}", "--state-dir",
                         str(tmp_path / f"state-{site}"), "--epsilon-budget", "2",
                         "--insecure", "--no-check", "--threads", "1"],
                        tmp_path / f"client-{site}.log")
        assert server.wait(240) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        procs.stop()
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["generator"] == "federated MST" and set(privacy["sites"]) == {"A", "B"}
    for site, report in privacy["sites"].items():
        assert 1.9 < report["epsilon"] <= 2.0 + 1e-6
        notes = [h["mechanism"] for h in report["history"]]
        assert notes == ["MST one-way marginals (Gaussian)", "MST pairs marginals (Gaussian)"]
        ledger = (tmp_path / f"state-{site}" / f"ledger-{site}.jsonl").read_text().splitlines()
        assert len(ledger) == 2
        # served by the resident site worker, which says so on the site's console and log
        events = [json.loads(x) for x in (tmp_path / f"state-{site}" / "logs" /
                                          f"site-{site}.jsonl").read_text().splitlines()]
        assert [e.get("what") for e in events if e["event"] == "query"] == [
            "query", "mst one-way", "mst pairs"]
    stages = [json.loads(x)["stage"] for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert stages == ["mst one-way", "mst pairs"]
    synth = (out / "synthetic.csv").read_text().splitlines()
    assert len(synth) == 201
    tree = load_tree(out / "model" / "tree.json")
    assert tree.sample(50).shape == (50, len(cohort.vocab.codes))
    # ehr-sample reads the release like any model folder
    import subprocess

    syn = tmp_path / "more.csv"
    done = subprocess.run([str(BIN / "ehr-sample"), "--model", str(out / "model"), "--n", "30",
                           "--out", str(syn)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert syn.read_text().splitlines()[0].split(",")[1:] == list(cohort.vocab.codes)
    assert len(syn.read_text().splitlines()) == 31
    lines = [json.loads(x) for x in capture.read_text().splitlines()]
    kinds = [x["message_type"] for x in lines]
    assert kinds.count("query") == 2 and kinds.count(MARGINALS) == 4, kinds
    for line in lines:  # everything a site sent is declared: DP releases or public metadata
        assert check_structure(line["message_type"], line["content"]) == [], line
