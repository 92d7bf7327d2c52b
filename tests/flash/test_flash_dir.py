"""flash / status / rollback against a directory target, with the failure cases."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from shelfrank.deploy.flash import FlashError, flash, rollback_local, status_local
from shelfrank.device import bundle as bfmt
from shelfrank.testing import build_device_bundle, publisher_key, sign_manifest_as_is


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("flash-bundle")
    bundle, pub = build_device_bundle(root, n_items=150, seed=21)
    return bundle, pub, publisher_key(bundle)


def _current(prefix: Path) -> str:
    return os.readlink(prefix / "current")


def test_flash_twice_then_rollback(signed, tmp_path):
    bundle, pub, _ = signed
    prefix = tmp_path / "board"
    r1 = flash(bundle, str(prefix), board="x86-64-dev", log=lambda _m: None)
    assert (r1.slot, r1.previous) == ("slot_a", None) and _current(prefix) == "slot_a"
    assert (prefix / "state" / "trusted.pub").read_bytes() == pub.read_bytes()
    r2 = flash(bundle, str(prefix), board="x86-64-dev", log=lambda _m: None)
    assert (r2.slot, r2.previous) == ("slot_b", "slot_a") and _current(prefix) == "slot_b"
    st = status_local(prefix)
    assert st["current"] == "slot_b" and st["slot_a"]["catalog_version"] == 1
    assert st["trusted_key_id"] == bfmt.key_id(bfmt.load_public_key(pub))
    assert st["last_flash"]["slot"] == "slot_b"
    rb = rollback_local(prefix)
    assert rb["current"] == "slot_a" and _current(prefix) == "slot_a"
    from shelfrank.device import Recommender

    rec = Recommender.open(prefix / "current")  # pinned key and PREFIX/state found from the layout
    assert rec.state_dir == prefix / "state" and len(rec.recommend("u", k=2)) == 2
    rec.close()
    log = [json.loads(x) for x in (prefix / "state" / "flash.log").read_text().splitlines()]
    assert [e.get("slot", e.get("rollback_to")) for e in log] == ["slot_a", "slot_b", "slot_a"]


def test_other_publisher_refused_unless_repinned(signed, tmp_path):
    bundle, _, _ = signed
    prefix = tmp_path / "board"
    flash(bundle, str(prefix), board="rpi5", log=lambda _m: None)
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    key, other_pub = bfmt.generate_keypair(tmp_path / "k2")
    m = json.loads((other / "manifest.json").read_text())
    bfmt.sign_bundle(other, m, bfmt.load_private_key(key))
    with pytest.raises(FlashError, match="pass --public-key to re-pin"):
        flash(other, str(prefix), board="rpi5", log=lambda _m: None)
    assert _current(prefix) == "slot_a"
    flash(other, str(prefix), board="rpi5", public_key=other_pub, log=lambda _m: None)
    assert _current(prefix) == "slot_b"
    assert (prefix / "state" / "trusted.pub").read_bytes() == other_pub.read_bytes()


def test_tampered_bundle_refused_before_touching_target(signed, tmp_path):
    bundle, _, _ = signed
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    (bad / "user_tower.onnx").write_bytes(b"x")
    prefix = tmp_path / "board"
    with pytest.raises(bfmt.BundleError, match=r"user_tower\.onnx"):
        flash(bad, str(prefix), board="rpi4", log=lambda _m: None)
    assert not prefix.exists()


def test_unknown_board_refused_before_touching_target(signed, tmp_path):
    with pytest.raises(ValueError, match="unknown board 'toaster'"):
        flash(signed[0], str(tmp_path / "board"), board="toaster", log=lambda _m: None)
    assert not (tmp_path / "board").exists()


def test_target_without_shelfrank_python(signed, tmp_path):
    with pytest.raises(FlashError, match=r"cannot import shelfrank\.device"):
        flash(signed[0], str(tmp_path / "board"), board="rpi4", python="/bin/false", log=lambda _m: None)


def _fake_python(tmp_path: Path) -> str:
    """A target python that imports fine but whose health check fails (a broken runtime)."""
    p = tmp_path / "python-broken-health"
    p.write_text(
        "#!/bin/sh\n"
        'case "$*" in *"shelfrank.cli health"*) echo "onnxruntime: illegal instruction" >&2; exit 1;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return str(p)


def test_failed_health_check_keeps_previous_slot(signed, tmp_path):
    bundle, _, _ = signed
    prefix = tmp_path / "board"
    flash(bundle, str(prefix), board="rpi5", log=lambda _m: None)
    with pytest.raises(FlashError, match="health check of slot_b failed, slot_a stays current"):
        flash(bundle, str(prefix), board="rpi5", python=_fake_python(tmp_path), log=lambda _m: None)
    assert _current(prefix) == "slot_a" and not (prefix / "slot_b.partial").exists()
    from shelfrank.device import Recommender

    rec = Recommender.open(prefix / "current")
    assert len(rec.recommend("u", k=1)) == 1
    rec.close()


def test_write_error_on_target_keeps_previous_slot(signed, tmp_path):
    bundle, _, _ = signed
    prefix = tmp_path / "board"
    flash(bundle, str(prefix), board="rpi5", log=lambda _m: None)
    (prefix / "slot_b.partial").write_text("a file where the slot folder must go")  # writes fail
    with pytest.raises(FlashError):
        flash(bundle, str(prefix), board="rpi5", log=lambda _m: None)
    assert _current(prefix) == "slot_a"


def test_resume_sends_only_missing_files(signed, tmp_path):
    bundle, _, _ = signed
    prefix = tmp_path / "board"
    partial = prefix / "slot_a.partial"
    partial.mkdir(parents=True)
    shutil.copy2(bundle / "encoder.onnx", partial / "encoder.onnx")  # left by an interrupted flash
    (partial / "tokenizer.json").write_text("half a file")
    res = flash(bundle, str(prefix), board="rpi5", log=lambda _m: None)
    assert res.skipped_files == 1 and res.sent_files == len(bfmt.verify_bundle(bundle)["files"]) + 1
    assert _current(prefix) == "slot_a"


def test_rollback_without_other_slot(signed, tmp_path):
    prefix = tmp_path / "board"
    with pytest.raises(FlashError, match="nothing flashed"):
        rollback_local(prefix)
    flash(signed[0], str(prefix), board="rpi5", log=lambda _m: None)
    with pytest.raises(FlashError, match="no other slot"):
        rollback_local(prefix)


# ---- issue 13, finding 1: a flash never writes outside its target ---------------------------------


def test_self_signed_bundle_naming_files_outside_the_slot_writes_nothing(signed, tmp_path):
    """A bundle signed by its own key (trusted on a first flash) whose ``files`` table lists
    ``../../x`` and ``../state/trusted.pub.EVIL``: refused before the target is touched."""
    bundle, _, _ = signed
    evil = tmp_path / "evil" / "bundle"
    shutil.copytree(bundle, evil)
    planted = {"../../x": tmp_path / "x", "../state/trusted.pub.EVIL": tmp_path / "evil" / "state" / "trusted.pub.EVIL"}
    m = json.loads((evil / "manifest.json").read_text())
    for rel, src in planted.items():
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(b"-----BEGIN PUBLIC KEY-----\nattacker\n")
        m["files"][rel] = bfmt.sha256_file(src)
    key, _ = bfmt.generate_keypair(tmp_path / "attacker.key")
    sign_manifest_as_is(evil, m, key)
    prefix = tmp_path / "t" / "board"
    with pytest.raises(bfmt.BundleError, match="safe relative file name"):
        flash(evil, str(prefix), board="rpi5", log=lambda _m: None)
    assert not (tmp_path / "t" / "x").exists() and not (prefix / "state" / "trusted.pub.EVIL").exists()
    assert not prefix.exists()


@pytest.mark.parametrize("name", ["../x", "../../x", "/tmp/x", "a/../../x", "-x", "a\nb"])
def test_dir_target_refuses_unsafe_names(signed, tmp_path, name):
    from shelfrank.deploy.target import DirTarget

    bundle, _, _ = signed
    t = DirTarget(str(tmp_path / "board"))
    with pytest.raises(FlashError, match="not a safe relative file name"):
        t.send(bundle, ["encoder.onnx", name], f"{t.prefix}/slot_a.partial")
    assert not (tmp_path / "board" / "slot_a.partial").exists()  # checked before the first write


def test_dir_target_never_writes_through_a_symlinked_folder(signed, tmp_path):
    from shelfrank.deploy.target import DirTarget

    bundle, _, _ = signed
    outside = tmp_path / "outside"
    outside.mkdir()
    partial = tmp_path / "board" / "slot_a.partial"
    partial.mkdir(parents=True)
    (partial / "catalog").symlink_to(outside)  # planted on the target
    t = DirTarget(str(tmp_path / "board"))
    with pytest.raises(FlashError, match="resolves outside"):
        t.send(bundle, ["catalog/emb.i8.npy"], str(partial))
    with pytest.raises(FlashError, match="outside the target"):
        t.send(bundle, ["encoder.onnx"], str(tmp_path / "elsewhere"))
    assert list(outside.iterdir()) == [] and not (tmp_path / "elsewhere").exists()
