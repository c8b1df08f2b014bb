"""The audit files: audit.json holds every figure, audit.html is self-contained and renders."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
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
from fedsynth.privacy.audit.identity import audit_identity, data_identity, model_identity
from fedsynth.privacy.audit.report import (
    MAX_ROWS,
    SECTIONS,
    _table,
    membership_summary,
    presence_summary,
    render_html,
    rounds_series,
    sci,
)
from fedsynth.privacy.audit.run import (
    audit_site,
    epsilon_by_round,
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


COUNTS = Mechanism(20.0, 1.0, 1)  # the code-count release: one Gaussian mechanism, q = 1
LABELS = [{"mechanism": "code counts and site size (Gaussian)", "round": 0},
          {"mechanism": "DP-SGD round 1", "round": 1}, {"mechanism": "DP-SGD round 2", "round": 2}]


def _privacy() -> dict:
    """Site A: a ledger-labelled history (counts at round 0, two DP-SGD rounds), budget 3;
    site B: an unlabelled history of two rounds, budget 2.5; the run's target is 3."""
    sgd = Mechanism(1.2, 0.05, 50)
    return {"run_id": "run-abc123", "target_epsilon": 3.0, "sites": [
        site_report("A", [COUNTS, sgd, sgd], 1e-5, budget=3.0, cross_check=False,
                    entries=LABELS),
        site_report("B", [sgd, sgd], 1e-5, budget=2.5, cross_check=False)]}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit")
    privacy = _privacy()
    gen = _generator()
    audits = {s: audit_site(gen, _rows(120, i), _rows(120, 10 + i), CFG, site=s,
                            privacy=next(r for r in privacy["sites"] if r["site"] == s))
              for i, s in enumerate(("A", "B"))}
    (out / "model").mkdir()
    (out / "model" / "model.pt").write_bytes(b"weights")
    (out / "model" / "config.json").write_text("{}")
    (out / "train.csv").write_text("patient,code\n1,250\n")
    identity = audit_identity(data=[data_identity(out / "train.csv", 240, "members")],
                              model=model_identity(out / "model"))
    write_audit(out, merge_site_audits(audits, privacy, cfg=CFG, identity=identity))
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
    header = img[60:400].mean(axis=2)  # below the title: the identity table comes first
    assert (header < 0.5).mean() > 0.01, "no header text drawn at the top of the page"
    # the DOM after the browser parsed and laid it out: the header's fields are in it
    dom = subprocess.run([*cmd[:-2], "--dump-dom", cmd[-1]], capture_output=True, text=True,
                         timeout=90, check=False).stdout
    ident = json.loads((written / "audit.json").read_text())["identity"]
    head = _section(dom.replace('"', "'"), "identity")
    for text in ("What was audited", "run-abc123", ident["created"], ident["software"],
                 ident["model"]["sha256"], "1.0e-05"):
        assert text in head, text


def _section(html: str, sid: str) -> str:
    return html.split(f"<section id='{sid}'>", 1)[1].split("</section>", 1)[0]


def test_header_ties_the_audit_to_one_release(written: Path) -> None:
    audit = json.loads((written / "audit.json").read_text())
    ident = audit["identity"]
    assert ident["run_id"] == "run-abc123"  # from privacy.json
    created = dt.datetime.fromisoformat(ident["created"])
    assert created.utcoffset() == dt.timedelta(0)
    assert ident["software"].startswith("fedsynth ")
    [data] = ident["data"]
    assert data == {"role": "members", "name": "train.csv", "patients": 240, "sha256":
                    hashlib.sha256((written / "train.csv").read_bytes()).hexdigest()[:16]}
    assert ident["model"]["name"] == "model" and ident["model"]["files"] == ["model.pt"]
    assert ident["model"]["sha256"] == hashlib.sha256(b"weights").hexdigest()[:16]
    head = _section((written / "audit.html").read_text(encoding="utf-8"), "identity")
    for text in ("run-abc123", ident["created"], ident["software"], "train.csv",
                 data["sha256"], "240 patients", ident["model"]["sha256"], "delta 1.0e-05"):
        assert text in head, text
    assert "not recorded" not in head


