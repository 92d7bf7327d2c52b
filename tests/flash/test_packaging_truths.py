"""Packaging facts written once (issue 14.6): the version, ruff's target, the manylinux platforms."""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

import shelfrank
from shelfrank.deploy import runtime, wheels

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_is_written_once_in_init():
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    meta = PYPROJECT["tool"]["scikit-build"]["metadata"]["version"]
    assert meta["input"] == "src/shelfrank/__init__.py"
    assert metadata.version("shelfrank") == shelfrank.__version__


def test_ruff_targets_the_oldest_supported_python():
    low = re.fullmatch(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert low is not None and PYPROJECT["tool"]["ruff"]["target-version"] == f"py3{low.group(1)}"


def test_one_list_of_manylinux_platforms():
    spec = importlib.util.spec_from_file_location("build_wheels", ROOT / "scripts" / "build_wheels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.manylinux_platforms is wheels.manylinux_platforms is runtime.manylinux_platforms
    # aarch64 has no manylinux tag older than manylinux2014 (glibc 2.17)
    assert wheels.manylinux_platforms("aarch64", (2, 35))[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert wheels.manylinux_platforms("x86_64", (2, 17))[-3:] == [
        "manylinux2014_x86_64",
        "manylinux2010_x86_64",
        "manylinux1_x86_64",
    ]


def test_no_pin_for_what_nothing_imports():
    pins = {
        wheels.requirement_name(r).lower()
        for extra in PYPROJECT["project"]["optional-dependencies"].values()
        for r in extra
    }
    assert not {"optimum", "optimum-onnx"} & pins
    sources = [p for d in ("src", "device", "export") for p in (ROOT / d).rglob("*.py")]
    assert not [p for p in sources if re.search(r"^\s*(from|import) optimum", p.read_text(encoding="utf-8"), re.M)]
