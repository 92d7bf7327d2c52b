"""The board config (``firmware_configs/*.toml``), decoded by ``device.boards.load_board``.

An unknown key is refused (a typo there is a mistake), naming the file and the key.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from shelfrank.device.formats.common import _CONTROL, _PATTERN_HELP
from shelfrank.errors import ShelfrankError

#: kernel ISA paths a board may expect (native/src/dispatch.cpp picks one at run time)
ISAS = ("scalar", "avx2", "avxvnni", "avx512vnni", "neon", "neon_dot")
PRECISIONS = ("int8", "fp16", "fp32")
#: the dense scan's first pass (device/planner.py): the exact int8 scan, binary codes then an exact
#: rescore, or the planner's choice by catalog size
FIRST_PASS = ("auto", "exact", "binary")
#: bounds of ``first_pass_r``: at least a query's default k (a first pass that keeps fewer
#: candidates than the results asked for cannot answer), at most where the rescore's random reads
#: cost more than the scan saves
FIRST_PASS_R_MIN, FIRST_PASS_R_MAX = 10, 100_000
#: ``first_pass_r`` when a board does not set it (recall@10 >= 0.99 at 1M items: docs/device.md)
FIRST_PASS_R_DEFAULT = 1000
#: an onnxruntime execution provider name (``CPUExecutionProvider``)
ProviderName = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
_NO_CONTROL = rf"^(?![\s\S]*[{_CONTROL}])"


def _doc(text: str, **kw: Any) -> Meta:
    return Meta(description=text, **kw)


def _line(text: str, *, then: str = "", **kw: Any) -> Meta:
    """One line of text (a value that may end up in a systemd unit or a shell word), then ``then``."""
    return Meta(description=text, max_length=kw.pop("max_length", 4096), pattern=_NO_CONTROL + then, **kw)


class BoardConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A board config (``firmware_configs/*.toml``): decoded by ``device.boards.load_board``; an
    unknown key is refused (a typo there is a mistake), naming the file and the key."""

    name: Annotated[str, _doc("the board name used with --board", min_length=1, max_length=64, pattern=r"^[\w.-]+$")]
    description: Annotated[str, _doc("what the board is")]
    cpu: Annotated[str, _doc("CPU cores, e.g. 'Cortex-A76 x4'")]
    expected_isa: Annotated[typing.Literal[ISAS], _doc("the kernel ISA path this board should select")]  # type: ignore[valid-type]
    threads: Annotated[int, _doc("threads for the scan and onnxruntime", ge=1, le=1024)]
    providers: Annotated[
        list[ProviderName], _doc("onnxruntime execution providers, in order (CPU last)", min_length=1, max_length=16)
    ]
    precision: Annotated[typing.Literal[PRECISIONS], _doc("encoder precision the board runs")]  # type: ignore[valid-type]
    max_catalog_items: Annotated[int, _doc("refuse catalogs above this", ge=1, le=2**31 - 1)]
    memory_budget_mb: Annotated[int, _doc("RSS budget for the runtime", ge=16, le=2**24)]
    install_prefix: Annotated[str, _line("where flash installs (absolute)", then="/")]
    service_user: Annotated[str, _line("the user the service runs as")]
    python: Annotated[str, _line("the target's python for the health check", min_length=1)]
    provider_options: Annotated[dict[ProviderName, dict[str, Any]], _doc("per-provider option tables")] = {}
    gpu_providers: Annotated[
        list[ProviderName], _doc("providers to use once the bundle carries an encoder they can run", max_length=16)
    ] = []
    serve_port: Annotated[
        int,
        _doc(
            "TCP port on 127.0.0.1 for the service (`shelfrank serve`; also on /run/shelfrank/serve.sock)",
            ge=1,
            le=65535,
        ),
    ] = 8377
    sync_url: Annotated[
        str,
        _line("published catalog the sync timer fetches (http(s):// URL or absolute directory); empty: no timer"),
    ] = ""
    sync_schedule: Annotated[
        str,
        _line(
            "when the sync timer runs: a systemd OnCalendar expression (`systemd-analyze calendar` checks it)",
            then=r"(?=[\s\S]*\S)",
            max_length=200,
        ),
    ] = "hourly"
    sync_random_delay_s: Annotated[
        int,
        _doc(
            "random delay added to each sync run (RandomizedDelaySec), so a fleet does not fetch at once",
            ge=0,
            le=86400,
        ),
    ] = 900
    first_pass: Annotated[
        typing.Literal[FIRST_PASS],  # type: ignore[valid-type]
        _doc(
            "the dense scan: 'exact' (int8), 'binary' (binary codes, then the best first_pass_r rescored "
            "exactly) or 'auto' (binary when the catalog has codes and is large enough to pay, docs/device.md)"
        ),
    ] = "auto"
    first_pass_r: Annotated[
        int,
        _doc(
            "candidates the binary first pass keeps for the exact rescore (a query needing more keeps more)",
            ge=FIRST_PASS_R_MIN,
            le=FIRST_PASS_R_MAX,
        ),
    ] = FIRST_PASS_R_DEFAULT
    notes: Annotated[str, _doc("anything a user should know")] = ""
    #: where it was read from (set by the loader; not a key of the file)
    source: str = ""

    def __post_init__(self) -> None:
        if self.sync_url and not self.sync_url.startswith(("http://", "https://", "/")):
            raise ValueError(f"key 'sync_url' must be an http(s):// URL or an absolute directory: {self.sync_url!r}")
        for p in self.provider_options:
            if p not in self.providers and p not in self.gpu_providers:
                raise ValueError(f"provider_options for {p!r}, which is not in providers/gpu_providers")

    def ort_providers(self) -> list:
        """The providers list for onnxruntime, with options where the config gives them."""
        return self._with_options(self.providers)

    def gpu_ort_providers(self) -> list:
        """``gpu_providers`` for onnxruntime, with their options: the bundle's fp16 encoder runs under these."""
        return self._with_options(self.gpu_providers)

    def _with_options(self, names: list[str]) -> list:
        return [(p, self.provider_options[p]) if p in self.provider_options else p for p in names]


