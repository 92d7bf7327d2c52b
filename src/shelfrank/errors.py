"""One small hierarchy of typed errors, shared by the device runtime and the export stage."""

from __future__ import annotations


class ShelfrankError(Exception):
    """Root of every error shelfrank raises on purpose."""


class InputError(ShelfrankError, ValueError):
    """An argument was rejected; the message names it and says how to fix it."""


class UnsupportedIsaError(InputError):
    """A kernel ISA path was requested that this CPU or build cannot run."""


class ExportValidationError(InputError):
    """Export input (items, events, teacher, data folder) is unusable; names the file, row and field."""


class ParityError(ShelfrankError):
    """The int8 encoder drifted too far from fp32; the message carries the measured figures."""


class BundleError(ShelfrankError):
    """A bundle (or one of its files) is missing, corrupt, of an unknown format or inconsistent."""


class SignatureError(BundleError):
    """A signature does not verify against the trusted publisher key."""


class UnknownItemError(InputError, KeyError):
    """An item id is not in the catalog being served."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownFilterValueError(InputError):
    """A ``where`` filter names a category or brand the catalog does not have; ``field`` names it."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownBoardError(InputError):
    """A board name has no firmware config."""


class SyncError(ShelfrankError):
    """A catalog update could not be fetched, verified or applied; the previous catalog keeps serving."""


class RequestBodyError(InputError):
    """A service request body is not JSON (``malformed``) or breaks its contract; ``field`` names the field."""

    def __init__(self, message: str, *, field: str | None = None, malformed: bool = False) -> None:
        super().__init__(message)
        self.field, self.malformed = field, malformed


class EventStoreBusyError(ShelfrankError):
    """The event store could not finish a write-out (another connection holds an old snapshot); retry."""


class RulesError(InputError, SyncError):
    """A merchandising rules document is unusable (set locally: an input error; synced: a sync
    error); the message names the field and the fix, and the previous rules keep serving."""


class StockError(InputError, SyncError):
    """A live stock/price update or feed is unusable; nothing of it is applied."""
