"""One small hierarchy of typed errors, shared by the device runtime and the export stage."""

from __future__ import annotations


class ShelfrankError(Exception):
    """Root of every error shelfrank raises on purpose."""


class InputError(ShelfrankError, ValueError):
    """An argument was rejected; the message names it and says how to fix it."""


class UnsupportedIsaError(InputError):
    """A kernel ISA path was requested that this CPU or build cannot run."""
