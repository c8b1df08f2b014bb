"""The audit files: audit.json holds every figure, audit.html is self-contained and renders."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsynth.common.config import ModelConfig
from fedsynth.common.model.output import OutputStep
from fedsynth.common.model.store import Generator
from fedsynth.common.model.train import build_model
from fedsynth.common.vocabulary import Vocabulary
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.audit.config import AuditConfig
from fedsynth.privacy.audit.report import SECTIONS
from fedsynth.privacy.audit.run import (
    audit_site,
    merge_site_audits,
    run_audit,
    verdict,
    write_audit,
)
from fedsynth.privacy.report import site_report

V = 40


def _generator() -> Generator:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=4)
    vocab = Vocabulary(codes=tuple(f"{i:03d}" for i in range(V)), name="test")
    return Generator(build_model(V, cfg), cfg, vocab, OutputStep("threshold", 0.3))


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, V)) < np.linspace(0.01, 0.3, V)).astype(np.uint8)


CFG = AuditConfig(n_synth=300, presence_fractions=(0.1, 1.0), attr_targets=50)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"] or "")
        for key in ("src", "href", "action", "data"):
            if a.get(key):
                self.urls.append(a[key] or "")
        self.images += tag == "img"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit")
    history = [Mechanism(1.2, 0.05, 50)] * 3
    privacy = {"sites": [site_report("A", history, 1e-5, cross_check=False),
                         site_report("B", history[:2], 1e-5, cross_check=False)]}
    gen = _generator()
    audits = {s: audit_site(gen, _rows(120, i), _rows(120, 10 + i), CFG, site=s,
                            privacy=next(r for r in privacy["sites"] if r["site"] == s))
              for i, s in enumerate(("A", "B"))}
    write_audit(out, merge_site_audits(audits, privacy, cfg=CFG))
    return out


def test_audit_json_has_every_figure(written: Path) -> None:
    audit = json.loads((written / "audit.json").read_text())
    assert set(audit["sites"]) == {"A", "B"}
    for site in audit["sites"].values():
        assert {"dcr_hamming", "dcr_jaccard", "domias", "presence"} <= set(site["membership"])
        assert {"synthetic", "baseline_holdout"} <= set(site["attribute"])
        assert site["eps_lb"] is not None and site["epsilon"] > 0
    assert audit["epsilon"] == max(s["epsilon"] for s in audit["sites"].values())
    assert len(audit["epsilon_by_round"]["A"]) == 3 and len(audit["epsilon_by_round"]["B"]) == 2
    eps_a = [p[1] for p in audit["epsilon_by_round"]["A"]]
    assert eps_a == sorted(eps_a)
    assert audit["verdict"]["status"] == "pass"
    assert "threat_model" in audit


def test_site_audit_sends_no_rows() -> None:
    members = _rows(80, 1)
    res = audit_site(_generator(), members, _rows(80, 2), CFG)
    blob = json.dumps(res)
    # no patient row (as a 0/1 vector) appears anywhere in the site's message
    for row in members[:20]:
        assert json.dumps(row.tolist()) not in blob
    # small-cell suppression: a code only 1-4 members hold is shared as 0
    counts = members.sum(axis=0)
    prev = np.asarray(res["prevalence"]["members"])
    assert (prev[(counts > 0) & (counts < 5)] == 0).all()
    assert np.allclose(prev[counts >= 5], np.round(counts[counts >= 5] / len(members), 5))


def test_html_is_self_contained_with_every_section(written: Path) -> None:
    html = (written / "audit.html").read_text(encoding="utf-8")
    parser = _Collect()
    parser.feed(html)
    assert set(SECTIONS) <= parser.ids
    assert parser.images >= 4
    assert all(u.startswith("data:") or u.startswith("#") for u in parser.urls), parser.urls
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "<script" not in html


def test_html_renders_in_a_headless_browser(written: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1600",
           f"--screenshot={shot}", (written / "audit.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.std() > 0.05  # not blank
    assert (img.mean(axis=2) < 0.5).mean() > 0.005  # some dark text / lines drawn


def test_verdict_fails_loudly_when_the_bound_exceeds_epsilon() -> None:
    summary = {"eps_accountant": 1.0, "eps_lb": 2.3, "max_membership_auroc": 0.6,
               "membership_signal": True, "failed_sites": ["A"], "passed": False}
    v = verdict(summary)
    assert v["status"] == "fail" and v["headline"] == "AUDIT FAILED" and "2.30" in v["text"]
    none = dict(summary, eps_accountant=None, failed_sites=[], passed=True)
    assert verdict(none)["status"] == "risk"


def test_run_audit_flags_a_copying_generator(tmp_path: Path) -> None:
    members = np.unique(_rows(400, 5), axis=0)[:150]

    class Copier:
        def sample(self, n: int, seed: int = 0) -> np.ndarray:
            return members[np.arange(n) % len(members)]

    audit = run_audit(Copier(), members, _rows(150, 6), tmp_path, cfg=CFG)
    assert audit["summary"]["membership_signal"] and audit["verdict"]["status"] == "risk"
    assert audit["sites"]["all"]["membership"]["dcr_hamming"]["auroc"] > 0.8
    assert (tmp_path / "audit.html").exists() and (tmp_path / "audit.json").exists()


def test_reads_ehr_server_outputs(tmp_path: Path) -> None:
    """privacy.json with a {site: report} mapping and rounds.jsonl rows with epsilon_spent."""
    history = [Mechanism(1.2, 0.05, 50)] * 2
    reports = {s: site_report(s, history, 1e-5, cross_check=False) for s in ("site0", "site1")}
    (tmp_path / "privacy.json").write_text(json.dumps(
        {"epsilon": reports["site0"]["epsilon"], "delta": 1e-5, "sites": reports}))
    rows = [{"round": r, "epsilon_spent": {"site0": 0.5 * r, "site1": 0.4 * r}} for r in (1, 2)]
    (tmp_path / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from fedsynth.privacy.audit import audit_federation, read_run_outputs

    privacy, rounds = read_run_outputs(tmp_path)
    sites = {s: (_rows(60, i), _rows(60, 5 + i)) for i, s in enumerate(("site0", "site1"))}
    audit = audit_federation(_generator(), sites, tmp_path, privacy, rounds, CFG)
    assert audit["epsilon_by_round"]["site1"] == [[1, 0.4], [2, 0.8]]
    assert audit["sites"]["site0"]["epsilon"] == pytest.approx(reports["site0"]["epsilon"])
    assert audit["verdict"]["status"] in ("pass", "fail")
    assert (tmp_path / "audit.html").exists()
