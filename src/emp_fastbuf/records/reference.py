"""Pure-Python reference encoder and untrusted-input decoder of the record format v1.

The format is specified in ``docs/record-format.md``.

The decoders (``decode_record``, ``decode_resource``, ``decode_attrs``) treat their input
as hostile: every malformed input raises ``records.CorruptRecord`` with a message naming
the field and offset, and nothing is read past the end of the buffer.

The encoders are strict: they encode a ``records.Record`` / ``records.Resource`` exactly as
given (no limits applied, nothing truncated, no ``str()`` coercion of odd values) and raise
``TypeError`` or ``ValueError`` for anything the format cannot hold. Applying the
producer-side limits and coercions is the job of the native encoder.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    FLAG_HAS_LIMITS,
    FLAG_HAS_TRACE,
    FLAG_HAS_TRACE_FLAGS,
    FORMAT_VERSION,
    GAUGE,
    HISTOGRAM,
    KNOWN_FLAGS,
    LOG,
    MAX_HISTOGRAM_VALUES,
    MAX_SEVERITY,
    MAX_SPAN_KIND,
    MAX_STATUS_CODE,
    METRIC,
    RESOURCE,
    SPAN,
    T_ARRAY,
    T_BOOL,
    T_BYTES,
    T_DOUBLE,
    T_INT,
    T_NONE,
    T_STR,
    UPDOWNCOUNTER,
    Attributes,
    AttrScalar,
    AttrValue,
    CorruptRecord,
    Record,
    Resource,
    SpanEvent,
    SpanLink,
)

__all__ = [
    "decode_attrs",
    "decode_record",
    "decode_resource",
    "encode_attrs",
    "encode_record",
    "encode_resource",
]

_KINDS = (LOG, EVENT, SPAN, METRIC)
_INSTRUMENTS = (COUNTER, UPDOWNCOUNTER, GAUGE, HISTOGRAM)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_ZERO16 = bytes(16)
_ZERO8 = bytes(8)

_HEAD = struct.Struct("<BBBBQ")  # version, kind, flags, reserved, time_unix_nano
_HEAD_SIZE = _HEAD.size
_IDS = struct.Struct("<16s8s")  # trace_id, span_id
_LIMITS = struct.Struct("<HH")  # dropped_attributes, truncated_values
_SPAN_MID = struct.Struct("<8sQBBB")  # parent, start, status, span_kind, trace_flags
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_RES_HEAD = struct.Struct("<BB")

# Bound methods, looked up once: the decoder calls them for every field.
_u16_from = _U16.unpack_from
_u32_from = _U32.unpack_from
_u64_from = _U64.unpack_from
_i64_from = _I64.unpack_from
_f64_from = _F64.unpack_from

# ---- decoding ------------------------------------------------------------------------


def _short(what: str, pos: int, need: int, end: int) -> CorruptRecord:
    left = end - pos if end > pos else 0
    return CorruptRecord(f"truncated: {what} at offset {pos} needs {need} bytes, only {left} left")


def _as_bytes(buf: bytes | bytearray | memoryview) -> bytes:
    if type(buf) is bytes:
        return buf
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return bytes(buf)
    raise TypeError(f"expected bytes, bytearray or memoryview, not {type(buf).__name__}")


def _text(data: bytes, pos: int, n: int, end: int, what: str) -> str:
    """``n`` bytes at ``pos`` as UTF-8 (the length prefix has been read already)."""
    stop = pos + n
    if stop > end:
        raise _short(what, pos, n, end)
    try:
        return data[pos:stop].decode()
    except UnicodeDecodeError as exc:
        raise CorruptRecord(f"{what} at offset {pos} is not valid UTF-8 ({exc.reason})") from None


def _str16(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    if pos + 2 > end:
        raise _short(f"{what} length", pos, 2, end)
    n = data[pos] | data[pos + 1] << 8
    pos += 2
    return _text(data, pos, n, end, what), pos + n


def _scalar(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[AttrScalar, int]:
    """One tagged scalar value (tags 0..5) starting at ``pos``."""
    if tag == T_STR:
        if pos + 4 > end:
            raise _short(f"{what} string length", pos, 4, end)
        (n,) = _u32_from(data, pos)
        pos += 4
        return _text(data, pos, n, end, f"{what} string"), pos + n
    if tag == T_INT:
        if pos + 8 > end:
            raise _short(f"{what} int", pos, 8, end)
        return _i64_from(data, pos)[0], pos + 8
    if tag == T_DOUBLE:
        if pos + 8 > end:
            raise _short(f"{what} float", pos, 8, end)
        return _f64_from(data, pos)[0], pos + 8
    if tag == T_BOOL:
        if pos >= end:
            raise _short(f"{what} bool", pos, 1, end)
        b = data[pos]
        if b > 1:
            raise CorruptRecord(f"{what}: bool byte at offset {pos} is {b}, must be 0 or 1")
        return b == 1, pos + 1
    if tag == T_NONE:
        return None, pos
    if tag == T_BYTES:
        if pos + 4 > end:
            raise _short(f"{what} bytes length", pos, 4, end)
        (n,) = _u32_from(data, pos)
        pos += 4
        stop = pos + n
        if stop > end:
            raise _short(f"{what} bytes", pos, n, end)
        return data[pos:stop], stop
    if tag == T_ARRAY:
        raise CorruptRecord(f"{what}: nested array at offset {pos - 1}")
    raise CorruptRecord(f"{what}: unknown value tag {tag} at offset {pos - 1}")


def _array(data: bytes, pos: int, end: int, what: str) -> tuple[list[AttrScalar], int]:
    if pos + 2 > end:
        raise _short(f"{what} array length", pos, 2, end)
    n = data[pos] | data[pos + 1] << 8
    pos += 2
    out: list[AttrScalar] = []
    for j in range(n):
        if pos >= end:
            raise _short(f"{what}[{j}] tag", pos, 1, end)
        value, pos = _scalar(data, pos + 1, end, data[pos], f"{what}[{j}]")
        out.append(value)
    return out, pos


def _attrs(data: bytes, pos: int, end: int, what: str) -> tuple[Attributes, int]:
    """An attrlist at ``pos``: the dict and the offset after it.

    The common value types are decoded inline: this loop is the decoder's hot spot.
    A repeated key keeps its last value (the native encoder may repeat a key after
    truncating keys to the key-length limit).
    """
    if pos + 2 > end:
        raise _short(f"{what} count", pos, 2, end)
    count = data[pos] | data[pos + 1] << 8
    pos += 2
    out: Attributes = {}
    for i in range(count):
        if pos + 2 > end:
            raise _short(f"{what}[{i}] key length", pos, 2, end)
        stop = pos + 2 + (data[pos] | data[pos + 1] << 8)
        pos += 2
        if stop >= end:  # the key and its tag byte
            raise _short(f"{what}[{i}] key and tag", pos, stop + 1 - pos, end)
        try:
            key = data[pos:stop].decode()
        except UnicodeDecodeError as exc:
            raise CorruptRecord(
                f"{what}[{i}] key at offset {pos} is not valid UTF-8 ({exc.reason})"
            ) from None
        tag = data[stop]
        pos = stop + 1
        value: AttrValue
        if tag == T_STR:
            if pos + 4 > end:
                raise _short(f"{what}[{key!r}] string length", pos, 4, end)
            stop = pos + 4 + _u32_from(data, pos)[0]
            pos += 4
            if stop > end:
                raise _short(f"{what}[{key!r}] string", pos, stop - pos, end)
            try:
                value = data[pos:stop].decode()
            except UnicodeDecodeError as exc:
                raise CorruptRecord(
                    f"{what}[{key!r}] string at offset {pos} is not valid UTF-8 ({exc.reason})"
                ) from None
            pos = stop
        elif tag == T_INT:
            if pos + 8 > end:
                raise _short(f"{what}[{key!r}] int", pos, 8, end)
            value = _i64_from(data, pos)[0]
            pos += 8
        elif tag == T_DOUBLE:
            if pos + 8 > end:
                raise _short(f"{what}[{key!r}] float", pos, 8, end)
            value = _f64_from(data, pos)[0]
            pos += 8
        elif tag == T_BOOL:
            if pos >= end:
                raise _short(f"{what}[{key!r}] bool", pos, 1, end)
            b = data[pos]
            if b > 1:
                raise CorruptRecord(
                    f"{what}[{key!r}]: bool byte at offset {pos} is {b}, must be 0 or 1"
                )
            value = b == 1
            pos += 1
        elif tag == T_ARRAY:
            value, pos = _array(data, pos, end, f"{what}[{key!r}]")
        else:
            value, pos = _scalar(data, pos, end, tag, f"{what}[{key!r}]")
        out[key] = value
    return out, pos


def _ids(data: bytes, pos: int, end: int, what: str) -> tuple[bytes, bytes]:
    if pos + 24 > end:
        raise _short(f"{what} trace_id and span_id", pos, 24, end)
    trace_id, span_id = _IDS.unpack_from(data, pos)
    if trace_id == _ZERO16:
        raise CorruptRecord(f"{what}: all-zero trace_id at offset {pos}")
    if span_id == _ZERO8:
        raise CorruptRecord(f"{what}: all-zero span_id at offset {pos + 16}")
    return trace_id, span_id


def _f64_array(data: bytes, pos: int, n: int, end: int, what: str) -> tuple[list[float], int]:
    stop = pos + 8 * n
    if stop > end:
        raise _short(what, pos, 8 * n, end)
    return list(struct.unpack_from(f"<{n}d", data, pos)), stop


def _span_body(data: bytes, pos: int, end: int) -> tuple[dict[str, object], int]:
    name, pos = _str16(data, pos, end, "span name")
    if pos + _SPAN_MID.size > end:
        raise _short("span parent, start, status, kind and flags", pos, _SPAN_MID.size, end)
    parent, start, status, span_kind, trace_flags = _SPAN_MID.unpack_from(data, pos)
    if status > MAX_STATUS_CODE:
        raise CorruptRecord(f"span status_code {status} at offset {pos + 16} is not 0..2")
    if span_kind > MAX_SPAN_KIND:
        raise CorruptRecord(f"span_kind {span_kind} at offset {pos + 17} is not 0..5")
    pos += _SPAN_MID.size
    message, pos = _str16(data, pos, end, "span status_message")
    if pos + 2 > end:
        raise _short("span event count", pos, 2, end)
    (n_events,) = _u16_from(data, pos)
    pos += 2
    events: list[SpanEvent] = []
    for i in range(n_events):
        ev_name, pos = _str16(data, pos, end, f"span event {i} name")
        if pos + 8 > end:
            raise _short(f"span event {i} time", pos, 8, end)
        (ev_time,) = _u64_from(data, pos)
        ev_attrs, pos = _attrs(data, pos + 8, end, f"span event {i} attributes")
        events.append(SpanEvent(ev_name, ev_time, ev_attrs))
    if pos + 2 > end:
        raise _short("span link count", pos, 2, end)
    (n_links,) = _u16_from(data, pos)
    pos += 2
    links: list[SpanLink] = []
    for i in range(n_links):
        # All-zero link ids are allowed: OpenTelemetry keeps links to an invalid span
        # context when they carry attributes.
        if pos + 24 > end:
            raise _short(f"span link {i} trace_id and span_id", pos, 24, end)
        trace_id, span_id = _IDS.unpack_from(data, pos)
        ln_attrs, pos = _attrs(data, pos + 24, end, f"span link {i} attributes")
        links.append(SpanLink(trace_id, span_id, ln_attrs))
    fields: dict[str, object] = {
        "name": name,
        "parent_span_id": None if parent == _ZERO8 else parent,
        "start_unix_nano": start,
        "status_code": status,
        "span_kind": span_kind,
        "trace_flags": trace_flags,
        "status_message": message,
        "events": events,
        "links": links,
    }
    return fields, pos


def _metric_body(data: bytes, pos: int, end: int) -> tuple[dict[str, object], int]:
    if pos >= end:
        raise _short("metric instrument", pos, 1, end)
    instrument = data[pos]
    if instrument not in _INSTRUMENTS:
        raise CorruptRecord(f"unknown metric instrument {instrument} at offset {pos}")
    name, pos = _str16(data, pos + 1, end, "metric name")
    if pos >= end:
        raise _short("metric unit length", pos, 1, end)
    n = data[pos]
    unit = _text(data, pos + 1, n, end, "metric unit")
    description, pos = _str16(data, pos + 1 + n, end, "metric description")
    fields: dict[str, object] = {
        "instrument": instrument,
        "name": name,
        "unit": unit,
        "description": description,
    }
    if instrument != HISTOGRAM:
        if pos >= end:
            raise _short("metric value tag", pos, 1, end)
        tag = data[pos]
        if tag == T_INT:
            if pos + 9 > end:
                raise _short("metric int value", pos + 1, 8, end)
            fields["value"] = _i64_from(data, pos + 1)[0]
        elif tag == T_DOUBLE:
            if pos + 9 > end:
                raise _short("metric float value", pos + 1, 8, end)
            fields["value"] = _f64_from(data, pos + 1)[0]
        else:
            raise CorruptRecord(f"metric value tag {tag} at offset {pos} is not 2 (int) or 3")
        return fields, pos + 9
    if pos + 4 > end:
        raise _short("histogram value count", pos, 4, end)
    (n,) = _u32_from(data, pos)
    if not 1 <= n <= MAX_HISTOGRAM_VALUES:
        raise CorruptRecord(
            f"histogram value count {n} at offset {pos} is not 1..{MAX_HISTOGRAM_VALUES}"
        )
    fields["values"], pos = _f64_array(data, pos + 4, n, end, "histogram values")
    if pos + 2 > end:
        raise _short("histogram bound count", pos, 2, end)
    (n,) = _u16_from(data, pos)
    bounds, after = _f64_array(data, pos + 2, n, end, "histogram bounds")
    for i, b in enumerate(bounds):
        if math.isnan(b) or (i and not bounds[i - 1] < b):
            raise CorruptRecord(
                f"histogram bounds at offset {pos + 2} are not strictly increasing "
                f"(bound {i} is {b!r})"
            )
    fields["bounds"] = bounds
    return fields, after


def _decode_record(data: bytes) -> Record:
    end = len(data)
    if end < _HEAD_SIZE:
        raise _short("record header", 0, _HEAD_SIZE, end)
    version, kind, flags, reserved, t = _HEAD.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise CorruptRecord(f"unknown record version {version} (this decoder reads 1)")
    if kind not in _KINDS:
        if kind == RESOURCE:
            raise CorruptRecord("kind 5 is a resource blob, not a record")
        raise CorruptRecord(f"unknown record kind {kind}")
    if flags & ~KNOWN_FLAGS:
        raise CorruptRecord(
            f"unknown flag bits 0x{flags & ~KNOWN_FLAGS:02x} in flags 0x{flags:02x}"
        )
    if reserved:
        raise CorruptRecord(f"reserved byte is {reserved}, must be 0")
    pos = _HEAD_SIZE
    trace_id = span_id = None
    trace_fields: dict[str, object] = {}
    if flags & FLAG_HAS_TRACE:
        trace_id, span_id = _ids(data, pos, end, "record")
        pos += 24
    elif kind == SPAN:
        raise CorruptRecord("SPAN record without HAS_TRACE")
    if flags & FLAG_HAS_TRACE_FLAGS:
        if not flags & FLAG_HAS_TRACE:
            raise CorruptRecord("HAS_TRACE_FLAGS without HAS_TRACE")
        if kind == SPAN:
            raise CorruptRecord("HAS_TRACE_FLAGS on a SPAN record (its body has the flags)")
        if pos >= end:
            raise _short("trace_flags", pos, 1, end)
        trace_fields["trace_flags"] = data[pos]
        pos += 1
    dropped = truncated = 0
    if flags & FLAG_HAS_LIMITS:
        if pos + 4 > end:
            raise _short("limits (dropped_attributes, truncated_values)", pos, 4, end)
        dropped, truncated = _LIMITS.unpack_from(data, pos)
        pos += 4

    fields: dict[str, object]
    if kind == LOG:
        if pos + 2 > end:
            raise _short("log severity_number and severity_text length", pos, 2, end)
        severity = data[pos]
        if severity > MAX_SEVERITY:
            raise CorruptRecord(f"log severity_number {severity} at offset {pos} is not 0..24")
        n = data[pos + 1]
        pos += 2
        severity_text = _text(data, pos, n, end, "log severity_text")
        pos += n
        if pos + 4 > end:
            raise _short("log body length", pos, 4, end)
        (n,) = _u32_from(data, pos)
        body = _text(data, pos + 4, n, end, "log body")
        pos += 4 + n
        fields = {"severity_number": severity, "severity_text": severity_text, "body": body}
    elif kind == EVENT:
        name, pos = _str16(data, pos, end, "event name")
        fields = {"name": name}
    else:
        fields, pos = (_span_body if kind == SPAN else _metric_body)(data, pos, end)
    context, pos = _attrs(data, pos, end, "context")
    attributes, pos = _attrs(data, pos, end, "attributes")
    rec = Record(
        kind,
        t,
        trace_id=trace_id,
        span_id=span_id,
        dropped_attributes=dropped,
        truncated_values=truncated,
        context=context,
        attributes=attributes,
        **trace_fields,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    if pos != end:
        raise CorruptRecord(f"{end - pos} trailing bytes after the record (at offset {pos})")
    return rec


def _internal(exc: Exception) -> CorruptRecord:
    # Every check above is explicit; this only keeps the "CorruptRecord and nothing else"
    # promise should a check ever be missing. Tests assert this message never appears.
    return CorruptRecord(f"malformed input (internal decoder error: {type(exc).__name__}: {exc})")


def decode_record(buf: bytes | bytearray | memoryview) -> Record:
    """Decode one record (``docs/record-format.md``) from untrusted bytes.

    Raises ``CorruptRecord`` for any malformed input and ``TypeError`` when ``buf`` is
    not a bytes-like object. A SPAN's all-zero parent id decodes as ``None``; without
    ``HAS_TRACE`` the record's ``trace_id`` and ``span_id`` are ``None``.
    """
    data = _as_bytes(buf)
    try:
        return _decode_record(data)
    except CorruptRecord:
        raise
    except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as exc:
        raise _internal(exc) from None


def decode_resource(buf: bytes | bytearray | memoryview) -> Resource:
    """Decode a resource blob (a producer's lane metadata) from untrusted bytes.

    Raises ``CorruptRecord`` for any malformed input, ``TypeError`` for a non-bytes ``buf``.
    """
    data = _as_bytes(buf)
    end = len(data)
    try:
        if end < 2:
            raise _short("resource header", 0, 2, end)
        version, kind = _RES_HEAD.unpack_from(data, 0)
        if version != FORMAT_VERSION:
            raise CorruptRecord(f"unknown resource version {version} (this decoder reads 1)")
        if kind != RESOURCE:
            raise CorruptRecord(f"resource blob has kind {kind}, expected 5 (RESOURCE)")
        scope_name, pos = _str16(data, 2, end, "resource scope_name")
        scope_version, pos = _str16(data, pos, end, "resource scope_version")
        attributes, pos = _attrs(data, pos, end, "resource attributes")
        if pos != end:
            raise CorruptRecord(f"{end - pos} trailing bytes after the resource (at offset {pos})")
    except CorruptRecord:
        raise
    except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as exc:
        raise _internal(exc) from None
    return Resource(attributes=attributes, scope_name=scope_name, scope_version=scope_version)


def decode_attrs(buf: bytes | bytearray | memoryview) -> Attributes:
    """Decode a buffer that holds exactly one attrlist. Raises ``CorruptRecord``."""
    data = _as_bytes(buf)
    try:
        attrs, pos = _attrs(data, 0, len(data), "attributes")
    except CorruptRecord:
        raise
    except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as exc:
        raise _internal(exc) from None
    if pos != len(data):
        raise CorruptRecord(f"{len(data) - pos} trailing bytes after the attrlist")
    return attrs


# ---- encoding ------------------------------------------------------------------------


def _uint(value: object, bits: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {value} does not fit in an unsigned {bits}-bit field")
    return value


def _in_range(value: object, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be {low}..{high}, got {value}")
    return value


def _id_bytes(value: object, size: int, what: str, *, allow_zero: bool = False) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be {size} bytes, not {type(value).__name__}")
    b = bytes(value)
    if len(b) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(b)}")
    if not allow_zero and b == bytes(size):
        raise ValueError(f"{what} must not be all zero")
    return b


def _utf8(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    try:
        return value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} cannot be encoded as UTF-8 ({exc.reason})") from None


# The length prefix of a str8, str16 and str32, by its bits.
_pack_length = {8: struct.Struct("<B").pack, 16: _U16.pack, 32: _U32.pack}


def _put_str(out: bytearray, value: object, bits: int, what: str) -> None:
    """A str8, str16 or str32 (``bits`` of length prefix): ``value`` as UTF-8."""
    b = _utf8(value, what)
    n = len(b)
    if n >> bits:
        raise ValueError(
            f"{what} is {n} bytes of UTF-8, a str{bits} holds at most {(1 << bits) - 1}"
        )
    out += _pack_length[bits](n)
    out += b


def _put_count(out: bytearray, n: int, what: str) -> None:
    if n > 0xFFFF:
        raise ValueError(f"{what}: {n} entries, the format holds at most 65535")
    out += _U16.pack(n)


def _put_value(out: bytearray, value: object, what: str, in_array: bool) -> None:
    """A tagged attribute value. bool/int/float/str subclasses (IntEnum, numpy.float64)
    are stored as their base type; other types raise TypeError."""
    if value is None:
        out.append(T_NONE)
    elif isinstance(value, bool):
        out.append(T_BOOL)
        out.append(1 if value else 0)
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            out.append(T_INT)
            out += _I64.pack(value)
        else:  # the format keeps ints beyond 64 bits exactly, as decimal strings
            out.append(T_STR)
            _put_str(out, str(int(value)), 32, what)
    elif isinstance(value, float):
        out.append(T_DOUBLE)
        out += _F64.pack(value)
    elif isinstance(value, str):
        out.append(T_STR)
        _put_str(out, value, 32, what)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        if len(b) > 0xFFFFFFFF:
            raise ValueError(f"{what}: bytes value too long for a u32 length")
        out.append(T_BYTES)
        out += _U32.pack(len(b))
        out += b
    elif isinstance(value, (list, tuple)):
        if in_array:
            raise TypeError(f"{what}: arrays cannot be nested")
        out.append(T_ARRAY)
        _put_count(out, len(value), what)
        for j, item in enumerate(value):
            _put_value(out, item, f"{what}[{j}]", True)
    else:
        raise TypeError(
            f"{what}: cannot encode a value of type {type(value).__name__} "
            "(None, str, int, float, bool, bytes or a list of those)"
        )


def _put_attrs(out: bytearray, attrs: object, what: str) -> None:
    if not isinstance(attrs, Mapping):
        raise TypeError(f"{what} must be a dict, not {type(attrs).__name__}")
    _put_count(out, len(attrs), what)
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise TypeError(f"{what}: key {key!r} is not a str")
        _put_str(out, key, 16, f"{what} key {key!r}")
        _put_value(out, value, f"{what}[{key!r}]", False)


def _float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a float, not {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{what} {value} is too large for a float") from None


def _put_span(out: bytearray, rec: Record) -> None:
    _put_str(out, rec.name, 16, "span name")
    parent = rec.parent_span_id
    out += _ZERO8 if parent is None else _id_bytes(parent, 8, "parent_span_id", allow_zero=True)
    out += _U64.pack(_uint(rec.start_unix_nano, 64, "start_unix_nano"))
    out.append(_in_range(rec.status_code, 0, MAX_STATUS_CODE, "status_code"))
    out.append(_in_range(rec.span_kind, 0, MAX_SPAN_KIND, "span_kind"))
    out.append(_uint(rec.trace_flags, 8, "trace_flags"))
    _put_str(out, rec.status_message, 16, "status_message")
    _put_count(out, len(rec.events), "span events")
    for i, ev in enumerate(rec.events):
        if not isinstance(ev, SpanEvent):
            raise TypeError(f"span event {i} must be a SpanEvent, not {type(ev).__name__}")
        _put_str(out, ev.name, 16, f"span event {i} name")
        out += _U64.pack(_uint(ev.time_unix_nano, 64, f"span event {i} time_unix_nano"))
        _put_attrs(out, ev.attributes, f"span event {i} attributes")
    _put_count(out, len(rec.links), "span links")
    for i, ln in enumerate(rec.links):
        if not isinstance(ln, SpanLink):
            raise TypeError(f"span link {i} must be a SpanLink, not {type(ln).__name__}")
        out += _id_bytes(ln.trace_id, 16, f"span link {i} trace_id", allow_zero=True)
        out += _id_bytes(ln.span_id, 8, f"span link {i} span_id", allow_zero=True)
        _put_attrs(out, ln.attributes, f"span link {i} attributes")


def _put_metric(out: bytearray, rec: Record) -> None:
    instrument = _in_range(rec.instrument, COUNTER, HISTOGRAM, "instrument")
    out.append(instrument)
    _put_str(out, rec.name, 16, "metric name")
    _put_str(out, rec.unit, 8, "metric unit")
    _put_str(out, rec.description, 16, "metric description")
    if instrument != HISTOGRAM:
        value = rec.value
        if isinstance(value, bool):
            raise TypeError("metric value must be an int or a float, not bool")
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"metric value {value} does not fit in a signed 64-bit int")
            out.append(T_INT)
            out += _I64.pack(value)
        elif isinstance(value, float):
            out.append(T_DOUBLE)
            out += _F64.pack(value)
        else:
            raise TypeError(f"metric value must be an int or a float, not {type(value).__name__}")
        return
    values = [_float(v, "histogram value") for v in rec.values]
    if not 1 <= len(values) <= MAX_HISTOGRAM_VALUES:
        raise ValueError(
            f"a histogram record holds 1..{MAX_HISTOGRAM_VALUES} values, got {len(values)}"
        )
    out += _U32.pack(len(values))
    out += struct.pack(f"<{len(values)}d", *values)
    bounds = [_float(b, "histogram bound") for b in rec.bounds]
    for i, b in enumerate(bounds):
        if math.isnan(b) or (i and not bounds[i - 1] < b):
            raise ValueError("histogram bounds must be strictly increasing numbers (no NaN)")
    _put_count(out, len(bounds), "histogram bounds")
    out += struct.pack(f"<{len(bounds)}d", *bounds)


def encode_record(rec: Record) -> bytes:
    """Encode ``rec`` in the record format v1, exactly as given.

    Sets ``HAS_TRACE`` when ``trace_id``/``span_id`` are present (both or neither;
    required for a SPAN), ``HAS_TRACE_FLAGS`` when a record of another kind in a trace
    has ``trace_flags`` other than 1, and ``HAS_LIMITS`` when ``dropped_attributes`` or
    ``truncated_values`` is nonzero. Fields that do not apply to ``rec.kind`` are not
    encoded. Raises ``TypeError``/``ValueError`` for a record the format cannot hold.
    """
    if not isinstance(rec, Record):
        raise TypeError(f"expected a records.Record, not {type(rec).__name__}")
    kind = _in_range(rec.kind, LOG, METRIC, "record kind")
    t = _uint(rec.time_unix_nano, 64, "time_unix_nano")
    flags = 0
    ids = b""
    if rec.trace_id is not None or rec.span_id is not None:
        if rec.trace_id is None or rec.span_id is None:
            raise ValueError("trace_id and span_id go together: set both or neither")
        ids = _id_bytes(rec.trace_id, 16, "trace_id") + _id_bytes(rec.span_id, 8, "span_id")
        flags |= FLAG_HAS_TRACE
        if kind != SPAN and rec.trace_flags != 1:
            ids += bytes((_uint(rec.trace_flags, 8, "trace_flags"),))
            flags |= FLAG_HAS_TRACE_FLAGS
    elif kind == SPAN:
        raise ValueError("a SPAN record needs trace_id and span_id")
    elif rec.trace_flags != 1:
        raise ValueError("trace_flags other than 1 need trace_id and span_id")
    dropped = _uint(rec.dropped_attributes, 16, "dropped_attributes")
    truncated = _uint(rec.truncated_values, 16, "truncated_values")
    if dropped or truncated:
        flags |= FLAG_HAS_LIMITS
    out = bytearray(_HEAD.pack(FORMAT_VERSION, kind, flags, 0, t))
    out += ids
    if flags & FLAG_HAS_LIMITS:
        out += _LIMITS.pack(dropped, truncated)
    if kind == LOG:
        out.append(_in_range(rec.severity_number, 0, MAX_SEVERITY, "severity_number"))
        _put_str(out, rec.severity_text, 8, "severity_text")
        _put_str(out, rec.body, 32, "log body")
    elif kind == EVENT:
        _put_str(out, rec.name, 16, "event name")
    elif kind == SPAN:
        _put_span(out, rec)
    else:
        _put_metric(out, rec)
    _put_attrs(out, rec.context, "context")
    _put_attrs(out, rec.attributes, "attributes")
    return bytes(out)


def encode_resource(res: Resource) -> bytes:
    """Encode a resource blob (kind 5) for a producer's lane metadata.

    Raises ``TypeError``/``ValueError`` for a resource the format cannot hold.
    """
    if not isinstance(res, Resource):
        raise TypeError(f"expected a records.Resource, not {type(res).__name__}")
    out = bytearray(_RES_HEAD.pack(FORMAT_VERSION, RESOURCE))
    _put_str(out, res.scope_name, 16, "scope_name")
    _put_str(out, res.scope_version, 16, "scope_version")
    _put_attrs(out, res.attributes, "resource attributes")
    return bytes(out)


def encode_attrs(attrs: Mapping[str, AttrValue]) -> bytes:
    """Encode one attrlist (``u16 count`` and entries). Raises ``TypeError``/``ValueError``."""
    out = bytearray()
    _put_attrs(out, attrs, "attributes")
    return bytes(out)
