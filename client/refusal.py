"""Why a SuperNode could not join, in one line, and whether trying again can help.

``flower-supernode`` exits with code 305 for every refusal and writes the reason only to its log
(``STATE/logs/supernode.log``), between ANSI colour codes; for an unreachable SuperLink it never
exits but retries forever ("Connection attempt failed, retrying in N seconds"). ``ehr-client``
therefore reads the log while the SuperNode runs (``watch``) and classifies what it reads
(``classify``): a refusal no retry can fix (key not enrolled, CA or host name wrong, TLS against
plaintext) ends the client at once with its own exit code and the fix; anything else is
transient and retried a bounded number of times.

A plaintext SuperNode dialing a TLS SuperLink sees only "Connection attempt failed", exactly
like a coordinator that is down: ``speaks_tls`` tells the two apart with one TLS handshake.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# ehr-client's exit codes (2: bad input and 3: budget are common/errors.py's)
EXIT_BUDGET = 3
EXIT_GAVE_UP = 4
EXIT_NOT_ENROLLED = 5
EXIT_UNTRUSTED = 6
EXIT_HOST_NAME = 7
EXIT_TLS_MISMATCH = 8

EXIT_CODES_HELP = (
    "Exit codes: 2 bad input; 3 privacy budget spent; "
    "4 gave up after --max-retries failed connections (coordinator unreachable); "
    "5 site key not enrolled with the coordinator; 6 coordinator certificate not trusted "
    "(wrong --root-certificates); 7 the --server host is not named in the coordinator's "
    "certificate; 8 TLS/plaintext mismatch (--insecure on one side only); 130 stopped by "
    "Ctrl-C or SIGTERM")

CONNECTED = "SuperNode ID:"
RETRYING = "Connection attempt failed"
RECOVERED = "Connection successful after"
KEEP_CHARS = 1 << 16
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NOT_VALID_FOR = re.compile(r"not valid for '([^']*)'")
_VERIFY_DETAIL = re.compile(r"certificate verify failed: ([^(\n]*)")


@dataclass(frozen=True)
class Refusal:
    """One classified failure: ``reason`` and ``fix`` make the line the operator reads."""

    kind: str  # not-enrolled | no-key | untrusted | host-name | tls-mismatch | unreachable | ...
    permanent: bool
    reason: str
    fix: str = ""
    exit_code: int = EXIT_GAVE_UP

    def line(self, site: str) -> str:
        return f"site {site}: {self.reason}" + (f"; {self.fix}" if self.fix else "")


def clean(text: str) -> str:
    """Log text without ANSI colour codes."""
    return _ANSI.sub("", text)


def classify(text: str, *, server: str, insecure: bool) -> Refusal | None:
    """The refusal the SuperNode log ``text`` (this attempt only) shows, or None if none.

    The patterns are what flwr 1.41's SuperNode writes (seen in tests/test_refusals.py):
    ``[code: 2004] Failed to activate SuperNode`` (key not registered), ``[code: 2001] SuperNode
    authentication is enabled`` (no key), ``CERTIFICATE_VERIFY_FAILED`` (with ``Hostname
    mismatch`` / ``IP address mismatch`` when the name is wrong) and ``WRONG_VERSION_NUMBER``
    (a TLS client answered in plaintext)."""
    text = clean(text)
    if "[code: 2004]" in text or "Failed to activate SuperNode" in text:
        return Refusal("not-enrolled", True,
                       f"refused by the coordinator at {server}: this site's key (--auth-key) "
                       "is not enrolled there",
                       "send the site's .pub to the coordinator (ehr-certs enroll / ehr-certs "
                       "register --pub), or check --auth-key", EXIT_NOT_ENROLLED)
    if "[code: 2001]" in text or "SuperNode authentication is enabled" in text:
        return Refusal("no-key", True,
                       f"refused by the coordinator at {server}: it admits enrolled sites only "
                       "and this site gave no key", "pass --auth-key SITE.key from ehr-certs "
                       "enroll", EXIT_NOT_ENROLLED)
    if "Hostname mismatch" in text or "IP address mismatch" in text:
        m = _NOT_VALID_FOR.search(text)
        host = m.group(1) if m else server.rpartition(":")[0]
        return Refusal("host-name", True,
                       f"TLS refused: the coordinator's certificate does not name '{host}'",
                       "dial a host name the certificate lists (ehr-certs status on the "
                       "coordinator shows its SAN), or have it re-issued with ehr-certs init "
                       f"--host {host}", EXIT_HOST_NAME)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        m = _VERIFY_DETAIL.search(text)
        detail = m.group(1).strip() if m else "certificate verify failed"
        if "expired" in detail:
            return Refusal("expired", True,
                           f"TLS refused: the coordinator's certificate has expired ({detail})",
                           "the coordinator renews it: ehr-certs init --out DIR --host HOST",
                           EXIT_UNTRUSTED)
        return Refusal("untrusted", True,
                       f"TLS refused: the coordinator's certificate is not signed by "
                       f"--root-certificates ({detail})",
                       "get the coordinator's current ca.crt", EXIT_UNTRUSTED)
    if ("WRONG_VERSION_NUMBER" in text or "record layer failure" in text
            or "packet length too long" in text):
        return Refusal("tls-mismatch", True,
                       f"TLS refused: the coordinator at {server} speaks plaintext (it runs "
                       "--insecure) and this site uses TLS",
                       "both sides use TLS (the coordinator drops --insecure), or both "
                       "--insecure for a local trial", EXIT_TLS_MISMATCH)
    return None


def plaintext_mismatch(server: str) -> Refusal:
    return Refusal("plaintext-mismatch", True,
                   f"refused: the coordinator at {server} speaks TLS and this site runs "
                   "--insecure (plaintext)",
                   "drop --insecure and pass --root-certificates ca.crt --auth-key SITE.key",
                   EXIT_TLS_MISMATCH)


def unreachable(server: str, tries: int) -> Refusal:
    return Refusal("unreachable", False,
                   f"gave up: no connection to the coordinator at {server} after {tries} "
                   "failed attempt(s)",
                   "check that ehr-server runs and --server HOST:PORT, or raise --max-retries",
                   EXIT_GAVE_UP)


def exited(rc: int | None, text: str, server: str) -> Refusal:
    """A SuperNode that exited for a reason ``classify`` does not know: transient (a restarted
    SuperLink no longer knows the node; rejoining as a new node is the cure)."""
    lines = [ln.strip() for ln in clean(text).splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if "Exit Code:" in ln), len(lines))
    # the specific line after Flower's generic "Failed to initialize the connection ..."
    why = next((ln for ln in lines[start + 1:start + 4] if not ln.startswith("Failed to ")),
               "")
    return Refusal("exited", False,
                   f"SuperNode exited (code {rc}){': ' + why if why else ''}", "",
                   EXIT_GAVE_UP)


def speaks_tls(server: str, timeout: float = 3.0) -> bool:
    """True when HOST:PORT completes a TLS handshake (certificate not checked: this only tells
    a TLS SuperLink from a plaintext one, nothing is sent over it)."""
    host, _, port = server.rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host.strip("[]")):
            return True
    except (OSError, ValueError):
        return False


class LogTail:
    """What was appended to a file since this object was made (the log is appended to by every
    SuperNode the client starts, so each attempt reads only its own part); ``text`` keeps the
    last ``KEEP_CHARS`` of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.text = ""

    def read(self) -> str:
        """The new text (also appended to ``self.text``)."""
        with contextlib.suppress(OSError), open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
            self.offset += len(data)
            new = data.decode("utf-8", errors="replace")
            # a joined node logs for days: what is classified is what it wrote last
            self.text = (self.text + new)[-KEEP_CHARS:]
            return new
        return ""


