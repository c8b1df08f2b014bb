"""The record columns' counts (issue 16): a Gaussian mechanism of their own. Its sensitivity is
checked against neighbouring data sets built by hand, its noise comes from the OS unless a test
seeds it, each column's distribution is post-processing, and a DP whole-records run lists it in
privacy.json as its own mechanism, composed in the ledger with the code counts and DP-SGD."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.data.schema import schema_for
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.outcome_counts import MECHANISM_NOTE as OUTCOME_NOTE
from fedsynth.privacy.record_counts import (
    MECHANISM_NOTE,
    column_prevalence,
    release_column_counts,
    sensitivity,
)

GROUPS = (3, 2, 4)


def _records(n: int, seed: int = 0, missing: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    T = np.zeros((n, sum(GROUPS)), dtype=np.uint8)
    start = 0
    for k in GROUPS:
        pick = rng.integers(0, k, n)
        keep = rng.random(n) >= missing
        T[np.flatnonzero(keep), start + pick[keep]] = 1
        start += k
    return T


def test_adding_a_patient_moves_the_counts_by_sqrt_columns() -> None:
    T = _records(200)
    for extra in (_records(1, seed=5), _records(1, seed=6, missing=0.5)):
        a = release_column_counts(T, GROUPS, 2.0, rng=np.random.default_rng(1))
        b = release_column_counts(np.vstack([T, extra]), GROUPS, 2.0,
                                  rng=np.random.default_rng(1))
        moved = np.linalg.norm(b.counts - a.counts)
        assert moved == pytest.approx(np.sqrt(extra.sum()))  # one per column it has
        assert moved <= sensitivity(GROUPS) + 1e-12 == np.sqrt(3) + 1e-12
    assert a.noise_std == pytest.approx(2.0 * np.sqrt(3))


def test_a_record_with_two_values_in_a_column_is_refused() -> None:
    T = _records(10)
    T[0, :2] = 1
    with pytest.raises(ValueError, match="more than one token"):
        release_column_counts(T, GROUPS, 1.0)


def test_release_uses_fresh_os_noise_and_prevalence_is_normalised_per_column() -> None:
    T = _records(5000)
    a, b = (release_column_counts(T, GROUPS, 1.0) for _ in range(2))
    assert not np.allclose(a.counts, b.counts)  # no seed: two releases differ
    p = column_prevalence(a, GROUPS)
    np.testing.assert_allclose(np.add.reduceat(p, [0, 3, 5]), 1.0)
    truth = T.mean(axis=0) / 1.0
    assert np.abs(p - truth).max() < 0.02
    assert (column_prevalence(type(a)(np.full(9, -5.0), 0.0, 1.0), GROUPS)[:3] == 1 / 3).all()


def test_dp_records_run_lists_the_column_counts_as_their_own_mechanism(
        tmp_path: Path, diabetes_path: Path) -> None:
    """ehr-train --epsilon on whole records: privacy.json has four mechanisms (code counts,
    column counts, the outcome's pair counts, DP-SGD) and the ledger's epsilon is their
    composition, recomputed here; ehr-sample redraws the outcome from the model's outcome file,
    and refuses one that does not fit the model's columns."""
    df = pd.read_csv(diabetes_path, dtype=str).head(4000)
    data = tmp_path / "d.csv.gz"
    df.to_csv(data, index=False)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[model]\nhidden = [32, 32]\ntime_dim = 16\nsample_steps = 4\n"
                   "[privacy]\nhidden = [32]\ntime_dim = 16\nepochs = 1\nbatch_size = 512\n"
                   "records_max_grad_norm = 0.3\n")
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / "ehr-train"), "--data", str(data), "--format", "diabetes130", "--epsilon",
         "3", "--config", str(cfg), "--out", str(tmp_path / "m"), "--state-dir",
         str(tmp_path / "state"), "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    privacy = json.loads((tmp_path / "m" / "privacy.json").read_text())
    names = [m["name"] for m in privacy["mechanisms"]]
    assert MECHANISM_NOTE in names and "DP-SGD" in names and len(names) == 4
    pairs = next(m for m in privacy["mechanisms"] if m["name"] == OUTCOME_NOTE)
    assert len(pairs["columns"]) == 10 and "readmitted" not in pairs["columns"]
    assert pairs["l2_sensitivity"] == pytest.approx(np.sqrt(10))
    col = next(m for m in privacy["mechanisms"] if m["name"] == MECHANISM_NOTE)
    # one value per column and patient, and one for its number of codes (codes:count)
    columns = len(schema_for("diabetes130").columns) + 1
    assert col["l2_sensitivity"] == pytest.approx(np.sqrt(columns))
    mechs = [Mechanism(**{k: m[k] for k in ("noise_multiplier", "sample_rate", "steps")})
             for m in privacy["this_run"]]
    assert len(mechs) == 4
    assert epsilon(mechs, privacy["delta"], "prv") == pytest.approx(privacy["epsilon"], rel=1e-6)
    assert privacy["epsilon"] <= 3.0 + 1e-9
    # DP-SGD clipped at the records' own norm, and every record of it says so
    sgd = next(m for m in privacy["mechanisms"] if m["name"] == "DP-SGD")
    assert sgd["max_grad_norm"] == 0.3
    assert [h["max_grad_norm"] for h in privacy["history"] if h["mechanism"] == "DP-SGD"] == [0.3]
    ledger = [json.loads(x) for x in next((tmp_path / "state").glob("ledger-*.jsonl"))
              .read_text().splitlines()]
    assert [e["max_grad_norm"] for e in ledger if e.get("note") == "DP-SGD"] == [0.3]
    # the release's auto guidance: post-processing, no mechanism of its own
    model_cfg = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert model_cfg["dependency_scale"] == 1.75
    # the pair counts are in the ledger once, and their noise std is z sqrt(10)
    assert [e["note"] for e in ledger].count(OUTCOME_NOTE) == 1
    fit = json.loads((tmp_path / "m" / "records_outcome.json").read_text())
    assert fit["info"]["noise_std"] == pytest.approx(
        round(pairs["noise_multiplier"] * np.sqrt(10), 4))
    sample = [str(bin_dir / "ehr-sample"), "--model", str(tmp_path / "m"), "--n", "300",
              "--out", str(tmp_path / "s.csv"), "--quiet"]
    done = subprocess.run(sample, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(pd.read_csv(tmp_path / "s.csv")["readmitted"]) <= {"NO", ">30", "<30"}
    fit["theta"] = fit["theta"][:-1]
    (tmp_path / "m" / "records_outcome.json").write_text(json.dumps(fit))
    done = subprocess.run(sample, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "records_outcome.json" in done.stderr
    assert "does not match" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- a site under a hostile plan
SCHEMA = {"name": "hand", "columns": [
    {"name": "sex", "kind": "categorical", "categories": ["F", "M"]},
    {"name": "stay", "kind": "categorical", "categories": ["short", "mid", "long"]}]}


def _site(n: int = 160):
    """A records site over ``SCHEMA`` and 6 codes, its matrix built like a real site's
    (``record_tokens``: the schema's tokens, the number of codes, then the codes)."""
    from fedsynth.client.site_training import SiteData
    from fedsynth.common.data.record_tokens import (
        model_layout,
        record_vocabulary,
        records_to_tokens,
    )
    from fedsynth.common.data.schema import schema_from_dict
    from fedsynth.common.vocabulary import Vocabulary

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"sex": rng.choice(["F", "M"], n),
                          "stay": rng.choice(["short", "mid", "long"], n)})
    codes = (rng.random((n, 6)) < 0.3).astype(np.uint8)
    layout = model_layout(schema_from_dict(SCHEMA))
    X = np.hstack([records_to_tokens(table, layout, codes), codes])
    vocab = record_vocabulary(layout, Vocabulary(tuple(f"c{i}" for i in range(6))))
    return SiteData("A", X[:120], X[120:], vocab, schema=SCHEMA)


