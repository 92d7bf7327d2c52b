"""Schemathesis against the live service and its own /openapi.json: every check, 0 server errors.

Runs the schemathesis CLI as a child process (its examples, coverage, fuzzing and stateful phases,
valid and invalid input) against the service started in this process, then asks the service
itself what it answered. ``SHELFRANK_SCHEMATHESIS_EXAMPLES`` / ``_SEED`` widen or vary the run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import Client

EXAMPLES = int(os.environ.get("SHELFRANK_SCHEMATHESIS_EXAMPLES", "15"))
SEED = int(os.environ.get("SHELFRANK_SCHEMATHESIS_SEED", "20261128"))


def test_schemathesis_all_checks_pass_without_a_server_error(served, tmp_path):
    try:
        import schemathesis  # noqa: F401 (only whether it is installed)
    except ImportError:
        pytest.fail("schemathesis is not installed: pip install 'shelfrank[dev]' (or pip install schemathesis)")
    _, servers = served
    host, port = servers.tcp_address
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"http://{host}:{port}/openapi.json",
        "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "2",
        "--generation-database", "none", "--request-timeout", "20", "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "No issues found" in out.stdout, out.stdout[-3000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in out.stdout, out.stdout[-3000:]

    c = Client(tcp=(host, port))
    _status, doc, _ = c.call("GET", "/v1/status")
    c.close()
    counts = doc["requests"]
    print(f"\nschemathesis: {counts['total']} requests; by status {counts['by_status']}")
    assert not [s for s in counts["by_status"] if s.startswith("5")], counts
    assert counts["total"] > 300
    for op in ("record", "recommend", "similar", "search", "history", "forget", "health", "status", "openapi"):
        assert counts["by_operation"].get(op, 0) > 0, (op, counts)
    # valid input reached the operations, not only refusals
    assert counts["by_status"]["200"] > counts["total"] // 5, counts
    assert {"400", "404", "405", "422"} <= set(counts["by_status"]), counts
