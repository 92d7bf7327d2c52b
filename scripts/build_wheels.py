#!/usr/bin/env python3
"""aarch64 wheels of shelfrank cross-compiled on x86-64, and the dependency wheelhouses flash carries.

    .venv/bin/python scripts/build_wheels.py [wheels] [--python 3.10,3.11]
        build/wheels/shelfrank-VER-cp3XX-cp3XX-manylinux_2_34_aarch64.whl (+ the x86-64 wheel of
        this machine's python they are made from)
    .venv/bin/python scripts/build_wheels.py deps --arch aarch64|x86_64 [--python 3.11]
        build/wheelhouse/ARCH-cp3XX/: the runtime's dependency wheels from PyPI, for
        `shelfrank flash --install-runtime --wheelhouse ...` on a board without network

How a wheel is made (``wheels``):
1. ``pip wheel --no-build-isolation --no-deps .``: the x86-64 wheel, built by scikit-build-core
   from pyproject's wheel.packages. Its Python files and METADATA are the aarch64 wheels' too.
2. ``shelfrank._native`` cross-compiled by CMake from CMakeLists.txt with
   native/cmake/aarch64-linux-gnu.cmake (Debian's aarch64-linux-gnu-g++), the SOABI and module
   suffix set to cpython-3XX-aarch64-linux-gnu. Python headers: 3.11 from the arm64 Debian root's
   libpython3.11-dev (build/arm64-root, scripts/arm_runtime.sh root); 3.10 from an x86-64 CPython
   3.10 (no aarch64 CPython 3.10 is packaged by Debian 12, see ``headers``).
3. Checks on the .so: ELF machine aarch64; it needs only libc, libm, libstdc++, libgcc_s; every
   undefined Py* symbol is exported by that CPython (3.11: the root's aarch64 python3.11; 3.10: the
   x86-64 libpython3.10, the same C API); the newest GLIBC symbol version it needs gives the
   platform tag manylinux_2_X_aarch64, which must not exceed TARGET_GLIBC; GLIBCXX at most
   MAX_GLIBCXX.
4. The x86-64 wheel's entries, the x86 .so swapped for the aarch64 one, WHEEL's Tag rewritten,
   RECORD recomputed; then pip (x86, --platform for a glibc-TARGET_GLIBC aarch64 board) must
   accept and install it.

libstdc++ is linked dynamically on purpose: Debian's cross libstdc++.a and libgcc_eh.a are built
against glibc 2.36 and pull in arc4random@GLIBC_2.36 (random.o, via cow-string-inst.o) and
_dl_find_object@GLIBC_2.35, which would put the wheel out of JetPack 6's reach (glibc 2.35).
Dynamically the .so needs GLIBC_2.34 and GLIBCXX_3.4.29 (GCC 11), inside the manylinux_2_34
policy; JetPack 6 (Ubuntu 22.04) and Pi OS bookworm ship GCC 12's libstdc++ (GLIBCXX_3.4.30).
"""

from __future__ import annotations

import argparse
import base64
import csv
import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import parse_wheel_filename

from shelfrank.deploy.wheels import manylinux_platforms, requirement_name

ROOT = Path(__file__).resolve().parents[1]
ROOTFS = ROOT / "build" / "arm64-root"
WHEELS = ROOT / "build" / "wheels"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
CROSS = ROOT / "build" / "wheels-cross"
TOOLCHAIN = ROOT / "native" / "cmake" / "aarch64-linux-gnu.cmake"
TRIPLE = "aarch64-linux-gnu"
EM_AARCH64 = 183

# The oldest glibc among the aarch64 targets: JetPack 6 = Ubuntu 22.04 (2.35); Raspberry Pi OS
# bookworm = Debian 12 (2.36). A wheel needing more is refused; dependency wheels are fetched for it.
TARGET_GLIBC = (2, 35)
MAX_GLIBCXX = (3, 4, 29)  # GCC 11's libstdc++, the manylinux_2_34 baseline; the targets have 3.4.30
ALLOWED_NEEDED = {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "ld-linux-aarch64.so.1"}
PYTHON_VERSIONS = ("3.10", "3.11")


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    log("+ " + " ".join(map(str, cmd)))
    res = subprocess.run(list(map(str, cmd)), text=True, capture_output=True, **kw)
    if res.returncode != 0:
        raise BuildError(f"{cmd[0]} failed (exit {res.returncode}):\n{(res.stdout + res.stderr)[-4000:]}")
    return res


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"{name} not found: apt-get install {package} (scripts/setup.sh --system)")
    return path


