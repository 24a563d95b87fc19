"""
Autobahn|Testsuite 0.8.2 (``wstest -m fuzzingclient``, on Python 2.7: .ci/run
installs it into ``.ci/venvs/wstest``) through a real gateway's WS->WS routes.

The fuzzing client speaks ws:// to the gateway; each route's backend is a
WebSocket echo reached over a ws:// hop or over a wss:// hop:

- the ``websockets`` library's echo (``tests/apps/ws_echo.py``, not Autobahn)
  for cases 1-7, 9 and 10, except 7.1.5, which that echo fails when run
  directly (it answers a close that arrives inside a fragmented message with
  1002, Autobahn expects 1000);
- Autobahn|Testsuite's own echo server (``wstest -m echoserver``, which passes
  it directly) for the closing cases, 7.*, so that 7.1.5 is run through the
  gateway too: over the ws:// hop only, since 0.8.2's echo server cannot
  listen over TLS (it passes its web port where the key file belongs).

Accepted results, as Autobahn's report grades them: behaviour ``OK``,
``NON-STRICT`` (e.g. a protocol error detected a frame late, or invalid UTF-8
not failed fast) or ``INFORMATIONAL`` (close codes and reasons that the spec
leaves open), closing behaviour ``OK`` or ``INFORMATIONAL``.  Everything else
(``FAILED``, ``UNIMPLEMENTED``, ``WRONG CODE``, ``UNCLEAN``, ``FAILED BY
CLIENT``) fails the test, and so does a case missing from the report.
The cases take 24 s run directly against the echo and about 60-70 s
through the gateway per hop on this 2-core machine (with other work on it),
so no case is left out for time (case 9's are the longest: 16 MiB messages,
and 9.7/9.8's thousand round trips, which time out at 60-120 s each when the
relay adds a delay per message); each run is bounded by :data:`RUN_SECONDS`.
.ci/run runs this file on Python 3.11 and in the run against the newest
releases (Python 3.13), not a third time in the 3.13 run with the pinned
releases.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from support import REPO, GatewayProcess, Pki, free_port, make_pki, stop_process, subprocess_env, wait_until

#: The suite as .ci/run installs it, or wstest on PATH, or TUNNELGW_WSTEST.
WSTEST_VENV = REPO / ".ci" / "venvs" / "wstest" / "bin" / "wstest"
#: Cases run against the websockets echo, and those it fails directly (run against Autobahn's echo instead).
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
ECHO_FAILS = ["7.1.5"]
#: What the websockets echo runs: 301 cases in all, less the one it fails directly.
ECHO_CASE_COUNT = 300
#: The closing cases, run against Autobahn|Testsuite's echo server.
AUTOBAHN_ECHO_CASES = ["7.*"]
AUTOBAHN_ECHO_CASE_COUNT = 37
#: What Autobahn grades as passing.
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASSING_CLOSE = {"OK", "INFORMATIONAL"}
#: A bound on one fuzzingclient run (60-70 s through the gateway here).
RUN_SECONDS = 600.0

pytestmark = pytest.mark.timeout(RUN_SECONDS + 120)


def wstest_path() -> str:
    """wstest, or skip (a failure under CI=true, where .ci/run installs it)."""
    for candidate in (os.environ.get("TUNNELGW_WSTEST"), str(WSTEST_VENV), shutil.which("wstest")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    message = "wstest (Autobahn|Testsuite 0.8.2 on Python 2.7) is not installed: bash .ci/run installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class _Child:
    """A server subprocess that announces its port (or is given one); stopped on :meth:`stop`."""

    def __init__(self, command: list[str], log: Path, port: Optional[int] = None) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT, env=subprocess_env(),
                                     cwd=log.parent)
        self.port = port or 0

        def up() -> bool:
            if self.proc.poll() is not None:
                return True
            if port is None:
                found = re.search(r"listening (\d+)", log.read_text(errors="replace"))
                self.port = int(found.group(1)) if found else 0
                return bool(found)
            return "Listening" in log.read_text(errors="replace") or _accepts(port)

        if not wait_until(up, 30) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{command[:3]} did not start:\n{log.read_text(errors='replace')}")

    def stop(self) -> None:
        stop_process(self.proc)
        self._out.close()


def _accepts(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), names=["localhost"], ips=["127.0.0.1"])


@pytest.fixture(scope="module")
def echoes(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[dict[str, int]]:
    """The echo servers, by name: websockets' over ws:// and wss://, Autobahn's over ws://."""
    wstest = wstest_path()
    folder = tmp_path_factory.mktemp("echoes")
    script = str(REPO / "tests" / "apps" / "ws_echo.py")
    started: list[_Child] = []
    try:
        started.append(_Child([sys.executable, script], folder / "echo-ws.log"))
        started.append(_Child([sys.executable, script, str(pki.fullchain), str(pki.server_key)], folder / "echo-wss.log"))
        port = free_port()
        # -u 0: never an embedded web server (its default port, 8080, is one other tests use).
        started.append(_Child([wstest, "-m", "echoserver", "-u", "0", "-w", f"ws://127.0.0.1:{port}"],
                              folder / "autobahn-ws.log", port))
        yield dict(zip(("echo-ws", "echo-wss", "autobahn-ws"), (c.port for c in started)))
    finally:
        for child in started:
            child.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, echoes: dict[str, int], pki: Pki) -> Iterator[GatewayProcess]:
    """A gateway with a WS->WS route to each echo; limits that protect a real gateway from one client are off."""
    routes = "\n".join(
        f"ProxyPass /{name} {name.split('-')[1]}://127.0.0.1:{port}/"
        + (f" cafile={pki.ca_cert}" if name.endswith("wss") else "")
        for name, port in echoes.items())
    config = (f"Listen tcp:port=0:interface=127.0.0.1\n{routes}\n"
              # Case 9 sends messages of up to 16 MiB; the suite opens ~300 sessions from one address.
              "Limit sessions=0 perclient=0 rate=0 frame=16777216\n")
    with GatewayProcess(config, tmp_path_factory.mktemp("gw")) as gw:
        yield gw


