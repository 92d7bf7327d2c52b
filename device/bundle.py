"""The bundle format: manifest schema, file hashing, Ed25519 signing and verification.

Lives on the device side (export imports it) so both sides share one definition. A bundle is a
directory (a ``.tar`` when flashed) holding ``manifest.json``, ``manifest.sig`` (Ed25519 over the
exact manifest bytes), ``publisher.pub`` and the files the manifest lists with their sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from shelfrank.errors import BundleError, SignatureError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "publisher.pub"


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---- keys -----------------------------------------------------------------------------------


def generate_keypair(out: str | Path) -> tuple[Path, Path]:
    """Write an Ed25519 private key to ``out`` (PEM, mode 0600) and its public key to ``out.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    if out.exists():
        raise BundleError(f"{out}: exists; refusing to overwrite a private key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_bytes(public_pem(key.public_key()))
    return out, pub


def load_private_key(path: str | Path):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SignatureError(f"{path}: not a readable PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key (make one with 'shelfrank keygen')")
    return key


def load_public_key(key: str | Path | bytes):
    """An Ed25519 public key from PEM bytes or a PEM file path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    where = "public key bytes"
    if not isinstance(key, bytes):
        where = str(key)
        try:
            key = Path(key).read_bytes()
        except OSError as e:
            raise SignatureError(f"{where}: cannot read the public key: {e}") from e
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        pub = serialization.load_pem_public_key(key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SignatureError(f"{where}: not a PEM public key: {e}") from e
    if not isinstance(pub, Ed25519PublicKey):
        raise SignatureError(f"{where}: not an Ed25519 public key")
    return pub


def public_pem(pub) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(pub) -> str:
    """sha256 of the raw 32-byte Ed25519 public key, hex."""
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# ---- writing and reading --------------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def hash_tree(root: str | Path, exclude: tuple[str, ...] = (MANIFEST, SIGNATURE)) -> dict[str, str]:
    """{relative posix path: sha256} of every regular file under ``root``."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = sha256_file(p)
    return out


def sign_bundle(root: str | Path, manifest: dict[str, Any], private_key) -> dict[str, Any]:
    """Add ``publisher.pub``, the file hashes and the key id to ``manifest``; write and sign it."""
    root = Path(root)
    pub = private_key.public_key()
    (root / PUBLIC_KEY).write_bytes(public_pem(pub))
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["publisher_key_id"] = key_id(pub)
    manifest["files"] = hash_tree(root)
    data = canonical_json(manifest)
    (root / MANIFEST).write_bytes(data)
    (root / SIGNATURE).write_bytes(private_key.sign(data))
    return manifest


def read_manifest(root: str | Path) -> tuple[dict[str, Any], bytes]:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read the manifest: {e}") from e
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: corrupt manifest (not UTF-8 JSON): {e}") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format_version {version!r} is not supported by this runtime "
            f"(it reads format_version {FORMAT_VERSION}); update shelfrank or re-export the bundle"
        )
    return manifest, data


def verify_bundle(root: str | Path, *, public_key=None, check_files: bool = True) -> dict[str, Any]:
    """Check the signature and every file hash; return the manifest.

    Args:
        public_key: the trusted key (object, PEM bytes or path). None trusts the bundle's own
            ``publisher.pub`` (development only: the caller logs that it is unpinned).

    Raises:
        BundleError: missing/corrupt manifest, unknown format_version, a file missing or changed.
        SignatureError: the signature does not verify, or the bundle's key is not the trusted one.
    """
    from cryptography.exceptions import InvalidSignature

    root = Path(root)
    manifest, data = read_manifest(root)
    bundled = load_public_key(root / PUBLIC_KEY)
    trusted = (
        bundled
        if public_key is None
        else (public_key if hasattr(public_key, "verify") else load_public_key(public_key))
    )
    if key_id(trusted) != key_id(bundled):
        raise SignatureError(
            f"{root}: signed by key {key_id(bundled)[:16]}…, but the trusted publisher key is {key_id(trusted)[:16]}…"
        )
    if manifest.get("publisher_key_id") != key_id(bundled):
        raise SignatureError(f"{root / MANIFEST}: publisher_key_id does not match {PUBLIC_KEY}")
    try:
        sig = (root / SIGNATURE).read_bytes()
    except OSError as e:
        raise SignatureError(f"{root / SIGNATURE}: missing signature: {e}") from e
    try:
        trusted.verify(sig, data)
    except InvalidSignature as e:
        raise SignatureError(f"{root / SIGNATURE}: the manifest signature does not verify") from e
    if check_files:
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise BundleError(f"{root / MANIFEST}: no 'files' table")
        for rel, digest in files.items():
            p = root / rel
            if not p.is_file():
                raise BundleError(f"{p}: listed in the manifest but missing")
            if sha256_file(p) != digest:
                raise BundleError(f"{p}: sha256 differs from the manifest (corrupt or tampered)")
        check_encoders(manifest, files, root / MANIFEST)
    return manifest


def check_encoders(manifest: dict[str, Any], files: dict[str, str], where: Path) -> None:
    """The optional ``encoders`` table: {variant: {file, sha256, …}}, each file hashed in ``files``.

    Additional encoders (``fp16`` for GPU providers) are an optional, additive part of format 1: a
    runtime that predates them still verifies their files through ``files`` and runs the int8
    ``model``, which stays complete on its own (the catalog rows are its embeddings).

    Raises:
        BundleError: an entry that is not a table, lacks ``file``/``sha256``, or whose file or
            hash disagrees with the ``files`` table.
    """
    encoders = manifest.get("encoders", {})
    if not isinstance(encoders, dict):
        raise BundleError(f"{where}: 'encoders' must be a table of {{variant: {{file, sha256}}}}")
    for variant, entry in encoders.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "sha256" not in entry:
            raise BundleError(f"{where}: encoders.{variant} must be a table with 'file' and 'sha256'")
        if files.get(entry["file"]) != entry["sha256"]:
            raise BundleError(
                f"{where}: encoders.{variant} file {entry['file']!r} is not in the signed 'files' table "
                "with the same sha256"
            )
