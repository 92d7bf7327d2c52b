"""The lean on-device runtime: numpy, onnxruntime, tokenizers and the native kernel; never torch."""

from __future__ import annotations

from shelfrank.device.catalog import Item, Reason
from shelfrank.device.events import Event
from shelfrank.device.kernel import active_isa, capabilities, force_isa, quantize_rows, topk
from shelfrank.device.recommender import Recommender
from shelfrank.errors import (
    BundleError,
    InputError,
    ShelfrankError,
    SignatureError,
    SyncError,
    UnknownFilterValueError,
    UnknownItemError,
    UnsupportedIsaError,
)

__all__ = [
    "BundleError",
    "Event",
    "InputError",
    "Item",
    "Reason",
    "Recommender",
    "ShelfrankError",
    "SignatureError",
    "SyncError",
    "UnknownFilterValueError",
    "UnknownItemError",
    "UnsupportedIsaError",
    "active_isa",
    "capabilities",
    "force_isa",
    "quantize_rows",
    "topk",
]
