"""schemathesis against a live daemon on loopback (`aios kernel start`, as a user runs it):
every operation of /openapi.json but stopping the kernel, adding a tool and following a
process's events, in every phase (examples, coverage, fuzzing, stateful), with the checks
not_a_server_error, status_code_conformance, content_type_conformance and
response_schema_conformance, and no failure. Deterministic (no seed, no example database) and bounded, so it takes well under a
minute and a half.

`pytest tests/test_schemathesis.py` prints schemathesis's summary (also under -q); the
whole report is written to the test's tmp_path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_tokens import aios, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")
PHASES = ("examples", "coverage", "fuzzing", "stateful")
STOP = ("POST", "/v1/kernel/stop")   # left out: it ends the run
# left out too: adding a tool imports the module its body names and runs that module's code
# in the daemon, so a generated body would import whatever module it happens to name (and a
# call could then run, say, os._exit). tests/test_python_tools.py tests the route; removing
# a tool is exercised here (nothing generated was added, so it answers 404 or 409).
ADD_TOOL = ("POST", "/v1/tools")
# and following a process: its stream lasts as long as the process, which for a bare
# process is until it is killed, so every generated request would wait out the timeout.
# tests/test_steps.py checks each of its events against this document's schemas.
FOLLOW = ("GET", "/v1/processes/{pid}/events")
EXCLUDED = (STOP, ADD_TOOL, FOLLOW)
MAX_EXAMPLES = 50   # per operation and phase: about 1,600 test cases, ~20 s on two cores
SPEED = 1000.0      # simulated seconds per wall second, so a long generation ends within the run


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    """A daemon of its own home, started and stopped by the real `aios` command; its URL."""
    home = tmp_path / "home"
    home.mkdir()
    # tools reach no host (http_fetch allows none; the python tool's sandbox has no network)
    (home / "config.toml").write_text(f"[clock]\nspeed = {SPEED}\n\n[tools]\nhttp_allow = []\n")
    port = free_port()
    started = aios(home, "kernel", "start", "--detach", "--port", str(port))
    assert started.returncode == 0, started.stderr
    yield f"http://127.0.0.1:{port}"
    stopped = aios(home, "kernel", "stop", "--cancel")
    assert stopped.returncode == 0, stopped.stderr


def test_schemathesis_finds_no_failure_on_any_operation(daemon: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec = httpx.get(f"{daemon}/openapi.json").json()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert set(EXCLUDED) <= operations
    report = tmp_path / "schemathesis.json"
    # cwd: the test's own folder, so no schemathesis.toml of anyone else's applies; no
    # proxy, so every request goes to the daemon on loopback and nowhere else
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")} | {"NO_PROXY": "*"}
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{daemon}/openapi.json",
         "--checks", ",".join(CHECKS), "--phases", ",".join(PHASES),
         *(arg for method, path in EXCLUDED for arg in ("--exclude-name", f"{method} {path}")),
         "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--workers", "1",
         "--request-timeout", "30", "--no-color", "--report", "json", "--report-json-path", str(report)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=360)
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(report.read_text())
    counts = result["operations"]
    summary = (f"schemathesis {result['schemathesis_version']}: {counts['tested']} of {counts['total']} operations "
               f"(all but {', '.join(' '.join(op) for op in EXCLUDED)}), checks {', '.join(CHECKS)}: "
               f"{result['test_cases']['generated']} test cases, {len(result['failures'])} failures, "
               f"{len(result['errors'])} errors in {result['running_time']:.1f} s")
    with capsys.disabled():
        print(f"\n{summary}\n{_closing_line(run.stdout)}")

    assert run.returncode == 0 and result["failures"] == [] and result["errors"] == [], run.stdout[-6000:]
    assert counts["total"] == len(operations)
    assert counts["selected"] == counts["tested"] == len(operations) - len(EXCLUDED)
    assert set(result["phases"]) == set(PHASES)
    assert all(phase["status"] == "success" for phase in result["phases"].values()), result["phases"]
    assert result["test_cases"]["generated"] > 20 * counts["tested"]


def _closing_line(stdout: str) -> str:
    """The last line schemathesis prints: '=== N warnings in 20.1s ===' or its failures."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return lines[-1] if lines else "(schemathesis printed nothing)"