# --- host interpreters -------------------------------------------------------------------------


def host_python(version: str) -> str:
    """An x86-64 CPython ``version`` on this machine: its headers (3.10), its pip (deps)."""
    env = os.environ.get("SHELFRANK_PYTHON" + version.replace(".", ""))
    cands = [env] if env else []
    cands += [sys.executable, shutil.which(f"python{version}")]
    cands += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")), reverse=True)
    for c in cands:
        if not c:
            continue
        res = subprocess.run(
            [c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if res.returncode == 0 and res.stdout.strip() == version:
            return c
    raise BuildError(
        f"no CPython {version} on this machine (tried PATH and ~/.pyenv/versions); install one or set "
        f"SHELFRANK_PYTHON{version.replace('.', '')}=/path/to/python{version}"
    )


def py_query(python: str, code: str) -> str:
    return run([python, "-c", code]).stdout.strip()


# --- headers -----------------------------------------------------------------------------------


def root_headers(version: str) -> Path | None:
    inc = ROOTFS / "usr" / "include" / f"python{version}"
    return inc if (inc / "Python.h").is_file() else None


def _sizes(pyconfig: Path) -> dict[str, str]:
    return dict(re.findall(r"^#define ((?:SIZEOF|ALIGNOF)_\w+) (\S+)", pyconfig.read_text(), re.MULTILINE))


def headers(version: str) -> tuple[Path, str]:
    """A Python include directory for an aarch64 build of ``version``; (staged dir, where from).

    3.11: the arm64 root's own headers, with Debian's multiarch pyconfig.h put in place.
    3.10: Debian 12 packages no 3.10 and only PyPI and Debian are reachable, so an x86-64 CPython
    3.10's headers. Sound for an LP64 little-endian glibc target: the C API and the object layouts
    an extension compiles against depend only on the type sizes and alignments pyconfig.h records
    (checked equal to the aarch64 root's below) and on the build options (release build, no
    Py_DEBUG/Py_TRACE_REFS: the cp310 ABI has no 'd' flag); what differs (HAVE_GCC_ASM_FOR_X87, ...)
    only concerns the interpreter's own sources. ``control_build`` proves it for 3.11.
    """
    stage = CROSS / f"include-{version}"
    if stage.exists():
        shutil.rmtree(stage)
    inc = root_headers(version)
    if inc is not None:
        shutil.copytree(inc, stage)
        multiarch = ROOTFS / "usr" / "include" / TRIPLE / f"python{version}" / "pyconfig.h"
        shutil.copy2(multiarch, stage / "pyconfig.h")  # the root's pyconfig.h only #includes this one
        return stage, f"arm64 root ({inc})"
    py = host_python(version)
    inc = Path(py_query(py, "import sysconfig; print(sysconfig.get_paths()['include'])"))
    check_x86_pyconfig(inc / "pyconfig.h")
    shutil.copytree(inc, stage)
    return stage, f"x86-64 CPython {version} ({inc}; sizes and alignments equal to the aarch64 root's)"


def check_x86_pyconfig(pyconfig: Path) -> None:
    arm = sorted(ROOTFS.glob(f"usr/include/{TRIPLE}/python3.*/pyconfig.h"))
    if not arm:
        raise BuildError(f"no aarch64 pyconfig.h under {ROOTFS}: run scripts/arm_runtime.sh root")
    a, b = _sizes(arm[-1]), _sizes(pyconfig)
    diff = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    if diff or len(a) < 10:
        raise BuildError(f"{pyconfig}: type sizes differ from the aarch64 {arm[-1]}: {diff}")
    text = pyconfig.read_text()
    for flag in ("Py_DEBUG", "Py_TRACE_REFS", "WITH_PYMALLOC_RADIX_TREE_DISABLED"):
        if re.search(rf"^#define {flag}\b", text, re.MULTILINE):
            raise BuildError(f"{pyconfig} defines {flag}: not the release ABI of a distribution's CPython")


# --- the native module -------------------------------------------------------------------------


def build_so(version: str, include: Path, python: str, build_dir: Path) -> Path:
    """CMakeLists.txt cross-compiled with the aarch64 toolchain file; returns the module."""
    tool(f"{TRIPLE}-g++", "g++-aarch64-linux-gnu")
    soabi = f"cpython-{version.replace('.', '')}-{TRIPLE}"
    pybind = py_query(sys.executable, "import pybind11; print(pybind11.get_cmake_dir())")
    cmake = shutil.which("cmake", path=str(Path(sys.executable).parent)) or tool("cmake", "cmake")
    ninja = shutil.which("ninja", path=str(Path(sys.executable).parent)) or tool("ninja", "ninja-build")
    run(
        [
            cmake,
            "-S",
            ROOT,
            "-B",
            build_dir,
            "-G",
            "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DSHELFRANK_BUILD_PYTHON=ON",
            "-DSHELFRANK_BUILD_TESTS=OFF",
            f"-Dpybind11_DIR={pybind}",
            # FindPython takes the version from this interpreter (an x86-64 one of the same version)
            # and the headers and the module suffix from here: nothing of the host leaks into the .so.
            f"-DPython_EXECUTABLE={python}",
            f"-DPython_INCLUDE_DIR={include}",
            f"-DPython_SOABI={soabi}",
            f"-DPYTHON_MODULE_EXTENSION=.{soabi}.so",
        ]
    )
    run([ninja, "-C", build_dir])
    so = build_dir / f"_native.{soabi}.so"
    if not so.is_file():
        raise BuildError(f"the build did not produce {so}")
    return so


def _versions(text: str, prefix: str) -> list[tuple[int, ...]]:
    return sorted({tuple(map(int, v.split("."))) for v in re.findall(rf"\({prefix}_([0-9.]+)\)", text)})


def check_so(so: Path, version: str, exports: set[str]) -> tuple[int, int]:
    """The checks of step 3; returns the newest glibc version the module needs."""
    head = so.read_bytes()[:20]
    if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != EM_AARCH64:
        raise BuildError(f"{so}: not an aarch64 ELF (e_machine {int.from_bytes(head[18:20], 'little')})")
    objdump = tool(f"{TRIPLE}-objdump", "binutils-aarch64-linux-gnu")
    needed = set(re.findall(r"NEEDED\s+(\S+)", run([objdump, "-p", so]).stdout))
    if needed - ALLOWED_NEEDED:
        raise BuildError(f"{so} needs libraries a bare board may lack: {sorted(needed - ALLOWED_NEEDED)}")
    dyn = run([objdump, "-T", so]).stdout
    glibc = _versions(dyn, "GLIBC")[-1]
    if glibc[:2] > TARGET_GLIBC:
        raise BuildError(f"{so} needs GLIBC_{'.'.join(map(str, glibc))}; the targets have {TARGET_GLIBC}")
    glibcxx = _versions(dyn, "GLIBCXX")
    if glibcxx and glibcxx[-1] > MAX_GLIBCXX:
        raise BuildError(f"{so} needs GLIBCXX_{'.'.join(map(str, glibcxx[-1]))}, above {MAX_GLIBCXX}")
    nm = tool(f"{TRIPLE}-nm", "binutils-aarch64-linux-gnu")
    undef = {line.split()[-1].split("@")[0] for line in run([nm, "-D", "--undefined-only", so]).stdout.splitlines()}
    py_undef = {s for s in undef if s.startswith(("Py", "_Py"))}
    missing = sorted(py_undef - exports)
    if missing:
        raise BuildError(f"{so} uses symbols CPython {version} does not export: {missing[:20]}")
    log(
        f"  {so.name}: aarch64, NEEDED {sorted(needed)}, GLIBC <= {'.'.join(map(str, glibc))}, "
        f"GLIBCXX <= {'.'.join(map(str, glibcxx[-1])) if glibcxx else '-'}, {len(py_undef)} CPython "
        f"symbols all exported by {version}"
    )
    return glibc[0], glibc[1]


def exported_symbols(version: str) -> tuple[set[str], str]:
    """The dynamic symbols a CPython ``version`` exports to extension modules."""
    arm = ROOTFS / "usr" / "bin" / f"python{version}"
    if arm.is_file():
        nm, binary = tool(f"{TRIPLE}-nm", "binutils-aarch64-linux-gnu"), arm
    else:
        py = host_python(version)
        libdir, ldlib = py_query(
            py, "import sysconfig as s; print(s.get_config_var('LIBDIR')); print(s.get_config_var('LDLIBRARY'))"
        ).splitlines()
        lib = Path(libdir) / ldlib
        binary = lib if lib.suffix != ".a" and lib.is_file() else Path(os.path.realpath(py))
        nm = tool("nm", "binutils")
    out = run([nm, "-D", "--defined-only", binary]).stdout
    syms = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    if len({s for s in syms if s.startswith("Py")}) < 500:
        raise BuildError(f"{binary} exports too few Py* symbols to be a CPython {version}")
    return syms, str(binary)


def control_build() -> None:
    """The 3.10 approach on 3.11: x86-64 3.11 headers must give a .so bit-identical to the one
    built with the arm64 root's aarch64 3.11 headers."""
    if root_headers("3.11") is None:
        raise BuildError(f"no python3.11 headers in {ROOTFS}: run scripts/arm_runtime.sh root")
    py = host_python("3.11")
    x86_inc = Path(py_query(py, "import sysconfig; print(sysconfig.get_paths()['include'])"))
    check_x86_pyconfig(x86_inc / "pyconfig.h")
    stage = CROSS / "include-3.11-x86"
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(x86_inc, stage)
    a = build_so("3.11", headers("3.11")[0], py, CROSS / "cmake-cp311")
    b = build_so("3.11", stage, py, CROSS / "cmake-cp311-x86-headers")
    if a.read_bytes() != b.read_bytes():
        raise BuildError(f"x86-64 and aarch64 CPython 3.11 headers give different modules: {a} vs {b}")
    log(f"  control: cp311 from x86-64 headers ({x86_inc}) is bit-identical to cp311 from the arm64 root's")


# --- the wheel ---------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def x86_wheel() -> Path:
    out = WHEELS
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shelfrank-*-linux_x86_64.whl"):
        old.unlink()
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", ROOT, "-w", out])
    (whl,) = out.glob("shelfrank-*-linux_x86_64.whl")
    return whl


def write_wheel(src: Path, so: Path, tag: str, out_dir: Path) -> Path:
    """``src``'s entries with its native module replaced by ``so``, WHEEL's Tag ``tag``, RECORD anew."""
    name, version, _build, _tags = parse_wheel_filename(src.name)
    name_ver = f"{name}-{version}"
    dist_info = f"{name_ver}.dist-info"
    dst = out_dir / f"{name_ver}-{tag}.whl"
    records: list[tuple[str, str, int]] = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:

        def put(info: zipfile.ZipInfo | str, data: bytes) -> None:
            zout.writestr(info, data)
            arc = info.filename if isinstance(info, zipfile.ZipInfo) else info
            records.append((arc, _record_hash(data), len(data)))

        natives = [i for i in zin.infolist() if re.fullmatch(r"shelfrank/_native\..*\.so", i.filename)]
        if len(natives) != 1:
            raise BuildError(f"{src}: expected one shelfrank/_native*.so, found {[i.filename for i in natives]}")
        for info in zin.infolist():
            if info.filename in (f"{dist_info}/RECORD", natives[0].filename):
                continue
            data = zin.read(info)
            if info.filename == f"{dist_info}/WHEEL":
                data = re.sub(rb"(?m)^Tag: .*$", f"Tag: {tag}".encode(), data)
            put(info, data)
        so_info = zipfile.ZipInfo(f"shelfrank/{so.name}", date_time=natives[0].date_time)
        so_info.external_attr = natives[0].external_attr
        so_info.compress_type = zipfile.ZIP_DEFLATED
        put(so_info, so.read_bytes())
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for arc, h, n in records:
            w.writerow([arc, h, n])
        w.writerow([f"{dist_info}/RECORD", "", ""])
        zout.writestr(f"{dist_info}/RECORD", buf.getvalue())
    return dst


def pip_accepts(whl: Path, version: str) -> None:
    """The x86 pip, told it installs for CPython ``version`` on a glibc-TARGET_GLIBC aarch64 board."""
    cp = "cp" + version.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp:
        plats = [a for p in manylinux_platforms("aarch64", TARGET_GLIBC) for a in ("--platform", p)]
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                "--only-binary=:all:",
                *plats,
                "--python-version",
                version,
                "--implementation",
                "cp",
                "--abi",
                cp,
                "--target",
                tmp,
                whl,
            ]
        )
        got = sorted(p.name for p in (Path(tmp) / "shelfrank").glob("_native*.so"))
        if got != [f"_native.cpython-{cp[2:]}-{TRIPLE}.so"]:
            raise BuildError(f"pip installed {whl.name} with native modules {got}")
    log(f"  pip (--python-version {version}, --platform manylinux_2_{TARGET_GLIBC[1]}_aarch64 and below) installs it")


