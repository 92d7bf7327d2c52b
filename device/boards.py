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
    "resident_bytes",
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


#: catalog files the runtime memory-maps and reads only a few rows of per query (a lookup, a
#: shopper's neighbours, SQLite's bounded page cache): not resident as a whole
SAMPLED_ROLES = frozenset({"items", "ids", "id_ends", "titles", "title_ends", "nbr_ids", "nbr_weights"})
#: anonymous bytes per item the runtime always holds (device/columns.py IdIndex: int64 hash + int32 row)
HELD_BYTES_PER_ITEM = 12


def resident_bytes(cfg: BoardConfig, manifest: Any, sizes: dict[str, int]) -> int:
    """A lower bound of the runtime's RSS on board ``cfg`` for a bundle's files (``sizes``: path → bytes).

    Counted: the files read whole (models, tokenizer, the scales, and the scan's own file: the int8
    rows for the exact scan, the binary codes for the two-pass scan, which rescored only ~first_pass_r
    rows), plus the id index. Not counted: the files only sampled per query (:data:`SAMPLED_ROLES`).
    """
    from shelfrank.device.planner import Planner

    roles = manifest.catalog.files
    sampled = set(SAMPLED_ROLES)
    scan = Planner(cfg.first_pass, cfg.first_pass_r).scan_for(manifest.catalog.count, has_codes="codes" in roles)
    if scan == "two_pass":
        sampled.add("rows")
    skip = {path for role, path in roles.items() if role in sampled}
    return sum(n for path, n in sizes.items() if path not in skip) + HELD_BYTES_PER_ITEM * manifest.catalog.count


def check_bundle_memory(cfg: BoardConfig, nbytes: int, what: str) -> None:
    """Refuse a bundle whose resident bytes (:func:`resident_bytes`) exceed the board's ``memory_budget_mb``.

    What the runtime must hold is a lower bound of its RSS; the service's MemoryMax is twice the budget.

    Raises:
        BoardLimitError: ``nbytes`` > ``cfg.memory_budget_mb`` MiB.
    """
    budget = cfg.memory_budget_mb * 2**20
    if nbytes > budget:
        raise BoardLimitError(
            f"{what}: the runtime would hold {nbytes / 2**20:,.0f} MiB of its files, above board {cfg.name}'s "
            f"memory_budget_mb = {cfg.memory_budget_mb:,} ({cfg.source}); use a board with more memory, a smaller "
            "catalog, or first_pass = 'auto' with a bundle that has binary codes"
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


def runtime_settings(name_or_path: str | Path) -> tuple[int, list | None, list | None, Any]:
    """(threads, onnxruntime providers, GPU providers, the scan planner) a Recommender runs with on a board."""
    from shelfrank.device.planner import Planner

    cfg = load_board(name_or_path)
    return cfg.threads, cfg.ort_providers(), cfg.gpu_ort_providers(), Planner(cfg.first_pass, cfg.first_pass_r)


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
