"""Where a board is, how a shell program reaches it, and what lives where on it.

A target is a local directory (:class:`DirTarget`) or ``ssh://user@host[:port]/path``
(:class:`SshTarget`); both run one ``sh`` program at a time and copy files into a folder.

:class:`TargetLayout` is the one place that names the paths under the install prefix (DESIGN.md)::

    PREFIX/slot_a, PREFIX/slot_b   the two bundle slots
    PREFIX/current                 symlink to the active slot, replaced by rename
    PREFIX/state/                  trusted.pub, flash.log, board.toml, events, synced catalogs
    PREFIX/runtime/venv            symlink to the venv flash --install-runtime made (runtime/venv-<id>)
    PREFIX/systemd/                the units flash --service rendered

and the shell programs that change them (the switch after a flash, the rollback). Every shell
program sent to a target is built here from quoted words (:func:`sh_join`, :func:`sh_quote`)
joined by :func:`sh_all`; flash, runtime and systemd only fill in the words.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from shelfrank.device.formats import is_safe_rel_path
from shelfrank.errors import ShelfrankError


class FlashError(ShelfrankError):
    """Flashing failed; the message says at which step. The previous slot stays current."""


# ---------------------------------------------------------------- shell words


def sh_quote(word: object) -> str:
    """One word of shell sent to a target, quoted."""
    return shlex.quote(str(word))


def sh_join(*argv: object) -> str:
    """One command of shell sent to a target, every word quoted."""
    return shlex.join(str(a) for a in argv)


def sh_all(*steps: str) -> str:
    """Steps that each run only when the one before succeeded (``a && b && …``)."""
    return " && ".join(s for s in steps if s)


#: environment for the runtime's pythons: nothing from the flashing shell's PYTHONPATH/PYTHONHOME
CLEAN_PY = "unset PYTHONPATH PYTHONHOME"


# ---------------------------------------------------------------- the layout on the target


@dataclass(frozen=True)
class TargetLayout:
    """The paths under an install ``prefix`` (as the target sees it) and the steps between slots."""

    prefix: str

    SLOTS: ClassVar[tuple[str, str]] = ("slot_a", "slot_b")
    CURRENT: ClassVar[str] = "current"
    STATE: ClassVar[str] = "state"
    TRUSTED_KEY: ClassVar[str] = f"{STATE}/trusted.pub"
    FLASH_LOG: ClassVar[str] = f"{STATE}/flash.log"
    #: a board flashed from a file (``--board ./tiny.toml``) is carried here: the target has no copy of it
    BOARD_FILE: ClassVar[str] = f"{STATE}/board.toml"
    RUNTIME: ClassVar[str] = "runtime"
    WHEELS: ClassVar[str] = f"{RUNTIME}/wheels"
    VENV_LINK: ClassVar[str] = f"{RUNTIME}/venv"
    RUNTIME_PYTHON: ClassVar[str] = f"{VENV_LINK}/bin/python"
    RUNTIME_SHELFRANK: ClassVar[str] = f"{VENV_LINK}/bin/shelfrank"
    #: in each ``runtime/venv-<id>``: what was installed there
    RUNTIME_RECORD: ClassVar[str] = ".shelfrank-runtime.json"
    UNITS: ClassVar[str] = "systemd"

    def at(self, rel: str) -> str:
        """``PREFIX/rel`` as the target spells it."""
        return f"{self.prefix}/{rel}"

    def local(self, rel: str) -> Path:
        """``PREFIX/rel`` on this machine (a directory target, or ``--local`` on the board)."""
        return Path(self.prefix, rel)

    @classmethod
    def other_slot(cls, current: str | None) -> str:
        """The slot a flash writes, or a rollback goes to, while ``current`` is active."""
        return cls.SLOTS[1] if current == cls.SLOTS[0] else cls.SLOTS[0]

    @classmethod
    def holding(cls, bundle: Path) -> TargetLayout | None:
        """The flashed layout whose ``current`` or slot ``bundle`` is, else None."""
        parent = bundle.parent
        if bundle.name in (cls.CURRENT, *cls.SLOTS) and any((parent / s).exists() for s in cls.SLOTS):
            return cls(str(parent))
        return None

    def is_flashed(self) -> bool:
        """Whether ``current``, ``slot_a`` or ``slot_b`` is there (a local prefix)."""
        return any(os.path.lexists(self.local(n)) for n in (self.CURRENT, *self.SLOTS))

    # -- the shell programs a flash runs on the target, in PREFIX

    def probe_script(self, python_probe: str) -> str:
        """``CUR=``, ``FREE=`` (kB), ``PIN=`` (trusted.pub in base64) and ``ARCH=`` lines, then
        ``python_probe``; ``NODIR`` when the prefix cannot be made or entered."""
        return "; ".join(
            [
                f"mkdir -p {sh_quote(self.prefix)} 2>/dev/null",
                f"cd {sh_quote(self.prefix)} 2>/dev/null || {{ echo NODIR; exit 0; }}",
                f"echo CUR=$(readlink {self.CURRENT} 2>/dev/null)",
                "echo FREE=$(df -Pk . | awk 'NR==2 {print $4}')",
                f"echo PIN=$(base64 -w0 {self.TRUSTED_KEY} 2>/dev/null)",
                "echo ARCH=$(uname -m)",
                python_probe,
            ]
        )

    def python_probe(self, python: str, *, prefer_runtime: bool) -> str:
        """``PYUSED=`` (the python, or the installed runtime's when ``prefer_runtime`` and it is there)
        and ``PY=ok|missing`` (whether it imports shelfrank.device)."""
        rt_py = sh_quote(self.at(self.RUNTIME_PYTHON))
        pick = f"PY={sh_quote(python)}" + (f"; [ -x {rt_py} ] && PY={rt_py}" if prefer_runtime else "")
        return (
            f'{pick}; echo PYUSED=$PY; ([ "$PY" != {rt_py} ] || {CLEAN_PY}; "$PY" -c "import shelfrank.device") '
            ">/dev/null 2>&1 && echo PY=ok || echo PY=missing"
        )

    def cli_script(self, python: str, command: str, *, prefer_runtime: bool) -> str:
        """``shelfrank COMMAND PREFIX --json`` with ``python`` (or the installed runtime's when
        ``prefer_runtime`` and it is there), the runtime's without this shell's PYTHONPATH."""
        rt_py = sh_quote(self.at(self.RUNTIME_PYTHON))
        pick = f"PY={sh_quote(python)}" + (f"; [ -x {rt_py} ] && PY={rt_py}" if prefer_runtime else "")
        cmd = sh_join("-m", "shelfrank.cli", command, self.prefix, "--json")
        return f'{pick}; [ "$PY" != {rt_py} ] || {CLEAN_PY}; "$PY" {cmd}'

    @staticmethod
    def hashes_script(folder: str, patterns: tuple[str, ...]) -> str:
        """``sha256sum`` lines of the files in ``folder`` matching ``patterns``; nothing when it is missing."""
        return f"cd {sh_quote(folder)} 2>/dev/null && sha256sum -- {' '.join(patterns)} 2>/dev/null; true"

    def partial(self, slot: str) -> str:
        """Where a flash writes ``slot`` before the health check: ``PREFIX/<slot>.partial``."""
        return self.at(f"{slot}.partial")

    def prepare_script(self, slot: str) -> str:
        return sh_join("mkdir", "-p", self.at(self.STATE), self.partial(slot))

    def health_command(
        self, slot: str, python: str, *, public_pem: str, board: str | None, board_toml: str | None, clean: bool
    ) -> str:
        """Write the key (and a carried board file) beside ``PREFIX/<slot>.partial`` and run
        ``shelfrank health`` on it with ``python`` (``clean``: without this shell's PYTHONPATH).
        ``board``: the board's name; ignored when ``board_toml`` (the file's text) is carried."""
        partial = self.partial(slot)
        carried = f"{partial}.board.toml"
        health = sh_join(
            python,
            "-m",
            "shelfrank.cli",
            "health",
            partial,
            "--public-key",
            f"{partial}.pub",
            "--state",
            self.at(self.STATE),
            "--board",
            carried if board_toml is not None else board,
        )
        return sh_all(
            f"printf '%s' {sh_quote(public_pem)} > {sh_quote(partial + '.pub')}",
            f"printf '%s' {sh_quote(board_toml)} > {sh_quote(carried)}" if board_toml is not None else "",
            f"({CLEAN_PY if clean else 'true'}; exec {health})",
        )

    def discard_script(self, slot: str) -> str:
        """Remove what a failed flash left beside the slots (the current slot is untouched)."""
        partial = self.partial(slot)
        return sh_join("rm", "-rf", partial, f"{partial}.pub", f"{partial}.board.toml")

    def switch_script(self, slot: str, *, board_file: bool, runtime_switch: str, log_entry: str) -> str:
        """Put ``<slot>.partial`` in place as ``slot``, pin its key, place or drop the carried board
        file, run ``runtime_switch`` (or nothing), then point ``current`` at ``slot`` and log it."""
        partial, old = f"{slot}.partial", f"{slot}.old"
        return sh_all(
            f"cd {sh_quote(self.prefix)}",
            sh_join("rm", "-rf", old),
            f"{{ [ ! -e {sh_quote(slot)} ] || {sh_join('mv', slot, old)}; }}",
            sh_join("mv", partial, slot),
            sh_join("mv", f"{partial}.pub", f"{self.TRUSTED_KEY}.new"),
            sh_join("mv", f"{self.TRUSTED_KEY}.new", self.TRUSTED_KEY),
            sh_join("mv", f"{partial}.board.toml", self.BOARD_FILE)
            if board_file
            else sh_join("rm", "-f", self.BOARD_FILE),
            runtime_switch,
            self._point_current(slot),
            sh_join("rm", "-rf", old),
            self._log(log_entry),
        )

    def rollback_script(self, to: str, *, log_entry: str) -> str:
        """Point ``current`` at the slot ``to`` and log it (the health check of ``to`` comes first)."""
        return sh_all(f"cd {sh_quote(self.prefix)}", self._point_current(to), self._log(log_entry))

    def _point_current(self, slot: str) -> str:
        new = f"{self.CURRENT}.new"
        return sh_all(sh_join("ln", "-sfn", slot, new), sh_join("mv", "-T", new, self.CURRENT))

    def _log(self, entry: str) -> str:
        return f"printf '%s\\n' {sh_quote(entry)} >> {sh_quote(self.FLASH_LOG)}"


# ---------------------------------------------------------------- targets


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

    @property
    def layout(self) -> TargetLayout:
        return TargetLayout(self.prefix)

    def _check(self, res: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
        if res.returncode != 0:
            raise FlashError(f"{self.description}: {what} failed (exit {res.returncode}): {res.stderr.strip()[-800:]}")
        return res


class DirTarget(Target):
    def __init__(self, prefix: str | Path) -> None:
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
            res = subprocess.run(
                [*self.base, sh_join("sh", "-c", script)], capture_output=True, text=True, timeout=timeout
            )
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
                [*self.base, sh_all(sh_join("mkdir", "-p", remote_dir), sh_join("tar", "-C", remote_dir, "-xf", "-"))],
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
