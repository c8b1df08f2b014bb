"""ehr-benchmark --columns all (issue 16, item 7): the independent-DP-marginals records baseline
checked against an independent computation of its mechanism, MST on records, and the real CLI
writing the records table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.common.data.record_tokens import token_layout
from fedsynth.common.data.records import load_records
from fedsynth.common.record_metrics import association_r, column_marginals
from fedsynth.privacy import secure_random
from fedsynth.privacy.accountant import Mechanism, calibrate_noise, epsilon
from fedsynth.simulations.baselines import record_marginals
from fedsynth.simulations.baselines.dp_marginals import MarginalsConfig
from fedsynth.simulations.baselines.record_marginals import fit_record_marginals
from fedsynth.simulations.baselines.record_mst import fit_record_mst
from fedsynth.simulations.benchmark_records_data import demo_records, split_records

BIN = Path(sys.executable).parent
SCHEMA = ('name = "mine"\n'
          '[[columns]]\nname = "sex"\nkind = "categorical"\ncategories = ["F", "M"]\n'
          '[[columns]]\nname = "visits"\nkind = "integer"\nlow = 0\nhigh = 80\n'
          '[[columns]]\nname = "weight"\nkind = "real"\nlow = 0\nhigh = 300\n')


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory):
    """A long table read by the real loader: 400 patients, sex / visits / weight, some
    weights missing, 1-3 codes each."""
    rng = np.random.default_rng(3)
    d = tmp_path_factory.mktemp("rec")
    lines = ["patient_id,code,sex,visits,weight"]
    for i in range(400):
        sex = "F" if rng.random() < 0.4 else "M"
        visits = int(min(80, rng.poisson(3 if sex == "F" else 10)))
        weight = "" if rng.random() < 0.1 else f"{rng.uniform(40, 140):.1f}"
        for code in rng.choice(["250.0", "401.9", "428", "V45", "584"], rng.integers(1, 4),
                               replace=False):
            lines.append(f"{i},{code},{sex},{visits},{weight}")
    (d / "long.csv").write_text("\n".join(lines) + "\n")
    (d / "s.toml").write_text(SCHEMA)
    return load_records(d / "long.csv", "long", schema=d / "s.toml")


def _histograms_by_hand(table: pd.DataFrame, layout) -> np.ndarray:
    """Every column's counts over its public cells (the layout's tokens, then missing),
    computed without the baseline's code: category labels and bin bounds read directly."""
    out = []
    for g in layout.groups:
        v = table[g.name]
        if g.bounds is None:
            counts = [int((v.astype("string") == label).sum()) for label in g.labels]
        else:
            x = v.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
            counts = []
            for i, (lo, hi) in enumerate(g.bounds):
                last = i == len(g.bounds) - 1
                inside = (x >= lo) & ((x <= hi) if g.kind == "integer" or last else (x < hi))
                counts.append(int(inside.sum()))
        out += [*counts, int(v.isna().sum())]
    return np.asarray(out, dtype=float)


def test_histogram_sensitivity_is_sqrt_columns(records) -> None:
    """Removing any one patient changes the column histograms by exactly sqrt(C) in L2."""
    layout = token_layout(records.schema)
    C = len(layout.groups)
    full = _histograms_by_hand(records.table, layout)
    assert full.sum() == C * len(records)  # one cell per column and patient
    mine = np.concatenate(record_marginals.column_histograms(records.table, layout))
    assert np.array_equal(mine, full)
    for i in range(0, len(records), 37):
        rest = records.table.drop(index=records.table.index[i])
        diff = full - _histograms_by_hand(rest, layout)
        assert np.linalg.norm(diff) == pytest.approx(math.sqrt(C))
    assert record_marginals.histogram_sensitivity(C) == pytest.approx(math.sqrt(C))


def test_noise_is_calibrated_by_the_accountant(records, monkeypatch) -> None:
    """sigma from (epsilon, delta) by the project's accountant for two Gaussian releases at
    q = 1; histogram noise sigma sqrt(C) per cell, code noise sigma sqrt(k + 1) per count; every
    draw from the OS CSPRNG (recorded, not replaced)."""
    layout = token_layout(records.schema)
    C, eps, delta = len(layout.groups), 3.0, 1e-5
    draws: list[tuple[int, float]] = []
    real_gaussian = secure_random.gaussian

    def recorded(shape, std=1.0):
        draws.append((int(np.prod(shape)), float(std)))
        return real_gaussian(shape, std)

    monkeypatch.setattr(secure_random, "gaussian", recorded)
    res = fit_record_marginals(records.table, records.codes.X, layout, records.schema, eps,
                               delta)
    sigma = calibrate_noise(eps, delta, 1.0, 2, accountant="prv")
    k = MarginalsConfig().max_codes
    assert res.histogram_sd == pytest.approx(sigma * math.sqrt(C), rel=2e-3)
    assert res.codes_sd == pytest.approx(sigma * math.sqrt(k + 1), rel=2e-3)
    cells = sum(len(g.labels) + 1 for g in layout.groups)
    hist_draws = [d for d in draws if d[1] == pytest.approx(res.histogram_sd)]
    assert sum(n for n, _ in hist_draws) == cells
    code_draws = [d for d in draws if d[1] == pytest.approx(res.codes_sd)]
    assert sum(n for n, _ in code_draws) == records.codes.X.shape[1] + 1  # counts and n
    report = res.privacy
    assert report["phases"] == ["histograms", "codes"]
    spent = epsilon([Mechanism(report["history"][0]["noise_multiplier"], 1.0, 1)] * 2, delta)
    assert report["epsilon"] == pytest.approx(spent) and spent <= eps + 1e-9
    assert report["epsilon"] > 0.95 * eps  # calibrated, not over-noised


