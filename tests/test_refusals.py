"""Refusals in one line at both ends (issue 18).

Fast: the classifier on log lines captured from flwr 1.41 (``client/refusal.py``), the log
watch on a real process writing a log, the coordinator's reading of the SuperLink's output
(``server/refused_nodes.py``), and a spent budget.

Slow: a real ``ehr-server`` (TLS + enrolment from ``ehr-certs``) and a real ``--insecure`` one on
127.0.0.1; ``ehr-client`` with an unenrolled key, a wrong CA, a host name the certificate does
not name, plaintext against TLS and TLS against plaintext each exits non-zero within 60 s with
one line saying why; an unreachable coordinator is retried ``--max-retries`` times (none with
``--once``); the coordinator logs the refused node.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsynth.client import refusal
from fedsynth.client.cli import main as client_main
from fedsynth.federation.flower_runtime import free_port
from fedsynth.privacy.accountant import Mechanism
from fedsynth.privacy.ledger import Ledger
from fedsynth.server import certs
from fedsynth.server.certs_cli import main as certs_main
from fedsynth.server.refused_nodes import RefusedNodes, key_fingerprint

BIN = Path(sys.executable).parent
RED, END = "\x1b[91m", "\x1b[0m"


def _exit_305(message: str) -> str:
    """What flwr 1.41's SuperNode writes when the SuperLink refuses it."""
    return (f"{RED}ERROR {END}:     Exit Code: 305\nFailed to initialize the connection to the "
            f"SuperLink.\n{message}\nThe SuperNode could not establish a connection to the "
            "SuperLink.\n")


