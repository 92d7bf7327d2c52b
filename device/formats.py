"""The typed contracts of everything that crosses a boundary: decoding *is* validation.

One module, one definition per wire format, shared by the side that writes it and the side that
reads it (export and device; publish and sync; the service and its OpenAPI description). Each
format is a ``msgspec.Struct`` with its constraints; ``decode_*`` helpers turn bytes or dicts into
structs and every failure into a ``ShelfrankError`` subclass naming the file/field and the fix.

Unknown fields: refused in request bodies and board TOML (a typo there is a mistake); ignored
with a log line in the manifest, the catalog index and deltas (forward compatibility).
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import types
import typing
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from shelfrank.device.text import ACTIONS
from shelfrank.errors import BundleError, RequestBodyError, ShelfrankError

logger = logging.getLogger(__name__)

# ---- shared constraints -----------------------------------------------------------------------

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


# ---- bundle manifest --------------------------------------------------------------------------

#: the manifest's format this runtime reads (export/bundle_writer.py writes it, device/bundle.py signs it)
FORMAT_VERSION = 1

#: a variant or role name in a manifest table (``fp16``, ``rows``): short, printable
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=rf"^(?![\s\S]*[{_CONTROL}])")]


class _Entry(msgspec.Struct, frozen=True, kw_only=True):
    """Unknown fields are ignored (forward compatibility); :meth:`Manifest.decode` logs them."""


class ModelEntry(_Entry):
    """``model``: the int8 text encoder the catalog rows were embedded with."""

    file: SafeRelPath
    sha256: Sha256Hex
    dim: SmallPositiveInt
    max_len: SmallPositiveInt
    pooling: ShortText = "mean"
    normalized: bool = True
    inputs: list[ShortText] = []
    output: ShortText = "embedding"
    precision: ShortText = "int8"
    layers: NonNegativeInt | None = None
    teacher_layers: list[NonNegativeInt] = []


class TokenizerEntry(_Entry):
    file: SafeRelPath
    sha256: Sha256Hex
    padding: ShortText = "longest"
    truncation: SmallPositiveInt | None = None


class TextEntry(_Entry):
    """How an item's text is built (device/text.py), stored so export and device agree."""

    item_fields: Annotated[list[Name], Meta(min_length=1, max_length=64)]
    separator: ShortText


class CatalogEntry(_Entry):
    """``catalog``: the bundle's own catalog; ``files``/``sha256`` by role (rows, scales, items, …)."""

    version: NonNegativeInt
    count: NonNegativeInt
    dim: SmallPositiveInt
    dtype: typing.Literal["int8"] = "int8"
    files: dict[Name, SafeRelPath] = {}
    sha256: dict[Name, Sha256Hex] = {}


class TowerOutput(_Entry):
    name: ShortText = "user"
    dim: SmallPositiveInt | None = None
    normalized: bool = True


class UserTowerEntry(_Entry):
    kind: ShortText
    file: SafeRelPath
    sha256: Sha256Hex
    max_events: SmallPositiveInt
    order: ShortText = "newest first"
    action_ids: dict[Name, Annotated[int, Meta(ge=0, le=255)]] = {}
    inputs: dict[Name, Any] = {}
    output: TowerOutput = TowerOutput()
    item_vecs: ShortText = ""


class EncoderEntry(_Entry):
    """One ``encoders`` variant (``fp16`` for GPU providers): the same embedding function, another file."""

    file: SafeRelPath
    sha256: Sha256Hex
    precision: ShortText = ""
    io: ShortText = ""
    source: ShortText = ""
    for_: ShortText = msgspec.field(default="", name="for")
    parity: dict[Name, Any] = {}


