"""flash / status / rollback against a real OpenSSH server on 127.0.0.1, including a dropped link."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import textwrap
import threading
import time

import pytest

from shelfrank.deploy.flash import FlashError, flash, remote_call
from shelfrank.device import bundle as bfmt
from shelfrank.testing import build_device_bundle, publisher_key, sign_manifest_as_is


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssh-bundle")
    bundle, pub = build_device_bundle(root, n_items=150, seed=23)
    return bundle, pub, publisher_key(bundle)


@pytest.fixture()
def ssh_env(sshd, monkeypatch):
    for k, v in sshd.env.items():
        monkeypatch.setenv(k, v)
    return sshd


def test_flash_status_rollback_over_ssh(signed, ssh_env, tmp_path):
    bundle, pub, _ = signed
    url = ssh_env.url(str(tmp_path / "board"))
    r1 = flash(bundle, url, board="x86-64-dev", python=sys.executable, log=lambda _m: None)
    r2 = flash(bundle, url, board="x86-64-dev", python=sys.executable, log=lambda _m: None)
    assert (r1.slot, r2.slot, r2.previous) == ("slot_a", "slot_b", "slot_a")
    st = remote_call(url, "status", sys.executable)
    assert st["current"] == "slot_b" and st["trusted_key_id"] == bfmt.key_id(bfmt.load_public_key(pub))
    rb = remote_call(url, "rollback", sys.executable)
    assert rb["current"] == "slot_a" and os.readlink(tmp_path / "board" / "current") == "slot_a"


def test_unreachable_target_changes_nothing(signed, tmp_path, monkeypatch, sshd):
    for k, v in sshd.env.items():
        monkeypatch.setenv(k, v)
    url = f"ssh://{sshd.user}@127.0.0.1:9{tmp_path.as_posix()}/board"  # nothing listens on port 9
    with pytest.raises(FlashError, match="unreachable"):
        flash(signed[0], url, board="x86-64-dev", python=sys.executable, log=lambda _m: None)
    assert not (tmp_path / "board").exists()


def test_target_without_python(signed, ssh_env, tmp_path):
    with pytest.raises(FlashError, match="cannot import"):
        flash(
            signed[0],
            ssh_env.url(str(tmp_path / "b")),
            board="x86-64-dev",
            python="/usr/bin/false",
            log=lambda _m: None,
        )


RELAY = textwrap.dedent(
    """
    # The "network" between flash and the board: a throttled TCP relay that the test can cut.
    import os, socket, sys, threading, time
    host, port, pidfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    open(pidfile, "w").write(str(os.getpid()))
    s = socket.create_connection((host, port))
    def up():
        while True:
            data = os.read(0, 65536)
            if not data:
                s.shutdown(socket.SHUT_WR)
                return
            s.sendall(data)
            time.sleep(len(data) / 8e6)  # about 8 MB/s
    threading.Thread(target=up, daemon=True).start()
    while True:
        data = s.recv(65536)
        if not data:
            break
        os.write(1, data)
    """
)


def test_connection_dropped_mid_copy_then_resume(signed, sshd, tmp_path, monkeypatch):
    bundle, _, key = signed
    # a bundle with a 40 MB file, so that the copy through the throttled relay takes seconds
    big = tmp_path / "big"
    shutil.copytree(bundle, big)
    (big / "zz_padding.bin").write_bytes(os.urandom(40 << 20))
    m = json.loads((big / "manifest.json").read_text())
    bfmt.sign_bundle(big, m, bfmt.load_private_key(key))
    relay, pidfile = tmp_path / "relay.py", tmp_path / "relay.pid"
    relay.write_text(RELAY)
    cfg = tmp_path / "ssh_config"
    cfg.write_text(sshd.ssh_config.read_text() + f"\n  ProxyCommand {sys.executable} {relay} %h %p {pidfile}\n")
    monkeypatch.setenv("SHELFRANK_SSH_CONFIG", str(cfg))
    url = sshd.url(str(tmp_path / "board"))
    flash(bundle, url, board="x86-64-dev", python=sys.executable, log=lambda _m: None)  # slot_a serving

    errors: list[BaseException] = []

    def run():
        try:
            flash(big, url, board="x86-64-dev", python=sys.executable, log=lambda _m: None)
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=run)
    th.start()
    padding = tmp_path / "board" / "slot_b.partial" / "zz_padding.bin"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (padding.exists() and padding.stat().st_size > (4 << 20)):
        time.sleep(0.02)
    assert padding.exists(), "the copy never started"
    os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the link drops mid-file
    th.join(60)
    assert errors and isinstance(errors[0], FlashError) and "interrupted" in str(errors[0]), errors
    assert os.readlink(tmp_path / "board" / "current") == "slot_a"  # still serving the old slot
    monkeypatch.setenv("SHELFRANK_SSH_CONFIG", str(sshd.ssh_config))  # a good link again
    res = flash(big, url, board="x86-64-dev", python=sys.executable, log=lambda _m: None)
    assert res.slot == "slot_b" and res.skipped_files > 0  # resumed: the finished files were not resent
    assert os.readlink(tmp_path / "board" / "current") == "slot_b"


# ---- issue 13, finding 2: no option injection into the local tar ----------------------------------

INJECTED = ["--checkpoint=1", "--checkpoint-action=exec=touch pwned"]


def test_ssh_send_passes_names_as_names(signed, ssh_env, tmp_path, monkeypatch):
    """Names that look like tar options are refused, and tar gets ``--`` before the names anyway:
    on eb93b13 ``--checkpoint-action=exec=…`` ran a command on the flashing machine."""
    from shelfrank.deploy.target import SshTarget

    bundle, _, _ = signed
    local = tmp_path / "local"
    shutil.copytree(bundle, local)
    for name in INJECTED:
        (local / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    t = SshTarget(ssh_env.url(str(tmp_path / "board")))
    err = _raised(lambda: t.send(local, [*INJECTED, "encoder.onnx"], f"{t.prefix}/slot_a.partial"))
    assert not (local / "pwned").exists() and not (tmp_path / "pwned").exists()  # no command ran
    assert isinstance(err, FlashError) and "not a safe relative file name" in str(err)
    t.send(local, ["encoder.onnx", "catalog/emb.i8.npy"], f"{t.prefix}/slot_a.partial")  # names still work
    assert (tmp_path / "board" / "slot_a.partial" / "catalog" / "emb.i8.npy").is_file()


def test_bundle_with_option_like_names_is_refused_before_tar_runs(signed, ssh_env, tmp_path, monkeypatch):
    bundle, _, _ = signed
    evil = tmp_path / "evil"
    shutil.copytree(bundle, evil)
    for name in INJECTED:
        (evil / name).write_bytes(b"x")
    m = json.loads((evil / "manifest.json").read_text())
    m["files"].update({name: bfmt.sha256_file(evil / name) for name in INJECTED})
    key, _ = bfmt.generate_keypair(tmp_path / "attacker.key")
    sign_manifest_as_is(evil, m, key)
    monkeypatch.chdir(tmp_path)
    url = ssh_env.url(str(tmp_path / "board"))
    err = _raised(lambda: flash(evil, url, board="x86-64-dev", python=sys.executable, log=lambda _m: None))
    assert not (evil / "pwned").exists() and not (tmp_path / "pwned").exists()  # no command ran
    assert isinstance(err, bfmt.BundleError) and "safe relative file name" in str(err)
    assert not (tmp_path / "board").exists()  # refused before the target was touched


def _raised(fn) -> BaseException | None:
    try:
        fn()
    except Exception as e:
        return e
    return None


def test_a_board_of_another_architecture_is_refused_over_ssh(signed, ssh_env, tmp_path, capsys):
    """Issue 15 defect 7: rpi5 (aarch64) flashed to this x86-64 sshd passed without a word."""
    import platform

    from shelfrank.cli import main

    assert platform.machine() == "x86_64"  # the sshd runs here
    url = ssh_env.url(str(tmp_path / "board"))
    argv = ["flash", str(signed[0]), "--board", "rpi5", "--to", url, "--python", sys.executable]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: board rpi5 expects aarch64 (expected_isa neon_dot)")
    assert err[0].endswith("is x86_64; flash the board config of that machine, or pass --allow-arch-mismatch")
    assert not (tmp_path / "board" / "current").exists()
    assert main([*argv, "--allow-arch-mismatch"]) == 0
    assert os.readlink(tmp_path / "board" / "current") == "slot_a"
