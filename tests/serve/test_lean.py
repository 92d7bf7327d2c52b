"""The service stays lean: on top of the runtime it imports only the standard library (and msgspec, the
runtime's own contracts dependency, for its bodies)."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, sys
import shelfrank.device
before = set(sys.modules)
import shelfrank.device.service.serve
added = sorted({m.split('.')[0] for m in set(sys.modules) - before})
heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules)
print(json.dumps({'added': added, 'stdlib': sorted(sys.stdlib_module_names), 'heavy': heavy}))
"""


def test_serve_adds_only_standard_library_modules():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(out.stdout)
    assert doc["heavy"] == []
    third_party = [m for m in doc["added"] if m not in doc["stdlib"] and m not in ("shelfrank", "msgspec")]
    assert third_party == [], third_party
    assert "http" in doc["added"]  # the check sees what serve brings in


def test_the_cli_serve_path_does_not_import_the_export_stage():
    code = (
        "import sys; from shelfrank.cli import build_parser; import shelfrank.device.service.serve; "
        "print(sorted(m for m in sys.modules if m.startswith(('shelfrank.export', 'torch', 'transformers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def _imported(module: str) -> set[str]:
    """Every module a file of device/ imports, anywhere in it (functions and TYPE_CHECKING too)."""
    import ast
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "device" / "service" / f"{module}.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_endpoints_never_see_http_and_the_transport_never_sees_the_recommender():
    http_side = (
        "http",
        "http.server",
        "socket",
        "socketserver",
        "shelfrank.device.service.routes",
        "shelfrank.device.service.serve",
    )
    recommender_side = (
        "shelfrank.device.Recommender",
        "shelfrank.device.recommender",
        "shelfrank.device.service.endpoints",
    )
    assert set(http_side) & _imported("endpoints") == set()
    assert set(recommender_side) & _imported("serve") == set()
    assert {"http.server", "socket", "socketserver", "shelfrank.device.recommender"} & _imported("routes") == set()
    assert "shelfrank.device.service.routes" in _imported("serve")  # the check reads real imports
