"""The site worker's wire (issue 18): frames over a Unix socket and the ClientApp's end.

A frame: magic, 4-byte big-endian header length, a JSON header, then the arrays the header
lists, each ``np.save`` bytes with ``allow_pickle=False`` (no pickle anywhere). The first frame
of a request carries the token of ``STATE/worker/token``. Kept apart from ``client.worker``
so that the ClientApp imports only this (stdlib and numpy) on its forwarding path.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"FSW1"
MAX_HEADER = 16 << 20
MAX_ARRAYS = 8 << 30
READ_TIMEOUT = 60.0  # seconds to receive a whole request once connected
# node config keys that point the ClientApp to the worker
SOCKET_KEY, TOKEN_KEY = "worker-socket", "worker-token-file"
QUERY, TRAIN, EVALUATE, MARGINALS = "query", "train", "evaluate", "marginals"


class WorkerError(RuntimeError):
    """The worker could not be reached, refused the request or failed serving it."""


# ---------------------------------------------------------------------------- framing
Arrays = dict[str, np.ndarray]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise WorkerError("connection closed mid-frame")
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, header: Mapping[str, Any], arrays: Mapping[str, Any]
               ) -> None:
    """One frame: the header (JSON) lists each array's name and byte length; the arrays follow
    as ``np.save`` bytes (``allow_pickle=False``: an object array cannot be sent)."""
    blobs = []
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        blobs.append((name, buf.getvalue()))
    head = json.dumps({**header, "arrays": [[n, len(b)] for n, b in blobs]}).encode("utf-8")
    sock.sendall(MAGIC + struct.pack(">I", len(head)) + head)
    for _, blob in blobs:
        sock.sendall(blob)


def recv_header(sock: socket.socket) -> dict[str, Any]:
    start = _recv_exact(sock, len(MAGIC) + 4)
    if start[:len(MAGIC)] != MAGIC:
        raise WorkerError("not a worker frame")
    (size,) = struct.unpack(">I", start[len(MAGIC):])
    if size > MAX_HEADER:
        raise WorkerError(f"header of {size} bytes")
    header = json.loads(_recv_exact(sock, size).decode("utf-8"))
    if not isinstance(header, dict):
        raise WorkerError("header is not a JSON object")
    return header


def recv_arrays(sock: socket.socket, header: Mapping[str, Any]) -> Arrays:
    listed = header.get("arrays", [])
    if sum(int(n) for _, n in listed) > MAX_ARRAYS:
        raise WorkerError("arrays too large")
    out = {}
    for name, n in listed:
        out[str(name)] = np.load(io.BytesIO(_recv_exact(sock, int(n))), allow_pickle=False)
    return out


def group(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray] | None:
    """The arrays named ``prefix/<key>``, by key (None when there are none)."""
    found = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    return found or None


def grouped(prefix: str, state: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    return {f"{prefix}/{k}": np.asarray(v) for k, v in (state or {}).items()}


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


# ---------------------------------------------------------------------------- client side
@dataclass
class WorkerClient:
    """The ClientApp's end: one connection per request."""

    socket_path: str
    token_file: str

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any]) -> WorkerClient | None:
        if not node.get(SOCKET_KEY):
            return None
        return cls(str(node[SOCKET_KEY]), str(node.get(TOKEN_KEY, "")))

    def call(self, op: str, header: Mapping[str, Any], arrays: Mapping[str, Any],
             timeout: float) -> tuple[dict[str, Any], Arrays]:
        """Send one request, wait at most ``timeout`` seconds for the answer."""
        try:
            token = Path(self.token_file).read_bytes().hex()
        except OSError as err:
            raise WorkerError(f"cannot read the site worker's token: {err}") from None
        deadline = time.monotonic() + timeout
        try:
            with self._connect(deadline) as sock:
                sock.settimeout(max(1.0, deadline - time.monotonic()))
                send_frame(sock, {"op": op, "token": token, **header}, arrays)
                reply = recv_header(sock)
                if not reply.get("ok"):
                    raise WorkerError(f"the site worker refused {op}: {reply.get('error')}")
                return reply, recv_arrays(sock, reply)
        except TimeoutError:
            raise WorkerError(f"the site worker did not answer {op} within {timeout:g} s"
                              ) from None
        except OSError as err:
            raise WorkerError(f"site worker at {self.socket_path}: {err}") from None

    def _connect(self, deadline: float) -> socket.socket:
        """A connection to the worker; while it is still starting (ehr-client does not wait
        for it before its SuperNode connects), wait for its socket until ``deadline``."""
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
