"""The OTLP/HTTP receiver: ``POST /v1/logs``, ``/v1/traces``, ``/v1/metrics``; protobuf
or JSON; gzip, zstd or no compression.

Answers (OTLP/HTTP): 200 with an ``Export*ServiceResponse`` (in the request's content
type, with ``partial_success`` when records were rejected) once the records are durable
in the spool; 400 for a body that does not parse; 401 without the bearer token (when one
is set); 404 for another path; 405 for another method; 411 without Content-Length; 413
for a body over the limit (before or after decompression); 415 for an unknown content
type or encoding; 503 with Retry-After while the spool is full. Error bodies are a
``google.rpc.Status`` (or its JSON), never with a token in them.

Threads: one acceptor, at most ``MAX_WORKERS`` connections served at once (others are
closed at once with 503); a reaper shuts down connections that take longer than
the receiver's timeout for one request or sit idle that long (slow-loris).
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from emp_fastbuf.agent.receiver.convert import Converted
from emp_fastbuf.agent.receiver.decode import BadRequest, Signal, decompress
from emp_fastbuf.agent.receiver.ingest import RETRY_AFTER_S, Ingest, SpoolFull

__all__ = ["HTTPReceiver", "partial_response"]

log = logging.getLogger("emp_fastbuf.agent.receiver")

MAX_WORKERS = 64
_PATHS: dict[str, Signal] = {"/v1/logs": "logs", "/v1/traces": "traces", "/v1/metrics": "metrics"}
_RESPONSES: dict[str, Any] = {
    "logs": (ExportLogsServiceResponse, "rejected_log_records"),
    "traces": (ExportTraceServiceResponse, "rejected_spans"),
    "metrics": (ExportMetricsServiceResponse, "rejected_data_points"),
}
_GRPC_CODES = {400: 3, 401: 16, 404: 12, 405: 12, 411: 3, 413: 8, 415: 3, 503: 14}


def partial_response(signal: Signal, converted: Converted) -> Any:
    """The ``Export*ServiceResponse`` for ``converted``: empty, or partial success."""
    cls, field = _RESPONSES[signal]
    response = cls()
    if converted.rejected:
        setattr(response.partial_success, field, converted.rejected)
        response.partial_success.error_message = converted.message()
    return response


class _Server(HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], receiver: HTTPReceiver) -> None:
        self.receiver = receiver
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.receiver.slots.acquire(blocking=False):
            # At capacity: answer now rather than queue without bound.
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.receiver.pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:  # a client's misbehaviour never reaches the agent
            log.debug("receiver connection from %s: %s", client_address, exc)
        finally:
            self.receiver.forget(request)
            self.shutdown_request(request)
            self.receiver.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("receiver connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "emp-fastbuf"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("receiver: " + format, *args)

    def handle_one_request(self) -> None:
        receiver = self.server.receiver
        receiver.deadline(self.connection, receiver.timeout_s)
        try:
            super().handle_one_request()
        finally:
            receiver.deadline(self.connection, receiver.timeout_s)

    def do_GET(self) -> None:
        self._fail(405, "only POST is accepted", json_body=False)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def do_POST(self) -> None:
        receiver = self.server.receiver
        ingest = receiver.ingest
        content_type = self.headers.get("Content-Type", "")
        json_body = content_type.split(";", 1)[0].strip().lower() == "application/json"
        path = self.path.split("?", 1)[0]
        signal = _PATHS.get(path)
        if signal is None:
            self._fail(
                404, f"no such path {path[:100]!r}: /v1/logs, /v1/traces or /v1/metrics", json_body
            )
            return
        if receiver.token is not None:
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), b"Bearer " + receiver.token.encode()):
                self._fail(401, "missing or wrong bearer token", json_body)
                return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            self._fail(411, "Content-Length is required", json_body, close=True)
            return
        length = int(length_text)
        if length > ingest.max_bytes:
            self._fail(
                413, f"the body is larger than {ingest.max_bytes} bytes", json_body, close=True
            )
            return
        with ingest.arriving():
            body = self._read(length)
            if body is None:
                return
            try:
                encoding = self.headers.get("Content-Encoding", "")
                data = decompress(body, encoding, ingest.max_bytes)
                converted = ingest.accept(signal, data, content_type)
            except BadRequest as exc:
                self._fail(exc.status, exc.message, json_body)
                return
            except SpoolFull as exc:
                log.debug("receiver: 503: %s", exc)
                self._fail(503, f"{exc}; retry later", json_body, retry_after=True)
                return
        response = partial_response(signal, converted)
        if json_body:
            out = json_format.MessageToJson(response, indent=None).encode()
        else:
            out = response.SerializeToString()
        self.send_response(200)
        self.send_header(
            "Content-Type", "application/json" if json_body else "application/x-protobuf"
        )
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _read(self, length: int) -> bytes | None:
        parts: list[bytes] = []
        left = length
        while left:
            try:
                chunk = self.rfile.read(min(left, 1 << 20))
            except OSError:
                chunk = b""
            if not chunk:
                self.close_connection = True
                return None  # the client went away, or the reaper cut it off
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _fail(
        self,
        code: int,
        message: str,
        json_body: bool,
        *,
        close: bool = False,
        retry_after: bool = False,
    ) -> None:
        if 400 <= code < 500:
            self.server.receiver.ingest.count("bad_requests")
        status = status_pb2.Status(code=_GRPC_CODES.get(code, 2), message=message)
        if json_body:
            out = json_format.MessageToJson(status, indent=None).encode()
        else:
            out = status.SerializeToString()
        self.send_response(code)
        self.send_header(
            "Content-Type", "application/json" if json_body else "application/x-protobuf"
        )
        self.send_header("Content-Length", str(len(out)))
        if retry_after:
            self.send_header("Retry-After", str(RETRY_AFTER_S))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(out)


class HTTPReceiver:
    """The OTLP/HTTP server, serving in threads of its own until ``close()``."""

    def __init__(
        self, host: str, port: int, ingest: Ingest, token: str | None, timeout_s: float
    ) -> None:
        self.ingest = ingest
        self.token = token
        self.timeout_s = timeout_s
        self.slots = threading.BoundedSemaphore(MAX_WORKERS)
        self.pool = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="receiver")
        self._deadlines: dict[Any, float] = {}
        self._deadlines_lock = threading.Lock()
        self._stop = threading.Event()
        self.server = _Server((host, port), self)  # raises OSError when the port is taken
        bound = self.server.server_address
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._threads = [
            threading.Thread(target=self.server.serve_forever, name="receiver-http", daemon=True),
            threading.Thread(target=self._reap, name="receiver-reaper", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def deadline(self, conn: Any, seconds: float) -> None:
        with self._deadlines_lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def forget(self, conn: Any) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(conn, None)

    def _reap(self) -> None:
        while not self._stop.wait(min(0.5, self.timeout_s / 4)):
            now = time.monotonic()
            with self._deadlines_lock:
                late = [c for c, t in self._deadlines.items() if t < now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
                except OSError:
                    pass

    def close(self) -> None:
        """Stop accepting; requests in flight finish (their records reach the spool)."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        with self._deadlines_lock:
            conns = list(self._deadlines)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.pool.shutdown(wait=True)
