"""The typed contracts of everything that crosses a boundary: decoding *is* validation.

One module, one definition per wire format, shared by the side that writes it and the side that
reads it (export and device; publish and sync; the service and its OpenAPI description). Each
format is a ``msgspec.Struct`` with its constraints; ``decode_*`` helpers turn bytes or dicts into
structs and every failure into a ``ShelfrankError`` subclass naming the file/field and the fix.

Unknown fields: refused in request bodies and board TOML (a typo there is a mistake); ignored
with a log line in the manifest, the catalog index and deltas (forward compatibility).
"""

from __future__ import annotations

import logging

import msgspec  # noqa: F401

logger = logging.getLogger(__name__)

# ---- shared constraints -----------------------------------------------------------------------

# ---- bundle manifest --------------------------------------------------------------------------

# ---- catalog index and delta (publish and sync) -------------------------------------------------

# ---- board config (firmware_configs/*.toml) -----------------------------------------------------

# ---- service request and response bodies ------------------------------------------------------
