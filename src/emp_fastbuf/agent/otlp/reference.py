"""Decoded records -> OTLP ``Export*ServiceRequest`` protobuf messages.

Input is a list of ``(Resource, [Record, ...])`` groups, one group per producer process.
Groups whose resources carry equal attributes share one ``ResourceLogs``/``ResourceSpans``
(first-seen order); inside it there is one ``ScopeLogs``/``ScopeSpans`` per
``(scope_name, scope_version)``. Attributes of a record are its context attributes followed
by its own ones (own wins on a key conflict); the context key ``job_id`` is exported as
``emp.job_id``.

The ``iter_*_requests`` functions serialize and split so that no request body is larger
than ``max_bytes`` (OTLP clients must stay under 64 MiB before compression); a single record
larger than that on its own is still sent, alone.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from emp_fastbuf.records import EVENT, LOG, SPAN, Attributes, AttrValue, Record, Resource

__all__ = [
    "DEFAULT_MAX_BYTES",
    "build_logs_request",
    "build_traces_request",
    "fill_attributes",
    "freeze_attributes",
    "iter_logs_requests",
    "iter_traces_requests",
    "record_attributes",
    "set_any_value",
]

DEFAULT_MAX_BYTES = 64 << 20
JOB_ID_KEY = "emp.job_id"

Groups = Sequence[tuple[Resource, Sequence[Record]]]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


# --- attributes -------------------------------------------------------------------------


def record_attributes(record: Record) -> Attributes:
    """The exported attributes of ``record``: context first (``job_id`` renamed to
    ``emp.job_id``), then the record's own attributes, which win on a key conflict."""
    context = record.context
    own = record.attributes
    if not context:
        return own
    merged: Attributes = {(JOB_ID_KEY if k == "job_id" else k): v for k, v in context.items()}
    if own:
        merged.update(own)
    return merged


