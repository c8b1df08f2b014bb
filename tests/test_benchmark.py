"""ehr-benchmark: the table writer, the summary over seeds, the target check and plots on fake
results, CLI input errors, and a seconds-long smoke run of the real pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsynth.simulations.benchmark import run_benchmark
from fedsynth.simulations.benchmark_cli import main
from fedsynth.simulations.benchmark_report import markdown_table, write_report
from fedsynth.simulations.benchmark_settings import METRICS, BenchmarkSettings
from fedsynth.simulations.benchmark_summary import summarize, target_check


def _row(gen: str, eps: float | None, seed: int, **metrics: float) -> dict:
    base = {key: 0.5 for key, _, _ in METRICS}
    base.update(metrics)
    return {"generator": gen, "epsilon": eps, "seed": seed, "status": "ok", **base}


@pytest.fixture()
def fake_rows() -> list[dict]:
    rows = []
    for seed, jitter in ((0, 0.0), (1, 0.02)):
        for eps in (1.0, 3.0, None):
            rows.append(_row("ours", eps, seed, cooccurrence_r=0.89 + jitter,
                             dimwise_auroc_ratio=0.80 + jitter))
            rows.append(_row("dp_marginals", eps, seed, cooccurrence_r=0.91,
                             dimwise_auroc_ratio=0.70))
            rows.append(_row("medgan", eps, seed, cooccurrence_r=0.5, dimwise_auroc_ratio=0.6))
    rows.append({"generator": "ours_federated", "epsilon": None, "seed": 0,
                 "status": "n/a: the federation always trains with DP-SGD"})
    return rows


def test_summary_mean_and_sd_over_seeds(fake_rows: list[dict]) -> None:
    summary = summarize(fake_rows)
    ours1 = next(e for e in summary if e["generator"] == "ours" and e["epsilon"] == 1.0)
    assert ours1["seeds"] == 2
    assert ours1["cooccurrence_r"]["mean"] == pytest.approx(0.90)
    assert ours1["cooccurrence_r"]["sd"] == pytest.approx(np.std([0.89, 0.91], ddof=1))
    # generator order, then epsilon with non-private last
    order = [(e["generator"], e["epsilon"]) for e in summary]
    assert order[:3] == [("medgan", 1.0), ("medgan", 3.0), ("medgan", None)]
    assert order[-1] == ("ours_federated", None)


def test_markdown_table_rows_and_cells(fake_rows: list[dict]) -> None:
    md = markdown_table(summarize(fake_rows))
    lines = md.splitlines()
    assert lines[0].startswith("| generator | epsilon | prevalence r | co-occurrence r")
    assert len(lines) == 2 + 3 * 3 + 1  # header, rule, 3 generators x 3 epsilons, 1 n/a row
    ours = [ln for ln in lines if ln.startswith("| ours (central) | 3 |")]
    assert len(ours) == 1 and "0.900 ± 0.014" in ours[0]
    assert any(ln.startswith("| ours (federated) | non-private | n/a") for ln in lines)
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)


def test_target_check_names_misses(fake_rows: list[dict]) -> None:
    lines = target_check(summarize(fake_rows))
    cooc = [ln for ln in lines if "cooccurrence_r" in ln and "best baseline" in ln]
    assert len(cooc) == 3 and all("NOT met" in ln and "DP marginals 0.910" in ln for ln in cooc)
    dim = [ln for ln in lines if "dimwise_auroc_ratio" in ln and "best baseline" in ln]
    assert len(dim) == 3 and all(ln.endswith(": met") for ln in dim)
    # strictly above DP marginals at epsilon >= 3 (non-private included), on both metrics
    strict = [ln for ln in lines if "beats DP marginals" in ln]
    assert len(strict) == 4
    assert sum("NOT met" in ln for ln in strict) == 2  # co-occurrence at 3 and non-private


def test_mst_is_a_rival_and_a_generator_writing_no_codes_is_not(fake_rows: list[dict]) -> None:
    rows = [*fake_rows,
            _row("mst", 1.0, 0, cooccurrence_r=0.96, dimwise_auroc_ratio=0.84),
            # corGAN under DP: a "winning" co-occurrence from a sample with no codes at all
            _row("corgan", 1.0, 0, cooccurrence_r=0.99, dimwise_auroc_ratio=0.99,
                 codes_per_patient=0.0)]
    summary = summarize(rows)
    lines = target_check(summary)
    at1 = [ln for ln in lines if "epsilon 1," in ln and "best baseline" in ln]
    assert any("cooccurrence_r" in ln and "MST" in ln and "0.960" in ln for ln in at1), at1
    assert not any("corGAN" in ln for ln in lines)
    table = markdown_table(summary)
    assert "(not a working generator: no codes)" in table
    assert table.count("not a working generator") == 1


def test_write_report_files(tmp_path: Path, fake_rows: list[dict]) -> None:
    result = {
        "settings": {"preset": "quick", "seeds": 2, "n_synth": 100, "max_train": 10},
        "dataset": {"source": "fake", "patients": 10, "codes": 5, "codes_used": 4,
                    "codes_per_patient": 1.5, "train_patients": 8, "holdout_patients": 2},
        "delta": 1e-5, "machine": "test", "wall_seconds": 1.0,
        "attribute_f1_holdout_baseline": 0.1, "rows": fake_rows,
        "summary": summarize(fake_rows),
        "speed": {"dp_vs_nonprivate": "not here", "sampler_steps": [
            {"steps": 4, "records_per_s": 9000.0}], "flower_round_overhead": "no run"},
    }
    write_report(result, tmp_path)
    md = (tmp_path / "benchmark.md").read_text()
    assert "| ours (central) | 1 |" in md and "## Speed" in md and "| 4 | 9000 |" in md
    loaded = json.loads((tmp_path / "benchmark.json").read_text())
    assert loaded["summary"][0]["generator"] == "medgan"
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "benchmark.png" in pngs and "plot_cooccurrence_r.png" in pngs
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left nothing behind


def test_merge_replaces_rows_of_a_rerun(tmp_path: Path, fake_rows: list[dict]) -> None:
    def run(rows: list[dict], name: str) -> Path:
        result = {"settings": {"preset": "full", "seeds": 2, "n_synth": 100, "max_train": None},
                  "dataset": {"source": "fake", "patients": 10, "codes": 5, "codes_used": 4,
                              "codes_per_patient": 1.5, "train_patients": 8,
                              "holdout_patients": 2},
                  "delta": 1e-5, "machine": "test", "wall_seconds": 2.0, "rows": rows,
                  "summary": summarize(rows), "speed": None}
        write_report(result, tmp_path / name)
        return tmp_path / name / "benchmark.json"

    first = run(fake_rows, "a")
    rerun = [_row("medgan", eps, seed, cooccurrence_r=0.95, dimwise_auroc_ratio=0.9)
             for seed in (0, 1) for eps in (1.0, 3.0, None)]
    second = run(rerun, "b")
    assert main(["--merge", str(first), str(second), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "benchmark.json").read_text())
    assert len(merged["rows"]) == len(fake_rows)
    medgan = [e for e in merged["summary"] if e["generator"] == "medgan"]
    assert all(e["cooccurrence_r"]["mean"] == pytest.approx(0.95) for e in medgan)
    ours = next(e for e in merged["summary"] if e["generator"] == "ours" and e["epsilon"] == 1.0)
    assert ours["cooccurrence_r"]["mean"] == pytest.approx(0.90)  # kept from the first run
    assert merged["wall_seconds"] == pytest.approx(4.0)
    assert "Merged from" in (tmp_path / "m" / "benchmark.md").read_text()


def test_cli_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--epsilons", "3,abc"], ["--generators", "medgan,nope"], ["--seeds", "0"],
                 ["--data", str(tmp_path / "missing.csv")]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "o")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_smoke_run_end_to_end(tmp_path: Path) -> None:
    """The real pipeline (demo cohort, a baseline GAN and DP marginals, DP and non-private)."""
    torch.set_num_threads(1)
    s = BenchmarkSettings.for_preset(
        "smoke", tmp_path, generators=("medgan", "dp_marginals"), max_train=120,
        max_holdout=60, n_synth=80, audit_rows=40, demo_patients=40, sites=3)
    result = run_benchmark(s)
    rows = result["rows"]
    assert {(r["generator"], r["epsilon"]) for r in rows} == {
        ("medgan", 3.0), ("medgan", None), ("dp_marginals", 3.0), ("dp_marginals", None)}
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    for r in rows:
        for key in ("cooccurrence_r", "membership_auroc", "attribute_f1", "sample_per_s"):
            assert key in r
        if r["epsilon"] is not None:
            assert r["epsilon_spent"] <= 3.0 + 1e-9
            assert set(r["privacy"]) >= {"epsilon", "delta", "accountant", "history"}
    assert (tmp_path / "benchmark.md").exists() and (tmp_path / "plot_attribute_f1.png").exists()


def test_round_overhead_from_rounds_log(tmp_path: Path) -> None:
    """The coordinator's rounds.jsonl has only its own wall time (no site timing leaves a
    site); the local training time comes from the sites' own logs, which the simulation
    operator holds."""
    from fedsynth.simulations.baselines.ours import round_overhead

    lines = [{"round": 1, "seconds": 30.0}, {"round": 2, "seconds": 26.0}]
    (tmp_path / "rounds.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    for site, secs in (("a", (10.0, 9.0)), ("b", (12.0, 11.0))):
        folder = tmp_path / "state" / site
        folder.mkdir(parents=True)
        events = [{"event": "counts", "round": 0}] + [
            {"event": "train", "round": r, "seconds": s} for r, s in zip((1, 2), secs, strict=True)]
        (folder / f"rounds-{site}.jsonl").write_text(
            "\n".join(json.dumps(x) for x in events) + "\n")
    res = round_overhead(tmp_path)
    assert res is not None
    assert res["mean_round_seconds"] == pytest.approx(28.0)
    assert res["mean_local_train_seconds"] == pytest.approx(21.0)
    assert res["mean_overhead_seconds"] == pytest.approx(7.0)
    assert round_overhead(tmp_path / "none") is None


def test_compare_from_benchmark_reads_the_rows_and_rejects_a_bad_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench_federated --compare --from-benchmark: the three fits from a benchmark.json (seed 0),
    and a one-line error (exit 2) for a file that is not one."""
    from fedsynth.simulations import bench_federated

    extra = {"epsilon_spent": 3.0, "codes_per_patient": 3.5, "train_seconds": 60.0}
    rows = [_row("ours", None, 0, cooccurrence_r=0.98, **extra),
            _row("ours", 3.0, 0, cooccurrence_r=0.96, **extra),
            _row("ours_federated", 3.0, 0, cooccurrence_r=0.912, **extra),
            _row("ours_federated", 3.0, 1, cooccurrence_r=0.1, **extra)]
    doc = {"settings": {"sites": 5, "partition": "dirichlet:0.5"}, "rows": rows,
           "dataset": {"source": "fake", "train_patients": 8, "holdout_patients": 2}}
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(doc))
    res = bench_federated.compare_from_benchmark(path, 3.0)
    assert [r["cooccurrence_r"] for r in res["rows"]] == [0.98, 0.96, 0.912]
    assert res["federated_vs_central_dp_cooccurrence"] == pytest.approx(0.95)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        bench_federated.main(["--compare", "--from-benchmark", str(bad), "--out",
                              str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "bad.json" in capsys.readouterr().err
