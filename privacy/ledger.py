"""A site's privacy ledger: every mechanism it has ever run, append-only and tamper-evident.

Files in the site's state directory (``STATE/`` below), both written atomically (tmp, fsync,
rename, fsync of the folder):

- ``ledger-<site>.jsonl``: one canonical JSON entry per line. Each entry holds the mechanism
  (noise multiplier, sample rate, steps), the site's ``delta``, run id, round, timestamp, status,
  ``note`` (which mechanism it is: "code counts and site size", "DP-SGD round 3", ...), where
  known the clipping norm and the expected batch, and ``prev``, the sha256 of the previous
  entry's canonical JSON (a hash chain from a per-site genesis value), and ``hash``, its own
  sha256 (over every other field).
- ``ledger-<site>.head.json``: the anchor, written *after* the ledger: entry count, last hash,
  the site's delta and a copy of the mechanisms. A ledger shorter than its head (truncated, or
  rolled back to an older valid copy) or whose entry at the head's count has another hash
  (edited) is refused.

**Delta is the site's, pinned at its first use.** Epsilon depends on delta (the same history
reads eps 2.495 at delta 1e-5 and 1.104 at 9e-3), so whoever picks delta picks the guarantee. A
new ledger takes the delta given at ``open`` (or, for older callers, at the first
``check``/``report``) and writes it into its first entry and head; from then on every entry and
the head carry it, and asking for another delta anywhere (``open``, ``epsilon``, ``check``,
``report``, ``accept_ledger``) raises ``DeltaFixed``. A ledger written before delta was pinned
(entries without ``delta``) is refused (``LedgerUnpinned``) until an operator pins it once with
``ehr-client budget --site S --state-dir STATE --accept-ledger --delta D``: adopting a delta
silently would let whoever opens it first choose it.

Order of a record: head sealed (if new) -> ledger with the new entry -> head. A crash between the
last two leaves a ledger one entry *longer* than its head, whose chain still runs through the
head's last hash: that state can only add spend, so it is accepted and the head re-sealed.

Anything else (edited, truncated, rolled back, unparseable, head or ledger missing while the
other exists) raises ``LedgerCorrupted`` and the site refuses to train until an operator runs
``ehr-client budget --site SITE --state-dir STATE --accept-ledger``. That command never lowers
the spend: it rebuilds the history as the per-entry union of what the ledger and the head record
(where the two disagree, both mechanisms are kept, which composes to at least either), keeps the
delta, re-seals it, and keeps the damaged files beside it as ``*.corrupt-<time>``.

Limit: replacing *both* files by an older matching pair, deleting both, or editing an entry and
recomputing the (unkeyed) chain and head cannot be detected from the state directory alone. The
answer is a witness outside the site: ``head()`` is signed with the site's key and checked
against the last head the coordinator holds (``privacy.witness``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.common.errors import BudgetExceeded, InputError
from fedsynth.common.names import check_site_name
from fedsynth.privacy.accountant import Mechanism, epsilon
from fedsynth.privacy.report import site_report

log = logging.getLogger(__name__)

STATUS_RECORDED = "recorded-before-send"
HEAD_ACCOUNTANT = "prv"


class LedgerCorrupted(Exception):  # noqa: N818 (name fixed by the design)
    """The ledger or its anchor does not verify; one line naming the file and the fix."""


class LedgerUnpinned(LedgerCorrupted):
    """A ledger written before delta was pinned; an operator pins it with an explicit delta."""


class DeltaFixed(InputError, ValueError):  # noqa: N818 (reads as the rule it enforces)
    """A delta other than the one the site's ledger is pinned at was asked for."""

    def __init__(self, site: str, pinned: float, asked: float) -> None:
        super().__init__(
            None, f"site {site}'s ledger is at delta {pinned:g}; a site's delta is fixed at its "
            f"first use (asked for {asked:g})",
        )


