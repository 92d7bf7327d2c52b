"""Argument checks shared by the :class:`~shelfrank.device.recommender.Recommender` calls: each a
typed ``InputError`` naming the argument."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shelfrank.errors import InputError

__all__ = ["check_options", "str_seq"]


def check_options(k: Any, diversity: Any, ranker: Any) -> None:
    """``recommend``'s options: a known ranker, diversity in [0, 1], k a positive integer (InputError)."""
    if ranker not in ("hybrid", "tower"):
        raise InputError(f"ranker must be 'hybrid' or 'tower', got {ranker!r}")
    if isinstance(diversity, bool) or not isinstance(diversity, (int, float)) or not 0.0 <= diversity <= 1.0:
        raise InputError(f"diversity must be a number in [0, 1], got {diversity!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")


def str_seq(name: str, values: Any) -> list[str]:
    """A list or tuple of strings as a list (a lone string is refused: it is a sequence of letters)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InputError(f"{name} must be a list of strings, got {type(values).__name__}")
    out = list(values)
    bad = next((v for v in out if not isinstance(v, str)), None)
    if bad is not None:
        raise InputError(f"{name} must hold strings only, got {bad!r}")
    return out
