"""The lean on-device runtime: numpy, onnxruntime, tokenizers and the native kernel; never torch."""

from __future__ import annotations

from shelfrank.device.kernel import active_isa, capabilities, force_isa, quantize_rows, topk
from shelfrank.errors import InputError, ShelfrankError, UnsupportedIsaError

__all__ = [
    "InputError",
    "ShelfrankError",
    "UnsupportedIsaError",
    "active_isa",
    "capabilities",
    "force_isa",
    "quantize_rows",
    "topk",
]
