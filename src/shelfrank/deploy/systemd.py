"""systemd units for a flashed board: ``shelfrank serve`` as a service, ``shelfrank sync`` on a timer.

``shelfrank flash … --service`` renders these from the board config and the install prefix and installs
them once the bundle is flashed, health-checked and current (a failed flash installs nothing):

- ``shelfrank.service``: ``shelfrank serve PREFIX/current --board NAME --state PREFIX/state --host
  127.0.0.1 --port PORT --unix /run/shelfrank/serve.sock`` as the board's ``service_user``, restarted on
  failure, with the file system read-only except ``PREFIX/state``.
- ``shelfrank-sync.service`` (oneshot) and ``shelfrank-sync.timer``: ``shelfrank sync PREFIX/current URL
  --board NAME --state PREFIX/state --public-key PREFIX/state/trusted.pub`` on the board's ``sync_schedule`` (an
  OnCalendar expression) plus up to ``sync_random_delay_s``. Only when a sync URL is configured (the
  board config's ``sync_url`` or ``flash --sync-url``): the catalog is per shop, the configs per board.

The paths are :class:`~shelfrank.deploy.target.TargetLayout`'s. How ``shelfrank`` starts on the
target is :func:`runtime_command`: the runtime that ``flash --install-runtime`` puts in
``PREFIX/runtime/venv`` when it is there, else the python the health check used with ``-m shelfrank.cli``.

On the target (one ``sh`` script, over a directory or ssh target alike): the units are staged in
``PREFIX/systemd/`` (kept: they show what is installed); as root, the service user is created when
missing (``useradd --system``), ``PREFIX/state`` is handed to it, the units are copied into the unit
directory by rename, and when systemd is running (``/run/systemd/system`` exists) they are enabled and the
service (re)started and checked. Not root, not booted with systemd (a container, a chroot, CI), or a unit
directory systemd does not read: the output says so and lists the commands left to run.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shelfrank.deploy.target import Target, TargetLayout, sh_join, sh_quote
from shelfrank.device.boards import BoardConfig, BoardConfigError
from shelfrank.errors import InputError, ShelfrankError

logger = logging.getLogger(__name__)

SERVICE = "shelfrank.service"
SYNC_SERVICE = "shelfrank-sync.service"
SYNC_TIMER = "shelfrank-sync.timer"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
# Where systemd looks for system units: only units in one of these can be enabled.
SYSTEMD_UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
# sd_booted(): this folder exists only while systemd runs as PID 1.
SYSTEMD_RUNNING_MARKER = "/run/systemd/system"
RUNTIME_DIRECTORY = "shelfrank"  # RuntimeDirectory=: /run/shelfrank, made and owned for the service user
SOCKET_PATH = f"/run/{RUNTIME_DIRECTORY}/serve.sock"
START_WAIT_S = 3  # after (re)starting, how long the service must stay up to count as started
EXAMPLE_SCHEDULES = "'hourly', 'daily', '*-*-* 03:30:00', 'Mon..Fri *-*-* 06..22:00:00'"


class ServiceError(ShelfrankError):
    """Installing the service on the target failed; the bundle flashed before stays current."""


@dataclass
class ServiceResult:
    """What :func:`install` did on the target, and what is left for someone with root to run."""

    units: list[str]
    staged: str  # PREFIX/systemd
    unit_dir: str
    installed: bool  # unit files are in unit_dir
    user_created: bool
    enabled: bool  # systemctl enable + (re)start ran and the service is active
    sync_url: str
    todo: list[str] = field(default_factory=list)  # commands left to run on the target


# ---------------------------------------------------------------- quoting for systemd unit files


def _check_text(value: str, what: str) -> str:
    bad = sorted({c for c in value if not c.isprintable() or c in '"\\'})
    if bad:
        raise InputError(f"{what} {value!r} contains {', '.join(map(repr, bad))}, which a unit file cannot carry")
    return value


def _spec(value: str) -> str:
    """Escape systemd's % specifiers (expanded in almost every setting)."""
    return value.replace("%", "%%")


def _word(value: str, *, exec_line: bool = False) -> str:
    """One word of a whitespace-separated setting (ExecStart=, ReadWritePaths=): quoted when needed.

    ExecStart= also expands ``$VAR``, so ``$`` doubles there; a lone ``;`` would end the command.
    """
    v = _spec(value)
    if exec_line:
        v = v.replace("$", "$$")
        if v == ";":
            return "\\;"
    if v and not any(c.isspace() or c in "'\"\\" for c in v):
        return v
    return '"' + v + '"'  # _check_text already refused '"' and '\\'


