"""The on-target layout is named in one place: :class:`shelfrank.deploy.target.TargetLayout`.

Counted from the source: a string constant (f-string parts included, docstrings not) that names a
slot or the runtime's venv link anywhere else in src/, device/ or export/ is a second definition.
The CLI's help and messages name the layout to people, not to the code, and are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

from shelfrank.deploy.target import TargetLayout

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "src" / "shelfrank", ROOT / "device", ROOT / "export"]
OWNER = ROOT / "src" / "shelfrank" / "deploy" / "target.py"
EXEMPT = {ROOT / "src" / "shelfrank" / "cli.py"}
WORDS = (*TargetLayout.SLOTS, TargetLayout.VENV_LINK)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _layout_strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    return [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and any(w in node.value for w in WORDS)
    ]


def test_layout_strings_live_only_in_target_layout():
    found = [
        hit
        for root in SOURCES
        for p in sorted(root.rglob("*.py"))
        if p != OWNER and p not in EXEMPT
        for hit in _layout_strings(p)
    ]
    assert found == []


def test_the_finder_finds_them():
    assert len(_layout_strings(OWNER)) >= 2  # slot_a, slot_b: the one definition
