"""structlog into the fastbuf ring.

``FastbufProcessor`` writes each event dict as a fastbuf LOG record and then passes the
event dict on to the next processor, or ends the chain (``drop=True``) when fastbuf is
the only destination.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

try:
    import structlog
except ImportError as exc:  # the error names what to install, not only what is missing
    raise ImportError(
        "emp_fastbuf.integrations.structlog needs structlog: pip install 'emp-fastbuf[structlog]'",
        name=exc.name,
    ) from exc

from emp_fastbuf.integrations import add_exception_attributes, clip_trace
from emp_fastbuf.producer.bridge import write_log
from emp_fastbuf.records import severity_name

__all__ = ["FastbufProcessor"]

# structlog level (or method) name -> OpenTelemetry severity number.
_SEVERITY = {
    "notset": 0,
    "trace": 1,
    "debug": 5,
    "info": 9,
    "msg": 9,
    "log": 9,
    "warning": 13,
    "warn": 13,
    "error": 17,
    "exception": 17,
    "critical": 21,
    "fatal": 21,
}
_RESERVED = frozenset(("event", "level", "exc_info", "exception"))


def _exc_info(value: Any) -> tuple[Any, Any, Any] | None:
    """structlog's ``exc_info`` conventions: True (the one being handled), an exception,
    or a ``sys.exc_info()`` tuple."""
    if value is True:
        value = sys.exc_info()
    elif isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and value[0] is not None:
        return value[0], value[1], value[2]
    return None


def _add_exception(event_dict: MutableMapping[str, Any], attrs: dict[str, Any]) -> None:
    info = _exc_info(event_dict.get("exc_info"))
    if info is not None:
        add_exception_attributes(attrs, *info)
    rendered = event_dict.get("exception")
    if isinstance(rendered, str) and rendered and "exception.stacktrace" not in attrs:
        # format_exc_info already turned exc_info into text.
        attrs["exception.stacktrace"] = clip_trace(rendered)


class FastbufProcessor:
    """A structlog processor: ``event`` becomes the body, ``level`` (or the method name)
    the severity (its text fastbuf's: ``WARN`` for ``warning``), ``exc_info``/
    ``exception`` the ``exception.*`` attributes, and every
    other key an attribute. Trace ids and ``fastbuf.context()`` attributes come from
    the current scope.

    ``drop=False`` (default) returns the event dict for the processors after it;
    ``drop=True`` raises ``structlog.DropEvent`` so nothing else renders it. Writing never
    raises into the logging call.
    """

    def __init__(self, *, drop: bool = False) -> None:
        self.drop = bool(drop)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        try:
            self._write(method_name, event_dict)
        except Exception:
            pass  # telemetry must not break the log call; the codec counts its own errors
        if self.drop:
            raise structlog.DropEvent
        return event_dict

    def _write(self, method_name: str, event_dict: MutableMapping[str, Any]) -> None:
        level = event_dict.get("level")
        name = (level if isinstance(level, str) else method_name or "info").lower()
        severity = _SEVERITY.get(name, 9)
        text = severity_name(severity)  # fastbuf's text for the number, as on every path
        event = event_dict.get("event", "")
        attrs = {k: v for k, v in event_dict.items() if k not in _RESERVED}
        if "exc_info" in event_dict or "exception" in event_dict:
            _add_exception(event_dict, attrs)
        write_log(severity, text, event if isinstance(event, str) else str(event), attrs)