def _groups() -> tuple[int, ...]:
    from fedsynth.common.data.record_tokens import model_columns
    from fedsynth.common.data.schema import schema_from_dict

    return model_columns(schema_from_dict(SCHEMA))[0]  # (2, 3, the number of codes' bins)


def _plan(rnd: int, share: float = 0.1, groups: tuple[int, ...] | None = None,
          kept: list[int] | None = None):
    from conftest import tiny_site_config

    from fedsynth.client.site_training import SitePlan

    cfg = tiny_site_config()
    cfg.privacy.count_epsilon_share = share
    cfg.model.one_hot_groups = _groups() if groups is None else groups
    return SitePlan(round=rnd, rounds=1, run_id="r1", target_epsilon=3.0, config=cfg, kept=kept)


def test_a_plan_asking_counts_past_the_budget_is_refused_with_nothing_spent(tmp_path) -> None:
    """The coordinator chooses the plan: a count share of the whole target would make the two
    count releases (codes', columns') compose past the site's budget. The site checks both at
    once against its own ledger and refuses before releasing anything."""
    from fedsynth.client.site_training import site_counts
    from fedsynth.privacy.ledger import Ledger

    ledger = Ledger.open(tmp_path, "A", 1e-3)
    res = site_counts(_site(), _plan(0, share=1.0), ledger, 3.0, tmp_path)
    assert res.status == "refused" and res.counts is None and res.column_counts is None
    assert Ledger.open(tmp_path, "A").history == []


