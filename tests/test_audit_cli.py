"""ehr-audit end to end on a saved model and CSV members / non-members."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsynth.common.config import ModelConfig
from fedsynth.common.data import write_matrix
from fedsynth.common.model.store import save_model
from fedsynth.common.model.train import build_model
from fedsynth.common.vocabulary import Vocabulary
from fedsynth.privacy.audit import cli

V = 30


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=(16,), time_dim=8, sample_steps=4, threshold=0.2)
    vocab = Vocabulary(codes=tuple(f"{100 + i}" for i in range(V)), name="test")
    save_model(d / "model", build_model(V, cfg), cfg, vocab)
    rng = np.random.default_rng(0)
    for name in ("members", "non_members"):
        X = (rng.random((80, V)) < 0.15).astype(np.uint8)
        write_matrix(d / f"{name}.csv", X, vocab)
    (d / "privacy.json").write_text(json.dumps(
        {"epsilon": 3.0, "delta": 1e-5, "accountant": "prv",
         "history": [{"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 30}]}))
    return d


def _args(d: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(d / "model"), "--members", str(d / "members.csv"),
            "--non-members", str(d / "non_members.csv"), "--out", str(out), "--n-synth", "200",
            *extra]


def test_cli_writes_json_and_html(files: Path, tmp_path: Path) -> None:
    rc = cli.main(_args(files, tmp_path / "out", "--privacy", str(files / "privacy.json")))
    assert rc == 0
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    site = audit["sites"]["all"]
    assert audit["epsilon"] == 3.0 and site["epsilon"] == 3.0
    assert site["eps_lb"] is not None and site["eps_lb"] <= 3.0
    assert {"membership", "attribute", "white_box"} <= set(site)
    assert audit["epsilon_by_round"]["all"][0][0] == 1
    assert "<section id='verdict'>" in (tmp_path / "out" / "audit.html").read_text()


def test_cli_header_names_the_data_model_and_run(files: Path, tmp_path: Path) -> None:
    def digest(*paths: Path) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:16]

    assert cli.main(_args(files, tmp_path / "out", "--privacy", str(files / "privacy.json"))) == 0
    ident = json.loads((tmp_path / "out" / "audit.json").read_text())["identity"]
    assert ident["run_id"] is None  # ehr-train's privacy.json names no run
    assert ident["software"].startswith("fedsynth ") and ident["created"].endswith("+00:00")
    assert ident["data"] == [
        {"role": "members", "name": "members.csv", "sha256": digest(files / "members.csv"),
         "patients": 80},
        {"role": "non-members", "name": "non_members.csv", "patients": 80,
         "sha256": digest(files / "non_members.csv")}]
    assert ident["model"] == {"name": "model", "files": ["model.pt"],
                              "sha256": digest(files / "model" / "model.pt")}
    html = (tmp_path / "out" / "audit.html").read_text()
    assert "run id</th><td><span class='muted'>not recorded" in html.lower()
    # a federated run: the run id from privacy.json
    priv = json.loads((files / "privacy.json").read_text())
    (tmp_path / "privacy.json").write_text(json.dumps({**priv, "run_id": "0123abcd4567"}))
    args = _args(files, tmp_path / "out2", "--privacy", str(tmp_path / "privacy.json"))
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "out2" / "audit.json").read_text())["identity"]["run_id"] == (
        "0123abcd4567")


def test_cli_exits_1_when_the_audit_refutes_the_claim(
    files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedsynth.privacy.audit.run as run

    real = run.loss_attack

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        res = real(*args, **kwargs)
        return dict(res, eps_lb=9.0, passed=False)

    monkeypatch.setattr(run, "loss_attack", broken)
    rc = cli.main(_args(files, tmp_path / "out", "--privacy", str(files / "privacy.json")))
    assert rc == 1
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert audit["verdict"]["status"] == "fail" and audit["summary"]["failed_sites"] == ["all"]


@pytest.mark.parametrize(
    ("change", "message"),
    [({"--model": "nowhere"}, "model directory not found"),
     ({"--members": "missing.csv"}, "missing.csv"),
     ({"--privacy": "bad.json"}, "bad.json")],
)
def test_bad_input_is_one_line_exit_2(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, message: str
) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    args = _args(files, tmp_path / "out")
    for flag, value in change.items():
        value = str(tmp_path / value)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_cli_finds_privacy_json_next_to_the_model(files: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files / "model", run / "model")
    shutil.copy(files / "privacy.json", run / "privacy.json")  # ehr-simulate's OUT layout
    args = _args(files, tmp_path / "out")
    args[args.index("--model") + 1] = str(run / "model")
    assert cli.main(args) == 0
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["epsilon"] == 3.0


def test_cli_canary_file_gives_the_canary_bound(files: Path, tmp_path: Path) -> None:
    from fedsynth.privacy.audit.canaries import insert_canaries, save_canaries

    _, canaries, included = insert_canaries(np.zeros((50, V), np.uint8), 40, seed=0, n_codes=4)
    save_canaries(tmp_path / "canaries.npz", canaries, included)
    args = _args(files, tmp_path / "out", "--canaries", str(tmp_path / "canaries.npz"))
    assert cli.main(args) == 0
    site = json.loads((tmp_path / "out" / "audit.json").read_text())["sites"]["all"]
    assert site["white_box"]["kind"] == "canaries" and site["white_box"]["m"] == 40
    assert site["loss_attack"]["kind"] == "loss_attack"
    (tmp_path / "wrong.npz").write_bytes(b"not a zip")
    with pytest.raises(SystemExit) as exc:
        cli.main(_args(files, tmp_path / "out", "--canaries", str(tmp_path / "wrong.npz")))
    assert exc.value.code == 2
