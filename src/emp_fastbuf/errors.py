"""Every exception a caller of emp-fastbuf can catch, in one place: the ring's (the native
module raises them), a corrupt record, the home directory, the store, the agent's
configuration and its spool. Each stage raises its own and re-exports it."""

from __future__ import annotations


class RingError(Exception):
    """Base class of every ring error."""


class RingBusy(RingError):
    """Another live process holds the consumer role."""


class RecordTooLarge(RingError, ValueError):
    """A record is larger than the ring's maximum record size."""


class RingCorrupt(RingError):
    """The segment is not a valid ring: wrong magic, truncated, inconsistent header."""


class RingVersionError(RingCorrupt):
    """The segment has a layout version this package does not know."""


class RingPermissionError(RingError, PermissionError):
    """The segment belongs to another user or is readable by others."""


class RingExists(RingError, FileExistsError):
    """``Ring.create`` found a segment of that name already."""


class RingNotFound(RingError, FileNotFoundError):
    """``Ring.open`` found no segment of that name."""


class CorruptRecord(ValueError):
    """Raised when bytes taken from the ring or the spool are not a valid record."""


class HomeError(ValueError):
    """The emp-fastbuf home cannot be used: no user home to put it in, an empty path, not
    a directory, another user's, or writable by every user."""


class StoreError(Exception):
    """The store file is missing, is not an emp-fastbuf store, or has another schema; or
    the store cannot be read or written."""


class StoreDamaged(StoreError):
    """The store file is damaged: not an SQLite database, or its pages are corrupt."""


class StoreBusy(StoreError):
    """Another connection held the store's write lock for longer than the writer waits."""


class ConfigError(Exception):
    """The agent's configuration is invalid; the CLI prints the message and exits with 2."""


class CorruptSpoolFile(Exception):
    """A spool file failed to parse; it has been moved to the quarantine directory."""
