"""emp-fastbuf: telemetry out of GPU workers through shared memory.

``import emp_fastbuf as fastbuf``; then ``fastbuf.emit(...)``, ``fastbuf.log.info(...)``,
``with fastbuf.span(...)``, ``fastbuf.record_span(name, start_ns, end_ns)``,
``fastbuf.metrics.counter(...).inc()``. See README.md.
"""

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
from emp_fastbuf.integrations.stdlib import instrument_logging
from emp_fastbuf.producer.api import (
    configure,
    context,
    continue_trace,
    emit,
    event,
    flush,
    log,
    metrics,
    record_span,
    shutdown,
    span,
    stats,
    traced,
    traceparent,
)
from emp_fastbuf.records import CorruptRecord
from emp_fastbuf.ring import Consumer, Ring, default_ring_name

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
    "configure",
    "context",
    "continue_trace",
    "default_ring_name",
    "emit",
    "event",
    "flush",
    "instrument_logging",
    "log",
    "metrics",
    "record_span",
    "shutdown",
    "span",
    "stats",
    "traced",
    "traceparent",
]
