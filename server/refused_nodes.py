"""One console line for every SuperNode the coordinator's SuperLink refused.

The SuperLink keeps refusals in its own output (``OUT/logs/superlink.out``), where nobody
watching ``ehr-server`` looks. What flwr 1.41 writes there, and so what can be reported:

- a key that is not registered: ``[/v1/fleet/activate-node][ApiError:2004] Attempted to
  register SuperNode with public key: b'-----BEGIN PUBLIC KEY-----...'`` (then uvicorn's access
  line ``HOST:PORT - "POST /v1/fleet/activate-node HTTP/1.1" 412`` with the peer address);
- no key while SuperNode authentication is on: ``[/v1/fleet/register-node][ApiError:2001]``;
- on an ``--insecure`` SuperLink, a TLS client: ``WARNING [uvicorn.error] Invalid HTTP request
  received.`` (no peer address).

A failed TLS handshake (wrong CA at the site, a host name the certificate does not name, a
plaintext client against TLS) leaves no line at all: asyncio reports SSL handshake errors only
in debug mode. Those refusals are visible at the site only (``ehr-client`` exits with the
reason).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ehr-server")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_API_ERROR = re.compile(r"\[(/v1/fleet/[\w-]+)\]\[ApiError:(\d+)\](.*)")
_KEY = re.compile(r"public key: (b'[^']*')")
_EXCEPTION = re.compile(r"exception: (.*)$")
_ACCESS = re.compile(r'(\S+:\d+) - "POST (/v1/fleet/[\w-]+) HTTP/[\d.]+" (4\d\d)')
REPEAT_S = 60.0  # the same refusal again within this many seconds is not repeated


def key_fingerprint(pem: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a PEM public key (what ``ssh-keygen -lf
    SITE.pub`` prints for the site's enrolled key), or "" if it does not parse."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
        line = key.public_bytes(serialization.Encoding.OpenSSH,
                                serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError):
        return ""
    return _ssh_fingerprint(line)


def _ssh_fingerprint(openssh_line: bytes) -> str:
    blob = base64.b64decode(openssh_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def enrolled_fingerprints(cert_dir: str | Path | None) -> dict[str, str]:
    """fingerprint -> site for every ``CERTS/sites/<SITE>.pub``."""
    out: dict[str, str] = {}
    if cert_dir is None:
        return out
    for pub in sorted((Path(cert_dir) / "sites").glob("*.pub")):
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[_ssh_fingerprint(pub.read_bytes())] = pub.stem
    return out


@dataclass
class RefusedNodes:
    """Follow the SuperLink's output and log each refusal in one line (``poll``, called about
    once a second while the run waits)."""

    output: Path  # OUT/logs/superlink.out
    cert_dir: str | None = None
    insecure: bool = False
    offset: int = 0
    _buffer: str = ""
    _pending: list[tuple[str, int]] = field(default_factory=list)  # (line, polls waited)
    _last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the file is appended to across --resume: only this launch's lines count
        self.offset = self.output.stat().st_size if self.output.exists() else 0

    def poll(self) -> list[str]:
        """Lines logged now (also returned, for tests)."""
        emitted: list[str] = []
        waiting = [(msg, age + 1) for msg, age in self._pending]
        self._pending = []
        for raw in self._read_lines():
            line = _ANSI.sub("", raw)
            access = _ACCESS.search(line)
            if access and waiting:  # the peer of the refusal logged just before
                msg, _ = waiting.pop(0)
                emitted += self._emit(msg, access.group(1))
                continue
            msg = self._refusal(line)
            if msg:
                waiting.append((msg, 0))
        for msg, age in waiting:  # its access line may land in the next poll
            if age >= 1:
                emitted += self._emit(msg)
            else:
                self._pending.append((msg, age))
        return emitted

    def _read_lines(self) -> list[str]:
        with contextlib.suppress(OSError), open(self.output, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
            self.offset += len(data)
            self._buffer += data.decode("utf-8", errors="replace")
        *lines, self._buffer = self._buffer.split("\n")
        return lines

    def _refusal(self, line: str) -> str:
        if "Invalid HTTP request received" in line:
            return ("refused a connection that was not plaintext HTTP"
                    + (": a site dialing with TLS? this coordinator runs --insecure"
                       if self.insecure else ""))
        err = _API_ERROR.search(line)
        if err is None:
            return ""
        path, code = err.group(1), err.group(2)
        if code == "2004":
            return self._unknown_key(line)
        if code == "2001":
            return ("refused a SuperNode that gave no key: only enrolled sites may join (the "
                    "site passes --auth-key SITE.key)")
        why = _EXCEPTION.search(line)
        return f"refused a SuperNode at {path} (Flower error {code}" + (
            f": {why.group(1).strip()})" if why else ")")

    def _unknown_key(self, line: str) -> str:
        fp = ""
        key = _KEY.search(line)
        if key:
            with contextlib.suppress(ValueError, SyntaxError):
                fp = key_fingerprint(ast.literal_eval(key.group(1)))
        site = enrolled_fingerprints(self.cert_dir).get(fp) if fp else None
        who = f"key {fp}" if fp else "its key"
        if site:
            return (f"refused a SuperNode: {who} is site {site}'s enrolled key but this "
                    f"SuperLink does not know it; run: ehr-certs register --dir {self.cert_dir}"
                    " --superlink HOST:PORT")
        where = f" --dir {self.cert_dir}" if self.cert_dir else ""
        return (f"refused a SuperNode: {who} is not enrolled; if the site is expected, "
                f"register its .pub: ehr-certs register{where} --superlink HOST:PORT "
                "--pub SITE.pub")

    def _emit(self, msg: str, peer: str = "") -> list[str]:
        now = time.monotonic()
        if now - self._last.get(msg, -REPEAT_S - 1) < REPEAT_S:
            return []
        self._last[msg] = now
        if peer:
            msg = re.sub(r"^refused (a \w+)", rf"refused \1 from {peer}", msg)
        log.warning("%s", msg)
        return [msg]