def cmd_wheels(versions: list[str]) -> None:
    for v in versions:
        if v not in PYTHON_VERSIONS:
            raise BuildError(f"--python {v}: supported are {', '.join(PYTHON_VERSIONS)}")
    src = x86_wheel()
    log(f"x86-64 wheel (scikit-build-core): {src}")
    if any(root_headers(v) is None for v in versions):
        control_build()
    for old in WHEELS.glob("shelfrank-*_aarch64.whl"):
        old.unlink()
    for v in versions:
        cp = "cp" + v.replace(".", "")
        include, origin = headers(v)
        log(f"{cp} aarch64: headers from the {origin}")
        so = build_so(v, include, host_python(v), CROSS / f"cmake-{cp}")
        exports, where = exported_symbols(v)
        log(f"  CPython {v} exports from {where}")
        glibc = check_so(so, v, exports)
        tag = str(Tag(cp, cp, f"manylinux_{glibc[0]}_{glibc[1]}_aarch64"))
        whl = write_wheel(src, so, tag, WHEELS)
        pip_accepts(whl, v)
        log(f"  -> {whl} ({whl.stat().st_size / 1e3:.0f} kB)")


# --- dependency wheelhouses --------------------------------------------------------------------


def base_dependencies() -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def cmd_deps(arch: str, version: str) -> None:
    """The runtime dependencies of shelfrank (pyproject's base dependencies and what they need),
    as wheels for CPython ``version`` on ``arch``, into build/wheelhouse/ARCH-cpXY/.

    pip evaluates environment markers (python_version ...) against the interpreter it runs in,
    not --python-version, so the download runs in a CPython of the target's version. Versions are
    pinned to this environment's (the ones the tests run) when it is that version; otherwise pip
    takes the newest that supports it. aarch64: manylinux wheels a glibc-TARGET_GLIBC board takes.
    """
    import importlib.metadata as md

    cp = "cp" + version.replace(".", "")
    py = host_python(version)
    reqs = base_dependencies()
    pins = []
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        for r in reqs:
            name = requirement_name(r)
            try:
                pins.append(f"{name}=={md.version(name)}")
            except md.PackageNotFoundError:
                pass
    target = []
    if arch != os.uname().machine:
        target = [a for p in manylinux_platforms(arch, TARGET_GLIBC) for a in ("--platform", p)]
        target += ["--python-version", version, "--implementation", "cp", "--abi", cp]
    out = WHEELHOUSE / f"{arch}-{cp}"
    stamp = out / ".shelfrank-deps"
    want = "\n".join([py, *reqs, *pins, *target])
    if stamp.is_file() and stamp.read_text() == want:
        log(f"cached: {out} ({len(list(out.glob('*.whl')))} wheels)")
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as cons:
        cons.write("\n".join(pins) + "\n")
        cons.flush()
        run([py, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", out, "-c", cons.name, *target, *reqs])
    wheels = sorted(p.name for p in out.glob("*.whl"))
    stamp.write_text(want)
    log(f"{out}: {len(wheels)} wheels, {sum(p.stat().st_size for p in out.glob('*.whl')) / 1e6:.0f} MB")
    for w in wheels:
        log(f"  {w}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", choices=["wheels", "deps"], default="wheels")
    p.add_argument("--python", help="comma-separated CPython versions (wheels: 3.10,3.11; deps: this python's)")
    p.add_argument("--arch", choices=["aarch64", "x86_64"], default="aarch64", help="deps: target architecture")
    a = p.parse_args()
    try:
        if a.what == "wheels":
            cmd_wheels((a.python or ",".join(PYTHON_VERSIONS)).split(","))
        else:
            for v in (a.python or f"{sys.version_info[0]}.{sys.version_info[1]}").split(","):
                cmd_deps(a.arch, v)
    except BuildError as e:
        print(f"build_wheels: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
