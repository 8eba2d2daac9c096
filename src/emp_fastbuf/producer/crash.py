"""Capture every crash: an exception becomes one ERROR log record, a fatal error a dump the
agent delivers as one.

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
  covered. asyncio is not imported for this (it costs tens of milliseconds): the method
  is wrapped at once where ``asyncio.base_events`` is loaded already, else by a finder on
  ``sys.meta_path`` right after it loads, which then takes itself off.

A ``fastbuf.span`` exited by an exception writes the record too, at the innermost span it
leaves, under that span's trace and span ids and context: a job that fails is recorded
where it failed, whether or not the code above handles the exception.

The record: severity 17 (``ERROR``), body ``TYPE: message``, the attributes
``exception.type``, ``exception.message`` and ``exception.stacktrace``: the traceback as
Python prints it, up to ``STACKTRACE_MAX_CHARS``, cut in the middle beyond. From a span it
is the whole stack: the frames above the span's (its callers) and the traceback down to
the ``raise``. The span's ``exception`` event carries the same three attributes (its stack
trace at the value limit). A hook's record carries the trace, span and
``fastbuf.context()`` attributes current where the exception was raised: the innermost
``context``/``continue_trace`` scope it left, which tags the exception on the way out.
It is written only while the process is attached (not after ``shutdown()``), and is in
the shared-memory ring once written, so it survives the exit that follows; the agent
delivers it afterwards.

One exception, one record: once written, the exception is marked recorded, and outer
spans and the hooks write no other. ``SystemExit``, ``GeneratorExit`` and asyncio's
``CancelledError`` leaving a span are control flow, not crashes: the span gets its event,
and a hook records ``CancelledError`` if it goes uncaught (the other two never).

A fatal error (a segfault, an abort) runs no Python code: ``install`` enables
``faulthandler`` (unless the process enabled it already) into this process's file under
``<home>/crashes/`` (``records.fatal``: a header saying whose process it is, with the job
of the latest ``fastbuf.context(job_id=...)`` still open, then the dump). The agent turns
the dump of a process that is gone into its ERROR record and removes the file.
``shutdown()`` turns faulthandler off and removes the file while it is empty; at exit it
stays on (a crash while the interpreter finalizes is caught too) and the agent removes
the empty file of a process that is gone.

``EMP_FASTBUF_CAPTURE_EXCEPTIONS=false`` turns all of this off (read when an exception
happens, and by ``install``). A hook never raises.
"""

from __future__ import annotations

import faulthandler
import os
import stat
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from emp_fastbuf import paths
from emp_fastbuf.errors import HomeError
from emp_fastbuf.producer import _codec
from emp_fastbuf.records import SEVERITY_ERROR, SEVERITY_TEXT, fatal
from emp_fastbuf.ring import process_start

ENV = "EMP_FASTBUF_CAPTURE_EXCEPTIONS"
#: A crash record's ``exception.stacktrace`` may be this long (characters), above the
#: encoder's value limit, where it takes at most half of the ring's record size in UTF-8
#: (32 KiB of the default 64 KiB); else, or if the record is refused as too large, the
#: value limit applies.
STACKTRACE_MAX_CHARS = fatal.STACKTRACE_MAX_CHARS

_SCOPE_ATTR = "_emp_fastbuf_scope"  # the innermost scope the exception left
_DONE_ATTR = "_emp_fastbuf_recorded"  # an ERROR record was written for it
_STACK_ATTR = "_emp_fastbuf_stack"  # its whole stack, formatted at the span it left first
_LOOP_MODULE = "asyncio.base_events"
_WRAPPED_ATTR = "_emp_fastbuf_wrapped"

_lock = threading.Lock()
_installed = False
# The ring this process writes to now, or None (set by install): a hook that runs after
# ``shutdown()`` writes nothing, rather than attaching again.
_ring: Callable[[], object | None] = lambda: None  # noqa: E731
# How the API attaches on the first record (``set_attach``): a span's exception may come
# before any record was written, and its record is then the first.
_attach: Callable[[], None] | None = None


def enabled() -> bool:
    """False when ``EMP_FASTBUF_CAPTURE_EXCEPTIONS`` is ``false`` (or ``0``, ``no``,
    ``off``)."""
    value = os.environ.get(ENV, "").strip().lower()
    return value not in ("0", "false", "no", "off")


