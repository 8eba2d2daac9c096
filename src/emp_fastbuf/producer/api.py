"""The telemetry API: configuration, correlation scopes, trace context, metrics.

The per-call hot paths (``emit``, ``log.*``, ``span``, instrument updates) live in the
native ``_codec`` module; this module sets them up and holds everything that is not hot.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import operator
import os
import platform
import random
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload
from urllib.parse import unquote

from emp_fastbuf._version import __version__
from emp_fastbuf.errors import RingCorrupt, RingError, RingNotFound
from emp_fastbuf.producer import _codec, crash, otelenv
from emp_fastbuf.producer._codec import Instrument, Log, scope_var
from emp_fastbuf.records import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    SPAN_KIND_CLIENT,
    SPAN_KIND_CONSUMER,
    SPAN_KIND_INTERNAL,
    SPAN_KIND_PRODUCER,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    UPDOWNCOUNTER,
)
from emp_fastbuf.ring import DEFAULT_SIZE, Ring, default_ring_name, layout_for, shm

_logger = logging.getLogger("emp_fastbuf")

DEFAULT_RING_SIZE = DEFAULT_SIZE
ON_FULL_ENV = "EMP_FASTBUF_ON_FULL"
MAX_BLOCK_MS = 60_000.0
# What OpenTelemetry calls a service that did not name itself.
UNKNOWN_SERVICE = "unknown_service:python"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class _State:
    ring: Ring | None = None
    ring_name: str = ""
    service: str = UNKNOWN_SERVICE
    machine_id: str = ""
    worker_id: str | None = None  # None: host name and pid, recomputed after fork
    resource_attributes: dict[str, Any] = field(default_factory=dict)
    instance_id: str = ""
    disabled: bool = False
    disabled_by_error: bool = False  # off because attaching failed, not by OTEL_SDK_DISABLED
    block_ns: int = 0  # the on-full policy: 0 drops at once
    dropped_at_flush: int = 0  # drops counted when flush() last returned
    pid: int = 0


_state = _State()
_lock = threading.RLock()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def parse_resource_attributes(value: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES``: ``k=v,k2=v2``, percent-encoded. Malformed pairs are
    skipped (telemetry configuration must never crash the worker)."""
    out: dict[str, str] = {}
    for part in value.split(","):
        if "=" not in part:
            continue
        key, _, val = part.partition("=")
        key = unquote(key.strip())
        if key:
            out[key] = unquote(val.strip())
    return out


# The OpenTelemetry resource conventions for the SDK and the Python runtime.
_RUNTIME = {
    "process.runtime.name": sys.implementation.name,
    "process.runtime.version": platform.python_version(),
    "process.runtime.description": sys.version,
    "telemetry.sdk.name": "emp-fastbuf",
    "telemetry.sdk.language": "python",
    "telemetry.sdk.version": __version__,
}


def _resource() -> dict[str, Any]:
    st = _state
    host = socket.gethostname()
    pid = os.getpid()
    attrs: dict[str, Any] = dict(st.resource_attributes)
    attrs.update(
        {
            "service.name": st.service,
            "service.instance.id": st.instance_id,
            "host.name": host,
            "process.pid": pid,
            "emp.machine_id": st.machine_id or host,
            "emp.worker_id": st.worker_id or f"{host}-{pid}",
            **_RUNTIME,
        }
    )
    return attrs


def _publish_resource() -> None:
    if _state.ring is not None:
        resource = _resource()
        _state.ring.set_meta(_codec.encode_resource(resource, "emp_fastbuf", __version__))
        crash.describe(_state.ring_name, resource)  # whose a fatal-error dump is


# The last merge: (the attributes merged, this process's resource attribute dict then).
# A bridge merges for every record it writes; while both are the same objects there is
# nothing to do. A new configure() makes a new dict, so the next merge runs again.
_merged: tuple[object, object] | None = None


