"""The narrow surface the integrations (``emp_fastbuf.integrations``) are built on.

A bridge turns another library's record (a ``logging.LogRecord``, an OpenTelemetry SDK
span or log record, a structlog event dict) into a fastbuf record. Besides the public
``emp_fastbuf`` API it needs only what is here:

- the writers, for records that arrive with their own severity, ids and times:
  ``write_log`` and ``write_span``;
- the current scope (the trace context and ``fastbuf.context()`` attributes every
  record carries): ``scope_var``, ``current_scope``, ``make_scope`` and ``Scope``;
- ``merge_resource``, for resource attributes that another SDK set, and
  ``max_value_length``, the encoder's limit on a string value.

The writers are the native functions themselves, bound to these names once: a bridge
calling ``bridge.write_log`` pays nothing over calling the encoder directly.
"""

from __future__ import annotations

from emp_fastbuf.producer import _codec, api

__all__ = [
    "Scope",
    "current_scope",
    "make_scope",
    "max_value_length",
    "merge_resource",
    "scope_var",
    "write_log",
    "write_span",
]

#: ``write_log(severity, severity_text, body, attributes, time_unix_nano=0)``: a LOG
#: record with an explicit OpenTelemetry severity (0..24, else ValueError) and its
#: original time in ns (0: now), under the current scope. Never raises for the ring:
#: a record that cannot be written is dropped and counted (``fastbuf.stats()``).
write_log = _codec.log_record

#: ``write_span(name, trace_id, span_id, parent_span_id, start_ns, end_ns, status, kind,
#: message, attributes, events=None, links=None, trace_flags=1)``: a finished span with
#: the caller's own ids (16 and 8 bytes, else ValueError) and times; status 0..2 and
#: kind 1..5 in OTLP numbering; events ``(name, time_ns, attributes)``, links
#: ``(trace_id, span_id, attributes)``. The current scope gives its context attributes.
write_span = _codec.write_span

#: The context variable holding the current ``Scope``. A bridge that makes another
#: library's span current sets it (``scope_var.set(scope)``) and resets it with the token.
scope_var = _codec.scope_var

#: ``current_scope()``: the current ``Scope`` (its ``trace_id``, ``span_id``,
#: ``trace_flags``, ``remote`` and context ``attrs``; ``with_span(...)`` derives a child).
current_scope = _codec.current

#: ``make_scope(attrs, trace_id=None, span_id=None, trace_flags=1, remote=False)``: a
#: scope built from scratch (for example the context attributes without the span).
make_scope = _codec.make_scope

#: The type of ``scope_var``'s values.
Scope = _codec.Scope

#: ``merge_resource(attributes)``: merge another SDK's resource attributes into the
#: resource this process publishes (see ``emp_fastbuf.producer.api.merge_resource``).
merge_resource = api.merge_resource


def max_value_length(signal: str = "log") -> int:
    """The encoder's limit on a string value of a log record (``signal="log"``) or of a
    span (``"span"``), in characters: longer values are cut (a bridge that knows better
    where to cut, such as a stack trace, does it first)."""
    if signal not in ("log", "span"):
        raise ValueError(f"signal must be 'log' or 'span', got {signal!r}")
    return int(_codec.get_limits()[f"{signal}_max_value_length"])