@dataclass
class Watch:
    """How one SuperNode attempt ended: exited (``rc``), refused, or out of retries."""

    rc: int | None = None
    refusal: Refusal | None = None
    connected: bool = False
    failures: int = 0  # failed connection attempts seen in the log


def watch(proc: subprocess.Popen[bytes], tail: LogTail, *, server: str, insecure: bool,
          retries_left: int, rejoin: bool = False, poll: float = 0.25) -> Watch:
    """Follow one SuperNode until it exits, its log shows a permanent refusal, or it has failed
    to connect more than ``retries_left`` times. ``rejoin``: the site was connected before (the
    coordinator restarted and may not have registered the enrolled keys yet), so a key refusal
    is retried rather than final."""
    out = Watch()
    probed = 0
    while True:
        rc = proc.poll()
        tail.read()
        text = tail.text
        out.connected = out.connected or CONNECTED in text
        # failures since the last successful connection (a joined node may blip and recover)
        since = max(text.rfind(CONNECTED), text.rfind(RECOVERED), 0)
        out.failures = text.count(RETRYING, since)
        refusal = classify(text, server=server, insecure=insecure)
        if refusal is not None:
            if rejoin and refusal.kind in ("not-enrolled", "no-key"):
                refusal = Refusal(refusal.kind, False, refusal.reason, refusal.fix,
                                  refusal.exit_code)
            out.refusal = refusal
            out.rc = rc
            return out
        if insecure and out.failures > probed and not out.connected:
            probed = out.failures
            if speaks_tls(server):
                out.refusal = plaintext_mismatch(server)
                return out
        if rc is not None:
            out.rc = rc
            out.refusal = exited(rc, text, server)
            return out
        if out.failures > retries_left:
            out.refusal = unreachable(server, out.failures)
            return out
        time.sleep(poll)


def budget_spent(state_dir: Path, site: str, budget: float) -> Refusal | None:
    """A refusal when the site's ledger has already spent its whole budget (under both
    accountants, so a plan using either could not train): nothing to join for. Plans spend up
    to the budget exactly, so "whole" allows the accountant's last 0.1 %."""
    from fedsynth.privacy.ledger import Ledger

    ledger = Ledger.open(state_dir, site)
    if not ledger.entries:
        return None
    spent = min(ledger.epsilon(None, acc) for acc in ("prv", "rdp"))
    if spent < budget * (1 - 1e-3):
        return None
    return Refusal("budget", True,
                   f"privacy budget spent: epsilon {spent:.2f} of {budget:g} over "
                   f"{len(ledger.entries)} ledger entries, nothing more can be trained",
                   f"`ehr-client budget --site {site} --state-dir {state_dir}` shows the "
                   "ledger; only the privacy officer may raise it (--set-budget)", EXIT_BUDGET)