def set_any_value(target: AnyValue, value: AttrValue) -> None:
    """Store ``value`` in the ``AnyValue`` ``target``.

    ``bool`` is tested before ``int`` (it is a subclass of ``int``); ``None`` becomes an
    empty (but present) ``AnyValue``; an ``int`` outside 64 bits becomes its decimal string,
    as the record encoder stores it; a list (or tuple) becomes an ``ArrayValue``. Subclasses
    (``str``/``int`` enums) are stored as their base type. Raises ``TypeError`` for any
    other type.
    """
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            target.int_value = int(value)
        else:
            target.string_value = str(int(value))
    elif isinstance(value, float):
        target.double_value = float(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        target.bytes_value = bytes(value)
    elif value is None:
        target.SetInParent()
    elif isinstance(value, list | tuple):
        array = target.array_value
        array.SetInParent()  # an empty list is an empty array, not an empty value
        add = array.values.add
        for item in value:
            set_any_value(add(), item)
    else:
        raise TypeError(f"unsupported attribute value type: {type(value).__name__}")


def fill_attributes(attributes: Any, items: Attributes) -> None:
    """Append ``items`` to the repeated ``KeyValue`` field ``attributes`` (resources,
    span events and links, metric points; record attributes go through ``_AttrEncoder``).

    The common scalar types are handled inline: a function call per value costs as much
    as the assignment itself.
    """
    add = attributes.add
    for key, value in items.items():
        t = type(value)
        if t is str:
            add(key=key).value.string_value = value
        elif t is int and _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            add(key=key).value.int_value = value
        elif t is float:
            add(key=key).value.double_value = value
        elif t is bool:
            add(key=key).value.bool_value = value
        else:
            set_any_value(add(key=key).value, value)


def freeze_attributes(items: Attributes) -> tuple[tuple[str, object], ...]:
    """A hashable, order-independent and type-aware key for an attribute set.

    ``1``, ``1.0`` and ``True`` are different attribute values in OTLP, so each value is
    tagged with its type; NaN is made equal to itself.
    """
    return tuple(sorted((k, _freeze_value(v)) for k, v in items.items()))


def _freeze_value(value: object) -> object:
    t = type(value)
    if t is float and value != value:
        return ("float", "nan")
    if t is list or t is tuple:
        return ("list", tuple(_freeze_value(v) for v in value))  # type: ignore[attr-defined]
    if value is None:
        return ("none", None)
    return (t.__name__, value)


_pack_double = struct.Struct("<d").pack
_ATTR_CACHE_MAX = 65536
_UINT64_MASK = (1 << 64) - 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(message: Any, field: str, wire_type: int) -> bytes:
    """The wire tag of ``message.field``, its number taken from the generated descriptor."""
    return _varint((message.DESCRIPTOR.fields_by_name[field].number << 3) | wire_type)


_VARINT, _I64, _LEN = 0, 1, 2
_KV_KEY = _tag(KeyValue, "key", _LEN)
_KV_VALUE = _tag(KeyValue, "value", _LEN)
_AV_STRING = _tag(AnyValue, "string_value", _LEN)
_AV_BOOL_TRUE = _tag(AnyValue, "bool_value", _VARINT) + b"\x01"
_AV_BOOL_FALSE = _tag(AnyValue, "bool_value", _VARINT) + b"\x00"
_AV_INT = _tag(AnyValue, "int_value", _VARINT)
_AV_DOUBLE = _tag(AnyValue, "double_value", _I64)
_AV_BYTES = _tag(AnyValue, "bytes_value", _LEN)


class _AttrEncoder:
    """Encodes a record's attributes as the wire bytes of its repeated ``KeyValue`` field,
    appended to the message with ``MergeFromString`` (parsing is done by the generated
    class, in C).

    This is the exporter's hot path, and building a ``KeyValue`` message per attribute is
    what costs most there. So ``KeyValue``s holding a ``str``, ``bool``, ``int`` (64-bit),
    ``float`` or ``bytes`` are written directly in the protobuf wire format (field numbers
    from the generated descriptors), and the encoded pairs except floats are cached for one
    request: job ids, model names and GPU ids repeat across records. Every other value
    (lists, ``None``, subclasses, big ints) goes through the generated ``KeyValue`` class.
    ``tests/agent/test_otlp.py`` checks both paths give the same bytes.
    """

    __slots__ = ("_cache", "_keys", "_tag")

    def __init__(self, message: Any, field: str = "attributes") -> None:
        self._tag = _tag(message, field, _LEN)
        self._cache: dict[tuple[object, ...], bytes] = {}
        self._keys: dict[str, bytes] = {}

    def encode(self, record: Record) -> bytes:
        """The framed ``KeyValue`` entries for ``record_attributes(record)``."""
        context = record.context
        own = record.attributes
        if context and JOB_ID_KEY in context and "job_id" in context:
            # Both spellings in the context: let the dict merge decide which value stays.
            context, own = {}, record_attributes(record)
        cache = self._cache
        parts: list[bytes] = []
        append = parts.append
        for source in (context, own):
            for key, value in source.items():
                if source is context:
                    if key == "job_id":
                        key = JOB_ID_KEY
                    if key in own:
                        continue  # the record's own attribute wins
                t = type(value)
                if t is not str and t is not int and t is not bool and t is not bytes:
                    # floats (measurements) rarely repeat; lists and None are not hashable
                    append(self.pair(key, value))
                    continue
                ck = (key, t, value)  # the type keeps 1 and True apart
                data = cache.get(ck)
                if data is None:
                    data = self.pair(key, value)
                    if len(cache) < _ATTR_CACHE_MAX:
                        cache[ck] = data
                append(data)
        return b"".join(parts)

    def pair(self, key: str, value: AttrValue) -> bytes:
        """One framed ``KeyValue`` entry."""
        t = type(value)
        if t is str:
            raw = value.encode()  # type: ignore[union-attr]
            av = _AV_STRING + _varint(len(raw)) + raw
        elif t is float:
            av = _AV_DOUBLE + _pack_double(value)
        elif t is int and _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            av = _AV_INT + _varint(value & _UINT64_MASK)  # type: ignore[operator]
        elif t is bool:
            av = _AV_BOOL_TRUE if value else _AV_BOOL_FALSE
        elif t is bytes:
            av = _AV_BYTES + _varint(len(value)) + value  # type: ignore[arg-type, operator]
        else:
            kv = KeyValue(key=key)
            set_any_value(kv.value, value)
            data: bytes = kv.SerializeToString()
            return self._tag + _varint(len(data)) + data
        prefix = self._keys.get(key)
        if prefix is None:
            raw_key = key.encode()
            prefix = self._keys[key] = _KV_KEY + _varint(len(raw_key)) + raw_key
        body = prefix + _KV_VALUE + _varint(len(av)) + av
        return self._tag + _varint(len(body)) + body


# --- resource grouping ------------------------------------------------------------------


class _Grouper:
    """Finds or creates the resource-level and scope-level message for a group, lazily,
    so that resources without records of the signal produce nothing."""

    __slots__ = ("_add_resource", "_resource_field", "_resources", "_scope_field", "_scopes")

    def __init__(self, add_resource: Any, scope_field: str) -> None:
        self._add_resource = add_resource
        self._scope_field = scope_field
        self._resources: dict[tuple[tuple[str, object], ...], Any] = {}
        self._scopes: dict[tuple[int, str, str], Any] = {}

    def scope_for(self, resource: Resource) -> Any:
        rkey = freeze_attributes(resource.attributes)
        res_msg = self._resources.get(rkey)
        if res_msg is None:
            res_msg = self._add_resource()
            res_msg.resource.SetInParent()
            fill_attributes(res_msg.resource.attributes, resource.attributes)
            self._resources[rkey] = res_msg
        skey = (id(res_msg), resource.scope_name, resource.scope_version)
        scope_msg = self._scopes.get(skey)
        if scope_msg is None:
            scope_msg = getattr(res_msg, self._scope_field).add()
            scope_msg.scope.name = resource.scope_name
            scope_msg.scope.version = resource.scope_version
            self._scopes[skey] = scope_msg
        return scope_msg

    def scoped(
        self, groups: Groups, kinds: tuple[int, ...], items_field: str
    ) -> Iterator[tuple[Any, list[Record]]]:
        """For each group with records of ``kinds``: the ``add`` of ``items_field`` (log
        records, spans) in the group's scope, made on first use, and those records."""
        for resource, records in groups:
            wanted = [record for record in records if record.kind in kinds]
            if wanted:
                yield getattr(self.scope_for(resource), items_field).add, wanted


def _check_id(value: bytes, size: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, got {value!r}")
    return value


# --- logs -------------------------------------------------------------------------------


def build_logs_request(
    groups: Groups, *, observed_time_unix_nano: int | None = None
) -> ExportLogsServiceRequest | None:
    """Build one ``ExportLogsServiceRequest`` from the LOG and EVENT records of ``groups``.

    Other kinds are skipped. Returns ``None`` when there is no LOG or EVENT record (an
    empty request is never sent). ``observed_time_unix_nano`` defaults to now.
    """
    observed = time.time_ns() if observed_time_unix_nano is None else observed_time_unix_nano
    request = ExportLogsServiceRequest()
    grouper = _Grouper(request.resource_logs.add, "scope_logs")
    encode_attributes = _AttrEncoder(LogRecord).encode
    count = 0
    for add_record, records in grouper.scoped(groups, (LOG, EVENT), "log_records"):
        for record in records:
            if record.kind == LOG:
                msg = add_record(
                    time_unix_nano=record.time_unix_nano,
                    observed_time_unix_nano=observed,
                    severity_number=record.severity_number,
                    severity_text=record.severity_text,
                    dropped_attributes_count=record.dropped_attributes,
                )
                msg.body.string_value = record.body
            else:
                msg = add_record(
                    time_unix_nano=record.time_unix_nano,
                    observed_time_unix_nano=observed,
                    event_name=record.name,
                    dropped_attributes_count=record.dropped_attributes,
                )
            trace_id = record.trace_id
            if trace_id is not None:
                if len(trace_id) != 16 or type(trace_id) is not bytes:
                    _check_id(trace_id, 16, "trace_id")
                msg.trace_id = trace_id
                msg.flags = record.trace_flags & 0xFF  # the W3C trace flags, low 8 bits
            span_id = record.span_id
            if span_id is not None:
                if len(span_id) != 8 or type(span_id) is not bytes:
                    _check_id(span_id, 8, "span_id")
                msg.span_id = span_id
            if record.context or record.attributes:
                msg.MergeFromString(encode_attributes(record))
        count += len(records)
    return request if count else None


# --- traces -----------------------------------------------------------------------------


def build_traces_request(groups: Groups) -> ExportTraceServiceRequest | None:
    """Build one ``ExportTraceServiceRequest`` from the SPAN records of ``groups``.

    Other kinds are skipped. Returns ``None`` when there is no SPAN record. The span's
    ``flags`` carry the W3C trace flags in their low 8 bits.
    """
    request = ExportTraceServiceRequest()
    grouper = _Grouper(request.resource_spans.add, "scope_spans")
    encode_attributes = _AttrEncoder(Span).encode
    count = 0
    for add_span, records in grouper.scoped(groups, (SPAN,), "spans"):
        for record in records:
            if record.trace_id is None or record.span_id is None:
                raise ValueError("a SPAN record needs trace_id and span_id")
            parent = record.parent_span_id
            span = add_span(
                trace_id=_check_id(record.trace_id, 16, "trace_id"),
                span_id=_check_id(record.span_id, 8, "span_id"),
                parent_span_id=b"" if parent is None else _check_id(parent, 8, "parent_span_id"),
                flags=record.trace_flags & 0xFF,
                name=record.name,
                kind=record.span_kind,
                start_time_unix_nano=record.start_unix_nano,
                end_time_unix_nano=record.time_unix_nano,
                dropped_attributes_count=record.dropped_attributes,
            )
            if record.context or record.attributes:
                span.MergeFromString(encode_attributes(record))
            if record.status_code or record.status_message:
                span.status.code = record.status_code
                span.status.message = record.status_message
            for event in record.events:
                ev = span.events.add(time_unix_nano=event.time_unix_nano, name=event.name)
                if event.attributes:
                    fill_attributes(ev.attributes, event.attributes)
            for link in record.links:
                ln = span.links.add(
                    trace_id=_check_id(link.trace_id, 16, "link trace_id"),
                    span_id=_check_id(link.span_id, 8, "link span_id"),
                )
                if link.attributes:
                    fill_attributes(ln.attributes, link.attributes)
        count += len(records)
    return request if count else None


# --- size-capped serialization ----------------------------------------------------------

# Upper bound of the framing of one length-delimited field: a one-byte tag (field numbers
# 1 and 2 here) and a varint length of at most 5 bytes (any length below 32 GiB).
_FRAME = 6


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _header_copy(msg: Message, skip: str) -> Message:
    """A copy of ``msg`` without its repeated field ``skip`` (the resource/scope header)."""
    out = type(msg)()
    for fd, value in msg.ListFields():
        if fd.name == skip:
            continue
        if fd.message_type is not None and not _is_repeated(fd):
            getattr(out, fd.name).CopyFrom(value)
        elif _is_repeated(fd):
            getattr(out, fd.name).extend(value)
        else:
            setattr(out, fd.name, value)
    return out


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 5.29; ``label`` is gone in 7
    if flag is None:
        return bool(fd.label == fd.LABEL_REPEATED)
    return bool(flag)


def _split(request: Message, fields: tuple[str, str, str], max_bytes: int) -> Iterator[bytes]:
    """Serialize ``request``; if it is over ``max_bytes``, re-pack its items (log records
    or spans, in order, keeping their resource and scope) into several requests, each
    bounded by an upper estimate of its encoded size that never undercounts."""
    data = request.SerializeToString()
    if len(data) <= max_bytes:
        yield data
        return
    resource_field, scope_field, item_field = fields
    chunk = type(request)()
    chunk_items = 0
    chunk_size = 0
    cur_res: Any = None  # (source resource message, its copy in chunk)
    cur_scope: Any = None
    for res in getattr(request, resource_field):
        res_header = _header_copy(res, scope_field)
        res_cost = _FRAME + res_header.ByteSize()
        for scope in getattr(res, scope_field):
            scope_header = _header_copy(scope, item_field)
            scope_cost = _FRAME + scope_header.ByteSize()
            for item in getattr(scope, item_field):
                size = item.ByteSize()
                cost = 1 + _varint_len(size) + size
                if cur_scope is None or cur_scope[0] is not scope:
                    cost += scope_cost
                    if cur_res is None or cur_res[0] is not res:
                        cost += res_cost
                if chunk_items and chunk_size + cost > max_bytes:
                    yield chunk.SerializeToString()
                    chunk = type(request)()
                    chunk_items = 0
                    chunk_size = 0
                    cur_res = cur_scope = None
                    cost = 1 + _varint_len(size) + size + scope_cost + res_cost
                if cur_res is None or cur_res[0] is not res:
                    res_copy = getattr(chunk, resource_field).add()
                    res_copy.CopyFrom(res_header)
                    cur_res = (res, res_copy)
                    cur_scope = None
                if cur_scope is None or cur_scope[0] is not scope:
                    scope_copy = getattr(cur_res[1], scope_field).add()
                    scope_copy.CopyFrom(scope_header)
                    cur_scope = (scope, scope_copy)
                getattr(cur_scope[1], item_field).append(item)
                chunk_items += 1
                chunk_size += cost
    if chunk_items:
        yield chunk.SerializeToString()


def iter_logs_requests(
    groups: Groups,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    observed_time_unix_nano: int | None = None,
) -> Iterator[bytes]:
    """Serialized ``ExportLogsServiceRequest`` bodies for ``groups``, each at most
    ``max_bytes`` long unless one record alone is larger. Yields nothing when there is no
    LOG or EVENT record."""
    _check_max_bytes(max_bytes)
    request = build_logs_request(groups, observed_time_unix_nano=observed_time_unix_nano)
    if request is not None:
        yield from _split(request, ("resource_logs", "scope_logs", "log_records"), max_bytes)


def iter_traces_requests(groups: Groups, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[bytes]:
    """Serialized ``ExportTraceServiceRequest`` bodies for ``groups``, each at most
    ``max_bytes`` long unless one span alone is larger. Yields nothing when there is no
    SPAN record."""
    _check_max_bytes(max_bytes)
    request = build_traces_request(groups)
    if request is not None:
        yield from _split(request, ("resource_spans", "scope_spans", "spans"), max_bytes)


def _check_max_bytes(max_bytes: int) -> None:
    if type(max_bytes) is not int or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
