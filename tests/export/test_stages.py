"""The export's stage runner and work folder (export/stages.py), without torch: order, checkpoints, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shelfrank.export.stages import Stage, WorkFolder, check_stages, run_stages


def _stages(calls: list[str]) -> list[Stage]:
    def make(ctx, **_):
        calls.append("make")
        return {"a": np.arange(3), "b": 2}

    def use(ctx, *, a, b):
        calls.append("use")
        return {"c": ctx.array("arr.npy", lambda: a * b)}

    def last(ctx, *, c):
        return {"out": int(c.sum())}

    return [
        Stage("make", (), ("a", "b"), make),
        Stage("use", ("a", "b"), ("c",), use, ("arr.npy",)),
        Stage("last", ("c",), ("out",), last),
    ]


def test_stages_run_in_order_and_resume_their_checkpoints(tmp_path: Path):
    calls: list[str] = []
    work = WorkFolder(tmp_path / "w", False, {"dataset": "d"})
    times: dict[str, float] = {}
    assert run_stages(_stages(calls), work, work, keep=("out",), times=times) == {"out": 6}
    assert list(times) == ["make", "use", "last"] and (tmp_path / "w" / "arr.npy").is_file()
    assert not list((tmp_path / "w").glob("*.tmp"))
    # --resume: the checkpoint is loaded, not made again (a changed maker would show)
    resumed = WorkFolder(tmp_path / "w", True, {"dataset": "d"})
    stages = _stages(calls)
    stages[1] = Stage(
        "use", ("a", "b"), ("c",), lambda ctx, a, b: {"c": ctx.array("arr.npy", lambda: a * 0)}, ("arr.npy",)
    )
    assert run_stages(stages, resumed, resumed, keep=("out",), times={}) == {"out": 6}
    # a fresh run remakes it
    fresh = WorkFolder(tmp_path / "w", False, {"dataset": "d"})
    assert run_stages(stages, fresh, fresh, keep=("out",), times={}) == {"out": 0}


def test_stage_list_checked_before_anything_runs(tmp_path: Path):
    calls: list[str] = []
    stages = _stages(calls)
    with pytest.raises(ValueError, match=r"stage 'use' reads \['a', 'b'\], which no earlier stage makes"):
        run_stages(stages[1:], None, WorkFolder(tmp_path / "w", False), times={})
    assert calls == []
    with pytest.raises(ValueError, match="declares checkpoint"):
        check_stages([*stages, Stage("again", ("a",), (), lambda ctx, a: {}, ("arr.npy",))])
    check_stages(stages)


def test_a_stage_may_reuse_only_its_declared_checkpoints(tmp_path: Path):
    work = WorkFolder(tmp_path / "w", False)
    sneaky = Stage("sneaky", (), ("x",), lambda ctx: {"x": ctx.array("other.npy", lambda: np.zeros(2))})
    with pytest.raises(ValueError, match=r"checkpoint 'other.npy' is not declared by the running stage"):
        run_stages([sneaky], work, work, times={})
    wrong = Stage("wrong", (), ("x",), lambda ctx: {"y": 1})
    with pytest.raises(ValueError, match=r"stage 'wrong' returned \['y'\], not its outputs \['x'\]"):
        run_stages([wrong], work, work, times={})


def test_an_interrupted_checkpoint_never_resumes(tmp_path: Path):
    work = WorkFolder(tmp_path / "w", False)

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work.array("z.npy", boom)
    assert not WorkFolder(tmp_path / "w", True).have("z.npy")


def test_the_report_feeds_the_tower_as_the_device_does():
    """device/history.tower_feed: newest first, padding masked, item_vecs from the given rows."""
    from shelfrank.device.history import TOWER_INPUTS, tower_feed

    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    feed = tower_feed([[(1, 0), (4, 2)], []], 3, rows.__getitem__)
    assert list(feed) == list(TOWER_INPUTS)
    assert feed["item_vecs"].shape == (2, 3, 2) and feed["item_vecs"].dtype == np.float32
    np.testing.assert_array_equal(feed["item_vecs"][0, :2], rows[[4, 1]])
    np.testing.assert_array_equal(feed["actions"], [[2, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(feed["mask"], [[1, 1, 0], [0, 0, 0]])
