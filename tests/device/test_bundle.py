"""Bundle signing and verification (device side; no torch)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from shelfrank.device import bundle as bfmt
from shelfrank.errors import BundleError, SignatureError


@pytest.fixture()
def signed(tmp_path):
    key_path, pub_path = bfmt.generate_keypair(tmp_path / "keys" / "pub.key")
    root = tmp_path / "bundle"
    (root / "catalog").mkdir(parents=True)
    (root / "encoder.onnx").write_bytes(os.urandom(4096))
    (root / "catalog" / "emb.i8.npy").write_bytes(os.urandom(1000))
    manifest = bfmt.sign_bundle(root, {"model": {"file": "encoder.onnx"}}, bfmt.load_private_key(key_path))
    return root, key_path, pub_path, manifest


def test_round_trip(signed):
    root, _, pub, manifest = signed
    assert set(manifest["files"]) == {"encoder.onnx", "catalog/emb.i8.npy", "publisher.pub"}
    assert bfmt.verify_bundle(root)["publisher_key_id"] == manifest["publisher_key_id"]
    assert bfmt.verify_bundle(root, public_key=pub)["model"] == {"file": "encoder.onnx"}
    assert bfmt.verify_bundle(root, public_key=pub.read_bytes())


def test_private_key_is_private_and_never_overwritten(signed):
    _, key, pub, _ = signed
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    with pytest.raises(BundleError, match="refusing to overwrite"):
        bfmt.generate_keypair(key)


def test_other_publisher_is_refused(signed, tmp_path):
    root, *_ = signed
    _, other_pub = bfmt.generate_keypair(tmp_path / "other.key")
    with pytest.raises(SignatureError, match="trusted publisher key"):
        bfmt.verify_bundle(root, public_key=other_pub)


def test_resigned_by_attacker_with_own_key_fails_against_pinned_key(signed, tmp_path):
    root, _, pub, _ = signed
    evil, _ = bfmt.generate_keypair(tmp_path / "evil.key")
    (root / "encoder.onnx").write_bytes(b"evil")
    bfmt.sign_bundle(root, {"model": {"file": "encoder.onnx"}}, bfmt.load_private_key(evil))
    bfmt.verify_bundle(root)  # self-consistent, which is why the device pins the key
    with pytest.raises(SignatureError):
        bfmt.verify_bundle(root, public_key=pub)


@pytest.mark.parametrize(
    "rel", ["encoder.onnx", "catalog/emb.i8.npy", "manifest.json", "manifest.sig", "publisher.pub"]
)
def test_one_flipped_bit_anywhere_is_caught(signed, rel):
    root, *_ = signed
    p = root / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises((BundleError, SignatureError)):
        bfmt.verify_bundle(root)


def test_missing_file_named(signed):
    root, *_ = signed
    (root / "catalog" / "emb.i8.npy").unlink()
    with pytest.raises(BundleError, match=r"emb\.i8\.npy: listed in the manifest but missing"):
        bfmt.verify_bundle(root)


def test_unknown_format_version_names_both(signed):
    root, *_ = signed
    m = json.loads((root / "manifest.json").read_text())
    m["format_version"] = 99
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"format_version 99 .* reads format_version 1"):
        bfmt.verify_bundle(root)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        bfmt.verify_bundle(tmp_path / "nope")
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(BundleError, match="corrupt manifest"):
        bfmt.verify_bundle(tmp_path)
