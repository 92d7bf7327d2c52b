"""The catalog index and its deltas: what ``publish`` writes and ``sync`` reads (docs/device.md,
"Catalog sync"), one definition for both sides."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from shelfrank.device.formats.common import (
    _CONTROL,
    NonNegativeInt,
    SafeRelPath,
    Sha256Hex,
    ShortText,
    SmallPositiveInt,
    convert,
    decode_json,
    logger,
    unknown_fields,
)
from shelfrank.errors import SyncError

# ``publish`` writes and ``sync`` reads (docs/device.md, "Catalog sync")::
#
#     index.json                {"signed": IndexSigned, "signature": hex, "key_id": hex}
#     snapshots/<v>/            the catalog files of version v (catalog_files.FILES)
#     deltas/<a>-<b>/           changes.json (DeltaChanges), rows.i8.npy, scales.f32.npy
#     rules/<n>.json            merchandising rules (formats/rules.py), when published (signed: "rules")
#     stock/<n>.json            the live stock feed (formats/rules.py), when published (signed: "stock")
#
# The signature covers ``bundle.canonical_json`` of the *raw* signed object, so fields a newer
# publisher adds stay covered: the envelope decodes to builtins, the signature is checked, and only
# then is the signed part converted to ``IndexSigned`` (unknown fields logged and ignored).

INDEX_NAME = "index.json"
INDEX_FORMAT = 1
#: an index lists a snapshot and a few deltas of three files each (~1 KB per delta); a fixed cap,
#: since nothing signed says how big it is
INDEX_MAX_BYTES = 4 << 20
#: the real index is 5 levels deep; the signature check re-serialises the raw object, so it is bounded
INDEX_MAX_DEPTH = 16
MAX_DELTAS = 1000
DELTA_FILES = ("changes.json", "rows.i8.npy", "scales.f32.npy")
#: a catalog row's scale is max|x| / 127 (kernel.quantize_rows) of a unit-norm vector (the encoder
#: L2-normalises, and export normalises the item vectors after adding the learned residual), so it is
#: at most 1/127; the margin covers float rounding of the norm. A larger scale was not made by the
#: encoder (a 1e38 one overflows scores to inf/NaN). sync also bounds each delta row's norm.
ROW_SCALE_MAX = 1.001 / 127


#: a catalog version number (the bundle's catalog is version 1)
Version = NonNegativeInt
ItemId = Annotated[str, Meta(min_length=1, max_length=1024, pattern=rf"^(?![\s\S]*[{_CONTROL}])")]
_Text = Annotated[str, Meta(max_length=65536)]
#: prices and popularity: finite and bounded (JSON has no NaN; 1e999 is refused as out of range)
_Price = Annotated[float, Meta(ge=0, le=1e12)]
_Score = Annotated[float, Meta(ge=-1e12, le=1e12)]
_AwareDatetime = Annotated[_dt.datetime, Meta(tz=True)]


class FileRef(msgspec.Struct, frozen=True, kw_only=True):
    """One published file: where it is below the index, its sha256 and its exact size."""

    path: SafeRelPath
    sha256: Sha256Hex
    size: NonNegativeInt

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _by_name(files: list[FileRef], what: str) -> dict[str, FileRef]:
    out = {f.name: f for f in files}
    if len(out) != len(files):
        raise ValueError(f"{what}: two files with the same name")
    return out


class SnapshotRef(msgspec.Struct, frozen=True, kw_only=True):
    """The whole catalog of one version (for a device that is on no delta's base)."""

    version: Version
    files: Annotated[list[FileRef], Meta(min_length=1, max_length=64)]

    def __post_init__(self) -> None:
        _by_name(self.files, "snapshot")

    def by_name(self) -> dict[str, FileRef]:
        return _by_name(self.files, "snapshot")


class DeltaRef(msgspec.Struct, frozen=True, kw_only=True):
    """The changes from catalog version ``from`` to ``to`` (``to > from``: a chain only moves forward)."""

    from_: Version = msgspec.field(name="from")
    to: Version
    files: Annotated[list[FileRef], Meta(max_length=64)]

    def __post_init__(self) -> None:
        if self.to <= self.from_:
            raise ValueError(f"delta {self.from_}-{self.to}: 'to' must be greater than 'from'")
        missing = [n for n in DELTA_FILES if n not in _by_name(self.files, f"delta {self.from_}-{self.to}")]
        if missing:
            raise ValueError(f"delta {self.from_}-{self.to}: no {', '.join(missing)} in its files")

    def by_name(self) -> dict[str, FileRef]:
        return _by_name(self.files, f"delta {self.from_}-{self.to}")


class IndexSigned(msgspec.Struct, frozen=True, kw_only=True):
    """The signed part of ``index.json``: the newest version, how to reach it and for which encoder."""

    format_version: int
    version: Version
    expires: _AwareDatetime
    model_sha256: Sha256Hex
    dim: SmallPositiveInt
    snapshot: SnapshotRef
    created_at: _AwareDatetime | None = None
    count: NonNegativeInt | None = None
    deltas: Annotated[list[DeltaRef], Meta(max_length=MAX_DELTAS)] = []
    #: the merchandising rules and the live stock feed (device/formats/rules.py), when published:
    #: each has its own version inside, so a new one re-signs this index without a catalog version
    rules: FileRef | None = None
    stock: FileRef | None = None

    def __post_init__(self) -> None:
        if self.snapshot.version != self.version:
            raise ValueError(f"snapshot.version {self.snapshot.version} != version {self.version}")
        starts = [d.from_ for d in self.deltas]
        if len(set(starts)) != len(starts):
            raise ValueError("deltas: two deltas from the same version (an ambiguous chain)")


class ItemRecord(msgspec.Struct, kw_only=True):
    """One catalog item as a delta upserts it (the columns of ``items.sqlite``)."""

    item_id: ItemId
    title: _Text
    category: ShortText | None = None
    brand: ShortText | None = None
    price: _Price | None = None
    in_stock: bool = True
    popularity: _Score = 0.0


class DeltaChanges(msgspec.Struct, kw_only=True):
    """``changes.json`` of a delta: ids removed, then records upserted (row k ↔ rows.i8.npy row k)."""

    from_: Version = msgspec.field(name="from")
    to: Version
    remove: list[ItemId] = []
    upsert: list[ItemRecord] = []

    def __post_init__(self) -> None:
        ids = [it.item_id for it in self.upsert]
        if len(set(ids)) != len(ids):
            raise ValueError("upsert: the same item_id twice")


def _ignored(obj: Any, type_: Any, where: str) -> None:
    # list positions collapsed (``upsert.*.color``): one line, not one name per upserted item
    extra = dict.fromkeys(re.sub(r"(^|\.)\d+(?=\.)", r"\1*", n) for n in unknown_fields(obj, type_))
    if extra:
        logger.info("%s: ignoring field(s) this runtime does not know: %s", where, ", ".join(extra))


class _IndexEnvelope(msgspec.Struct, kw_only=True):
    signed: dict[str, Any]
    signature: Annotated[str, Meta(max_length=1024, pattern="^([0-9a-f]{2})+$")]
    key_id: ShortText = ""


def decode_index_envelope(data: bytes | bytearray, *, where: str) -> tuple[dict[str, Any], bytes]:
    """(the raw signed object, the signature) of ``index.json`` bytes, before the signature is checked.

    Raises:
        SyncError: too large, not JSON, nested too deeply, or not ``{"signed": {...}, "signature": hex}``.
    """
    if len(data) > INDEX_MAX_BYTES:
        raise SyncError(f"{where}: larger than {INDEX_MAX_BYTES} bytes; not a shelfrank catalog index")
    doc = decode_json(data, where=where, error=SyncError)
    stack = [(doc, 1)]
    while stack:  # iterative: the check itself must not recurse
        obj, depth = stack.pop()
        if depth > INDEX_MAX_DEPTH:
            raise SyncError(f"{where}: nested deeper than {INDEX_MAX_DEPTH} levels; not a shelfrank catalog index")
        if isinstance(obj, dict):
            stack += [(v, depth + 1) for v in obj.values()]
        elif isinstance(obj, list):
            stack += [(v, depth + 1) for v in obj]
    env = convert(doc, _IndexEnvelope, where=where, error=SyncError, fix="not a shelfrank catalog index")
    return env.signed, bytes.fromhex(env.signature)


def decode_index_signed(signed: dict[str, Any], *, where: str) -> IndexSigned:
    """The signed part of an index (already verified) as :class:`IndexSigned`.

    Raises:
        SyncError: another ``format_version``, or a field that breaks its type or constraint.
    """
    fv = signed.get("format_version")
    if fv != INDEX_FORMAT:
        raise SyncError(
            f"{where}: index format_version {fv!r} is not supported (this runtime reads {INDEX_FORMAT}); "
            "update the device runtime"
        )
    out = convert(signed, IndexSigned, where=where, error=SyncError, fix="republish the catalog")
    _ignored(signed, IndexSigned, where)
    return out


def encode_index_signed(signed: IndexSigned) -> dict[str, Any]:
    """``signed`` as the JSON object publish signs.

    Datetimes as ``datetime.isoformat`` (``+00:00``), not msgspec's ``Z``: runtimes on Python 3.10
    read ``expires`` with ``fromisoformat``, which refuses ``Z``.
    """
    obj = msgspec.to_builtins(signed, builtin_types=(_dt.datetime,))
    return {k: v.isoformat() if isinstance(v, _dt.datetime) else v for k, v in obj.items() if v is not None}


def decode_delta_changes(data: bytes, *, where: str) -> DeltaChanges:
    """``changes.json`` of a delta as :class:`DeltaChanges`.

    Raises:
        SyncError: not JSON, nested too deeply, or a field that breaks its type or constraint.
    """
    obj = decode_json(data, where=where, error=SyncError)
    out = convert(obj, DeltaChanges, where=where, error=SyncError, fix="republish the catalog")
    _ignored(obj, DeltaChanges, where)
    return out


def encode_delta_changes(changes: DeltaChanges) -> bytes:
    return msgspec.json.encode(changes)
