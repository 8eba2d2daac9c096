# cython: language_level=3
"""OTLP ``ExportLogsServiceRequest`` protobuf bytes -> ring-format LOG and EVENT records
(docs/record-format.md), natively: the receiver's hot path. The meaning is that of
``agent.receiver.convert.convert_logs`` (tests/agent/test_receiver_convert.py compares the
two on the same requests); what this parser does not handle itself (a body that is not a
string, a kvlist or nested-array attribute, an event name on a log with a body) it hands
back as the record's own protobuf bytes, for the Python path.

The body is untrusted: every length is checked against what is left, a wire type the
messages cannot hold is malformed (``ValueError``), and strings must be valid UTF-8.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

from emp_fastbuf.records._format cimport (
    F_HAS_LIMITS,
    F_HAS_TRACE,
    F_HAS_TRACE_FLAGS,
    FORMAT_VERSION,
    K_EVENT,
    K_LOG,
    MAX_SEVERITY,
    T_ARRAY,
    T_BOOL,
    T_BYTES,
    T_DOUBLE,
    T_INT,
    T_NONE,
    T_STR,
)

# Results of one record's encoding.
cdef enum:
    OK = 0
    FALLBACK = 1
    BAD_SEVERITY = 2
    BAD_ID = 3


cdef struct Buf:
    char* p
    size_t n
    size_t cap


cdef int grow(Buf* b, size_t extra) except -1:
    cdef size_t cap
    cdef char* p
    if b.n + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.n + extra:
        cap *= 2
    p = <char*>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int put(Buf* b, const void* data, size_t n) except -1:
    grow(b, n)
    memcpy(b.p + b.n, data, n)
    b.n += n
    return 0


cdef inline int put_u8(Buf* b, uint8_t v) except -1:
    grow(b, 1)
    b.p[b.n] = <char>v
    b.n += 1
    return 0


cdef inline int put_le(Buf* b, uint64_t v, int width) except -1:
    cdef int i
    grow(b, width)
    for i in range(width):
        b.p[b.n + i] = <char>((v >> (8 * i)) & 0xFF)
    b.n += width
    return 0


cdef struct Reader:
    const uint8_t* d
    size_t pos
    size_t end


cdef inline int varint(Reader* r, uint64_t* out) except -1:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t c
    while True:
        if r.pos >= r.end or shift > 63:
            raise ValueError("truncated or overlong varint")
        c = r.d[r.pos]
        r.pos += 1
        v |= (<uint64_t>(c & 0x7F)) << shift
        if c < 0x80:
            out[0] = v
            return 0
        shift += 7


cdef inline uint64_t le(const uint8_t* p, int width):
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v |= (<uint64_t>p[i]) << (8 * i)
    return v


cdef int field(Reader* r, uint32_t* number, uint32_t* wire, size_t* start,
               size_t* length) except -1:
    """Read one field; for LEN fields ``start``/``length`` span the payload, for the
    others the value's bytes (a varint's value goes to ``length``)."""
    cdef uint64_t tag, v
    varint(r, &tag)
    number[0] = <uint32_t>(tag >> 3)
    wire[0] = <uint32_t>(tag & 7)
    if tag >> 3 == 0 or tag >> 3 > 0x1FFFFFFF:
        raise ValueError("invalid field number")
    if wire[0] == 0:
        varint(r, &v)
        length[0] = <size_t>v
        start[0] = r.pos
    elif wire[0] == 1:
        if r.end - r.pos < 8:
            raise ValueError("truncated fixed64")
        start[0] = r.pos
        length[0] = 8
        r.pos += 8
    elif wire[0] == 5:
        if r.end - r.pos < 4:
            raise ValueError("truncated fixed32")
        start[0] = r.pos
        length[0] = 4
        r.pos += 4
    elif wire[0] == 2:
        varint(r, &v)
        if v > r.end - r.pos:
            raise ValueError("length-delimited field runs past its message")
        start[0] = r.pos
        length[0] = <size_t>v
        r.pos += <size_t>v
    else:
        raise ValueError(f"unsupported wire type {wire[0]}")
    return 0


cdef int utf8_ok(const uint8_t* s, size_t n):
    cdef size_t i = 0
    cdef uint8_t c
    cdef uint32_t cp
    cdef int k, j
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c >= 0xC2 and c <= 0xDF:
            k = 1
            cp = c & 0x1F
        elif c >= 0xE0 and c <= 0xEF:
            k = 2
            cp = c & 0x0F
        elif c >= 0xF0 and c <= 0xF4:
            k = 3
            cp = c & 0x07
        else:
            return 0
        if n - i <= <size_t>k:
            return 0
        for j in range(1, k + 1):
            if (s[i + j] & 0xC0) != 0x80:
                return 0
            cp = (cp << 6) | (s[i + j] & 0x3F)
        if (k == 2 and (cp < 0x800 or (cp >= 0xD800 and cp <= 0xDFFF))) or \
                (k == 3 and (cp < 0x10000 or cp > 0x10FFFF)):
            return 0
        i += k + 1
    return 1


cdef size_t cut_utf8(const uint8_t* s, size_t n, size_t limit):
    """The longest prefix of at most ``limit`` bytes that ends at a character boundary."""
    if n <= limit:
        return n
    while limit > 0 and (s[limit] & 0xC0) == 0x80:
        limit -= 1
    return limit


cdef int check_utf8(const uint8_t* s, size_t n) except -1:
    if not utf8_ok(s, n):
        raise ValueError("a string field is not valid UTF-8")
    return 0


cdef int scalar(Buf* b, const uint8_t* d, size_t start, size_t length, bint in_array) except -1:
    """Encode one AnyValue (``d[start:start+length]``) as tag + value; FALLBACK when the
    format cannot hold it as is (kvlist, nested array)."""
    cdef Reader r
    cdef uint32_t number, wire, last = 0
    cdef size_t s, n, vs = 0, vn = 0
    r.d = d
    r.pos = start
    r.end = start + length
    while r.pos < r.end:
        field(&r, &number, &wire, &s, &n)
        if number >= 1 and number <= 7:
            if (number in (1, 5, 6, 7) and wire != 2) or (number in (2, 3) and wire != 0) \
                    or (number == 4 and wire != 1):
                raise ValueError("AnyValue field of the wrong wire type")
            last = number
            vs = s
            vn = n
    if last == 0:
        put_u8(b, T_NONE)
    elif last == 1:
        check_utf8(d + vs, vn)
        put_u8(b, T_STR)
        put_le(b, vn, 4)
        put(b, d + vs, vn)
    elif last == 2:
        put_u8(b, T_BOOL)
        put_u8(b, 1 if vn else 0)
    elif last == 3:
        put_u8(b, T_INT)
        put_le(b, <uint64_t>vn, 8)
    elif last == 4:
        put_u8(b, T_DOUBLE)
        put(b, d + vs, 8)
    elif last == 7:
        put_u8(b, T_BYTES)
        put_le(b, vn, 4)
        put(b, d + vs, vn)
    elif last == 5 and not in_array:
        return array(b, d, vs, vn)
    else:
        return FALLBACK
    return OK


cdef int array(Buf* b, const uint8_t* d, size_t start, size_t length) except -1:
    cdef Reader r
    cdef uint32_t number, wire, count = 0
    cdef size_t s, n, at
    put_u8(b, T_ARRAY)
    at = b.n
    put_le(b, 0, 2)
    r.d = d
    r.pos = start
    r.end = start + length
    while r.pos < r.end:
        field(&r, &number, &wire, &s, &n)
        if number == 1:
            if wire != 2:
                raise ValueError("ArrayValue field of the wrong wire type")
            if count == 0xFFFF:
                return FALLBACK
            if scalar(b, d, s, n, True) != OK:
                return FALLBACK
            count += 1
    b.p[at] = <char>(count & 0xFF)
    b.p[at + 1] = <char>(count >> 8)
    return OK


cdef int attributes(Buf* b, const uint8_t* d, size_t start, size_t length,
                    uint32_t count) except -1:
    """The attrlist of a record's ``attributes`` (field 6 of ``d[start:start+length]``)."""
    cdef Reader r, kr
    cdef uint32_t number, wire, kn, kw
    cdef size_t s, n, ks, kl, key_s, key_n, val_s, val_n, key_cut
    cdef bint has_value
    put_le(b, count, 2)
    r.d = d
    r.pos = start
    r.end = start + length
    while r.pos < r.end:
        field(&r, &number, &wire, &s, &n)
        if number != 6:
            continue
        kr.d = d
        kr.pos = s
        kr.end = s + n
        key_s = key_n = val_s = val_n = 0
        has_value = False
        while kr.pos < kr.end:
            field(&kr, &kn, &kw, &ks, &kl)
            if kn == 1:
                if kw != 2:
                    raise ValueError("KeyValue.key of the wrong wire type")
                key_s = ks
                key_n = kl
            elif kn == 2:
                if kw != 2:
                    raise ValueError("KeyValue.value of the wrong wire type")
                val_s = ks
                val_n = kl
                has_value = True
        check_utf8(d + key_s, key_n)
        key_cut = cut_utf8(d + key_s, key_n, 0xFFFF)
        if key_cut != key_n:
            return FALLBACK
        put_le(b, key_n, 2)
        put(b, d + key_s, key_n)
        if has_value:
            if scalar(b, d, val_s, val_n, False) != OK:
                return FALLBACK
        else:
            put_u8(b, T_NONE)
    return OK


