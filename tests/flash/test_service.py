"""flash --service: the systemd units rendered for every board and checked by systemd itself
(``systemd-analyze verify`` / ``security`` / ``calendar``), installed over a directory target and the real sshd.

systemd is not running here (a container), so the enable/start branch runs against stand-in ``systemctl``,
``useradd`` and ``chown`` programs put first on PATH that record their arguments; everything else is real.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

import pytest

from shelfrank.cli import build_parser
from shelfrank.deploy import systemd as svc
from shelfrank.deploy.flash import FlashError, flash
from shelfrank.deploy.target import TargetLayout
from shelfrank.device.boards import BoardConfigError, load_board, packaged_boards
from shelfrank.errors import InputError
from shelfrank.testing import build_device_bundle

ANALYZE = shutil.which("systemd-analyze")
URL = "https://cdn.example/shop-17/catalog%20v2/"
QUIET = {"log": lambda _m: None}
# a user that exists (Debian base-passwd), so that flash as root does not create one on this machine
OTHER_USER = "daemon"


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("service-bundle")
    bundle, pub = build_device_bundle(root, n_items=120, seed=29)
    return bundle, pub


def _analyze(*args: str) -> subprocess.CompletedProcess:
    if ANALYZE is None:
        pytest.fail("the unit tests need systemd-analyze (Debian: apt-get install systemd; scripts/setup.sh --system)")
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120)


def verify(unit_dir: Path) -> None:
    """``systemd-analyze verify`` on every unit in ``unit_dir``: exit 0 and not one line about them.

    verify exits 0 after some warnings (an unknown key, a deprecated specifier), so its output is checked too.
    """
    units = sorted(str(p) for p in unit_dir.iterdir() if p.suffix in (".service", ".timer"))
    assert units, f"no units in {unit_dir}"
    res = _analyze("verify", "--man=no", *units)
    ours = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        if str(unit_dir) in line or any(Path(u).name in line for u in units)
    ]
    assert res.returncode == 0 and not ours, (
        f"systemd-analyze verify (exit {res.returncode}):\n{res.stdout}{res.stderr}"
    )


def _render_to(
    tmp_path: Path, board: str, prefix: str, *, runtime: bool, sync_url: str = URL
) -> tuple[Path, dict[str, str]]:
    cfg = load_board(board)
    if runtime:  # the console script flash --install-runtime leaves in PREFIX/runtime/venv
        exe = Path(prefix) / TargetLayout.RUNTIME_SHELFRANK
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text(f"#!{sys.executable}\nfrom shelfrank.cli import main\nraise SystemExit(main())\n")
        exe.chmod(0o755)
    command = svc.runtime_command(prefix, sys.executable, runtime_installed=runtime)
    units = svc.render_units(cfg, prefix, command=command, sync_url=sync_url)
    out = tmp_path / "units"
    out.mkdir(exist_ok=True)
    for name, text in units.items():
        (out / name).write_text(text)
    return out, units


def _setting(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def _exec_argv(text: str) -> list[str]:
    """ExecStart= split as systemd does for these units (double quotes; %% everywhere and $$ in arguments)."""
    (line,) = _setting(text, "ExecStart")
    argv = [a.replace("%%", "%") for a in shlex.split(line)]
    return argv[:1] + [a.replace("$$", "$") for a in argv[1:]]


# ------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("runtime", [False, True], ids=["python-m", "runtime-venv"])
@pytest.mark.parametrize("board", packaged_boards())
def test_units_verify_for_every_board(board, runtime, tmp_path):
    cfg = load_board(board)
    prefix = str(tmp_path / "opt" / "shelfrank") if runtime else cfg.install_prefix
    out, units = _render_to(tmp_path, board, prefix, runtime=runtime)
    assert list(units) == [svc.SERVICE, svc.SYNC_SERVICE, svc.SYNC_TIMER]
    verify(out)

    serve, sync, timer = units.values()
    start = [f"{prefix}/{TargetLayout.RUNTIME_SHELFRANK}"] if runtime else [sys.executable, "-m", "shelfrank.cli"]
    assert _exec_argv(serve) == [
        *start,
        "serve",
        f"{prefix}/current",
        "--board",
        board,
        "--state",
        f"{prefix}/state",
        "--public-key",
        f"{prefix}/state/trusted.pub",
        "--host",
        "127.0.0.1",
        "--port",
        str(cfg.serve_port),
        "--unix",
        svc.SOCKET_PATH,
    ]
    assert _exec_argv(sync) == [
        *start,
        "sync",
        f"{prefix}/current",
        URL,
        "--board",
        board,
        "--state",
        f"{prefix}/state",
        "--public-key",
        f"{prefix}/state/trusted.pub",
    ]
    # what the units run is what the CLI takes
    a = build_parser().parse_args(_exec_argv(serve)[len(start) :])
    assert (a.command, a.bundle, a.board, a.state, a.public_key, a.port, a.no_tcp) == (
        "serve",
        f"{prefix}/current",
        board,
        f"{prefix}/state",
        f"{prefix}/state/trusted.pub",
        cfg.serve_port,
        False,
    )
    a = build_parser().parse_args(_exec_argv(sync)[len(start) :])
    assert (a.command, a.source, a.board, a.state, a.public_key) == (
        "sync",
        URL,
        board,
        f"{prefix}/state",
        f"{prefix}/state/trusted.pub",
    )
    for text in (serve, sync):
        assert _setting(text, "User") == [cfg.service_user]
        # the TensorRT engine cache stays writable when a config puts it outside this install's state
        cache = cfg.provider_options.get("TensorrtExecutionProvider", {}).get("trt_engine_cache_path")
        extra = f" -{cache}" if cache and not cache.startswith(f"{prefix}/state/") else ""
        assert _setting(text, "ReadWritePaths") == [f"{prefix}/state{extra}"]
        assert _setting(text, "ProtectSystem") == ["strict"] and _setting(text, "NoNewPrivileges") == ["yes"]
        assert _setting(text, "MemoryHigh") == [f"{cfg.memory_budget_mb}M"]
        # the GPU providers need the real /dev and the video group
        gpu = bool(cfg.gpu_providers)
        assert _setting(text, "PrivateDevices") == ([] if gpu else ["yes"])
        assert _setting(text, "SupplementaryGroups") == (["video"] if gpu else [])
    assert _setting(serve, "Restart") == ["on-failure"] and _setting(serve, "RuntimeDirectory") == ["shelfrank"]
    assert _setting(serve, "IPAddressAllow") == ["localhost"]
    assert _setting(sync, "Type") == ["oneshot"]
    assert _setting(timer, "OnCalendar") == [cfg.sync_schedule]
    assert _setting(timer, "RandomizedDelaySec") == [str(cfg.sync_random_delay_s)]
    assert _setting(timer, "Unit") == [svc.SYNC_SERVICE]
    # the packaged schedule is a valid calendar expression
    assert svc.check_schedule(cfg.sync_schedule, cfg.source)


@pytest.mark.parametrize("board", ["rpi5", "jetson-agx-orin"])
def test_hardening_exposure_is_low(board, tmp_path):
    out, _ = _render_to(tmp_path, board, "/opt/shelfrank", runtime=False)
    units = [str(out / svc.SERVICE), str(out / svc.SYNC_SERVICE)]
    res = _analyze("security", "--offline=yes", "--no-pager", "--threshold=25", *units)
    levels = re.findall(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert res.returncode == 0 and len(levels) == 2, res.stdout[-3000:] + res.stderr
    assert all(float(x) <= 2.5 for x in levels), levels


def test_verify_catches_a_unit_systemd_would_reject(tmp_path):
    """The check above can fail: a missing executable and an unknown key are reported."""
    out, units = _render_to(tmp_path, "rpi5", str(tmp_path / "p"), runtime=True)
    (out / svc.SERVICE).write_text(units[svc.SERVICE].replace("[Service]\n", "[Service]\nColour=red\n"))
    with pytest.raises(AssertionError, match="Unknown key 'Colour'"):
        verify(out)
    (out / svc.SERVICE).write_text(units[svc.SERVICE])
    (tmp_path / "p" / TargetLayout.RUNTIME_SHELFRANK).unlink()
    with pytest.raises(AssertionError, match="is not executable"):
        verify(out)


def test_paths_with_spaces_and_percent_reach_systemd_intact(tmp_path):
    """systemd must see the same paths: verify finds the executable only if the quoting and %% are right."""
    prefix = str(tmp_path / "kiosk 7" / "50%off $HOME")
    out, units = _render_to(tmp_path, "rpi4", prefix, runtime=True, sync_url="/media/usb stick/catalog")
    verify(out)
    assert _exec_argv(units[svc.SERVICE])[:3] == [
        f"{prefix}/{TargetLayout.RUNTIME_SHELFRANK}",
        "serve",
        f"{prefix}/current",
    ]
    assert _exec_argv(units[svc.SYNC_SERVICE])[2:4] == [f"{prefix}/current", "/media/usb stick/catalog"]
    assert _setting(units[svc.SERVICE], "ReadWritePaths") == [f'"{prefix.replace("%", "%%")}/state"']
    assert _setting(units[svc.SERVICE], "PrivateTmp") == ["no"]  # a private /tmp would hide this prefix


def test_no_sync_url_no_timer(tmp_path):
    out, units = _render_to(tmp_path, "rpi5", "/opt/shelfrank", runtime=False, sync_url="")
    assert list(units) == [svc.SERVICE]
    verify(out)


@pytest.mark.parametrize(
    "prefix,needle",
    [('/opt/shelf"rank', "install prefix"), ("/opt/shelf\\rank", "install prefix"), ("/opt/a\nb", "install prefix")],
)
def test_prefix_a_unit_cannot_carry_is_refused(prefix, needle):
    with pytest.raises(InputError, match=needle):
        svc.check(load_board("rpi5"), prefix)


@pytest.mark.parametrize("user", ["root", "nobody", ""])
def test_a_shared_or_privileged_service_user_is_refused(user, tmp_path):
    cfg = load_board(_board(tmp_path, service_user=user))
    with pytest.raises(BoardConfigError, match=f"key 'service_user' is '{user}'; the service needs a dedicated"):
        svc.check(cfg, "/opt/shelfrank")


def test_runtime_path_is_where_install_runtime_puts_it():
    assert TargetLayout.RUNTIME_SHELFRANK == f"{TargetLayout.VENV_LINK}/bin/shelfrank"


def test_service_options_without_service_are_refused(signed, tmp_path):
    with pytest.raises(InputError, match="--unit-dir and --sync-url go with --service"):
        flash(signed[0], str(tmp_path / "b"), board="rpi5", unit_dir=str(tmp_path / "u"), **QUIET)
    assert not (tmp_path / "b").exists()


def test_runtime_command_needs_an_absolute_python():
    assert svc.runtime_command("/opt/s", "/usr/bin/python3", runtime_installed=False) == [
        "/usr/bin/python3",
        "-m",
        "shelfrank.cli",
    ]
    assert svc.runtime_command("/opt/s/", "python3", runtime_installed=True) == ["/opt/s/runtime/venv/bin/shelfrank"]
    with pytest.raises(InputError, match="absolute path"):
        svc.runtime_command("/opt/s", "python3", runtime_installed=False)


# ------------------------------------------------------------------------------------------- flash --service


def _board(tmp_path: Path, base: str = "rpi5", **changes: str) -> str:
    """A copy of a packaged board config with some keys changed (same name: the target knows it)."""
    src = (resources.files("shelfrank") / "firmware_configs" / f"{base}.toml").read_text(encoding="utf-8")
    for key, value in changes.items():
        src, n = re.subn(rf"(?m)^{key} = .*$", lambda _m, k=key, v=value: f"{k} = {json.dumps(v)}", src)
        assert n == 1, key
    path = tmp_path / f"{base}-{len(list(tmp_path.glob('*.toml')))}.toml"
    path.write_text(src)
    return str(path)


def test_bad_schedule_refused_before_the_target_changes(signed, tmp_path):
    board = _board(tmp_path, sync_url="https://cdn.example/s/", sync_schedule="every hour")
    with pytest.raises(BoardConfigError, match="key 'sync_schedule' is not a systemd calendar") as ei:
        flash(signed[0], str(tmp_path / "board"), board=board, service=True, unit_dir=str(tmp_path / "u"), **QUIET)
    assert board in str(ei.value) and "'every hour'" in str(ei.value)
    assert not (tmp_path / "board").exists() and not (tmp_path / "u").exists()


def test_bad_sync_url_refused_before_the_target_changes(signed, tmp_path):
    with pytest.raises(InputError, match="sync URL 'ftp://x/'"):
        flash(signed[0], str(tmp_path / "b"), board="rpi5", service=True, sync_url="ftp://x/", **QUIET)
    assert not (tmp_path / "b").exists()


def test_flash_service_to_a_directory(signed, tmp_path):
    """Real tools: the user exists (``daemon``), systemd is not running here, so nothing is enabled."""
    prefix, unit_dir = tmp_path / "board", tmp_path / "units"
    board = _board(tmp_path, service_user=OTHER_USER, sync_url="https://cdn.example/shop-17/")
    lines: list[str] = []
    res = flash(signed[0], str(prefix), board=board, service=True, unit_dir=str(unit_dir), log=lines.append)
    s = res.service
    assert s is not None and s.installed and not s.enabled and not s.user_created
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted([svc.SERVICE, svc.SYNC_SERVICE, svc.SYNC_TIMER])
    for name in s.units:  # the staged copy in PREFIX/systemd is what was installed
        assert (unit_dir / name).read_text() == (prefix / "systemd" / name).read_text()
        assert stat.S_IMODE((unit_dir / name).stat().st_mode) == 0o644
    unit = (unit_dir / svc.SERVICE).read_text()
    assert _exec_argv(unit)[:5] == [sys.executable, "-m", "shelfrank.cli", "serve", f"{prefix}/current"]
    assert _setting(unit, "User") == [OTHER_USER]
    assert _exec_argv((unit_dir / svc.SYNC_SERVICE).read_text())[5] == "https://cdn.example/shop-17/"
    verify(unit_dir)
    assert os.readlink(prefix / "current") == res.slot
    _serve_answers(_exec_argv(unit), tmp_path)
    text = "\n".join(lines)
    assert "systemd is not running" in text and "nothing was enabled or started" in text
    assert f"{unit_dir} is not a directory systemd reads units from, so nothing was enabled" in text
    if os.geteuid() == 0:
        assert (prefix / "state").stat().st_uid == _uid(OTHER_USER) and s.todo == []

    # flashed again without a sync URL: the timer from before goes
    board2 = _board(tmp_path, base="x86-64-dev", service_user=OTHER_USER)
    res2 = flash(signed[0], str(prefix), board=board2, service=True, unit_dir=str(unit_dir), **QUIET)
    assert res2.service.units == [svc.SERVICE] and sorted(p.name for p in unit_dir.iterdir()) == [svc.SERVICE]
    assert sorted(p.name for p in (prefix / "systemd").iterdir()) == [svc.SERVICE]


def _serve_answers(argv: list[str], tmp_path: Path) -> None:
    """Run the unit's ExecStart as it is (a free port and a socket under tmp_path instead) and ask it for health."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = list(argv)
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--unix") + 1] = str(tmp_path / "serve.sock")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, last = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as r:
                    assert r.status == 200
                    return
            except OSError as e:
                last = e
                time.sleep(0.2)
        proc.terminate()
        pytest.fail(
            f"the unit's ExecStart did not answer /v1/health ({last}): {proc.communicate(timeout=10)[0][-2000:]}"
        )
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def _fake_tools(tmp_path: Path, monkeypatch, *, uid: str | None = None, fail: str = "", inactive: bool = False) -> Path:
    """Stand-ins for useradd, chown, systemctl and journalctl (and ``id -u`` when ``uid``) that log their argv.

    ``fail``: that tool fails; ``inactive``: ``systemctl is-active`` says the service is not running.
    """
    bin_dir, calls = tmp_path / "fakebin", tmp_path / "calls.log"
    bin_dir.mkdir()
    tools = ["useradd", "chown", "systemctl", "journalctl"] + (["id"] if uid else [])
    for tool in tools:
        body = f'echo "{tool} $*" >> {shlex.quote(str(calls))}\n'
        if tool == "id":
            real = shutil.which("id")
            body = f'if [ "$*" = "-u" ]; then echo {uid}; exit 0; fi\nexec {real} "$@"\n'
        elif tool == fail:
            body += f"echo '{tool}: simulated failure' >&2\nexit 1\n"
        elif tool == "systemctl" and inactive:
            body += 'case "$1" in is-active) exit 3;; status) echo "Active: activating (auto-restart)";; esac\n'
        elif tool == "journalctl":
            body += "echo 'shelfrank[42]: error: bundle signature does not verify'\n"
        (bin_dir / tool).write_text("#!/bin/sh\n" + body)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    calls.touch()
    return calls