def merge_resource(attributes: Mapping[str, Any] | None) -> None:
    """Merge another SDK's resource attributes into the resource this process publishes
    in its lane: ``service.name`` only where fastbuf has none (``unknown_service:python``), the
    identity attributes fastbuf sets itself keep fastbuf's values, any other key takes
    the new value. Attaches first when not attached yet (attaching later would reset the
    resource). Costs an identity check when called again with the same mapping."""
    global _merged
    merged = _merged
    if merged is not None and merged[0] is attributes and merged[1] is _state.resource_attributes:
        return
    if not attributes:
        return
    if _state.ring is None:
        auto_attach()  # now: attaching after the merge would reset the resource
        if _state.ring is None:
            return
    with _lock:
        st = _state
        changed = False
        for key, value in attributes.items():
            if key == "service.name":
                # fastbuf's own service name wins; the SDK's fills in when there is none.
                svc = str(value)
                if st.service == UNKNOWN_SERVICE and not svc.startswith("unknown_service"):
                    st.service = svc
                    changed = True
                continue
            if st.resource_attributes.get(key) != value:
                st.resource_attributes[key] = list(value) if isinstance(value, tuple) else value
                changed = True
        if changed:
            _publish_resource()
        _merged = (attributes, st.resource_attributes)


def _after_fork() -> None:
    # A forked child is a new producer: new pid, new instance id, its own lane. Called
    # by the child's first record; _lock is a fresh one there (_reinit_locks_in_child).
    with _lock:
        _state.pid = os.getpid()
        _state.instance_id = uuid.uuid4().hex
        _publish_resource()


def parse_on_full(value: object) -> int:
    """``"drop"`` (0) or ``"block:<ms>"``: the nanoseconds a write may wait for room."""
    if not isinstance(value, str):
        raise TypeError(f"on_full must be a str, not {type(value).__name__}")
    text = value.strip().lower()
    if text == "drop":
        return 0
    kind, sep, ms = text.partition(":")
    if kind == "block" and sep:
        try:
            wait = float(ms)
        except ValueError:
            wait = -1.0
        if 0 < wait <= MAX_BLOCK_MS:
            return int(wait * 1_000_000)
    raise ValueError(
        f"on_full must be 'drop' or 'block:<ms>' with 0 < ms <= {MAX_BLOCK_MS:.0f}, "
        f"got {value[:40]!r}"
    )


def _open_ring(name: str, create: bool, size: int) -> Ring:
    last: Exception | None = None
    for _ in range(50):
        try:
            return Ring.open(name)
        except RingNotFound as exc:
            last = exc
            if not create:
                raise
            try:
                fitted = shm.create_size(size, lambda w: _logger.warning("emp_fastbuf: %s", w))
                return Ring.create(name, fitted, exist_ok=True)
            except RingCorrupt as exc2:  # another process is creating it right now
                last = exc2
        except RingCorrupt as exc:
            last = exc
        threading.Event().wait(0.01)
    assert last is not None
    raise last


def configure(
    service: str | None = None,
    machine_id: str | None = None,
    worker_id: str | None = None,
    ring: str | None = None,
    *,
    resource_attributes: Mapping[str, Any] | None = None,
    create: bool = True,
    ring_size: int | None = None,
    on_full: str | None = None,
    max_attributes: int | None = None,
    max_key_length: int | None = None,
    max_value_length: int | None = None,
    agent: str | None = None,
) -> None:
    """Set who this process is and which ring it writes to (all optional).

    Unset values come from the environment (``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``EMP_MACHINE_ID``, ``EMP_WORKER_ID``,
    ``EMP_FASTBUF_RING``). The ring is created when missing (``create=True``), with
    ``ring_size`` bytes of lanes (``EMP_FASTBUF_RING_SIZE``, default 128 MiB; less where
    /dev/shm is short, with one warning).
    ``on_full`` (``EMP_FASTBUF_ON_FULL``): ``"drop"`` (default: a write that finds no room
    is dropped and counted at once) or ``"block:<ms>"`` (it waits up to that long for
    room, the GIL released, then drops).
    ``agent``: ``"spawn"`` (default, from ``EMP_FASTBUF_AGENT``) starts a drainer when none
    holds the ring; ``"external"`` leaves that to the operator.
    Uncaught exceptions (main thread, threads, asyncio loops) and exceptions leaving a
    ``span`` become ERROR records from then on, and a fatal error (segfault, abort) a dump
    the agent delivers as one, unless ``EMP_FASTBUF_CAPTURE_EXCEPTIONS=false``
    (``producer.crash``).
    ``max_attributes`` and ``max_value_length`` hold for every record; unset, the
    OpenTelemetry variables ``OTEL_ATTRIBUTE_COUNT_LIMIT`` and
    ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` (and their ``OTEL_SPAN_*`` and
    ``OTEL_LOGRECORD_*`` forms, for spans and for logs and events) set them. Spans are
    sampled as ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` say (default
    ``parentbased_always_on``). A bad value in any of these variables is ignored with
    one warning.
    """
    _check_str(service=service, machine_id=machine_id, worker_id=worker_id, ring=ring)
    env = os.environ
    if ring_size is not None:
        layout_for(ring_size)  # TypeError / ValueError for a size that cannot be used
    block_ns = _on_full_wait(on_full, env)
    _codec.set_limits(
        key_length=max_key_length, **otelenv.limits(env, max_attributes, max_value_length)
    )
    _codec.set_sampler(*otelenv.sampler(env))
    with _lock:
        if _truthy(env.get("OTEL_SDK_DISABLED")):
            _state.disabled = True
            _codec.bind(None, None, None, True)
            return
        _set_identity(service, machine_id, worker_id, resource_attributes, env)
        name = _ring_name(ring, env)
        _attach(name, create, ring_size, block_ns, env)
    crash.install(_live_ring)
    _ensure_drainer(agent, name, env)