def test_both_count_releases_are_spent_once_and_dp_sgd_stays_within_budget(tmp_path) -> None:
    """Asked twice (a resumed coordinator), the site re-sends both releases and spends nothing
    more; the DP-SGD round then composes with both; a plan whose one-hot groups are not the
    site's schema is refused, nothing trained."""
    from fedsynth.client.site_training import run_site_round, site_counts
    from fedsynth.common.model.train import build_model
    from fedsynth.privacy.ledger import Ledger

    data = _site()
    ledger = Ledger.open(tmp_path, "A", 1e-3)
    first = site_counts(data, _plan(0), ledger, 3.0, tmp_path)
    again = site_counts(data, _plan(0), Ledger.open(tmp_path, "A"), 3.0, tmp_path)
    tokens = sum(_groups())
    assert first.status == "ok" and first.column_counts.counts.shape == (tokens,)
    assert first.counts.counts.shape == (6,)  # the code counts cover the codes only
    np.testing.assert_array_equal(first.column_counts.counts, again.column_counts.counts)
    history = Ledger.open(tmp_path, "A").history
    assert len(history) == 2 and all(m.sample_rate == 1.0 for m in history)
    kept = list(range(tokens + 6))
    cfg = _plan(1, kept=kept).config
    g = {k: v.detach().numpy().copy()
         for k, v in build_model(len(kept), cfg.model).state_dict().items()}
    swapped = (3, 2, *_groups()[2:])
    bad = run_site_round(g, g, data, _plan(1, groups=swapped, kept=kept), ledger, 3.0)
    assert bad.status == "refused" and "schema" in bad.reason
    assert len(Ledger.open(tmp_path, "A").history) == 2
    upd = run_site_round(g, g, data, _plan(1, kept=kept), ledger, 3.0)
    assert upd.status == "ok" and len(upd.privacy["history"]) == 3
    # the site clipped at the records' norm (not the codes' max_grad_norm) and recorded it
    clip = cfg.privacy.records_max_grad_norm
    assert clip != cfg.privacy.max_grad_norm
    assert upd.privacy["history"][-1]["max_grad_norm"] == clip
    mechs = Ledger.open(tmp_path, "A").history
    assert epsilon(mechs, 1e-3, "prv") == pytest.approx(upd.privacy["epsilon"], rel=1e-6)
    assert upd.privacy["epsilon"] <= 3.0 + 1e-6


@pytest.mark.parametrize("q", [1.0, 0.9])
def test_a_coordinator_chosen_records_sample_rate_is_the_one_accounted(tmp_path, q) -> None:
    """The coordinator picks ``records_sample_rate`` in its plan (here every patient, or
    nearly, in every step). The site trains with that q, records that q in its own ledger and
    calibrates its noise to it, so the round stays within its budget whatever the plan says."""
    from fedsynth.client.site_training import run_site_round, site_counts
    from fedsynth.common.model.train import build_model
    from fedsynth.privacy.ledger import Ledger

    data = _site()
    ledger = Ledger.open(tmp_path, "A", 1e-3)
    assert site_counts(data, _plan(0), ledger, 3.0, tmp_path).status == "ok"
    kept = list(range(sum(_groups()) + 6))
    plan = _plan(1, kept=kept)
    plan.config.federation.records_sample_rate = q
    g = {k: v.detach().numpy().copy()
         for k, v in build_model(len(kept), plan.config.model).state_dict().items()}
    upd = run_site_round(g, g, data, plan, ledger, 3.0)
    assert upd.status == "ok"
    mechs = Ledger.open(tmp_path, "A").history
    assert mechs[-1].sample_rate == pytest.approx(q)
    assert epsilon(mechs, 1e-3, "prv") == pytest.approx(upd.privacy["epsilon"], rel=1e-6)
    assert upd.privacy["epsilon"] <= 3.0 + 1e-6
