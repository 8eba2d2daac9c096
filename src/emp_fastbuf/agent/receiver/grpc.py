"""The OTLP/gRPC receiver (the grpc extra): the three collector services' ``Export``,
sharing the HTTP receiver's decoding and spooling (``Ingest``).

Status codes: OK once durable (with partial success when records were rejected);
INVALID_ARGUMENT for a message that does not parse; UNAUTHENTICATED without the bearer
token (when one is set); RESOURCE_EXHAUSTED over the size limit (grpcio enforces it after
decompression); UNAVAILABLE while the spool is full, which OTLP senders retry.
"""

from __future__ import annotations

import hmac
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from emp_fastbuf.agent.receiver.decode import BadRequest, Signal
from emp_fastbuf.agent.receiver.http import MAX_WORKERS, partial_response
from emp_fastbuf.agent.receiver.ingest import Ingest, SpoolFull

__all__ = ["GRPCReceiver"]

_SERVICES: dict[Signal, str] = {
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}


class GRPCReceiver:
    """An insecure (plaintext) gRPC server on ``host:port``, until ``close()``."""

    def __init__(self, host: str, port: int, ingest: Ingest, token: str | None) -> None:
        self.ingest = ingest
        self.token = token
        self.server = grpc.server(
            ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="receiver-grpc"),
            options=[
                ("grpc.max_receive_message_length", ingest.max_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=MAX_WORKERS * 4,
        )
        handlers = [
            grpc.method_handlers_generic_handler(
                service,
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        self._handler(signal),
                        request_deserializer=None,  # raw bytes: Ingest parses them
                        response_serializer=lambda m: m.SerializeToString(),
                    )
                },
            )
            for signal, service in _SERVICES.items()
        ]
        self.server.add_generic_rpc_handlers(handlers)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(where)
        except RuntimeError as exc:
            raise OSError(str(exc)) from None
        if bound == 0:
            raise OSError("address in use or not available")
        self.address = (host, bound)
        self.server.start()

    def _handler(self, signal: Signal) -> Any:
        def export(request: bytes, context: grpc.ServicerContext) -> Any:
            if self.token is not None:
                given = dict(context.invocation_metadata()).get("authorization", "")
                expected = b"Bearer " + self.token.encode()
                if not hmac.compare_digest(str(given).encode(), expected):
                    self.ingest.count("bad_requests")
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            try:
                converted = self.ingest.accept(signal, request, "application/x-protobuf")
            except BadRequest as exc:
                self.ingest.count("bad_requests")
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
            except SpoolFull as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry later")
            return partial_response(signal, converted)

        return export

    def close(self) -> None:
        self.server.stop(grace=5).wait(10)
