"""``shelfrank flash``: put a bundle on a board with A/B slots, verify it there, switch atomically.

Targets: a local directory, or ``ssh://user@host[:port]/path``. Over ssh the copy is a streamed
``tar`` (no rsync needed) that resumes at file granularity: files already on the target with the
right sha256 are not sent again, so a flash interrupted by a dropped connection continues where
it stopped. The target needs a POSIX shell, ``tar``, ``sha256sum``, ``df`` and a python with
shelfrank installed (board config ``python``, or ``--python``); for a directory target the
default python is this one. A runtime that ``--install-runtime`` put in ``PREFIX/runtime/venv``
(:mod:`shelfrank.runtime`) is the default once it is there; ``--install-runtime`` itself makes a
new venv from carried wheels after the copy, health-checks with it and switches
``PREFIX/runtime/venv`` together with ``current``.

Layout on the target (DESIGN.md): ``PREFIX/slot_a``, ``PREFIX/slot_b``, ``PREFIX/current`` (a
symlink to the active slot, replaced by rename), ``PREFIX/state/`` (``trusted.pub``,
``flash.log``, events, synced catalogs). Order of work: check everything that can be checked
before anything on the target changes (bundle signature and hashes here, board config, target
reachable, python with shelfrank, free space, key pinning); copy into ``<slot>.partial``; verify
every hash and run the health check (open + one query) there with the target's python; then
rename the slot into place, pin the key, switch ``current``. Any failure before the switch
leaves the previous slot current and serving. With ``--service``, :mod:`shelfrank.service` then
installs the systemd units (``shelfrank serve`` and the sync timer); their settings are checked
before the target changes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

from shelfrank.device import bundle as bfmt
from shelfrank.device.formats import is_safe_rel_path
from shelfrank.errors import InputError, ShelfrankError

if TYPE_CHECKING:
    from shelfrank.service import ServiceResult


class FlashError(ShelfrankError):
    """Flashing failed; the message says at which step. The previous slot stays current."""


SLOTS = ("slot_a", "slot_b")
#: a board flashed from a file (``--board ./tiny.toml``) is carried here: the target has no copy of it
BOARD_FILE = "state/board.toml"


def sh_quote(word: str) -> str:
    """One word of shell sent to a target (flash, runtime): the one place such words are quoted."""
    return shlex.quote(str(word))


_q = sh_quote


def _safe_names(files: list[str], where: str) -> list[str]:
    """``files`` when every name is a safe relative path (formats.SafeRelPath), else FlashError.

    verify_bundle already refuses such names in a signed ``files`` table; the targets check again
    because they are what writes, and other callers (runtime wheels) hand them names too.
    """
    bad = [f for f in files if not is_safe_rel_path(f)]
    if bad:
        raise FlashError(
            f"{where}: refusing to copy {bad[0]!r}: not a safe relative file name "
            "(no '..', no absolute path, no leading '-', no control characters)"
        )
    return files


class Target:
    prefix: str
    description: str

    def sh(self, script: str, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def send(self, local_root: Path, files: list[str], remote_dir: str) -> None:
        raise NotImplementedError

    def _check(self, res: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
        if res.returncode != 0:
            raise FlashError(f"{self.description}: {what} failed (exit {res.returncode}): {res.stderr.strip()[-800:]}")
        return res


class DirTarget(Target):
    def __init__(self, prefix: str) -> None:
        self.prefix = str(Path(prefix).resolve())
        self.description = f"directory {self.prefix}"

    def sh(self, script: str, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout)
        return self._check(res, "command") if check else res

    def send(self, local_root: Path, files: list[str], remote_dir: str) -> None:
        """Copy ``files`` (relative names) from ``local_root`` into ``remote_dir``, never outside it.

        Raises:
            FlashError: an unsafe name, ``remote_dir`` outside the target, a destination that
                resolves outside ``remote_dir`` (a symlinked folder), or a write error.
        """
        dest = Path(remote_dir).resolve()
        if not dest.is_relative_to(self.prefix):
            raise FlashError(f"{self.description}: refusing to write to {dest}, outside the target")
        for rel in _safe_names(files, self.description):
            dst = dest / rel
            # resolved before anything is created: a symlinked folder on the way cannot redirect the write
            if not dst.parent.resolve().is_relative_to(dest):
                raise FlashError(f"{self.description}: refusing to write {rel!r}: it resolves outside {dest}")
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_symlink():
                    dst.unlink()  # replace a link, never write through it
                shutil.copyfile(local_root / rel, dst)
            except OSError as e:
                raise FlashError(f"{self.description}: writing {dst} failed: {e}") from e


class SshTarget(Target):
    def __init__(self, url: str) -> None:
        u = urlparse(url)
        if u.scheme != "ssh" or not u.hostname or not u.path:
            raise FlashError(f"{url}: expected ssh://user@host[:port]/path")
        self.user, self.host, self.port, self.prefix = u.username, u.hostname, u.port, u.path
        self.description = f"ssh target {url}"
        self.base = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if os.environ.get("SHELFRANK_SSH_CONFIG"):
            self.base += ["-F", os.environ["SHELFRANK_SSH_CONFIG"]]
        if self.port:
            self.base += ["-p", str(self.port)]
        self.base.append(f"{self.user}@{self.host}" if self.user else self.host)

    def sh(self, script: str, *, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run([*self.base, "sh -c " + _q(script)], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise FlashError(f"{self.description}: timed out after {timeout:.0f} s") from e
        if res.returncode == 255:
            raise FlashError(f"{self.description}: unreachable (ssh: {res.stderr.strip()[-400:]})")
        return self._check(res, "command") if check else res

    def send(self, local_root: Path, files: list[str], remote_dir: str) -> None:
        if not files:
            return
        # `--`: whatever a name looks like, tar reads it as a name, never as an option
        names = _safe_names(files, self.description)
        tar = subprocess.Popen(["tar", "-C", str(local_root), "-cf", "-", "--", *names], stdout=subprocess.PIPE)
        try:
            res = subprocess.run(
                [*self.base, f"mkdir -p {_q(remote_dir)} && tar -C {_q(remote_dir)} -xf -"],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=3600,
            )
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
        if res.returncode != 0:
            raise FlashError(
                f"{self.description}: copy interrupted (exit {res.returncode}): "
                f"{res.stderr.strip()[-400:]}; run flash again to resume"
            )


def make_target(spec: str) -> Target:
    """A target from ``DIR`` or ``ssh://user@host[:port]/path``.

    Raises:
        FlashError: a spec that starts like an ssh URL but is not one (``ssh:/x``, ``ssh:host``):
            it would otherwise be a directory named ``ssh:`` here.
    """
    if spec.startswith("ssh://"):
        return SshTarget(spec)
    if spec.lower().startswith("ssh:"):
        raise FlashError(f"{spec}: expected ssh://user@host[:port]/path (two slashes after 'ssh:')")
    return DirTarget(spec)


@dataclass
class FlashResult:
    target: str
    slot: str
    previous: str | None
    key_id: str
    sent_files: int
    skipped_files: int
    service: ServiceResult | None = None  # with service=True: what was installed, what is left to do
    runtime: str | None = None  # with install_runtime: the venv now behind PREFIX/runtime/venv


def flash(
    bundle: str | Path,
    to: str,
    *,
    board: str,
    public_key: str | Path | None = None,
    python: str | None = None,
    service: bool = False,
    unit_dir: str | None = None,
    sync_url: str | None = None,
    install_runtime: bool = False,
    wheelhouse: list[str | Path] | None = None,
    online: bool = False,
    allow_arch_mismatch: bool = False,
    log: Callable[[str], None] = print,
) -> FlashResult:
    """Flash ``bundle`` to ``to`` (see the module docstring).

    Raises:
        FlashError: a check or step failed (the message names it); the previous slot stays current.
        BundleError, SignatureError, UnknownBoardError, BoardConfigError: before anything on the target.
        ServiceError: with ``service``, installing the units failed after the switch (the new slot is current).

    ``install_runtime``: make a venv with shelfrank on the target from the wheels in ``wheelhouse``
    (offline unless ``online``) and health-check with it; see :mod:`shelfrank.runtime`.

    The board's ``expected_isa`` implies an architecture: an ssh target of another one (``uname -m``)
    is refused and a directory on a machine of another one is warned about (it may be a board's
    root mounted here), unless ``allow_arch_mismatch``.
    """
    from shelfrank import runtime
    from shelfrank.device.boards import (
        board_arch,
        check_bundle_memory,
        check_catalog_size,
        is_board_path,
        normalise_arch,
        read_board,
    )

    if (wheelhouse or online) and not install_runtime:
        raise FlashError("--wheelhouse and --online go with --install-runtime")
    bundle = Path(bundle)
    cfg, board_toml = read_board(board)
    board_file = is_board_path(board)  # handed on as the file carried to the target, never by its name
    if not bundle.exists():  # named as such, not as its missing publisher.pub
        raise bfmt.BundleError(f"{bundle}: no such bundle (the directory shelfrank export writes)")
    bfmt.read_manifest(bundle)  # a file, or a folder without a manifest: said before any key is read
    key = bfmt.load_public_key(public_key if public_key is not None else bundle / bfmt.PUBLIC_KEY)
    manifest = bfmt.verify_bundle(bundle, public_key=key)
    kid = bfmt.key_id(key)
    files = [*sorted(manifest.files), bfmt.MANIFEST, bfmt.SIGNATURE]
    size = sum((bundle / f).stat().st_size for f in files)
    check_catalog_size(cfg, manifest.catalog.count, f"bundle {bundle}")
    check_bundle_memory(cfg, size, f"bundle {bundle}")
    log(f"bundle {bundle}: verified ({len(files)} files, {size / 1e6:.1f} MB, key {kid[:16]}…), board {cfg.name}")

    t = make_target(to)
    if service:  # the units are checked (schedule, paths, sync URL) before the target changes
        from shelfrank import service as svc

        svc.check(cfg, t.prefix, sync_url=sync_url)
    elif unit_dir is not None or sync_url is not None:
        raise InputError("--unit-dir and --sync-url go with --service")
    if python and isinstance(t, DirTarget) and "/" in python:
        python = os.path.abspath(python)  # the commands run in the prefix
    py = python or (cfg.python if isinstance(t, SshTarget) else sys.executable)
    p = t.prefix
    rt_py = f"{p}/{runtime.VENV_LINK}/bin/python"  # a runtime from an earlier --install-runtime
    if install_runtime:
        py_probe = (
            f"echo RTCUR=$(readlink {runtime.VENV_LINK} 2>/dev/null); "
            f"({runtime.CLEAN_PY}; {_q(py)} -c {_q(runtime.PROBE)}) 2>&1; true"
        )
    else:
        py_probe = (
            f"PY={_q(py)}; {'' if python else f'[ -x {_q(rt_py)} ] && PY={_q(rt_py)}; '}echo PYUSED=$PY; "
            f'([ "$PY" != {_q(rt_py)} ] || {runtime.CLEAN_PY}; "$PY" -c "import shelfrank.device") >/dev/null 2>&1 '
            "&& echo PY=ok || echo PY=missing"
        )
    probe = t.sh(
        f"mkdir -p {_q(p)} 2>/dev/null; cd {_q(p)} 2>/dev/null || {{ echo NODIR; exit 0; }}; "
        f"echo CUR=$(readlink current 2>/dev/null); "
        f"echo FREE=$(df -Pk . | awk 'NR==2 {{print $4}}'); "
        f"echo PIN=$(base64 -w0 state/trusted.pub 2>/dev/null); echo ARCH=$(uname -m); " + py_probe
    ).stdout
    if "NODIR" in probe:
        raise FlashError(f"{t.description}: cannot create or enter {p}")
    info = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
    want_arch, arch = board_arch(cfg), normalise_arch(info.get("ARCH", ""))
    if want_arch and arch and arch != want_arch and not allow_arch_mismatch:
        what = f"board {cfg.name} expects {want_arch} (expected_isa {cfg.expected_isa}), but {t.description} is {arch}"
        if isinstance(t, SshTarget):
            raise FlashError(f"{what}; flash the board config of that machine, or pass --allow-arch-mismatch")
        # a directory may be a board's root mounted or emulated here: said, not refused
        log(f"warning: {what} (this machine); fine for a board's root mounted here, else use its board config")
    rt = None
    clean = False  # run the health check without this shell's PYTHONPATH (a runtime venv's python)
    if install_runtime:
        tp = runtime.TargetPython.from_probe(py, probe, t.description)
        rt = runtime.prepare(t, tp, wheelhouse or [], online=online, previous=info.get("RTCUR") or None)
        size += runtime.size(rt)
        log(f"runtime: {tp.describe()} at {py}; {rt.wheel.path.name} + {len(rt.deps)} wheel(s)")
    elif info.get("PYUSED") == rt_py:
        py, clean = rt_py, True
        log(f"health check with the runtime installed on the target: {rt_py}")
    if not install_runtime and info.get("PY") != "ok":
        raise FlashError(
            f"{t.description}: {py} cannot import shelfrank.device; install shelfrank on the target "
            "(pip install shelfrank) or pass --python"
        )
    free = int(info.get("FREE") or 0) * 1024
    if free < size * 1.2:
        raise FlashError(f"{t.description}: {free / 1e6:.0f} MB free in {p}, need {size * 1.2 / 1e6:.0f} MB")
    pinned = info.get("PIN", "")
    if pinned and public_key is None:
        pinned_id = bfmt.key_id(bfmt.load_public_key(base64.b64decode(pinned)))
        if pinned_id != kid:
            raise FlashError(
                f"{t.description}: the bundle is signed by key {kid[:16]}…, but the target trusts "
                f"{pinned_id[:16]}…; pass --public-key to re-pin deliberately"
            )
    current = info.get("CUR") or None
    slot = SLOTS[1] if current == SLOTS[0] else SLOTS[0]
    partial = f"{p}/{slot}.partial"
    log(f"target {t.description}: current {current or '(none)'}, writing {slot}")

    # resume: files already there with the right hash are not sent again
    have = t.sh(f"cd {_q(partial)} 2>/dev/null && sha256sum -- * catalog/* 2>/dev/null; true").stdout
    present = {line.split(None, 1)[1].strip(): line.split()[0] for line in have.splitlines() if "  " in line}
    want = dict(manifest.files)
    want[bfmt.MANIFEST] = bfmt.sha256_file(bundle / bfmt.MANIFEST)
    want[bfmt.SIGNATURE] = bfmt.sha256_file(bundle / bfmt.SIGNATURE)
    todo = [f for f in files if present.get(f) != want[f]]
    t.sh(f"mkdir -p {_q(p)}/state {_q(partial)}")
    log(f"copying {len(todo)} file(s) ({len(files) - len(todo)} already there)")
    t.send(bundle, todo, partial)
    if rt is not None:  # a new venv beside the one in use; runtime/venv switches with current
        try:
            runtime.install(t, rt, log=log)
        except runtime.RuntimeInstallError as e:
            raise runtime.RuntimeInstallError(f"{e}; nothing switched, {current or 'nothing'} stays current") from e
        py, clean = rt.python, True

    pub_pem = bfmt.public_pem(key).decode()
    carry_board = f"printf '%s' {_q(board_toml)} > {_q(partial)}.board.toml && " if board_file else ""
    health = t.sh(
        f"printf '%s' {_q(pub_pem)} > {_q(partial)}.pub && {carry_board}"
        f"({runtime.CLEAN_PY if clean else 'true'}; "
        f"exec {_q(py)} -m shelfrank.cli health {_q(partial)} --public-key {_q(partial)}.pub --state {_q(p)}/state "
        f"--board {_q(f'{partial}.board.toml' if board_file else cfg.name)})",
        check=False,
    )
    if health.returncode != 0:
        t.sh(f"rm -rf {_q(partial)} {_q(partial)}.pub {_q(partial)}.board.toml", check=False)
        raise FlashError(
            f"{t.description}: health check of {slot} failed, {current or 'nothing'} stays current: "
            f"{(health.stderr or health.stdout).strip()[-800:]}"
        )
    log(f"health check on the target: {health.stdout.strip().splitlines()[-1]}")

    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    entry = json.dumps(
        {
            "at": stamp,
            "slot": slot,
            "previous": current,
            "key_id": kid,
            "bundle": str(bundle),
            "created_at": manifest.created_at or None,
            "board": cfg.name,
            **({"runtime": rt.name} if rt is not None else {}),
        }
    )
    t.sh(
        f"cd {_q(p)} && rm -rf {slot}.old && {{ [ ! -e {slot} ] || mv {slot} {slot}.old; }} && "
        f"mv {slot}.partial {slot} && mv {slot}.partial.pub state/trusted.pub.new && "
        f"mv state/trusted.pub.new state/trusted.pub && "
        f"{f'mv {slot}.partial.board.toml {BOARD_FILE}' if board_file else f'rm -f {BOARD_FILE}'} && "
        f"{rt.switch_script() + ' && ' if rt else ''}"
        f"ln -sfn {slot} current.new && mv -T current.new current && "
        f"rm -rf {slot}.old && printf '%s\\n' {_q(entry)} >> state/flash.log"
    )
    log(f"switched {p}/current → {slot} (previous: {current or 'none'})")
    res = FlashResult(t.description, slot, current, kid, len(todo), len(files) - len(todo))
    if rt is not None:
        py = rt_py  # the stable path from now on (the units use it)
        res.runtime = rt.venv
        log(f"switched {p}/{runtime.VENV_LINK} → {rt.name}{' (reused)' if rt.reused else ''}")
    if service:  # only after the health check and the switch: a failed flash installs no service
        on_target = f"{p}/{BOARD_FILE}" if board_file else cfg.name
        res.service = svc.install(t, cfg, python=py, unit_dir=unit_dir, sync_url=sync_url, board=on_target, log=log)
    return res


def health(bundle: str | Path, *, public_key: str | Path, state: str | Path, board: str | None) -> dict:
    """Open the bundle as the device would and answer one query; returns what it saw.

    Raises:
        BoardLimitError: the catalog it serves (the bundle's, or a newer synced one) is above the
            board's ``max_catalog_items``.
        FlashError: the query returned nothing.
    """
    import time

    from shelfrank.device import Recommender
    from shelfrank.device.boards import check_catalog_size, load_board

    t0 = time.perf_counter()
    cfg = load_board(board) if board is not None else None
    rec = Recommender.open(bundle, public_key=public_key, state_dir=state, board=board)
    try:
        if cfg is not None:
            check_catalog_size(cfg, len(rec.catalog), f"catalog version {rec.catalog.version} of {bundle}")
        got = rec.recommend("__health_check__", k=3)
        if not got:
            raise FlashError(f"{bundle}: health check query returned nothing")
        return {
            "ok": True,
            "items": len(rec.catalog),
            "catalog_version": rec.catalog.version,
            "open_and_query_ms": round((time.perf_counter() - t0) * 1e3, 1),
        }
    finally:
        rec.close()


def check_prefix(prefix: str | Path) -> Path:
    """``prefix`` when it is a flashed layout (``current``, ``slot_a`` or ``slot_b`` there).

    Raises:
        FlashError: no such directory, a file, a bundle directory, or a folder nothing was flashed to.
    """
    prefix = Path(prefix)
    if not prefix.is_dir():
        what = "not a directory" if prefix.exists() else "no such directory"
        raise FlashError(f"{prefix}: {what}; give the PREFIX a bundle was flashed to (flash --to)")
    if any(os.path.lexists(prefix / n) for n in ("current", *SLOTS)):
        return prefix
    if (prefix / bfmt.MANIFEST).is_file():
        raise FlashError(f"{prefix}: a bundle, not a flashed PREFIX; give the folder flash --to wrote (with current)")
    raise FlashError(f"{prefix}: nothing flashed here (no current, slot_a or slot_b); give the PREFIX of flash --to")


def status_local(prefix: str | Path) -> dict:
    """What is flashed in ``prefix``: slots, versions, keys, last sync and flash.

    Raises:
        FlashError: ``prefix`` is not a flashed layout (:func:`check_prefix`).
    """
    prefix = check_prefix(prefix)
    out: dict = {"prefix": str(prefix)}
    try:
        out["current"] = os.readlink(prefix / "current")
    except OSError:
        out["current"] = None
    for slot in SLOTS:
        try:
            m, _ = bfmt.read_manifest(prefix / slot)
            out[slot] = {
                "created_at": m.created_at or None,
                "dataset": m.dataset or None,
                "catalog_version": m.catalog.version,
                "key_id": m.publisher_key_id,
            }
        except bfmt.BundleError:
            out[slot] = None
    try:
        out["trusted_key_id"] = bfmt.key_id(bfmt.load_public_key(prefix / "state" / "trusted.pub"))
    except bfmt.SignatureError:
        out["trusted_key_id"] = None
    synced = prefix / "state" / "catalog" / "current"
    try:
        meta = json.loads((synced / "meta.json").read_text())
        out["synced_catalog"] = {
            "version": meta["version"],
            "source": meta.get("source"),
            "at": _dt.datetime.fromtimestamp((synced / "meta.json").stat().st_mtime, _dt.timezone.utc).isoformat(
                timespec="seconds"
            ),
        }
    except (OSError, ValueError, KeyError):
        out["synced_catalog"] = None
    try:
        out["last_flash"] = json.loads((prefix / "state" / "flash.log").read_text().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        out["last_flash"] = None
    try:  # flash --install-runtime: PREFIX/runtime/venv → venv-<id> with a record of what is in it
        venv = os.readlink(prefix / "runtime" / "venv")
        rec = json.loads((prefix / "runtime" / venv / ".shelfrank-runtime.json").read_text())
        keys = ("shelfrank_wheel", "python", "system_site_packages", "mode")
        out["runtime"] = {"venv": venv, **{k: rec.get(k) for k in keys}}
    except (OSError, ValueError):
        out["runtime"] = None
    return out


def rollback_local(prefix: str | Path) -> dict:
    """Point ``current`` at the other slot, after a health check of it."""
    prefix = Path(prefix)
    try:
        cur = os.readlink(prefix / "current")
    except OSError as e:
        raise FlashError(f"{prefix}: nothing flashed (no current)") from e
    other = SLOTS[1] if cur == SLOTS[0] else SLOTS[0]
    if not (prefix / other).is_dir():
        raise FlashError(f"{prefix}: no other slot to roll back to ({other} is empty)")
    res = health(prefix / other, public_key=prefix / "state" / "trusted.pub", state=prefix / "state", board=None)
    tmp = prefix / "current.new"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(other, tmp)
    os.replace(tmp, prefix / "current")
    with open(prefix / "state" / "flash.log", "a") as f:
        f.write(
            json.dumps(
                {
                    "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "rollback_to": other,
                    "from": cur,
                }
            )
            + "\n"
        )
    return {"current": other, "previous": cur, **res}


def remote_call(to: str, command: str, python: str | None) -> dict:
    """Run ``shelfrank <command> PREFIX --local --json`` on a target and return its JSON."""
    from shelfrank.runtime import CLEAN_PY, VENV_LINK

    t = make_target(to)
    py = python or (sys.executable if isinstance(t, DirTarget) else "python3")
    rt_py = _q(f"{t.prefix}/{VENV_LINK}/bin/python")
    # without --python: the runtime flash --install-runtime made, when there is one
    pick = f"PY={_q(py)}" if python or isinstance(t, DirTarget) else f"PY={_q(py)}; [ -x {rt_py} ] && PY={rt_py}"
    res = t.sh(
        f'{pick}; [ "$PY" != {rt_py} ] || {CLEAN_PY}; "$PY" -m shelfrank.cli {command} {_q(t.prefix)} --json',
        check=False,
    )
    if res.returncode != 0:
        raise FlashError(f"{t.description}: {command} failed: {(res.stderr or res.stdout).strip()[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
