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
    "BoardLimitError",
    "board_arch",
    "board_schema",
    "check_bundle_memory",
    "check_catalog_size",
    "is_board_path",
    "load_board",
    "normalise_arch",
    "packaged_boards",
    "parse_board",
    "read_board",
    "validate",
]


class BoardConfigError(InputError):
    """A board config file is invalid; the message names the file and the key."""


class BoardLimitError(InputError):
    """A bundle or catalog is above a limit of the board config; the message names the limit and the board."""


#: the CPU architecture (``uname -m``, normalised) each kernel ISA path runs on; scalar runs anywhere
_ISA_ARCH = {"avx2": "x86_64", "avxvnni": "x86_64", "avx512vnni": "x86_64", "neon": "aarch64", "neon_dot": "aarch64"}
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


def board_arch(cfg: BoardConfig) -> str | None:
    """The architecture the board's ``expected_isa`` implies (``x86_64``, ``aarch64``), or None (scalar: any)."""
    return _ISA_ARCH.get(cfg.expected_isa)


def normalise_arch(machine: str) -> str:
    """``uname -m`` / ``platform.machine()`` in one spelling (``arm64`` is ``aarch64``, ``amd64`` ``x86_64``)."""
    m = machine.strip().lower()
    return _ARCH_ALIASES.get(m, m)


def check_catalog_size(cfg: BoardConfig, n_items: int, what: str) -> None:
    """Refuse a catalog above the board's ``max_catalog_items`` (flash, open, sync call this).

    Raises:
        BoardLimitError: ``n_items`` > ``cfg.max_catalog_items``.
    """
    if n_items > cfg.max_catalog_items:
        raise BoardLimitError(
            f"{what}: {n_items:,} items, above board {cfg.name}'s max_catalog_items = {cfg.max_catalog_items:,} "
            f"({cfg.source}); use a board config with a larger limit, or a smaller catalog"
        )


def check_bundle_memory(cfg: BoardConfig, nbytes: int, what: str) -> None:
    """Refuse a bundle whose files alone exceed the board's ``memory_budget_mb``.

    The runtime holds every file of a bundle in memory (the models, the tokenizer, the int8 rows and
    the items), so their size is a lower bound of its RSS; the service's MemoryMax is twice the budget.

    Raises:
        BoardLimitError: ``nbytes`` > ``cfg.memory_budget_mb`` MiB.
    """
    budget = cfg.memory_budget_mb * 2**20
    if nbytes > budget:
        raise BoardLimitError(
            f"{what}: its files take {nbytes / 2**20:,.0f} MiB, above board {cfg.name}'s memory_budget_mb = "
            f"{cfg.memory_budget_mb:,} ({cfg.source}), and the runtime holds them all in memory"
        )


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


def is_board_path(name_or_path: str | Path) -> bool:
    """Whether ``--board`` names a file (``./tiny.toml``, ``boards/x``) rather than a packaged board."""
    s = str(name_or_path)
    return s.endswith(".toml") or "/" in s


def load_board(name_or_path: str | Path) -> BoardConfig:
    """A packaged board by name, or a TOML file by path.

    Raises:
        UnknownBoardError: no such board (the message lists the packaged ones).
        BoardConfigError: the file is not valid TOML or breaks the schema.
    """
    return read_board(name_or_path)[0]


def read_board(name_or_path: str | Path) -> tuple[BoardConfig, str]:
    """:func:`load_board`, with the TOML text it decoded (flash carries a board file to the target).

    Raises:
        UnknownBoardError, BoardConfigError: as :func:`load_board`.
    """
    s = str(name_or_path)
    if is_board_path(s):
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
    return parse_board(text, where), text


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
