"""``shelfrank flash --install-runtime``: the shelfrank runtime in a venv on the target.

On the target (PREFIX is the flash prefix)::

    PREFIX/runtime/wheels/        the wheels flash carried (kept: a re-install needs no network)
    PREFIX/runtime/venv-<id>/     a venv with shelfrank and its runtime dependencies; <id> hashes
                                  the wheels, the base python and the install plan, so a re-flash
                                  with the same wheels reuses it
    PREFIX/runtime/venv           symlink to the venv in use, replaced by rename together with
                                  ``current`` after the health check

so ``PREFIX/runtime/venv/bin/python`` and ``PREFIX/runtime/venv/bin/shelfrank`` are the stable
paths (systemd units, ``status``/``rollback`` over ssh, later flashes all use them).

How it installs (:func:`install`), after the bundle is in its ``.partial`` slot and before the
health check, which then runs with the new venv's python:

- on the target (ssh, or a directory on this machine whose python is this architecture): the
  base python (``--python``, else the board config's ``python``) makes the venv, and the venv's
  pip installs the runtime dependencies (the shelfrank wheel's Requires-Dist) and then the
  shelfrank wheel (``--no-deps``), with ``--only-binary=:all: --no-index --find-links
  PREFIX/runtime/wheels``: the carried wheels are the only source (pip's config files and PIP_*
  variables are ignored, so a find-links in /etc/pip.conf cannot hide a missing wheel); with
  ``online`` pip may also use the board's package index for what the wheelhouse lacks.
- cross-install (a directory target whose python is another architecture, e.g. an arm64 root run
  through qemu-user without binfmt, where no aarch64 program can start another): the target's
  python makes the venv ``--without-pip``; this machine's pip installs into its site-packages
  with ``--platform manylinux_2_X_<arch> --python-version X.Y --implementation cp --abi cpXY
  --only-binary=:all: --target`` (X from the target's glibc), and flash writes the venv's
  ``bin/shelfrank``. Needs a local python of the target's X.Y: pip evaluates the dependencies'
  environment markers against the python it runs in.
- onnxruntime already installed for the base python as ``onnxruntime-gpu`` (or any onnxruntime
  that offers the CUDA or TensorRT provider), as on a Jetson: both distributions provide the
  ``onnxruntime`` module, so the venv is made ``--system-site-packages`` and no onnxruntime is
  installed into it (:func:`plan_runtime`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from shelfrank.deploy.target import CLEAN_PY, DirTarget, FlashError, Target, TargetLayout, sh_all, sh_join
from shelfrank.deploy.target import sh_quote as _q
from shelfrank.deploy.wheels import Wheel, manylinux_platforms, requirements, supported_tags
from shelfrank.device.bundle import sha256_file

RUNTIME, WHEELS, VENV_LINK = TargetLayout.RUNTIME, TargetLayout.WHEELS, TargetLayout.VENV_LINK
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
MIN_PYTHON = (3, 10)

# Run by the base python on the target (stdlib only; prints one line RT=<json>).
PROBE = """
import json, platform, sys
i = {"version": "%d.%d" % sys.version_info[:2], "machine": platform.machine(), "libc": list(platform.libc_ver())}
try:
    import importlib.util, venv
    # Debian and Ubuntu ship ensurepip's __main__ (and the pip wheel) only in python3-venv
    i["venv"] = importlib.util.find_spec("ensurepip.__main__") is not None
except ImportError:
    i["venv"] = False
try:
    import importlib.metadata as md
    i["ort_dists"] = sorted(set(md.packages_distributions().get("onnxruntime", [])))
except Exception:  # importlib.metadata.packages_distributions is 3.10+
    i["ort_dists"] = []
try:
    import onnxruntime as o
    i["ort"] = {"version": o.__version__, "providers": list(o.get_available_providers())}
except Exception as e:
    i["ort_error"] = "%s: %s" % (type(e).__name__, e)
print("RT=" + json.dumps(i))
"""


# bin/shelfrank of a cross-installed venv (pip writes it on the target otherwise), after the shebang
LAUNCHER = """import sys

from shelfrank.cli import main

if __name__ == "__main__":
    sys.exit(main())
