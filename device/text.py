"""Text templates shared by export and device: what the encoder sees for an item and a history.

Both sides call these functions with the templates stored in the bundle's manifest, so an item
embedded at export and the same item embedded on the device after a catalog sync agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ITEM_FIELDS = ("title", "category", "brand")
SEPARATOR = " [SEP] "
ACTIONS = ("view", "click", "cart", "purchase")
ACTION_IDS = {a: i for i, a in enumerate(ACTIONS)}


def item_text(item: Mapping[str, Any], fields: Sequence[str] = ITEM_FIELDS, sep: str = SEPARATOR) -> str:
    """``title [SEP] category [SEP] brand`` with whatever fields exist (empty ones are left out)."""
    parts = []
    for f in fields:
        v = item.get(f)
        if v is not None and str(v).strip():
            parts.append(str(v).strip())
    return sep.join(parts)


def history_text(steps: Sequence[tuple[str, str]], *, sep: str = SEPARATOR) -> str:
    """The text design's user input: ``action: title`` for each (action, title), newest first."""
    return sep.join(f"{action}: {title}" for action, title in steps)