class Manifest(_Entry, dict=True):
    """``manifest.json``: what a bundle holds, signed as one document (docs/export.md).

    Decode with :meth:`Manifest.decode`; read attributes (``m.model.sha256``). ``m.raw`` is the
    JSON as signed, with the fields this runtime does not model; ``m["key"]`` reads it too (for
    tools and the callers that have not moved to attributes yet).
    """

    format_version: int
    publisher_key_id: Sha256Hex
    files: Annotated[dict[SafeRelPath, Sha256Hex], Meta(min_length=1, max_length=100_000)]
    model: ModelEntry
    tokenizer: TokenizerEntry
    catalog: CatalogEntry
    user_tower: UserTowerEntry
    text: TextEntry | None = None
    encoders: dict[Name, EncoderEntry] = {}
    created_at: ShortText = ""
    generator: ShortText = ""
    dataset: ShortText = ""
    preset: dict[Name, Any] = {}
    quality: dict[Name, Any] = {}
    # the hybrid ranker (device/ranker.py, decoded by RankerParams.from_manifest at open); a runtime
    # that predates it ignores it and ranks by the user tower alone
    ranker: dict[Name, Any] | None = None
    # search fusion (device/search.py, decoded by SearchParams.from_manifest) and the FTS build it
    # was fitted with; a runtime that predates it ignores it and searches dense-only
    search: dict[Name, Any] | None = None

    @classmethod
    def decode(cls, data: bytes, where: str) -> Manifest:
        """Decode and check a manifest; unknown fields are logged and ignored.

        Raises:
            BundleError: not UTF-8 JSON, nested too deeply, an unsupported ``format_version``, a
                field of the wrong type or out of bounds (named), an unsafe file name, or
                sub-hashes and dimensions that disagree with each other (:meth:`check`).
        """
        raw = decode_json(data, where=where, error=BundleError)
        if not isinstance(raw, dict):
            raise BundleError(f"{where}: the manifest must be a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise BundleError(
                f"{where}: bundle format_version {version!r} is not supported by this runtime "
                f"(it reads format_version {FORMAT_VERSION}); update shelfrank or re-export the bundle"
            )
        m = convert(raw, cls, where=where, error=BundleError, fix="re-export the bundle")
        log_unknown_fields(raw, cls, where)
        m.__dict__["raw"] = raw  # frozen: set once, here
        m.check(where)
        return m

    def check(self, where: str) -> None:
        """Every file the runtime opens is in the signed ``files`` table with the sub-entry's sha256,
        and the dimensions agree.

        Raises:
            BundleError: naming the entry that disagrees.
        """
        named = [("model", self.model.file, self.model.sha256)]
        named += [("tokenizer", self.tokenizer.file, self.tokenizer.sha256)]
        named += [("user_tower", self.user_tower.file, self.user_tower.sha256)]
        named += [(f"encoders.{v}", e.file, e.sha256) for v, e in self.encoders.items()]
        for role, digest in self.catalog.sha256.items():
            if role not in self.catalog.files:
                raise BundleError(f"{where}: catalog.sha256.{role} has no catalog.files.{role}")
            named.append((f"catalog.files.{role}", self.catalog.files[role], digest))
        for entry, file, digest in named:
            if self.files.get(file) != digest:
                raise BundleError(
                    f"{where}: {entry} file {file!r} is not in the signed 'files' table with the same sha256 "
                    "(an inconsistent manifest; re-export the bundle)"
                )
        dims = {"catalog.dim": self.catalog.dim, "user_tower.output.dim": self.user_tower.output.dim}
        for name, dim in dims.items():
            if dim is not None and dim != self.model.dim:
                raise BundleError(f"{where}: {name} {dim} != model.dim {self.model.dim}")

    @property
    def raw(self) -> dict[str, Any]:
        return self.__dict__.get("raw", {})

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


# ---- catalog index and delta (publish and sync) -------------------------------------------------
#
# ``publish`` writes and ``sync`` reads (docs/device.md, "Catalog sync")::
#
#     index.json                {"signed": IndexSigned, "signature": hex, "key_id": hex}
#     snapshots/<v>/            the catalog files of version v (catalog_files.FILES)
#     deltas/<a>-<b>/           changes.json (DeltaChanges), rows.i8.npy, scales.f32.npy
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
    from shelfrank.errors import SyncError

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
    from shelfrank.errors import SyncError

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
    from shelfrank.errors import SyncError

    obj = decode_json(data, where=where, error=SyncError)
    out = convert(obj, DeltaChanges, where=where, error=SyncError, fix="republish the catalog")
    _ignored(obj, DeltaChanges, where)
    return out


def encode_delta_changes(changes: DeltaChanges) -> bytes:
    return msgspec.json.encode(changes)


# ---- board config (firmware_configs/*.toml) -----------------------------------------------------