"""


class RuntimeInstallError(FlashError):
    """The runtime cannot be installed (the message says why); nothing was switched."""


@dataclass(frozen=True)
class TargetPython:
    """What the probe found out about the base python on the target."""

    python: str
    version: tuple[int, int]
    machine: str
    glibc: tuple[int, int] | None
    venv: bool
    ort_dists: tuple[str, ...] = ()
    ort_version: str | None = None
    ort_providers: tuple[str, ...] = ()
    ort_error: str | None = None

    @classmethod
    def from_probe(cls, python: str, output: str, where: str) -> TargetPython:
        line = next((x for x in output.splitlines() if x.startswith("RT=")), None)
        if line is None:
            said = "\n".join(x for x in output.splitlines() if not re.match(r"(CUR|FREE|PIN|RTCUR)=", x))
            raise RuntimeInstallError(f"{where}: {python} does not run there: {said.strip()[-600:] or '(no output)'}")
        d = json.loads(line[3:])
        libc = d.get("libc") or ["", ""]
        glibc = None
        if libc[0] == "glibc" and re.fullmatch(r"\d+\.\d+(\.\d+)?", libc[1] or ""):
            glibc = tuple(int(x) for x in libc[1].split(".")[:2])
        ort = d.get("ort") or {}
        return cls(
            python=python,
            version=tuple(int(x) for x in d["version"].split(".")),
            machine=d["machine"],
            glibc=glibc,
            venv=bool(d.get("venv")),
            ort_dists=tuple(canonicalize_name(x) for x in d.get("ort_dists", [])),
            ort_version=ort.get("version"),
            ort_providers=tuple(ort.get("providers", [])),
            ort_error=d.get("ort_error"),
        )

    @property
    def cp(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    def describe(self) -> str:
        libc = f"glibc {self.glibc[0]}.{self.glibc[1]}" if self.glibc else "libc unknown"
        return f"CPython {self.version[0]}.{self.version[1]} on {self.machine} ({libc})"


@dataclass(frozen=True)
class RuntimePlan:
    system_site_packages: bool
    skip: tuple[str, ...]  # distributions not installed into the venv
    reason: str


def plan_runtime(tp: TargetPython) -> RuntimePlan:
    """Whether the venv uses an onnxruntime the base python already has (Jetson's onnxruntime-gpu).

    Raises:
        RuntimeInstallError: ``onnxruntime-gpu`` is installed but does not import: the venv would share
            a broken install (fix it on the board first).
    """
    gpu_dists = [d for d in tp.ort_dists if d != "onnxruntime"]
    gpu_providers = [p for p in tp.ort_providers if p in GPU_PROVIDERS]
    if gpu_dists and tp.ort_error:
        raise RuntimeInstallError(
            f"{tp.python}: {', '.join(gpu_dists)} is installed but `import onnxruntime` fails ({tp.ort_error}); "
            "the runtime would use it: repair it on the board (or pass --python with one that lacks it)"
        )
    if gpu_dists or gpu_providers:
        what = ", ".join(gpu_dists) if gpu_dists else f"onnxruntime {tp.ort_version}"
        return RuntimePlan(
            True,
            ("onnxruntime",),
            f"{what} {tp.ort_version or ''} is installed for {tp.python} (providers: "
            f"{', '.join(tp.ort_providers)}): the venv uses it (--system-site-packages) and installs no onnxruntime",
        )
    if tp.ort_version:
        why = f"{tp.python} has a CPU-only onnxruntime {tp.ort_version}; the venv gets its own"
    else:
        why = f"no onnxruntime for {tp.python}; the venv gets one from the wheelhouse"
    return RuntimePlan(False, (), why)


# --- wheels ------------------------------------------------------------------------------------


def wheel_fits(w: Wheel, tp: TargetPython) -> bool:
    """Could pip on the target install ``w``? (A filter for what to carry; pip decides in the end.)"""
    return w.fits(supported_tags(tp.version, tp.machine, tp.glibc))


def select_wheels(wheelhouses: list[str | Path], tp: TargetPython) -> tuple[Wheel, list[Wheel]]:
    """(the shelfrank wheel for the target, the other wheels that fit it) from the wheelhouses.

    Raises:
        RuntimeInstallError: a wheelhouse is missing, or it holds no (or more than one) shelfrank wheel
            for the target.
    """
    found: dict[str, Wheel] = {}
    supported = supported_tags(tp.version, tp.machine, tp.glibc)
    for d in wheelhouses:
        if not Path(d).is_dir():
            raise RuntimeInstallError(f"--wheelhouse {d}: not a directory")
        for p in sorted(Path(d).glob("*.whl")):
            w = Wheel.parse(p)
            if w is not None and w.fits(supported):
                found.setdefault(p.name, w)
    ours = [w for w in found.values() if w.dist == "shelfrank"]
    if not ours:
        have = sorted(p.name for d in wheelhouses for p in Path(d).glob("shelfrank-*.whl"))
        raise RuntimeInstallError(
            f"no shelfrank wheel for {tp.describe()} in {', '.join(map(str, wheelhouses))} (there: "
            f"{', '.join(have) or 'none'}); build it with scripts/build_wheels.py (aarch64) or "
            "`pip wheel --no-deps .` (this machine)"
        )
    if len(ours) > 1:
        raise RuntimeInstallError(
            f"several shelfrank wheels fit {tp.describe()}: {', '.join(sorted(w.path.name for w in ours))}; "
            "keep one in the wheelhouse"
        )
    return ours[0], sorted((w for w in found.values() if w.dist != "shelfrank"), key=lambda w: w.path.name)


# --- install -----------------------------------------------------------------------------------


@dataclass
class Runtime:
    """A runtime install in progress: where it goes and how."""

    prefix: str
    tp: TargetPython
    plan: RuntimePlan
    wheel: Wheel
    deps: list[Wheel]
    cross: bool
    online: bool
    previous: str | None = None  # what PREFIX/runtime/venv pointed at
    reused: bool = False

    @functools.cached_property
    def id(self) -> str:
        h = hashlib.sha256()
        h.update(sha256_file(self.wheel.path).encode())
        for w in self.deps:
            h.update(w.path.name.encode())
        how = [self.tp.python, self.tp.version, self.tp.machine, self.plan.system_site_packages, self.cross]
        h.update(json.dumps([*how, self.online]).encode())
        return h.hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"venv-{self.id}"

    @property
    def venv(self) -> str:
        return TargetLayout(self.prefix).at(f"{RUNTIME}/{self.name}")

    @property
    def python(self) -> str:
        return f"{self.venv}/bin/python"

    def switch_script(self) -> str:
        """Shell (run in PREFIX) that points runtime/venv at this venv by rename and drops the venvs
        that are neither it nor the previous one."""
        keep = {self.name, self.previous or self.name}
        cases = "|".join(_q(f"{RUNTIME}/{k}") for k in sorted(keep))
        return sh_all(
            sh_join("ln", "-sfn", self.name, f"{VENV_LINK}.new"),
            sh_join("mv", "-T", f"{VENV_LINK}.new", VENV_LINK),
            f'for d in {RUNTIME}/venv-*; do case $d in {cases}) ;; *) rm -rf "$d" ;; esac; done',
        )


def probe_script(python: str) -> str:
    """Shell (run in PREFIX) that prints ``RTCUR=`` (where ``runtime/venv`` points) and the
    :data:`PROBE` line of the base ``python``, or what the shell said when it does not run."""
    return f"echo RTCUR=$(readlink {VENV_LINK} 2>/dev/null); ({CLEAN_PY}; {sh_join(python, '-c', PROBE)}) 2>&1; true"


# Offline, the runtime's pip sees no PIP_* and no pip config file (the carried wheels are the only
# source); CLEAN_PY (deploy.target) keeps the flashing shell's PYTHONPATH/PYTHONHOME out as well.
_CLEAN_PIP = (
    "for v in $(env | sed -n 's/^\\(PIP_[A-Za-z0-9_]*\\)=.*/\\1/p'); do unset \"$v\"; done; "
    "export PIP_CONFIG_FILE=/dev/null"
)


def prepare(
    t: Target,
    tp: TargetPython,
    wheelhouses: list[str | Path],
    *,
    online: bool = False,
    previous: str | None = None,
) -> Runtime:
    """Every check that needs no change on the target: python version, venv support, the plan,
    the wheels. Raises :class:`RuntimeInstallError` naming what is missing."""
    if not wheelhouses:
        raise RuntimeInstallError(
            "--install-runtime needs --wheelhouse DIR with the shelfrank wheel for the target and its "
            "dependencies' wheels (scripts/build_wheels.py; docs/install.md)"
        )
    if tp.version < MIN_PYTHON:
        raise RuntimeInstallError(
            f"{t.description}: {tp.python} is {tp.describe()}; shelfrank needs CPython >= "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} (pass --python)"
        )
    cross = isinstance(t, DirTarget) and tp.machine != platform.machine()
    if cross and tp.version != sys.version_info[:2]:
        raise RuntimeInstallError(
            f"{t.description}: cross-install for {tp.describe()} needs a local CPython "
            f"{tp.version[0]}.{tp.version[1]} to run pip (this is {sys.version_info[0]}.{sys.version_info[1]}): "
            "pip evaluates dependency markers against the python it runs in"
        )
    if cross and tp.glibc is None:
        raise RuntimeInstallError(f"{t.description}: {tp.python} does not report a glibc; cannot pick manylinux wheels")
    if not cross and not tp.venv:
        raise RuntimeInstallError(
            f"{t.description}: {tp.python} cannot make a venv with pip (no ensurepip): on Debian, Ubuntu and "
            "Raspberry Pi OS install python3-venv (apt-get install python3-venv)"
        )
    plan = plan_runtime(tp)
    wheel, deps = select_wheels(wheelhouses, tp)
    return Runtime(t.prefix, tp, plan, wheel, deps, cross, online, previous)


def size(rt: Runtime) -> int:
    """Bytes the runtime may take on the target: the wheels, and about three times that unpacked."""
    return sum(w.path.stat().st_size for w in [rt.wheel, *rt.deps]) * 4


def install(t: Target, rt: Runtime, *, log: Callable[[str], None] = print) -> None:
    """Carry the wheels and make the venv (see the module docstring); on failure the new venv is
    removed and :class:`RuntimeInstallError` says why. ``PREFIX/runtime/venv`` is not touched here."""
    wh = TargetLayout(rt.prefix).at(WHEELS)
    wheels = [rt.wheel, *rt.deps]
    names = {w.path.name for w in wheels}
    have = t.sh(TargetLayout.hashes_script(wh, ("*.whl",))).stdout
    present = {ln.split(None, 1)[1].strip().lstrip("*"): ln.split()[0] for ln in have.splitlines() if "  " in ln}
    todo = [w for w in wheels if present.get(w.path.name) != sha256_file(w.path)]
    log(f"runtime: {len(wheels)} wheel(s) for {rt.tp.describe()}, {len(todo)} to send; {rt.plan.reason}")
    # Keep only the wheels of this install, so --find-links offers pip nothing else.
    keep = " ".join(_q(n) for n in sorted(names))
    t.sh(
        sh_all(sh_join("mkdir", "-p", wh), sh_join("cd", wh), "for f in *.whl; do ")
        + f'case " {keep} " in *" $f "*) ;; *) rm -f -- "$f" ;; esac; done; true'
    )
    by_dir: dict[Path, list[str]] = {}
    for w in todo:
        by_dir.setdefault(w.path.parent, []).append(w.path.name)
    for d, files in by_dir.items():
        t.send(d, files, wh)

    record_path = f"{rt.venv}/{TargetLayout.RUNTIME_RECORD}"
    done = t.sh(f"{sh_join('test', '-f', record_path)} && echo yes; true").stdout.strip() == "yes"
    if done:
        rt.reused = True
        log(f"runtime: {rt.venv} already installed with these wheels (reused)")
        return
    try:
        (_install_cross if rt.cross else _install_on_target)(t, rt, log)
    except Exception:
        t.sh(sh_join("rm", "-rf", rt.venv), check=False)
        raise
    record = json.dumps(
        {
            "shelfrank_wheel": rt.wheel.path.name,
            "wheels": sorted(names),
            "base_python": rt.tp.python,
            "python": rt.tp.describe(),
            "system_site_packages": rt.plan.system_site_packages,
            "skipped": list(rt.plan.skip),
            "reason": rt.plan.reason,
            "mode": "cross-install" if rt.cross else "on target",
        }
    )
    t.sh(f"printf '%s\\n' {_q(record)} > {_q(record_path)}")


def _fail(t: Target, what: str, res: subprocess.CompletedProcess) -> RuntimeInstallError:
    return RuntimeInstallError(
        f"{t.description}: {what} failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()[-1200:]}"
    )


def _install_on_target(t: Target, rt: Runtime, log: Callable[[str], None]) -> None:
    wh = TargetLayout(rt.prefix).at(WHEELS)
    ssp = ["--system-site-packages"] if rt.plan.system_site_packages else []
    pip = [rt.python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", "--only-binary=:all:"]
    pip += ["--find-links", wh, *([] if rt.online else ["--no-index"])]
    script = "; ".join(
        [
            "set -e",
            CLEAN_PY,
            *([] if rt.online else [_CLEAN_PIP]),
            sh_join("rm", "-rf", rt.venv),
            sh_join(rt.tp.python, "-m", "venv", *ssp, rt.venv),
            sh_join(*pip, *requirements(rt.wheel.path, rt.plan.skip)),
            sh_join(*pip, "--no-deps", f"{wh}/{rt.wheel.path.name}"),
            sh_join(rt.python, "-c", "import shelfrank.device, sys; print(shelfrank.device.__file__)"),
        ]
    )
    log(f"runtime: making {rt.venv} ({'--system-site-packages, ' if ssp else ''}pip on the target)")
    res = t.sh(script, check=False, timeout=3600)
    if res.returncode != 0:
        raise _fail(t, "installing the runtime", res)
    where = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    if not where.startswith(rt.venv + "/"):
        raise RuntimeInstallError(f"{t.description}: the new venv imports shelfrank from {where!r}, not from {rt.venv}")


def _install_cross(t: Target, rt: Runtime, log: Callable[[str], None]) -> None:
    if rt.tp.glibc is None:  # prepare() refuses this already
        raise RuntimeInstallError(f"{t.description}: {rt.tp.python} reports no glibc version")
    ssp = ["--system-site-packages"] if rt.plan.system_site_packages else []
    log(f"runtime: making {rt.venv} (cross-install: the target python makes the venv, this pip fills it)")
    res = t.sh(
        f"{CLEAN_PY}; "
        + sh_all(
            sh_join("rm", "-rf", rt.venv),
            sh_join(rt.tp.python, "-m", "venv", "--without-pip", *ssp, rt.venv),
            sh_join(rt.python, "-c", 'import sysconfig; print("SITE=" + sysconfig.get_path("purelib"))'),
        ),
        check=False,
        timeout=600,
    )
    if res.returncode != 0:
        raise _fail(t, "making the venv", res)
    site = next((ln[5:] for ln in res.stdout.splitlines() if ln.startswith("SITE=")), "")
    if not site.startswith(rt.venv + "/"):
        raise RuntimeInstallError(f"{t.description}: the new venv's site-packages is {site!r}, not under {rt.venv}")
    wh = TargetLayout(rt.prefix).at(WHEELS)
    major, minor = rt.tp.version
    plats = [a for pl in manylinux_platforms(rt.tp.machine, rt.tp.glibc) for a in ("--platform", pl)]
    base = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-warn-conflicts",
        "--no-warn-script-location",
        "--only-binary=:all:",
        "--find-links",
        wh,
        *([] if rt.online else ["--no-index"]),
        *plats,
        "--python-version",
        f"{major}.{minor}",
        "--implementation",
        "cp",
        "--abi",
        f"cp{major}{minor}",
        "--target",
        site,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if not rt.online:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    for what, args in (
        ("pip (dependencies)", requirements(rt.wheel.path, rt.plan.skip)),
        ("pip (shelfrank)", ["--no-deps", f"{wh}/{rt.wheel.path.name}"]),
    ):
        res = subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=3600)
        if res.returncode != 0:
            raise _fail(t, f"cross-install: {what}", res)
    # pip --target leaves the dependencies' console scripts (with this machine's python in their
    # shebang) in site-packages/bin; the venv's own bin/shelfrank is written here.
    shutil.rmtree(Path(site) / "bin", ignore_errors=True)
    launcher = Path(rt.venv) / "bin" / "shelfrank"
    launcher.write_text(f"#!{rt.python}\n{LAUNCHER}")
    launcher.chmod(0o755)
