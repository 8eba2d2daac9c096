"""The OpenTelemetry SDK with fastbuf as its transport.

- ``FastbufSpanProcessor``: every SDK span that ends is written into the ring at once,
  with the SDK's own trace, span and parent ids (no queue, no export thread).
- ``FastbufLogRecordProcessor``: every SDK log record is written into the ring at once,
  with its trace and span ids.
- The context bridge (``install_context_bridge``, done by both processors): SDK spans and
  ``fastbuf.span`` nest inside one another in one trace, in both directions.

The SDK resource's attributes are merged once per resource into the resource this
process publishes in its ring lane (``service.name`` too, unless fastbuf has one of its
own), so they arrive as resource attributes, not copied into every record.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from contextvars import Token
from typing import Any, cast

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.context.context import Context, _RuntimeContext
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    from opentelemetry.sdk._logs import LogRecordProcessor
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
except ImportError as exc:  # the error names what to install, not only what is missing
    raise ImportError(
        f"emp_fastbuf.integrations.otel needs the OpenTelemetry SDK ({exc.name or exc} is"
        " missing): pip install 'emp-fastbuf[otel]'",
        name=exc.name,
    ) from exc

import emp_fastbuf as fastbuf
from emp_fastbuf.integrations import clip_trace
from emp_fastbuf.producer.bridge import (
    Scope,
    current_scope,
    make_scope,
    merge_resource,
    scope_var,
    write_log,
    write_span,
)
from emp_fastbuf.records import severity_name

__all__ = [
    "FastbufLogRecordProcessor",
    "FastbufRuntimeContext",
    "FastbufSpanProcessor",
    "install_context_bridge",
]

_logger = logging.getLogger("emp_fastbuf")

# ---- the context bridge ----------------------------------------------------------------


class _BridgeToken:
    """What ``FastbufRuntimeContext.attach`` returns: the wrapped runtime's token and, when
    the attached context carried a span, the token of the fastbuf scope it set."""

    __slots__ = ("inner", "scope")

    def __init__(self, inner: Token[Context], scope: Token[Scope] | None) -> None:
        self.inner = inner
        self.scope = scope


class FastbufRuntimeContext(_RuntimeContext):
    """An OpenTelemetry runtime context that keeps fastbuf's scope in step with it.

    - ``attach`` of a context whose current span is valid (what ``start_as_current_span``
      and ``use_span`` do) also makes that span fastbuf's current span, so a
      ``fastbuf.span`` inside is its child; ``detach`` restores both.
    - ``get_current`` returns the OpenTelemetry context, with fastbuf's current span in
      it as a ``NonRecordingSpan`` when fastbuf's scope moved to a span the
      OpenTelemetry context does not have (a ``fastbuf.span`` or ``continue_trace``
      entered later), so an SDK span started there is fastbuf's child.

    It wraps the runtime context that was in place (contextvars by default), so contexts
    attached before the bridge was installed keep working.
    """

    def __init__(self, inner: _RuntimeContext | None = None) -> None:
        self._inner: _RuntimeContext = inner if inner is not None else ContextVarsRuntimeContext()
        # One entry: (inner context, fastbuf scope) -> the context get_current returned.
        self._cache: tuple[object, object, Context] | None = None

    def attach(self, context: Context) -> Token[Context]:
        """Attach ``context``; its span (if any) becomes fastbuf's current span too."""
        inner = self._inner.attach(context)
        scope_token: Token[Scope] | None = None
        try:
            sctx = trace.get_current_span(context).get_span_context()
            if sctx.is_valid:
                sc = current_scope()
                tid = sctx.trace_id.to_bytes(16, "big")
                sid = sctx.span_id.to_bytes(8, "big")
                if sc.span_id != sid or sc.trace_id != tid:
                    synced = sc.with_span(tid, sid, int(sctx.trace_flags), bool(sctx.is_remote))
                    scope_token = scope_var.set(synced)
                    # In step by construction: get_current needs no look at the span.
                    self._cache = (context, synced, context)
        except Exception:  # a foreign span object: leave fastbuf's scope alone
            scope_token = None
        return cast("Token[Context]", _BridgeToken(inner, scope_token))

    def get_current(self) -> Context:
        """The current context, with fastbuf's current span when it is the newer one."""
        ctx = self._inner.get_current()
        sc = scope_var.get()
        sid = sc.span_id
        tid = sc.trace_id
        if sid is None or tid is None:
            return ctx
        cached = self._cache
        if cached is not None and cached[0] is ctx and cached[1] is sc:
            return cached[2]
        sctx = trace.get_current_span(ctx).get_span_context()
        span_id = int.from_bytes(sid, "big")
        trace_id = int.from_bytes(tid, "big")
        out = ctx
        if sctx.span_id != span_id or sctx.trace_id != trace_id:
            parent = NonRecordingSpan(
                SpanContext(
                    trace_id,
                    span_id,
                    is_remote=bool(sc.remote),
                    trace_flags=TraceFlags(sc.trace_flags),
                )
            )
            out = trace.set_span_in_context(parent, ctx)
        self._cache = (ctx, sc, out)
        return out

    def detach(self, token: Token[Context]) -> None:
        """Restore the context (and fastbuf's scope) from before the matching attach."""
        if not isinstance(token, _BridgeToken):
            # Attached before the bridge was installed.
            self._inner.detach(token)
            return
        try:
            if token.scope is not None:
                try:
                    scope_var.reset(token.scope)
                except ValueError:
                    pass  # detached in another context: nothing of ours to restore
        finally:
            self._inner.detach(token.inner)


