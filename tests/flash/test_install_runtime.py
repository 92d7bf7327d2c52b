"""flash --install-runtime to a directory target on this machine (x86-64, offline).

A wheel of this tree (``pip wheel --no-deps .``, once per session) and the dependency wheelhouse
that scripts/setup.sh --wheelhouse fetched (build/wheelhouse/<arch>-cpXY): the target's python
makes PREFIX/runtime/venv-<id>, its pip installs with --no-index from the carried wheels only, and
flash's health check runs with the venv's python. The Jetson rule (an ``onnxruntime-gpu`` already
installed is used, not replaced) runs for real against a second CPython installation whose
site-packages holds onnxruntime under that distribution name. The emulated-aarch64 variant (a
cross-install) is in tests/arm.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shelfrank.deploy import runtime
from shelfrank.deploy.flash import FlashError, flash, remote_call
from shelfrank.testing import build_device_bundle

ROOT = Path(__file__).resolve().parents[2]
CP = f"cp{sys.version_info[0]}{sys.version_info[1]}"
DEPS = ROOT / "build" / "wheelhouse" / f"{platform.machine()}-{CP}"
PYVER = f"python{sys.version_info[0]}.{sys.version_info[1]}"
PIP_INSTALL = (sys.executable, "-m", "pip", "install", "-q", "--no-index")


def _env(**extra: str) -> dict[str, str]:
    """This environment without PYTHONPATH (the runtime must import from its own venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime-bundle")
    bundle, pub = build_device_bundle(root, n_items=120, seed=31)
    return bundle, pub


@pytest.fixture(scope="session")
def shelfrank_wheel(tmp_path_factory) -> Path:
    """This tree as an x86-64 wheel, built as scripts/setup.sh builds it (no isolation: build/ stays warm)."""
    out = tmp_path_factory.mktemp("shelfrank-wheel")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", str(ROOT), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=_env(),
    )
    if res.returncode != 0:
        pytest.fail(f"pip wheel of this tree failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    (whl,) = out.glob("shelfrank-*.whl")
    return whl


@pytest.fixture(scope="session")
def deps() -> Path:
    if not (DEPS / ".shelfrank-deps").is_file():
        pytest.fail(f"no dependency wheelhouse {DEPS}: scripts/setup.sh --wheelhouse fetches it from PyPI")
    return DEPS


def _flash(bundle, prefix, logs, **kw):
    return flash(bundle, str(prefix), board="x86-64-dev", log=logs.append, **kw)


def test_install_runtime_offline_then_health(signed, shelfrank_wheel, deps, tmp_path, monkeypatch):
    bundle, _ = signed
    prefix = tmp_path / "board"
    # a find-links in the environment must not feed the offline install (the carried wheels only)
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    logs: list[str] = []
    res = _flash(
        bundle, prefix, logs, python=sys.executable, install_runtime=True, wheelhouse=[shelfrank_wheel.parent, deps]
    )
    venv_name = os.readlink(prefix / "runtime" / "venv")
    assert res.runtime == str(prefix / "runtime" / venv_name) and os.readlink(prefix / "current") == "slot_a"
    assert any(re.match(r'health check on the target: \{"ok": true', m) for m in logs), logs
    assert "include-system-site-packages = false" in (prefix / "runtime" / "venv" / "pyvenv.cfg").read_text()
    carried = sorted(p.name for p in (prefix / "runtime" / "wheels").glob("*.whl"))
    assert shelfrank_wheel.name in carried and any(n.startswith("onnxruntime-") for n in carried)

    # the venv alone runs the runtime: shelfrank and onnxruntime from its site-packages
    vpy = prefix / "runtime" / "venv" / "bin" / "python"
    out = subprocess.run(
        [str(vpy), "-c", "import shelfrank, onnxruntime; print(shelfrank.__file__); print(onnxruntime.__file__)"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    ).stdout.split()
    assert all(p.startswith(str(prefix / "runtime" / "venv") + "/") for p in out), out
    st = subprocess.run(
        [str(prefix / "runtime" / "venv" / "bin" / "shelfrank"), "status", str(prefix), "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    status = json.loads(st.stdout)
    assert status["current"] == "slot_a" and status["runtime"]["venv"] == venv_name
    assert status["runtime"]["mode"] == "on target" and status["runtime"]["shelfrank_wheel"] == shelfrank_wheel.name
    assert json.loads((prefix / "state" / "flash.log").read_text().splitlines()[-1])["runtime"] == venv_name

    # a later flash without --python health-checks with the installed runtime
    logs.clear()
    r2 = _flash(bundle, prefix, logs)
    assert r2.slot == "slot_b" and any("with the runtime installed on the target" in m for m in logs), logs
    # the same wheels again: the venv is reused, not rebuilt
    logs.clear()
    r3 = _flash(
        bundle, prefix, logs, python=sys.executable, install_runtime=True, wheelhouse=[shelfrank_wheel.parent, deps]
    )
    assert r3.slot == "slot_a" and r3.runtime == res.runtime and any("(reused)" in m for m in logs), logs


def test_install_runtime_over_ssh(signed, shelfrank_wheel, deps, sshd, tmp_path, monkeypatch):
    """The same over a real OpenSSH server: the wheels go by the streamed tar, pip runs there, and
    ``status`` over ssh picks PREFIX/runtime/venv/bin/python without --python."""
    for k, v in sshd.env.items():
        monkeypatch.setenv(k, v)
    url = sshd.url(str(tmp_path / "board"))
    logs: list[str] = []
    res = flash(
        signed[0],
        url,
        board="x86-64-dev",  # the sshd is this x86-64 machine: rpi5 (aarch64) would be refused
        python=sys.executable,
        install_runtime=True,
        wheelhouse=[shelfrank_wheel.parent, deps],
        log=logs.append,
    )
    assert res.runtime and any(re.match(r'health check on the target: \{"ok": true', m) for m in logs), logs
    st = remote_call(url, "status", None)  # the ssh side's python3 has no shelfrank: only the venv answers
    assert st["current"] == "slot_a" and st["runtime"]["venv"] == Path(res.runtime).name


def test_missing_dependency_wheel_fails_and_switches_nothing(signed, shelfrank_wheel, deps, tmp_path, monkeypatch):
    bundle, _ = signed
    partial = tmp_path / "partial-wheelhouse"
    partial.mkdir()
    for w in deps.glob("*.whl"):
        if not w.name.startswith("tokenizers-"):
            (partial / w.name).symlink_to(w)
    # offline means offline: pip's environment (here a find-links that has tokenizers) is ignored
    monkeypatch.setenv("PIP_FIND_LINKS", str(deps))
    prefix = tmp_path / "board"
    with pytest.raises(FlashError, match=r"(?s)installing the runtime failed.*tokenizers.*nothing switched"):
        _flash(
            bundle,
            prefix,
            [],
            python=sys.executable,
            install_runtime=True,
            wheelhouse=[shelfrank_wheel.parent, partial],
        )
    assert not (prefix / "current").exists() and not (prefix / "runtime" / "venv").exists()
    assert not list((prefix / "runtime").glob("venv-*")), "the failed venv is removed"


def test_no_wheel_for_the_target_is_refused_before_changes(signed, deps, tmp_path):
    prefix = tmp_path / "board"
    with pytest.raises(
        runtime.RuntimeInstallError, match=rf"no shelfrank wheel for CPython .* on {platform.machine()}"
    ):
        _flash(signed[0], prefix, [], python=sys.executable, install_runtime=True, wheelhouse=[deps])
    assert not (prefix / "slot_a.partial").exists() and not (prefix / "runtime").exists()


def test_python_without_venv_support_is_refused(signed, shelfrank_wheel, deps, tmp_path):
    fake = tmp_path / "python-no-venv"
    # a python whose ensurepip is missing, as Debian's without the python3-venv package
    fake.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c \"$(printf '%s' \"$2\" | sed 's/ensurepip.__main__/nope/')\"\n"
    )
    fake.chmod(0o755)
    with pytest.raises(runtime.RuntimeInstallError, match="apt-get install python3-venv"):
        _flash(
            signed[0],
            tmp_path / "board",
            [],
            python=str(fake),
            install_runtime=True,
            wheelhouse=[shelfrank_wheel.parent, deps],
        )


# --- the Jetson rule, for real ------------------------------------------------------------------


def _python_installation(dest: Path) -> tuple[Path, Path]:
    """A second CPython installation of this version with its own empty site-packages: the
    interpreter binary copied, the standard library linked. (A venv would not do: a venv made from
    a venv sees the base installation's site-packages, not the first venv's.)"""
    base = Path(sys.base_prefix)
    exe = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(exe, dest / "bin" / PYVER)
    lib = dest / "lib" / PYVER
    lib.mkdir(parents=True)
    for e in (base / "lib" / PYVER).iterdir():
        if e.name not in ("site-packages", "dist-packages"):
            (lib / e.name).symlink_to(e)
    for so in (base / "lib").glob("libpython*"):  # for an $ORIGIN-relative RUNPATH
        (dest / "lib" / so.name).symlink_to(so)
    py = dest / "bin" / PYVER
    res = subprocess.run(
        [str(py), "-c", "import site, sys; print(sys.prefix); print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    lines = res.stdout.split()
    if res.returncode != 0 or len(lines) != 2 or lines[0] != str(dest) or not lines[1].startswith(str(dest)):
        pytest.fail(f"could not make a second CPython installation from {exe} at {dest}: {res.stdout}{res.stderr}")
    site = Path(lines[1])
    site.mkdir(parents=True, exist_ok=True)
    return py, site


def _renamed(whl: Path, dist: str, out: Path) -> Path:
    """``whl`` under another distribution name: onnxruntime-gpu is onnxruntime's module under the
    name onnxruntime-gpu (Jetson's wheels from NVIDIA / jetson-ai-lab look the same)."""
    old = whl.name.split("-")[0]
    new = dist.replace("-", "_")
    dst = out / whl.name.replace(old, new, 1)
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        old_di = next(n.split("/")[0] for n in zin.namelist() if n.endswith(".dist-info/METADATA"))
        new_di = old_di.replace(old, new, 1)
        for info in zin.infolist():
            data, name = zin.read(info), info.filename
            if name.startswith(old_di + "/"):
                name = new_di + name[len(old_di) :]
                if name.endswith("/METADATA"):
                    data = re.sub(rb"(?m)^Name: .*$", f"Name: {dist}".encode(), data, count=1)
                elif name.endswith("/RECORD"):
                    data = data.replace(f"{old_di}/".encode(), f"{new_di}/".encode())
            zout.writestr(name, data)
    return dst


def test_jetson_onnxruntime_gpu_is_used_not_replaced(signed, shelfrank_wheel, deps, tmp_path):
    bundle, _ = signed
    board_py, board_site = _python_installation(tmp_path / "board-python")
    gpu_wh = tmp_path / "gpu-wheel"
    gpu_wh.mkdir()
    (ort,) = deps.glob("onnxruntime-*.whl")
    _renamed(ort, "onnxruntime-gpu", gpu_wh)
    pip_env = {k: v for k, v in _env().items() if not k.startswith("PIP_")}
    links = ["--find-links", str(gpu_wh), "--find-links", str(deps)]
    subprocess.run(
        [*PIP_INSTALL, *links, "--target", str(board_site), "onnxruntime-gpu"],
        check=True,
        capture_output=True,
        env={**pip_env, "PIP_CONFIG_FILE": os.devnull},
    )
    prefix = tmp_path / "board"
    logs: list[str] = []
    res = _flash(
        bundle, prefix, logs, python=str(board_py), install_runtime=True, wheelhouse=[shelfrank_wheel.parent, deps]
    )
    assert any("onnxruntime-gpu" in m and "--system-site-packages" in m for m in logs), logs
    venv = Path(res.runtime)
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert not list(venv.glob("lib/python*/site-packages/onnxruntime")), "the venv must not get its own onnxruntime"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import onnxruntime, shelfrank; print(onnxruntime.__file__)"],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    ).stdout.strip()
    assert out.startswith(str(board_site) + "/"), out
    rec = json.loads((venv / ".shelfrank-runtime.json").read_text())
    assert rec["system_site_packages"] is True and rec["skipped"] == ["onnxruntime"]
    assert os.readlink(prefix / "current") == "slot_a"


# --- the decision logic and wheel selection -----------------------------------------------------


def _tp(**kw) -> runtime.TargetPython:
    base = {"python": "/usr/bin/python3", "version": (3, 10), "machine": "aarch64", "glibc": (2, 35), "venv": True}
    return runtime.TargetPython(**{**base, **kw})


GPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("kw", "system", "skip"),
    [
        # JetPack: NVIDIA's onnxruntime-gpu installed system-wide: use it
        ({"ort_dists": ("onnxruntime-gpu",), "ort_version": "1.20.0", "ort_providers": GPU}, True, ("onnxruntime",)),
        # the distribution alone decides (a GPU build that finds no CUDA still owns the module)
        ({"ort_dists": ("onnxruntime-gpu",), "ort_version": "1.20.0", "ort_providers": CPU}, True, ("onnxruntime",)),
        # a GPU-capable onnxruntime built from source under the plain name
        ({"ort_dists": ("onnxruntime",), "ort_version": "1.19.0", "ort_providers": GPU}, True, ("onnxruntime",)),
        # a CPU onnxruntime on the base python: the venv gets its own
        ({"ort_dists": ("onnxruntime",), "ort_version": "1.17.0", "ort_providers": CPU}, False, ()),
        # nothing there (Pi OS, a bare root)
        ({"ort_error": "ModuleNotFoundError: No module named 'onnxruntime'"}, False, ()),
    ],
)
def test_plan_runtime(kw, system, skip):
    plan = runtime.plan_runtime(_tp(**kw))
    assert (plan.system_site_packages, plan.skip) == (system, skip)


def test_plan_runtime_broken_onnxruntime_gpu_is_an_error():
    tp = _tp(ort_dists=("onnxruntime-gpu",), ort_error="ImportError: libcudnn.so.9: cannot open shared object file")
    with pytest.raises(
        runtime.RuntimeInstallError, match=r"onnxruntime-gpu is installed but `import onnxruntime` fails"
    ):
        runtime.plan_runtime(tp)


def test_probe_parsing_normalises_distribution_names():
    out = 'CUR=\nRT={"version": "3.10", "machine": "aarch64", "libc": ["glibc", "2.35"], "venv": true, '
    out += '"ort_dists": ["onnxruntime_gpu"], "ort": {"version": "1.20.0", "providers": ["CUDAExecutionProvider"]}}\n'
    tp = runtime.TargetPython.from_probe("/usr/bin/python3", out, "ssh target")
    assert (tp.version, tp.glibc, tp.ort_dists, tp.cp) == ((3, 10), (2, 35), ("onnxruntime-gpu",), "cp310")
    with pytest.raises(runtime.RuntimeInstallError, match="does not run there: sh: 1: python9: not found"):
        runtime.TargetPython.from_probe("python9", "CUR=\nFREE=1\nsh: 1: python9: not found\n", "ssh target")


def test_select_wheels_by_target(tmp_path):
    names = [
        "shelfrank-0.1.0-cp310-cp310-manylinux_2_34_aarch64.whl",
        "shelfrank-0.1.0-cp311-cp311-manylinux_2_34_aarch64.whl",
        "shelfrank-0.1.0-cp311-cp311-linux_x86_64.whl",
        "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
        "tokenizers-0.22.2-cp39-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "cryptography-50.0.2-cp311-abi3-manylinux_2_34_aarch64.whl",
        "packaging-26.4-py3-none-any.whl",
        "pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "future-1.0-cp313-cp313-manylinux_2_40_aarch64.whl",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    ours, others = runtime.select_wheels([tmp_path], _tp())  # JetPack 6: CPython 3.10, glibc 2.35
    assert ours.path.name == "shelfrank-0.1.0-cp310-cp310-manylinux_2_34_aarch64.whl"
    assert [w.path.name.split("-")[0] for w in others] == ["numpy", "packaging", "tokenizers"]
    assert runtime.select_wheels([tmp_path], _tp(version=(3, 11), glibc=(2, 36)))[0].path.name.startswith(
        "shelfrank-0.1.0-cp311-cp311-manylinux_2_34_aarch64"
    )
    with pytest.raises(
        runtime.RuntimeInstallError, match=r"no shelfrank wheel for CPython 3.10 on aarch64 \(glibc 2.31\)"
    ):
        runtime.select_wheels([tmp_path], _tp(glibc=(2, 31)))  # Ubuntu 20.04 / JetPack 5: too old a glibc
    (tmp_path / "shelfrank-0.2.0-cp310-cp310-manylinux_2_17_aarch64.whl").write_bytes(b"")
    with pytest.raises(runtime.RuntimeInstallError, match="several shelfrank wheels"):
        runtime.select_wheels([tmp_path], _tp())
    with pytest.raises(runtime.RuntimeInstallError, match="not a directory"):
        runtime.select_wheels([tmp_path / "missing"], _tp())


def test_requirements_and_platforms(shelfrank_wheel):
    def names(reqs):
        return [re.split(r"[<>=!~;\s]", r, maxsplit=1)[0].lower() for r in reqs]

    reqs = runtime.requirements(shelfrank_wheel)
    assert {"numpy", "onnxruntime", "tokenizers", "cryptography", "msgspec", "tomli"} <= set(names(reqs))
    assert not {"torch", "pytest"} & set(names(reqs)), "no extras"
    assert any(r.startswith("tomli") and 'python_version < "3.11"' in r for r in reqs)
    assert "onnxruntime" not in names(runtime.requirements(shelfrank_wheel, ("onnxruntime",)))
    plats = runtime.manylinux_platforms("aarch64", (2, 35))
    assert plats[0] == "manylinux_2_35_aarch64" and {"manylinux_2_17_aarch64", "manylinux2014_aarch64"} <= set(plats)
