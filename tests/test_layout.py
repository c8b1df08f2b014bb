"""The layout's import rules (CONTRIBUTING.md), checked on the source's syntax tree.

Every import counts, also one inside a function or under ``TYPE_CHECKING``, and a relative one
(``from . import x``, ``from ..privacy import y``) is resolved to the part it names. The
checker is ``violations``; the tests run it over the tree and show it failing on planted
imports. A second test keeps pyproject.toml's package list equal to the package folders.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fedsynth"
# root folder -> installed as fedsynth.<folder>; "fedsynth" is the API package itself
PARTS = ("common", "federation", "privacy", "client", "server", "simulations", "fedsynth")
# the parts each part may import (itself included); absent: no limit
ALLOWED: dict[str, set[str]] = {
    "common": {"common"},
    "privacy": {"privacy", "common"},
    "federation": {"federation", "common", "privacy"},
    "client": {"client", "common", "privacy", "federation"},
    "server": {"server", "common", "privacy", "federation"},
}
# third-party packages confined to a few files: file paths, or folders ending in "/"
CONFINED: dict[str, tuple[str, ...]] = {
    "flwr": ("client/app.py", "server/app.py", "federation/", "simulations/"),
    "opacus": ("client/dp_training.py", "privacy/accountant.py"),
}


def module_name(rel: str) -> str:
    """The installed module of a repository path: server/app.py -> fedsynth.server.app."""
    parts = list(Path(rel).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] != PACKAGE:
        parts.insert(0, PACKAGE)
    return ".".join(parts)


def part_of(module: str) -> str | None:
    """The part a module belongs to (fedsynth.client.app -> client), None outside fedsynth."""
    names = module.split(".")
    if names[0] != PACKAGE:
        return None
    if len(names) > 1 and names[1] in PARTS and names[1] != PACKAGE:
        return names[1]
    return PACKAGE


def imported_modules(tree: ast.AST, rel: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the tree; ``from fedsynth import name``
    yields fedsynth.name (``from fedsynth import client`` imports the client part), except for
    the top package's dunder metadata, which every part's import loads anyway."""
    here = module_name(rel)
    package = here if rel.endswith("__init__.py") else here.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == PACKAGE:  # the top package's metadata (__version__) is no part
                found += [(node.lineno, f"{PACKAGE}.{alias.name}") for alias in node.names
                          if not alias.name.startswith("__")]
            else:
                found.append((node.lineno, module))
    return sorted(found)


def _confined_here(rel: str, places: tuple[str, ...]) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in places)


def violations(source: str, rel: str) -> list[str]:
    """``rel:line imports X`` for each import of ``source`` (read as the file at repository
    path ``rel``) that breaks a layout rule."""
    rel = Path(rel).as_posix()
    mine = part_of(module_name(rel))
    allowed = ALLOWED.get(mine or "")
    out = []
    for line, module in imported_modules(ast.parse(source, filename=rel), rel):
        top = module.split(".")[0]
        target = part_of(module)
        if target is not None and allowed is not None and target not in allowed:
            out.append(f"{rel}:{line} imports {module} ({mine} may import only "
                       f"{', '.join(sorted(allowed))})")
        if top in CONFINED and not _confined_here(rel, CONFINED[top]):
            out.append(f"{rel}:{line} imports {module} ({top} only in "
                       f"{', '.join(CONFINED[top])})")
    return out


def source_files() -> list[str]:
    files = []
    for part in PARTS:
        files += [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / part).rglob("*.py"))
                  if "__pycache__" not in p.parts]
    return files


def test_the_tree_keeps_the_import_rules() -> None:
    files = source_files()
    assert len(files) > 50 and "server/app.py" in files
    found = [v for rel in files for v in violations((ROOT / rel).read_text("utf-8"), rel)]
    assert not found, "import-rule violations:\n" + "\n".join(found)


def test_the_checker_catches_planted_violations() -> None:
    assert violations("from fedsynth.client import x\n", "server/foo.py") == [
        "server/foo.py:1 imports fedsynth.client (server may import only common, federation, "
        "privacy, server)"]
    assert violations("import flwr\n", "common/x.py") == [
        "common/x.py:1 imports flwr (flwr only in client/app.py, server/app.py, federation/, "
        "simulations/)"]
    # a function-level import, a relative one, the top package's attribute form, opacus
    planted = {
        "common/x.py": "def f():\n    from fedsynth.privacy import ledger\n",
        "privacy/x.py": "from ..federation import protocol\n",
        "privacy/audit/x.py": "from ...server.app import main\n",
        "federation/x.py": "from fedsynth import client\n",
        "server/x.py": "import opacus.grad_sample\n",
        "privacy/y.py": "from fedsynth.simulations.partition import split\n",
    }
    for rel, source in planted.items():
        assert len(violations(source, rel)) == 1, (rel, violations(source, rel))
    assert violations("from ..federation import protocol\n", "privacy/x.py")[0].startswith(
        "privacy/x.py:1 imports fedsynth.federation ")


def test_allowed_imports_pass() -> None:
    allowed = {
        "federation/x.py": "import flwr\nfrom ..privacy import ledger\nfrom . import protocol\n",
        "privacy/x.py": "from fedsynth.common.errors import InputError\nfrom . import ledger\n",
        "privacy/accountant.py": "import opacus\n",
        "client/dp_training.py": "from opacus import PrivacyEngine\n",
        "client/app.py": "from flwr.clientapp import ClientApp\n",
        "simulations/x.py": "import flwr\nfrom fedsynth.server import app\n",
        "common/x.py": "import numpy\nfrom .data import load_codes\n",
        "federation/y.py": "from fedsynth import __version__\n",
    }
    for rel, source in allowed.items():
        assert violations(source, rel) == [], rel


def test_pyproject_packages_are_the_package_folders() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    folders = {module_name(p.relative_to(ROOT).as_posix())
               for part in PARTS for p in (ROOT / part).rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert listed == folders, (f"listed, no folder: {sorted(listed - folders)}; "
                               f"folder, not listed: {sorted(folders - listed)}")