def run_fuzzingclient(wstest: str, folder: Path, servers: list[dict[str, str]],
                      exclude_agent_cases: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Run ``wstest -m fuzzingclient`` (bounded by RUN_SECONDS) and return its index.json by agent."""
    spec = {"outdir": str(folder / "report"), "servers": servers, "cases": CASES, "exclude-cases": [],
            "exclude-agent-cases": exclude_agent_cases}
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))
    with open(folder / "wstest.log", "wb") as log:
        subprocess.run([wstest, "-m", "fuzzingclient", "-s", str(folder / "spec.json")], stdout=log,
                       stderr=subprocess.STDOUT, cwd=folder, timeout=RUN_SECONDS, check=True)
    index: dict[str, dict[str, Any]] = json.loads((folder / "report" / "index.json").read_text())
    return index


def failures(results: dict[str, Any]) -> dict[str, str]:
    """The cases of one agent whose grade is not a pass, as case: "behaviour/closing behaviour"."""
    return {case: f"{r['behavior']}/{r['behaviorClose']}" for case, r in results.items()
            if r["behavior"] not in PASSING or r["behaviorClose"] not in PASSING_CLOSE}


class WstestTests:
    """Autobahn|Testsuite's fuzzing client through the gateway's WS->WS routes."""

    @pytest.mark.parametrize("hop", ["ws", "wss"])
    def test_fuzzingclient_passes_through_gateway(self, gateway: GatewayProcess, hop: str,
                                                  tmp_path: Path) -> None:
        """Cases 1-7, 9 and 10 through the gateway over a ws:// or wss:// hop: none fails, none is missing, no traceback."""
        base = f"ws://127.0.0.1:{gateway.port()}"
        echo, autobahn = f"websockets-{hop}-hop", "autobahn-echo-ws-hop"
        servers = [{"agent": echo, "url": f"{base}/echo-{hop}"}]
        if hop == "ws":
            servers.append({"agent": autobahn, "url": f"{base}/autobahn-ws"})
        index = run_fuzzingclient(wstest_path(), tmp_path, servers,
                                  {echo: ECHO_FAILS, autobahn: [c for c in CASES if c not in AUTOBAHN_ECHO_CASES]})
        assert len(index[echo]) == ECHO_CASE_COUNT and not set(ECHO_FAILS) & set(index[echo])
        assert failures(index[echo]) == {}, f"see {tmp_path / 'report'}"
        if hop == "ws":
            assert len(index[autobahn]) == AUTOBAHN_ECHO_CASE_COUNT and set(ECHO_FAILS) <= set(index[autobahn])
            assert failures(index[autobahn]) == {}, f"see {tmp_path / 'report'}"
        # Whatever the fuzzer sent, the gateway logged no unhandled error.
        assert not re.search(r"Traceback|Unhandled", gateway.log()), gateway.log()[-4000:]

    def test_failures_are_found(self) -> None:
        """The grading fails FAILED, UNCLEAN and WRONG CODE results and passes NON-STRICT and INFORMATIONAL ones."""
        results = {"1.1.1": {"behavior": "OK", "behaviorClose": "OK"},
                   "3.2": {"behavior": "NON-STRICT", "behaviorClose": "OK"},
                   "7.1.6": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL"},
                   "5.1": {"behavior": "FAILED", "behaviorClose": "OK"},
                   "7.1.5": {"behavior": "FAILED", "behaviorClose": "WRONG CODE"},
                   "9.1.1": {"behavior": "OK", "behaviorClose": "UNCLEAN"}}
        assert failures(results) == {"5.1": "FAILED/OK", "7.1.5": "FAILED/WRONG CODE", "9.1.1": "OK/UNCLEAN"}
