"""``shelfrank flash``: put a bundle on a board with A/B slots, verify it there, switch atomically.

Targets: a local directory, or ``ssh://user@host[:port]/path`` (:mod:`shelfrank.deploy.target`).
Over ssh the copy is a streamed ``tar`` (no rsync needed) that resumes at file granularity: files
already on the target with the right sha256 are not sent again, so a flash interrupted by a
dropped connection continues where it stopped. The target needs a POSIX shell, ``tar``,
``sha256sum``, ``df`` and a python with shelfrank installed (board config ``python``, or
``--python``); for a directory target the default python is this one. A runtime that
``--install-runtime`` put in ``PREFIX/runtime/venv`` (:mod:`shelfrank.deploy.runtime`) is the
default once it is there; ``--install-runtime`` itself makes a new venv from carried wheels after
the copy, health-checks with it and switches ``PREFIX/runtime/venv`` together with ``current``.

The layout on the target is :class:`~shelfrank.deploy.target.TargetLayout`'s. The steps, in order
(:func:`flash`): check everything that can be checked before anything on the target changes
(:func:`verify_local`: bundle signature and hashes, board config; :func:`probe`: target reachable,
python with shelfrank, free space, key pinning); :func:`copy` into ``<slot>.partial``;
:func:`health_check` there with the target's python (every hash, open + one query);
:func:`switch`: rename the slot into place, pin the key, switch ``current``. Any failure before
the switch leaves the previous slot current and serving. With ``--service``,
:mod:`shelfrank.deploy.systemd` then installs the systemd units (``shelfrank serve`` and the sync
timer); their settings are checked before the target changes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shelfrank.deploy import runtime, systemd
from shelfrank.deploy.target import DirTarget, FlashError, SshTarget, Target, TargetLayout, make_target
from shelfrank.device import bundle as bfmt
from shelfrank.device.boards import (
    BoardConfig,
    board_arch,
    check_bundle_memory,
    check_catalog_size,
    is_board_path,
    load_board,
    normalise_arch,
    read_board,
    resident_bytes,
)
from shelfrank.errors import InputError

__all__ = ["FlashError", "FlashResult", "flash", "health", "remote_call", "rollback_local", "status_local"]

Log = Callable[[str], None]


@dataclass
class FlashResult:
    target: str
    slot: str
    previous: str | None
    key_id: str
    sent_files: int
    skipped_files: int
    service: systemd.ServiceResult | None = None  # with service=True: what was installed, what is left to do
    runtime: str | None = None  # with install_runtime: the venv now behind PREFIX/runtime/venv


@dataclass
class Verified:
    """What :func:`verify_local` found out here, before the target is touched."""

    path: Path
    manifest: bfmt.Manifest
    key: Any  # the publisher key it verifies against
    key_id: str
    files: list[str]  # the signed files, the manifest and its signature
    size: int  # bytes of all of them
    cfg: BoardConfig
    board_toml: str | None  # the board file's text when --board named a file (carried to the target)


@dataclass
class Plan:
    """What :func:`probe` decided about the target: where to write and which python checks it."""

    target: Target
    layout: TargetLayout
    current: str | None
    slot: str
    python: str
    clean: bool = False  # run the health check without this shell's PYTHONPATH (a runtime venv's python)
    rt: runtime.Runtime | None = None  # with --install-runtime
    sent: list[str] = field(default_factory=list)


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
    log: Log = print,
) -> FlashResult:
    """Flash ``bundle`` to ``to`` (see the module docstring).

    Raises:
        FlashError: a check or step failed (the message names it); the previous slot stays current.
        BundleError, SignatureError, UnknownBoardError, BoardConfigError: before anything on the target.
        ServiceError: with ``service``, installing the units failed after the switch (the new slot is current).

    ``install_runtime``: make a venv with shelfrank on the target from the wheels in ``wheelhouse``
    (offline unless ``online``) and health-check with it; see :mod:`shelfrank.deploy.runtime`.

    The board's ``expected_isa`` implies an architecture: an ssh target of another one (``uname -m``)
    is refused and a directory on a machine of another one is warned about (it may be a board's
    root mounted here), unless ``allow_arch_mismatch``.
    """
    if (wheelhouse or online) and not install_runtime:
        raise FlashError("--wheelhouse and --online go with --install-runtime")
    v = verify_local(bundle, board=board, public_key=public_key, log=log)
    t = make_target(to)
    if service:  # the units are checked (schedule, paths, sync URL) before the target changes
        systemd.check(v.cfg, t.prefix, sync_url=sync_url)
    elif unit_dir is not None or sync_url is not None:
        raise InputError("--unit-dir and --sync-url go with --service")
    plan = probe(
        t,
        v,
        python=python,
        pinned_by_flag=public_key is not None,
        install_runtime=install_runtime,
        wheelhouse=wheelhouse or [],
        online=online,
        allow_arch_mismatch=allow_arch_mismatch,
        log=log,
    )
    copy(plan, v, log=log)
    health_check(plan, v, log=log)
    switch(plan, v, log=log)
    res = FlashResult(t.description, plan.slot, plan.current, v.key_id, len(plan.sent), len(v.files) - len(plan.sent))
    lay = plan.layout
    if plan.rt is not None:
        plan.python = lay.at(lay.RUNTIME_PYTHON)  # the stable path from now on (the units use it)
        res.runtime = plan.rt.venv
        log(f"switched {lay.at(lay.VENV_LINK)} → {plan.rt.name}{' (reused)' if plan.rt.reused else ''}")
    if service:  # only after the health check and the switch: a failed flash installs no service
        on_target = lay.at(lay.BOARD_FILE) if v.board_toml is not None else v.cfg.name
        res.service = systemd.install(
            t, v.cfg, python=plan.python, unit_dir=unit_dir, sync_url=sync_url, board=on_target, log=log
        )
    return res


def verify_local(bundle: str | Path, *, board: str, public_key: str | Path | None, log: Log) -> Verified:
    """Step 1, here: the board config, the bundle's signature and hashes, its size against the board."""
    bundle = Path(bundle)
    cfg, board_toml = read_board(board)
    if not bundle.exists():  # named as such, not as its missing publisher.pub
        raise bfmt.BundleError(f"{bundle}: no such bundle (the directory shelfrank export writes)")
    bfmt.read_manifest(bundle)  # a file, or a folder without a manifest: said before any key is read
    key = bfmt.load_public_key(public_key if public_key is not None else bundle / bfmt.PUBLIC_KEY)
    manifest = bfmt.verify_bundle(bundle, public_key=key)
    kid = bfmt.key_id(key)
    files = [*sorted(manifest.files), bfmt.MANIFEST, bfmt.SIGNATURE]
    sizes = {f: (bundle / f).stat().st_size for f in files}
    size = sum(sizes.values())
    check_catalog_size(cfg, manifest.catalog.count, f"bundle {bundle}")
    check_bundle_memory(cfg, resident_bytes(cfg, manifest, sizes), f"bundle {bundle}")
    log(f"bundle {bundle}: verified ({len(files)} files, {size / 1e6:.1f} MB, key {kid[:16]}…), board {cfg.name}")
    # a board named by a file is handed on as the file carried to the target, never by its name
    carried = board_toml if is_board_path(board) else None
    return Verified(bundle, manifest, key, kid, files, size, cfg, carried)


