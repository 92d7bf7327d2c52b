"""The bundle manifest (``manifest.json``): what a bundle holds, signed as one document.

export/bundle_writer.py writes it, device/bundle.py signs and verifies it; unknown fields are
ignored with a log line (forward compatibility).
"""

from __future__ import annotations

import typing
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
    log_unknown_fields,
)
from shelfrank.errors import BundleError

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
    #: the mean of the dequantised rows, the centre of the binary codes (``files.codes``,
    #: device/codes.py); None in a bundle without codes (the runtime scans it exactly)
    mean: Annotated[list[Annotated[float, Meta(ge=-1.0, le=1.0)]], Meta(max_length=4096)] | None = None


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
        if self.catalog.mean is not None and len(self.catalog.mean) != self.model.dim:
            raise BundleError(
                f"{where}: catalog.mean has {len(self.catalog.mean)} numbers, not model.dim {self.model.dim}; "
                "re-export the bundle"
            )
        if "codes" in self.catalog.files and self.catalog.mean is None:
            raise BundleError(
                f"{where}: catalog.files.codes without catalog.mean (the codes' centre); re-export the bundle"
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