def _check_str(**values: object) -> None:
    for label, value in values.items():
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{label} must be a str, not {type(value).__name__}")


def _on_full_wait(on_full: str | None, env: Mapping[str, str]) -> int:
    """The on-full policy in ns: ``on_full``, else ``EMP_FASTBUF_ON_FULL``, else the one in
    force. A bad value in the environment is ignored with a warning (the environment must
    not stop the worker); a bad argument raises."""
    if on_full is not None:
        return parse_on_full(on_full)
    value = env.get(ON_FULL_ENV)
    if value:
        try:
            return parse_on_full(value)
        except ValueError as exc:
            _logger.warning("emp_fastbuf: %s=%r ignored: %s", ON_FULL_ENV, value, exc)
    return _state.block_ns


def _set_identity(
    service: str | None,
    machine_id: str | None,
    worker_id: str | None,
    resource_attributes: Mapping[str, Any] | None,
    env: Mapping[str, str],
) -> None:
    """Who this process is: the arguments, else the environment, else the defaults."""
    res = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    if resource_attributes:
        res.update(resource_attributes)
    svc = service or env.get("OTEL_SERVICE_NAME") or res.get("service.name")
    _state.service = str(svc or UNKNOWN_SERVICE)
    _state.machine_id = machine_id or env.get("EMP_MACHINE_ID") or socket.gethostname()
    _state.worker_id = worker_id or env.get("EMP_WORKER_ID") or None
    _state.resource_attributes = res
    _state.instance_id = _state.instance_id or uuid.uuid4().hex
    _state.pid = os.getpid()


def _ring_name(ring: str | None, env: Mapping[str, str]) -> str:
    # Without ``ring``, an attached process keeps its ring (configure() may only be
    # changing limits or identity).
    if ring:
        return ring
    if _state.ring is not None and _state.ring_name:
        return _state.ring_name
    return env.get("EMP_FASTBUF_RING") or default_ring_name()


def _attach(
    name: str, create: bool, ring_size: int | None, block_ns: int, env: os._Environ[str]
) -> None:
    """Write to ring ``name`` from now on (the one attached if it is that one), with the
    resource published in this process's lane."""
    if _state.ring is not None and _state.ring_name == name:
        new_ring = _state.ring
    else:
        size = ring_size
        if size is None:
            size, warning = shm.ring_size_from_env(env)
            if warning is not None:
                _logger.warning("emp_fastbuf: %s", warning)
        new_ring = _open_ring(name, create, size)
        if _state.ring is not None:
            _state.ring.flush(0)
            _state.ring.close()
    new_ring.block_ns = block_ns
    _state.block_ns = block_ns
    _state.ring = new_ring
    _state.ring_name = name
    _state.disabled = False
    _state.disabled_by_error = False
    _publish_resource()
    _codec.bind(new_ring, auto_attach, _after_fork, False)


def _ensure_drainer(agent: str | None, name: str, env: Mapping[str, str]) -> None:
    """``agent="spawn"``: start an agent for ring ``name`` unless one holds it."""
    mode = agent or env.get("EMP_FASTBUF_AGENT", "spawn")
    if mode not in ("spawn", "external"):
        raise ValueError(f"agent must be 'spawn' or 'external', got {mode!r}")
    if mode == "spawn":
        from emp_fastbuf.producer.spawn import ensure_agent

        ensure_agent(name)


def _live_ring() -> Ring | None:
    """The ring this process writes to now (None when detached or off)."""
    return None if _state.disabled else _state.ring


