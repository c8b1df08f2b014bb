"""A records site's own audit (``ehr-client --audit`` / ``ehr-simulate --audit``, no Flower):
the attribute-disclosure attack on the schema's columns runs against the site's record tables
(its real members, its held-out patients) on the released records, as ``ehr-audit`` does, and
lands in the site's kept audit.json / audit.html under ``attribute_records``; a codes site's
audit has no such section. The tables travel in a simulated site's file exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsynth.client.site_training import SiteData, SitePlan, load_site_data
from fedsynth.common.config import Config, ModelConfig
from fedsynth.common.data.record_tokens import model_layout, records_to_tokens, token_layout
from fedsynth.common.data.schema import schema_from_dict
from fedsynth.common.model.output import OutputStep
from fedsynth.common.model.store import Generator
from fedsynth.common.model.train import build_model
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.ledger import Ledger
from fedsynth.privacy.record_counts import release_column_counts

FIGURES = ("accuracy_members_synth", "accuracy_nonmembers_synth", "accuracy_members_holdout",
           "majority_rate", "gain_over_nonmembers", "gain_over_baseline")


@pytest.fixture(scope="module")
def slice_path(diabetes_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 250 diabetes130 patients: one small site."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("site-records") / "d.csv"
    pd.read_csv(diabetes_path, dtype=str, keep_default_na=False, nrows=260).to_csv(
        path, index=False)
    return path


def _generator(data: SiteData) -> Generator:
    """An untrained model over the site's columns (one-hot groups, then the codes)."""
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=2, one_hot_groups=data.groups)
    return Generator(build_model(len(data.vocab), cfg), cfg, data.vocab, OutputStep())


def _kept_audit(data: SiteData, state: Path) -> dict:
    from fedsynth.client.site_evaluation import keep_audit, site_sample

    gen = _generator(data)
    plan = SitePlan(round=1, rounds=1, run_id="r", target_epsilon=3.0, config=Config(),
                    delta=1e-3)
    ledger = Ledger.open(state, data.site, delta=1e-3)
    ledger.record(Mechanism(1.5, 0.1, 20), "r", 1)
    folder = keep_audit(gen, site_sample(gen, 120, 0), data, plan, ledger, 3.0, state)
    doc = json.loads((folder / "audit.json").read_text())
    doc["html"] = (folder / "audit.html").read_text()
    return doc


def test_records_site_audit_has_the_attribute_attack(slice_path: Path, tmp_path: Path) -> None:
    data = load_site_data(slice_path, "diabetes130", 0.3, 0, "A", columns="all")
    assert data.train_table is not None and data.holdout_table is not None
    layout = token_layout(schema_from_dict(data.schema))
    # the tables are the matrices' patients, row for row
    assert np.array_equal(records_to_tokens(data.train_table, layout),
                          data.members[:, :layout.n_tokens])
    assert np.array_equal(records_to_tokens(data.holdout_table, layout),
                          data.holdout[:, :layout.n_tokens])
    doc = _kept_audit(data, tmp_path / "state")
    site = doc["sites"]["A"]
    assert site["n_members"] == len(data.members) and site["n_synth"] == 120
    attr = site["attribute_records"]
    assert attr["targets"] == ["readmitted", "race"] and isinstance(attr["signal"], bool)
    for target in attr["targets"]:
        r = attr["by_target"][target]
        assert all(math.isfinite(r[k]) for k in FIGURES), r
        assert r["n_targets"] == len(data.holdout) // 2
    assert doc["summary"]["attribute_signal"] == attr["signal"]
    html = doc["html"]
    section = html[html.index("<section id='attribute-records'>"):]
    section = section[:section.index("</section>")]
    assert "Knowing every other" in section and "readmitted" in section
    # the membership attacks ran on the released records as the model's vectors
    assert len(site["prevalence"]["synthetic"]) == len(data.vocab)


def test_codes_site_audit_has_no_records_section(slice_path: Path, tmp_path: Path) -> None:
    data = load_site_data(slice_path, "diabetes130", 0.3, 0, "A", columns="codes")
    assert data.schema is None and data.train_table is None
    doc = _kept_audit(data, tmp_path / "state")
    assert "attribute_records" not in doc["sites"]["A"]
    assert doc["summary"]["attribute_signal"] is None
    assert "Not a whole-records model" in doc["html"]  # the report's codes-only note
    assert "Knowing every other" not in doc["html"]


def test_simulated_site_file_keeps_the_tables(slice_path: Path, tmp_path: Path) -> None:
    """ehr-simulate's site file carries the record tables exactly (typed like load_records'),
    rows aligned with the real members (the canaries are not in the table)."""
    from fedsynth.common.data.columns import load_matrix
    from fedsynth.simulations.simulate_cli import write_sites

    matrix, records, _ = load_matrix(slice_path, "diabetes130", "all")
    write_sites(matrix, [np.arange(matrix.n_patients)], 0.3, 0, tmp_path, canaries=10,
                records=records)
    data = load_site_data(tmp_path / "site0.npz", "npz", 0.3, 0, "site0")
    assert data.train_table is not None and data.holdout_table is not None
    assert data.included is not None and len(data.train_table) == len(data.members)
    with np.load(tmp_path / "site0.npz") as f:
        hold_ids = f["holdout_ids"].astype(str)
    expect = records.subset(pd.Index(records.patient_ids).get_indexer(hold_ids)).table
    pd.testing.assert_frame_equal(data.holdout_table, expect.reset_index(drop=True))
    layout = token_layout(records.schema)
    assert np.array_equal(records_to_tokens(data.train_table, layout),
                          data.members[:, :layout.n_tokens])
    # the canaries are valid records (a real row's tokens, rare codes after them, their own
    # number of codes): the column-count release accepts them
    model = model_layout(records.schema)
    assert data.canaries is not None and data.canaries[:, model.n_tokens:].sum(axis=1).min() > 0
    count = model.groups[-1]
    n_codes = data.canaries[:, model.n_tokens:].sum(axis=1)
    assert (data.canaries[:, count.start:count.stop].argmax(axis=1) == n_codes).all()
    release_column_counts(data.train[:, :model.n_tokens], data.groups, 1.0,
                          np.random.default_rng(0))
