"""User vectors for the report: the torch tower while it trains, the ONNX tower as the device runs it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from shelfrank.device.history import Step, tower_feed, tower_inputs

UserFn = Callable[[list[Sequence[Step]]], np.ndarray]  # histories -> (B, d) unit user vectors


def torch_tower(model, max_events: int) -> tuple[UserFn, np.ndarray]:
    """(user vectors fn, item rows) of a torch ``TowerModel`` (its own item vectors, residual included)."""
    import torch

    with torch.inference_mode():
        model.eval()
        v = model.item_vectors()

    def users(hs: list[Sequence[Step]]) -> np.ndarray:
        r, a, m = (torch.from_numpy(x) for x in tower_inputs(hs, max_events))
        with torch.inference_mode():
            return model(r, a, m, v).numpy()

    return users, v.numpy()


def onnx_tower(tower_onnx: Path, rows: np.ndarray, max_events: int, *, threads: int = 2) -> UserFn:
    """User vectors exactly as the device makes them: the ONNX tower over ``rows`` (the bundle's
    dequantised int8 rows), fed by the device's own :func:`~shelfrank.device.history.tower_feed`."""
    from shelfrank.device.encoder import make_session

    sess = make_session(tower_onnx, threads=threads)

    def users(hs: list[Sequence[Step]]) -> np.ndarray:
        (u,) = sess.run(["user"], tower_feed(hs, max_events, rows.__getitem__))
        return u

    return users
