"""The CLI's error discipline: every ShelfrankError is one ``error:`` line on stderr and a non-zero
exit, never a traceback (issue 13)."""

from __future__ import annotations

import json
import shutil

import pytest

from shelfrank.cli import main
from shelfrank.device import bundle as bfmt
from shelfrank.errors import ShelfrankError


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def _assert_one_error_line(rc: int, err: str, needle: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err


def test_deeply_nested_manifest(bundle_and_key, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_and_key[0], bundle)
    (bundle / "manifest.json").write_bytes(b'{"format_version": 1, "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    rc, err = _run(
        capsys, ["health", str(bundle), "--public-key", str(bundle / "publisher.pub"), "--state", str(tmp_path / "s")]
    )
    _assert_one_error_line(rc, err, "nested too deeply")


def test_signed_manifest_with_a_wrong_type(bundle_and_key, tmp_path, capsys):
    from shelfrank.testing import sign_manifest_as_is

    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_and_key[0], bundle)
    key, pub = bfmt.generate_keypair(tmp_path / "k")
    m = json.loads((bundle / "manifest.json").read_text())
    m["user_tower"]["max_events"] = "6"
    sign_manifest_as_is(bundle, m, key)
    rc, err = _run(capsys, ["sync", str(bundle), str(tmp_path / "nowhere"), "--public-key", str(pub)])
    _assert_one_error_line(rc, err, "'user_tower.max_events': Expected `int`, got `str`")


def test_board_typo_names_file_and_key(tmp_path, capsys):
    from shelfrank.testing import write_cpu_as_gpu_board

    board = write_cpu_as_gpu_board(tmp_path / "b.toml")
    board.write_text(board.read_text() + "thread = 4\n")
    rc, err = _run(capsys, ["flash", str(tmp_path / "no-bundle"), "--board", str(board), "--to", str(tmp_path / "t")])
    _assert_one_error_line(rc, err, f"{board}: unknown key 'thread'")


def test_a_multi_line_message_is_one_line(monkeypatch, capsys):
    import shelfrank.flash

    def boom(*_a, **_k):
        raise shelfrank.flash.FlashError("health check failed:\nTraceback (most recent call last):\n  boom\n")

    monkeypatch.setattr(shelfrank.flash, "rollback_local", boom)
    rc, err = _run(capsys, ["rollback", "/nonexistent-prefix"])
    assert rc == 2 and err == "error: health check failed: | Traceback (most recent call last): | boom\n"


@pytest.mark.parametrize("exc", [ShelfrankError("x"), PermissionError(13, "Permission denied", "/etc/k")])
def test_typed_and_os_errors_exit_2(monkeypatch, capsys, exc):
    import shelfrank.flash

    def boom(*_a, **_k):
        raise exc

    monkeypatch.setattr(shelfrank.flash, "status_local", boom)
    rc, err = _run(capsys, ["status", "/nonexistent-prefix"])
    _assert_one_error_line(rc, err, str(exc))