def _exec(args: Sequence[str]) -> str:
    # systemd substitutes $VAR in the arguments, not in the executable's path
    return " ".join([_word(args[0]), *(_word(a, exec_line=True) for a in args[1:])])


def _under(path: str, roots: Sequence[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(r) or PurePosixPath(r) in p.parents for r in roots)


# ---------------------------------------------------------------- what runs, checked before the target changes


def runtime_command(prefix: str, python: str, *, runtime_installed: bool) -> list[str]:
    """The argv prefix that starts ``shelfrank`` on the target.

    ``PREFIX/runtime/venv/bin/shelfrank`` when ``flash --install-runtime`` put a runtime there, else
    ``PYTHON -m shelfrank.cli`` with the python the health check ran (absolute: systemd needs it).

    Raises:
        InputError: ``python`` is not an absolute path.
    """
    if runtime_installed:
        return [TargetLayout(prefix.rstrip("/")).at(TargetLayout.RUNTIME_SHELFRANK)]
    if not python.startswith("/"):
        raise InputError(f"the service needs the target's python as an absolute path, got {python!r}")
    return [python, "-m", "shelfrank.cli"]


def check_schedule(expr: str, where: str) -> bool:
    """Check an OnCalendar expression with ``systemd-analyze calendar`` when this machine has it.

    Returns whether it could be checked.

    Raises:
        BoardConfigError: systemd refuses the expression (the message names the key and the file).
    """
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return False
    res = subprocess.run([exe, "calendar", "--", expr], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()
        raise BoardConfigError(
            f"{where}: key 'sync_schedule' is not a systemd calendar (OnCalendar) expression: {expr!r} "
            f"({why[-1] if why else f'systemd-analyze calendar exit {res.returncode}'}); "
            f"examples: {EXAMPLE_SCHEDULES}"
        )
    return True


def effective_sync_url(cfg: BoardConfig, sync_url: str | None) -> str:
    """``--sync-url`` when given, else the board config's ``sync_url`` ("" = no timer)."""
    url = cfg.sync_url if sync_url is None else sync_url
    if url and not url.startswith(("http://", "https://", "/")):
        raise InputError(f"sync URL {url!r}: expected an http(s):// URL or an absolute directory on the board")
    return _check_text(url, "sync URL")


def check(cfg: BoardConfig, prefix: str, *, sync_url: str | None = None) -> str:
    """Everything about the units that can be checked before the target changes; returns the sync URL.

    Raises:
        BoardConfigError: a bad ``sync_schedule`` (named, with the file).
        InputError: a prefix, user or URL a unit file cannot carry.
    """
    _check_text(prefix, "install prefix")
    _check_text(cfg.service_user, f"{cfg.source}: key 'service_user'")
    if cfg.service_user in ("root", "nobody") or not cfg.service_user:
        # root undoes the sandbox; nobody is shared with other daemons (systemd warns: "not safe")
        raise BoardConfigError(
            f"{cfg.source}: key 'service_user' is {cfg.service_user!r}; the service needs a dedicated "
            "unprivileged user (e.g. 'shelfrank', created by flash --service when missing)"
        )
    url = effective_sync_url(cfg, sync_url)
    if url and not check_schedule(cfg.sync_schedule, cfg.source):
        logger.warning("systemd-analyze is not on this machine: sync_schedule %r is not checked", cfg.sync_schedule)
    render_units(cfg, prefix, command=["/usr/bin/python3", "-m", "shelfrank.cli"], sync_url=url)
    return url


# ---------------------------------------------------------------- rendering


def _hardening(cfg: BoardConfig, prefix: str, paths: Sequence[str], *, network: bool) -> list[str]:
    """Sandboxing that a Python + onnxruntime + SQLite process lives with.

    Not used, on purpose: MemoryDenyWriteExecute (cffi callbacks in cryptography need W+X pages);
    ProcSubset=pid (onnxruntime reads /proc/cpuinfo for the CPU topology); RemoveIPC (the sync run, the
    same user, would remove the running service's IPC objects when it stops). GPU boards keep the real
    /dev (the CUDA/TensorRT providers open /dev/nvhost-*, /dev/nvmap): no PrivateDevices or ProtectClock
    (both close the device policy), and the service user joins ``video``.
    """
    state = TargetLayout(prefix).at(TargetLayout.STATE)
    rw = [_word(state)]
    for opts in cfg.provider_options.values():
        cache = opts.get("trt_engine_cache_path")
        if isinstance(cache, str) and cache.startswith("/") and not _under(cache, [state]):
            rw.append(_word("-" + _check_text(cache, "trt_engine_cache_path")))  # "-": may not exist yet
    home = ("/home", "/root", "/run/user")
    lines = [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(rw)}",
        # the prefix, python or a sync folder under a home directory must stay visible
        f"ProtectHome={'read-only' if any(_under(p, home) for p in paths) else 'yes'}",
        # a private /tmp would hide an install under /tmp
        f"PrivateTmp={'no' if any(_under(p, ['/tmp', '/var/tmp']) for p in paths) else 'yes'}",
        # state files for the service user alone: the app joins its group for the socket, not the events
        "UMask=0077",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "PrivateMounts=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged",
        "SystemCallErrorNumber=EPERM",
        f"RestrictAddressFamilies=AF_UNIX{' AF_INET AF_INET6' if network else ''}",
    ]
    if cfg.gpu_providers:
        lines.append("SupplementaryGroups=video")
    else:
        lines += ["PrivateDevices=yes", "ProtectClock=yes"]
    return lines


def _memory(cfg: BoardConfig) -> list[str]:
    # the budget is the runtime's RSS; above it the kernel reclaims hard, at twice it the OOM killer ends it
    return [f"MemoryHigh={cfg.memory_budget_mb}M", f"MemoryMax={2 * cfg.memory_budget_mb}M"]


def render_units(
    cfg: BoardConfig, prefix: str, *, command: Sequence[str], sync_url: str = "", board: str | None = None
) -> dict[str, str]:
    """The unit files' text by name: the service, plus the sync service and timer when ``sync_url``.

    ``command`` starts shelfrank on the target (:func:`runtime_command`); ``board`` is the serve
    unit's ``--board`` (default the config's name; flash passes the board file it carried).

    Raises:
        InputError: a prefix, user, URL or command a unit file cannot carry.
    """
    prefix = _check_text(prefix.rstrip("/") or "/", "install prefix")
    for a in command:
        _check_text(a, "command")
    user = _check_text(cfg.service_user, f"{cfg.source}: key 'service_user'")
    sync_url = _check_text(sync_url, "sync URL")
    layout = TargetLayout(prefix)
    current, state, trusted = (layout.at(x) for x in (layout.CURRENT, layout.STATE, layout.TRUSTED_KEY))
    paths = [prefix, command[0]] + ([sync_url] if sync_url.startswith("/") else [])
    head = f"# Written by `shelfrank flash --service` for board {cfg.name}; flash again to change it.\n"

    # the pinned key, explicitly: a missing trusted.pub fails instead of serving unpinned
    board = _check_text(board or cfg.name, "board")
    serve = [*command, "serve", current, "--board", board, "--state", state]
    serve += ["--public-key", trusted]
    serve += ["--host", "127.0.0.1", "--port", str(cfg.serve_port), "--unix", SOCKET_PATH]
    listen = f"127.0.0.1:{cfg.serve_port} and {SOCKET_PATH}"
    units = {
        SERVICE: "\n".join(
            [
                head.rstrip("\n"),
                "[Unit]",
                _spec(f"Description=shelfrank recommendation service ({cfg.name}, {listen})"),
                "After=network.target",
                # a crash loop (10 starts in 5 minutes) stops; `systemctl reset-failed shelfrank` re-arms it
                "StartLimitIntervalSec=300",
                "StartLimitBurst=10",
                "",
                "[Service]",
                "Type=exec",
                f"User={user}",
                f"ExecStart={_exec(serve)}",
                "Restart=on-failure",
                "RestartSec=5s",
                "TimeoutStopSec=30s",
                f"RuntimeDirectory={RUNTIME_DIRECTORY}",
                # the shop's app (another user, in the service user's group: the socket is 0660) connects
                "RuntimeDirectoryMode=0755",
                "Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
                *_memory(cfg),
                *_hardening(cfg, prefix, paths, network=True),
                # serve answers this machine only, whatever address it is told to bind
                "IPAddressDeny=any",
                "IPAddressAllow=localhost",
                "",
                "[Install]",
                "WantedBy=multi-user.target",
                "",
            ]
        )
    }
    if not sync_url:
        return units
    remote = sync_url.startswith(("http://", "https://"))
    sync = [*command, "sync", current, sync_url, "--board", board, "--state", state]
    sync += ["--public-key", trusted]
    units[SYNC_SERVICE] = "\n".join(
        [
            head.rstrip("\n"),
            "[Unit]",
            _spec(f"Description=shelfrank catalog sync ({cfg.name}) from {sync_url}"),
            *(["Wants=network-online.target", "After=network-online.target"] if remote else []),
            "",
            "[Service]",
            "Type=oneshot",
            f"User={user}",
            f"ExecStart={_exec(sync)}",
            "TimeoutStartSec=1h",  # a whole snapshot over a slow shop link
            "Nice=10",
            "IOSchedulingClass=idle",
            "Environment=PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
            *_memory(cfg),
            *_hardening(cfg, prefix, paths, network=remote),
            "",
        ]
    )
    units[SYNC_TIMER] = "\n".join(
        [
            head.rstrip("\n"),
            "[Unit]",
            _spec(f"Description=shelfrank catalog sync ({cfg.name}) on {cfg.sync_schedule!r}"),
            "",
            "[Timer]",
            _spec(f"OnCalendar={cfg.sync_schedule}"),
            f"RandomizedDelaySec={cfg.sync_random_delay_s}",
            "Persistent=true",  # a run missed while the board was off happens at boot
            f"Unit={SYNC_SERVICE}",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return units


# ---------------------------------------------------------------- installing on a target


def _kv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def install(
    target: Target,
    cfg: BoardConfig,
    *,
    python: str,
    unit_dir: str | None = None,
    sync_url: str | None = None,
    board: str | None = None,
    log: Callable[[str], None] = print,
) -> ServiceResult:
    """Install the units on ``target`` after a successful flash.

    Args:
        python: the python the health check ran on the target (used when no runtime is installed).
        unit_dir: where the unit files go (default ``/etc/systemd/system``).
        sync_url: overrides the board config's ``sync_url`` ("" = no timer).
        board: ``--board`` for the serve unit (default the config's name).

    Raises:
        ServiceError: a step on the target failed (creating the user, writing the units, starting).
    """
    q = sh_quote
    prefix = target.prefix.rstrip("/") or "/"
    layout = TargetLayout(prefix)
    unit_dir = (unit_dir or DEFAULT_UNIT_DIR).rstrip("/") or "/"
    url = check(cfg, prefix, sync_url=sync_url)
    user = cfg.service_user

    probe = _kv(
        target.sh(
            f"echo UID=$(id -u); "
            f"[ -d {q(SYSTEMD_RUNNING_MARKER)} ] && echo SYSTEMD=running || echo SYSTEMD=none; "
            f"[ -x {q(layout.at(layout.RUNTIME_SHELFRANK))} ] && echo RUNTIME=yes || echo RUNTIME=no; "
            f"echo PY=$(command -v {q(python)}); "
            f"mkdir -p {q(unit_dir)} 2>/dev/null; [ -d {q(unit_dir)} ] && [ -w {q(unit_dir)} ] && echo UNITS=w; true"
        ).stdout
    )
    py = probe.get("PY") or python
    try:
        command = runtime_command(prefix, py, runtime_installed=probe.get("RUNTIME") == "yes")
    except InputError as e:
        raise ServiceError(f"{target.description}: {python!r} is not on the target's PATH ({e})") from e
    units = render_units(cfg, prefix, command=command, sync_url=url, board=board)
    names = list(units)
    gone = [n for n in (SYNC_SERVICE, SYNC_TIMER) if n not in units]
    root = probe.get("UID") == "0"
    running = probe.get("SYSTEMD") == "running"
    writable = probe.get("UNITS") == "w"
    systemd_dir = unit_dir in SYSTEMD_UNIT_DIRS
    activate = root and running and systemd_dir
    staged, state = layout.at(layout.UNITS), layout.at(layout.STATE)
    what = f"{', '.join(names)} (ExecStart {' '.join(command)} …)"
    if url:
        what += f"; sync from {url} on {cfg.sync_schedule!r} + up to {cfg.sync_random_delay_s} s"
    log(f"service: {what}")

    with tempfile.TemporaryDirectory(prefix="shelfrank-units-") as tmp:
        for name, text in units.items():
            Path(tmp, name).write_text(text, encoding="utf-8")
        target.sh(sh_join("rm", "-rf", f"{staged}.new"))
        target.send(Path(tmp), names, f"{staged}.new")

    def useradd(shell: str) -> str:
        return (
            sh_join("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", state, "--shell")
            + f" {shell} {q(user)}"
        )

    nologin = '"$(command -v nologin || echo /bin/false)"'
    chown = sh_join("chown", "-R", f"{user}:", state)
    steps = [f"{sh_join('rm', '-rf', staged)} && {sh_join('mv', f'{staged}.new', staged)}"]
    if root:  # before any unit is in place: a failure here leaves no half-installed service
        steps += [
            f"if ! id -u {q(user)} >/dev/null 2>&1; then {useradd(nologin)} && echo USER_CREATED=1; fi",
            chown,
        ]
    if writable:
        for n in names:
            steps.append(
                f"cp {q(staged + '/' + n)} {q(f'{unit_dir}/.{n}.new')} && chmod 0644 {q(f'{unit_dir}/.{n}.new')} "
                f"&& mv -f {q(f'{unit_dir}/.{n}.new')} {q(f'{unit_dir}/{n}')}"
            )
        for n in gone:  # a timer from an earlier install whose sync URL is gone now
            off = f"systemctl disable --now {q(n)} >/dev/null 2>&1 || true; " if activate else ""
            steps.append(f"if [ -e {q(f'{unit_dir}/{n}')} ]; then {off}rm -f {q(f'{unit_dir}/{n}')}; fi")
    enable = [SERVICE] + ([SYNC_TIMER] if url else [])
    if activate and writable:
        steps += [
            "systemctl daemon-reload",
            f"systemctl enable {' '.join(enable)}",
            # restart, not just start: a running service still has the previous slot open
            f"systemctl restart {' '.join(enable)}",
            f"sleep {START_WAIT_S}",  # Type=exec is "started" at exec(); a crash on opening the bundle comes later
            f"if ! systemctl is-active --quiet {SERVICE}; then systemctl status --no-pager {SERVICE} >&2; "
            f"journalctl -u {SERVICE} -n 30 --no-pager >&2; exit 3; fi",
            "echo ENABLED=1",
        ]
    res = target.sh(" && ".join(f"{{ {s}; }}" for s in steps), check=False, timeout=120)
    done = _kv(res.stdout)
    if res.returncode != 0:
        raise ServiceError(
            f"{target.description}: installing the service failed (exit {res.returncode}); the flashed bundle "
            f"stays current: {(res.stderr or res.stdout).strip()[-1200:]}"
        )

    if done.get("USER_CREATED"):
        log(f"service: created the system user {user!r}")
    if root:
        log(f"service: {state} belongs to {user!r}")
    log(
        f"service: unit files in {unit_dir}"
        if writable
        else f"service: unit files in {staged} ({unit_dir} is not writable)"
    )
    todo: list[str] = []
    if not root:
        todo += [f"id -u {q(user)} >/dev/null 2>&1 || {useradd('/usr/sbin/nologin')}", chown]
    if not writable:
        todo.append(f"install -m 0644 {' '.join(q(f'{staged}/{n}') for n in names)} {q(unit_dir)}/")
    if done.get("ENABLED"):
        log(f"service: enabled and (re)started {', '.join(enable)}; {SERVICE} is active")
    else:
        if not running:
            log(
                f"service: systemd is not running on {target.description} (no {SYSTEMD_RUNNING_MARKER}: a "
                "container, chroot or CI?), so nothing was enabled or started"
            )
        if systemd_dir:
            todo.append(f"systemctl daemon-reload && systemctl enable --now {' '.join(enable)}")
        else:
            log(f"service: {unit_dir} is not a directory systemd reads units from, so nothing was enabled")
    if todo:
        log("service: left to do on the target as root:\n" + "\n".join(f"  {c}" for c in todo))
    return ServiceResult(
        units=names,
        staged=staged,
        unit_dir=unit_dir,
        installed=writable,
        user_created=bool(done.get("USER_CREATED")),
        enabled=bool(done.get("ENABLED")),
        sync_url=url,
        todo=todo,
    )