def auto_attach() -> None:
    """Attach to the ring from the environment now, unless attached already or telemetry
    is off: what the first record does without ``configure`` (and ``import
    emp_fastbuf.auto``). Never raises: telemetry that cannot attach is off, with one
    warning."""
    with _lock:
        if _state.ring is not None or _state.disabled:
            return
        try:
            configure()
        except Exception as exc:
            _state.disabled = True
            _state.disabled_by_error = True
            _codec.bind(None, None, None, True)
            _logger.warning("emp_fastbuf: telemetry is off: cannot attach to the ring: %s", exc)


_codec.bind(None, auto_attach, _after_fork, False)
crash.set_attach(auto_attach)
# Spans and context scopes may come before the first record attaches (and configures):
# the variables hold from the start.
_codec.set_limits(**otelenv.limits(os.environ, None, None))
_codec.set_sampler(*otelenv.sampler(os.environ))


@atexit.register
def _release_at_exit() -> None:
    # Hand the lane back: the agent frees it as soon as its records are acknowledged, so
    # short-lived processes do not hold lanes until the liveness check finds them gone.
    # A record written after this (a later exit handler) claims a lane again.
    r = _state.ring
    if r is not None and not r.closed:
        r.hand_back()


def shutdown() -> None:
    """Detach from the ring (records already written stay there for the drainer) and
    turn off the fatal-error dumps that attaching turned on (``producer.crash``)."""
    with _lock:
        if _state.ring is not None:
            _state.ring.close()
        _state.ring = None
        _codec.bind(None, auto_attach, _after_fork, False)
    crash.shutdown()


def ring() -> Ring | None:
    """The ring this process writes to, if attached."""
    return _state.ring


# ---- records -------------------------------------------------------------------------

emit = _codec.emit


def event(name: str, **attrs: Any) -> None:
    """The same as ``emit``: a named event with attributes."""
    _codec.emit(name, **attrs)


log = Log()
span = _codec.span

# OTLP numbering of span kinds and status codes, by the names the API takes.
_SPAN_KINDS = {
    "internal": SPAN_KIND_INTERNAL,
    "server": SPAN_KIND_SERVER,
    "client": SPAN_KIND_CLIENT,
    "producer": SPAN_KIND_PRODUCER,
    "consumer": SPAN_KIND_CONSUMER,
}
_SPAN_STATUSES = {"unset": STATUS_UNSET, "ok": STATUS_OK, "error": STATUS_ERROR}
_MAX_NS = (1 << 64) - 1


def _time_ns(label: str, value: object) -> int:
    """``value`` as ns since the epoch: an int (or an integer type such as numpy's), else
    TypeError; outside the record's 64 bits, the nearest end, counted as coerced."""
    if type(value) is int and 0 <= value <= _MAX_NS:
        return value
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{label} must be an int (ns since the epoch), not {type(value).__name__}")
    ns = operator.index(value)  # type: ignore[arg-type]
    if 0 <= ns <= _MAX_NS:
        return ns
    _codec.count_coerced()
    return 0 if ns < 0 else _MAX_NS


def _choice(label: str, value: object, codes: Mapping[str, int]) -> int:
    code = codes.get(value) if type(value) is str else None
    if code is not None:
        return code
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a str, not {type(value).__name__}")
    raise ValueError(f"{label} must be one of {sorted(codes)}, got {value!r}")


def _random_id(nbytes: int) -> bytes:
    # Never all zero (an invalid id in W3C and OTLP). random reseeds in a forked child.
    while True:
        value = random.getrandbits(nbytes * 8)
        if value:
            return value.to_bytes(nbytes, "big")


