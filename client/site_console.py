"""The site console: what happened at this site, per message, for its operator (issue 18).

One line per event on ``ehr-client``'s console (stderr; rich when a terminal, plain lines
otherwise) and the same event as one JSON line in ``STATE/logs/site-<site>.jsonl``. A train
round says its local steps, the noise multiplier, the epsilon this round spent (the site's total
after it minus before it: epsilons compose, they do not add), the total, what is left of the
budget, and "update sent" once the reply was handed back to the ClientApp, or the refusal's
reason. Nothing here leaves the site.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass
class SiteConsole:
    site: str
    state_dir: Path
    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    last_epsilon: float | None = None  # the site's total after the last reply seen here
    _rich: Any = None

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if self.stream.isatty():
            try:
                from rich.console import Console

                self._rich = Console(file=self.stream, highlight=False)
            except ImportError:
                self._rich = None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / f"site-{self.site}.jsonl"

    def train(self, rnd: int, rounds: int, status: str, reason: str, steps: int,
              privacy: dict[str, Any], sent: bool, seconds: float,
              before: float | None = None) -> dict[str, Any]:
        """A train round's event (``privacy``: the public report of the reply)."""
        total = _num(privacy.get("epsilon"))
        before = self.last_epsilon if before is None else before
        history = privacy.get("history") or [{}]
        event = {
            "event": "train", "round": rnd, "rounds": rounds, "status": status,
            "steps": int(steps), "sigma": _num(history[-1].get("noise_multiplier"))
            if status == "ok" else None,
            "epsilon_round": (total - before) if (status == "ok" and total is not None
                                                  and before is not None) else
            (0.0 if status != "ok" else None),
            "epsilon_total": total, "epsilon_left": _num(privacy.get("epsilon_left")),
            "budget": _num(privacy.get("budget")), "sent": sent, "reason": reason,
            "seconds": round(seconds, 3)}
        if total is not None:
            self.last_epsilon = total
        self.emit(event)
        return event

    def query(self, status: str, reason: str, privacy: dict[str, Any], sent: bool,
              seconds: float, what: str = "query") -> dict[str, Any]:
        """A release's event: the DP counts (``query``, round 0) or federated MST's marginals
        (``what``: "mst one-way" | "mst pairs")."""
        total = _num(privacy.get("epsilon"))
        event = {"event": "query", "what": what, "round": 0, "status": status,
                 "epsilon_total": total, "epsilon_left": _num(privacy.get("epsilon_left")),
                 "budget": _num(privacy.get("budget")), "sent": sent, "reason": reason,
                 "seconds": round(seconds, 3)}
        if total is not None:
            self.last_epsilon = total
        self.emit(event)
        return event

    def evaluate(self, run_id: str, status: str, sent: bool, seconds: float) -> dict[str, Any]:
        event = {"event": "evaluate", "run_id": run_id, "status": status, "sent": sent,
                 "seconds": round(seconds, 3)}
        self.emit(event)
        return event

    def error(self, what: str, reason: str) -> dict[str, Any]:
        event = {"event": what, "status": "error", "reason": reason}
        self.emit(event)
        return event

    def emit(self, event: dict[str, Any]) -> None:
        """Append the JSON line, then print the console line."""
        line = {"time": round(time.time(), 3), "site": self.site, **event}
        append_line(self.log_path, json.dumps(line, default=float))
        text = f"site {self.site} {describe(event)}"
        if self._rich is not None:
            style = "red" if event.get("status") in ("refused", "error") or not event.get(
                "sent", True) else None
            self._rich.print(text, style=style, markup=False)
        else:
            print(text, file=self.stream, flush=True)


def append_line(path: Path, line: str) -> None:
    """Append one whole line with a single ``write`` on an ``O_APPEND`` descriptor: readers and
    other writers never see half a line (a log, so appended rather than rewritten through
    ``common.atomic``, which would copy the whole file for every line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def _eps(value: Any) -> str:
    return "?" if value is None else f"{value:.3f}"


def describe(event: dict[str, Any]) -> str:
    """The console line of one event."""
    kind, status = event.get("event"), event.get("status")
    sent = "update sent" if event.get("sent") else "NOT sent (the ClientApp was gone)"
    if status == "error":
        return f"{kind}: failed: {event.get('reason')}"
    if kind == "train":
        head = f"round {event['round']}/{event['rounds']}"
        if status != "ok":
            return f"{head}: refused, nothing trained: {event.get('reason')}"
        return (f"{head}: {event['steps']} steps, sigma {event['sigma']:.3g}, epsilon "
                f"{_eps(event['epsilon_round'])} this round, {_eps(event['epsilon_total'])} "
                f"total, {_eps(event['epsilon_left'])} left of {_eps(event['budget'])}; "
                f"{sent} ({event['seconds']:.1f} s)")
    if kind == "query":
        name = "counts" if event.get("what", "query") == "query" else \
            f"{event['what']} marginals"
        if status == "refused":
            return f"{name}: refused: {event.get('reason')}"
        what = f"{name} released" if status == "ok" else f"{name} off"
        return (f"{what}: epsilon {_eps(event['epsilon_total'])} total, "
                f"{_eps(event['epsilon_left'])} left of {_eps(event['budget'])}; "
                f"{'reply sent' if event.get('sent') else 'reply NOT sent'}")
    if kind == "evaluate":
        return (f"evaluation of run {event.get('run_id')}: {status}, figures kept at the "
                f"site; {'reply sent' if event.get('sent') else 'reply NOT sent'}")
    return json.dumps(event)
