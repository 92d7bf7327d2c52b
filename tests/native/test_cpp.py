"""The C++ kernel tests (native/tests/test_topk.cpp), built and run by scripts/native_tests.sh.

`sanitize`: the x86-64 build with AddressSanitizer + UndefinedBehaviorSanitizer. `arm`: the
aarch64 cross build under qemu as a Cortex-A72 (Raspberry Pi 4, no dotprod) and a Cortex-A76
(dotprod), an instruction audit of its objects, and the int8 digest equal to the x86 one. A
missing toolchain fails these tests (the script names the apt packages; as root it installs
them): CI installs it, so a skip would hide a broken job.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "native_tests.sh"
TIMEOUT_S = 1800  # clean builds on a 2-core CI machine take a few minutes

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)
DIGEST = re.compile(r"^digest ([0-9a-f]{16})$", re.MULTILINE)


def native_tests(*steps: str) -> str:
    """Runs scripts/native_tests.sh STEPS and returns its output; a non-zero exit fails the test."""
    env = {k: v for k, v in os.environ.items() if k != "SHELFRANK_FORCE_ISA"}
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), *steps],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scripts/native_tests.sh {' '.join(steps)} ran past {TIMEOUT_S} s:\n{e.output}", pytrace=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-60:])
        pytest.fail(
            f"scripts/native_tests.sh {' '.join(steps)} exited {proc.returncode}; last lines:\n{tail}",
            pytrace=False,
        )
    return proc.stdout


def summaries(out: str) -> list[tuple[int, int]]:
    return [(int(p), int(f)) for p, f in SUMMARY.findall(out)]


@pytest.mark.sanitize
def test_x86_asan_ubsan() -> None:
    out = native_tests("x86")
    runs = summaries(out)
    assert len(runs) == 1, out
    assert runs[0][0] > 0 and runs[0][1] == 0, out
    assert DIGEST.search(out), out


@pytest.mark.arm
@pytest.mark.parametrize(
    ("step", "cpu", "isa"),
    [("arm-a72", "cortex-a72", "neon"), ("arm-a76", "cortex-a76", "neon_dot")],
    ids=["cortex-a72", "cortex-a76"],
)
def test_arm_under_qemu(step: str, cpu: str, isa: str) -> None:
    out = native_tests(step)
    assert f"-cpu {cpu} " in out, out
    assert f"active_isa: {isa}\n" in out, out
    # cortex-a72: one full run, then the refused neon_dot pin; cortex-a76: dispatch + pinned neon.
    runs = summaries(out)
    assert runs and all(p > 0 and f == 0 for p, f in runs), out
    assert len(DIGEST.findall(out)) == 1, out


@pytest.mark.arm
def test_arm_objects_run_on_cortex_a72() -> None:
    out = native_tests("arm-objdump")
    assert "topk_neon_dot.cpp.o" in out and "FAIL" not in out, out


@pytest.mark.arm
def test_arm_digest_equals_x86() -> None:
    out = native_tests("digest")
    line = re.search(r"^x86 ([0-9a-f]{16})  cortex-a72 ([0-9a-f]{16})  cortex-a76 ([0-9a-f]{16})$", out, re.M)
    assert line, out
    assert len(set(line.groups())) == 1, line.group(0)