@pytest.fixture()
def booted(tmp_path, monkeypatch):
    """As if systemd were PID 1 and the unit directory one it reads."""
    marker, unit_dir = tmp_path / "run-systemd-system", tmp_path / "etc-systemd-system"
    marker.mkdir()
    monkeypatch.setattr(svc, "SYSTEMD_RUNNING_MARKER", str(marker))
    monkeypatch.setattr(svc, "SYSTEMD_UNIT_DIRS", (str(unit_dir),))
    monkeypatch.setattr(svc, "START_WAIT_S", 0)
    return unit_dir


@pytest.mark.skipif(os.geteuid() != 0, reason="the root branch (useradd, chown, systemctl) runs as root only")
def test_as_root_with_systemd_running_creates_user_and_enables(signed, tmp_path, monkeypatch, booted):
    calls = _fake_tools(tmp_path, monkeypatch)
    prefix = tmp_path / "board"
    user = "shelfrank-test-nosuchuser"
    board = _board(tmp_path, service_user=user)
    lines: list[str] = []
    res = flash(signed[0], str(prefix), board=board, service=True, unit_dir=str(booted), sync_url=URL, log=lines.append)
    assert res.service.enabled and res.service.user_created and res.service.todo == []
    got = calls.read_text().splitlines()
    assert got[0].startswith("useradd --system --user-group --no-create-home") and got[0].endswith(f" {user}")
    assert f"--home-dir {prefix}/state" in got[0]
    assert got[1:] == [
        f"chown -R {user}: {prefix}/state",
        "systemctl daemon-reload",
        f"systemctl enable {svc.SERVICE} {svc.SYNC_TIMER}",
        f"systemctl restart {svc.SERVICE} {svc.SYNC_TIMER}",
        f"systemctl is-active --quiet {svc.SERVICE}",
    ]
    assert (booted / svc.SYNC_TIMER).is_file()
    assert f"enabled and (re)started {svc.SERVICE}, {svc.SYNC_TIMER}" in "\n".join(lines)


