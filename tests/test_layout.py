"""The house's shape, checked statically: no import circles, no oversized modules, a true Layout table.

Counted from the source, not from what happens to be imported: an import inside a function or under
``TYPE_CHECKING`` is an edge too (a circle hidden in a function is still a circle).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name of each source root (pyproject's wheel.packages)
PACKAGES = {
    "shelfrank": ROOT / "src" / "shelfrank",
    "shelfrank.device": ROOT / "device",
    "shelfrank.export": ROOT / "export",
}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, root in PACKAGES.items():
        for p in root.rglob("*.py"):
            parts = [x for x in p.relative_to(root).with_suffix("").parts if x != "__init__"]
            mods[".".join([pkg, *parts])] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of ours that ``name`` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            subs = {f"{base_name}.{a.name}" for a in node.names} & mods.keys()
            out.update(subs)
            if len(subs) < len(node.names):  # names from the module itself, not submodules
                out.add(base_name)
    return {m for m in out if m in mods and m != name}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    mods = _modules()
    assert "shelfrank.device.recommender" in mods and "shelfrank.cli" in mods
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert graph["shelfrank.cli"], "the import graph came out empty: the parser is broken"
    assert _circles(graph) == []


def test_no_module_over_600_lines():
    long = {}
    for root in PACKAGES.values():
        for p in root.rglob("*.py"):
            n = len(p.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                long[str(p.relative_to(ROOT))] = n
    assert long == {}, f"split these by what they do (≤ {MAX_LINES} lines each): {long}"


def _layout_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def test_readme_layout_table_matches_the_tree():
    rows = _layout_rows()
    assert rows, "README.md has no Layout table"
    missing = [r for r in rows if not (ROOT / r).exists()]
    assert missing == [], f"README's Layout table names paths that do not exist: {missing}"
    # every package folder of the three source roots and of the kernel has its own row; every
    # top-level folder of the project has a row of its own or of a folder inside it
    folders = {r if r.endswith("/") else r + "/" for r in rows if (ROOT / r).is_dir()}
    wanted = {
        f"{p.relative_to(ROOT)}/"
        for root in PACKAGES.values()
        for p in [root, *root.rglob("*")]
        if p.is_dir() and (p / "__init__.py").exists()
    } | {"native/src/", "native/bindings/"}
    assert sorted(wanted - folders) == [], "folders without a row in README's Layout table"
    top = {
        f"{p.name}/"
        for p in ROOT.iterdir()
        if p.is_dir()
        and not p.name.startswith((".", "_"))
        and p.name not in {"build", "dist"}
        and not p.name.endswith(".egg-info")
    }
    assert sorted(t for t in top if not any(f.startswith(t) for f in folders)) == []