cdef int log_record(Buf* out, Buf* body, const uint8_t* d, size_t start, size_t length,
                    uint64_t now) except -1:
    """One LogRecord -> one ring record in ``out`` (cleared first)."""
    cdef Reader r
    cdef uint32_t number, wire, n_attrs = 0
    cdef size_t s, n
    cdef uint64_t time_ns = 0, observed = 0, severity = 0, dropped = 0, flags = 0
    cdef size_t text_s = 0, text_n = 0, body_s = 0, body_n = 0, trace_s = 0, trace_n = 0
    cdef size_t span_s = 0, span_n = 0, name_s = 0, name_n = 0
    cdef bint has_body = False, has_trace = False
    cdef uint8_t kind, rflags = 0
    cdef uint64_t cut = 0
    cdef Reader br
    cdef uint32_t bn, bw, body_field = 0
    cdef size_t bs, bl, bv_s = 0, bv_n = 0
    cdef int i
    r.d = d
    r.pos = start
    r.end = start + length
    while r.pos < r.end:
        field(&r, &number, &wire, &s, &n)
        if number == 1 and wire == 1:
            time_ns = le(d + s, 8)
        elif number == 11 and wire == 1:
            observed = le(d + s, 8)
        elif number == 2 and wire == 0:
            severity = <uint64_t>n
        elif number == 3 and wire == 2:
            text_s = s
            text_n = n
        elif number == 5 and wire == 2:
            has_body = True
            body_s = s
            body_n = n
        elif number == 6 and wire == 2:
            n_attrs += 1
        elif number == 7 and wire == 0:
            dropped = <uint64_t>n
        elif number == 8 and wire == 5:
            flags = le(d + s, 4)
        elif number == 9 and wire == 2:
            trace_s = s
            trace_n = n
        elif number == 10 and wire == 2:
            span_s = s
            span_n = n
        elif number == 12 and wire == 2:
            name_s = s
            name_n = n
        elif number in (1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12):
            raise ValueError(f"LogRecord field {number} of the wrong wire type")
    if severity > MAX_SEVERITY:
        return BAD_SEVERITY
    if (trace_n != 0 and trace_n != 16) or (span_n != 0 and span_n != 8):
        return BAD_ID
    if n_attrs > 0xFFFF:
        return FALLBACK
    check_utf8(d + text_s, text_n)
    check_utf8(d + name_s, name_n)
    if has_body:
        # The body AnyValue: a string (or nothing) is handled here, anything else not.
        br.d = d
        br.pos = body_s
        br.end = body_s + body_n
        while br.pos < br.end:
            field(&br, &bn, &bw, &bs, &bl)
            if bn >= 1 and bn <= 7:
                body_field = bn
                bv_s = bs
                bv_n = bl
                if bn == 1 and bw != 2:
                    raise ValueError("AnyValue.string_value of the wrong wire type")
        if body_field == 0:
            has_body = False
        elif body_field != 1:
            return FALLBACK
        else:
            check_utf8(d + bv_s, bv_n)
    if trace_n == 16 and span_n == 8:
        has_trace = False
        for i in range(16):
            if d[trace_s + i]:
                has_trace = True
                break
        if has_trace:
            has_trace = False
            for i in range(8):
                if d[span_s + i]:
                    has_trace = True
                    break
    body.n = 0
    if name_n and not has_body and severity == 0 and text_n == 0:
        kind = K_EVENT
        if name_n > 0xFFFF:
            return FALLBACK
        put_le(body, name_n, 2)
        put(body, d + name_s, name_n)
    elif name_n:
        return FALLBACK  # an event name on a log: kept as an attribute, by the Python path
    else:
        kind = K_LOG
        put_u8(body, <uint8_t>severity)
        n = cut_utf8(d + text_s, text_n, 0xFF)
        if n != text_n:
            cut += 1
        put_u8(body, <uint8_t>n)
        put(body, d + text_s, n)
        put_le(body, bv_n if has_body else 0, 4)
        if has_body:
            put(body, d + bv_s, bv_n)
    put_le(body, 0, 2)  # context: none for a received record
    if attributes(body, d, start, length, n_attrs) != OK:
        return FALLBACK
    out.n = 0
    if has_trace:
        rflags |= F_HAS_TRACE
        if (flags & 0xFF) != 1:
            rflags |= F_HAS_TRACE_FLAGS
    if dropped or cut:
        rflags |= F_HAS_LIMITS
    put_u8(out, FORMAT_VERSION)
    put_u8(out, kind)
    put_u8(out, rflags)
    put_u8(out, 0)
    put_le(out, time_ns or observed or now, 8)
    if has_trace:
        put(out, d + trace_s, 16)
        put(out, d + span_s, 8)
        if rflags & F_HAS_TRACE_FLAGS:
            put_u8(out, <uint8_t>(flags & 0xFF))
    if rflags & F_HAS_LIMITS:
        put_le(out, dropped if dropped < 0xFFFF else 0xFFFF, 2)
        put_le(out, cut, 2)
    put(out, body.p, body.n)
    return OK