def user_state_dir() -> Path:
    """Where a person's ledgers live by default: ``$XDG_STATE_HOME/fedsynth``, else
    ``~/.local/state/fedsynth`` (XDG Base Directory spec); never inside an output folder, so
    that a new ``--out`` does not start a new budget."""
    base = os.environ.get("XDG_STATE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "fedsynth"


def recovery_command(site: str, state_dir: Path, delta: str = "") -> str:
    tail = f" --delta {delta}" if delta else ""
    return f"ehr-client budget --site {site} --state-dir {state_dir} --accept-ledger{tail}"


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, ASCII; the bytes that are hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def genesis_hash(site: str) -> str:
    return _sha256(f"fedsynth-ledger:{site}".encode())


def entry_hash(entry: dict[str, Any]) -> str:
    return _sha256(canonical({k: v for k, v in entry.items() if k != "hash"}))


def check_delta(delta: object, source: str = "--delta") -> float:
    """``delta`` as a float in (0, 1); ``InputError`` otherwise."""
    try:
        value = float(delta)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(source, f"{delta!r} is not a number") from None
    if not (0 < value < 1 and math.isfinite(value)):
        raise InputError(source, f"delta must be in (0, 1), got {value:g}")
    return value


def _same_delta(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


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
    delta: float | None = None  # None only in ledgers written before delta was pinned
    max_grad_norm: float | None = None  # the clipping norm (DP-SGD) or sensitivity, if known
    expected_batch: float | None = None  # q x n, kept local: it reveals the site's size

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        # optional fields are absent (not null) when unknown: older entries keep their hashes
        for key in ("delta", "max_grad_norm", "expected_batch"):
            if getattr(self, key) is not None:
                out[key] = float(getattr(self, key))
        return out

    def label(self, local: bool = False) -> dict[str, Any]:
        """The report's view of this entry: the mechanism plus what it was, for a reviewer."""
        out: dict[str, Any] = {**self.mechanism.to_dict(), "mechanism": self.note or "unlabelled",
                               "round": self.round, "max_grad_norm": self.max_grad_norm}
        if local and self.expected_batch is not None:
            out["expected_batch"] = self.expected_batch
        return out


@dataclass
class Ledger:
    state_dir: Path
    site: str
    entries: list[Entry] = field(default_factory=list)
    _pinned: float | None = None  # the delta on disk (head and every entry)
    _asked: float | None = None  # the delta a new ledger will be pinned at by its first record

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
    def open(cls, state_dir: str | os.PathLike[str], site: str,
             delta: float | None = None) -> Ledger:
        """Read and verify the site's ledger (empty if the site never trained).

        ``delta``: for a new ledger, the delta it is pinned at by its first record; for an
        existing one, must equal its pinned delta (``DeltaFixed`` otherwise); None: the
        ledger's. Raises ``LedgerCorrupted`` on an edited, truncated, rolled-back or unparseable
        ledger, ``LedgerUnpinned`` (a ``LedgerCorrupted``) on one written without a delta.
        """
        check_site_name(site)
        ledger = cls(Path(state_dir), site)
        with ledger._lock():
            ledger._load()
        if delta is not None:
            ledger._resolve(delta)
        return ledger

    @property
    def delta(self) -> float | None:
        """The site's delta: pinned on disk, or the one a new ledger was opened with."""
        return self._pinned if self._pinned is not None else self._asked

    def _resolve(self, delta: float | None) -> float | None:
        """The delta to compute at: the ledger's; another one raises ``DeltaFixed``.

        A new ledger adopts the first delta asked for (until its first record pins it)."""
        if delta is None:
            return self.delta
        delta = check_delta(delta)
        current = self.delta
        if current is not None and not _same_delta(current, delta):
            raise DeltaFixed(self.site, current, delta)
        if current is None:
            self._asked = delta
        return current if current is not None else delta

    def _fail(self, path: Path, problem: str) -> LedgerCorrupted:
        return LedgerCorrupted(
            f"{path}: privacy ledger {problem}; refusing to train. After checking, an operator "
            f"runs: {recovery_command(self.site, self.state_dir)}"
        )

    def _load(self) -> None:
        path, head_path = self.path, self.head_path
        self._pinned = None
        if not path.exists() and not head_path.exists():
            self.entries = []
            return
        if not head_path.exists():
            raise self._fail(head_path, "anchor (head file) is missing")
        head = self._read_head()
        if not path.exists():
            if head["count"] == 0:
                self.entries = []
                self._pin(head.get("delta"))
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
        pinned = head.get("delta")
        if entries and pinned is None:
            raise LedgerUnpinned(
                f"{head_path}: privacy ledger has no pinned delta (written by an older "
                "fedsynth); refusing to train. An operator pins the site's delta once with: "
                f"{recovery_command(self.site, self.state_dir, 'DELTA')}"
            )
        for e in entries:
            if e.delta is None or not _same_delta(e.delta, pinned):
                raise self._fail(path, f"entry {e.seq} is at delta {e.delta} but its head at "
                                 f"{pinned} (edited)")
        self.entries = entries
        self._pin(pinned)
        if len(entries) == count + 1:
            log.warning("%s: one entry beyond its head (crash before sealing); re-sealing", path)
            self._write_head()

    def _pin(self, delta: float | None) -> None:
        self._pinned = delta
        if delta is not None and self._asked is not None and not _same_delta(delta, self._asked):
            asked, self._asked = self._asked, None
            raise DeltaFixed(self.site, delta, asked)
        if delta is not None:
            self._asked = None

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
            delta = head.get("delta")
            if delta is not None and not (isinstance(delta, float) and 0 < delta < 1):
                raise ValueError(f"bad delta {delta!r}")
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
            "delta": self.delta,
            "history": [e.mechanism.to_dict() for e in self.entries],
            "sealed_at": time.time(),
        })

    def _write_ledger(self, entries: Sequence[Entry]) -> None:
        with atomic_open(self.path, "wb") as fh:
            for e in entries:
                fh.write(canonical(e.to_dict()) + b"\n")

    def record(self, mechanism: Mechanism, run_id: str, round: int, note: str = "",
               max_grad_norm: float | None = None,
               expected_batch: float | None = None) -> Entry:
        """Append ``mechanism`` at the ledger's delta; durable on disk when this returns.

        Call this *before* the update leaves the site: a crash after it still counts.
        ``note`` says which mechanism it is ("DP-SGD round 3"); ``expected_batch`` (q x n) stays
        in the local files and local reports only."""
        with self._lock():
            self._load()  # another process may have recorded meanwhile; re-verify
            if self.delta is None:
                raise ValueError(f"site {self.site}: the ledger has no delta yet; open it with "
                                 "Ledger.open(state_dir, site, delta=...) before the first record")
            if not self.head_path.exists():
                self._write_head()  # seal the empty state first: a ledger never lacks a head
            entry = self._new_entry(mechanism, run_id, round, STATUS_RECORDED, note,
                                    max_grad_norm, expected_batch)
            self._write_ledger([*self.entries, entry])
            self.entries.append(entry)
            self._write_head()
            self._pin(entry.delta)
        log.info("ledger %s: recorded %s sigma=%.4g q=%.4g steps=%d (run %s, round %d)",
                 self.site, note or "mechanism", mechanism.noise_multiplier,
                 mechanism.sample_rate, mechanism.steps, run_id, round)
        return entry

    def _new_entry(
        self, mechanism: Mechanism, run_id: str, round: int, status: str, note: str,
        max_grad_norm: float | None = None, expected_batch: float | None = None,
    ) -> Entry:
        prev = self.entries[-1].hash if self.entries else genesis_hash(self.site)
        entry = Entry(mechanism, str(run_id), int(round), time.time(), status, prev, "",
                      len(self.entries), note, self.delta,
                      None if max_grad_norm is None else float(max_grad_norm),
                      None if expected_batch is None else float(expected_batch))
        entry.hash = entry_hash(entry.to_dict())
        return entry

    # ------------------------------------------------------------------ spend
    @property
    def history(self) -> list[Mechanism]:
        return [e.mechanism for e in self.entries]

    def _need_delta(self, delta: float | None) -> float:
        resolved = self._resolve(delta)
        if resolved is None:
            raise ValueError(f"site {self.site}: the ledger has no delta yet; pass the site's "
                             "delta to Ledger.open")
        return resolved

    def epsilon(self, delta: float | None = None, accountant: str = "prv") -> float:
        """Total spend at the ledger's delta (another delta raises ``DeltaFixed``)."""
        if delta is None and self.delta is None and not self.entries:
            return 0.0
        return epsilon(self.history, self._need_delta(delta), accountant)

    def check(self, planned: Mechanism, budget: float, delta: float | None = None,
              accountant: str = "prv") -> float:
        """Epsilon the site would reach after ``planned``; ``BudgetExceeded`` if over budget."""
        delta = self._need_delta(delta)
        spent = self.epsilon(delta, accountant)
        would = epsilon([*self.history, planned], delta, accountant)
        if would > budget:
            raise BudgetExceeded(
                f"site {self.site}: planned sigma={planned.noise_multiplier:.4g}, "
                f"q={planned.sample_rate:.4g}, steps={planned.steps} would reach "
                f"epsilon={would:.2f} > budget {budget:g} at delta={delta:g} "
                f"(already spent {spent:.2f} over {len(self.entries)} entries; "
                f"ledger {self.path}); nothing trained, nothing sent"
            )
        return would

    def report(self, delta: float | None = None, budget: float | None = None,
               accountant: str = "prv", local: bool = False) -> dict[str, Any]:
        """The site's privacy report: every entry labelled (which mechanism, round, clipping
        norm), the ledger head hash, software version and time. ``local=True`` (a report that
        stays at the site) adds each entry's expected batch q x n, which reveals the size."""
        delta = self._need_delta(delta)
        return site_report(self.site, self.history, delta, budget, accountant,
                           entries=[e.label(local) for e in self.entries],
                           head_hash=self.last_hash)

    # ------------------------------------------------------------------ witness
    @property
    def last_hash(self) -> str:
        return self.entries[-1].hash if self.entries else genesis_hash(self.site)

    def head(self) -> dict[str, Any]:
        """What a witness keeps of this ledger (sign it with ``privacy.witness.sign_head``).

        ``seq``: entry count; ``epsilon``: total spend at the ledger's delta (PRV); ``hash``: the
        last entry's hash; ``hashes``: every entry's hash in order, so that a witness holding an
        older head can tell an extension from a fork (rolled back and regrown, or edited and
        re-chained)."""
        return {
            "site": self.site,
            "seq": len(self.entries),
            "epsilon": self.epsilon(None, HEAD_ACCOUNTANT) if self.entries else 0.0,
            "delta": self.delta,
            "hash": self.last_hash,
            "hashes": [e.hash for e in self.entries],
            "accountant": HEAD_ACCOUNTANT,
        }


