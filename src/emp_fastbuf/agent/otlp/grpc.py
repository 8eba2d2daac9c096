"""OTLP/gRPC transport: the agent's protobuf requests as unary calls over grpcio.

Imported only when a signal's protocol is ``grpc``; grpcio is the optional ``grpc`` extra
(``AgentConfig`` refuses grpc at start without it). The calls are grpcio's generic unary
calls on the bytes the agent already builds, so no generated stubs are needed: the
service paths are ``/opentelemetry.proto.collector.<signal>.v1.<Signal>Service/Export``.

One channel per endpoint and TLS setting, shared by the signals that have the same:
``https://`` verifies the server against the signal's CERTIFICATE (else the system trust
store) and presents its CLIENT_CERTIFICATE and CLIENT_KEY when set; ``http://`` is a
plaintext channel (AgentConfig already turned a scheme-less endpoint into one of the two,
per INSECURE). Headers go as metadata (names lowercased), gzip is gRPC's own message
compression, and each call has the signal's timeout as its deadline. gRPC's own retries
are off: the exporter retries, with the codes the OTLP specification names.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from emp_fastbuf.agent.config import SIGNALS, Signal, SignalExport

SERVICES: dict[Signal, str] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
# OTLP/gRPC: retried; RESOURCE_EXHAUSTED only when the server sends RetryInfo.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_STATUS_DETAILS = "grpc-status-details-bin"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# Metadata names the transport sets itself.
_OWN_METADATA = frozenset(
    {"content-type", "content-encoding", "content-length", "user-agent", "te"}
)


@dataclass(frozen=True)
class GrpcReply:
    """The outcome of one call: ``code`` is ``OK`` or the status code's name."""

    code: str
    body: bytes = b""
    details: str = ""
    retryable: bool = False
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        """True when the server accepted the request."""
        return self.code == "OK"


_ChannelKey = tuple[str, Path | None, Path | None, Path | None]


class GrpcTransport:
    """The channels to the grpc endpoints of a configuration, and the calls on them."""

    def __init__(self, exports: list[SignalExport], user_agent: str, max_response: int) -> None:
        self._lock = threading.Lock()
        self._channels: dict[_ChannelKey, grpc.Channel] = {}
        self._calls: dict[Signal, Any] = {}
        self._metadata: dict[Signal, list[tuple[str, str]]] = {}
        self._compression: dict[Signal, grpc.Compression] = {}
        options = [
            ("grpc.primary_user_agent", user_agent),
            ("grpc.enable_retries", 0),
            ("grpc.max_receive_message_length", max_response),
        ]
        for export in exports:
            key = (
                export.endpoint,
                export.certificate,
                export.client_certificate,
                export.client_key,
            )
            channel = self._channels.get(key)
            if channel is None:
                channel = _channel(export, options)
                self._channels[key] = channel
            self._calls[export.signal] = channel.unary_unary(SERVICES[export.signal])
            self._metadata[export.signal] = _metadata(export.headers)
            self._compression[export.signal] = (
                grpc.Compression.Gzip
                if export.compression == "gzip"
                else grpc.Compression.NoCompression
            )

    def call(
        self,
        signal: Signal,
        data: bytes,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> GrpcReply:
        """One Export call with ``data`` (a serialized request) and a deadline of
        ``timeout_s``; a connection failure is ``UNAVAILABLE``, as gRPC reports it.
        ``headers``: this call's metadata instead of the signal's (a routed dataset)."""
        if signal not in SIGNALS or signal not in self._calls:
            raise ValueError(f"no grpc endpoint is configured for {signal}")
        metadata = self._metadata[signal] if headers is None else _metadata(headers)
        try:
            body = self._calls[signal](
                data,
                timeout=timeout_s,
                metadata=metadata,
                compression=self._compression[signal],
                wait_for_ready=False,
            )
        except grpc.RpcError as exc:
            return _reply_of_error(exc)
        return GrpcReply("OK", bytes(body))

    def close(self) -> None:
        """Close every channel (calls in flight end with CANCELLED)."""
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            channel.close()


def _metadata(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Headers as gRPC metadata: names lowercased, the transport's own left out."""
    return [(k.lower(), v) for k, v in headers.items() if k.lower() not in _OWN_METADATA]


def _channel(export: SignalExport, options: list[tuple[str, Any]]) -> grpc.Channel:
    scheme, _, target = export.endpoint.partition("://")
    if scheme == "http":
        return grpc.insecure_channel(target, options=options)
    root = _read(export.certificate) if export.certificate is not None else _system_roots()
    key = _read(export.client_key) if export.client_key is not None else None
    chain = _read(export.client_certificate) if export.client_certificate is not None else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
    return grpc.secure_channel(target, credentials, options=options)


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _system_roots() -> bytes | None:
    """The system trust store, as the HTTP transport uses it; None (grpcio's own bundle)
    where the system has no CA file."""
    cafile = ssl.get_default_verify_paths().cafile
    if cafile is None:
        return None
    try:
        return Path(cafile).read_bytes()
    except OSError:
        return None


def _reply_of_error(exc: grpc.RpcError) -> GrpcReply:
    code_of = getattr(exc, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(exc, "details", None)
    details = str(details_of() or "") if callable(details_of) else ""
    retry_after = _retry_delay(exc)
    retryable = code in RETRYABLE_CODES or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None
    )
    return GrpcReply(code.name, b"", details, retryable, retry_after)


def _retry_delay(exc: grpc.RpcError) -> float | None:
    """The ``RetryInfo.retry_delay`` of the call's ``google.rpc.Status`` details, if any."""
    trailing_of = getattr(exc, "trailing_metadata", None)
    trailing = trailing_of() if callable(trailing_of) else None
    for key, value in trailing or ():
        if key != _STATUS_DETAILS or not isinstance(value, bytes):
            continue
        try:
            return _status_retry_delay(value)
        except ValueError:
            return None
    return None


def _status_retry_delay(status: bytes) -> float | None:
    """google.rpc.Status {3: repeated Any details}; Any {1: type_url, 2: value};
    RetryInfo {1: Duration retry_delay}; Duration {1: seconds, 2: nanos}. Read by hand: the
    google.rpc messages are not among this package's dependencies."""
    for number, value in _fields(status):
        if number != 3 or not isinstance(value, bytes):
            continue
        any_fields = dict(_fields(value))
        if any_fields.get(1) != _RETRY_INFO.encode():
            continue
        info = dict(_fields(_as_bytes(any_fields.get(2, b""))))
        duration = dict(_fields(_as_bytes(info.get(1, b""))))
        seconds = duration.get(1, 0)
        nanos = duration.get(2, 0)
        if not isinstance(seconds, int) or not isinstance(nanos, int):
            raise ValueError("bad Duration")
        return max(0.0, seconds + nanos / 1e9)
    return None


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("expected a length-delimited field")
    return value


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a protobuf message: varints as ints,
    length-delimited fields as bytes; fixed-width fields are skipped."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ValueError("truncated field")
            out.append((number, data[i : i + size]))
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if i > len(data):
        raise ValueError("truncated field")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("bad varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
