"""``shelfrank publish``: catalog updates as a signed, versioned index + snapshot + deltas.

The output folder can be served by any static HTTP server or CDN, or read as a directory::

    index.json                 {"signed": {...}, "signature": hex, "key_id": hex}
    snapshots/<v>/             items.sqlite, emb.i8.npy, scale.f32.npy  (the whole catalog v)
    deltas/<v-1>-<v>/          changes.json, rows.i8.npy, scales.f32.npy (removes + upserts)
    rules/<n>.json             merchandising rules version n (``publish_rules``; the index's ``rules``)
    stock/<n>.json             live stock feed version n for one catalog version (``publish_stock``)

The index and ``changes.json`` are the typed structs of ``device/formats/index.py`` (``IndexSigned``,
``DeltaChanges``), the ones ``sync`` decodes: what this writes is checked against the same
constraints before it is signed. Rules and stock (``device/formats/rules.py``) have their own versions:
publishing one re-signs the index with its file's entry, with no new catalog version; a catalog
publish keeps the rules entry and drops the stock one (the new catalog carries its own stock).

Items whose text is unchanged keep their rows (with the learned residual); new or re-worded items
are embedded with the bundle's own int8 encoder, exactly as a device would. ``index.json`` is
written last, by rename, so a reader never sees an index naming files that are not there yet.
Needs no torch.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from shelfrank.device import bundle as bfmt
from shelfrank.device import formats
from shelfrank.device.catalog_files import CatalogData, read_catalog_dir, write_catalog_dir
from shelfrank.device.encoder import TextEncoder
from shelfrank.device.formats.rules import StockItems
from shelfrank.device.formats.rules import encode as encode_doc
from shelfrank.device.kernel import quantize_rows
from shelfrank.device.text import item_text
from shelfrank.errors import ExportValidationError
from shelfrank.export.data import Catalog

logger = logging.getLogger(__name__)

INDEX = formats.INDEX_NAME
INDEX_FORMAT = formats.INDEX_FORMAT


def _file_entry(root: Path, rel: str) -> dict[str, Any]:
    p = root / rel
    return {"path": rel, "sha256": bfmt.sha256_file(p), "size": p.stat().st_size}


def sign_index(signed: dict[str, Any], key) -> bytes:
    body = bfmt.canonical_json(signed)
    pub = key.public_key()
    doc = {"signed": signed, "signature": key.sign(body).hex(), "key_id": bfmt.key_id(pub)}
    return bfmt.canonical_json(doc)


def publish(
    bundle: str | Path,
    out: str | Path,
    catalog: Catalog,
    *,
    key,
    expires_days: float = 30.0,
    keep_deltas: int = 5,
    now: _dt.datetime | None = None,
) -> dict[str, Any]:
    """Publish ``catalog`` (the shop's whole current item list) as the next version in ``out``.

    Returns the signed part of the new index.
    """
    bundle, out = Path(bundle), Path(out)
    manifest = bfmt.verify_bundle(bundle, public_key=key.public_key())
    model = manifest["model"]
    dim = int(model["dim"])
    fields = manifest["text"]["item_fields"]
    sep = manifest["text"]["separator"]
    prev_signed = None
    if (out / INDEX).exists():
        raw, _ = formats.decode_index_envelope((out / INDEX).read_bytes(), where=str(out / INDEX))
        prev_signed = formats.decode_index_signed(raw, where=str(out / INDEX))
        if prev_signed.model_sha256 != model["sha256"]:
            raise bfmt.BundleError(f"{out / INDEX}: published for another encoder; publish into a new folder")
        prev = read_catalog_dir(out / "snapshots" / str(prev_signed.version))
        prev_version = prev_signed.version
    else:
        prev = read_catalog_dir(bundle / "catalog")
        prev_version = int(manifest["catalog"]["version"])
    version = prev_version + 1
    prev_index = {it["item_id"]: i for i, it in enumerate(prev.items)}

    items, rows, scales, to_embed = [], np.zeros((len(catalog), dim), np.int8), np.zeros(len(catalog), np.float32), []
    for j in range(len(catalog)):
        rec = catalog.record(j)
        i = prev_index.get(rec["item_id"])
        old = prev.items[i] if i is not None else None
        rec["popularity"] = float(old["popularity"]) if old else 0.0
        items.append(rec)
        if old is not None and item_text(old, fields, sep) == item_text(rec, fields, sep):
            rows[j], scales[j] = prev.rows[i], prev.scales[i]
        else:
            to_embed.append(j)
    if to_embed:
        enc = TextEncoder(bundle / model["file"], bundle / manifest["tokenizer"]["file"], max_len=int(model["max_len"]))
        emb = enc.encode([item_text(items[j], fields, sep) for j in to_embed])
        r8, s8 = quantize_rows(emb)
        rows[to_embed], scales[to_embed] = r8, s8
    # the co-occurrence neighbours follow the items (an added item has none until the next export)
    nbr = prev.neighbors_for(np.asarray([prev_index.get(it["item_id"], -1) for it in items], np.int64))
    new = CatalogData(items, rows, scales, nbr)
    new.check(dim, "publish")

    snap_rel = f"snapshots/{version}"
    snap_files = write_catalog_dir(out / snap_rel, new)
    new_ids = {it["item_id"] for it in items}
    removed = [it["item_id"] for it in prev.items if it["item_id"] not in new_ids]

    def changed(j: int) -> bool:
        i = prev_index.get(items[j]["item_id"])
        return i is None or items[j] != prev.items[i] or not np.array_equal(rows[j], prev.rows[i])

    upserts = [j for j in range(len(items)) if changed(j)]
    delta_rel = f"deltas/{prev_version}-{version}"
    ddir = out / delta_rel
    ddir.mkdir(parents=True, exist_ok=True)
    changes = formats.convert(
        {"from": prev_version, "to": version, "remove": removed, "upsert": [items[j] for j in upserts]},
        formats.DeltaChanges,
        where="publish: the delta",
        error=ExportValidationError,
        fix="fix the item in the items file",
    )
    (ddir / "changes.json").write_bytes(formats.encode_delta_changes(changes))
    np.save(ddir / "rows.i8.npy", rows[upserts] if upserts else np.zeros((0, dim), np.int8))
    np.save(ddir / "scales.f32.npy", scales[upserts] if upserts else np.zeros(0, np.float32))

    now = now or _dt.datetime.now(_dt.timezone.utc)
    kept = [d for d in (prev_signed.deltas if prev_signed else []) if (out / d.files[0].path).exists()]
    deltas = msgspec.to_builtins(kept)
    deltas.append(
        {
            "from": prev_version,
            "to": version,
            "files": [_file_entry(out, f"{delta_rel}/{n}") for n in formats.DELTA_FILES],
        }
    )
    deltas = deltas[-keep_deltas:]
    signed_raw = {
        "format_version": INDEX_FORMAT,
        "version": version,
        "created_at": now.isoformat(timespec="seconds"),
        "expires": (now + _dt.timedelta(days=expires_days)).isoformat(timespec="seconds"),
        "model_sha256": model["sha256"],
        "dim": dim,
        "count": len(items),
        "snapshot": {"version": version, "files": [_file_entry(out, f"{snap_rel}/{n}") for n in snap_files.values()]},
        "deltas": deltas,
    }
    if prev_signed is not None and prev_signed.rules is not None:  # the rules outlive a catalog version
        signed_raw["rules"] = msgspec.to_builtins(prev_signed.rules)
    # the same struct and constraints sync decodes: never sign an index the devices refuse
    signed = formats.encode_index_signed(
        formats.convert(signed_raw, formats.IndexSigned, where="publish: the index", error=ExportValidationError)
    )
    tmp = out / f".{INDEX}.{os.getpid()}"
    tmp.write_bytes(sign_index(signed, key))
    os.replace(tmp, out / INDEX)
    # a device that is not on a delta's base takes the newest snapshot; older ones are unused
    for old_snap in (out / "snapshots").iterdir():
        if old_snap.name != str(version):
            shutil.rmtree(old_snap, ignore_errors=True)
    logger.info(
        "published catalog version %d: %d items, %d removed, %d added or changed (%d embedded)",
        version,
        len(items),
        len(removed),
        len(upserts),
        len(to_embed),
    )
    return signed


# ---- merchandising rules and live stock (device/formats/rules.py) --------------------------------


def _published_index(out: Path, key) -> dict[str, Any]:
    """The signed part of ``out/index.json`` (as published), after checking ``key`` signed it."""
    from cryptography.exceptions import InvalidSignature

    path = out / INDEX
    if not path.exists():
        raise ExportValidationError(f"{path}: no such index; publish a catalog (--items) into {out} first")
    raw, sig = formats.decode_index_envelope(path.read_bytes(), where=str(path))
    try:
        key.public_key().verify(sig, bfmt.canonical_json(raw))
    except InvalidSignature as e:
        raise bfmt.SignatureError(f"{path}: not signed by this key; publish with the key that signed it") from e
    formats.decode_index_signed(raw, where=str(path))
    return raw


def _write_signed(out: Path, rel: str, body: dict[str, Any], signed_raw: dict[str, Any], field: str, key) -> None:
    """Write ``body`` at ``out/rel``, then re-sign the index with its entry as ``field`` (written last,
    by rename); older files of that kind but the previous one are removed."""
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(bfmt.canonical_json(body))
    os.replace(tmp, path)
    prev = signed_raw.get(field, {}).get("path") if isinstance(signed_raw.get(field), dict) else None
    signed = dict(signed_raw, **{field: _file_entry(out, rel)})
    formats.convert(signed, formats.IndexSigned, where="publish: the index", error=ExportValidationError)
    tmp = out / f".{INDEX}.{os.getpid()}"
    tmp.write_bytes(sign_index(signed, key))
    os.replace(tmp, out / INDEX)
    for old in path.parent.glob("*.json"):  # a device mid-sync may still fetch the previous one
        if old.name != path.name and f"{path.parent.name}/{old.name}" != prev:
            old.unlink(missing_ok=True)


def publish_rules(out: str | Path, rules: dict[str, Any], *, key) -> dict[str, Any]:
    """Publish a merchandising rules document (``formats.Rules`` as a dict; its ``version`` is set to
    the next one) into the publish folder ``out``, checked against the newest published catalog.
    Returns the rules as written.

    Raises:
        ExportValidationError: no index in ``out``, or rules that break the format or name a
            category, brand or pinned item the catalog lacks.
        SignatureError: ``out``'s index was signed with another key.
    """
    from shelfrank.device.catalog import Catalog as DeviceCatalog
    from shelfrank.device.rules import Compiled
    from shelfrank.errors import RulesError

    out = Path(out)
    signed_raw = _published_index(out, key)
    index = formats.decode_index_signed(signed_raw, where=str(out / INDEX))
    version = 1
    if index.rules is not None and (out / index.rules.path).exists():
        prev = formats.decode_rules(msgspec.json.decode((out / index.rules.path).read_bytes()), where=index.rules.path)
        version = prev.version + 1
    if not isinstance(rules, dict):
        raise ExportValidationError(f"publish --rules: a rules document is a JSON object, got {type(rules).__name__}")
    doc = formats.convert(
        {"format_version": formats.RULES_FORMAT, **rules, "version": version},
        formats.Rules,
        where="publish --rules",
        error=ExportValidationError,
        fix="fix the rules document",
    )
    cat = DeviceCatalog(out / "snapshots" / str(index.version), version=index.version, dim=index.dim)
    try:
        Compiled(doc, cat, strict=True)
    except RulesError as e:
        raise ExportValidationError(f"publish --rules: {e}") from e
    body = encode_doc(doc)
    _write_signed(out, f"rules/{version}.json", body, signed_raw, "rules", key)
    logger.info("published rules version %d for catalog version %d", version, index.version)
    return body


def publish_stock(out: str | Path, updates: dict[str, Any], *, key, now: _dt.datetime | None = None) -> dict[str, Any]:
    """Publish live stock/price ``{item_id: {"in_stock": bool, "price": float | None}}`` for the newest
    published catalog into ``out``: merged into that catalog's previous feed (a feed holds every
    change since the catalog was published), as the next feed version. Returns the feed as written.

    Raises:
        ExportValidationError: no index in ``out``, an entry that breaks the format, an item id the
            catalog lacks, or more than ``formats.MAX_STOCK_ITEMS`` items in the feed.
        SignatureError: ``out``'s index was signed with another key.
    """
    import sqlite3

    out = Path(out)
    signed_raw = _published_index(out, key)
    index = formats.decode_index_signed(signed_raw, where=str(out / INDEX))
    if not isinstance(updates, dict):
        raise ExportValidationError(
            f"publish --stock: expected {{item_id: {{in_stock, price}}}}, got {type(updates).__name__}"
        )
    new = formats.convert(updates, StockItems, where="publish --stock", error=ExportValidationError)
    con = sqlite3.connect(f"file:{out / 'snapshots' / str(index.version) / 'items.sqlite'}?mode=ro", uri=True)
    try:
        have = {r[0] for r in con.execute("SELECT item_id FROM items")}
    finally:
        con.close()
    unknown = [i for i in new if i not in have]
    if unknown:
        raise ExportValidationError(
            f"publish --stock: {len(unknown)} item id(s) not in catalog version {index.version} "
            f"({', '.join(map(repr, unknown[:5]))}); publish them with --items first"
        )
    version, items = 1, {}
    if index.stock is not None and (out / index.stock.path).exists():
        prev = formats.decode_stock_feed(
            msgspec.json.decode((out / index.stock.path).read_bytes()), where=index.stock.path
        )
        version = prev.version + 1
        if prev.catalog_version == index.version:
            items = {k: msgspec.to_builtins(e) for k, e in prev.items.items()}
    for item_id, entry in new.items():  # per field: an update of the price keeps the stock, and so on
        items[item_id] = {**items.get(item_id, {}), **msgspec.to_builtins(entry)}
    now = now or _dt.datetime.now(_dt.timezone.utc)
    feed = formats.convert(
        {
            "format_version": formats.STOCK_FORMAT,
            "version": version,
            "catalog_version": index.version,
            "created_at": now.isoformat(timespec="seconds"),
            "items": items,
        },
        formats.StockFeed,
        where="publish --stock",
        error=ExportValidationError,
        fix=f"at most {formats.MAX_STOCK_ITEMS} items per feed; publish a catalog (--items) to fold them in",
    )
    body = encode_doc(feed)
    _write_signed(out, f"stock/{version}.json", body, signed_raw, "stock", key)
    logger.info("published stock feed version %d (%d items) for catalog version %d", version, len(items), index.version)
    return body


def publish_update(
    bundle: str | Path,
    out: str | Path,
    *,
    key,
    items: str | Path | None = None,
    rules: str | Path | None = None,
    stock: str | Path | None = None,
    expires_days: float = 30.0,
) -> list[str]:
    """``shelfrank publish``: the catalog in ``items`` (a new version), then the rules document in
    ``rules`` and the stock updates in ``stock`` (JSON files), each when given; one line per part.

    Raises:
        ExportValidationError: none of the three given, a file that is not JSON, or what
            :func:`publish`, :func:`publish_rules` and :func:`publish_stock` raise.
    """
    from shelfrank.export.data import load_items

    if items is None and rules is None and stock is None:
        raise ExportValidationError("publish: nothing to publish; give --items, --rules or --stock")
    lines = []
    if items is not None:
        signed = publish(bundle, out, load_items(items), key=key, expires_days=expires_days)
        lines.append(
            f"published catalog version {signed['version']} ({signed['count']:,} items) to {out}; "
            f"expires {signed['expires']}"
        )
    if rules is not None:
        body = publish_rules(out, _json_file(rules, "--rules"), key=key)
        lines.append(f"published rules version {body['version']} to {out}")
    if stock is not None:
        body = publish_stock(out, _json_file(stock, "--stock"), key=key)
        lines.append(
            f"published stock feed version {body['version']} ({len(body['items']):,} items) for catalog "
            f"version {body['catalog_version']} to {out}"
        )
    return lines


def _json_file(path: str | Path, option: str) -> Any:
    try:
        return msgspec.json.decode(Path(path).read_bytes())
    except OSError as e:
        raise ExportValidationError(f"{option} {path}: cannot read ({e.strerror or e})") from e
    except msgspec.DecodeError as e:
        raise ExportValidationError(f"{option} {path}: not valid JSON ({e})") from e
