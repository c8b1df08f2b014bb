"""ehr-simulate end to end (Flower simulation engine, Ray on 127.0.0.1) on a tiny demo cohort,
and the CLIs' one-line input errors (no Flower started)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FLOWER_CONFIG as TINY

BIN = Path(sys.executable).parent



def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_simulate_demo_two_sites(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "sim"
    res = _run([str(BIN / "ehr-simulate"), "--data", "demo", "--sites", "2", "--demo-patients",
                "100", "--rounds", "2", "--config", str(cfg), "--samples", "150", "--out",
                str(out), "--no-progress", "--audit", "--canaries", "20"], timeout=380)
    assert res.returncode == 0, res.stderr[-3000:]
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(sorted(r["accepted"]) == ["site0", "site1"] for r in rounds)
    privacy = json.loads((out / "privacy.json").read_text())
    eps = {s: r["epsilon"] for s, r in privacy["sites"].items()}
    assert set(eps) == {"site0", "site1"} and max(eps.values()) <= 3.0 + 1e-6
    assert privacy["epsilon"] == pytest.approx(max(eps.values()))
    # every site's history: the counts release, then one DP-SGD entry per round
    assert all(len(r["history"]) == 3 for r in privacy["sites"].values())
    header = (out / "synthetic.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "patient_id" and len(header) == 2091
    assert len((out / "synthetic.csv").read_text().splitlines()) == 151
    # evaluation: each site kept its own figures in its state folder (the coordinator got only
    # its name and status); ehr-simulate, holding every site's data, pooled the held-out rows
    ev = json.loads((out / "evaluation.json").read_text())
    assert set(ev["sites"]) == {"site0", "site1"}
    assert all(set(v) == {"status", "evaluation", "audit"} for v in ev["sites"].values())
    assert ev["pooled_n_holdout"] == 40 and "simulation operator" in ev["computed_by"]
    assert ev["pooled"]["n_real"] == 40 and ev["pooled"]["n_synth"] == 150
    run_id = privacy["run_id"]
    for k in range(2):
        kept = json.loads((out / "state" / f"site{k}" / f"evaluation-site{k}-{run_id}.json")
                          .read_text())
        assert kept["figures"]["n_holdout"] == 20 and kept["n_synthetic"] == 150
        assert (out / "state" / f"site{k}" / f"audit-site{k}-{run_id}" / "audit.html").exists()
    assert (out / "flwr-home").is_dir()  # FLWR_HOME inside the run directory
    # held-out rows were never trained on: the site files keep them apart
    with np.load(out / "sites" / "site0.npz") as d:
        assert d["holdout"].shape[0] == 20 and d["train"].shape[0] == 80
        assert d["canaries"].shape == (20, 2090)
    # --audit: every site audited the released model itself (canaries, its own ledger's
    # epsilon) and kept it; ehr-simulate (the operator, not the coordinator) merged them
    audit = json.loads((out / "audit.json").read_text())
    assert set(audit["sites"]) == {"site0", "site1"}
    for name, site in audit["sites"].items():
        assert site["epsilon"] == pytest.approx(eps[name])
        assert site["white_box"]["kind"] == "canaries" and site["n_members"] == 80
    assert audit["verdict"]["status"] == "pass"
    assert "<html" in (out / "audit.html").read_text()[:500].lower()


@pytest.mark.parametrize("cmd, needle", [
    (["ehr-server", "--insecure", "--port", "1"], "--out DIR is required"),
    (["ehr-server", "--out", "OUT"], "TLS is the default"),
    (["ehr-server", "--insecure", "--out", "OUT", "--epsilon", "-1"], "--epsilon"),
    (["ehr-client", "--site", "A", "--data", "missing.csv", "--server", "127.0.0.1:1",
      "--state-dir", "S", "--epsilon-budget", "3", "--insecure"], "missing.csv"),
    (["ehr-client", "--site", "A/../B", "--data", "x", "--server", "h:1", "--state-dir", "S",
      "--epsilon-budget", "3", "--insecure"], "not a valid site name"),
    (["ehr-client", "--site", "A", "--data", "x", "--server", "nohost", "--state-dir", "S",
      "--epsilon-budget", "3", "--insecure"], "HOST:PORT"),
    (["ehr-simulate", "--data", "demo", "--partition", "dirichlet:-2", "--out", "OUT"],
     "ALPHA"),
    (["ehr-simulate", "--data", "demo", "--sites", "3", "--partition", "column:nope",
      "--out", "OUT"], "not found"),
])
def test_cli_input_errors_are_one_line_exit_2(cmd: list[str], needle: str, tmp_path) -> None:
    args = [str(BIN / cmd[0]), *[a.replace("OUT", str(tmp_path / "o")) for a in cmd[1:]]]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
