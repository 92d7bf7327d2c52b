"""Where a recommender keeps its state (events, synced catalogs, downloads, the pinned key)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["state_dir_for"]


def state_dir_for(bundle: Path, explicit: str | Path | None) -> Path:
    """``PREFIX/state`` for a flashed layout, else $SHELFRANK_STATE, else a per-bundle user folder
    (``$XDG_STATE_HOME/shelfrank/<bundle>-<hash>``, ``~/.local/state`` when that is unset or not absolute)."""
    if explicit is not None:
        return Path(explicit)
    from shelfrank.deploy.target import TargetLayout

    layout = TargetLayout.holding(bundle)  # PREFIX/current or a slot of a flashed PREFIX
    if layout is not None:
        return layout.local(layout.STATE)
    if os.environ.get("SHELFRANK_STATE"):
        return Path(os.environ["SHELFRANK_STATE"])
    # the XDG base-directory spec: an unset, empty or relative XDG_STATE_HOME is ignored (a relative
    # one would put shopper history wherever the process happened to start)
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    real = bundle.resolve()
    return base / "shelfrank" / f"{real.name}-{hashlib.sha256(str(real).encode()).hexdigest()[:12]}"
