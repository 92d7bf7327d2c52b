"""``shelfrank serve`` as a real process: TCP on a free port and a Unix socket, SIGTERM to stop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from .conftest import Client, cli_env


def _serve(bundle_and_key, tmp_path, *extra: str) -> tuple[subprocess.Popen, str]:
    bundle, pub = bundle_and_key
    args = [sys.executable, "-m", "shelfrank.cli", "serve", str(bundle), "--state-dir", str(tmp_path / "state")]
    if pub is not None:
        args += ["--public-key", str(pub)]
    proc = subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    line = proc.stdout.readline()  # the address line, printed once the listeners are bound
    if not line.startswith("shelfrank serve: listening on "):
        proc.kill()
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"serve did not start: {line}{out}\n{err}")
    return proc, line


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_serve_over_tcp_and_a_unix_socket(bundle_and_key, tmp_path, sock_dir):
    sock = sock_dir / "serve.sock"
    proc, line = _serve(bundle_and_key, tmp_path, "--port", "0", "--unix", str(sock), "--board", "rpi5")
    try:
        m = re.search(r"http://127\.0\.0\.1:(\d+) and unix:(\S+) \(catalog version 1\)", line)
        assert m and m.group(2) == str(sock), line
        tcp, unix = Client(tcp=("127.0.0.1", int(m.group(1)))), Client(unix=str(sock))
        status, doc = tcp.post("/v1/recommend", {"user_id": "u1", "k": 3})
        assert status == 200 and len(doc["items"]) == 3
        item = doc["items"][0]["item_id"]
        assert unix.post("/v1/record", {"user_id": "u1", "item_id": item, "action": "purchase"})[0] == 200
        status, doc = tcp.post("/v1/history", {"user_id": "u1"})  # one service behind both listeners
        assert status == 200 and [e["item_id"] for e in doc["events"]] == [item]
        status, doc, _ = unix.call("GET", "/v1/status")
        assert status == 200 and doc["board"] == "rpi5" and doc["threads"] == 2
        status, doc = tcp.post("/v1/recommend", {"user_id": "u1", "k": "three"})
        assert (status, doc["field"]) == (422, "k")
        tcp.close()
        unix.close()
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "Traceback" not in err, err
    assert not sock.exists()  # removed on the way out


def test_serve_unix_only(bundle_and_key, tmp_path, sock_dir):
    sock = sock_dir / "only.sock"
    proc, line = _serve(bundle_and_key, tmp_path, "--unix", str(sock), "--no-tcp", "--access-log")
    try:
        assert "http://" not in line and f"unix:{sock}" in line
        c = Client(unix=str(sock))
        assert c.call("GET", "/v1/health")[0] == 200
        c.close()
    finally:
        code, err = _stop(proc)
    assert code == 0 and "GET /v1/health 200" in err  # the access log: method, path, status, time


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--no-tcp"], "--no-tcp needs --unix PATH"),
        (["--unix", "/nonexistent-dir/x.sock", "--no-tcp"], "cannot listen on unix socket /nonexistent-dir/x.sock"),
    ],
)
def test_serve_refuses_with_a_clear_error(bundle_and_key, tmp_path, extra, message):
    bundle, pub = bundle_and_key
    args = [sys.executable, "-m", "shelfrank.cli", "serve", str(bundle), "--state-dir", str(tmp_path / "s"), *extra]
    if pub is not None:
        args += ["--public-key", str(pub)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=cli_env())
    assert out.returncode == 2 and f"error: {message}" in out.stderr, out.stderr


def test_serve_missing_bundle(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "shelfrank.cli", "serve", str(tmp_path / "nope"), "--port", "0"],
        capture_output=True, text=True, timeout=60, env=cli_env(),
    )  # fmt: skip
    assert out.returncode == 2 and "no such bundle" in out.stderr


def test_port_zero_reports_the_bound_port(bundle_and_key, tmp_path):
    proc, line = _serve(bundle_and_key, tmp_path, "--port", "0")
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        assert port > 0
        t0 = time.monotonic()
        c = Client(tcp=("127.0.0.1", port))
        assert c.call("GET", "/v1/health")[0] == 200 and time.monotonic() - t0 < 10
        c.close()
    finally:
        code, _ = _stop(proc)
    assert code == 0
