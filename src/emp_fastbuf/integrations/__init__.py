"""Bridges that carry other telemetry APIs into the fastbuf ring.

- ``emp_fastbuf.integrations.stdlib``: ``FastbufHandler``, a ``logging.Handler``, and
  ``instrument_logging()``.
- ``emp_fastbuf.integrations.otel``: ``FastbufSpanProcessor`` and
  ``FastbufLogRecordProcessor`` for the OpenTelemetry SDK (``pip install
  emp-fastbuf[otel]``), and the context bridge that lets SDK spans and ``fastbuf.span``
  share one trace.
- ``emp_fastbuf.integrations.structlog``: ``FastbufProcessor``, a structlog processor.

Each module is imported on its own so that a missing optional library only affects the
bridge that needs it. The bridges use the public API and ``emp_fastbuf.producer.bridge``,
nothing private of the producer. See docs/integrations.md.
"""

from __future__ import annotations

import traceback
from types import TracebackType
from typing import Any

from emp_fastbuf.producer import bridge


def clip_trace(text: str, signal: str = "log") -> str:
    """A stack trace that fits the encoder's value limit for ``signal``'s records
    (``"log"`` or ``"span"``), cut in the middle: the first line (``Traceback
    ...``/``Stack ...``) and the innermost frames and the exception line at the end are
    what a reader needs; the encoder alone would cut the end off."""
    limit = bridge.max_value_length(signal)
    if len(text) <= limit:
        return text
    head, sep, _ = text.partition("\n")
    marker = "  ...\n"
    keep = limit - len(head) - len(sep) - len(marker)
    if not sep or keep <= 0:
        return text[-limit:]
    return head + sep + marker + text[-keep:]


def add_exception_attributes(
    attrs: dict[str, Any],
    exc_type: type[BaseException],
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """``exception.type``, ``exception.message`` and ``exception.stacktrace`` (clipped)
    of an exception into ``attrs``. An exception whose ``str()`` raises still gets a
    message: ``<unprintable TYPE>``."""
    attrs["exception.type"] = getattr(exc_type, "__qualname__", str(exc_type))
    try:
        attrs["exception.message"] = str(exc)
    except Exception:
        attrs["exception.message"] = f"<unprintable {type(exc).__name__}>"
    attrs["exception.stacktrace"] = clip_trace(
        "".join(traceback.format_exception(exc_type, exc, tb))
    )
