"""Property-based tests over the bundle manifest decoder, the board TOML decoder and flash's file
names (issue 13): whatever the input, the only outcomes are success or a ``ShelfrankError``.

Manifests: random bytes, random JSON, deep nesting, and (most) a valid manifest with a few
random mutations (a value replaced by any JSON value, a key dropped, an unknown key added, a
hostile file name). Board files: a valid TOML file with random edits, and random text. Names:
random strings, checked by the name predicate, by msgspec's decoding of the same constraint, and
sent by a directory target (nothing lands outside it) and an ssh target's tar command line. About
4,300 inputs, well under a minute.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shelfrank.deploy.target import DirTarget, FlashError, SshTarget
from shelfrank.device import formats
from shelfrank.device.boards import BoardConfigError, parse_board
from shelfrank.errors import BundleError, ShelfrankError

pytestmark = pytest.mark.fuzz

H = "ab" * 32


def _settings(n: int):
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the manifest -------------------------------------------------------------------------------

MANIFEST = {
    "format_version": 1,
    "publisher_key_id": H,
    "created_at": "2026-01-01T00:00:00+00:00",
    "files": {"encoder.onnx": H, "tokenizer.json": H, "user_tower.onnx": H, "catalog/emb.i8.npy": H},
    "model": {"file": "encoder.onnx", "sha256": H, "dim": 8, "max_len": 16, "precision": "int8"},
    "tokenizer": {"file": "tokenizer.json", "sha256": H, "truncation": 16},
    "text": {"item_fields": ["title", "brand"], "separator": " [SEP] "},
    "catalog": {"version": 1, "count": 3, "dim": 8, "files": {"rows": "catalog/emb.i8.npy"}, "sha256": {"rows": H}},
    "user_tower": {"kind": "sequence", "file": "user_tower.onnx", "sha256": H, "max_events": 4, "output": {"dim": 8}},
    "encoders": {"fp16": {"file": "encoder.onnx", "sha256": H, "precision": "fp16"}},
}

_names = st.one_of(
    st.sampled_from(["../x", "../../state/trusted.pub", "/etc/passwd", "-rf", "--checkpoint=1", "a//b", "./a", "a\n"]),
    st.text(alphabet=st.sampled_from("ab./-\\\n\x00 é"), min_size=0, max_size=12),
)
_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    _names,
    st.just(H),
)
_json = st.recursive(
    _leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON document, the root included."""
    yield prefix, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def _mutated_manifest(draw):
    doc = copy.deepcopy(MANIFEST)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _v in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        kind = draw(st.sampled_from(["replace", "drop", "add", "name"]))
        if kind == "replace":
            parent[path[-1]] = draw(_json)
        elif kind == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(_json)
        elif kind == "name" and isinstance(doc.get("files"), dict):
            doc["files"][draw(_names)] = draw(st.sampled_from([H, "x"]))
    return json.dumps(doc).encode()


def _decode_manifest(data: bytes) -> None:
    try:
        m = formats.Manifest.decode(data, "manifest.json")
    except BundleError:
        return
    # a manifest that decodes names only files a target can take as they are
    assert all(formats.is_safe_rel_path(name) for name in m.files)
    assert all(formats.is_safe_rel_path(e.file) for e in (m.model, m.tokenizer, m.user_tower))


@_settings(1200)
@given(_mutated_manifest())
def test_mutated_manifests(data):
    _decode_manifest(data)


@_settings(400)
@given(st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode())))
def test_random_manifest_bytes(data):
    _decode_manifest(data)


@_settings(100)
@given(st.integers(1, 200_000), st.sampled_from([b"[", b'{"a":']))
def test_deeply_nested_manifests(depth, opener):
    closer = b"]" if opener == b"[" else b"}"
    _decode_manifest(b'{"format_version": 1, "files": ' + opener * depth + b"1" + closer * depth + b"}")


# ---- the board config ---------------------------------------------------------------------------

BOARD = {
    "name": "t",
    "description": "d",
    "cpu": "c",
    "expected_isa": "neon",
    "threads": 2,
    "providers": ["CPUExecutionProvider"],
    "precision": "int8",
    "max_catalog_items": 10,
    "memory_budget_mb": 64,
    "install_prefix": "/opt/x",
    "service_user": "u",
    "python": "python3",
}
_toml_value = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=20).map(json.dumps),  # a JSON string is a TOML basic string (mostly: the rest fail to parse)
    st.lists(st.text(max_size=8).map(json.dumps), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.sampled_from(["1979-05-27", "inf", "nan", "{}", "{ a = 1 }", "[[1]]", "0x10", '"""x"""']),
)