def record_span(
    name: str,
    start_unix_nano: int,
    end_unix_nano: int | None = None,
    *,
    attributes: Mapping[str, Any] | None = None,
    kind: str = "internal",
    status: str = "unset",
    message: str = "",
) -> str:
    """Record a span that already happened, with its own start and end times.

    For work whose times are known rather than lived through in a ``with`` block: the
    wait a job spent in a queue before this worker took it, or a GPU kernel timed with
    CUDA events. Times are ``time.time_ns()`` values; ``end_unix_nano`` defaults to now.
    The span is a child of the current span (``fastbuf.span``, ``continue_trace``, an
    OpenTelemetry span through the context bridge), else the root of a new trace, and
    carries the ``fastbuf.context()`` attributes like every record. ``kind`` is
    ``"internal"``, ``"server"``, ``"client"``, ``"producer"`` or ``"consumer"``;
    ``status`` ``"unset"``, ``"ok"`` or ``"error"`` (with ``message``), as in
    ``Span.set_status``.

    The sampler decides as for ``fastbuf.span``: an unsampled span is counted in
    ``stats()["unsampled_spans"]`` and not written.

    Returns the new span's id (lowercase hex). A time that is not an integer (a float,
    say), or a name, message or attributes of the wrong type, raises TypeError; an
    unknown kind or status raises ValueError. A time outside 0..2**64-1 is clamped and an
    end before the start becomes the start, each counted as a coerced value
    (``fastbuf.stats()``): a bad time never costs the span.
    """
    if type(name) is not str:
        raise TypeError(f"span name must be a str, not {type(name).__name__}")
    start = _time_ns("start_unix_nano", start_unix_nano)
    end = time.time_ns() if end_unix_nano is None else _time_ns("end_unix_nano", end_unix_nano)
    if type(attributes) is dict:
        attrs: dict[str, Any] = attributes
    elif attributes is None:
        attrs = {}
    elif isinstance(attributes, Mapping):
        attrs = dict(attributes)
    else:
        raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
    kind_code = _choice("kind", kind, _SPAN_KINDS)
    status_code = _choice("status", status, _SPAN_STATUSES)
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, not {type(message).__name__}")
    if end < start:
        _codec.count_coerced()
        end = start
    sc = _codec.current()
    span_id = _random_id(8)
    trace_id = sc.trace_id if sc.trace_id is not None else _random_id(16)
    _codec.write_span(
        name,
        trace_id,
        span_id,
        sc.span_id,
        start,
        end,
        status_code,
        kind_code,
        message,
        attrs,
        None,
        None,
        _codec.span_flags(sc, trace_id),
    )
    return span_id.hex()


# ---- correlation ---------------------------------------------------------------------


@contextmanager
def _scope(scope: _codec.Scope) -> Iterator[None]:
    """``scope`` is the current scope inside. Left in another context than the one it was
    entered in (a generator finished elsewhere), it leaves that context's scope alone."""
    token = scope_var.set(scope)
    try:
        yield
    except BaseException as exc:
        crash.stash_scope(exc)  # an uncaught one is recorded under the scope it left
        raise
    finally:
        try:
            scope_var.reset(token)
        except ValueError:
            pass


@contextmanager
def context(**attrs: Any) -> Iterator[None]:
    """Every record inside carries these attributes (``job_id`` becomes ``emp.job_id``).
    While it is open, a fatal error of the process is recorded for its ``job_id``."""
    job = crash.enter_job(attrs["job_id"]) if "job_id" in attrs else None
    try:
        with _scope(_codec.current().with_attrs(attrs)):
            yield
    finally:
        crash.leave_job(job)


_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def parse_traceparent(header: object) -> tuple[bytes, bytes, int] | None:
    """(trace id, parent span id, flags) from a W3C ``traceparent``; None if invalid."""
    if not isinstance(header, str):
        return None
    header = header.strip()
    m = _TRACEPARENT.match(header)
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace == "0" * 32 or parent == "0" * 16:
        return None
    return bytes.fromhex(trace), bytes.fromhex(parent), int(flags, 16)


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None outside spans. Its flags are
    the span's: ``01`` when sampled, ``00`` when not, so the next service can follow."""
    sc = _codec.current()
    if sc.trace_id is None or sc.span_id is None:
        return None
    return f"00-{sc.trace_id.hex()}-{sc.span_id.hex()}-{sc.trace_flags & 0xFF:02x}"


@contextmanager
def continue_trace(header: str | None) -> Iterator[None]:
    """Spans inside join the trace of ``header`` (an invalid header is ignored). Under
    a ``parentbased_*`` sampler (the default) they follow its sampled flag: ``-01``
    recorded, ``-00`` not; logs and events inside carry the trace and its flags either
    way."""
    parsed = parse_traceparent(header)
    if parsed is None:
        yield
        return
    trace_id, span_id, flags = parsed
    with _scope(_codec.current().with_span(trace_id, span_id, flags, True)):
        yield


@overload
def traced(name: F) -> F: ...
@overload
def traced(name: str | None = None, **attrs: Any) -> Callable[[F], F]: ...
def traced(name: Any = None, **attrs: Any) -> Any:
    """Decorator: run the function inside a span (``@traced`` or ``@traced("name")``);
    works on coroutine functions too."""
    if callable(name):
        return traced(None)(name)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"span name must be a str, not {type(name).__name__}")

    def decorate(fn: F) -> F:
        span_name = name or fn.__qualname__
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _codec.span(span_name, **attrs):
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _codec.span(span_name, **attrs):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


