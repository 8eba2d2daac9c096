"""stdlib ``logging`` into the fastbuf ring.

``FastbufHandler`` turns each ``logging.LogRecord`` into a fastbuf LOG record: the level
becomes an OpenTelemetry severity number, the formatted message the body, and the
logger name, source location, thread, process, exception and ``extra`` fields become
attributes. Trace and span ids and the correlation attributes of the enclosing
``fastbuf.context()`` come from the current scope, as for ``fastbuf.log``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from emp_fastbuf.integrations import add_exception_attributes, clip_trace
from emp_fastbuf.producer.bridge import write_log
from emp_fastbuf.records import severity_name

__all__ = ["FastbufHandler", "instrument_logging", "severity_number"]

# Everything a plain LogRecord carries (plus what Formatter.format adds): whatever else
# is in a record's __dict__ came from ``extra=`` (or a LogRecord factory) and is kept.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Python level -> OpenTelemetry severity number; a level between two standard ones maps
# to the lower one (25 -> INFO). Below DEBUG is TRACE (1), above CRITICAL is FATAL (21).
_STEPS = ((50, 21), (40, 17), (30, 13), (20, 9), (10, 5))


def severity_number(levelno: int) -> int:
    """The OpenTelemetry severity number for a ``logging`` level number."""
    for floor, number in _STEPS:
        if levelno >= floor:
            return number
    return 1


_SEVERITY_TABLE = tuple(severity_number(n) for n in range(61))
# The severity text is fastbuf's for the number (WARN, not logging's WARNING), as on
# every path; a custom level name is not kept.
_TEXT_TABLE = tuple(severity_name(number) for number in _SEVERITY_TABLE)
_instrument_lock = threading.Lock()


def _exception_attributes(exc_info: Any, attrs: dict[str, Any]) -> None:
    if not isinstance(exc_info, tuple) or len(exc_info) != 3:
        return
    exc_type, exc, tb = exc_info
    if exc_type is None:
        return
    add_exception_attributes(attrs, exc_type, exc, tb)


class FastbufHandler(logging.Handler):
    """A ``logging.Handler`` that writes every record it handles into the fastbuf ring.

    The severity text is fastbuf's for the severity number (``WARN``, ``FATAL``), as on
    every path. Attributes of each record: ``logger.name``, ``code.file.path``,
    ``code.line.number``, ``code.function.name`` (the OpenTelemetry semantic
    conventions), ``thread.id``, ``thread.name``, ``process.pid``, every ``extra``
    field under its own name, ``exception.type``/``exception.message``/
    ``exception.stacktrace`` when the record has ``exc_info``, and ``code.stacktrace``
    with ``stack_info``. The body is ``record.getMessage()``, or ``self.format(record)``
    when a formatter was set. The handler never raises into the logging call: a failure
    goes to ``handleError`` like any stdlib handler.
    """

    def __init__(self, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter and emit, without the handler lock: the ring write is safe from any
        thread, so serialising callers would only add contention."""
        rv: Any = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may replace it
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` into the ring (only called for records that pass the level)."""
        try:
            body = self.format(record) if self.formatter is not None else record.getMessage()
            levelno = record.levelno
            if 0 <= levelno <= 60:
                sev = _SEVERITY_TABLE[levelno]
                text = _TEXT_TABLE[levelno]
            else:
                sev = severity_number(levelno)
                text = severity_name(sev)
            attrs: dict[str, Any] = {
                "logger.name": record.name,
                "code.file.path": record.pathname,
                "code.line.number": record.lineno,
                "code.function.name": record.funcName,
                "thread.id": record.thread,
                "thread.name": record.threadName,
                "process.pid": record.process,
            }
            d = record.__dict__
            for key in d.keys() - _STANDARD_ATTRS:
                attrs[key] = d[key]
            if record.exc_info:
                _exception_attributes(record.exc_info, attrs)
            if record.stack_info:
                attrs["code.stacktrace"] = clip_trace(record.stack_info)
            write_log(sev, text, body, attrs, int(record.created * 1e9))
        except RecursionError:  # the stdlib handlers let this one through too
            raise
        except Exception:
            self.handleError(record)


def instrument_logging(level: int | str = logging.INFO) -> FastbufHandler:
    """Send stdlib ``logging`` to fastbuf: attach a ``FastbufHandler`` at ``level`` to the
    root logger and lower the root logger's level to ``level`` if it is higher (as
    ``logging.basicConfig(level=...)`` does). Idempotent: a second call finds the
    handler already attached, sets its level and returns it."""
    root = logging.getLogger()
    with _instrument_lock:
        handler = next((h for h in root.handlers if isinstance(h, FastbufHandler)), None)
        if handler is None:
            handler = FastbufHandler(level)
            root.addHandler(handler)
        else:
            handler.setLevel(level)
        if root.level > handler.level:
            root.setLevel(handler.level)
    return handler
