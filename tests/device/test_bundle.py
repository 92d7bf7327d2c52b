"""Bundle signing and verification (device side; no torch)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from shelfrank.device import bundle as bfmt
from shelfrank.errors import BundleError, SignatureError
from shelfrank.testing import sign_manifest_as_is

FILES = (
    "encoder.onnx",
    "tokenizer.json",
    "user_tower.onnx",
    "catalog/emb.i8.npy",
    "catalog/scale.f32.npy",
    "catalog/items.sqlite",
)
CATALOG = {"rows": "catalog/emb.i8.npy", "scales": "catalog/scale.f32.npy", "items": "catalog/items.sqlite"}


def _entries(root: Path) -> dict:
    """The manifest entries a runtime needs, with the sub-hashes the writer computes."""
    h = {rel: bfmt.sha256_file(root / rel) for rel in FILES}
    return {
        "model": {"file": "encoder.onnx", "sha256": h["encoder.onnx"], "dim": 8, "max_len": 16},
        "tokenizer": {"file": "tokenizer.json", "sha256": h["tokenizer.json"]},
        "catalog": {
            "version": 1,
            "count": 3,
            "dim": 8,
            "files": CATALOG,
            "sha256": {role: h[rel] for role, rel in CATALOG.items()},
        },
        "user_tower": {"kind": "sequence", "file": "user_tower.onnx", "sha256": h["user_tower.onnx"], "max_events": 4},
    }


@pytest.fixture()
def signed(tmp_path):
    key_path, pub_path = bfmt.generate_keypair(tmp_path / "keys" / "pub.key")
    root = tmp_path / "bundle"
    (root / "catalog").mkdir(parents=True)
    for rel in FILES:
        (root / rel).write_bytes(os.urandom(1000))
    manifest = bfmt.sign_bundle(root, _entries(root), bfmt.load_private_key(key_path))
    return root, key_path, pub_path, manifest


def test_round_trip(signed):
    root, _, pub, manifest = signed
    assert set(manifest["files"]) == {*FILES, "publisher.pub"}
    m = bfmt.verify_bundle(root)
    assert isinstance(m, bfmt.Manifest) and m.publisher_key_id == manifest["publisher_key_id"]
    assert bfmt.verify_bundle(root, public_key=pub).model.file == "encoder.onnx"
    assert bfmt.verify_bundle(root, public_key=pub.read_bytes())["model"] == manifest["model"]  # the raw view


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
    bfmt.sign_bundle(root, _entries(root), bfmt.load_private_key(evil))
    bfmt.verify_bundle(root)  # self-consistent, which is why the device pins the key
    with pytest.raises(SignatureError):
        bfmt.verify_bundle(root, public_key=pub)


@pytest.mark.parametrize("rel", [*FILES, "manifest.json", "manifest.sig", "publisher.pub"])
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


# ---- issue 13: the manifest is a typed, bounded contract ----------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../state/trusted.pub.EVIL",
        "../../x",
        "/etc/passwd",
        "catalog/../../x",
        "-rf",
        "--checkpoint=1",
        "a\nb",
        "a\x00b",
        "a//b",
        "./a",
        "catalog/",
    ],
)
def test_signed_files_table_takes_only_safe_names(signed, tmp_path, name):
    """Finding 1: a correctly signed bundle whose ``files`` table names a path outside the bundle
    (or one a shell or tar would misread) is refused, naming the entry."""
    root, key, pub, manifest = signed
    outside = tmp_path / "x"
    outside.write_bytes(b"planted")
    m = dict(manifest, files={**manifest["files"], name: bfmt.sha256_file(outside)})
    sign_manifest_as_is(root, m, key)
    with pytest.raises(BundleError, match="safe relative file name") as ei:
        bfmt.verify_bundle(root, public_key=pub)
    assert "'files' (a key)" in str(ei.value)


def test_a_listed_file_that_is_a_symlink_out_of_the_bundle_is_refused(signed, tmp_path):
    root, key, pub, _ = signed
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(64))
    (root / "catalog" / "leak.bin").symlink_to(secret)
    bfmt.sign_bundle(root, _entries(root), bfmt.load_private_key(key))  # hash_tree follows the link
    with pytest.raises(BundleError, match=r"leak\.bin: listed in the manifest but resolves outside the bundle"):
        bfmt.verify_bundle(root, public_key=pub)


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_manifest_is_a_bundle_error(signed, depth):
    """Finding 7 (manifest): deep nesting is a typed error, never a RecursionError."""
    root, *_ = signed
    (root / "manifest.json").write_bytes(b'{"format_version": 1, "x": ' + b"[" * depth + b"]" * depth + b"}")
    with pytest.raises(BundleError, match="nested too deeply"):
        bfmt.verify_bundle(root)


@pytest.mark.parametrize(
    "section,field,value,needle",
    [
        (
            "catalog",
            "sha256",
            {"rows": "0" * 64},
            r"catalog\.files\.rows file 'catalog/emb\.i8\.npy' is not in the signed",
        ),
        ("user_tower", "sha256", "0" * 64, "user_tower file 'user_tower.onnx' is not in the signed"),
        ("model", "sha256", "1" * 64, "model file 'encoder.onnx' is not in the signed"),
        ("tokenizer", "file", "other.json", "tokenizer file 'other.json' is not in the signed"),
        ("catalog", "sha256", {"norms": "0" * 64}, r"catalog\.sha256\.norms has no catalog\.files\.norms"),
        ("catalog", "dim", 9, r"catalog\.dim 9 != model\.dim 8"),
    ],
)
def test_sub_hashes_and_dimensions_must_agree(signed, section, field, value, needle):
    """Finding 6: the manifest's own sub-hashes (catalog.sha256, user_tower.sha256, …) are compared
    with the signed ``files`` table at open."""
    root, key, pub, manifest = signed
    m = json.loads(json.dumps(manifest))
    m[section][field] = value
    sign_manifest_as_is(root, m, key)
    with pytest.raises(BundleError, match=needle):
        bfmt.verify_bundle(root, public_key=pub)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: m["model"].update(dim="8"), r"'model\.dim': Expected `int`, got `str`"),
        (lambda m: m["model"].update(max_len=0), r"'model\.max_len': Expected `int` >= 1"),
        (lambda m: m["user_tower"].pop("max_events"), "missing required field `max_events`"),
        (lambda m: m.update(files={}), r"'files': Expected `object` of length >= 1"),
        (lambda m: m["files"].update({"encoder.onnx": "XYZ"}), r"'files\[\.\.\.\]': Expected `str` of length >= 64"),
        (lambda m: m.update(model=[1, 2]), r"'model': Expected `object`, got `array`"),
        (lambda m: m["encoders"].update(fp16={"file": "../x.onnx", "sha256": "0" * 64}), "safe relative file name"),
    ],
)
def test_wrong_types_are_named(signed, edit, needle):
    root, key, pub, manifest = signed
    m = json.loads(json.dumps(manifest))
    m.setdefault("encoders", {})
    edit(m)
    sign_manifest_as_is(root, m, key)
    with pytest.raises(BundleError, match=needle):
        bfmt.verify_bundle(root, public_key=pub)


def test_unknown_fields_are_ignored_with_a_log_line(signed, caplog):
    """Forward compatibility: a newer writer's fields (a reranker, neighbour tables) open, logged once."""
    root, key, pub, manifest = signed
    m = json.loads(json.dumps(manifest))
    m["reranker"] = {"file": "ranker.onnx", "deep": [[[{"x": 1}]]]}
    m["model"]["attention"] = "flash"
    m["catalog"]["files"]["neighbours"] = "catalog/emb.i8.npy"
    sign_manifest_as_is(root, m, key)
    with caplog.at_level(logging.INFO, logger="shelfrank.device.formats"):
        got = bfmt.verify_bundle(root, public_key=pub)
    assert got["reranker"]["file"] == "ranker.onnx" and got.catalog.files["neighbours"] == "catalog/emb.i8.npy"
    assert "ignoring field(s) this runtime does not know: model.attention, reranker" in caplog.text


