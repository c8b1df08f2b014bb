"""Rich progress per round for ``ehr-server`` / ``ehr-simulate``: sites answered, mean loss,
epsilon spent. Reads the files the ServerApp writes (``progress.json``, ``rounds.jsonl``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _read_json(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def read_rounds(out: Path) -> list[dict[str, Any]]:
    rows = []
    with contextlib.suppress(OSError):
        for line in (out / "rounds.jsonl").read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


class RoundProgress:
    """A rich progress bar over rounds, refreshed by ``tick()``."""

    def __init__(self, out: Path, rounds: int, console: Console | None = None,
                 enabled: bool = True) -> None:
        self.out, self.rounds = Path(out), rounds
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._seen = 0
        self.progress = Progress(
            TextColumn("[bold]federation"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
            disable=not enabled, transient=False)
        self.task = self.progress.add_task("starting", total=rounds)

    def __enter__(self) -> RoundProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.tick()
        self.progress.__exit__(None, None, None)

    def tick(self) -> None:
        rows = read_rounds(self.out)
        for row in rows[self._seen:]:
            eps = row.get("epsilon_spent") or {}
            # only what the coordinator knows itself (no site's training loss leaves a site)
            line = (f"round {row['round']}/{self.rounds} {row['status']}: "
                    f"{len(row.get('accepted', []))}/{row.get('sites_expected')} sites "
                    f"aggregated, {float(row.get('seconds') or 0.0):.0f} s")
            if eps:
                line += f", max eps {max(eps.values()):.3f}"
            for site, why in (row.get("rejected") or {}).items():
                line += f"\n  rejected {site}: {why}"
            for site, why in (row.get("refused") or {}).items():
                line += f"\n  refused ({site}): {why}"
            for why in row.get("failed") or []:
                line += f"\n  {why}"
            if self.enabled:
                self.console.print(line)
        self._seen = len(rows)
        done = sum(1 for r in rows if r.get("status") == "completed")
        prog = _read_json(self.out / "progress.json") or {}
        stage = prog.get("stage", "starting")
        desc = str(stage)
        if stage == "training":
            desc = (f"round {prog.get('round')}: {prog.get('answered', 0)}/"
                    f"{prog.get('expected', '?')} sites answered")
        elif stage == "waiting for sites":
            desc = f"waiting for sites ({prog.get('connected', 0)}/{prog.get('needed')})"
        eps = prog.get("epsilon_spent") or {}
        if eps:
            desc += f" | eps spent max {max(eps.values()):.3f}"
        self.progress.update(self.task, completed=done, description=desc)
