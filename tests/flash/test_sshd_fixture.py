"""The ``sshd`` fixture itself: a real login, and a connection dropped on demand."""

from __future__ import annotations

import os
import subprocess
import time


def test_login_runs_a_command(sshd):
    res = sshd.run("echo hi")
    assert (res.returncode, res.stdout, res.stderr) == (0, "hi\n", "")
    # the plain `ssh -F $SHELFRANK_SSH_CONFIG user@host` form the tool under test uses
    env = {**os.environ, **sshd.env}
    res = subprocess.run(
        ["ssh", "-F", env["SHELFRANK_SSH_CONFIG"], "-p", str(sshd.port), f"{sshd.user}@{sshd.host}", "echo hi"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert (res.returncode, res.stdout) == (0, "hi\n"), res.stderr


def test_kill_connections_drops_a_running_session(sshd):
    cmd = ["ssh", *sshd.ssh_args, f"{sshd.user}@{sshd.host}", "echo started; exec sleep 30"]
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        try:
            assert p.stdout is not None
            assert p.stdout.readline() == b"started\n"  # logged in, the remote command is running
            t0 = time.monotonic()
            assert sshd.kill_connections()
            rc = p.wait(timeout=5)
            assert rc != 0
            assert time.monotonic() - t0 < 5
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sshd.run("echo still serving").stdout == "still serving\n"  # the listener survives