def _resign(bundle: Path, tmp_path: Path, edit) -> Path:
    key, pub = bfmt.generate_keypair(tmp_path / "resign.key")
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    sign_manifest_as_is(bundle, m, key)
    return pub


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda m: m["model"].update(max_len="32"), r"'model\.max_len': Expected `int`"),
        (
            lambda m: m.setdefault("encoders", {}).update(fp16={"file": "nope.onnx", "sha256": "0" * 64}),
            "encoders.fp16",
        ),
        (lambda m: m["tokenizer"].update(file=5), r"'tokenizer\.file': Expected `str`"),
    ],
)
def test_a_bad_signed_bundle_is_refused_at_open_not_at_the_first_query(bundle_and_key, tmp_path, edit, needle):
    """The text encoder loads on the first search, so whatever it reads from the manifest is
    checked by ``Recommender.open`` already."""
    from shelfrank.device import Recommender

    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_and_key[0], bundle)
    pub = _resign(bundle, tmp_path, edit)
    with pytest.raises(BundleError, match=needle):
        Recommender.open(bundle, public_key=pub, state_dir=tmp_path / "state")


@pytest.mark.parametrize("edit", ["drop_role", "drop_file"])
def test_the_catalog_files_the_runtime_reads_are_signed(signed, edit):
    root, key, pub, manifest = signed
    m = json.loads(json.dumps(manifest))
    if edit == "drop_role":
        del m["catalog"]["files"]["scales"], m["catalog"]["sha256"]["scales"]
    else:
        del m["files"]["catalog/items.sqlite"], m["catalog"]["sha256"]["items"]
    sign_manifest_as_is(root, m, key)
    with pytest.raises(BundleError, match=r"catalog\.files\.(scales|items) must be 'catalog/"):
        bfmt.verify_bundle(root, public_key=pub)
