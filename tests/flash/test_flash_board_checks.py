"""flash and the board config (issue 15): a board file is carried to the target, the board's limits
are enforced, and a board whose architecture is not the target's is caught."""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path

import pytest

from shelfrank.cli import main
from shelfrank.deploy.flash import flash
from shelfrank.deploy.target import TargetLayout
from shelfrank.testing import build_device_bundle

QUIET = {"log": lambda _m: None}


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    root = tmp_path_factory.mktemp("board-checks-bundle")
    return build_device_bundle(root, n_items=60, seed=5)


def board_file(path: Path, base: str = "x86-64-dev", **changes) -> Path:
    """A copy of a packaged board with some keys changed (``name`` too: the target does not know it)."""
    text = (resources.files("shelfrank") / "firmware_configs" / f"{base}.toml").read_text(encoding="utf-8")
    for key, value in changes.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", lambda _m, k=key, v=value: f"{k} = {json.dumps(v)}", text)
        assert n == 1, key
    path.write_text(text)
    return path


def _one_error_line(rc: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and lines and lines[-1].startswith("error: ") and needle in lines[-1], err
    assert "Traceback" not in err


def test_a_board_file_is_carried_to_the_target(signed, tmp_path, monkeypatch, capsys):
    """Defect 5: `--board ./tiny.toml` passed the pre-checks, copied, then failed the health check on
    the target, which was handed the board's name ('tiny'), not its file."""
    monkeypatch.chdir(tmp_path)
    board_file(tmp_path / "tiny.toml", name="tiny", threads=2)
    prefix = tmp_path / "board"
    rc = main(["flash", str(signed[0]), "--board", "./tiny.toml", "--to", str(prefix)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "health check on the target" in out
    assert (prefix / TargetLayout.BOARD_FILE).read_text() == (tmp_path / "tiny.toml").read_text()
    assert json.loads((prefix / "state" / "flash.log").read_text().splitlines()[-1])["board"] == "tiny"
    assert not list(prefix.glob("*.board.toml"))
    # the carried file is what the target's commands take as --board
    state = prefix / "state"
    argv = ["health", str(prefix / "current"), "--public-key", str(state / "trusted.pub"), "--state", str(state)]
    rc = main([*argv, "--board", str(prefix / TargetLayout.BOARD_FILE)])
    assert rc == 0, capsys.readouterr().err
    # a packaged board afterwards: the target uses its own copy, the carried file goes
    flash(signed[0], str(prefix), board="x86-64-dev", **QUIET)
    assert not (prefix / TargetLayout.BOARD_FILE).exists() and os.readlink(prefix / "current") == "slot_b"


def test_a_board_file_goes_into_the_serve_unit(tmp_path):
    from shelfrank.deploy import systemd as svc
    from shelfrank.device.boards import load_board

    cfg = load_board(board_file(tmp_path / "tiny.toml", name="tiny", service_user="daemon"))
    command = ["/usr/bin/python3", "-m", "shelfrank.cli"]
    units = svc.render_units(cfg, "/opt/s", command=command, board=f"/opt/s/{TargetLayout.BOARD_FILE}")
    assert f"serve /opt/s/current --board /opt/s/{TargetLayout.BOARD_FILE} " in units[svc.SERVICE]
    assert " --board tiny " in svc.render_units(cfg, "/opt/s", command=command)[svc.SERVICE]


def test_flash_refuses_a_catalog_above_the_board_limit(signed, tmp_path, capsys):
    """Defect 6: `max_catalog_items` was read by nothing (a 3,000-item bundle flashed to a board limited to 10)."""
    board = board_file(tmp_path / "small.toml", name="small", max_catalog_items=10)
    prefix = tmp_path / "board"
    rc = main(["flash", str(signed[0]), "--board", str(board), "--to", str(prefix)])
    _one_error_line(rc, capsys.readouterr().err, f"60 items, above board small's max_catalog_items = 10 ({board})")
    assert not prefix.exists()  # refused before the target changed


def test_the_runtime_refuses_a_catalog_above_the_board_limit(signed, tmp_path, capsys):
    """Defect 6, at open: `health` (what flash runs on the target) and `serve` with --board."""
    bundle, pub = signed
    board = board_file(tmp_path / "small.toml", name="small", max_catalog_items=59)
    state = tmp_path / "state"
    rc = main(["health", str(bundle), "--public-key", str(pub), "--state", str(state), "--board", str(board)])
    _one_error_line(rc, capsys.readouterr().err, "60 items, above board small's max_catalog_items = 59")
    rc = main(["serve", str(bundle), "--public-key", str(pub), "--state", str(state), "--board", str(board)])
    _one_error_line(rc, capsys.readouterr().err, "60 items, above board small's max_catalog_items = 59")
    board_file(board, name="small", max_catalog_items=60)
    rc = main(["health", str(bundle), "--public-key", str(pub), "--state", str(state), "--board", str(board)])
    assert rc == 0, capsys.readouterr().err


def test_sync_refuses_a_catalog_above_the_board_limit(sync_bundle, tmp_path, capsys):
    """Defect 6, at sync: refused by the index's count, before anything is downloaded; the old catalog serves."""
    from shelfrank.device import Recommender
    from shelfrank.testing import publish_records

    b = sync_bundle
    pub_dir = tmp_path / "published"
    publish_records(b["bundle"], pub_dir, [*b["records"], b["new_item"]], b["key"])
    board = board_file(tmp_path / "small.toml", name="small", max_catalog_items=len(b["records"]))
    state = tmp_path / "state"
    argv = ["sync", str(b["bundle"]), str(pub_dir), "--public-key", str(b["pub"]), "--state", str(state)]
    rc = main([*argv, "--board", str(board)])
    _one_error_line(rc, capsys.readouterr().err, f"{len(b['records']) + 1} items, above board small's")
    assert not any((state / "downloads").glob("*"))  # nothing downloaded
    rec = Recommender.open(b["bundle"], public_key=b["pub"], state_dir=state)
    assert rec.catalog.version == 1
    rec.close()
    assert main([*argv, "--board", "x86-64-dev"]) == 0


def test_bundle_files_above_the_memory_budget(tmp_path):
    """Defect 6: memory_budget_mb against what the runtime holds of a bundle (a lower bound of its RSS)."""
    from shelfrank.device.boards import BoardLimitError, check_bundle_memory, load_board

    cfg = load_board(board_file(tmp_path / "small.toml", name="small", memory_budget_mb=16))
    check_bundle_memory(cfg, 16 * 2**20, "bundle b")
    with pytest.raises(
        BoardLimitError, match=r"bundle b: the runtime would hold 17 MiB of its files, above board small"
    ):
        check_bundle_memory(cfg, 17 * 2**20, "bundle b")


def test_resident_bytes_leave_out_what_a_query_only_samples(signed, tmp_path):
    """Issue 16: the two-pass scan reads the codes whole and only ~first_pass_r rows, so its int8 rows (like
    SQLite, the id/title columns and the neighbour table, memory-mapped and sampled) are not resident."""
    from shelfrank.device import bundle as bfmt
    from shelfrank.device.boards import HELD_BYTES_PER_ITEM, SAMPLED_ROLES, load_board, resident_bytes

    bundle, pub = signed
    manifest = bfmt.verify_bundle(bundle, public_key=bfmt.load_public_key(pub))
    sizes = {f: (bundle / f).stat().st_size for f in manifest.files}
    roles = manifest.catalog.files
    assert "codes" in roles and "rows" in roles
    sampled = sum(sizes[p] for r, p in roles.items() if r in SAMPLED_ROLES)
    held = HELD_BYTES_PER_ITEM * manifest.catalog.count
    exact = load_board(board_file(tmp_path / "exact.toml", name="exact", first_pass="exact"))
    binary = load_board(board_file(tmp_path / "binary.toml", name="binary", first_pass="binary"))
    assert resident_bytes(exact, manifest, sizes) == sum(sizes.values()) - sampled + held
    assert resident_bytes(binary, manifest, sizes) == sum(sizes.values()) - sampled - sizes[roles["rows"]] + held


def test_a_board_of_another_architecture_is_warned_about_for_a_directory(signed, tmp_path):
    """Defect 7: a directory may be a board's root mounted here, so a warning, not a refusal."""
    import platform

    other = "rpi5" if platform.machine() == "x86_64" else "x86-64-dev"
    logs: list[str] = []
    flash(signed[0], str(tmp_path / "a"), board=other, log=logs.append)
    warned = [m for m in logs if m.startswith("warning: ")]
    assert len(warned) == 1 and f"board {other} expects" in warned[0], logs
    logs.clear()
    flash(signed[0], str(tmp_path / "b"), board=other, allow_arch_mismatch=True, log=logs.append)
    assert not [m for m in logs if m.startswith("warning: ")]
    logs.clear()
    here = "x86-64-dev" if platform.machine() == "x86_64" else "rpi5"
    flash(signed[0], str(tmp_path / "c"), board=here, log=logs.append)
    assert not [m for m in logs if m.startswith("warning: ")]