def probe(
    t: Target,
    v: Verified,
    *,
    python: str | None,
    pinned_by_flag: bool,
    install_runtime: bool,
    wheelhouse: list[str | Path],
    online: bool,
    allow_arch_mismatch: bool,
    log: Log,
) -> Plan:
    """Step 2, one round trip to the target: architecture, python, free space, the pinned key, the
    slot to write; with ``install_runtime`` also every runtime check (:func:`runtime.prepare`)."""
    cfg, lay = v.cfg, t.layout
    if python and isinstance(t, DirTarget) and "/" in python:
        python = os.path.abspath(python)  # the commands run in the prefix
    py = python or (cfg.python if isinstance(t, SshTarget) else sys.executable)
    rt_py = lay.at(lay.RUNTIME_PYTHON)  # a runtime from an earlier --install-runtime
    if install_runtime:
        tail = runtime.probe_script(py)
    else:
        tail = lay.python_probe(py, prefer_runtime=not python)
    out = t.sh(lay.probe_script(tail)).stdout
    if "NODIR" in out:
        raise FlashError(f"{t.description}: cannot create or enter {t.prefix}")
    info = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    _check_arch(t, cfg, info.get("ARCH", ""), allow=allow_arch_mismatch, log=log)

    size = v.size
    rt = None
    clean = False
    if install_runtime:
        tp = runtime.TargetPython.from_probe(py, out, t.description)
        rt = runtime.prepare(t, tp, wheelhouse, online=online, previous=info.get("RTCUR") or None)
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
        raise FlashError(f"{t.description}: {free / 1e6:.0f} MB free in {t.prefix}, need {size * 1.2 / 1e6:.0f} MB")
    pinned = info.get("PIN", "")
    if pinned and not pinned_by_flag:
        pinned_id = bfmt.key_id(bfmt.load_public_key(base64.b64decode(pinned)))
        if pinned_id != v.key_id:
            raise FlashError(
                f"{t.description}: the bundle is signed by key {v.key_id[:16]}…, but the target trusts "
                f"{pinned_id[:16]}…; pass --public-key to re-pin deliberately"
            )
    current = info.get("CUR") or None
    slot = lay.other_slot(current)
    log(f"target {t.description}: current {current or '(none)'}, writing {slot}")
    return Plan(t, lay, current, slot, py, clean, rt)