#: kernel ISA paths a board may expect (native/src/dispatch.cpp picks one at run time)
ISAS = ("scalar", "avx2", "avxvnni", "avx512vnni", "neon", "neon_dot")
PRECISIONS = ("int8", "fp16", "fp32")
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


# ---- service request and response bodies ------------------------------------------------------
# What ``shelfrank serve`` reads and writes (device/serve.py) and what /openapi.json publishes:
# one set of types for both, so the description and the server cannot disagree. A request body
# is decoded in one call by :func:`decode_request`; unknown fields are refused.

#: the most items one request may ask for
MAX_K = 1000
#: the most shoppers one recommend_many request may name
MAX_BATCH_USERS = 256
#: the most texts one search_many request may carry
MAX_BATCH_TEXTS = 64
#: the longest id (shopper or item) a request may carry
MAX_ID_CHARS = 1024

RequestUserId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=r"\S",
        description="The shopper's id (any string with a non-space character).",
        examples=["u42"],
    ),
]
RequestItemId = Annotated[
    str,
    Meta(
        min_length=1, max_length=MAX_ID_CHARS, description="An item id of the catalog served.", examples=["SKU-00123"]
    ),
]
#: a count of items. A JSON Schema "integer" is any number with no fraction (3.0 too), so the
#: contract is a number that is a multiple of 1, made an int on decoding (see _Body.__post_init__)
ItemCount = Annotated[float, Meta(ge=1, le=MAX_K, multiple_of=1, description="How many items to return.")]
StringOrList = Annotated[typing.Union[str, list[str]], Meta(description="A string or a list of strings.")]
Action = typing.Literal[ACTIONS]  # type: ignore[valid-type]  # view, click, cart, purchase
_UNSET = msgspec.UNSET