TLS = f"{RED}ERROR {END}:     SSL/TLS handshake error detected.\n"
CAPTURED = {  # log text -> (kind, exit code, words of the one line)
    "unenrolled": (_exit_305("[code: 2004] Failed to activate SuperNode."),
                   "not-enrolled", refusal.EXIT_NOT_ENROLLED, "not enrolled"),
    "no-key": (_exit_305("[code: 2001] SuperNode authentication is enabled. All SuperNodes "
                         "must be registered via the CLI."),
               "no-key", refusal.EXIT_NOT_ENROLLED, "gave no key"),
    "wrong-ca": (TLS + _exit_305("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                 "unable to get local issuer certificate (_ssl.c:1006)"),
                 "untrusted", refusal.EXIT_UNTRUSTED, "not signed by --root-certificates"),
    "host-name": (TLS + _exit_305("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                  "Hostname mismatch, certificate is not valid for 'localhost'. "
                                  "(_ssl.c:1006)"),
                  "host-name", refusal.EXIT_HOST_NAME, "does not name 'localhost'"),
    "tls-vs-plain": (TLS + _exit_305("[SSL: WRONG_VERSION_NUMBER] wrong version number "
                                     "(_ssl.c:1006)"),
                     "tls-mismatch", refusal.EXIT_TLS_MISMATCH, "speaks plaintext"),
}


@pytest.mark.parametrize("case", sorted(CAPTURED))
def test_classifier_on_captured_lines(case: str) -> None:
    text, kind, code, words = CAPTURED[case]
    found = refusal.classify(text, server="127.0.0.1:9092", insecure=False)
    assert found is not None and found.permanent
    assert (found.kind, found.exit_code) == (kind, code)
    line = found.line("A")
    assert words in line and "\n" not in line and "\x1b" not in line
    assert len({c for c in (refusal.EXIT_GAVE_UP, refusal.EXIT_NOT_ENROLLED,
                            refusal.EXIT_UNTRUSTED, refusal.EXIT_HOST_NAME,
                            refusal.EXIT_TLS_MISMATCH, refusal.EXIT_BUDGET, 2)}) == 7


def test_classifier_leaves_transient_lines_alone() -> None:
    retry = "\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in 0.54 seconds\n"
    assert refusal.classify(retry * 3, server="h:1", insecure=True) is None
    assert refusal.classify("INFO : SuperNode ID: 123\n", server="h:1", insecure=False) is None
    gone = refusal.exited(1, _exit_305("[code: 9999] Something new."), "h:1")
    assert not gone.permanent and "Something new" in gone.reason


def _writer(log: Path, lines: list[str], exit_after: bool) -> subprocess.Popen[bytes]:
    """A real process appending ``lines`` to ``log``, then exiting (code 1) or idling: it stands
    in for a SuperNode."""
    code = ("import sys, time\n"
            "for line in sys.argv[3:]:\n"
            "    open(sys.argv[1], 'a').write(line + '\\n'); time.sleep(0.05)\n"
            "sys.exit(1) if sys.argv[2] == '1' else time.sleep(60)\n")
    return subprocess.Popen([sys.executable, "-c", code, str(log), str(int(exit_after)),
                             *lines])


def _watched(tmp_path: Path, lines: list[str], retries: int, exit_after: bool = False,
             **kw: object) -> refusal.Watch:
    log = tmp_path / "supernode.log"
    log.write_text("an earlier attempt: Failed to activate SuperNode\n")  # not this attempt's
    tail = refusal.LogTail(log)
    proc = _writer(log, lines, exit_after)
    try:
        return refusal.watch(proc, tail, server="127.0.0.1:1", insecure=False,
                             retries_left=retries, poll=0.05, **kw)  # type: ignore[arg-type]
    finally:
        proc.kill()
        proc.wait()


def test_watch_bounds_connection_failures(tmp_path: Path) -> None:
    retry = "WARNING : Connection attempt failed, retrying in 0.1 seconds"
    seen = _watched(tmp_path, [retry] * 5, retries=2)
    assert seen.refusal is not None and seen.refusal.kind == "unreachable"
    assert seen.failures == 3 and seen.rc is None and not seen.connected
    # failures before a successful join do not count against a node that joined
    seen = _watched(tmp_path, [retry, retry, "INFO : SuperNode ID: 7", retry], retries=5,
                    exit_after=True)
    assert seen.connected and seen.failures == 1 and seen.rc == 1
    assert seen.refusal is not None and seen.refusal.kind == "exited"
    # a refusal after the node had joined (the coordinator restarted and has not registered
    # the enrolled keys yet) is retried, not final
    seen = _watched(tmp_path, ["[code: 2004] Failed to activate SuperNode."], retries=5,
                    rejoin=True)
    assert seen.refusal is not None and not seen.refusal.permanent


SUPERLINK_OUT = [  # lines flwr 1.41's SuperLink writes for refused nodes (ANSI as written)
    f"{RED}ERROR {END}:     [/v1/fleet/activate-node][ApiError:2004] Attempted to register "
    "SuperNode with public key: {pem}, exception: No SuperNode found with the given public key.",
    '2026-12-02T22:19:14.706Z INFO [uvicorn.access] 127.0.0.1:38434 - "POST '
    '/v1/fleet/activate-node HTTP/1.1" 412',
    f"{RED}ERROR {END}:     [/v1/fleet/register-node][ApiError:2001] Attempted to register "
    "SuperNode with public key: b''",
]


def test_coordinator_reads_superlink_output(tmp_path: Path) -> None:
    _, pub_file = certs.new_site_keys("U", tmp_path / "outsider")
    from cryptography.hazmat.primitives import serialization

    pub = serialization.load_ssh_public_key(pub_file.read_bytes())
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    out = tmp_path / "superlink.out"
    out.write_text("a line of an earlier launch: [ApiError:2004]\n")
    watch = RefusedNodes(out, cert_dir=None, insecure=False)
    first, access, nokey = SUPERLINK_OUT
    with open(out, "a") as fh:
        fh.write(first.replace("{pem}", repr(pem)) + "\n")
    assert watch.poll() == []  # its access line (the peer) may follow: wait one poll
    with open(out, "a") as fh:
        fh.write(access + "\n" + nokey + "\n")
    lines = watch.poll() + watch.poll()
    fp = key_fingerprint(pem)
    assert fp.startswith("SHA256:")
    assert lines[0].startswith(f"refused a SuperNode from 127.0.0.1:38434: key {fp} is not "
                               "enrolled")
    assert "gave no key" in lines[1] and len(lines) == 2
    with open(out, "a") as fh:  # the same node again within a minute: not repeated
        fh.write(nokey + "\n")
    assert watch.poll() + watch.poll() == []
    # an enrolled site's key the SuperLink does not know: named, with the command that fixes it
    cert_dir = tmp_path / "certs"
    (cert_dir / "sites").mkdir(parents=True)
    (cert_dir / "sites" / "U.pub").write_bytes(pub_file.read_bytes())
    watch = RefusedNodes(out, cert_dir=str(cert_dir), insecure=True)
    with open(out, "a") as fh:
        fh.write(first.replace("{pem}", repr(pem)) + "\n")
        fh.write("2026-12-02T22:21:00.742Z WARNING [uvicorn.error] Invalid HTTP request "
                 "received.\n")
    lines = watch.poll() + watch.poll()
    assert any("site U's enrolled key" in ln and "ehr-certs register" in ln for ln in lines)
    assert any("runs --insecure" in ln for ln in lines)


def test_spent_budget_exits_3_before_any_supernode(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fedsynth.common.data import demo_cohort, write_matrix

    cohort = demo_cohort(n_sites=1, patients_per_site=40, seed=0)
    data = tmp_path / "a.csv"
    write_matrix(data, cohort.X, cohort.vocab, cohort.patient_ids)
    state = tmp_path / "state"
    ledger = Ledger.open(state, "A", delta=1e-5)
    ledger.record(Mechanism(0.6, 1.0, 40), run_id="r", round=1)
    code = client_main(["--site", "A", "--data", str(data), "--server", "127.0.0.1:9",
                        "--state-dir", str(state), "--epsilon-budget", "1", "--insecure",
                        "--no-check", "--once"])
    assert code == refusal.EXIT_BUDGET
    assert "site A: privacy budget spent: epsilon" in caplog.text
    assert not (state / "flwr-home").exists()


# ------------------------------------------------------------------ real processes


def _env() -> dict[str, str]:
    return dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started (ehr-server stops what it started on SIGTERM)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class Coordinators:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.certs = root / "certs"
        self.procs: list[subprocess.Popen[bytes]] = []

    def server(self, name: str, *extra: str) -> str:
        port = free_port()
        log = self.root / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(BIN / "ehr-server"), "--host", "127.0.0.1", "--port", str(port),
                 "--rounds", "1", "--min-sites", "2", "--epsilon", "3", "--wait-sites", "600",
                 "--out", str(self.root / name), "--no-progress", *extra],
                stdout=fh, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while "submitted Flower run" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinators]:
    root = tmp_path_factory.mktemp("refusals")
    c = Coordinators(root)
    # the SAN lists only 127.0.0.1: "localhost" is a name the certificate does not carry
    assert certs_main(["init", "--out", str(c.certs), "--host", "127.0.0.1"]) == 0
    assert certs_main(["enroll", "--site", "A", "--out", str(c.certs)]) == 0
    assert certs_main(["init", "--out", str(root / "other-ca"), "--host", "127.0.0.1"]) == 0
    certs.new_site_keys("U", root / "outsider")  # never enrolled with the coordinator
    from fedsynth.common.data import demo_cohort, write_matrix

    cohort = demo_cohort(n_sites=1, patients_per_site=40, seed=0)
    write_matrix(root / "site.csv", cohort.X, cohort.vocab, cohort.patient_ids)
    try:
        c.tls = c.server("tls", "--certs", str(c.certs))  # type: ignore[attr-defined]
        c.plain = c.server("plain", "--insecure")  # type: ignore[attr-defined]
        yield c
    finally:
        for proc in c.procs:
            _stop(proc)


