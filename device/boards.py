"""Board configs (``firmware_configs/*.toml``, shipped in the package), decoded into a typed struct.

``load_board("rpi5")`` reads the packaged config, ``load_board("path/to/board.toml")`` any file.
The contract is :class:`~shelfrank.device.formats.BoardConfig` (one definition with its bounds and
help text; ``board_schema()`` is its JSON Schema). An unknown key, a missing one or a wrong type
raises :class:`BoardConfigError` naming the file and the key.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from shelfrank.device.formats import BOARD_KEYS, ISAS, PRECISIONS, BoardConfig, board_config
from shelfrank.errors import InputError, UnknownBoardError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

__all__ = [
    "BOARD_KEYS",
    "ISAS",
    "PRECISIONS",
    "BoardConfig",
    "BoardConfigError",
    "board_schema",
    "load_board",
    "packaged_boards",
    "parse_board",
    "validate",
]


class BoardConfigError(InputError):
    """A board config file is invalid; the message names the file and the key."""


def validate(data: dict[str, Any], where: str) -> BoardConfig:
    """A decoded TOML table as a :class:`BoardConfig` (``where`` names the file in errors).

    Raises:
        BoardConfigError: an unknown or missing key, a wrong type or a value out of bounds.
    """
    return board_config(data, where, BoardConfigError)


def board_schema() -> dict[str, Any]:
    """The JSON Schema of a board file, with each key's help text (generated from :class:`BoardConfig`)."""
    import msgspec

    schema = msgspec.json.schema(BoardConfig)
    props = schema["$defs"]["BoardConfig"]["properties"]
    props.pop("source", None)  # set by the loader, not a key of the file
    return schema


def packaged_boards() -> list[str]:
    folder = resources.files("shelfrank") / "firmware_configs"
    try:
        return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_board(name_or_path: str | Path) -> BoardConfig:
    """A packaged board by name, or a TOML file by path.

    Raises:
        UnknownBoardError: no such board (the message lists the packaged ones).
        BoardConfigError: the file is not valid TOML or breaks the schema.
    """
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s:
        path = Path(s)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BoardConfigError(f"{path}: cannot read board config (a UTF-8 TOML file): {e}") from e
        where = str(path)
    else:
        res = resources.files("shelfrank") / "firmware_configs" / f"{s}.toml"
        if not res.is_file():
            raise UnknownBoardError(f"unknown board {s!r}; known: {', '.join(packaged_boards()) or 'none'}")
        text, where = res.read_text(encoding="utf-8"), f"firmware_configs/{s}.toml"
    return parse_board(text, where)


def parse_board(text: str, where: str) -> BoardConfig:
    """A board config from TOML text (``where`` names it in errors).

    Raises:
        BoardConfigError: not valid TOML (nested too deeply too), or it breaks the schema.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BoardConfigError(f"{where}: not valid TOML: {e}") from e
    except RecursionError as e:  # tomllib parses nested arrays and inline tables recursively
        raise BoardConfigError(f"{where}: not valid TOML: nested too deeply") from e
    return validate(data, where)
