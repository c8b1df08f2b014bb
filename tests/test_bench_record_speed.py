"""The training-time benchmark of issue 16 runs both real commands in ABBA order and reports
what it measured (a smoke test on the MIMIC-III demo: the figures themselves are the README's)."""

from __future__ import annotations

import json

import pytest

from fedsynth.simulations.bench_record_speed import main


def test_pairs_run_in_abba_order_and_the_ratio_is_of_the_sums(mimic_path, tmp_path,
                                                              capsys) -> None:
    # one epoch, no calibration: the plumbing, not the figure
    out, config = tmp_path / "bench", tmp_path / "quick.toml"
    config.write_text("[train]\nepochs = 1\n[model]\ncalibrate = false\n")
    main(["--data", str(mimic_path), "--format", "mimic", "--repeats", "2", "--config",
          str(config), "--out", str(out)])
    doc = json.loads((out / "record_speed.json").read_text())
    assert doc["repeats"] == 2 and len(doc["codes_seconds"]) == len(doc["records_seconds"]) == 2
    codes, records = sum(doc["codes_seconds"]), sum(doc["records_seconds"])
    # the file rounds each time to 0.1 s, so ratios rebuilt from it are as close as that allows
    assert doc["ratio"] == pytest.approx(records / codes, rel=0.02)
    assert doc["pair_ratios"] == [pytest.approx(r / c, rel=0.05) for c, r in
                                  zip(doc["codes_seconds"], doc["records_seconds"], strict=True)]
    assert (out / "codes" / "config.json").exists()
    assert (out / "all" / "records_layout.json").exists()  # the records run's own model
    assert "ratio" in capsys.readouterr().out