def test_header_says_not_recorded_when_unknown() -> None:
    history = [Mechanism(1.2, 0.05, 50)]
    privacy = {"sites": [site_report("A", history, 1e-5, cross_check=False)]}
    one = audit_site(_generator(), _rows(40, 1), _rows(40, 2), CFG, white_box=False)
    audit = merge_site_audits({"A": one}, privacy, cfg=CFG)
    assert audit["identity"]["run_id"] is None and audit["identity"]["model"] is None
    head = _section(render_html(audit), "identity")
    assert head.count("not recorded") == 3  # run id, data, model
    assert "A: 40 members, 40 held out" in head


def test_data_identity_hashes_the_file_the_loader_reads(tmp_path: Path) -> None:
    (tmp_path / "mimic" / "hosp").mkdir(parents=True)
    table = tmp_path / "mimic" / "hosp" / "diagnoses_icd.csv"
    table.write_text("subject_id,icd_code,icd_version\n1,250,9\n")
    (tmp_path / "mimic" / "notes.csv").write_text("not read")
    ident = data_identity(tmp_path / "mimic", 1, "members")
    assert ident["name"] == "mimic/hosp/diagnoses_icd.csv"
    assert ident["sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()[:16]


def test_delta_is_in_scientific_notation(written: Path) -> None:
    assert sci(1e-5) == "1.0e-05" and sci(2.5e-7) == "2.5e-07" and sci(None) is None
    html = (written / "audit.html").read_text(encoding="utf-8")
    bounds = _section(html, "epsilon-bounds")
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in bounds.split("<tr>")[2:]]
    assert [c[2] for c in cells] == ["1.0e-05", "1.0e-05"]  # the delta column
    assert "delta 1.0e-05" in _section(html, "identity")


def test_rounds_plot_has_the_count_release_and_the_budget_lines(written: Path) -> None:
    audit = json.loads((written / "audit.json").read_text())
    assert audit["epsilon_by_round"]["A"][0][0] == 0  # the count release, before round 1
    series = rounds_series(audit)
    by_site = {s["site"]: s for s in series["sites"]}
    assert by_site["A"]["rounds"] == [0, 1, 2] and by_site["B"]["rounds"] == [1, 2]
    assert by_site["A"]["count_release"] == pytest.approx(audit["epsilon_by_round"]["A"][0][1])
    assert 0 < by_site["A"]["count_release"] < by_site["A"]["epsilon"][1]
    assert by_site["B"]["count_release"] is None
    assert [(b["epsilon"], b["holders"]) for b in series["budgets"]] == [
        (2.5, ["B"]), (3.0, ["target", "A"])]
    # overlapping sites stay distinguishable: own marker, own style, shifted x
    assert by_site["A"]["marker"] != by_site["B"]["marker"]
    assert by_site["A"]["linestyle"] != by_site["B"]["linestyle"]
    assert by_site["A"]["x"][1] != by_site["B"]["x"][0]
    assert all(abs(x - r) < 0.2 for s in series["sites"]
               for x, r in zip(s["x"], s["rounds"], strict=True))


def test_round_log_gets_the_count_release_from_the_history() -> None:
    privacy = _privacy()
    rows = [{"round": r, "epsilon_spent": {"A": 0.5 * r, "B": 0.4 * r}} for r in (1, 2)]
    by_round = epsilon_by_round(privacy, rows)
    assert [p[0] for p in by_round["A"]] == [0, 1, 2] and by_round["A"][0][1] > 0
    assert by_round["B"] == [(1, 0.4), (2, 0.8)]  # no labelled count release: nothing invented


def test_tables_are_compact(written: Path) -> None:
    rows = [[f"s{i}", i] for i in range(MAX_ROWS + 10)]
    html = _table(["site", "n"], rows, MAX_ROWS)
    assert html.count("<tr>") == MAX_ROWS + 1 and "10 more rows" in html
    assert "more rows" not in _table(["site", "n"], rows[:5], MAX_ROWS)
    audit = json.loads((written / "audit.json").read_text())
    presence = presence_summary(audit["sites"])
    assert [r[0] for r in presence] == ["A", "B"]  # one worst-case row per site
    page = (written / "audit.html").read_text(encoding="utf-8")
    shown = _section(page, "presence").split("<details>")[0]
    assert shown.count("<tr>") == 1 + len(presence)
    summary = membership_summary([[s, "DCR", a, t1, t2, 9, 9] for s, a, t1, t2 in
                                  (("A", 0.6, 0.1, 0.0), ("B", 0.7, 0.05, 0.02))])
    assert summary == [["DCR", 0.7, "B", 0.1, 0.02, 2]]
    assert "<details>" in _section(page, "membership")


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
