"""A real OTLP/HTTP receiver for tests: decodes requests with the official protobuf classes.

Usage::

    with OTLPReceiver() as rx:
        rx.script(Response(503, headers={"Retry-After": "1"}), Response(200))
        ...  # point an exporter at rx.url
        assert rx.wait_for(lambda r: len(r.logs()) == 3)

Responses come from the script queue first, then from ``rx.default`` (200 with an empty
``Export*ServiceResponse``). ``rx.down()`` closes the listening socket and every open
connection; ``rx.up()`` listens again on the same port.

Bodies are protobuf (``application/x-protobuf``) or OTLP/JSON (``application/json``,
answered in JSON). JSON is held to the OTLP rules, not only to protobuf's JSON mapping:
lowerCamelCase field names, trace and span ids in hex, enums as integers, timestamps as
strings; a body that breaks one is answered 400 saying which. With ``tls=`` and
``client_ca=``, the receiver asks for a client certificate signed by that CA and keeps
the subject's common name of each request's certificate (``Attempt.client_subject``).

Under load (bench), ``OTLPReceiver(decode=False)`` keeps each body as it came and answers at
once: nothing is decompressed or parsed while requests arrive, so the receiver costs the
client next to nothing; the bodies are decoded after the run. :class:`ReceiverProcess` runs
a receiver in a child process of its own, so that its work is not the measured process's::

    with ReceiverProcess(decode=False) as rx:
        ...  # point an exporter at rx.url
        counts = rx.collect()  # received_counts(receiver) in the child, then forgotten
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import multiprocessing
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import zstandard
from google.protobuf import json_format
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
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# OTLP/JSON: ids in hex (of this many hex digits), enums as integers, 64-bit times as strings.
_HEX_IDS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}
_ENUM_FIELDS = frozenset({"kind", "severityNumber", "aggregationTemporality"})


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
    size: int = 0  # body bytes read, as sent (compressed)
    # The common name of the client certificate (a receiver with client_ca), else None.
    client_subject: str | None = None


class Body(NamedTuple):
    """A request body as it arrived (``OTLPReceiver(decode=False)``): neither decompressed
    nor parsed."""

    path: str
    encoding: str  # Content-Encoding, lowercased; "identity" when the request had none
    raw: bytes
    content_type: str = PROTOBUF


def decode_body(path: str, encoding: str, raw: bytes, content_type: str = PROTOBUF) -> Message:
    """The ``Export*ServiceRequest`` of one request body to ``path`` (``/v1/logs``...),
    decompressed (``gzip``, ``zstd`` or ``identity``) and parsed as ``content_type``
    (protobuf, or OTLP/JSON). Raises ``ValueError`` saying why for an unknown path,
    encoding or content type and for a body that does not decompress or parse."""
    kinds = _SIGNALS.get(path)
    if kinds is None:
        raise ValueError(f"unknown path {path}")
    try:
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "zstd":
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        elif encoding not in ("identity", ""):
            raise ValueError(f"unsupported Content-Encoding {encoding}")
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise ValueError(f"cannot decompress: {exc}") from exc
    message: Message = kinds[0]()
    if content_type == JSON:
        return _decode_json(message, raw)
    if content_type != PROTOBUF:
        raise ValueError(f"unsupported Content-Type {content_type}")
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        raise ValueError(f"cannot decode protobuf: {exc}") from exc
    return message


def _decode_json(message: Message, raw: bytes) -> Message:
    """OTLP/JSON into ``message``, after checking the OTLP rules protobuf's JSON parser
    does not (it also takes snake_case names, enum names, numbers for 64-bit ints and
    base64 ids)."""
    try:
        tree = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"cannot decode JSON: {exc}") from exc
    _check_otlp_json(tree, "$")
    try:
        json_format.ParseDict(tree, message)
    except json_format.ParseError as exc:
        raise ValueError(f"not an OTLP/JSON request: {exc}") from exc
    return message


def _check_otlp_json(node: Any, where: str) -> None:
    """Check, and rewrite the hex ids of, an OTLP/JSON tree in place (ids to base64,
    which protobuf's JSON mapping reads)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_otlp_json(item, f"{where}[{i}]")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        at = f"{where}.{key}"
        if "_" in key:
            raise ValueError(f"{at}: field names must be lowerCamelCase")
        if key in _HEX_IDS and isinstance(value, str):
            digits = _HEX_IDS[key]
            if len(value) != digits or value != value.lower():
                raise ValueError(f"{at}: expected {digits} lowercase hex digits, got {value!r}")
            try:
                node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
            except ValueError:
                raise ValueError(f"{at}: not hex: {value!r}") from None
        elif key in _ENUM_FIELDS and not isinstance(value, int):
            raise ValueError(f"{at}: enums must be integers, got {value!r}")
        elif key.endswith("UnixNano") and not isinstance(value, str):
            raise ValueError(f"{at}: 64-bit integers must be strings, got {value!r}")
        else:
            _check_otlp_json(value, at)


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

    def __init__(
        self,
        port: int = 0,
        tls: tuple[str, str] | None = None,
        *,
        decode: bool = True,
        client_ca: str | None = None,
        paths: Mapping[str, str] | None = None,
    ) -> None:
        """``tls=(certfile, keyfile)`` serves HTTPS instead of HTTP; ``client_ca`` (a PEM
        file) then requires a client certificate it signed. ``decode=False`` keeps every
        body to a known path in ``bodies`` as it came, and parses none while requests
        arrive (``requests`` stays empty; ``logs()``, ``spans()`` and ``metrics()``
        decode the kept bodies when called). ``paths`` maps more paths to the signal
        path they stand for (``{"/ingest/logs": "/v1/logs"}``): requests to them are
        taken as that signal's (``requests`` and ``bodies`` name the signal path,
        ``attempts`` the one requested)."""
        if client_ca is not None and tls is None:
            raise ValueError("client_ca needs tls")
        unknown = sorted(set((paths or {}).values()) - set(_SIGNALS))
        if unknown:
            raise ValueError(f"paths must map to signal paths, not {unknown}")
        self._tls = tls
        self._client_ca = client_ca
        self._paths = dict(paths or {})
        self.decode = decode
        self._lock = threading.Lock()
        self._script: deque[Response] = deque()
        self.default = Response()
        self.requests: list[tuple[str, dict[str, str], Message]] = []
        self._accepted: list[bool] = []  # parallel to requests: answered with 2xx
        self.bodies: list[Body] = []  # decode=False: every body, as it came
        self._bodies_accepted: list[bool] = []  # parallel to bodies
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
            if self._client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=self._client_ca)
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

    def clear(self) -> None:
        """Forget every request, body and attempt received so far (not the script)."""
        with self._lock:
            self.requests.clear()
            self._accepted.clear()
            self.bodies.clear()
            self._bodies_accepted.clear()
            self.attempts.clear()

    # -- inspection ------------------------------------------------------------------------

    def logs(self) -> list[tuple[dict[str, Any], LogRecord]]:
        """Every log record received, with its resource attributes."""
        return self._items("/v1/logs", "resource_logs", "scope_logs", "log_records")

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with its resource attributes."""
        return self._items("/v1/traces", "resource_spans", "scope_spans", "spans")

    def metrics(self) -> list[tuple[dict[str, Any], Metric]]:
        """Every metric received, with its resource attributes."""
        return self._items("/v1/metrics", "resource_metrics", "scope_metrics", "metrics")

    def _items(
        self, path: str, resource_field: str, scope_field: str, item_field: str
    ) -> list[tuple[dict[str, Any], Any]]:
        """The items (``item_field``) of every scope (``scope_field``) of every resource
        (``resource_field``) in the accepted requests to ``path``, each with its
        resource's attributes."""
        out: list[tuple[dict[str, Any], Any]] = []
        for request in self._decoded(path):
            for res in getattr(request, resource_field):
                resource = attrs_dict(res.resource.attributes)
                for scope in getattr(res, scope_field):
                    out.extend((resource, item) for item in getattr(scope, item_field))
        return out

    def _decoded(self, path: str) -> list[Any]:
        # What a backend keeps: requests it answered with success (a 429 or 503 answer
        # means the data was not taken, and the client sends it again).
        with self._lock:
            if self.decode:
                return [
                    req
                    for (p, _, req), ok in zip(self.requests, self._accepted, strict=True)
                    if p == path and ok
                ]
            kept = [
                body
                for body, ok in zip(self.bodies, self._bodies_accepted, strict=True)
                if body.path == path and ok
            ]
        return [decode_body(*body) for body in kept]  # outside the lock: it takes a while

    def received(self, path: str) -> tuple[int, int]:
        """Requests to ``path`` that arrived, decodable or not, and their body bytes as
        sent: cheap enough to poll while a load runs."""
        with self._lock:
            sizes = [a.size for a in self.attempts if a.path == path]
        return len(sizes), sum(sizes)

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
        requested = handler.path.split("?", 1)[0]
        path = self._paths.get(requested, requested)
        kinds = _SIGNALS.get(path)
        content_type = headers.get("content-type", PROTOBUF).split(";")[0].strip().lower()
        error: str | None = None
        decoded: Message | None = None
        kept: Body | None = None
        size = 0
        if handler.command != "POST":
            status, error = 405, "method not allowed"
        elif kinds is None:
            status, error = 404, f"unknown path {path}"
        else:
            status, raw, error = self._read_body(handler, headers)
            size = len(raw)
            encoding = headers.get("content-encoding", "identity").strip().lower()
            if error is None and self.decode:
                try:
                    decoded = decode_body(path, encoding, raw, content_type)
                except ValueError as exc:
                    status, error = 400, str(exc)
            elif error is None:
                kept = Body(path, encoding, raw, content_type)
        answer = self._next_response() if error is None else Response(status)
        if error is None:
            status = answer.status
        with self._lock:
            self.attempts.append(
                Attempt(requested, arrived, status, headers, error, size, _client_subject(handler))
            )
            if decoded is not None:
                self.requests.append((path, headers, decoded))
                self._accepted.append(200 <= status < 300)
            if kept is not None:
                self.bodies.append(kept)
                self._bodies_accepted.append(200 <= status < 300)
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
            # A JSON request is answered in JSON, as OTLP/HTTP says.
            as_json = content_type == JSON
            body = _response_body(kinds, answer, as_json)
            content_type = JSON if as_json else PROTOBUF
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    @staticmethod
    def _read_body(
        handler: BaseHTTPRequestHandler, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            handler.close_connection = True
            return 411, b"", "Content-Length required"
        if length < 0 or length > _MAX_BODY:
            handler.close_connection = True
            return 413, b"", "body too large"
        return 200, handler.rfile.read(length), None


def _response_body(
    kinds: tuple[Any, Any, Any, str] | None, answer: Response, as_json: bool = False
) -> bytes:
    if kinds is None:
        return b""
    _, response_type, partial_type, rejected_field = kinds
    response = response_type()
    if answer.rejected or answer.error_message:
        partial = partial_type(error_message=answer.error_message)
        setattr(partial, rejected_field, answer.rejected)
        response.partial_success.CopyFrom(partial)
    if as_json:
        return str(json_format.MessageToJson(response)).encode("utf-8")
    return bytes(response.SerializeToString())


def _client_subject(handler: BaseHTTPRequestHandler) -> str | None:
    """The common name in the client certificate of the handler's TLS connection."""
    connection = handler.connection
    if not isinstance(connection, ssl.SSLSocket):
        return None
    try:
        cert = connection.getpeercert()
    except (ValueError, OSError):
        return None
    subject: Any = (cert or {}).get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


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


# ---- a receiver in a child process ----------------------------------------------------------


def received_counts(rx: OTLPReceiver) -> dict[str, int]:
    """What ``rx`` took: ``attempts`` (every request), ``failed`` (answered with an error),
    ``log_records``, ``spans`` and ``metrics``: :class:`ReceiverProcess`'s default
    summary."""
    with rx._lock:
        attempts = len(rx.attempts)
        failed = sum(1 for a in rx.attempts if a.error is not None)
    return {
        "attempts": attempts,
        "failed": failed,
        "log_records": len(rx.logs()),
        "spans": len(rx.spans()),
        "metrics": len(rx.metrics()),
    }


def _serve_in_child(conn: Connection, decode: bool, summary: Callable[[OTLPReceiver], Any]) -> None:
    """The child of :class:`ReceiverProcess`: serve and answer the parent's commands."""

    def summarized(rx: OTLPReceiver) -> tuple[bool, Any]:
        # A summary that fails is the parent's error to raise, not the end of the child.
        try:
            return True, summary(rx)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"

    try:
        with OTLPReceiver(decode=decode) as rx:
            conn.send(rx.url)
            while True:
                command, path = conn.recv()
                if command == "received":
                    conn.send((True, rx.received(path)))
                elif command == "collect":
                    conn.send(summarized(rx))
                    rx.clear()
                elif command == "stop":
                    conn.send(summarized(rx))
                    break
                else:  # "exit": no summary wanted
                    break
    except EOFError:
        pass  # the parent went away: nothing left to answer
    finally:
        conn.close()


class ReceiverProcess:
    """An :class:`OTLPReceiver` in a spawned child process, answering 200 to every request:
    its HTTP parsing (and decoding, with ``decode=True``) runs on another core, never in
    the process being measured.

    ``summary`` runs in the child, on the receiver, for :meth:`collect` and :meth:`stop`;
    it must be a module-level function (the child imports it by its name) returning a
    picklable value. ``decode=False`` keeps the bodies undecoded while requests arrive,
    for loads of hundreds of thousands of records a second: ``summary`` decodes them
    afterwards (``rx.bodies``, :func:`decode_body`).
    """

    def __init__(
        self,
        summary: Callable[[OTLPReceiver], Any] = received_counts,
        *,
        decode: bool = True,
        timeout_s: float = 60.0,
    ) -> None:
        """``timeout_s`` bounds the start and every answer of the child (a summary that
        decodes millions of records takes a while)."""
        self.timeout_s = timeout_s
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve_in_child, args=(child, decode, summary), name="otlp-receiver"
        )
        self._proc.start()
        child.close()
        try:
            if not self._conn.poll(timeout_s):
                raise RuntimeError("the OTLP receiver process did not start")
            self.url: str = self._conn.recv()
        except (EOFError, RuntimeError) as exc:
            self.close()
            raise RuntimeError(f"the OTLP receiver process did not start: {exc!r}") from exc

    def __enter__(self) -> ReceiverProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ask(self, command: str, path: str = "") -> Any:
        try:
            self._conn.send((command, path))
            if not self._conn.poll(self.timeout_s):
                raise RuntimeError(f"the OTLP receiver process did not answer {command!r}")
            ok, answer = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"the OTLP receiver process is gone ({exc!r})") from exc
        if not ok:
            raise RuntimeError(f"the OTLP receiver's summary failed: {answer}")
        return answer

    def received(self, path: str = "/v1/logs") -> tuple[int, int]:
        """Requests to ``path`` and their body bytes since the last :meth:`collect`."""
        count, size = self._ask("received", path)
        return int(count), int(size)

    def collect(self) -> Any:
        """``summary`` of what arrived since the last ``collect``, which is then forgotten."""
        return self._ask("collect")

    def stop(self) -> Any:
        """``summary`` of what arrived since the last ``collect``; the child then exits."""
        try:
            return self._ask("stop")
        finally:
            self.close()

    def close(self) -> None:
        """End the child (terminated if it does not stop on its own); idempotent."""
        with contextlib.suppress(OSError, ValueError):
            if self._proc.is_alive():
                self._conn.send(("exit", ""))
        self._conn.close()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=10)
