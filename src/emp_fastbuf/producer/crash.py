"""Capture every crash: an exception nobody handled becomes one ERROR log record.

``install()`` (run by ``configure``, so by the first record and ``import
emp_fastbuf.auto`` too) chains three hooks; each writes the record and then runs the hook
that was there before:

- ``sys.excepthook``: an uncaught exception in the main thread;
- ``threading.excepthook``: an uncaught exception in a thread;
- ``asyncio.BaseEventLoop.call_exception_handler``: what an asyncio loop could not hand
  to anyone (a task's exception never retrieved, a failing callback). Wrapping the method
  of the base class covers every asyncio loop, whenever and however it was made
  (``asyncio.run``, ``asyncio.Runner(loop_factory=...)``, ``new_event_loop``): an
  event-loop policy wrapper misses loops made without the policy and the policy API is
  deprecated; the handler a user set with ``loop.set_exception_handler`` still runs,
  because the original method calls it. Loops of other implementations (uvloop) are not
  covered.

The record: severity 17 (``ERROR``), body ``TYPE: message``, the attributes
``exception.type``, ``exception.message`` and ``exception.stacktrace`` (the traceback as
Python prints it, up to ``STACKTRACE_MAX_CHARS``, cut in the middle beyond).
It carries the trace, span and ``fastbuf.context()`` attributes current where the
exception was raised: the innermost ``fastbuf.span`` (or ``context``/``continue_trace``
scope) it left, whose scope the span hook tags the exception with on the way out. It is
written only while the process is attached (not after ``shutdown()``), and is
in the shared-memory ring once written, so it survives the exit that follows; the agent
delivers it afterwards.

One exception, one record: a span exited by an exception gets its exception event (with
the same three attributes) but no log record, since the code may still handle it; the
record is written once, by the hook that finds it unhandled, and an exception already
recorded is skipped. ``EMP_FASTBUF_CAPTURE_EXCEPTIONS=false`` turns all of this off
(read when an exception happens, and by ``install``). A hook never raises.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from emp_fastbuf.producer import _codec
from emp_fastbuf.records import SEVERITY_ERROR, SEVERITY_TEXT

ENV = "EMP_FASTBUF_CAPTURE_EXCEPTIONS"
#: A crash record's ``exception.stacktrace`` may be this long (characters), above the
#: encoder's value limit, where it takes at most half of the ring's record size in UTF-8
#: (32 KiB of the default 64 KiB); else, or if the record is refused as too large, the
#: value limit applies.
STACKTRACE_MAX_CHARS = 16384

_SCOPE_ATTR = "_emp_fastbuf_scope"  # the innermost scope the exception left
_DONE_ATTR = "_emp_fastbuf_recorded"  # an ERROR record was written for it

_lock = threading.Lock()
_installed = False
# The ring this process writes to now, or None (set by install): a hook that runs after
# ``shutdown()`` writes nothing, rather than attaching again.
_ring: Callable[[], object | None] = lambda: None  # noqa: E731


def enabled() -> bool:
    """False when ``EMP_FASTBUF_CAPTURE_EXCEPTIONS`` is ``false`` (or ``0``, ``no``,
    ``off``)."""
    value = os.environ.get(ENV, "").strip().lower()
    return value not in ("0", "false", "no", "off")


def _value_limit() -> int:
    return int(_codec.get_limits()["max_value_length"])


def clip(text: str, limit: int | None = None) -> str:
    """``text`` cut in the middle to ``limit`` characters (default: the encoder's value
    limit): the first line and the innermost frames with the exception line are what a
    reader needs."""
    if limit is None:
        limit = _value_limit()
    if len(text) <= limit:
        return text
    head, sep, _ = text.partition("\n")
    marker = "  ...\n"
    keep = limit - len(head) - len(sep) - len(marker)
    if not sep or keep <= 0:
        return text[-limit:]
    return head + sep + marker + text[-keep:]


def _format(etype: type[BaseException], exc: BaseException, tb: TracebackType | None) -> str:
    try:
        return "".join(traceback.format_exception(etype, exc, tb))
    except Exception:
        return f"{etype.__qualname__}\n"


def exception_attributes(
    exc_type: type[BaseException] | None,
    exc: BaseException,
    tb: TracebackType | None,
    stack_limit: int | None = None,
) -> dict[str, Any]:
    """The three semantic-convention attributes of ``exc``, the stack trace cut in the
    middle to ``stack_limit`` characters (default: the encoder's value limit)."""
    etype = exc_type if exc_type is not None else type(exc)
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    return {
        "exception.type": getattr(etype, "__qualname__", str(etype)),
        "exception.message": message,
        "exception.stacktrace": clip(_format(etype, exc, tb), stack_limit),
    }


def _tag(exc: BaseException, name: str, value: object) -> None:
    try:
        if getattr(exc, name, None) is None:
            setattr(exc, name, value)
    except Exception:
        pass  # an exception type that takes no attributes: it goes untagged


def stash_scope(exc: BaseException) -> None:
    """Tag ``exc`` with the current scope unless a scope inside tagged it first."""
    if enabled():
        _tag(exc, _SCOPE_ATTR, _codec.current())


def _span_exception(
    exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
) -> dict[str, Any] | None:
    # Span.__exit__: the span's scope is current here.
    if exc is None or not enabled():
        return None
    _tag(exc, _SCOPE_ATTR, _codec.current())
    return exception_attributes(exc_type, exc, tb)


def _stack_budget() -> int:
    """How many characters a crash record's stack trace may take (see
    ``STACKTRACE_MAX_CHARS``)."""
    ring = _ring()
    max_record = int(getattr(ring, "max_record", 0) or 0)
    return max(_value_limit(), min(STACKTRACE_MAX_CHARS, max_record // 2))


def _write(body: str, attrs: dict[str, Any]) -> None:
    stack = attrs["exception.stacktrace"]
    limit = _value_limit()
    if len(stack) > limit:
        budget = _stack_budget()
        raised = clip(stack, budget)
        if len(raised.encode("utf-8", "replace")) <= budget:
            attrs["exception.stacktrace"] = raised
            before = _codec.counter_values()["dropped_too_large"]
            _codec.log_record_raised(
                SEVERITY_ERROR, SEVERITY_TEXT[SEVERITY_ERROR], body, attrs, len(raised)
            )
            if _codec.counter_values()["dropped_too_large"] == before:
                return
        attrs["exception.stacktrace"] = clip(stack, limit)  # at the value limit, as any value
    _codec.log_record(SEVERITY_ERROR, SEVERITY_TEXT[SEVERITY_ERROR], body, attrs)


def record(exc: BaseException, tb: TracebackType | None = None, **extra: Any) -> bool:
    """Write the ERROR record of an unhandled ``exc`` (once per exception), under the
    scope it was raised in. Never raises; True when written now."""
    try:
        if not enabled() or _ring() is None or getattr(exc, _DONE_ATTR, False):
            return False
        if isinstance(exc, SystemExit | GeneratorExit):
            return False
        _tag(exc, _DONE_ATTR, True)
        attrs = exception_attributes(
            type(exc),
            exc,
            tb if tb is not None else exc.__traceback__,
            max(STACKTRACE_MAX_CHARS, _value_limit()),
        )
        attrs.update(extra)
        body = f"{attrs['exception.type']}: {attrs['exception.message']}".splitlines()
        scope = getattr(exc, _SCOPE_ATTR, None)
        token = _codec.scope_var.set(scope) if isinstance(scope, _codec.Scope) else None
        try:
            _write(body[0] if body else "", attrs)
        finally:
            if token is not None:
                _codec.scope_var.reset(token)
        return True
    except Exception:
        return False


def _sys_hook(prev: Callable[..., Any]) -> Callable[..., Any]:
    def excepthook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> Any:
        record(exc, tb)
        return prev(exc_type, exc, tb)

    excepthook.__wrapped__ = prev  # type: ignore[attr-defined]
    return excepthook


def _thread_hook(prev: Callable[..., Any]) -> Callable[..., Any]:
    def excepthook(args: Any) -> Any:
        exc = args.exc_value
        if isinstance(exc, BaseException):
            thread = args.thread
            extra = {"thread.name": thread.name} if thread is not None else {}
            record(exc, args.exc_traceback, **extra)
        return prev(args)

    excepthook.__wrapped__ = prev  # type: ignore[attr-defined]
    return excepthook


def _loop_hook(prev: Callable[..., Any]) -> Callable[..., Any]:
    def call_exception_handler(self: Any, context: dict[str, Any]) -> Any:
        try:
            exc = context.get("exception")
            if isinstance(exc, BaseException):
                record(exc, exc.__traceback__)
        except Exception:
            pass
        return prev(self, context)

    call_exception_handler.__wrapped__ = prev  # type: ignore[attr-defined]
    return call_exception_handler


def install(ring: Callable[[], object | None]) -> None:
    """Chain the three hooks (once per process; nothing when the opt-out is set); they
    write only while ``ring()`` (the ring this process writes to) is not None."""
    global _installed, _ring
    if not enabled():
        return
    with _lock:
        _ring = ring
        if _installed:
            return
        _installed = True
        sys.excepthook = _sys_hook(sys.excepthook)
        threading.excepthook = _thread_hook(threading.excepthook)
        base = asyncio.BaseEventLoop
        base.call_exception_handler = _loop_hook(  # type: ignore[method-assign]
            base.call_exception_handler
        )


_codec.set_span_exception_hook(_span_exception)
