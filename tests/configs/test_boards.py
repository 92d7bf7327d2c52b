"""Every packaged board config against the schema; bad configs name the file and the key."""

from __future__ import annotations

import pytest

from shelfrank.device.boards import BOARD_KEYS, ISAS, BoardConfigError, board_schema, load_board, packaged_boards
from shelfrank.errors import UnknownBoardError

BOARDS = ["jetson-agx-orin", "jetson-orin-nano", "rk3588", "rpi4", "rpi5", "x86-64-dev"]


def test_the_packaged_boards_are_there():
    assert packaged_boards() == BOARDS


@pytest.mark.parametrize("name", BOARDS)
def test_packaged_config_is_valid(name):
    cfg = load_board(name)
    assert cfg.name == name and cfg.expected_isa in ISAS and cfg.threads >= 1
    assert cfg.providers[-1] == "CPUExecutionProvider"
    # the service settings (flash --service): the sync URL is per shop, so no packaged config has one
    assert cfg.serve_port == 8377 and cfg.sync_url == "" and cfg.sync_random_delay_s == 900
    assert cfg.sync_schedule == "hourly" and cfg.service_user == "shelfrank"
    if name.startswith("jetson"):
        assert cfg.gpu_providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
        assert "fp16" in cfg.notes and cfg.ort_providers() == ["CPUExecutionProvider"]


def test_pi4_never_expects_dotprod():
    assert load_board("rpi4").expected_isa == "neon" and load_board("rpi5").expected_isa == "neon_dot"


def _write(tmp_path, text):
    p = tmp_path / "board.toml"
    p.write_text(text)
    return p


VALID = "\n".join(
    [
        'name = "t"',
        'description = "d"',
        'cpu = "c"',
        'expected_isa = "neon"',
        "threads = 2",
        'providers = ["CPUExecutionProvider"]',
        'precision = "int8"',
        "max_catalog_items = 10",
        "memory_budget_mb = 64",
        'install_prefix = "/opt/x"',
        'service_user = "u"',
        'python = "python3"',
    ]
)


def test_a_valid_file_by_path(tmp_path):
    cfg = load_board(_write(tmp_path, VALID))
    assert cfg.threads == 2
    # the optional service keys default to a service on 127.0.0.1:8377 and no sync timer
    assert (cfg.serve_port, cfg.sync_url, cfg.sync_schedule, cfg.sync_random_delay_s) == (8377, "", "hourly", 900)


def test_service_keys_by_path(tmp_path):
    text = VALID + '\nserve_port = 9000\nsync_url = "https://cdn.example/s/"\nsync_schedule = "*-*-* 03:30:00"'
    cfg = load_board(_write(tmp_path, text + "\nsync_random_delay_s = 0"))
    assert (cfg.serve_port, cfg.sync_url, cfg.sync_schedule, cfg.sync_random_delay_s) == (
        9000,
        "https://cdn.example/s/",
        "*-*-* 03:30:00",
        0,
    )


@pytest.mark.parametrize(
    "edit,needle",
    [
        (VALID + '\ncolour = "red"', "unknown key 'colour'"),
        (VALID.replace("threads = 2", 'threads = "2"'), "key 'threads': Expected `int`, got `str`"),
        (VALID.replace("threads = 2", "threads = true"), "key 'threads': Expected `int`, got `bool`"),
        (VALID.replace("threads = 2", "threads = 0"), "key 'threads': Expected `int` >= 1"),
        (
            VALID.replace('expected_isa = "neon"', 'expected_isa = "sse9"'),
            "key 'expected_isa': Invalid enum value 'sse9'",
        ),
        (VALID.replace('python = "python3"', ""), "missing key 'python'"),
        (VALID.replace('install_prefix = "/opt/x"', 'install_prefix = "opt"'), "key 'install_prefix'"),
        (VALID + "\n[provider_options.CUDAExecutionProvider]\ndevice_id = 0", "provider_options for"),
        (VALID + "\nserve_port = 0", "key 'serve_port': Expected `int` >= 1"),
        (VALID + "\nserve_port = 70000", "key 'serve_port': Expected `int` <= 65535"),
        (VALID + '\nserve_port = "8377"', "key 'serve_port': Expected `int`, got `str`"),
        (VALID + '\nsync_url = "ftp://cdn.example/"', "key 'sync_url' must be an http"),
        (VALID + '\nsync_url = "shop/catalog"', "key 'sync_url' must be an http"),
        (VALID + '\nsync_schedule = ""', "key 'sync_schedule': Expected `str` that is not blank"),
        (VALID + '\nsync_schedule = "hourly\\n[Service]"', "key 'sync_schedule': .* no control characters"),
        (VALID + "\nsync_random_delay_s = -1", "key 'sync_random_delay_s': Expected `int` >= 0"),
        (VALID + '\nsource = "x.toml"', "unknown key 'source'"),
        (
            VALID + "\n[provider_options]\nCPUExecutionProvider = 1",
            r"key 'provider_options\[\.\.\.\]': Expected `object`",
        ),
        (VALID.replace('python = "python3"', "python = 1979-05-27"), "key 'python': Expected `str`, got `date`"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, edit, needle):
    path = _write(tmp_path, edit)
    with pytest.raises(BoardConfigError, match=needle) as ei:
        load_board(path)
    assert str(path) in str(ei.value) and isinstance(ei.value, ValueError)


def test_unknown_board_lists_the_known():
    with pytest.raises(UnknownBoardError, match="unknown board 'toaster'; known: jetson-agx-orin"):
        load_board("toaster")


def test_schema_documents_every_key():
    props = board_schema()["$defs"]["BoardConfig"]["properties"]
    assert set(props) == set(BOARD_KEYS) and all(props[k].get("description") for k in BOARD_KEYS)