def _value_limit(kind: str = "log") -> int:
    """The string value limit of a LOG record (a crash record), or of a SPAN record (the
    exception event): ``OTEL_LOGRECORD_*`` and ``OTEL_SPAN_*`` may set them apart."""
    return int(_codec.get_limits()[f"{kind}_max_value_length"])


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


def _whole_stack(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` (from the frame handling the exception down to the raise) with the frames
    that called that frame in front: the stack Python prints for an exception that
    reaches the top from there."""
    if tb is None:
        return None
    frame = tb.tb_frame.f_back
    while frame is not None:
        tb = TracebackType(tb, frame, frame.f_lasti, frame.f_lineno)
        frame = frame.f_back
    return tb


def _callers(tb: TracebackType) -> tuple[tuple[int, int], ...]:
    """The frames above ``tb``'s first one, nearest first, each as (id, instruction)."""
    out: list[tuple[int, int]] = []
    frame = tb.tb_frame.f_back
    while frame is not None:
        out.append((id(frame), frame.f_lasti))
        frame = frame.f_back
    return tuple(out)


def _span_stack(etype: type[BaseException], exc: BaseException, tb: TracebackType | None) -> str:
    """The whole stack of ``exc`` leaving a span, formatted once as it propagates: the next
    span out sees the same stack when the frames it passed since are the callers the first
    one saw, at the same instructions (not when the exception was caught and raised again
    elsewhere). Formatting is the costly part: a recursive traced function that fails
    would format it once per level."""
    cached = getattr(exc, _STACK_ATTR, None)
    if tb is not None and isinstance(cached, tuple) and len(cached) == 3:
        marker, callers, text = cached
        passed: list[tuple[int, int]] = []
        entry: TracebackType | None = tb
        while entry is not None and entry is not marker and len(passed) <= len(callers):
            passed.append((id(entry.tb_frame), entry.tb_lasti))
            entry = entry.tb_next
        if entry is marker and tuple(reversed(passed)) == callers[: len(passed)]:
            return str(text)
    text = _format(etype, exc, _whole_stack(tb))
    if tb is not None:
        try:
            setattr(exc, _STACK_ATTR, (tb, _callers(tb), text))
        except Exception:
            pass  # an exception type that takes no attributes: formatted at each span
    return text


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def exception_attributes(
    exc_type: type[BaseException] | None,
    exc: BaseException,
    tb: TracebackType | None,
    stack_limit: int | None = None,
) -> dict[str, Any]:
    """The three semantic-convention attributes of ``exc``, the stack trace cut in the
    middle to ``stack_limit`` characters (default: the encoder's value limit)."""
    etype = exc_type if exc_type is not None else type(exc)
    return {
        "exception.type": getattr(etype, "__qualname__", str(etype)),
        "exception.message": _message(exc),
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


def _record_limit() -> int:
    return max(STACKTRACE_MAX_CHARS, _value_limit())


def _is_control_flow(exc: BaseException) -> bool:
    """An exception that ends work without anything having failed."""
    if isinstance(exc, SystemExit | GeneratorExit):
        return True
    asyncio = sys.modules.get("asyncio")
    cancelled = getattr(asyncio, "CancelledError", None)
    return isinstance(cancelled, type) and isinstance(exc, cancelled)


def _span_exception(
    exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
) -> dict[str, Any] | None:
    # Span.__exit__, on the error path only: the span's scope is current here.
    if exc is None or not enabled():
        return None
    here = _codec.current()
    etype = exc_type if exc_type is not None else type(exc)
    stack = _span_stack(etype, exc, tb)
    attrs = {
        "exception.type": getattr(etype, "__qualname__", str(etype)),
        "exception.message": _message(exc),
        "exception.stacktrace": stack,
    }
    if not getattr(exc, _DONE_ATTR, False) and not _is_control_flow(exc):
        if not _installed and _attach is not None:
            _attach()  # the process's first record: it attaches, as any first record does
        if _ring() is not None:
            # A context() left inside this span tagged a scope with more context (a job
            # id) and this span's ids: that one. One tagged elsewhere (the exception was
            # caught and raised again here) is not this span's.
            scope = getattr(exc, _SCOPE_ATTR, None)
            if not isinstance(scope, _codec.Scope) or scope.span_id != here.span_id:
                scope = here
            _tag(exc, _DONE_ATTR, True)
            try:
                # Outside the main thread, which thread, as the thread hook says too.
                thread = threading.current_thread()
                named = {} if thread is threading.main_thread() else {"thread.name": thread.name}
                _emit(
                    {**attrs, **named, "exception.stacktrace": clip(stack, _record_limit())},
                    scope,
                )
            except Exception:
                pass  # the span still ends, with its event
    _tag(exc, _SCOPE_ATTR, here)
    attrs["exception.stacktrace"] = clip(stack, _value_limit("span"))
    return attrs


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


def _emit(attrs: dict[str, Any], scope: object) -> None:
    """Write the ERROR record with ``attrs`` under ``scope`` (when it is one)."""
    body = f"{attrs['exception.type']}: {attrs['exception.message']}".splitlines()
    token = _codec.scope_var.set(scope) if isinstance(scope, _codec.Scope) else None
    try:
        _write(body[0] if body else "", attrs)
    finally:
        if token is not None:
            _codec.scope_var.reset(token)


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
            type(exc), exc, tb if tb is not None else exc.__traceback__, _record_limit()
        )
        attrs.update(extra)
        _emit(attrs, getattr(exc, _SCOPE_ATTR, None))
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
    setattr(call_exception_handler, _WRAPPED_ATTR, True)
    return call_exception_handler


# ---- asyncio, without importing it ---------------------------------------------------


def _wrap_loops(module: ModuleType) -> bool:
    """Wrap ``call_exception_handler`` of ``module.BaseEventLoop`` (once); False when the
    module has no such class (yet)."""
    base = getattr(module, "BaseEventLoop", None)
    method = getattr(base, "call_exception_handler", None)
    if base is None or method is None:
        return False
    if not getattr(method, _WRAPPED_ATTR, False):
        base.call_exception_handler = _loop_hook(method)
    return True


class _LoaderThenWrap:
    """The loader of ``asyncio.base_events``, which wraps the loops once it ran."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its own loader (reload, get_source), not this wrapper.
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        if _wrap_loops(module):
            _unwatch()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _LoopWatch:
    """A ``sys.meta_path`` finder that lets the others find ``asyncio.base_events`` and
    hands its spec back with ``_LoaderThenWrap``; every other name costs one comparison."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _LOOP_MODULE:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _LoaderThenWrap(spec.loader)
            return spec
        return None


def _unwatch() -> None:
    for finder in list(sys.meta_path):
        if isinstance(finder, _LoopWatch):
            try:
                sys.meta_path.remove(finder)
            except ValueError:
                pass  # another thread took it off


def _watch_loops() -> None:
    """Wrap the loops now if asyncio is loaded, else once it is."""
    module = sys.modules.get(_LOOP_MODULE)
    if module is not None and _wrap_loops(module):
        return
    if not any(isinstance(f, _LoopWatch) for f in sys.meta_path):
        sys.meta_path.insert(0, _LoopWatch())


# ---- fatal errors: faulthandler into a file the agent reads ----------------------------


class _FatalFile:
    """This process's fatal-error file, which faulthandler writes to."""

    def __init__(self, path: Path, fd: int, header: fatal.Header) -> None:
        self.path = path
        self.fd = fd
        self.file = open(fd, "wb", buffering=0)  # noqa: SIM115 - kept open for faulthandler
        self.header = header
        self.pid = header.pid

    def rewrite(self) -> None:
        """The header again, in place (the dump goes after it)."""
        os.pwrite(self.fd, fatal.encode_header(self.header), 0)

    def close(self, remove_if_empty: bool) -> None:
        try:
            empty = os.fstat(self.fd).st_size <= fatal.HEADER_SIZE
        except OSError:
            empty = False
        self.file.close()
        if remove_if_empty and empty:
            try:
                self.path.unlink()
            except OSError:
                pass


_fatal: _FatalFile | None = None
# The ring and resource this process described last (``describe``).
_identity: tuple[str, dict[str, Any]] = ("", {})
# The job ids of the ``fastbuf.context(job_id=...)`` scopes open now, in entry order.
_jobs: list[tuple[object, str]] = []


def _crash_dir() -> Path:
    """``<home>/crashes``, made (0700) if missing; OSError or HomeError when it is not a
    directory of this user."""
    home = paths.checked_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = home / paths.CRASH_DIR
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise OSError(f"{directory} is not a directory of this user")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)
    return directory


def _header(pid: int, start: int) -> fatal.Header:
    ring_name, resource = _identity
    return fatal.Header(
        pid=pid,
        start=start,
        ring=ring_name,
        resource=dict(resource, **{"process.pid": pid}),
        job_id=_jobs[-1][1] if _jobs else None,
    )


def _enable_fatal() -> None:
    """Enable faulthandler into a new file of this process, unless it is on already (the
    process's own choice, ``-X faulthandler``, or this file). Called under ``_lock``."""
    global _fatal
    if _fatal is not None or faulthandler.is_enabled():
        return
    fd = -1
    path: Path | None = None
    try:
        pid = os.getpid()
        header = _header(pid, int(process_start(pid)))
        path = _crash_dir() / fatal.file_name(header.pid, header.start, os.urandom(8).hex())
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        if os.write(fd, fatal.encode_header(header)) != fatal.HEADER_SIZE:
            raise OSError("short write")
        opened = _FatalFile(path, fd, header)
        fd = -1  # the file object owns it now
        faulthandler.enable(file=opened.file, all_threads=True)
        _fatal = opened
    except (OSError, HomeError, ValueError, RuntimeError):
        # No home, a full disk, a foreign crashes/: no fatal-error dumps, nothing else lost.
        if fd >= 0:
            os.close(fd)
        if path is not None and _fatal is None:
            try:
                path.unlink()
            except OSError:
                pass


def _update_header() -> None:
    """Rewrite the header if what it says changed. Called under ``_lock``."""
    current = _fatal
    if current is None or current.pid != os.getpid():
        return
    header = _header(current.pid, current.header.start)
    if header != current.header:
        current.header = header
        try:
            current.rewrite()
        except OSError:
            pass


def describe(ring_name: str, resource: dict[str, Any]) -> None:
    """The ring and resource this process writes with, for the header of its
    fatal-error file (the API calls this whenever it publishes its resource)."""
    global _identity
    with _lock:
        _identity = (ring_name, dict(resource))
        _update_header()


def enter_job(job_id: object) -> object | None:
    """A ``fastbuf.context(job_id=...)`` opens: the job a fatal error is recorded for
    until it closes. Returns the token for ``leave_job`` (None: no file to tell)."""
    if _fatal is None:
        return None
    token = object()
    with _lock:
        _jobs.append((token, str(job_id)))
        _update_header()
    return token


def leave_job(token: object | None) -> None:
    """The context of ``enter_job``'s ``token`` closed."""
    if token is None:
        return
    with _lock:
        for i in range(len(_jobs) - 1, -1, -1):
            if _jobs[i][0] is token:
                del _jobs[i]
                break
        _update_header()


def _after_fork_in_child() -> None:
    # The child inherits faulthandler writing to the parent's file: it gets its own. The
    # lock may have been held by another thread of the parent, which the child lacks.
    global _lock, _fatal
    _lock = threading.Lock()
    inherited = _fatal
    if inherited is None:
        return
    _fatal = None
    try:
        faulthandler.disable()
        inherited.close(remove_if_empty=False)  # the parent's file stays the parent's
    except Exception:
        pass
    if enabled():
        _enable_fatal()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def shutdown() -> None:
    """Turn faulthandler off (when ``install`` turned it on) and remove this process's
    fatal-error file while it is empty."""
    global _fatal
    with _lock:
        current, _fatal = _fatal, None
        if current is None:
            return
        if current.pid == os.getpid():
            faulthandler.disable()
        current.close(remove_if_empty=current.pid == os.getpid())


def set_attach(attach: Callable[[], None]) -> None:
    """What attaches this process when a span's exception is its first record (the API's
    ``auto_attach``, which never raises)."""
    global _attach
    _attach = attach


def install(ring: Callable[[], object | None]) -> None:
    """Chain the three hooks (once per process) and enable faulthandler into this
    process's fatal-error file; nothing when the opt-out is set. The hooks write only
    while ``ring()`` (the ring this process writes to) is not None."""
    global _installed, _ring
    if not enabled():
        return
    with _lock:
        _ring = ring
        _enable_fatal()
        if _installed:
            return
        _installed = True
        sys.excepthook = _sys_hook(sys.excepthook)
        threading.excepthook = _thread_hook(threading.excepthook)
        _watch_loops()


_codec.set_span_exception_hook(_span_exception)
