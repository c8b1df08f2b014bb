"""The site's lifetime epsilon budget, stored in its state folder at first use.

``ehr-client --epsilon-budget E`` stores E in ``STATE/budget-<site>.json`` the first time; later
runs use the stored budget, and a different ``--epsilon-budget`` is refused (one line, exit 2)
rather than silently raising or lowering what the privacy officer set. The budget changes only
through ``ehr-client budget --set-budget E``, which records when and from what. ``ehr-client
budget`` reads the same file, so the budget view shows the budget the site enforces.

The file is the site's own setting, never sent anywhere; the ledger (``privacy.ledger``) stays
the record of what was spent.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import atomic_open
from fedsynth.common.errors import InputError
from fedsynth.common.names import check_site_name


def budget_path(state_dir: str | Path, site: str) -> Path:
    return Path(state_dir) / f"budget-{check_site_name(site)}.json"


def check_budget(value: object, source: str) -> float:
    """A positive, finite epsilon; ``InputError`` otherwise."""
    try:
        budget = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(source, f"{value!r} is not a number") from None
    if not (math.isfinite(budget) and budget > 0):
        raise InputError(source, f"must be a positive epsilon (got {budget:g})")
    return budget


def stored_budget(state_dir: str | Path, site: str) -> float | None:
    """The budget stored for ``site`` (None: none stored yet)."""
    path = budget_path(state_dir, site)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return check_budget(doc["epsilon_budget"], str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"unreadable site budget ({err})",
                         "restore it or set it again with `ehr-client budget --set-budget E`"
                         ) from None


def store_budget(state_dir: str | Path, site: str, budget: float, reason: str) -> Path:
    """Write the site's budget (atomically), keeping the previous value in the record."""
    path = budget_path(state_dir, site)
    before = stored_budget(state_dir, site)
    doc: dict[str, Any] = {
        "site": site, "epsilon_budget": check_budget(budget, "budget"),
        "set": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reason": reason,
        "previous": before,
    }
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    return path


def site_budget(state_dir: str | Path, site: str, given: float | None) -> tuple[float, str]:
    """(budget, how it was found) for a run of ``ehr-client``: the stored one; the given one
    at first use (then stored); refused when the given one differs from the stored one or when
    neither exists."""
    stored = stored_budget(state_dir, site)
    if stored is None:
        if given is None:
            raise InputError("--epsilon-budget", f"site {site} has no stored budget in "
                             f"{state_dir}: give --epsilon-budget E at its first run")
        store_budget(state_dir, site, check_budget(given, "--epsilon-budget"), "first use")
        return float(given), "given at first use, now stored"
    if given is not None and not math.isclose(given, stored, rel_tol=1e-12):
        raise InputError("--epsilon-budget", f"site {site}'s budget is stored as {stored:g} "
                         f"({budget_path(state_dir, site)}), not {given:g}",
                         f"change it deliberately with `ehr-client budget --site {site} "
                         f"--state-dir {state_dir} --set-budget {given:g}`")
    return stored, "stored"
