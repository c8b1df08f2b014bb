"""A site's privacy ledger: every mechanism it has ever run, append-only and tamper-evident.

Files in the site's state directory (``STATE/`` below), both written atomically (tmp, fsync,
rename, fsync of the folder):

- ``ledger-<site>.jsonl``: one canonical JSON entry per line. Each entry holds the mechanism
  (noise multiplier, sample rate, steps), run id, round, timestamp, status and ``prev``, the
  sha256 of the previous entry's canonical JSON (a hash chain from a per-site genesis value),
  and ``hash``, its own sha256 (over every other field).
- ``ledger-<site>.head.json``: the anchor, written *after* the ledger: entry count, last hash and
  a copy of the mechanisms. A ledger shorter than its head (truncated, or rolled back to an older
  valid copy) or whose entry at the head's count has another hash (edited) is refused.

Order of a record: head sealed (if new) -> ledger with the new entry -> head. A crash between the
last two leaves a ledger one entry *longer* than its head, whose chain still runs through the
head's last hash: that state can only add spend, so it is accepted and the head re-sealed.

Anything else (edited, truncated, rolled back, unparseable, head or ledger missing while the
other exists) raises ``LedgerCorrupted`` and the site refuses to train until an operator runs
``ehr-client budget --site SITE --state-dir STATE --accept-ledger``. That command never lowers
the spend: it rebuilds the history as the per-entry union of what the ledger and the head record
(where the two disagree, both mechanisms are kept, which composes to at least either),
re-seals it, and keeps the damaged files beside it as ``*.corrupt-<time>``.

Limit: replacing *both* files by an older matching pair, or deleting both, cannot be detected
from the state directory alone; keep the state directory on storage the training process
cannot rewrite history on (or copy the head elsewhere) where that matters.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.atomic import atomic_open, write_json
from common.errors import BudgetExceeded
from privacy.accountant import Mechanism, epsilon
from privacy.report import site_report

log = logging.getLogger(__name__)

STATUS_RECORDED = "recorded-before-send"
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LedgerCorrupted(Exception):  # noqa: N818 (name fixed by the design)
    """The ledger or its anchor does not verify; one line naming the file and the fix."""


def recovery_command(site: str, state_dir: Path) -> str:
    return f"ehr-client budget --site {site} --state-dir {state_dir} --accept-ledger"


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, ASCII; the bytes that are hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def genesis_hash(site: str) -> str:
    return _sha256(f"fedsynth-ledger:{site}".encode())


def entry_hash(entry: dict[str, Any]) -> str:
    return _sha256(canonical({k: v for k, v in entry.items() if k != "hash"}))


@dataclass
class Entry:
    mechanism: Mechanism
    run_id: str
    round: int
    timestamp: float
    status: str
    prev: str
    hash: str
    seq: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "site_mechanism": self.mechanism.to_dict(),
            "run_id": self.run_id,
            "round": self.round,
            "timestamp": self.timestamp,
            "status": self.status,
            "note": self.note,
            "prev": self.prev,
            "hash": self.hash,
        }


@dataclass
class Ledger:
    state_dir: Path
    site: str
    entries: list[Entry] = field(default_factory=list)

    # ------------------------------------------------------------------ files
    @staticmethod
    def paths(state_dir: str | os.PathLike[str], site: str) -> tuple[Path, Path]:
        folder = Path(state_dir)
        return folder / f"ledger-{site}.jsonl", folder / f"ledger-{site}.head.json"

    @property
    def path(self) -> Path:
        return self.paths(self.state_dir, self.site)[0]

    @property
    def head_path(self) -> Path:
        return self.paths(self.state_dir, self.site)[1]

    # ------------------------------------------------------------------ open / verify
    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], site: str) -> Ledger:
        """Read and verify the site's ledger (empty if the site never trained).

        Raises ``LedgerCorrupted`` on an edited, truncated, rolled-back or unparseable ledger.
        """
        _check_site(site)
        ledger = cls(Path(state_dir), site)
        with ledger._lock():
            ledger._load()
        return ledger

    def _fail(self, path: Path, problem: str) -> LedgerCorrupted:
        return LedgerCorrupted(
            f"{path}: privacy ledger {problem}; refusing to train. After checking, an operator "
            f"runs: {recovery_command(self.site, self.state_dir)}"
        )

    def _load(self) -> None:
        path, head_path = self.path, self.head_path
        if not path.exists() and not head_path.exists():
            self.entries = []
            return
        if not head_path.exists():
            raise self._fail(head_path, "anchor (head file) is missing")
        head = self._read_head()
        if not path.exists():
            if head["count"] == 0:
                self.entries = []
                return
            raise self._fail(path, f"is missing but its head records {head['count']} entries")
        entries = self._parse_entries(path)
        count = head["count"]
        if len(entries) < count:
            raise self._fail(
                path, f"has {len(entries)} entries but its head records {count} "
                "(truncated or rolled back)"
            )
        last = entries[count - 1].hash if count else genesis_hash(self.site)
        if last != head["last_hash"]:
            raise self._fail(path, f"entry {count} does not match its head (edited or replaced)")
        if len(entries) > count + 1:
            raise self._fail(path, f"has {len(entries) - count} entries beyond its head")
        try:
            heads = [Mechanism.from_dict(m) for m in head.get("history", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise self._fail(head_path, f"unreadable history entry ({err!r})") from None
        if heads != [e.mechanism for e in entries[:count]]:
            raise self._fail(head_path, "history does not match the ledger")
        self.entries = entries
        if len(entries) == count + 1:
            log.warning("%s: one entry beyond its head (crash before sealing); re-sealing", path)
            self._write_head()

    def _read_head(self) -> dict[str, Any]:
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
            if head.get("site") != self.site:
                raise ValueError(f"site {head.get('site')!r}")
            count = head["count"]
            if not isinstance(count, int) or count < 0 or not isinstance(head["last_hash"], str):
                raise ValueError("bad count or hash")
            if len(head.get("history", [])) != count:
                raise ValueError("history length differs from count")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise self._fail(self.head_path, f"anchor is unreadable ({err})") from None
        return head

    def _parse_entries(self, path: Path) -> list[Entry]:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise self._fail(path, f"cannot be read ({err})") from None
        if raw and not raw.endswith(b"\n"):
            raise self._fail(path, "ends in a partial line (torn write)")
        prev = genesis_hash(self.site)
        entries: list[Entry] = []
        for lineno, line in enumerate(raw.splitlines(), start=1):
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                entry = _entry_from_dict(data)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
                raise self._fail(path, f"line {lineno} is unparseable ({err})") from None
            if canonical(data) != line:
                raise self._fail(path, f"line {lineno} is not in canonical form (edited)")
            if entry.seq != lineno - 1:
                raise self._fail(path, f"line {lineno} has sequence number {entry.seq}")
            if entry.prev != prev:
                raise self._fail(path, f"line {lineno} breaks the hash chain")
            if entry_hash(data) != entry.hash:
                raise self._fail(path, f"line {lineno} does not match its hash (edited)")
            prev = entry.hash
            entries.append(entry)
        return entries

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_dir / f".ledger-{self.site}.lock"
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write_head(self) -> None:
        write_json(self.head_path, {
            "site": self.site,
            "count": len(self.entries),
            "last_hash": self.entries[-1].hash if self.entries else genesis_hash(self.site),
            "history": [e.mechanism.to_dict() for e in self.entries],
            "sealed_at": time.time(),
        })

    def _write_ledger(self, entries: Sequence[Entry]) -> None:
        with atomic_open(self.path, "wb") as fh:
            for e in entries:
                fh.write(canonical(e.to_dict()) + b"\n")

    def record(self, mechanism: Mechanism, run_id: str, round: int, note: str = "") -> Entry:
        """Append ``mechanism`` to the ledger; durable on disk when this returns.

        Call this *before* the update leaves the site: a crash after it still counts."""
        with self._lock():
            self._load()  # another process may have recorded meanwhile; re-verify
            if not self.head_path.exists():
                self._write_head()  # seal the empty state first: a ledger never lacks a head
            entry = self._new_entry(mechanism, run_id, round, STATUS_RECORDED, note)
            self._write_ledger([*self.entries, entry])
            self.entries.append(entry)
            self._write_head()
        log.info("ledger %s: recorded sigma=%.4g q=%.4g steps=%d (run %s, round %d)",
                 self.site, mechanism.noise_multiplier, mechanism.sample_rate, mechanism.steps,
                 run_id, round)
        return entry

    def _new_entry(
        self, mechanism: Mechanism, run_id: str, round: int, status: str, note: str
    ) -> Entry:
        prev = self.entries[-1].hash if self.entries else genesis_hash(self.site)
        entry = Entry(mechanism, str(run_id), int(round), time.time(), status, prev, "",
                      len(self.entries), note)
        entry.hash = entry_hash(entry.to_dict())
        return entry

    # ------------------------------------------------------------------ spend
    @property
    def history(self) -> list[Mechanism]:
        return [e.mechanism for e in self.entries]

    def epsilon(self, delta: float, accountant: str = "prv") -> float:
        return epsilon(self.history, delta, accountant)

    def check(
        self, planned: Mechanism, budget_epsilon: float, delta: float, accountant: str = "prv"
    ) -> float:
        """Epsilon the site would reach after ``planned``; ``BudgetExceeded`` if over budget."""
        spent = self.epsilon(delta, accountant)
        would = epsilon([*self.history, planned], delta, accountant)
        if would > budget_epsilon:
            raise BudgetExceeded(
                f"site {self.site}: planned sigma={planned.noise_multiplier:.4g}, "
                f"q={planned.sample_rate:.4g}, steps={planned.steps} would reach "
                f"epsilon={would:.3f} > budget {budget_epsilon:g} at delta={delta:g} "
                f"(already spent {spent:.3f} over {len(self.entries)} entries; "
                f"ledger {self.path}); nothing trained, nothing sent"
            )
        return would

    def report(self, delta: float, budget: float | None = None,
               accountant: str = "prv") -> dict[str, Any]:
        return site_report(self.site, self.history, delta, budget, accountant)


def _entry_from_dict(data: dict[str, Any]) -> Entry:
    return Entry(
        mechanism=Mechanism.from_dict(data["site_mechanism"]),
        run_id=str(data["run_id"]),
        round=int(data["round"]),
        timestamp=float(data["timestamp"]),
        status=str(data["status"]),
        prev=str(data["prev"]),
        hash=str(data["hash"]),
        seq=int(data["seq"]),
        note=str(data.get("note", "")),
    )


def _check_site(site: str) -> None:
    if not _SITE_RE.match(site or ""):
        raise ValueError(f"site name {site!r} must be 1-64 letters, digits, '.', '_' or '-'")


def accept_ledger(state_dir: str | os.PathLike[str], site: str) -> Ledger:
    """Operator recovery: rebuild a damaged ledger without ever lowering the spend.

    The new history is the per-index union of the mechanisms readable from the ledger lines and
    from the head's copy (both kept where they differ); the damaged files are kept as
    ``*.corrupt-<unix time>``. A ledger that verifies is returned unchanged.
    """
    _check_site(site)
    ledger = Ledger(Path(state_dir), site)
    with ledger._lock():
        try:
            ledger._load()
            return ledger
        except LedgerCorrupted as err:
            log.warning("accepting damaged ledger: %s", err)
        from_lines = _salvage_lines(ledger.path)
        from_head = _salvage_head(ledger.head_path)
        history: list[tuple[Mechanism, str]] = []
        for i in range(max(len(from_lines), len(from_head))):
            a = from_lines[i] if i < len(from_lines) else None
            b = from_head[i] if i < len(from_head) else None
            for m, src in ((a, "ledger"), (b, "head")):
                if m is not None and (src == "ledger" or m != a):
                    history.append((m, f"recovered from {src} entry {i}"))
        stamp = int(time.time())
        for p in (ledger.path, ledger.head_path):
            if p.exists():
                os.replace(p, p.with_name(f"{p.name}.corrupt-{stamp}"))
        ledger.entries = []
        for m, note in history:
            ledger.entries.append(ledger._new_entry(m, "operator-recovery", -1, "recovered", note))
        ledger._write_head()  # empty-or-full head first, then the ledger, then the head again
        ledger._write_ledger(ledger.entries)
        ledger._write_head()
    log.warning("ledger %s re-sealed with %d entries after operator recovery", site, len(history))
    return ledger


def _salvage_lines(path: Path) -> list[Mechanism | None]:
    out: list[Mechanism | None] = []
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        try:
            out.append(Mechanism.from_dict(json.loads(line)["site_mechanism"]))
        except (ValueError, KeyError, TypeError):
            out.append(None)
    return out


def _salvage_head(path: Path) -> list[Mechanism | None]:
    try:
        hist = json.loads(path.read_text(encoding="utf-8")).get("history", [])
    except (OSError, ValueError, AttributeError):
        return []
    out: list[Mechanism | None] = []
    for m in hist if isinstance(hist, list) else []:
        try:
            out.append(Mechanism.from_dict(m))
        except (ValueError, KeyError, TypeError):
            out.append(None)
    return out