def decode_logs(bytes data not None, uint64_t now):
    """Parse an ``ExportLogsServiceRequest``.

    Returns ``(groups, bad_severity, bad_ids)``: ``groups`` is a list of
    ``(resource_bytes, scope_bytes, records)`` per ScopeLogs, where each record is its
    ring-format bytes or, for the Python path, a 1-tuple of the LogRecord's protobuf
    bytes. Raises ``ValueError`` for a malformed body."""
    cdef const uint8_t* d = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef Reader top, rl, sl
    cdef uint32_t number, wire, n2, w2, n3, w3
    cdef size_t s, n, s2, l2, s3, l3, res_s, res_n, scope_s, scope_n
    cdef Buf out, body
    cdef int rc
    cdef Py_ssize_t bad_severity = 0, bad_ids = 0
    cdef list groups = []
    cdef list records
    out.p = NULL
    out.n = out.cap = 0
    body.p = NULL
    body.n = body.cap = 0
    top.d = d
    top.pos = 0
    top.end = <size_t>PyBytes_GET_SIZE(data)
    try:
        while top.pos < top.end:
            field(&top, &number, &wire, &s, &n)
            if number != 1:
                continue
            if wire != 2:
                raise ValueError("resource_logs of the wrong wire type")
            # ResourceLogs: the resource first, wherever it is, then each ScopeLogs.
            rl.d = d
            rl.pos = s
            rl.end = s + n
            res_s = res_n = 0
            while rl.pos < rl.end:
                field(&rl, &n2, &w2, &s2, &l2)
                if n2 == 1 and w2 == 2:
                    res_s = s2
                    res_n = l2
                elif n2 in (1, 2) and w2 != 2:
                    raise ValueError("ResourceLogs field of the wrong wire type")
            rl.pos = s
            while rl.pos < rl.end:
                field(&rl, &n2, &w2, &s2, &l2)
                if n2 != 2:
                    continue
                sl.d = d
                sl.pos = s2
                sl.end = s2 + l2
                scope_s = scope_n = 0
                while sl.pos < sl.end:
                    field(&sl, &n3, &w3, &s3, &l3)
                    if n3 == 1 and w3 == 2:
                        scope_s = s3
                        scope_n = l3
                    elif n3 in (1, 2) and w3 != 2:
                        raise ValueError("ScopeLogs field of the wrong wire type")
                records = []
                sl.pos = s2
                while sl.pos < sl.end:
                    field(&sl, &n3, &w3, &s3, &l3)
                    if n3 != 2:
                        continue
                    rc = log_record(&out, &body, d, s3, l3, now)
                    if rc == OK:
                        records.append(PyBytes_FromStringAndSize(out.p, out.n))
                    elif rc == FALLBACK:
                        records.append((data[s3 : s3 + l3],))
                    elif rc == BAD_SEVERITY:
                        bad_severity += 1
                    else:
                        bad_ids += 1
                groups.append((data[res_s : res_s + res_n],
                               data[scope_s : scope_s + scope_n], records))
    finally:
        free(out.p)
        free(body.p)
    return groups, bad_severity, bad_ids
