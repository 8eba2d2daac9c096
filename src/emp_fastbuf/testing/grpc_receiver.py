"""A real OTLP/gRPC receiver for tests: grpcio's server with generic handlers on 127.0.0.1,
decoding with the official protobuf classes. Needs grpcio (the ``grpc`` extra).

Usage::

    with GrpcReceiver() as rx:
        rx.script(GrpcResponse("UNAVAILABLE"), GrpcResponse())
        ...  # point an exporter at rx.url with OTEL_EXPORTER_OTLP_PROTOCOL=grpc
        assert rx.wait_for(lambda r: len(r.logs()) == 3)

Answers come from the script first, then ``rx.default`` (OK with an empty
``Export*ServiceResponse``). Each call is kept with its metadata, the deadline the client
gave it (``deadline_s``, what was left of it on arrival), whether it came over TLS and the
common name of its client certificate. ``tls=(certfile, keyfile)`` serves TLS;
``client_ca`` then requires a client certificate signed by that CA. ``accept_gzip=False``
enables no compression but identity, so a gzip-compressed call fails with UNIMPLEMENTED:
that is how a test sees the compression a client used (grpcio does not show a call's
``grpc-encoding`` to the handler).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
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
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from emp_fastbuf.testing.receiver import attrs_dict

# method -> (request class, response class, partial-success class, rejected field)
METHODS: dict[str, tuple[Any, Any, Any, str]] = {
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export": (
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
        ExportLogsPartialSuccess,
        "rejected_log_records",
    ),
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export": (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
        ExportTracePartialSuccess,
        "rejected_spans",
    ),
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export": (
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
        ExportMetricsPartialSuccess,
        "rejected_data_points",
    ),
}
LOGS, TRACES, METRICS = METHODS


@dataclass
class GrpcResponse:
    """One scripted answer: ``code`` is a ``grpc.StatusCode`` name; any but ``OK`` ends
    the call with that status, ``details`` and ``trailing_metadata`` (where a
    ``grpc-status-details-bin`` carries a ``google.rpc.Status``)."""

    code: str = "OK"
    details: str = ""
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
    rejected: int = 0
    error_message: str = ""


@dataclass
class GrpcCall:
    """One call the receiver answered."""

    method: str
    metadata: dict[str, str | bytes]
    code: str  # what the receiver answered
    deadline_s: float | None  # the time left of the client's deadline on arrival
    secure: bool  # over TLS
    client_subject: str | None  # the client certificate's common name
    request: Message | None = None
    error: str | None = None
    time: float = field(default_factory=time.monotonic)


class GrpcReceiver:
    """A threaded OTLP/gRPC server on 127.0.0.1 with scripted answers."""

    def __init__(
        self,
        tls: tuple[str, str] | None = None,
        *,
        client_ca: str | None = None,
        accept_gzip: bool = True,
    ) -> None:
        if client_ca is not None and tls is None:
            raise ValueError("client_ca needs tls")
        self._tls = tls
        self._client_ca = client_ca
        self._accept_gzip = accept_gzip
        self._lock = threading.Lock()
        self._script: deque[GrpcResponse] = deque()
        self.default = GrpcResponse()
        self.calls: list[GrpcCall] = []
        self._server: grpc.Server | None = None
        self._port = 0

    def __enter__(self) -> GrpcReceiver:
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, or ``https://`` with TLS."""
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self._port}"

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT``: the endpoint without a scheme."""
        return f"127.0.0.1:{self._port}"

    def up(self) -> None:
        """Start serving."""
        if self._server is not None:
            return
        options: list[tuple[str, Any]] = []
        if not self._accept_gzip:
            options.append(("grpc.compression_enabled_algorithms_bitset", 1))  # identity
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            handlers=_handlers(self),
            options=options,
        )
        address = f"127.0.0.1:{self._port}"
        if self._tls is None:
            self._port = server.add_insecure_port(address)
        else:
            cert, key = (Path(p).read_bytes() for p in self._tls)
            ca = None if self._client_ca is None else Path(self._client_ca).read_bytes()
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
            )
            self._port = server.add_secure_port(address, credentials)
        server.start()
        self._server = server

    def down(self) -> None:
        """Stop serving (calls in flight are cancelled)."""
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def script(self, *responses: GrpcResponse) -> None:
        """Queue answers for the next calls, in order."""
        with self._lock:
            self._script.extend(responses)

    def logs(self) -> list[tuple[dict[str, Any], LogRecord]]:
        """Every log record of an accepted call, with its resource attributes."""
        return self._items(LOGS, "resource_logs", "scope_logs", "log_records")

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span of an accepted call, with its resource attributes."""
        return self._items(TRACES, "resource_spans", "scope_spans", "spans")

    def metrics(self) -> list[tuple[dict[str, Any], Metric]]:
        """Every metric of an accepted call, with its resource attributes."""
        return self._items(METRICS, "resource_metrics", "scope_metrics", "metrics")

    def accepted(self, method: str | None = None) -> list[GrpcCall]:
        """The calls answered OK (to ``method``, or any)."""
        with self._lock:
            return [
                c
                for c in self.calls
                if c.code == "OK" and c.request is not None and method in (None, c.method)
            ]

    def wait_for(self, predicate: Callable[[GrpcReceiver], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until it is true or ``timeout`` seconds pass."""
        end = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)

    def _items(
        self, method: str, resource_field: str, scope_field: str, item_field: str
    ) -> list[tuple[dict[str, Any], Any]]:
        out: list[tuple[dict[str, Any], Any]] = []
        for call in self.accepted(method):
            for res in getattr(call.request, resource_field):
                resource = attrs_dict(res.resource.attributes)
                for scope in getattr(res, scope_field):
                    out.extend((resource, item) for item in getattr(scope, item_field))
        return out

    def _handle(self, method: str, data: bytes, context: grpc.ServicerContext) -> bytes:
        auth = context.auth_context()
        secure = auth.get("transport_security_type") == [b"ssl"]
        names = auth.get("x509_common_name") or [None]
        subject = None if names[0] is None else bytes(names[0]).decode("utf-8", "replace")
        metadata = {m.key: m.value for m in context.invocation_metadata()}
        request_type, response_type, partial_type, rejected_field = METHODS[method]
        request: Message = request_type()
        error: str | None = None
        try:
            request.ParseFromString(data)
        except DecodeError as exc:
            error = f"cannot decode protobuf: {exc}"
        with self._lock:
            answer = self._script.popleft() if self._script else self.default
        code = "INVALID_ARGUMENT" if error is not None else answer.code
        call = GrpcCall(
            method,
            metadata,
            code,
            context.time_remaining(),
            secure,
            subject,
            None if error is not None else request,
            error,
        )
        with self._lock:
            self.calls.append(call)
        if error is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        if answer.code != "OK":
            if answer.trailing_metadata:
                context.set_trailing_metadata(answer.trailing_metadata)
            context.abort(grpc.StatusCode[answer.code], answer.details)
        response = response_type()
        if answer.rejected or answer.error_message:
            partial = partial_type(error_message=answer.error_message)
            setattr(partial, rejected_field, answer.rejected)
            response.partial_success.CopyFrom(partial)
        return bytes(response.SerializeToString())


def _handlers(receiver: GrpcReceiver) -> list[Any]:
    """One generic handler per OTLP service, its Export method answered by ``receiver``
    (an unknown method is UNIMPLEMENTED, grpcio's doing)."""
    handlers = []
    for method in METHODS:
        service, _, name = method.strip("/").rpartition("/")

        def unary(data: bytes, context: grpc.ServicerContext, method: str = method) -> bytes:
            return receiver._handle(method, data, context)

        handlers.append(
            grpc.method_handlers_generic_handler(
                service, {name: grpc.unary_unary_rpc_method_handler(unary)}
            )
        )
    return handlers
