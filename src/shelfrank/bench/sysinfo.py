"""System facts printed by ``shelfrank info`` and stamped on every benchmark report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from shelfrank import __version__


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (x86 'model name', ARM 'Model'/'CPU part'), else platform."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware"):
        if fields.get(key):
            return fields[key]
    if "CPU part" in fields:
        return f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The commit of the source tree this package was run from, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    for cwd in (Path.cwd(), here):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


def system_info() -> dict[str, Any]:
    """Version, CPU, kernel ISA paths, onnxruntime version and execution providers."""
    from shelfrank.device.kernel import active_isa, capabilities

    info: dict[str, Any] = {
        "shelfrank": __version__,
        "commit": git_commit(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "capabilities": capabilities(),
        "active_isa": active_isa(),
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = "not installed"
        info["ort_providers"] = []
    import numpy as np

    info["numpy"] = np.__version__
    return info