def _client(root: Path, name: str, server: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "ehr-client"), "--site", name, "--data", str(root / "site.csv"),
         "--server", server, "--state-dir", str(root / f"state-{name}"), "--epsilon-budget",
         "3", "--delta", "1e-5", "--no-check", "--threads", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        start_new_session=True)


@pytest.fixture(scope="module")
def refused(coord: Coordinators) -> dict[str, tuple[int, float, str]]:
    """Each refused client: (exit code, seconds from its start to its exit, stderr)."""
    root, ca, key = coord.root, coord.certs / "ca.crt", coord.certs / "A.key"
    tls, plain = coord.tls, coord.plain  # type: ignore[attr-defined]
    port = tls.rpartition(":")[2]
    cases = {
        "unenrolled": (tls, "--root-certificates", str(ca), "--auth-key",
                       str(root / "outsider" / "U.key")),
        "wrongca": (tls, "--root-certificates", str(root / "other-ca" / "ca.crt"),
                    "--auth-key", str(key)),
        "wrongname": (f"localhost:{port}", "--root-certificates", str(ca), "--auth-key",
                      str(key)),
        "plaintotls": (tls, "--insecure"),
        "tlstoplain": (plain, "--root-certificates", str(ca), "--auth-key", str(key)),
    }
    out = {}
    for name, args in cases.items():  # one at a time: each site's own time to its exit
        started = time.monotonic()
        proc = _client(root, name, *args)
        try:
            _, err = proc.communicate(timeout=180)
        finally:
            _stop(proc)
        out[name] = (proc.returncode, time.monotonic() - started, err)
    return out


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("ERROR ehr-client")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("case,code,words", [
    ("unenrolled", refusal.EXIT_NOT_ENROLLED, "is not enrolled"),
    ("wrongca", refusal.EXIT_UNTRUSTED, "not signed by --root-certificates"),
    ("wrongname", refusal.EXIT_HOST_NAME, "does not name 'localhost'"),
    ("plaintotls", refusal.EXIT_TLS_MISMATCH, "speaks TLS and this site runs --insecure"),
    ("tlstoplain", refusal.EXIT_TLS_MISMATCH, "speaks plaintext"),
])
def test_refused_client_exits_within_60s_with_one_line(
        refused: dict[str, tuple[int, float, str]], case: str, code: int, words: str) -> None:
    rc, seconds, err = refused[case]
    assert rc == code, err[-3000:]
    assert seconds < 60, (seconds, err[-3000:])
    assert words in _one_line(err)


