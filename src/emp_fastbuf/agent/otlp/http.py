"""The OTLP exporter: compression, retries with ``Retry-After``, circuit breaker, dead-letter.

Each signal is sent with its own settings (``AgentConfig.export_settings``): over HTTP as
protobuf (``http/protobuf``) or JSON (``http/json``, :mod:`emp_fastbuf.agent.otlp.otlpjson`),
or over gRPC (:mod:`emp_fastbuf.agent.otlp.grpc`, imported only when a signal uses it).
One :class:`OTLPExporter` owns a keep-alive ``urllib3.PoolManager`` per TLS setting (TLS
verification on: the signal's CERTIFICATE, else the system trust store; its client
certificate when one is set). :meth:`OTLPExporter.export` takes a serialized,
uncompressed ``Export*ServiceRequest`` and answers with an :class:`ExportResult`:

* ``ok``: delivered (possibly with a partial success, which is counted, never retried);
* ``retry_later``: not delivered yet (retry deadline reached, circuit open, exporter
  closed); the caller keeps the batch in its spool and offers it again later;
* ``dead_letter``: the endpoint refused it for good (400, 401, 413, 500...): the payload is
  written under ``<home>/dead-letter/`` with its status and response body
  (:mod:`emp_fastbuf.agent.otlp.deadletter_files`), unless the exporter was made with
  ``dead_letter=False`` (a replay of a dead letter, which keeps its own files).

Only 429, 502, 503, 504, connection failures and timeouts are retried, as OTLP prescribes;
over gRPC, the codes it names (UNAVAILABLE, DEADLINE_EXCEEDED..., RESOURCE_EXHAUSTED only
with a RetryInfo, whose delay is then honoured like a ``Retry-After``). gRPC compresses
inside grpcio: ``bytes_on_wire`` counts its messages before that compression.

Each attempt has one total deadline, the signal's timeout, for connect, send and the whole
response: a server that trickles its answer is cut off when it passes, and the attempt
counts as a timeout. At most ``RESPONSE_MAX_BYTES`` of a response body are read.
"""

from __future__ import annotations

import collections
import dataclasses
import email.utils
import gzip
import logging
import math
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import urllib3
import urllib3.connection
import zstandard
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from emp_fastbuf import paths
from emp_fastbuf._version import __version__
from emp_fastbuf.agent.config import (
    REDACTED,
    SIGNALS,
    AgentConfig,
    Compression,
    Signal,
    SignalExport,
    no_passphrase,
    redact_url,
)
from emp_fastbuf.agent.otlp import deadletter_files, otlpjson
from emp_fastbuf.values import percentile

if TYPE_CHECKING:
    from emp_fastbuf.agent.otlp.grpc import GrpcTransport

log = logging.getLogger("emp_fastbuf.agent")

ExportStatus = Literal["ok", "retry_later", "dead_letter"]

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = f"emp-fastbuf/{__version__}"
# Bytes of a response body kept for logs and dead-letter sidecars.
_BODY_KEEP = 64 * 1024
# A longer response body is not read: the connection is closed instead.
RESPONSE_MAX_BYTES = 4 << 20
_DELTA_SECONDS = re.compile(r"[0-9]+")
_LATENCY_RESERVOIR = 512

_RESPONSE_TYPES: dict[Signal, Callable[[], Message]] = {
    "logs": ExportLogsServiceResponse,
    "traces": ExportTraceServiceResponse,
    "metrics": ExportMetricsServiceResponse,
}
_REJECTED_FIELD: dict[Signal, str] = {
    "logs": "rejected_log_records",
    "traces": "rejected_spans",
    "metrics": "rejected_data_points",
}


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff, deadline and circuit-breaker settings (defaults suit production)."""

    initial_backoff_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 30.0
    # Total time one export() call may spend before it answers retry_later.
    max_elapsed_s: float = 60.0
    # A Retry-After beyond this is clamped: a misbehaving server cannot park us for days.
    max_retry_after_s: float = 600.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 5.0
    breaker_max_cooldown_s: float = 300.0

    def __post_init__(self) -> None:
        for name in (
            "initial_backoff_s",
            "max_backoff_s",
            "max_elapsed_s",
            "max_retry_after_s",
            "breaker_cooldown_s",
            "breaker_max_cooldown_s",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be >= 1")
        if not isinstance(self.breaker_threshold, int) or self.breaker_threshold < 1:
            raise ValueError("RetryPolicy.breaker_threshold must be an integer >= 1")

    def backoff(self, retry: int) -> float:
        """Full-jitter wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return random.uniform(0.0, ceiling)