def test_sample_is_typed_like_the_loader_and_keeps_marginals(records) -> None:
    layout = token_layout(records.schema)
    res = fit_record_marginals(records.table, records.codes.X, layout, records.schema)
    assert res.privacy is None
    table, codes = res.sampler.sample_records(20_000, seed=1)
    assert list(table.columns) == records.schema.names
    assert (table.dtypes == records.table.dtypes).all()
    assert codes.shape == (20_000, records.codes.X.shape[1]) and codes.dtype == np.uint8
    m = column_marginals(records.table, table, records.schema)
    assert m["tv_mean"] < 0.02 and m["ks_mean"] < 0.05
    assert table["weight"].isna().mean() == pytest.approx(records.table["weight"].isna().mean(),
                                                          abs=0.01)
    assert table["visits"].min() >= 0 and table["visits"].max() <= 80
    assert np.allclose(codes.mean(0), records.codes.X.mean(0), atol=0.02)
    # independent columns: the sex -> visits association is gone
    assert association_r(records.table, table, records.schema) < 0.5
    private = fit_record_marginals(records.table, records.codes.X, layout, records.schema, 3.0,
                                   1e-5)
    t2, _ = private.sampler.sample_records(500, seed=2)
    assert (t2.dtypes == records.table.dtypes).all()


def test_record_mst_keeps_associations_and_accounts_its_budget() -> None:
    rec = demo_records(3, 300)
    train, hold = split_records(rec, 0.3)
    layout = token_layout(rec.schema)
    plain = fit_record_mst(train.table, train.codes.X, layout, rec.schema)
    table, codes = plain.sampler.sample_records(3000, seed=0)
    assert (table.dtypes == rec.table.dtypes).all() and codes.shape[1] == rec.codes.X.shape[1]
    indep = fit_record_marginals(train.table, train.codes.X, layout, rec.schema)
    t_ind, _ = indep.sampler.sample_records(3000, seed=0)
    assert association_r(hold.table, table, rec.schema) > \
        association_r(hold.table, t_ind, rec.schema) + 0.2
    dp = fit_record_mst(train.table, train.codes.X, layout, rec.schema, 3.0, 1e-5)
    assert 2.9 < dp.privacy["epsilon"] <= 3.0 + 1e-9 and dp.privacy["accountant"] == "rdp"
    assert len(dp.privacy["history"]) == 3
    assert dp.info["edges"] == dp.info["columns"] + dp.info["tree_codes"] - 1
    t_dp, _ = dp.sampler.sample_records(500, seed=1)
    assert (t_dp.dtypes == rec.table.dtypes).all()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ehr-benchmark"), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_cli_columns_all_smoke_writes_the_table(tmp_path: Path) -> None:
    """The real CLI on the demo records: floors, the three generators at 3 and non-private.
    (Our model under DP on 240 smoke patients keeps no code: its code metrics are null.)"""
    out = tmp_path / "b"
    done = _cli("--columns", "all", "--smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["columns"] == "all" and doc["dataset"]["target"] == "readmitted=<30"
    got = {(r["generator"], r["epsilon"]): r for r in doc["rows"]}
    assert set(got) == {("real", None), ("independent", None),
                        *((g, e) for g in ("dp_marginals", "mst", "ours") for e in (3.0, None))}
    for (gen, eps), r in got.items():
        assert r["status"] == "ok", (gen, eps, r["status"])
        keys = ["tv_mean", "ks_mean", "association_r", "downstream_auroc_ratio",
                "discriminator_auroc", "codes_per_patient"]
        # co-occurrence needs two codes present: a DP model on 240 smoke patients may keep
        # fewer, and the figure is then null, never NaN
        assert r["cooccurrence_r"] is None or math.isfinite(r["cooccurrence_r"])
        for key in keys:
            assert math.isfinite(r[key]), (gen, eps, key)
        if eps is not None:
            assert r["epsilon_spent"] <= 3.0 + 1e-6
    md = (out / "benchmark.md").read_text()
    assert "| floor: real vs real | non-private |" in md
    assert "| independent DP marginals | 3 |" in md and "association r" in md


@pytest.mark.parametrize("argv,needle", [
    (["--target", "readmitted=<30"], "--target: only with --columns all"),
    (["--columns", "all", "--generators", "medgan"], "--generators: unknown medgan"),
    (["--columns", "all", "--smoke", "--target", "nope=1"], "--target"),
])
def test_cli_errors_are_one_line(tmp_path: Path, argv: list[str], needle: str) -> None:
    done = _cli(*argv, "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and needle in done.stderr