def _check_arch(t: Target, cfg: BoardConfig, uname_m: str, *, allow: bool, log: Log) -> None:
    want, arch = board_arch(cfg), normalise_arch(uname_m)
    if not want or not arch or arch == want or allow:
        return
    what = f"board {cfg.name} expects {want} (expected_isa {cfg.expected_isa}), but {t.description} is {arch}"
    if isinstance(t, SshTarget):
        raise FlashError(f"{what}; flash the board config of that machine, or pass --allow-arch-mismatch")
    # a directory may be a board's root mounted or emulated here: said, not refused
    log(f"warning: {what} (this machine); fine for a board's root mounted here, else use its board config")


def copy(plan: Plan, v: Verified, *, log: Log) -> None:
    """Step 3: the files not already in ``<slot>.partial`` with the right hash (a resumed flash sends
    only the rest); with a runtime, the wheels and the new venv beside the one in use."""
    t, lay = plan.target, plan.layout
    partial = lay.partial(plan.slot)
    have = t.sh(lay.hashes_script(partial, ("*", "catalog/*"))).stdout
    present = {line.split(None, 1)[1].strip(): line.split()[0] for line in have.splitlines() if "  " in line}
    want = dict(v.manifest.files)
    want[bfmt.MANIFEST] = bfmt.sha256_file(v.path / bfmt.MANIFEST)
    want[bfmt.SIGNATURE] = bfmt.sha256_file(v.path / bfmt.SIGNATURE)
    plan.sent = [f for f in v.files if present.get(f) != want[f]]
    t.sh(lay.prepare_script(plan.slot))
    log(f"copying {len(plan.sent)} file(s) ({len(v.files) - len(plan.sent)} already there)")
    t.send(v.path, plan.sent, partial)
    if plan.rt is not None:  # runtime/venv switches with current, in switch()
        try:
            runtime.install(t, plan.rt, log=log)
        except runtime.RuntimeInstallError as e:
            stays = plan.current or "nothing"
            raise runtime.RuntimeInstallError(f"{e}; nothing switched, {stays} stays current") from e
        plan.python, plan.clean = plan.rt.python, True


def health_check(plan: Plan, v: Verified, *, log: Log) -> None:
    """Step 4: ``shelfrank health`` on ``<slot>.partial`` with the target's python (every hash, the
    board's limits, one query); on failure the partial slot is removed and the current one stays."""
    t, lay = plan.target, plan.layout
    res = t.sh(
        lay.health_command(
            plan.slot,
            plan.python,
            public_pem=bfmt.public_pem(v.key).decode(),
            board=v.cfg.name,
            board_toml=v.board_toml,
            clean=plan.clean,
        ),
        check=False,
    )
    if res.returncode != 0:
        t.sh(lay.discard_script(plan.slot), check=False)
        raise FlashError(
            f"{t.description}: health check of {plan.slot} failed, {plan.current or 'nothing'} stays current: "
            f"{(res.stderr or res.stdout).strip()[-800:]}"
        )
    log(f"health check on the target: {res.stdout.strip().splitlines()[-1]}")


def switch(plan: Plan, v: Verified, *, log: Log) -> None:
    """Step 5: the slot into place, the key pinned, ``runtime/venv`` and ``current`` switched by
    rename, one line in ``state/flash.log``."""
    entry = {
        "at": _now(),
        "slot": plan.slot,
        "previous": plan.current,
        "key_id": v.key_id,
        "bundle": str(v.path),
        "created_at": v.manifest.created_at or None,
        "board": v.cfg.name,
        **({"runtime": plan.rt.name} if plan.rt is not None else {}),
    }
    lay = plan.layout
    script = lay.switch_script(
        plan.slot,
        board_file=v.board_toml is not None,
        runtime_switch=plan.rt.switch_script() if plan.rt is not None else "",
        log_entry=json.dumps(entry),
    )
    plan.target.sh(script)
    log(f"switched {lay.at(lay.CURRENT)} → {plan.slot} (previous: {plan.current or 'none'})")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- on the board itself (--local)