_install_lock = threading.Lock()


def install_context_bridge() -> None:
    """Make OpenTelemetry's runtime context a ``FastbufRuntimeContext`` wrapping the one
    in place. Idempotent; both processors call it when created."""
    with _install_lock:
        current = otel_context._RUNTIME_CONTEXT
        if not isinstance(current, FastbufRuntimeContext):
            otel_context._RUNTIME_CONTEXT = FastbufRuntimeContext(current)


# ---- spans ----------------------------------------------------------------------------


def _warn_once(what: str, exc: BaseException) -> None:
    global _warned
    if not _warned:
        _warned = True
        _logger.warning("emp_fastbuf: could not write an OpenTelemetry %s: %r", what, exc)


_warned = False


def _attrs(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(mapping) if mapping else {}


def _event_attrs(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    attrs = _attrs(mapping)
    _clip_stacktrace(attrs, "span")
    return attrs


def _clip_stacktrace(attrs: dict[str, Any], signal: str = "log") -> None:
    trace_text = attrs.get("exception.stacktrace")
    if isinstance(trace_text, str):
        attrs["exception.stacktrace"] = clip_trace(trace_text, signal)


# The code location names of older SDKs (and of their logging handler) -> the current
# semantic conventions, which every fastbuf path writes.
_OLD_CODE_KEYS = (
    ("code.filepath", "code.file.path"),
    ("code.lineno", "code.line.number"),
    ("code.function", "code.function.name"),
)


def _rename_code_keys(attrs: dict[str, Any]) -> None:
    for old, new in _OLD_CODE_KEYS:
        if old in attrs:
            value = attrs.pop(old)
            attrs.setdefault(new, value)


def _span_attrs(span: ReadableSpan) -> dict[str, Any]:
    """A copy of the span's attributes. The SDK keeps them in a ``BoundedAttributes`` whose
    ``_dict`` copies at C speed; going through the public Mapping costs a Python call per
    key, the largest part of the processor's time. Falls back to the public view."""
    raw = getattr(getattr(span, "_attributes", None), "_dict", None)
    if type(raw) is dict:
        return raw.copy()
    return _attrs(span.attributes)


def _raw_sequence(span: ReadableSpan, name: str) -> Sequence[Any] | None:
    """The deque inside the SDK's ``BoundedList`` of events or links: the public property
    copies it into a tuple under a lock, costly for the common empty case. None when the
    SDK stores them differently (the caller then uses the public property)."""
    dq = getattr(getattr(span, name, None), "_dq", None)
    return dq if isinstance(dq, deque) else None


# The last instrumentation scope seen and its attributes (one tracer per hot loop).
_last_scope: tuple[object, tuple[tuple[str, str], ...]] = (None, ())


def _scope_attrs(attrs: dict[str, Any], scope: Any) -> None:
    # The record format has no per-record instrumentation scope: keep it as attributes,
    # under the names OpenTelemetry uses for formats without one.
    global _last_scope
    if scope is None:
        return
    cached = _last_scope
    if cached[0] is scope:
        items = cached[1]
    else:
        found: list[tuple[str, str]] = []
        if scope.name:
            found.append(("otel.scope.name", scope.name))
            if scope.version:
                found.append(("otel.scope.version", scope.version))
        items = tuple(found)
        _last_scope = (scope, items)
    for key, value in items:
        attrs[key] = value


class FastbufSpanProcessor(SpanProcessor):
    """An SDK span processor that writes each span into the ring when it ends.

    ``provider.add_span_processor(FastbufSpanProcessor())``. Creating it installs the
    context bridge (see ``FastbufRuntimeContext``). ``force_flush`` and ``shutdown`` wait
    for the drainer to take what this process wrote (``fastbuf.flush``).
    """

    def __init__(self, *, flush_timeout: float = 5.0) -> None:
        self._flush_timeout = float(flush_timeout)
        install_context_bridge()

    def on_end(self, span: ReadableSpan) -> None:
        """Write the ended span; never raises into the SDK."""
        try:
            self._write(span)
        except Exception as exc:
            _warn_once("span", exc)

    def _write(self, span: ReadableSpan) -> None:
        ctx = span.context
        if ctx is None or not ctx.is_valid:
            return
        resource = span.resource
        if resource is not None:
            merge_resource(resource.attributes)
        parent = span.parent
        parent_id = (
            parent.span_id.to_bytes(8, "big") if parent is not None and parent.is_valid else None
        )
        attrs = _span_attrs(span)
        _scope_attrs(attrs, span.instrumentation_scope)
        raw_events = _raw_sequence(span, "_events")
        if raw_events is None:
            raw_events = span.events
        events = None
        if raw_events:
            events = [(e.name, e.timestamp, _event_attrs(e.attributes)) for e in raw_events]
        raw_links = _raw_sequence(span, "_links")
        if raw_links is None:
            raw_links = span.links
        links = None
        if raw_links:
            links = [
                (
                    link.context.trace_id.to_bytes(16, "big"),
                    link.context.span_id.to_bytes(8, "big"),
                    _attrs(link.attributes),
                )
                for link in raw_links
                if link.context.is_valid
            ] or None
        status = span.status
        start = span.start_time or 0
        write_span(
            span.name,
            ctx.trace_id.to_bytes(16, "big"),
            ctx.span_id.to_bytes(8, "big"),
            parent_id,
            start,
            span.end_time or start,
            status.status_code._value_,  # _value_: the enum's plain slot, faster than .value
            span.kind._value_ + 1,  # the SDK counts from INTERNAL = 0, OTLP from 1
            status.description or "",
            attrs,
            events,
            links,
            ctx.trace_flags,  # an int subclass
        )

    def shutdown(self) -> None:
        """Wait up to ``flush_timeout`` seconds for the drainer (``fastbuf.flush``)."""
        fastbuf.flush(self._flush_timeout)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """``fastbuf.flush``: True once the drainer took every record written so far."""
        return fastbuf.flush(max(0.0, timeout_millis / 1000.0))


# ---- logs -----------------------------------------------------------------------------


def _body(body: Any) -> str:
    if isinstance(body, str):
        return body
    if body is None:
        return ""
    if isinstance(body, Mapping | list | tuple):
        try:
            return json.dumps(body, default=str, ensure_ascii=False)
        except Exception:
            pass
    return str(body)


class FastbufLogRecordProcessor(LogRecordProcessor):
    """An SDK log record processor that writes each record into the ring at once.

    ``logger_provider.add_log_record_processor(FastbufLogRecordProcessor())``. Works
    with the SDK's ``ReadWriteLogRecord`` (1.35+) and the older ``LogData``: both carry
    the record as ``.log_record``. The record keeps its trace and span ids, severity,
    body (a non-string body as JSON) and attributes; ``event_name`` becomes the
    ``event.name`` attribute and the instrumentation scope ``otel.scope.name``. The
    severity text is fastbuf's for the severity number (``WARN``, not the logging
    handler's ``WARNING``), as on every path; the SDK's older code location names
    (``code.filepath``, ``code.lineno``, ``code.function``) become ``code.file.path``,
    ``code.line.number`` and ``code.function.name``.
    """

    def __init__(self, *, flush_timeout: float = 5.0) -> None:
        self._flush_timeout = float(flush_timeout)
        install_context_bridge()

    def on_emit(self, log_record: Any) -> None:
        """Write the record; never raises into the SDK."""
        try:
            self._write(log_record)
        except Exception as exc:
            _warn_once("log record", exc)

    def emit(self, log_data: Any) -> None:
        """The name SDKs before 1.28 called."""
        self.on_emit(log_data)

    def _write(self, data: Any) -> None:
        record = getattr(data, "log_record", data)
        resource = getattr(data, "resource", None) or getattr(record, "resource", None)
        merge_resource(resource.attributes if resource is not None else None)
        attrs = _attrs(record.attributes)
        _clip_stacktrace(attrs)
        _rename_code_keys(attrs)
        event_name = getattr(record, "event_name", None)
        if event_name:
            attrs["event.name"] = event_name
        _scope_attrs(attrs, getattr(data, "instrumentation_scope", None))
        sev = record.severity_number
        number = int(sev.value) if sev is not None else 0
        text = severity_name(number) if number else (record.severity_text or "")
        body = _body(record.body)
        ts = int(record.timestamp or record.observed_timestamp or 0)
        trace_id = record.trace_id or 0
        span_id = record.span_id or 0
        sc = current_scope()
        if trace_id and span_id:
            tid = trace_id.to_bytes(16, "big")
            sid = span_id.to_bytes(8, "big")
            if sc.trace_id == tid and sc.span_id == sid:
                write_log(number, text, body, attrs, ts)
                return
            # Made under another span than fastbuf's current one: use the record's ids.
            scope = sc.with_span(tid, sid, int(record.trace_flags or 0), False)
        elif sc.span_id is not None:
            # Made outside any span although fastbuf has one: keep it out of that trace.
            scope = make_scope(sc.attrs)
        else:
            write_log(number, text, body, attrs, ts)
            return
        token = scope_var.set(scope)
        try:
            write_log(number, text, body, attrs, ts)
        finally:
            scope_var.reset(token)

    def shutdown(self) -> None:
        """Wait up to ``flush_timeout`` seconds for the drainer (``fastbuf.flush``)."""
        fastbuf.flush(self._flush_timeout)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """``fastbuf.flush``: True once the drainer took every record written so far."""
        return fastbuf.flush(max(0.0, timeout_millis / 1000.0))