class _Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are refused (a typo is a mistake, never silently ignored)."""

    def __post_init__(self) -> None:
        k = getattr(self, "k", None)
        if isinstance(k, float):
            self.k = int(k)  # type: ignore[attr-defined]


class Where(_Body):
    """Filters (all optional, combined with AND). An item with an unknown price never passes a price
    filter; ids in allow_ids/deny_ids that are not in the catalog are ignored."""

    category: Annotated[StringOrList, Meta(description="Only these categories.")] | msgspec.UnsetType = _UNSET
    brand: Annotated[StringOrList, Meta(description="Only these brands.")] | msgspec.UnsetType = _UNSET
    min_price: Annotated[float, Meta(description="Price at least this.")] | msgspec.UnsetType = _UNSET
    max_price: Annotated[float, Meta(description="Price at most this.")] | msgspec.UnsetType = _UNSET
    in_stock: Annotated[bool, Meta(description="Only items in (true) or out of (false) stock.")] | msgspec.UnsetType = (
        _UNSET
    )
    allow_ids: Annotated[list[str], Meta(description="Only these item ids.")] | msgspec.UnsetType = _UNSET
    deny_ids: Annotated[list[str], Meta(description="Never these item ids.")] | msgspec.UnsetType = _UNSET

    def as_filter(self) -> dict[str, Any] | None:
        """The ``where`` mapping :meth:`Catalog.mask` takes (the fields given), None when empty."""
        out = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not _UNSET}
        return out or None


class RecordRequest(_Body):
    user_id: RequestUserId
    item_id: RequestItemId
    action: Action
    ts: Annotated[float, Meta(description="Event time, Unix seconds (default: now).")] | msgspec.UnsetType = _UNSET


#: how ``recommend`` ranks (device/ranker.py): the fused score, or the user tower alone
Ranker = typing.Literal["hybrid", "tower"]


class RecommendRequest(_Body):
    user_id: RequestUserId
    k: ItemCount = 10
    exclude_seen: Annotated[bool, Meta(description="Leave out items in the shopper's history.")] = True
    where: Where | msgspec.UnsetType = _UNSET
    diversity: Annotated[
        float,
        Meta(
            ge=0.0,
            le=1.0,
            description="Re-rank by maximal marginal relevance with this weight on diversity "
            "(0: the plain order, 1: the most diverse).",
        ),
    ] = 0.0
    ranker: Annotated[
        Ranker,
        Meta(
            description="hybrid: the user tower's candidates and the co-occurrence neighbours of the "
            "shopper's recent items, ranked by the bundle's fused score (the user tower alone for a bundle "
            "without one); tower: the user tower alone."
        ),
    ] = "hybrid"


class SimilarRequest(_Body):
    item_id: RequestItemId
    k: ItemCount = 10
    where: Where | msgspec.UnsetType = _UNSET


SearchText = Annotated[
    str,
    Meta(
        min_length=1,
        pattern=r"\S",
        description="Free text; only its first few hundred words are read (the encoder's max_len tokens).",
        examples=["wireless headphones"],
    ),
]


class SearchRequest(_Body):
    text: SearchText
    k: ItemCount = 10
    where: Where | msgspec.UnsetType = _UNSET
    #: hybrid (lexical + dense, fused), dense (the encoder alone) or lexical (the FTS index alone)
    mode: typing.Literal["hybrid", "dense", "lexical"] = "hybrid"


class RecommendManyRequest(_Body):
    """``recommend`` for many shoppers at once: the same options for all of them."""

    user_ids: Annotated[
        list[RequestUserId],
        Meta(
            min_length=1,
            max_length=MAX_BATCH_USERS,
            description=f"The shoppers (1 to {MAX_BATCH_USERS}); one result list each, in this order.",
        ),
    ]
    k: ItemCount = 10
    exclude_seen: Annotated[bool, Meta(description="Leave out items in each shopper's history.")] = True
    where: Where | msgspec.UnsetType = _UNSET
    diversity: Annotated[float, Meta(ge=0.0, le=1.0, description="As in recommend.")] = 0.0
    ranker: Annotated[Ranker, Meta(description="As in recommend.")] = "hybrid"


class SearchManyRequest(_Body):
    """``search`` for many texts at once: the same options for all of them."""

    texts: Annotated[
        list[SearchText],
        Meta(
            min_length=1,
            max_length=MAX_BATCH_TEXTS,
            description=f"The queries (1 to {MAX_BATCH_TEXTS}); one result list each, in this order.",
        ),
    ]
    k: ItemCount = 10
    where: Where | msgspec.UnsetType = _UNSET


class UserRequest(_Body):
    user_id: RequestUserId


REQUEST_BODIES: tuple[type[_Body], ...] = (
    RecordRequest,
    RecommendRequest,
    SimilarRequest,
    SearchRequest,
    UserRequest,
    RecommendManyRequest,
    SearchManyRequest,
)
_DECODERS = {t: msgspec.json.Decoder(t) for t in REQUEST_BODIES}
_BodyT = TypeVar("_BodyT", bound=_Body)
_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_MESSAGE_HELP = {
    r"Expected `str` matching regex '\\S'": "Expected a string with a non-space character",
    "Expected `float` that's a multiple of 1.0": "Expected an integer",
    "Expected `float` >= 1.0": "Expected an integer >= 1",  # k: the only float with bounds
    f"Expected `float` <= {float(MAX_K)}": f"Expected an integer <= {MAX_K}",
    "Number out of range": "Expected a finite number (this one is out of range)",
}


def decode_request(body: bytes, type_: type[_BodyT]) -> _BodyT:
    """A request body (UTF-8 JSON) as ``type_``, checked against its constraints in one call.

    Raises:
        RequestBodyError: ``malformed`` when the body is not UTF-8 JSON; else ``field`` names the
            field that is missing, unknown, of the wrong type or out of range (None: the body itself).
    """
    try:
        return _DECODERS[type_].decode(body)
    except msgspec.ValidationError as e:
        raise _contract_error(str(e), type_) from None
    except msgspec.DecodeError as e:
        raise _malformed(body, e) from None
    except RecursionError:  # not reached with these types (no free-form field); kept typed regardless
        raise RequestBodyError("the request body is nested too deeply", malformed=True) from None


def _malformed(body: bytes, e: msgspec.DecodeError) -> RequestBodyError:
    if not body.strip():
        return RequestBodyError("the request body is empty; send a JSON object", malformed=True)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as u:
        return RequestBodyError(f"the request body is not UTF-8 ({u.reason} at byte {u.start})", malformed=True)
    hint = ""
    if at := re.search(r"\(byte (\d+)\)$", str(e)):
        hint = f" near {body[int(at.group(1)) : int(at.group(1)) + 24].decode('utf-8', 'replace')!r}"
    if _LONE_SURROGATE.search(body):
        hint += " (a \\uD800-\\uDFFF escape must be one half of a surrogate pair)"
    return RequestBodyError(f"the request body is not valid JSON: {e}{hint}", malformed=True)


def _contract_error(text: str, type_: type[_Body]) -> RequestBodyError:
    """msgspec's ValidationError as a message that starts with the field: ``where.k: Expected …``."""
    msg, sep, at = text.rpartition(" - at `")
    if not sep:
        msg, at = text, ""
    path = at.rstrip("`").removeprefix("$").removeprefix(".")
    for word in ("unknown", "missing required"):
        m = re.fullmatch(rf"Object (?:contains )?{word} field `(.*)`", msg, re.S)
        if m:
            name = f"{path}.{m.group(1)}" if path else m.group(1)
            if word == "unknown":
                allowed = ", ".join(_struct_at(type_, path).__struct_fields__)
                where = f" in {path}" if path else ""
                return RequestBodyError(f"{name} is not a known field; allowed{where}: {allowed}", field=name)
            return RequestBodyError(f"{name} is required", field=name)
    for raw, words in _MESSAGE_HELP.items():
        msg = msg.replace(raw, words)
    if msg.startswith("Invalid enum value") and (choices := _choices(type_, path)):
        msg += f"; expected one of {', '.join(map(repr, choices))}"
    if path == "k":  # an ItemCount: a float only so that 3.0 counts as an integer (JSON Schema's reading)
        msg = msg.replace("`float`", "an integer")
    return RequestBodyError(f"{path or 'request body'}: {msg}", field=path or None)