@pytest.mark.skipif(os.geteuid() != 0, reason="the root branch (useradd) runs as root only")
def test_failed_useradd_installs_no_unit(signed, tmp_path, monkeypatch, booted):
    _fake_tools(tmp_path, monkeypatch, fail="useradd")
    prefix, board = tmp_path / "board", _board(tmp_path, service_user="shelfrank-test-nosuchuser")
    with pytest.raises(svc.ServiceError, match="useradd: simulated failure") as ei:
        flash(signed[0], str(prefix), board=board, service=True, unit_dir=str(booted), **QUIET)
    assert "the flashed bundle stays current" in str(ei.value)
    assert os.readlink(prefix / "current") == "slot_a"  # the flash itself succeeded
    assert not booted.exists() or not list(booted.iterdir())  # but no half-installed service


@pytest.mark.skipif(os.geteuid() != 0, reason="the root branch (systemctl) runs as root only")
def test_service_that_does_not_stay_up_is_reported(signed, tmp_path, monkeypatch, booted):
    calls = _fake_tools(tmp_path, monkeypatch, inactive=True)
    board = _board(tmp_path, service_user=OTHER_USER)
    with pytest.raises(svc.ServiceError, match=r"(?s)auto-restart.*bundle signature does not verify") as ei:
        flash(signed[0], str(tmp_path / "b"), board=board, service=True, unit_dir=str(booted), **QUIET)
    assert "the flashed bundle stays current" in str(ei.value)
    assert calls.read_text().splitlines()[-2:] == [
        f"systemctl status --no-pager {svc.SERVICE}",
        f"journalctl -u {svc.SERVICE} -n 30 --no-pager",
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="the root branch (systemctl) runs as root only")
def test_failing_systemctl_is_reported(signed, tmp_path, monkeypatch, booted):
    calls = _fake_tools(tmp_path, monkeypatch, fail="systemctl")
    board = _board(tmp_path, service_user=OTHER_USER)
    with pytest.raises(svc.ServiceError, match="systemctl: simulated failure"):
        flash(signed[0], str(tmp_path / "b"), board=board, service=True, unit_dir=str(booted), **QUIET)
    assert calls.read_text().splitlines()[-1] == "systemctl daemon-reload"