def health(bundle: str | Path, *, public_key: str | Path, state: str | Path, board: str | None) -> dict:
    """Open the bundle as the device would and answer one query; returns what it saw.

    Raises:
        BoardLimitError: the catalog it serves (the bundle's, or a newer synced one) is above the
            board's ``max_catalog_items``.
        FlashError: the query returned nothing.
    """
    import time

    from shelfrank.device import Recommender

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
    lay = TargetLayout(str(prefix))
    if lay.is_flashed():
        return prefix
    if (prefix / bfmt.MANIFEST).is_file():
        raise FlashError(f"{prefix}: a bundle, not a flashed PREFIX; give the folder flash --to wrote (with current)")
    names = f"{lay.CURRENT}, {' or '.join(lay.SLOTS)}"
    raise FlashError(f"{prefix}: nothing flashed here (no {names}); give the PREFIX of flash --to")


def status_local(prefix: str | Path) -> dict:
    """What is flashed in ``prefix``: slots, versions, keys, last sync and flash.

    Raises:
        FlashError: ``prefix`` is not a flashed layout (:func:`check_prefix`).
    """
    from shelfrank.device.sync import CatalogStore

    prefix = check_prefix(prefix)
    lay = TargetLayout(str(prefix))
    out: dict = {"prefix": str(prefix)}
    try:
        out["current"] = os.readlink(lay.local(lay.CURRENT))
    except OSError:
        out["current"] = None
    for slot in lay.SLOTS:
        try:
            m, _ = bfmt.read_manifest(lay.local(slot))
            out[slot] = {
                "created_at": m.created_at or None,
                "dataset": m.dataset or None,
                "catalog_version": m.catalog.version,
                "key_id": m.publisher_key_id,
            }
        except bfmt.BundleError:
            out[slot] = None
    try:
        out["trusted_key_id"] = bfmt.key_id(bfmt.load_public_key(lay.local(lay.TRUSTED_KEY)))
    except bfmt.SignatureError:
        out["trusted_key_id"] = None
    synced = CatalogStore(lay.local(lay.STATE)).root / "current"
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
        out["last_flash"] = json.loads(lay.local(lay.FLASH_LOG).read_text().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        out["last_flash"] = None
    try:  # flash --install-runtime: PREFIX/runtime/venv → venv-<id> with a record of what is in it
        venv = os.readlink(lay.local(lay.VENV_LINK))
        rec = json.loads((lay.local(lay.RUNTIME) / venv / lay.RUNTIME_RECORD).read_text())
        keys = ("shelfrank_wheel", "python", "system_site_packages", "mode")
        out["runtime"] = {"venv": venv, **{k: rec.get(k) for k in keys}}
    except (OSError, ValueError):
        out["runtime"] = None
    return out


def rollback_local(prefix: str | Path) -> dict:
    """Point ``current`` at the other slot, after a health check of it (the same switch a flash runs).

    Raises:
        FlashError: nothing flashed, no other slot, its health check failed, or the switch failed.
    """
    prefix = Path(prefix)
    lay = TargetLayout(str(prefix))
    try:
        cur = os.readlink(lay.local(lay.CURRENT))
    except OSError as e:
        raise FlashError(f"{prefix}: nothing flashed (no current)") from e
    other = lay.other_slot(cur)
    if not lay.local(other).is_dir():
        raise FlashError(f"{prefix}: no other slot to roll back to ({other} is empty)")
    state = lay.local(lay.STATE)
    res = health(lay.local(other), public_key=lay.local(lay.TRUSTED_KEY), state=state, board=None)
    entry = json.dumps({"at": _now(), "rollback_to": other, "from": cur})
    DirTarget(prefix).sh(lay.rollback_script(other, log_entry=entry))
    return {"current": other, "previous": cur, **res}


def remote_call(to: str, command: str, python: str | None) -> dict:
    """Run ``shelfrank <command> PREFIX --json`` on a target and return its JSON."""
    t = make_target(to)
    py = python or (sys.executable if isinstance(t, DirTarget) else "python3")
    # without --python: the runtime flash --install-runtime made, when there is one
    script = t.layout.cli_script(py, command, prefer_runtime=not python and not isinstance(t, DirTarget))
    res = t.sh(script, check=False)
    if res.returncode != 0:
        raise FlashError(f"{t.description}: {command} failed: {(res.stderr or res.stdout).strip()[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