def _choices(type_: type[_Body], path: str) -> list[Any]:
    """The values a Literal field at ``path`` takes ([] when it is not one)."""
    parent, _, name = path.rpartition(".")
    field = {f.name: f.type for f in msgspec.structs.fields(_struct_at(type_, parent))}.get(name)
    return [v for t in _leaves(field) if typing.get_origin(t) is typing.Literal for v in typing.get_args(t)]


def _struct_at(type_: type[_Body], path: str) -> type[_Body]:
    """The Struct type a dotted field path (from a ValidationError) lands in; ``type_`` for ''."""
    for name in filter(None, re.sub(r"\[\d+\]", "", path).split(".")):
        field = {f.name: f.type for f in msgspec.structs.fields(type_)}.get(name)
        nested = [t for t in _leaves(field) if isinstance(t, type) and issubclass(t, _Body)]
        if not nested:
            break
        type_ = nested[0]
    return type_


def _leaves(t: Any) -> list[Any]:
    origin = typing.get_origin(t)
    if origin is Annotated:
        return _leaves(typing.get_args(t)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for a in typing.get_args(t) for leaf in _leaves(a)]
    return [t]


class _Out(msgspec.Struct):
    """A response body."""


#: why an item is in an answer (``Item.reason``): the shopper's recent items (the user tower, or an
#: item seen before), the co-occurrence neighbours of their recent items (the hybrid ranker), the
#: bundle's popularity (a shopper without history), a text query, or closeness to one item (similar)
REASONS = ("history", "co-occurrence", "popular", "search", "similar")
#: what ``Item.score`` measures: cosine similarity to the query (user vector, item or text), a
#: fused score (the hybrid ranker, hybrid search), BM25 relative to the best match (lexical
#: search), or the bundle's popularity (cold start)
SCORE_KINDS = ("cosine", "fused", "lexical", "popularity")


class Item(_Out):
    """One item of an answer: what a shop's app shows, and why it is there (named Item and Event for
    OpenAPI tools, which infer resources, and links between operations, from schema names)."""

    item_id: str
    score: Annotated[
        float,
        Meta(
            description="Higher is better within one answer; score_kind says what it measures (never compare "
            "scores of different kinds)."
        ),
    ]
    title: str
    category: str | None
    brand: str | None
    price: float | None
    in_stock: bool
    score_kind: Annotated[
        typing.Literal[SCORE_KINDS],  # type: ignore[valid-type]
        Meta(
            description="cosine: similarity to the query (similar, search, recommend with the tower); fused: the "
            "hybrid ranker's score; popularity: the bundle's popularity (a shopper without history)."
        ),
    ]
    reason: Annotated[
        typing.Literal[REASONS],  # type: ignore[valid-type]
        Meta(
            description="history: close to the shopper's recent item in reason_items; co-occurrence: often "
            "chosen with the recent items in reason_items (best first); popular: a shopper without history; "
            "search: matches the text; similar: close to the item in reason_items."
        ),
    ]
    reason_items: Annotated[list[str], Meta(description="The item ids that drove the reason (may be empty).")]
    reason_text: Annotated[str, Meta(min_length=1, description="The reason in English, e.g. “because you viewed …”.")]


