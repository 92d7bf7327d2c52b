"""The bundle format: file hashing, Ed25519 signing and verification (the manifest's type: formats.Manifest).

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

from shelfrank.device.formats import FORMAT_VERSION, Manifest
from shelfrank.errors import BundleError, SignatureError

logger = logging.getLogger(__name__)
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


def read_manifest(root: str | Path) -> tuple[Manifest, bytes]:
    """The typed manifest of the bundle at ``root`` (not verified) and its exact bytes.

    Raises:
        BundleError: no such directory, an unreadable or corrupt manifest, an unsupported
            ``format_version``, or a field that breaks :class:`~shelfrank.device.formats.Manifest`.
    """
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read the manifest: {e}") from e
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{path}: corrupt manifest (not UTF-8 JSON): {e}") from e
    return Manifest.decode(data, str(path)), data


def verify_bundle(root: str | Path, *, public_key=None, check_files: bool = True) -> Manifest:
    """Check the signature and every file hash; return the typed manifest.

    Args:
        public_key: the trusted key (object, PEM bytes or path). None trusts the bundle's own
            ``publisher.pub`` (development only: the caller logs that it is unpinned).

    Decoding the manifest is its validation (typed errors only, nothing opened yet); then the
    signature over its exact bytes; then the files. A listed name that is not a safe relative path,
    or a file that resolves outside ``root`` (a symlink), is refused, so nothing downstream (flash,
    sync, the recommender) joins an unchecked name onto a directory.

    Raises:
        BundleError: missing/corrupt manifest, unknown format_version, a field of the wrong type
            (named), an unsafe name, sub-hashes that disagree with ``files``, a file missing,
            changed or outside the bundle.
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
    if manifest.publisher_key_id != key_id(bundled):
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
        _check_catalog_listed(manifest, root / MANIFEST)
        real_root = root.resolve()
        for rel, digest in manifest.files.items():
            p = root / rel
            if not p.resolve().is_relative_to(real_root):
                raise BundleError(f"{p}: listed in the manifest but resolves outside the bundle (a symlink?)")
            if not p.is_file():
                raise BundleError(f"{p}: listed in the manifest but missing")
            if sha256_file(p) != digest:
                raise BundleError(f"{p}: sha256 differs from the manifest (corrupt or tampered)")
    return manifest


def _check_catalog_listed(manifest: Manifest, where: Path) -> None:
    """The catalog files the runtime opens (fixed names under ``catalog/``) are in the signed table."""
    from shelfrank.device.catalog_files import FILES

    for role, name in FILES.items():
        rel = f"catalog/{name}"
        if manifest.catalog.files.get(role) != rel or rel not in manifest.files:
            raise BundleError(
                f"{where}: catalog.files.{role} must be {rel!r} and listed in the signed 'files' table "
                "(the runtime reads that file); re-export the bundle"
            )
