"""A real OpenSSH server on 127.0.0.1 for the ssh deployment tests (``shelfrank flash --to ssh://...``).

The session fixture ``sshd`` runs Debian's ``/usr/sbin/sshd`` in the foreground on a free loopback port with a
throwaway host key, a throwaway ed25519 client key and its own ``sshd_config``; no system configuration is used or
changed, apart from creating sshd's privilege separation directory ``/run/sshd`` when it is missing. It needs the
``openssh-server`` and ``openssh-client`` packages and fails (never skips) without them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
INSTALL_HINT = "apt-get install openssh-server openssh-client"
HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SshServer:
    """A running sshd: where it listens, who may log in, and with which key."""

    host: str
    port: int
    user: str
    key: Path  # private client key (ed25519); the .pub beside it is in authorized_keys
    ssh_config: Path  # ssh client config for this server (see ``env``)
    log: Path  # sshd's own log (LogLevel VERBOSE)
    pid: int  # the listening sshd
    # commands orphaned by kill_connections, as (pid, start time): ended with the session
    orphans: list[tuple[int, str]] = field(default_factory=list, repr=False, compare=False)

    def url(self, path: str) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}{path}"

    @property
    def ssh_args(self) -> list[str]:
        """ssh client options that reach this server non-interactively (put before ``user@host``)."""
        return [
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    @property
    def env(self) -> dict[str, str]:
        """Environment for the tool under test: it passes ``-F $SHELFRANK_SSH_CONFIG`` to ssh."""
        return {"SHELFRANK_SSH_CONFIG": str(self.ssh_config)}

    def run(self, cmd: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a shell command on the server (as ``user``); output is captured as text, nothing is checked."""
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), f"{self.user}@{self.host}", cmd],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def kill_connections(self, *, timeout: float = 5.0) -> list[int]:
        """SIGKILL every sshd process serving a connection (all sshd descendants of the listener, not the listener
        itself), as a dropped network link would: clients see the connection close, commands they started lose
        their stdin/stdout. Returns the pids killed, once they are gone."""
        pids, others = _descendants(self.pid)
        self.orphans.extend((p, _starttime(p)) for p in others)
        _kill(pids)
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        return pids


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/*/stat (works without CONFIG_PROC_CHILDREN)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(d))
    return kids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _starttime(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2 :].split()[19]


def _descendants(root: int) -> tuple[list[int], list[int]]:
    """(sshd processes, other processes: the sessions' commands) below ``root``."""
    kids = _children_map()
    sshds: list[int] = []
    others: list[int] = []
    todo = list(kids.get(root, []))
    while todo:
        p = todo.pop()
        (sshds if _comm(p) == "sshd" else others).append(p)
        todo.extend(kids.get(p, []))
    return sshds, others


def _kill(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _openssh_version(exe: str) -> tuple[int, int]:
    res = subprocess.run([exe, "-V"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", res.stdout + res.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(none)"
    return "\n".join(lines[-n:]) or "(empty)"


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


def _stop(proc: subprocess.Popen, orphans: Iterable[tuple[int, str]] = ()) -> None:
    # connections and their commands first (they outlive a terminated listener), then the listener
    sshds, others = _descendants(proc.pid)
    _kill(sshds + others + [p for p, start in orphans if start and _starttime(p) == start])
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    tools = {"/usr/sbin/sshd": SSHD.is_file(), "ssh": shutil.which("ssh"), "ssh-keygen": shutil.which("ssh-keygen")}
    missing = [name for name, found in tools.items() if not found]
    if missing:
        pytest.fail(
            f"the ssh tests need a real OpenSSH server and client; missing {', '.join(missing)}: {INSTALL_HINT}"
        )

    user = pwd.getpwuid(os.getuid()).pw_name
    server_dir = tmp_path_factory.mktemp("sshd")
    client_dir = tmp_path_factory.mktemp("ssh-client")
    host_key, key = server_dir / "ssh_host_ed25519_key", client_dir / "id_ed25519"
    _keygen(host_key, "shelfrank-test-host")
    _keygen(key, "shelfrank-test-client")
    authorized_keys = server_dir / "authorized_keys"
    shutil.copyfile(key.with_name(key.name + ".pub"), authorized_keys)
    authorized_keys.chmod(0o600)

    if os.geteuid() == 0:
        run_sshd = Path("/run/sshd")  # privilege separation chroot: must exist, root-owned, not group/world writable
        run_sshd.mkdir(mode=0o755, parents=True, exist_ok=True)
        run_sshd.chmod(0o755)

    extra = ["PerSourcePenalties no"] if _openssh_version(str(SSHD)) >= (9, 8) else []
    log, out = server_dir / "sshd.log", server_dir / "sshd.out"
    proc: subprocess.Popen | None = None
    failure = ""
    for _attempt in range(3):  # the free port can be taken between picking and binding it
        port = _free_port()
        for f in (log, out):
            f.unlink(missing_ok=True)
        config = server_dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {HOST}",
                    f"Port {port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized_keys}",
                    f"PidFile {server_dir / 'sshd.pid'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "LogLevel VERBOSE",
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "MaxAuthTries 20",  # a client with an ssh-agent offers its keys first
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "Subsystem sftp internal-sftp",  # scp (OpenSSH >= 9) and sftp clients
                    *extra,
                    "",
                ]
            )
        )
        ssh_config = client_dir / "ssh_config"
        ssh_config.write_text(
            "\n".join(
                [
                    f"Host {HOST}",
                    f"    Port {port}",
                    f"    User {user}",
                    f"    IdentityFile {key}",
                    "    IdentitiesOnly yes",
                    "    StrictHostKeyChecking no",
                    "    UserKnownHostsFile /dev/null",
                    "    BatchMode yes",
                    "    LogLevel ERROR",
                    "",
                ]
            )
        )
        with open(out, "ab") as out_f:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config), "-E", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=out_f,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not sshd's
            )
        server = SshServer(HOST, port, user, key, ssh_config, log, proc.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        res = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                res = server.run("true", timeout=5)
            except subprocess.TimeoutExpired:
                res = None
            if res is not None and res.returncode == 0:
                break
            time.sleep(0.1)
        if res is not None and res.returncode == 0 and proc.poll() is None:
            break
        failure = (
            f"sshd on {HOST}:{port} did not accept an ssh login as {user!r} within {START_TIMEOUT_S:.0f} s "
            f"(sshd {'exited ' + str(proc.returncode) if proc.poll() is not None else 'running'}; "
            f"last ssh: {'none' if res is None else f'exit {res.returncode}: {res.stderr.strip()}'})\n"
            f"--- {out}:\n{_tail(out)}\n--- {log}:\n{_tail(log)}"
        )
        if "account is locked" in _tail(log):
            failure += f"\n(with UsePAM no, sshd refuses a user whose password is locked: `usermod -p '*' {user}`)"
        _stop(proc)
        proc = None
        if "Address already in use" not in _tail(log) + _tail(out):
            break
    if proc is None:
        pytest.fail(failure)
    try:
        yield server
    finally:
        _stop(proc, server.orphans)
