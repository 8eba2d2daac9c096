"""emp-fastbuf: telemetry out of GPU workers through shared memory."""

from emp_fastbuf._ring import Consumer, Ring, default_ring_name
from emp_fastbuf._version import __version__
from emp_fastbuf.errors import (
    RecordTooLarge,
    RingBusy,
    RingCorrupt,
    RingError,
    RingExists,
    RingNotFound,
    RingPermissionError,
    RingVersionError,
)
from emp_fastbuf.records import CorruptRecord

__all__ = [
    "Consumer",
    "CorruptRecord",
    "RecordTooLarge",
    "Ring",
    "RingBusy",
    "RingCorrupt",
    "RingError",
    "RingExists",
    "RingNotFound",
    "RingPermissionError",
    "RingVersionError",
    "__version__",
    "default_ring_name",
]