#: the keys a board file may have (everything but the loader's ``source``)
BOARD_KEYS = tuple(f for f in BoardConfig.__struct_fields__ if f != "source")


def board_config(data: Any, where: str, error: type[ShelfrankError]) -> BoardConfig:
    """A decoded TOML table as a :class:`BoardConfig`; ``error`` names ``where`` and the key.

    Raises:
        error: an unknown or missing key, a wrong type, a value out of bounds.
    """
    if isinstance(data, dict) and "source" in data:
        raise error(f"{where}: unknown key 'source' (known: {', '.join(BOARD_KEYS)})")
    try:
        cfg = msgspec.convert(data, BoardConfig)
    except msgspec.ValidationError as e:
        msg, sep, at = str(e).rpartition(" - at `")
        if not sep:
            msg, at = str(e), ""
        key = at.rstrip("`").removeprefix("$").removeprefix(".")
        if m := re.fullmatch(r"Object contains unknown field `(.*)`", msg, re.S):
            known = BOARD_KEYS if not key else ()
            text = f"unknown key {'.'.join(filter(None, (key, m.group(1))))!r}"
            text += f" (known: {', '.join(known)})" if known else ""
        elif m := re.fullmatch(r"Object missing required field `(.*)`", msg, re.S):
            text = f"missing key {'.'.join(filter(None, (key, m.group(1))))!r}"
        elif msg.startswith(("key ", "provider_options ")):  # from __post_init__
            text = msg
        else:
            for pattern, help in _PATTERN_HELP.items():
                msg = msg.replace(f"matching regex {pattern!r}", help)
            text = f"key {key!r}: {msg}" if key else msg
        raise error(f"{where}: {text}") from e
    return msgspec.structs.replace(cfg, source=where)