class Event(_Out):
    """One stored shopper event."""

    item_id: str
    action: Action
    ts: float


#: the ``error`` member of every refusal
ERROR_KINDS = (
    "bad_request",
    "internal_error",
    "invalid_input",
    "invalid_json",
    "length_required",
    "method_not_allowed",
    "not_found",
    "payload_too_large",
    "request_timeout",
    "unavailable",
    "unknown_item",
    "unknown_filter_value",
    "unsupported_media_type",
    "uri_too_long",
    "validation_error",
    "headers_too_large",
)


class ErrorBody(_Out):
    error: typing.Literal[ERROR_KINDS]  # type: ignore[valid-type]
    message: Annotated[str, Meta(description="What is wrong, naming the field.")]
    field: Annotated[str, Meta(description="The offending field, e.g. where.min_price (when one is).")] | (
        msgspec.UnsetType
    ) = _UNSET


class RecordResponse(_Out):
    user_id: str
    item_id: str
    action: Action
    ts: float


class RecommendResponse(_Out):
    user_id: str
    catalog_version: int
    items: list[Item]


class SimilarResponse(_Out):
    item_id: str
    catalog_version: int
    items: list[Item]


class SearchResponse(_Out):
    catalog_version: int
    items: list[Item]


class UserItems(_Out):
    user_id: str
    items: list[Item]


class RecommendManyResponse(_Out):
    catalog_version: Annotated[int, Meta(description="One catalog version for every shopper of the batch.")]
    results: Annotated[list[UserItems], Meta(description="One entry per user id, in the request's order.")]


class TextItems(_Out):
    text: str
    items: list[Item]


class SearchManyResponse(_Out):
    catalog_version: int
    results: Annotated[list[TextItems], Meta(description="One entry per text, in the request's order.")]


class HistoryResponse(_Out):
    user_id: str
    events: list[Event]


class ForgetResponse(_Out):
    user_id: str
    forgotten: typing.Literal[True]


class HealthResponse(_Out):
    status: typing.Literal["ok"]
    catalog_version: int
    catalog_items: Annotated[int, Meta(ge=1)]


class BundleStatus(_Out):
    path: str
    format_version: int
    created_at: str
    model_sha256: str
    publisher_key_id: str


class CatalogStatus(_Out):
    version: int
    items: int
    bundle_version: Annotated[int, Meta(description="the bundle's own catalog version")]
    source: typing.Literal["bundle", "synced"]


class RequestCounts(_Out):
    total: int
    by_operation: dict[str, int]
    by_status: dict[str, int]


class StatusResponse(_Out):
    service: typing.Literal["shelfrank"]
    version: Annotated[str, Meta(description="shelfrank package version")]
    bundle: BundleStatus
    catalog: CatalogStatus
    board: str | None
    threads: int
    isa: Annotated[str, Meta(description="the top-k kernel path in use")]
    started_at: Annotated[str, Meta(description="UTC, ISO 8601 (date-time)")]
    uptime_s: float
    requests: Annotated[RequestCounts, Meta(description="requests answered before this one")]


RESPONSE_BODIES: tuple[type[_Out], ...] = (
    ErrorBody,
    RecordResponse,
    RecommendResponse,
    SimilarResponse,
    SearchResponse,
    RecommendManyResponse,
    SearchManyResponse,
    HistoryResponse,
    ForgetResponse,
    HealthResponse,
    StatusResponse,
)


def service_schemas(ref_template: str = "#/components/schemas/{name}") -> dict[str, Any]:
    """JSON Schema (2020-12, as OpenAPI 3.1 takes it) of every request and response body, by type name."""
    _, components = msgspec.json.schema_components((*REQUEST_BODIES, *RESPONSE_BODIES), ref_template=ref_template)
    return components
