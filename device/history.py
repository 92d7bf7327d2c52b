"""How a shopper's events become the user tower's input — one definition for training and device.

Consecutive events on the same item (view → click → cart on one product page) collapse into one
step that keeps the strongest action; the tower reads the newest ``max_events`` steps, newest
first, zero-padded; :func:`tower_feed` is the ONNX tower's whole input, which the device and the
export's report both run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

Step = tuple[int, int]  # (catalog row, action id)
TOWER_INPUTS = ("item_vecs", "actions", "mask")  # the user tower's ONNX input names


def add_step(steps: list[Step], row: int, action: int) -> None:
    """Append an event to ``steps`` (oldest first), merging it into the last step on the same item."""
    if steps and steps[-1][0] == row:
        if action > steps[-1][1]:
            steps[-1] = (row, action)
    else:
        steps.append((row, action))


def collapse(events: Iterable[Step]) -> list[Step]:
    """Steps (oldest first) from events (oldest first)."""
    steps: list[Step] = []
    for row, action in events:
        add_step(steps, row, action)
    return steps


def tower_inputs(histories: Sequence[Sequence[Step]], max_events: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows int64, actions int64, mask float32), each (len(histories), max_events), newest first."""
    n = len(histories)
    rows = np.zeros((n, max_events), np.int64)
    acts = np.zeros((n, max_events), np.int64)
    mask = np.zeros((n, max_events), np.float32)
    for j, h in enumerate(histories):
        recent = list(h[-max_events:])[::-1]
        if recent:
            r, a = zip(*recent, strict=True)
            rows[j, : len(r)] = r
            acts[j, : len(r)] = a
            mask[j, : len(r)] = 1.0
    return rows, acts, mask


def tower_feed(
    histories: Sequence[Sequence[Step]], max_events: int, vectors: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    """The user tower's ONNX feed for ``histories``: ``item_vecs`` (B, L, d) float32, ``vectors(rows)``
    of the newest-first rows (padding reads row 0 under a zero mask), and :func:`tower_inputs`'
    ``actions`` and ``mask``. ``vectors`` maps 1-D catalog rows to their (len, d) float32 vectors."""
    rows, acts, mask = tower_inputs(histories, max_events)
    vecs = vectors(rows.reshape(-1)).reshape(*rows.shape, -1)
    return dict(zip(TOWER_INPUTS, (vecs, acts, mask), strict=True))
