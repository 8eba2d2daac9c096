"""A real OTLP/HTTP receiver for tests: decodes requests with the official protobuf classes.

Usage::

    with OTLPReceiver() as rx:
        rx.script(Response(503, headers={"Retry-After": "1"}), Response(200))
        ...  # point an exporter at rx.url
        assert rx.wait_for(lambda r: len(r.logs()) == 3)

Responses come from the script queue first, then from ``rx.default`` (200 with an empty
``Export*ServiceResponse``). ``rx.down()`` closes the listening socket and every open
connection; ``rx.up()`` listens again on the same port.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zstandard
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

# path -> (request class, response class, partial-success class, rejected field)
_SIGNALS: dict[str, tuple[Any, Any, Any, str]] = {
    "/v1/logs": (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
        ExportLogsPartialSuccess,
        "rejected_log_records",
    ),
    "/v1/traces": (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
        ExportTracePartialSuccess,
        "rejected_spans",
    ),
    "/v1/metrics": (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
        ExportMetricsPartialSuccess,
        "rejected_data_points",
    ),
}
_MAX_BODY = 64 << 20


@dataclass
class Response:
    """One scripted answer. ``body=None`` means an ``Export*ServiceResponse`` (with a
    partial success when ``rejected`` or ``error_message`` is set)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    delay_s: float = 0.0
    rejected: int = 0
    error_message: str = ""


@dataclass
class Attempt:
    """Every request the receiver saw, decodable or not, with its arrival time."""

    path: str
    time: float  # time.monotonic() when the request line arrived
    status: int  # what the receiver answered (or was about to answer)
    headers: dict[str, str]
    error: str | None = None


