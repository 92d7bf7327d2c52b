"""The whole device runtime on emulated aarch64, run by scripts/arm_runtime.sh.

An arm64 Debian 12 root (debootstrap --foreign, no binfmt), CPython 3.11 with the aarch64 wheels
and the cross-compiled shelfrank._native, under qemu-aarch64 as a Cortex-A72 (Pi 4, neon) and a
Cortex-A76 (dotprod, neon_dot): tests/native/test_topk.py + tests/device (not `crash`) pass, and
x86 <-> aarch64 parity holds (build/arm-parity.json). Needs root, network on the first run (Debian
mirror, PyPI; cached under build/ afterwards) and .venv with shelfrank: a missing piece fails
these tests, as CI has them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.arm

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "arm_runtime.sh"
PARITY = ROOT / "build" / "arm-parity.json"
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


def test_parity_x86_aarch64(run):
    step_ok(run, "parity")
    rep = json.loads(PARITY.read_text())
    assert rep["ok"] and set(rep["runs"]) == {"aarch64-cortex-a72", "aarch64-cortex-a76"}
    for name, r in rep["runs"].items():
        assert r["checks"]["kernel_bit_exact"]["ok"], name
        assert r["checks"]["encoder_cosine"]["min"] >= 0.999, name