def _toml(values: dict) -> str:
    return "\n".join(f"{k} = {'true' if v is True else 'false' if v is False else v}" for k, v in values.items())


@st.composite
def _edited_board(draw):
    values = {k: json.dumps(v) if not isinstance(v, int) else str(v) for k, v in BOARD.items()}
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "drop", "add"]))
        key = draw(st.sampled_from(sorted(values) or ["name"]))
        if kind == "replace":
            values[key] = draw(_toml_value)
        elif kind == "drop":
            values.pop(key, None)
        else:
            values[draw(st.from_regex(r"[a-z_]{1,16}", fullmatch=True))] = draw(_toml_value)
    return _toml(values)


def _decode_board(text: str) -> None:
    try:
        cfg = parse_board(text, "board.toml")
    except BoardConfigError:
        return
    assert cfg.threads >= 1 and cfg.providers and cfg.install_prefix.startswith("/")


@_settings(800)
@given(_edited_board())
def test_edited_board_files(text):
    _decode_board(text)


@_settings(300)
@given(st.text(max_size=200))
def test_random_board_text(text):
    _decode_board(text)


# ---- flash's file names -------------------------------------------------------------------------

_any_name = st.one_of(_names, st.text(max_size=40), st.text(alphabet=st.sampled_from("a./-"), max_size=10))


@_settings(1000)
@given(_any_name)
def test_the_name_check_is_the_contract(name):
    """The predicate flash uses and msgspec's decoding of ``SafeRelPath`` agree, and a safe name
    never leaves the folder it is joined onto."""
    try:
        msgspec.convert(name, formats.SafeRelPath)
        decoded = True
    except msgspec.ValidationError:
        decoded = False
    assert formats.is_safe_rel_path(name) == decoded
    if decoded:
        root = Path("/srv/slot")
        assert (root / name).resolve().is_relative_to(root) and not name.startswith("-")


@pytest.fixture(scope="module")
def box():
    d = Path(tempfile.mkdtemp(prefix="fuzz-flash-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@_settings(300)
@given(st.lists(_any_name, min_size=1, max_size=3))
def test_dir_target_writes_only_inside(box, names):
    local, board = box / "local", box / "board"
    for d in (local, board):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    for name in names:
        if formats.is_safe_rel_path(name):
            try:
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                (local / name).write_bytes(b"x")
            except OSError:  # 'a' and 'a/b' in one list: a file where a folder must go
                return
    t = DirTarget(str(board))
    try:
        t.send(local, names, f"{t.prefix}/slot_a.partial")
    except FlashError:
        pass
    assert sorted(p.name for p in box.iterdir()) == ["board", "local"]  # nothing beside the target
    written = [p for p in board.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to((board / "slot_a.partial").resolve()) for p in written)


@_settings(300)
@given(st.lists(_any_name, min_size=1, max_size=4))
def test_ssh_target_tar_gets_names_after_dashdash(names):
    """The local tar's argv: ``--`` before the names, and only safe names (or no tar at all)."""
    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def popen(argv, **_kw):
        seen.append(list(argv))
        raise Stop

    t = SshTarget("ssh://u@127.0.0.1:1/srv/b")
    with mock.patch("shelfrank.deploy.target.subprocess.Popen", popen):
        try:
            t.send(Path("/nonexistent"), names, "/srv/b/slot_a.partial")
        except (FlashError, Stop):
            pass
    if all(formats.is_safe_rel_path(n) for n in names):
        (argv,) = seen
        i = argv.index("--")
        assert argv[:i] == ["tar", "-C", "/nonexistent", "-cf", "-"] and argv[i + 1 :] == names
    else:
        assert seen == []


def test_outcomes_are_typed():
    """The exceptions the properties above tolerate are all ShelfrankErrors."""
    assert issubclass(BundleError, ShelfrankError) and issubclass(BoardConfigError, ShelfrankError)
    assert issubclass(FlashError, ShelfrankError)