def test_not_root_prints_what_to_run(signed, tmp_path, monkeypatch, booted):
    calls = _fake_tools(tmp_path, monkeypatch, uid="1000")  # `id -u` says 1000
    prefix = tmp_path / "board"
    # a unit directory this user cannot write (even root cannot make a folder inside a file)
    (tmp_path / "etc").write_text("")
    unit_dir = tmp_path / "etc" / "systemd"
    monkeypatch.setattr(svc, "SYSTEMD_UNIT_DIRS", (str(unit_dir),))
    lines: list[str] = []
    res = flash(signed[0], str(prefix), board="rpi5", service=True, unit_dir=str(unit_dir), log=lines.append)
    s = res.service
    assert not s.installed and not s.enabled and calls.read_text() == ""  # useradd, chown, systemctl: none ran
    assert s.todo[0] == (
        "id -u shelfrank >/dev/null 2>&1 || useradd --system --user-group --no-create-home "
        f"--home-dir {prefix}/state --shell /usr/sbin/nologin shelfrank"
    )
    assert s.todo[1:] == [
        f"chown -R shelfrank: {prefix}/state",
        f"install -m 0644 {prefix}/systemd/{svc.SERVICE} {unit_dir}/",
        f"systemctl daemon-reload && systemctl enable --now {svc.SERVICE}",
    ]
    assert "left to do on the target as root:" in "\n".join(lines)
    assert (prefix / "systemd" / svc.SERVICE).is_file()