@dataclass(frozen=True)
class ExportResult:
    """The outcome of one :meth:`OTLPExporter.export` call. ``http_status`` is None over
    gRPC (``message`` names the gRPC status code)."""

    status: ExportStatus
    http_status: int | None = None
    rejected: int = 0
    message: str = ""
    attempts: int = 0
    #: The endpoint's answer to the last attempt when it was not a success: at most 64 KiB,
    #: every secret replaced.
    body: bytes = field(default=b"", compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when the endpoint accepted the request."""
        return self.status == "ok"


@dataclass(frozen=True)
class _Failure:
    """An attempt that may be retried: why it failed, the server's ``Retry-After``, and
    its answer when there was one (status, scrubbed body)."""

    reason: str
    retry_after: float | None = None
    http_status: int | None = None
    body: bytes = b""


def _per_signal() -> dict[str, int]:
    return dict.fromkeys(SIGNALS, 0)


@dataclass
class ExporterStats:
    """Counters of an exporter; read them through :meth:`OTLPExporter.stats`."""

    requests: dict[str, int] = field(default_factory=_per_signal)
    exported: dict[str, int] = field(default_factory=_per_signal)
    bytes_uncompressed: dict[str, int] = field(default_factory=_per_signal)
    bytes_on_wire: dict[str, int] = field(default_factory=_per_signal)
    retries: dict[str, int] = field(default_factory=_per_signal)
    dead_lettered: dict[str, int] = field(default_factory=_per_signal)
    partial_rejected: dict[str, int] = field(default_factory=_per_signal)
    failures: dict[str, int] = field(default_factory=_per_signal)
    retry_later: dict[str, int] = field(default_factory=_per_signal)
    breaker_opened: int = 0
    last_error: str | None = None
    last_error_ns: int | None = None
    last_latency_s: float | None = None
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_LATENCY_RESERVOIR)
    )


class _Breaker:
    """Consecutive-failure circuit breaker with a growing cool-down and one half-open probe."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._failures = 0
        self._open_until: float | None = None
        self._cooldown = policy.breaker_cooldown_s
        self._probing = False

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self._open_until is None:
            return "closed"
        if self._probing or time.monotonic() >= self._open_until:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether an attempt may go out now; takes the half-open probe slot if due."""
        if self._open_until is None:
            return True
        if self._probing or time.monotonic() < self._open_until:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False
        self._cooldown = self._policy.breaker_cooldown_s

    def failure(self) -> bool:
        """Record a failed attempt; True when this failure opened (or reopened) the breaker."""
        self._failures += 1
        if self._probing:
            # The probe failed: open again, for longer.
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self._policy.breaker_max_cooldown_s)
            self._open_until = time.monotonic() + self._cooldown
            return True
        if self._open_until is None and self._failures >= self._policy.breaker_threshold:
            self._open_until = time.monotonic() + self._cooldown
            return True
        return False

    def release_probe(self) -> None:
        """The probe ended without a verdict on the endpoint (e.g. the exporter closed)."""
        self._probing = False


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date).

    Anything else, e.g. a digit that is not ASCII ("²"), is None: as if absent.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)  # inf for absurdly many digits; the caller clamps
    if not value.isascii() or not value.isprintable():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class RequestDeadlineError(urllib3.exceptions.TimeoutError):
    """An attempt passed its total deadline (the signal's timeout) and was cut off."""


class _Attempt:
    """One attempt's total deadline, and the timer that enforces it."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.watchdog: threading.Timer | None = None
        self.expired = False  # set by the timer's thread


class _Current(threading.local):
    """The attempt this thread is sending, for the connection classes."""

    attempt: _Attempt | None = None


_current = _Current()


def _arm_watchdog(conn: urllib3.connection.HTTPConnection) -> None:
    """Cut ``conn`` off when this thread's attempt passes its deadline.

    urllib3's timeouts bound each socket operation, not the request: a server sending one
    byte per second keeps every read under its timeout forever. Shutting the socket down
    from a timer ends whatever read or write is blocked.
    """
    state = _current.attempt
    if state is None:
        return
    if state.expired:
        # It fired while the socket was being made: nothing was there to shut down.
        raise RequestDeadlineError("the deadline passed while connecting")
    if state.watchdog is not None:
        return

    def expire() -> None:
        state.expired = True
        sock = conn.sock
        if sock is not None:
            try:
                # socket.socket's own shutdown, also for an SSLSocket: only the fd.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(max(0.0, state.deadline - time.monotonic()), expire)
    timer.daemon = True
    state.watchdog = timer
    timer.start()


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        _arm_watchdog(self)
        super().connect()
        _arm_watchdog(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _arm_watchdog(self)
        super().request(*args, **kwargs)


class _HTTPSConnection(_HTTPConnection, urllib3.connection.HTTPSConnection):
    """The same watchdog over TLS: the MRO puts urllib3's HTTPS connection under it."""


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_TLSKey = tuple[Path | None, Path | None, Path | None]


def _tls_key(export: SignalExport) -> _TLSKey:
    return (export.certificate, export.client_certificate, export.client_key)


def _tls_context(key: _TLSKey) -> ssl.SSLContext:
    """urllib3's defaults with the trust store (and the client certificate) loaded once,
    not for every connection (tens of milliseconds that would count against each
    attempt's deadline)."""
    certificate, client_certificate, client_key = key
    context = urllib3.util.ssl_.create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    if certificate is None:
        context.load_default_certs()
    else:
        context.load_verify_locations(cafile=str(certificate))
    if client_certificate is not None:
        context.load_cert_chain(
            str(client_certificate),
            None if client_key is None else str(client_key),
            password=no_passphrase,
        )
    return context


def _pool_manager(key: _TLSKey) -> urllib3.PoolManager:
    pool = urllib3.PoolManager(
        num_pools=4,
        maxsize=4,
        block=False,
        cert_reqs="CERT_REQUIRED",
        ssl_context=_tls_context(key),
        retries=False,
    )
    # Connections that hold each attempt to its deadline (see _arm_watchdog).
    pool.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
    return pool


def _read_bounded(response: urllib3.BaseHTTPResponse) -> bytes:
    """The body, or its first ``RESPONSE_MAX_BYTES`` (the connection is then closed)."""
    try:
        data = response.read(RESPONSE_MAX_BYTES + 1)
        if len(data) > RESPONSE_MAX_BYTES:
            log.warning(
                "OTLP response body larger than %d bytes: the rest is not read",
                RESPONSE_MAX_BYTES,
            )
            response.close()  # unread bytes: the connection cannot be reused
            return data[:RESPONSE_MAX_BYTES]
        return data
    finally:
        response.release_conn()


class _RedactRequestTargets(logging.Filter):
    """urllib3 logs each request line at DEBUG: keep an endpoint's query string out."""

    _QUERY = re.compile(r'(\S)\?[^\s"]+')

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._QUERY.sub(rf"\1?{REDACTED}", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _install_log_filter() -> None:
    target = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _RedactRequestTargets) for f in target.filters):
        target.addFilter(_RedactRequestTargets())


class OTLPExporter:
    """Sends OTLP requests for the three signals to the configured endpoints, each signal
    with its own protocol, headers, compression, timeout and TLS settings."""

    def __init__(
        self, config: AgentConfig, policy: RetryPolicy | None = None, *, dead_letter: bool = True
    ) -> None:
        """``dead_letter=False``: a refused request is only answered ``dead_letter`` (with
        the endpoint's status and body), neither written to ``<home>/dead-letter/`` nor
        logged; the caller keeps it (a replay of a dead letter)."""
        self.config = config
        self.policy = policy or RetryPolicy()
        self.writes_dead_letters = dead_letter
        exports = [config.export_settings(s) for s in SIGNALS if config.endpoint(s) is not None]
        # One pool per TLS setting: the general one always (an exporter without endpoints
        # still answers), one more for each signal with TLS settings of its own.
        self._pools: dict[_TLSKey, urllib3.PoolManager] = {}
        general: _TLSKey = (config.certificate, config.client_certificate, config.client_key)
        for key in [general] + [_tls_key(e) for e in exports if e.protocol != "grpc"]:
            if key not in self._pools:
                self._pools[key] = _pool_manager(key)
        grpc_exports = [e for e in exports if e.protocol == "grpc"]
        self._grpc: GrpcTransport | None = None
        if grpc_exports:
            from emp_fastbuf.agent.otlp.grpc import GrpcTransport

            self._grpc = GrpcTransport(grpc_exports, USER_AGENT, RESPONSE_MAX_BYTES)
        _install_log_filter()
        self._lock = threading.Lock()
        self._stats = ExporterStats()
        self._breaker = _Breaker(self.policy)
        # A server's Retry-After applies to every export, not only to the call that saw it.
        self._not_before = 0.0
        self._closed = threading.Event()
        self._secrets = [s for s in config.secrets() if len(s) >= 4]

    # -- public ----------------------------------------------------------------------------

    def export(self, signal: Signal, payload: bytes, dataset: str | None = None) -> ExportResult:
        """Deliver one serialized ``Export*ServiceRequest`` for ``signal``; see the module doc.

        ``dataset``: the Dash0 dataset of this request (a route of
        :mod:`emp_fastbuf.agent.datasets`), in place of the configured ``Dash0-Dataset``
        header; ``default`` sends none. None: the signal's headers as configured."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r} (expected logs, traces or metrics)")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        export = self.config.export_settings(signal)  # ValueError without an endpoint
        data = bytes(payload)
        if not data:
            # OTLP: do not send empty requests.
            return ExportResult("ok", message="empty request not sent")
        if self._closed.is_set():
            return self._later(signal, "exporter closed", 0)
        if len(data) > self.config.request_max_bytes:
            message = (
                f"request of {len(data)} bytes exceeds request_max_bytes "
                f"({self.config.request_max_bytes})"
            )
            return self._dead_letter(export, data, None, b"", message, 0)

        if dataset is not None:
            export = dataclasses.replace(export, headers=with_dataset(export.headers, dataset))
        metadata: dict[str, str] | None = None  # over grpc: this call's, not the signal's
        if export.protocol == "grpc":
            body, headers = data, {}  # grpcio compresses, and sends the metadata
            encoded = len(data)
            if dataset is not None:
                metadata = export.headers
        else:
            if export.protocol == "http/json":
                wire, content_type = otlpjson.request_json(signal, data), otlpjson.CONTENT_TYPE
            else:
                wire, content_type = data, "application/x-protobuf"
            body, encoding = self._compress(wire, export.compression)
            headers = self._headers(export, content_type, encoding)
            encoded = len(wire)
        deadline = time.monotonic() + self.policy.max_elapsed_s
        attempts = 0
        while True:
            refused = self._wait_turn(signal, deadline, attempts)
            if refused is not None:
                return refused
            attempts += 1
            outcome = self._attempt(
                export, data, body, headers, encoded, deadline, attempts, metadata
            )
            if isinstance(outcome, ExportResult):
                return outcome
            with self._lock:
                opened = self._breaker.failure()
                if opened:
                    self._stats.breaker_opened += 1
            if opened:
                log.warning(
                    "OTLP endpoint for %s failing: circuit breaker open (%s)",
                    signal,
                    outcome.reason,
                )
                return self._later(
                    signal, f"circuit breaker opened after: {outcome.reason}", attempts, outcome
                )
            wait = self.policy.backoff(attempts)
            if outcome.retry_after is not None:
                wait = max(wait, outcome.retry_after)
            if time.monotonic() + wait > deadline:
                return self._later(
                    signal,
                    f"retry deadline reached; last error: {outcome.reason}",
                    attempts,
                    outcome,
                )
            with self._lock:
                self._stats.retries[signal] += 1
            log.info(
                "export %s failed (%s); retry %d in %.2f s", signal, outcome.reason, attempts, wait
            )
            if not self._sleep(wait):
                return self._later(signal, "exporter closed", attempts)

    @property
    def breaker_state(self) -> Literal["closed", "open", "half_open"]:
        """The circuit breaker's state: ``closed`` (normal), ``open``, ``half_open``."""
        with self._lock:
            return self._breaker.state

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters, JSON-ready and free of secrets.

        Top-level counters are totals over the signals; ``per_signal[signal][counter]``
        has the breakdown.
        """
        with self._lock:
            s = self._stats
            latencies = sorted(s.latencies)
            breaker = self._breaker.state
            counters = {
                name: dict(getattr(s, name))
                for name in (
                    "requests",
                    "exported",
                    "bytes_uncompressed",
                    "bytes_on_wire",
                    "retries",
                    "dead_lettered",
                    "partial_rejected",
                    "failures",
                    "retry_later",
                )
            }
            snapshot: dict[str, Any] = {
                name: sum(values.values()) for name, values in counters.items()
            }
            snapshot["per_signal"] = {
                signal: {name: values[signal] for name, values in counters.items()}
                for signal in SIGNALS
            }
            snapshot.update(
                breaker_opened=s.breaker_opened,
                breaker_state=breaker,
                last_error=s.last_error,
                last_error_ns=s.last_error_ns,
                latency_s={
                    "last": s.last_latency_s,
                    "p50": percentile(latencies, 50),
                    "p99": percentile(latencies, 99),
                    "samples": len(latencies),
                },
            )
        return snapshot

    @property
    def dead_letter_dir(self) -> Path:
        """Where refused payloads are kept."""
        return self.config.home / paths.DEAD_LETTER_DIR

    def close(self) -> None:
        """Stop retry waits, refuse new exports (``retry_later``) and close the connections."""
        self._closed.set()
        for pool in self._pools.values():
            pool.clear()
        if self._grpc is not None:
            self._grpc.close()

    def __enter__(self) -> OTLPExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _wait_turn(self, signal: Signal, deadline: float, attempts: int) -> ExportResult | None:
        """Before an attempt: the circuit breaker's leave and a pending ``Retry-After``
        pause, slept here. None when the attempt may go out; else why not."""
        with self._lock:
            allowed = self._breaker.allow()
            not_before = self._not_before
        if not allowed:
            return self._later(signal, "circuit breaker open", attempts)
        pause = not_before - time.monotonic()
        if pause > 0:
            if time.monotonic() + pause > deadline:
                self._release_probe()
                return self._later(signal, "endpoint asked to wait (Retry-After)", attempts)
            if not self._sleep(pause):
                self._release_probe()
                return self._later(signal, "exporter closed", attempts)
        return None

    def _attempt(
        self,
        export: SignalExport,
        data: bytes,
        body: bytes,
        headers: dict[str, str],
        encoded: int,
        deadline: float,
        attempts: int,
        metadata: dict[str, str] | None = None,
    ) -> ExportResult | _Failure:
        """One request of ``body`` (``data`` encoded, ``encoded`` bytes, and compressed). An
        :class:`ExportResult` when the endpoint gave its verdict (accepted, or refused for
        good: dead-lettered); a :class:`_Failure` when it may be retried (counted; a
        ``Retry-After`` or gRPC RetryInfo is kept)."""
        signal = export.signal
        timeout = max(0.05, min(export.timeout_s, deadline - time.monotonic()))
        with self._lock:
            self._stats.requests[signal] += 1
            self._stats.bytes_uncompressed[signal] += encoded
            self._stats.bytes_on_wire[signal] += len(body)
        if export.protocol == "grpc":
            return self._attempt_grpc(export, data, metadata, timeout, attempts)
        started = time.monotonic()
        try:
            response, full_body = self._post(export, body, headers, timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = self._scrub(f"{signal}: {_describe_exception(exc)}")
            self._failed(signal, reason)
            return _Failure(reason)
        except BaseException:
            # Not a verdict on the endpoint: a half-open probe must not stay taken.
            self._release_probe()
            raise
        self._latency(time.monotonic() - started)
        status = response.status
        resp_body = full_body[:_BODY_KEEP]
        if 200 <= status < 300:
            content_type = response.headers.get("Content-Type", "")
            as_json = content_type.split(";")[0].strip().lower() == otlpjson.CONTENT_TYPE
            return self._succeeded(signal, status, resp_body, attempts, as_json)
        if status not in RETRYABLE_STATUSES:
            # The endpoint answered: it is up, whatever it thinks of this request.
            with self._lock:
                self._breaker.success()
            message = f"HTTP {status}: {_body_text(resp_body)}"
            return self._dead_letter(export, data, status, resp_body, message, attempts)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        self._keep_retry_after(retry_after)
        reason = self._scrub(f"{signal}: HTTP {status}: {_body_text(resp_body)}")
        self._failed(signal, reason)
        return _Failure(reason, retry_after, status, self._scrub_body(resp_body))

    def _attempt_grpc(
        self,
        export: SignalExport,
        data: bytes,
        metadata: dict[str, str] | None,
        timeout: float,
        attempts: int,
    ) -> ExportResult | _Failure:
        """One Export call (with ``metadata`` in place of the signal's headers when
        given); its status code decides as the HTTP status does above."""
        assert self._grpc is not None
        signal = export.signal
        started = time.monotonic()
        try:
            reply = self._grpc.call(signal, data, timeout, metadata)
        except BaseException:
            self._release_probe()
            raise
        self._latency(time.monotonic() - started)
        if reply.ok:
            return self._succeeded(signal, None, reply.body[:_BODY_KEEP], attempts, False)
        text = "".join(c if c.isprintable() else " " for c in reply.details[:512]).strip()
        message = f"gRPC {reply.code}: {text or '(no details)'}"
        if not reply.retryable:
            with self._lock:
                self._breaker.success()
            return self._dead_letter(export, data, None, text.encode(), message, attempts)
        self._keep_retry_after(reply.retry_after)
        reason = self._scrub(f"{signal}: {message}")
        self._failed(signal, reason)
        return _Failure(reason, reply.retry_after)

    def _latency(self, elapsed: float) -> None:
        with self._lock:
            self._stats.last_latency_s = elapsed
            self._stats.latencies.append(elapsed)

    def _keep_retry_after(self, retry_after: float | None) -> float | None:
        """A server's wait applies to every export: kept (clamped) for the next ones."""
        if retry_after is None:
            return None
        retry_after = min(retry_after, self.policy.max_retry_after_s)
        with self._lock:
            self._not_before = max(self._not_before, time.monotonic() + retry_after)
        return retry_after

    def _post(
        self, export: SignalExport, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[urllib3.BaseHTTPResponse, bytes]:
        """One attempt: each socket operation within ``timeout`` (what is left of the retry
        deadline), and the whole of it (connect, send, the complete response) within the
        signal's configured timeout."""
        total = export.timeout_s
        state = _Attempt(time.monotonic() + total)
        _current.attempt = state
        try:
            response = self._pools[_tls_key(export)].request(
                "POST",
                export.endpoint,
                body=body,
                headers=headers,
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                redirect=False,
                preload_content=False,
            )
            return response, _read_bounded(response)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if state.expired:
                raise RequestDeadlineError(f"no complete response within {total:.3g} s") from exc
            raise
        finally:
            if state.watchdog is not None:
                state.watchdog.cancel()
            _current.attempt = None

    def _headers(
        self, export: SignalExport, content_type: str, encoding: str | None
    ) -> dict[str, str]:
        headers = dict(export.headers)
        # The transport's own headers win over configured ones with the same name.
        for key in [
            k
            for k in headers
            if k.lower() in ("content-type", "content-encoding", "user-agent", "content-length")
        ]:
            del headers[key]
        headers["Content-Type"] = content_type
        headers["User-Agent"] = USER_AGENT
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        return headers

    def _compress(
        self, data: bytes, compression: Compression | None = None
    ) -> tuple[bytes, str | None]:
        """``data`` compressed with ``compression`` (the general setting when None), and
        its Content-Encoding."""
        compression = compression or self.config.compression
        if compression == "gzip":
            return gzip.compress(data, compresslevel=1, mtime=0), "gzip"
        if compression == "zstd":
            # A compressor object is not safe to share between threads: one per call.
            return zstandard.ZstdCompressor(level=1).compress(data), "zstd"
        return data, None

    def _sleep(self, seconds: float) -> bool:
        """Wait at least ``seconds``; False when the exporter was closed meanwhile."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return True
            if self._closed.wait(left):
                return False

    def _release_probe(self) -> None:
        with self._lock:
            self._breaker.release_probe()

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _scrub_body(self, body: bytes) -> bytes:
        return deadletter_files.scrub_body(body, self._secrets)[1]

    def _failed(self, signal: Signal, reason: str) -> None:
        with self._lock:
            self._stats.failures[signal] += 1
            self._stats.last_error = reason
            self._stats.last_error_ns = time.time_ns()

    def _later(
        self, signal: Signal, message: str, attempts: int, last: _Failure | None = None
    ) -> ExportResult:
        """Not delivered yet; with ``last``, the answer of the last failed attempt."""
        with self._lock:
            self._stats.retry_later[signal] += 1
        return ExportResult(
            "retry_later",
            http_status=None if last is None else last.http_status,
            message=self._scrub(message),
            attempts=attempts,
            body=b"" if last is None else last.body,
        )

    def _succeeded(
        self, signal: Signal, status: int | None, body: bytes, attempts: int, as_json: bool
    ) -> ExportResult:
        rejected, error_message = self._partial_success(signal, body, as_json)
        with self._lock:
            self._breaker.success()
            self._stats.exported[signal] += 1
            self._stats.partial_rejected[signal] += rejected
        message = ""
        if rejected or error_message:
            message = self._scrub(
                f"partial success: {rejected} rejected: {error_message or 'no message'}"
            )
            log.warning("OTLP %s export %s", signal, message)
        return ExportResult("ok", status, rejected, message, attempts)

    def _partial_success(self, signal: Signal, body: bytes, as_json: bool) -> tuple[int, str]:
        """The partial success of a success response: protobuf, or JSON where the server
        answered with JSON (a JSON request's answer)."""
        if not body:
            return 0, ""
        if as_json:
            try:
                response = otlpjson.parse_response(signal, body)
            except ValueError:
                log.warning("OTLP %s export: the success response is not valid JSON", signal)
                return 0, ""
        else:
            response = _RESPONSE_TYPES[signal]()
            try:
                response.ParseFromString(body)
            except DecodeError:
                log.warning("OTLP %s export: the success response is not a valid protobuf", signal)
                return 0, ""
        partial = getattr(response, "partial_success", None)
        if partial is None:
            return 0, ""
        rejected = int(getattr(partial, _REJECTED_FIELD[signal], 0))
        return rejected, str(getattr(partial, "error_message", ""))

    def _dead_letter(
        self,
        export: SignalExport,
        data: bytes,
        status: int | None,
        resp_body: bytes,
        message: str,
        attempts: int,
    ) -> ExportResult:
        signal = export.signal
        message = self._scrub(message)
        with self._lock:
            self._stats.dead_lettered[signal] += 1
            self._stats.last_error = f"{signal}: {message}"
            self._stats.last_error_ns = time.time_ns()
        result = ExportResult(
            "dead_letter", status, 0, message, attempts, self._scrub_body(resp_body)
        )
        if not self.writes_dead_letters:
            return result
        try:
            path = deadletter_files.write(
                self.dead_letter_dir,
                signal,
                data,
                redact_url(export.endpoint),
                status,
                resp_body,
                message,
                self._secrets,
                protocol=export.protocol,
            )
        except OSError as exc:
            log.error(
                "OTLP %s export refused (%s) and the dead-letter write failed: %s",
                signal,
                message,
                exc,
            )
        else:
            log.error("OTLP %s export refused (%s); payload kept in %s", signal, message, path.name)
        return result


def with_dataset(headers: dict[str, str], dataset: str) -> dict[str, str]:
    """``headers`` with their ``Dash0-Dataset`` (any case) replaced by ``dataset``, or
    removed for ``default`` (the token's default dataset)."""
    out = {k: v for k, v in headers.items() if k.lower() != "dash0-dataset"}
    if dataset != "default":
        out["Dash0-Dataset"] = dataset
    return out


def _describe_exception(exc: BaseException) -> str:
    """A short reason without URLs (they may carry credentials) or header values."""
    reason = getattr(exc, "reason", None)
    # urllib3 makes NewConnectionError a ConnectTimeoutError subclass: test it first.
    refused = isinstance(exc, urllib3.exceptions.NewConnectionError) or isinstance(
        reason, urllib3.exceptions.NewConnectionError
    )
    timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) or isinstance(
        reason, TimeoutError | urllib3.exceptions.TimeoutError
    )
    if isinstance(exc, RequestDeadlineError):
        return f"timeout ({exc})"
    if timed_out and not refused:
        return f"timeout ({type(exc).__name__})"
    inner = reason if isinstance(reason, BaseException) else exc
    errno = getattr(inner, "errno", None)
    if errno is None and inner.__context__ is not None:
        errno = getattr(inner.__context__, "errno", None)
    tls = _find_ssl_error(exc)
    if tls is not None:
        verify = getattr(tls, "verify_message", None)
        return f"TLS failed: {verify or tls.reason or type(tls).__name__}"
    detail = os.strerror(errno) if isinstance(errno, int) else type(inner).__name__
    return f"connection failed: {detail} ({type(exc).__name__})"


def _find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind a urllib3 error (in args, reason, cause or context)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ssl.SSLError):
            return item
        todo += [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
    return None


def _body_text(body: bytes) -> str:
    """A printable, bounded excerpt of an error response body."""
    text = body[:512].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text or "(empty body)"
