"""The whole device runtime on emulated aarch64, run by scripts/arm_runtime.sh.

An arm64 Debian 12 root (debootstrap --foreign, no binfmt), CPython 3.11 with the aarch64 wheels
and the cross-compiled shelfrank._native, under qemu-aarch64 as a Cortex-A72 (Pi 4, neon) and a
Cortex-A76 (dotprod, neon_dot): tests/native/test_topk.py + test_two_pass.py + tests/device (not `crash`) pass, and
x86 <-> aarch64 parity holds (build/arm-parity.json). Then shelfrank's own aarch64 wheels (cp310,
cp311) are built and checked, and `shelfrank flash --install-runtime` into the bare root ends in a
passing health check and a smoke test with the installed venv. Needs root, network on the first
run (Debian mirror, PyPI; cached under build/ afterwards), .venv with shelfrank and the aarch64
dependency wheelhouse from scripts/setup.sh --wheelhouse: a missing piece fails these tests, as CI
has them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.arm

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "arm_runtime.sh"
PARITY = ROOT / "build" / "arm-parity.json"
WHEELS = ROOT / "build" / "wheels"
FLASH_PREFIX = ROOT / "build" / "arm64-root" / "opt" / "shelfrank"
TIMEOUT_S = 2400  # from nothing ~10 min on a 2-core machine; cached ~4 min


@pytest.fixture(scope="module")
def run() -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SHELFRANK_FORCE_ISA", "SHELFRANK_TEST_BUNDLE")}
    env["ARM_KEEP_GOING"] = "1"  # one failing CPU still runs the other steps
    PARITY.unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scripts/arm_runtime.sh ran past {TIMEOUT_S} s:\n{e.output}", pytrace=False)
    return proc.stdout


def step_ok(out: str, step: str) -> None:
    m = re.search(rf"^-- {re.escape(step)}: \d+ s(.*)$", out, re.MULTILINE)
    tail = "\n".join(out.splitlines()[-80:])
    if m is None:
        pytest.fail(f"scripts/arm_runtime.sh did not reach the step {step!r}; last lines:\n{tail}", pytrace=False)
    if m.group(1).strip():
        pytest.fail(f"scripts/arm_runtime.sh step {step!r} {m.group(1).strip()}; last lines:\n{tail}", pytrace=False)


@pytest.mark.parametrize("step", ["root", "wheels", "module", "site", "bundle"])
def test_setup_steps(run, step):
    step_ok(run, step)


@pytest.mark.parametrize(("cpu", "isa"), [("cortex-a72", "neon"), ("cortex-a76", "neon_dot")])
def test_device_suite_under_qemu(run, cpu, isa):
    step_ok(run, "test-" + cpu.removeprefix("cortex-"))
    assert re.search(rf"pytest under qemu -cpu {cpu} .*\nactive_isa, capabilities: {isa} ", run), run[-3000:]
    # the kernel's own tests ran there too: the exact scan and the two-pass search
    kernel_tests = rf"QEMU_CPU={cpu} .*pytest tests/native/test_topk.py tests/native/test_two_pass.py "
    assert re.search(kernel_tests, run), run[-3000:]


def test_parity_x86_aarch64(run):
    step_ok(run, "parity")
    rep = json.loads(PARITY.read_text())
    assert rep["ok"] and set(rep["runs"]) == {"aarch64-cortex-a72", "aarch64-cortex-a76"}
    for name, r in rep["runs"].items():
        assert r["checks"]["kernel_bit_exact"]["ok"], name
        assert r["checks"]["encoder_cosine"]["min"] >= 0.999, name


@pytest.mark.parametrize("cp", ["cp310", "cp311"])
def test_aarch64_wheel(run, cp):
    step_ok(run, "sr-wheels")
    (whl,) = WHEELS.glob(f"shelfrank-*-{cp}-{cp}-manylinux_2_*_aarch64.whl")
    tag = whl.name[: -len(".whl")].split("-", 2)[2]
    m = re.search(rf"_native\.cpython-{cp[2:]}-aarch64-linux-gnu\.so: aarch64, .*GLIBC <= 2\.(\d+),", run)
    assert m and tag == f"{cp}-{cp}-manylinux_2_{m.group(1)}_aarch64", (tag, run[-3000:])
    with zipfile.ZipFile(whl) as z:
        wheel_meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))).decode()
        so = z.read(f"shelfrank/_native.cpython-{cp[2:]}-aarch64-linux-gnu.so")
        names = set(z.namelist())
    assert f"Tag: {tag}\n" in wheel_meta
    assert so[:4] == b"\x7fELF" and int.from_bytes(so[18:20], "little") == 183  # EM_AARCH64
    assert {"shelfrank/device/recommender.py", "shelfrank/firmware_configs/rpi4.toml", "shelfrank/cli.py"} <= names
    (x86,) = WHEELS.glob("shelfrank-*-linux_x86_64.whl")  # what scikit-build-core packs: the same files
    with zipfile.ZipFile(x86) as z:
        x86_names = {n for n in z.namelist() if not n.startswith("shelfrank/_native.")}
    assert {n for n in names if not n.startswith("shelfrank/_native.")} == x86_names


def test_flash_install_runtime_into_bare_root(run):
    step_ok(run, "install-runtime")
    assert "bare: the root's python3.11 imports neither numpy nor shelfrank" in run
    assert re.search(r'health check on the target: \{"ok": true, "items": \d+', run), run[-3000:]
    assert re.search(r"^smoke: aarch64 neon recommend: (\S+ ){4}\S+$", run, re.MULTILINE), run[-3000:]
    venv = os.readlink(FLASH_PREFIX / "runtime" / "venv")
    rec = json.loads((FLASH_PREFIX / "runtime" / venv / ".shelfrank-runtime.json").read_text())
    assert rec["mode"] == "cross-install"
    assert re.fullmatch(r"shelfrank-.*-cp311-cp311-manylinux_2_\d+_aarch64\.whl", rec["shelfrank_wheel"])
    assert os.readlink(FLASH_PREFIX / "current") == "slot_a"
