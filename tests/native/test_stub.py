"""src/shelfrank/_native.pyi against the compiled module: the same functions, and for each the same
parameter names, kinds (positional or keyword-only) and defaults, read from the signature line
pybind11 writes at the top of every docstring. Types are the stub's to state (the binding takes
`object` and checks it), so they are not compared.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shelfrank import _native

STUB = Path(__file__).resolve().parents[2] / "src" / "shelfrank" / "_native.pyi"


def params(fn: ast.FunctionDef) -> list[tuple[str, str, str | None]]:
    """(name, kind, default source) for every parameter."""
    a = fn.args
    pos = a.posonlyargs + a.args
    pos_defaults = [None] * (len(pos) - len(a.defaults)) + [ast.unparse(d) for d in a.defaults]
    out = [(p.arg, "positional", d) for p, d in zip(pos, pos_defaults, strict=True)]
    out += [
        (p.arg, "keyword", None if d is None else ast.unparse(d))
        for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    return out


def stub_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(STUB.read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def compiled_functions() -> dict[str, ast.FunctionDef]:
    out = {}
    for name in dir(_native):
        if name.startswith("_") or not callable(getattr(_native, name)):
            continue
        sig = (getattr(_native, name).__doc__ or "").splitlines()[0]
        assert sig.startswith(name + "("), f"{name}: no pybind11 signature line in its docstring: {sig!r}"
        out[name] = ast.parse(f"def {sig}: ...").body[0]
    return out


def test_the_stub_names_every_function_and_nothing_else():
    assert sorted(stub_functions()) == sorted(compiled_functions())


@pytest.mark.parametrize("name", sorted(compiled_functions()))
def test_parameters_match_the_compiled_signature(name):
    assert params(stub_functions()[name]) == params(compiled_functions()[name])


def test_the_check_can_fail():
    # a stub that drifted (a renamed keyword) is seen
    drifted = ast.parse("def topk(query, rows, k, *, scale=None, mask=None, threads=1): ...").body[0]
    assert params(drifted) != params(compiled_functions()["topk"])
