"""Static checks over our own packages: nothing unpickles untrusted bytes, runs a shell, or
binds to every interface. (Issue 7: model files and checkpoints are loaded with
``torch.load(weights_only=True)`` or safetensors; never unpickle what came over the network.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "client", "privacy", "server", "simulations")
FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _name(node: ast.AST) -> str:
    """'torch.load' for torch.load(...), 'eval' for eval(...), '' otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else f"?.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            fn = _name(node.func)
            if fn.endswith("torch.load") and not _is_true(_kw(node, "weights_only")):
                out.append(f"{where}: torch.load without weights_only=True")
            if fn in {"pickle.load", "pickle.loads", "cPickle.load", "dill.load", "dill.loads",
                      "joblib.load", "marshal.loads", "shelve.open"}:
                out.append(f"{where}: {fn} unpickles arbitrary objects")
            if fn.endswith(("np.load", "numpy.load")) and _is_true(_kw(node, "allow_pickle")):
                out.append(f"{where}: np.load(allow_pickle=True)")
            if fn in {"eval", "exec"}:
                out.append(f"{where}: {fn}()")
            if fn in {"os.system", "os.popen"}:
                out.append(f"{where}: {fn}() runs a shell")
            if fn.startswith("subprocess.") and _is_true(_kw(node, "shell")):
                out.append(f"{where}: subprocess with shell=True")
            if fn.endswith("yaml.load") and _kw(node, "Loader") is None:
                out.append(f"{where}: yaml.load without a safe Loader")
        if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::"):
            out.append(f"{where}: binds to every interface ({node.value!r})")
    return out


def test_there_is_code_to_scan() -> None:
    assert len(FILES) > 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_shells_or_wildcard_binds(path: Path) -> None:
    assert findings(path) == []


def test_the_scanner_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, torch, numpy as np, subprocess, os\n"
        "pickle.loads(b'')\ntorch.load('m.pt')\ntorch.load('m.pt', weights_only=False)\n"
        "np.load('a.npy', allow_pickle=True)\nsubprocess.run('ls', shell=True)\n"
        "os.system('ls')\neval('1')\nHOST = '0.0.0.0'\n"
        "torch.load('ok.pt', weights_only=True)\nnp.load('ok.npz', allow_pickle=False)\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = findings(bad)
    finally:
        ROOT = saved
    assert len(found) == 8, found