def _entry_from_dict(data: dict[str, Any]) -> Entry:
    def opt(key: str) -> float | None:
        return None if key not in data else float(data[key])

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
        delta=opt("delta"),
        max_grad_norm=opt("max_grad_norm"),
        expected_batch=opt("expected_batch"),
    )


def accept_ledger(state_dir: str | os.PathLike[str], site: str,
                  delta: float | None = None) -> Ledger:
    """Operator recovery: rebuild a damaged ledger without ever lowering the spend.

    The new history is the per-index union of the mechanisms readable from the ledger lines and
    from the head's copy (both kept where they differ); the damaged files are kept as
    ``*.corrupt-<unix time>``. A ledger that verifies is returned unchanged. The delta is kept:
    the smallest delta readable from the head or the entries (the strictest reading of the
    history); ``delta`` is needed only when none is readable (a ledger written before delta was
    pinned) and must otherwise equal it (``DeltaFixed``).
    """
    check_site_name(site)
    ledger = Ledger(Path(state_dir), site)
    with ledger._lock():
        try:
            ledger._load()
            if delta is not None:
                ledger._resolve(delta)
            return ledger
        except LedgerCorrupted as err:
            log.warning("accepting damaged ledger: %s", err)
        from_lines = _salvage_lines(ledger.path)
        from_head, head_delta = _salvage_head(ledger.head_path)
        found = [d for d in [head_delta, *(e[2] for e in from_lines if e)] if d is not None]
        if found:
            kept = min(found)
            if delta is not None and not _same_delta(check_delta(delta), kept):
                raise DeltaFixed(site, kept, float(delta))
        elif delta is None:
            raise InputError("--delta", f"site {site}'s ledger records no delta; give the "
                             "delta its spend was accounted at", "e.g. --delta 1e-05")
        else:
            kept = check_delta(delta)
        history: list[tuple[Mechanism, str, float | None]] = []
        for i in range(max(len(from_lines), len(from_head))):
            a = from_lines[i] if i < len(from_lines) else None
            b = from_head[i] if i < len(from_head) else None
            if a is not None:
                note = f"{a[1]} (recovered from ledger entry {i})" if a[1] else \
                    f"recovered from ledger entry {i}"
                history.append((a[0], note, a[3]))
            if b is not None and (a is None or b != a[0]):
                history.append((b, f"recovered from head entry {i}", None))
        stamp = int(time.time())
        for p in (ledger.path, ledger.head_path):
            if p.exists():
                os.replace(p, p.with_name(f"{p.name}.corrupt-{stamp}"))
        ledger.entries, ledger._pinned, ledger._asked = [], kept, None
        for m, note, clip in history:
            ledger.entries.append(
                ledger._new_entry(m, "operator-recovery", -1, "recovered", note, clip))
        ledger._write_head()  # empty-or-full head first, then the ledger, then the head again
        ledger._write_ledger(ledger.entries)
        ledger._write_head()
    log.warning("ledger %s re-sealed with %d entries at delta %g after operator recovery",
                site, len(history), kept)
    return ledger


def _salvage_lines(
    path: Path,
) -> list[tuple[Mechanism, str, float | None, float | None] | None]:
    """(mechanism, note, delta, clipping norm) of every readable line; None for the others."""
    out: list[tuple[Mechanism, str, float | None, float | None] | None] = []
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        try:
            data = json.loads(line)
            delta = data.get("delta")
            delta = float(delta) if delta is not None and 0 < float(delta) < 1 else None
            clip = data.get("max_grad_norm")
            out.append((Mechanism.from_dict(data["site_mechanism"]), str(data.get("note", "")),
                        delta, None if clip is None else float(clip)))
        except (ValueError, KeyError, TypeError, AttributeError):
            out.append(None)
    return out


def _salvage_head(path: Path) -> tuple[list[Mechanism | None], float | None]:
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        hist = head.get("history", [])
        delta = head.get("delta")
        delta = float(delta) if delta is not None and 0 < float(delta) < 1 else None
    except (OSError, ValueError, AttributeError, TypeError):
        return [], None
    out: list[Mechanism | None] = []
    for m in hist if isinstance(hist, list) else []:
        try:
            out.append(Mechanism.from_dict(m))
        except (ValueError, KeyError, TypeError):
            out.append(None)
    return out, delta
