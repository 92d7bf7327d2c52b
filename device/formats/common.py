"""What every contract shares: the bounded scalar types and the decode helpers that name the field.

A failure anywhere becomes a ``ShelfrankError`` subclass naming the file or field and the fix
(:func:`convert`, :func:`explain`); unknown fields are listed by :func:`unknown_fields`.
"""

from __future__ import annotations

import logging
import re
import types
import typing
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from shelfrank.errors import ShelfrankError

#: one logger for the whole contracts package (the name the package had as one module)
logger = logging.getLogger("shelfrank.device.formats")

#: bytes that never belong in a name or a short text field: C0 controls (NUL, newline, ESC…) and DEL
_CONTROL = r"\x00-\x1f\x7f"
#: one path segment: not empty, not ``.``/``..``, no leading ``-`` (never read as an option), no ``/``,
#: backslash or control characters. The leading negative look-ahead over the whole string matters:
#: Python's ``$`` also matches before a trailing newline.
_SEGMENT = rf"(?!-)(?!\.\.?(?:/|$))[^/\\{_CONTROL}]+"
SAFE_REL_PATH_PATTERN = rf"^(?![\s\S]*[{_CONTROL}]){_SEGMENT}(?:/{_SEGMENT})*$"
_SAFE_REL_PATH = re.compile(SAFE_REL_PATH_PATTERN)

SafeRelPath = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=255,
        pattern=SAFE_REL_PATH_PATTERN,
        description="a file inside the bundle or target: relative POSIX path, no '..', '.', empty or "
        "'-'-leading segment, no backslash or control characters, at most 255 characters",
    ),
]
Sha256Hex = Annotated[
    str, Meta(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$", description="sha256, lowercase hex")
]
#: counts, sizes, versions: 0 … 2^53 (exact in a JSON double)
NonNegativeInt = Annotated[int, Meta(ge=0, le=2**53)]
PositiveInt = Annotated[int, Meta(ge=1, le=2**53)]
#: an embedding dimension or a token count
SmallPositiveInt = Annotated[int, Meta(ge=1, le=65536)]
#: a name or a short label (ids, versions, provider names): printable, bounded
#: (a look-ahead, not ``^[^…]*$``: that would let a trailing newline through)
ShortText = Annotated[str, Meta(max_length=1024, pattern=rf"^(?![\s\S]*[{_CONTROL}])")]

T = TypeVar("T")

#: what a failed pattern means, in words (msgspec's message quotes the regex)
_PATTERN_HELP = {
    SAFE_REL_PATH_PATTERN: "that is a safe relative file name (POSIX, no '..', '.' or empty segment, not absolute, "
    "no leading '-', no backslash or control characters)",
    "^[0-9a-f]{64}$": "of 64 lowercase hex digits (a sha256)",
    rf"^(?![\s\S]*[{_CONTROL}])": "without control characters (newline, NUL, …)",
    rf"^(?![\s\S]*[{_CONTROL}])/": "that is an absolute path without control characters",
    rf"^(?![\s\S]*[{_CONTROL}])(?=[\s\S]*\S)": "that is not blank and has no control characters",
}


def is_safe_rel_path(name: object) -> bool:
    """True when ``name`` is a :data:`SafeRelPath` (what a bundle's ``files`` table may list)."""
    return isinstance(name, str) and 0 < len(name) <= 255 and _SAFE_REL_PATH.match(name) is not None


def explain(e: msgspec.ValidationError) -> str:
    """msgspec's message with the field first: ``'model.dim': Expected `int`, got `str```."""
    msg, sep, at = str(e).rpartition(" - at `")
    if not sep:
        msg, at = str(e), ""
    for pattern, help in _PATTERN_HELP.items():
        msg = msg.replace(f"matching regex {pattern!r}", help)
    path = at.rstrip("`")
    key = path.startswith("key` in `")  # a dict key failed: "at `key` in `$.files`"
    path = path.removeprefix("key` in `").removeprefix("$").removeprefix(".")
    if not path:
        return f"a key: {msg}" if key else msg
    return f"{path!r}{' (a key)' if key else ''}: {msg}"


def convert(obj: Any, type_: type[T], *, where: str, error: type[ShelfrankError], fix: str = "") -> T:
    """``obj`` (decoded JSON or TOML) as ``type_``; every failure is ``error`` naming ``where`` and the field.

    Raises:
        error: the value breaks the type or one of its constraints.
    """
    try:
        return msgspec.convert(obj, type_)
    except msgspec.ValidationError as e:
        raise error(f"{where}: {explain(e)}{'; ' + fix if fix else ''}") from e


def decode_json(data: bytes | str, *, where: str, error: type[ShelfrankError]) -> Any:
    """Untyped JSON (for :func:`convert` and :func:`unknown_fields`); bad or too deeply nested JSON is ``error``.

    msgspec stops nesting at Python's recursion limit with a RecursionError, raised and unwound
    cleanly; here it becomes a typed error like any other corrupt input.
    """
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        raise error(f"{where}: not valid JSON: {e}") from e
    except RecursionError as e:
        raise error(f"{where}: JSON nested too deeply") from e


def unknown_fields(obj: Any, type_: Any, prefix: str = "") -> list[str]:
    """Dotted names of the keys in ``obj`` that ``type_`` (a Struct, possibly nested) does not declare.

    Only declared fields are descended into, so an unknown subtree of any depth costs nothing.
    """
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if origin is Annotated:
        return unknown_fields(obj, args[0], prefix)
    if origin in (typing.Union, types.UnionType):  # X | None
        return [name for t in args for name in unknown_fields(obj, t, prefix)]
    if origin is dict and isinstance(obj, dict) and len(args) == 2:
        return [name for k, v in obj.items() for name in unknown_fields(v, args[1], f"{prefix}{k}.")]
    if origin in (list, tuple) and isinstance(obj, list) and args:
        return [name for i, v in enumerate(obj) for name in unknown_fields(v, args[0], f"{prefix}{i}.")]
    if not (isinstance(obj, dict) and isinstance(type_, type) and issubclass(type_, msgspec.Struct)):
        return []
    declared = {f.encode_name: f.type for f in msgspec.structs.fields(type_)}
    out = []
    for key, value in obj.items():
        if key in declared:
            out += unknown_fields(value, declared[key], f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def log_unknown_fields(obj: Any, type_: Any, where: str) -> None:
    """One INFO line naming the fields a newer writer added that this runtime ignores."""
    extra = unknown_fields(obj, type_)
    if extra:
        logger.info("%s: ignoring field(s) this runtime does not know: %s", where, ", ".join(extra))
