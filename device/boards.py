"""Board configs (``firmware_configs/*.toml``, shipped in the package): validated against a schema.

``load_board("rpi5")`` reads the packaged config, ``load_board("path/to/board.toml")`` any file.
An unknown key, a missing one or a wrong type raises :class:`BoardConfigError` naming the file
and the key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from shelfrank.errors import InputError, UnknownBoardError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

ISAS = ("scalar", "avx2", "avxvnni", "avx512vnni", "neon", "neon_dot")
PRECISIONS = ("int8", "fp16", "fp32")


class BoardConfigError(InputError):
    """A board config file is invalid; the message names the file and the key."""


# key: (type, required, check or None, help)
SCHEMA: dict[str, tuple[type | tuple[type, ...], bool, Any, str]] = {
    "name": (str, True, None, "the board name used with --board"),
    "description": (str, True, None, "what the board is"),
    "cpu": (str, True, None, "CPU cores, e.g. 'Cortex-A76 x4'"),
    "expected_isa": (str, True, ISAS, "the kernel ISA path this board should select"),
    "threads": (int, True, lambda v: v >= 1, "threads for the scan and onnxruntime"),
    "providers": (
        list,
        True,
        lambda v: all(isinstance(p, str) for p in v) and len(v) >= 1,
        "onnxruntime execution providers, in order (CPU last)",
    ),
    "provider_options": (
        dict,
        False,
        lambda v: all(isinstance(o, dict) for o in v.values()),
        "per-provider option tables",
    ),
    "gpu_providers": (
        list,
        False,
        lambda v: all(isinstance(p, str) for p in v),
        "providers to use once the bundle carries an encoder they can run",
    ),
    "precision": (str, True, PRECISIONS, "encoder precision the board runs"),
    "max_catalog_items": (int, True, lambda v: v >= 1, "refuse catalogs above this"),
    "memory_budget_mb": (int, True, lambda v: v >= 16, "RSS budget for the runtime"),
    "install_prefix": (str, True, lambda v: v.startswith("/"), "where flash installs (absolute)"),
    "service_user": (str, True, None, "the user the service runs as"),
    "python": (str, True, None, "the target's python for the health check"),
    "serve_port": (
        int,
        False,
        lambda v: 1 <= v <= 65535,
        "TCP port on 127.0.0.1 for the service (`shelfrank serve`; also on /run/shelfrank/serve.sock)",
    ),
    "sync_url": (
        str,
        False,
        lambda v: v == "" or v.startswith(("http://", "https://", "/")),
        "published catalog the sync timer fetches (http(s):// URL or absolute directory); empty: no timer",
    ),
    "sync_schedule": (
        str,
        False,
        lambda v: bool(v.strip()) and v.isprintable() and len(v) <= 200,
        "when the sync timer runs: a systemd OnCalendar expression (`systemd-analyze calendar` checks it)",
    ),
    "sync_random_delay_s": (
        int,
        False,
        lambda v: 0 <= v <= 86400,
        "random delay added to each sync run (RandomizedDelaySec), so a fleet does not fetch at once",
    ),
    "notes": (str, False, None, "anything a user should know"),
}


@dataclass(frozen=True)
class BoardConfig:
    name: str
    description: str
    cpu: str
    expected_isa: str
    threads: int
    providers: list[str]
    precision: str
    max_catalog_items: int
    memory_budget_mb: int
    install_prefix: str
    service_user: str
    python: str
    provider_options: dict[str, dict] = field(default_factory=dict)
    gpu_providers: list[str] = field(default_factory=list)
    serve_port: int = 8377
    sync_url: str = ""
    sync_schedule: str = "hourly"
    sync_random_delay_s: int = 900
    notes: str = ""
    source: str = ""

    def ort_providers(self) -> list:
        """The providers list for onnxruntime, with options where the config gives them."""
        return self._with_options(self.providers)

    def gpu_ort_providers(self) -> list:
        """``gpu_providers`` for onnxruntime, with their options: the bundle's fp16 encoder runs under these."""
        return self._with_options(self.gpu_providers)

    def _with_options(self, names: list[str]) -> list:
        return [(p, self.provider_options[p]) if p in self.provider_options else p for p in names]


def validate(data: dict[str, Any], where: str) -> BoardConfig:
    for key in data:
        if key not in SCHEMA:
            raise BoardConfigError(f"{where}: unknown key {key!r} (known: {', '.join(SCHEMA)})")
    for key, (typ, required, check, _help) in SCHEMA.items():
        if key not in data:
            if required:
                raise BoardConfigError(f"{where}: missing key {key!r}")
            continue
        v = data[key]
        if (isinstance(v, bool) and typ is int) or not isinstance(v, typ):
            raise BoardConfigError(f"{where}: key {key!r} must be {typ.__name__}, got {type(v).__name__} {v!r}")
        if isinstance(check, tuple) and v not in check:
            raise BoardConfigError(f"{where}: key {key!r} must be one of {', '.join(check)}, got {v!r}")
        if callable(check) and not check(v):
            raise BoardConfigError(f"{where}: key {key!r} has an invalid value {v!r}")
    for p in data.get("provider_options", {}):
        if p not in data["providers"] + data.get("gpu_providers", []):
            raise BoardConfigError(f"{where}: provider_options for {p!r}, which is not in providers/gpu_providers")
    return BoardConfig(**data, source=where)


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
        except OSError as e:
            raise BoardConfigError(f"{path}: cannot read board config: {e}") from e
        where = str(path)
    else:
        res = resources.files("shelfrank") / "firmware_configs" / f"{s}.toml"
        if not res.is_file():
            raise UnknownBoardError(f"unknown board {s!r}; known: {', '.join(packaged_boards()) or 'none'}")
        text, where = res.read_text(encoding="utf-8"), f"firmware_configs/{s}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BoardConfigError(f"{where}: not valid TOML: {e}") from e
    return validate(data, where)
