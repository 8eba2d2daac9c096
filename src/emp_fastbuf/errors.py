"""Exceptions of the ring (the native module raises these)."""

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