# ---- metrics ---------------------------------------------------------------------------


class Metrics:
    """``fastbuf.metrics``: instruments are cached by kind, name and unit."""

    def __init__(self) -> None:
        self._instruments: dict[tuple[int, str, str, tuple[float, ...] | None], Instrument] = {}
        self._lock = threading.Lock()

    def _get(
        self, kind: int, name: str, unit: str, description: str, bounds: Any = None
    ) -> Instrument:
        if not isinstance(name, str):
            raise TypeError(f"instrument name must be a str, not {type(name).__name__}")
        if not isinstance(unit, str) or not isinstance(description, str):
            raise TypeError("unit and description must be str")
        bkey = None if bounds is None else tuple(float(b) for b in bounds)
        key = (kind, name, unit, bkey)
        inst = self._instruments.get(key)
        if inst is None:
            with self._lock:
                inst = self._instruments.get(key)
                if inst is None:
                    inst = Instrument(kind, name, unit, description, bkey)
                    self._instruments[key] = inst
        return inst

    def counter(self, name: str, unit: str = "", description: str = "") -> Instrument:
        """A monotonic sum: ``.inc(amount=1, **attrs)``."""
        return self._get(COUNTER, name, unit, description)

    def updowncounter(self, name: str, unit: str = "", description: str = "") -> Instrument:
        """A sum that can go down: ``.add(amount, **attrs)``."""
        return self._get(UPDOWNCOUNTER, name, unit, description)

    def gauge(self, name: str, unit: str = "", description: str = "") -> Instrument:
        """The last value wins: ``.set(value, **attrs)``."""
        return self._get(GAUGE, name, unit, description)

    def histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        bounds: Any = None,
    ) -> Instrument:
        """Explicit-bucket histogram (OpenTelemetry default bounds unless ``bounds``):
        ``.record(value, **attrs)``, ``.record_many(values, **attrs)``."""
        return self._get(HISTOGRAM, name, unit, description, bounds)


metrics = Metrics()


def _reinit_locks_in_child() -> None:
    # Another thread may have held these when the process forked (inside configure(),
    # creating an instrument): the child has a copy, held, and no thread to release it.
    global _lock
    _lock = threading.RLock()
    metrics._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_locks_in_child)


# ---- flush and stats ------------------------------------------------------------------


def _dropped_total() -> int:
    c = _codec.counter_values()
    return int(c["dropped_full"] + c["dropped_no_lane"] + c["dropped_too_large"])


def flush(timeout: float = 5.0) -> bool:
    """Wait until every record this process wrote so far is acknowledged by the agent
    (durable in its spool).

    True when they are and no record was dropped since the previous ``flush()``. False
    at the timeout; when records were dropped since the previous ``flush()`` (ring full,
    no free lane, too large: ``stats()["dropped_by_reason"]`` says which), which then
    counts as reported; and when telemetry is off because it could not attach. Never
    raises for a missing agent.
    """
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
    dropped = _dropped_total()
    lost = dropped != _state.dropped_at_flush
    _state.dropped_at_flush = dropped
    if _state.disabled_by_error:
        return False
    r = _state.ring
    if r is None:
        return not lost
    try:
        return bool(r.flush(float(timeout))) and not lost
    except RingError:
        return False


def stats() -> dict[str, Any]:
    """This process's counters: emitted (total and per kind), dropped by reason, bytes,
    truncated values, dropped attributes, coerced values, and the spans the sampler
    dropped (``unsampled_spans``: never encoded, so in neither ``emitted`` nor
    ``dropped``)."""
    c = _codec.counter_values()
    per_kind = {k: c[k] for k in ("log", "event", "span", "metric")}
    dropped = {
        "full": c["dropped_full"],
        "no_lane": c["dropped_no_lane"],
        "too_large": c["dropped_too_large"],
    }
    r = _state.ring
    return {
        "emitted": sum(per_kind.values()),
        "by_kind": per_kind,
        "dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "bytes": c["bytes"],
        "truncated_values": c["truncated_values"],
        "dropped_attributes": c["dropped_attributes"],
        "coerced_values": c["coerced_values"],
        "unsampled_spans": c["unsampled_spans"],
        "errors": c["errors"],
        "disabled": _state.disabled,
        "ring": _state.ring_name if r is not None else None,
        "pending_bytes": r.pending() if r is not None else 0,
    }