def attr_value(value: AnyValue) -> Any:
    """A plain Python value from an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [attr_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attrs_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attrs_dict(attributes: Any) -> dict[str, Any]:
    """A dict from a repeated ``KeyValue`` field."""
    return {kv.key: attr_value(kv.value) for kv in attributes if isinstance(kv, KeyValue)}


class OTLPReceiver:
    """A threaded OTLP/HTTP server on 127.0.0.1 with scripted answers."""

    def __init__(self, port: int = 0, tls: tuple[str, str] | None = None) -> None:
        """``tls=(certfile, keyfile)`` serves HTTPS instead of HTTP."""
        self._tls = tls
        self._lock = threading.Lock()
        self._script: deque[Response] = deque()
        self.default = Response()
        self.requests: list[tuple[str, dict[str, str], Message]] = []
        self._accepted: list[bool] = []  # parallel to requests: answered with 2xx
        self.attempts: list[Attempt] = []
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.connections_seen = 0
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> OTLPReceiver:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    @property
    def port(self) -> int:
        """The port, fixed once the receiver first listened."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (append ``/v1/logs`` etc.)."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def is_up(self) -> bool:
        """Whether the receiver is listening."""
        return self._server is not None

    def up(self) -> None:
        """Start listening (again, on the same port after the first time)."""
        if self._server is not None:
            return
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), _make_handler(self))
        self._port = server.server_address[1]
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
            # The handshake then runs in the connection's thread, not the accept loop.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening and drop every open connection (clients see resets/refusals)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    # -- behaviour -------------------------------------------------------------------------

    def script(self, *responses: Response) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._script.extend(responses)

    def _next_response(self) -> Response:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    # -- inspection ------------------------------------------------------------------------

    def logs(self) -> list[tuple[dict[str, Any], LogRecord]]:
        """Every log record received, with its resource attributes."""
        out: list[tuple[dict[str, Any], LogRecord]] = []
        for request in self._decoded("/v1/logs"):
            for rl in request.resource_logs:
                resource = attrs_dict(rl.resource.attributes)
                for sl in rl.scope_logs:
                    out.extend((resource, record) for record in sl.log_records)
        return out

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with its resource attributes."""
        out: list[tuple[dict[str, Any], Span]] = []
        for request in self._decoded("/v1/traces"):
            for rs in request.resource_spans:
                resource = attrs_dict(rs.resource.attributes)
                for ss in rs.scope_spans:
                    out.extend((resource, span) for span in ss.spans)
        return out

    def metrics(self) -> list[tuple[dict[str, Any], Metric]]:
        """Every metric received, with its resource attributes."""
        out: list[tuple[dict[str, Any], Metric]] = []
        for request in self._decoded("/v1/metrics"):
            for rm in request.resource_metrics:
                resource = attrs_dict(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    out.extend((resource, metric) for metric in sm.metrics)
        return out

    def _decoded(self, path: str) -> list[Any]:
        # What a backend keeps: requests it answered with success (a 429 or 503 answer
        # means the data was not taken, and the client sends it again).
        with self._lock:
            return [
                req
                for (p, _, req), ok in zip(self.requests, self._accepted, strict=True)
                if p == path and ok
            ]

    def attempt_times(self, path: str | None = None) -> list[float]:
        """Arrival times (monotonic) of every attempt, optionally for one path."""
        with self._lock:
            return [a.time for a in self.attempts if path is None or a.path == path]

    def attempt_count(self) -> int:
        """How many HTTP requests arrived, decodable or not."""
        with self._lock:
            return len(self.attempts)

    def wait_for(self, predicate: Callable[[OTLPReceiver], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until it is true or ``timeout`` seconds pass."""
        end = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)

    # -- request handling (server threads) -----------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = handler.path.split("?", 1)[0]
        kinds = _SIGNALS.get(path)
        error: str | None = None
        decoded: Message | None = None
        if handler.command != "POST":
            status, error = 405, "method not allowed"
        elif kinds is None:
            status, error = 404, f"unknown path {path}"
        else:
            status, decoded, error = self._decode(handler, headers, kinds[0])
        answer = self._next_response() if error is None else Response(status)
        if error is None:
            status = answer.status
        with self._lock:
            self.attempts.append(Attempt(path, arrived, status, headers, error))
            if decoded is not None:
                self.requests.append((path, headers, decoded))
                self._accepted.append(200 <= status < 300)
        if answer.delay_s > 0 and self._stopping.wait(answer.delay_s):
            handler.close_connection = True
            return
        if error is not None:
            body = error.encode()
            content_type = "text/plain"
        elif answer.body is not None:
            body = answer.body
            content_type = answer.headers.get("Content-Type", "application/x-protobuf")
        else:
            body = _response_body(kinds, answer)
            content_type = "application/x-protobuf"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    def _decode(
        self, handler: BaseHTTPRequestHandler, headers: dict[str, str], request_type: Any
    ) -> tuple[int, Message | None, str | None]:
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            handler.close_connection = True
            return 411, None, "Content-Length required"
        if length < 0 or length > _MAX_BODY:
            handler.close_connection = True
            return 413, None, "body too large"
        raw = handler.rfile.read(length)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        try:
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding == "zstd":
                raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            elif encoding not in ("identity", ""):
                return 400, None, f"unsupported Content-Encoding {encoding}"
        except (OSError, EOFError, zstandard.ZstdError) as exc:
            return 400, None, f"cannot decompress: {exc}"
        message = request_type()
        try:
            message.ParseFromString(raw)
        except DecodeError as exc:
            return 400, None, f"cannot decode protobuf: {exc}"
        return 200, message, None


def _response_body(kinds: tuple[Any, Any, Any, str] | None, answer: Response) -> bytes:
    if kinds is None:
        return b""
    _, response_type, partial_type, rejected_field = kinds
    response = response_type()
    if answer.rejected or answer.error_message:
        partial = partial_type(error_message=answer.error_message)
        setattr(partial, rejected_field, answer.rejected)
        response.partial_success.CopyFrom(partial)
    return bytes(response.SerializeToString())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or a down() that resets connections are expected here.
        pass


def _make_handler(receiver: OTLPReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with receiver._lock:
                receiver._connections.add(self.connection)
                receiver.connections_seen += 1

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                with receiver._lock:
                    receiver._connections.discard(self.connection)

        def do_POST(self) -> None:
            try:
                receiver._handle(self)
            except (ConnectionError, TimeoutError, OSError):
                self.close_connection = True

        do_GET = do_POST
        do_PUT = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