@pytest.mark.slow
def test_coordinator_logs_the_refused_node(
        coord: Coordinators, refused: dict[str, tuple[int, float, str]]) -> None:
    from cryptography.hazmat.primitives import serialization

    pub = serialization.load_ssh_public_key((coord.root / "outsider" / "sites" / "U.pub")
                                            .read_bytes())
    fp = key_fingerprint(pub.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    deadline = time.monotonic() + 10  # ehr-server polls its SuperLink's output every second
    while True:
        tls_log = (coord.root / "tls.log").read_text(errors="replace")
        plain_log = (coord.root / "plain.log").read_text(errors="replace")
        if (f"key {fp} is not enrolled" in tls_log and "runs --insecure" in plain_log) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    line = next((ln for ln in tls_log.splitlines() if fp in ln), tls_log[-3000:])
    assert line.startswith("WARNING ehr-server: refused a SuperNode from 127.0.0.1:"), line
    assert "is not enrolled" in line
    # the TLS client on the plaintext coordinator: the only trace its SuperLink leaves
    assert "refused a connection that was not plaintext HTTP" in plain_log, plain_log[-3000:]


@pytest.mark.slow
def test_unreachable_coordinator_is_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    from fedsynth.common.data import demo_cohort, write_matrix

    cohort = demo_cohort(n_sites=1, patients_per_site=40, seed=0)
    write_matrix(tmp_path / "site.csv", cohort.X, cohort.vocab, cohort.patient_ids)
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    procs = {"retries": _client(tmp_path, "R", nobody, "--insecure", "--max-retries", "2"),
             "once": _client(tmp_path, "O", nobody, "--insecure", "--once")}
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            _stop(proc)
        assert proc.returncode == refusal.EXIT_GAVE_UP, err[-3000:]
        line = _one_line(err)
        assert "gave up: no connection to the coordinator" in line
        # --max-retries 2: the third failure gives up; --once: the first. Flower's backoff has
        # full jitter (a retry may follow within milliseconds), so a few more failures can land
        # in the log between two reads of it on a loaded machine: bounded, never unbounded.
        tries = int(re.search(r"after (\d+) failed attempt", line).group(1))  # type: ignore
        allowed = 3 if name == "retries" else 1
        assert allowed <= tries <= allowed + 3, line