def test_failed_health_check_installs_no_service(signed, tmp_path):
    prefix, unit_dir = tmp_path / "board", tmp_path / "units"
    broken = tmp_path / "python-broken-health"
    broken.write_text(
        "#!/bin/sh\n"
        'case "$*" in *"shelfrank.cli health"*) echo "onnxruntime: illegal instruction" >&2; exit 1;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    broken.chmod(0o755)
    with pytest.raises(FlashError, match="health check of slot_a failed"):
        flash(signed[0], str(prefix), board="rpi5", python=str(broken), service=True, unit_dir=str(unit_dir), **QUIET)
    assert not unit_dir.exists() and not (prefix / "systemd").exists() and not (prefix / "current").exists()


# ------------------------------------------------------------------------------------------- over ssh


def test_flash_service_over_ssh(signed, sshd, tmp_path, monkeypatch):
    for k, v in sshd.env.items():
        monkeypatch.setenv(k, v)
    prefix, unit_dir = tmp_path / "board", tmp_path / "units"
    board = _board(
        tmp_path,
        base="x86-64-dev",  # the sshd is this x86-64 machine: an aarch64 board would be refused
        service_user=OTHER_USER,
        sync_url="/media/usb/catalog",
        sync_schedule="*-*-* 03:30:00",
    )
    lines: list[str] = []
    res = flash(
        signed[0],
        sshd.url(str(prefix)),
        board=board,
        python=sys.executable,
        service=True,
        unit_dir=str(unit_dir),
        log=lines.append,
    )
    s = res.service
    assert s.installed and not s.enabled and s.units == [svc.SERVICE, svc.SYNC_SERVICE, svc.SYNC_TIMER]
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(s.units)
    unit = (unit_dir / svc.SERVICE).read_text()
    assert _exec_argv(unit)[:5] == [sys.executable, "-m", "shelfrank.cli", "serve", f"{prefix}/current"]
    assert _setting(unit, "User") == [OTHER_USER]
    assert _exec_argv((unit_dir / svc.SYNC_SERVICE).read_text())[4:6] == [f"{prefix}/current", "/media/usb/catalog"]
    # a local folder: no network for the sync run
    assert _setting((unit_dir / svc.SYNC_SERVICE).read_text(), "RestrictAddressFamilies") == ["AF_UNIX"]
    assert _setting((unit_dir / svc.SYNC_TIMER).read_text(), "OnCalendar") == ["*-*-* 03:30:00"]
    verify(unit_dir)
    assert "systemd is not running on ssh target" in "\n".join(lines)
    assert os.readlink(prefix / "current") == "slot_a"
