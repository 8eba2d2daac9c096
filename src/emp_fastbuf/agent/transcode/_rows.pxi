# The embedded store's rows from raw records: ``store_rows`` builds the row tuples of
# ``store.store_row`` straight from raw records. Attribute values become JSON as
# ``store._to_json`` writes them: the C ``json`` encoder with ensure_ascii, compact
# separators, ``float.__repr__`` for floats, bytes as hex (its ``default``) and, because
# ``_to_json`` retries through ``store._finite``, NaN and the infinities as the strings
# "NaN", "Infinity" and "-Infinity".

cdef extern from "floatfmt.h":
    int emp_fixed_repr(double d, char *out) noexcept

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(object op)
    # Declared here without ``except NULL``: the JSON writers below run as noexcept code
    # and turn a failure into their buffer's ``oom`` flag.
    char *double_to_string "PyOS_double_to_string" (
        double val, char format_code, int precision, int flags, int *ptype)


cdef enum:
    ROW_LOG = 0
    ROW_EVENT = 1
    ROW_SPAN = 2
    ROW_METRIC = 3
    ROW_DECLINE = -1

cdef const char *HEXDIGITS = b"0123456789abcdef"


# store.MAX_TIME_UNIX_NANO: SQLite integers are signed 64-bit, so a later time (the year
# 2262 on) is stored as this one, as ``store.store_row`` does.
cdef uint64_t MAX_TIME = 9223372036854775807ULL


cdef inline uint64_t row_time(uint64_t t) noexcept:
    return t if t <= MAX_TIME else MAX_TIME


cdef void json_str(Buf *b, const uint8_t *s, Py_ssize_t n) noexcept:
    """A JSON string as ``json.encoder.encode_basestring_ascii`` writes it, from ``n``
    bytes of UTF-8 that ``utf8_ok`` has accepted."""
    cdef uint8_t *o
    cdef Py_ssize_t i = 0
    cdef uint32_t c, hi, lo
    # At most 6 output bytes per input byte: \\u00XX for a control byte, 12 for the four
    # bytes of an astral character, 6 for a two- or three-byte sequence.
    if not ensure(b, <size_t>n * 6 + 2):
        return
    o = b.data + b.len
    o[0] = 34  # "
    o += 1
    while i < n:
        c = s[i]
        if 0x20 <= c <= 0x7E and c != 34 and c != 92:
            o[0] = <uint8_t>c
            o += 1
            i += 1
            continue
        if c < 0x80:
            o[0] = 92  # backslash
            if c == 34 or c == 92:
                o[1] = <uint8_t>c
                o += 2
            elif c == 10:
                o[1] = 110  # n
                o += 2
            elif c == 13:
                o[1] = 114  # r
                o += 2
            elif c == 9:
                o[1] = 116  # t
                o += 2
            elif c == 8:
                o[1] = 98  # b
                o += 2
            elif c == 12:
                o[1] = 102  # f
                o += 2
            else:
                o[1] = 117  # u
                o[2] = 48
                o[3] = 48
                o[4] = HEXDIGITS[c >> 4]
                o[5] = HEXDIGITS[c & 0xF]
                o += 6
            i += 1
            continue
        # A validated multi-byte sequence; the length checks only guard against misuse.
        if c < 0xE0:
            if i + 2 > n:
                break
            c = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F)
            i += 2
        elif c < 0xF0:
            if i + 3 > n:
                break
            c = ((c & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
            i += 3
        else:
            if i + 4 > n:
                break
            c = (((c & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6)
                 | (s[i + 3] & 0x3F))
            i += 4
        if c >= 0x10000:  # a UTF-16 surrogate pair
            hi = 0xD800 | ((c - 0x10000) >> 10)
            lo = 0xDC00 | ((c - 0x10000) & 0x3FF)
            o[0] = 92
            o[1] = 117
            o[2] = HEXDIGITS[(hi >> 12) & 0xF]
            o[3] = HEXDIGITS[(hi >> 8) & 0xF]
            o[4] = HEXDIGITS[(hi >> 4) & 0xF]
            o[5] = HEXDIGITS[hi & 0xF]
            o += 6
            c = lo
        o[0] = 92
        o[1] = 117
        o[2] = HEXDIGITS[(c >> 12) & 0xF]
        o[3] = HEXDIGITS[(c >> 8) & 0xF]
        o[4] = HEXDIGITS[(c >> 4) & 0xF]
        o[5] = HEXDIGITS[c & 0xF]
        o += 6
    o[0] = 34
    o += 1
    b.len = o - b.data


cdef void json_hex(Buf *b, const uint8_t *p, Py_ssize_t n) noexcept:
    """``bytes.hex()`` as a JSON string."""
    cdef uint8_t *o
    cdef Py_ssize_t i
    if not ensure(b, <size_t>n * 2 + 2):
        return
    o = b.data + b.len
    o[0] = 34
    for i in range(n):
        o[1 + 2 * i] = HEXDIGITS[p[i] >> 4]
        o[2 + 2 * i] = HEXDIGITS[p[i] & 0xF]
    o[1 + 2 * n] = 34
    b.len += <size_t>n * 2 + 2


cdef void json_u64(Buf *b, uint64_t v, bint negative) noexcept:
    cdef uint8_t tmp[21]
    cdef int i = 21
    while True:
        i -= 1
        tmp[i] = <uint8_t>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    if negative:
        i -= 1
        tmp[i] = 45  # -
    put_raw(b, tmp + i, 21 - i)


cdef inline void json_i64(Buf *b, int64_t v) noexcept:
    if v < 0:
        json_u64(b, <uint64_t>0 - <uint64_t>v, True)
    else:
        json_u64(b, <uint64_t>v, False)


cdef void json_f64(Buf *b, double d) noexcept:
    cdef char *r
    cdef int k
    if not isfinite(d):
        if d != d:
            put_raw(b, b'"NaN"', 5)
        elif d > 0:
            put_raw(b, b'"Infinity"', 10)
        else:
            put_raw(b, b'"-Infinity"', 11)
        return
    if d == 0.0:
        if signbit(d):
            put_raw(b, b"-0.0", 4)
        else:
            put_raw(b, b"0.0", 3)
        return
    if ensure(b, 48):
        k = emp_fixed_repr(d, <char *>b.data + b.len)
        if k:
            b.len += k
            return
    r = double_to_string(d, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)  # float.__repr__
    if r == NULL:
        PyErr_Clear()
        b.oom = True
        return
    put_raw(b, r, strlen(r))
    PyMem_Free(r)


cdef void json_value(Buf *b, int tag, const uint8_t *val, Py_ssize_t vlen) noexcept:
    cdef Py_ssize_t j
    cdef const uint8_t *q
    cdef const uint8_t *ev
    cdef Py_ssize_t elen
    cdef int etag
    if tag == T_STR:
        json_str(b, val, vlen)
    elif tag == T_INT:
        json_i64(b, <int64_t>rd64(val))
    elif tag == T_DOUBLE:
        json_f64(b, rdf64(val))
    elif tag == T_BOOL:
        if vlen:
            put_raw(b, b"true", 4)
        else:
            put_raw(b, b"false", 5)
    elif tag == T_BYTES:
        json_hex(b, val, vlen)
    elif tag == T_ARRAY:
        put1(b, 91)  # [
        q = val
        for j in range(vlen):
            if j:
                put1(b, 44)  # ,
            q = elem(q, &etag, &ev, &elen)
            json_value(b, etag, ev, elen)
        put1(b, 93)  # ]
    else:
        put_raw(b, b"null", 4)


cdef void json_object(Buf *b, const EntList *l) noexcept:
    cdef Py_ssize_t i
    cdef const Ent *e
    put1(b, 123)  # {
    for i in range(l.n):
        e = &l.items[i]
        if i:
            put1(b, 44)
        json_str(b, e.key, e.klen)
        put1(b, 58)  # :
        json_value(b, e.tag, e.val, e.vlen)
    put1(b, 125)  # }


cdef str take_ascii(Buf *b):
    """The buffer's content (ASCII) as a str; empties the buffer for the next one."""
    cdef str out
    if b.oom:
        raise MemoryError()
    out = PyUnicode_New(b.len, 127)
    memcpy(PyUnicode_1BYTE_DATA(out), b.data, b.len)
    b.len = 0
    return out


cdef str hex_str(const uint8_t *p, Py_ssize_t n):
    """``bytes.hex()``."""
    cdef str out = PyUnicode_New(2 * n, 127)
    cdef Py_UCS1 *o = PyUnicode_1BYTE_DATA(out)
    cdef Py_ssize_t i
    for i in range(n):
        o[2 * i] = HEXDIGITS[p[i] >> 4]
        o[2 * i + 1] = HEXDIGITS[p[i] & 0xF]
    return out


cdef inline object opt_bytes(const uint8_t *p, Py_ssize_t n):
    return None if p == NULL else PyBytes_FromStringAndSize(<const char *>p, n)


cdef class _Rows(_Parser):
    """The parsing state and small caches of one ``store_rows`` call."""
    cdef Buf js  # JSON is written here

    def __dealloc__(self):
        free(self.js.data)
        self.js.data = NULL

    cdef object job(self):
        """``store._job_and_attributes``'s job: the context's ``job_id`` as text."""
        cdef Py_ssize_t i = ent_find(&self.st.ctx, <const uint8_t *>JOB_ID, 6)
        cdef const Ent *e
        if i < 0:
            return None
        e = &self.st.ctx.items[i]
        if e.tag == T_STR:
            return self.cached(S_JOB, e.val, e.vlen)
        if e.tag == T_NONE:
            return None
        if e.tag == T_BYTES:
            return hex_str(e.val, e.vlen)
        return str(py_scalar(e.tag, e.val, e.vlen))  # int, float, bool, list: str(value)

    cdef object attributes(self):
        """The JSON object of the context (less ``job_id``) updated with the record's own
        attributes, as the dict ``store._job_and_attributes`` builds; None when empty."""
        cdef State *s = &self.st
        cdef const EntList *attrs = &s.own
        cdef const Ent *e
        cdef Py_ssize_t i
        if s.ctx.n > 1 or (s.ctx.n == 1 and not is_job_id(s.ctx.items[0].key,
                                                          s.ctx.items[0].klen)):
            ent_reset(&s.merged)
            for i in range(s.ctx.n):
                e = &s.ctx.items[i]
                if is_job_id(e.key, e.klen):
                    continue
                if ent_put(&s.merged, e.key, e.klen, e.tag, e.val, e.vlen) != R_OK:
                    raise MemoryError()
            for i in range(s.own.n):
                e = &s.own.items[i]
                if ent_put(&s.merged, e.key, e.klen, e.tag, e.val, e.vlen) != R_OK:
                    raise MemoryError()
            attrs = &s.merged
        if attrs.n == 0:
            return None
        self.js.len = 0
        json_object(&self.js, attrs)
        return take_ascii(&self.js)

    cdef inline bint accepted(self, int r) except -1:
        """A parser's result: True for R_OK, False for R_BAD (the record is declined);
        R_NOMEM raises."""
        if r == R_NOMEM:
            raise MemoryError()
        return r == R_OK

    cdef tuple log(self, const uint8_t *p, Py_ssize_t n, const Head *h):
        cdef LogFields f
        if not self.accepted(parse_log(p, n, h, &self.st, &f)):
            return None
        job = self.job()
        return (
            row_time(h.time), job, PyUnicode_DecodeUTF8(<const char *>f.body, f.bl, NULL), f.sev,
            self.cached(S_TEXT, f.text, f.tl) if f.tl else None,
            opt_bytes(h.trace, 16), opt_bytes(h.trace + 16 if h.trace else NULL, 8),
            self.attributes(),
        )

    cdef tuple event(self, const uint8_t *p, Py_ssize_t n, const Head *h):
        cdef LogFields f
        if not self.accepted(parse_log(p, n, h, &self.st, &f)):
            return None
        job = self.job()
        return (
            row_time(h.time), job, self.cached(S_NAME, f.name, f.nl),
            opt_bytes(h.trace, 16), opt_bytes(h.trace + 16 if h.trace else NULL, 8),
            self.attributes(),
        )

    cdef tuple span(self, const uint8_t *p, Py_ssize_t n, const Head *h):
        """Validated completely first (``parse_span``); the events and links are then
        read a second time to write their JSON."""
        cdef State *s = &self.st
        cdef Buf *b = &self.js
        cdef SpanFields f
        cdef Py_ssize_t q, i, el = 0
        cdef const uint8_t *ev_name = NULL
        if not self.accepted(parse_span(p, n, h, s, &f)):
            return None
        job = self.job()
        attrs = self.attributes()
        events = links = None
        if f.n_events:
            b.len = 0
            put1(b, 91)
            q = f.ev_pos
            for i in range(f.n_events):
                if i:
                    put1(b, 44)
                q = str16(p, q, n, &ev_name, &el)
                put_raw(b, b'{"name":', 8)
                json_str(b, ev_name, el)
                put_raw(b, b',"time_unix_nano":', 18)
                json_u64(b, row_time(rd64(p + q)), False)
                put_raw(b, b',"attributes":', 14)
                q = parse_attrs(p, q + 8, n, &s.tmp)
                if q < 0 or redact_tmp(s) != R_OK:
                    raise MemoryError()  # validated by parse_span: only memory can fail here
                json_object(b, &s.tmp)
                put1(b, 125)
            put1(b, 93)
            events = take_ascii(b)
        if f.n_links:
            b.len = 0
            put1(b, 91)
            q = f.ln_pos
            for i in range(f.n_links):
                if i:
                    put1(b, 44)
                put_raw(b, b'{"trace_id":', 12)
                json_hex(b, p + q, 16)
                put_raw(b, b',"span_id":', 11)
                json_hex(b, p + q + 16, 8)
                put_raw(b, b',"attributes":', 14)
                q = parse_attrs(p, q + 24, n, &s.tmp)
                if q < 0 or redact_tmp(s) != R_OK:
                    raise MemoryError()
                json_object(b, &s.tmp)
                put1(b, 125)
            put1(b, 93)
            links = take_ascii(b)
        return (
            row_time(h.time), job, self.cached(S_NAME, f.name, f.nl),
            PyBytes_FromStringAndSize(<const char *>h.trace, 16),
            PyBytes_FromStringAndSize(<const char *>h.trace + 16, 8),
            None if all_zero(f.parent, 8)
            else PyBytes_FromStringAndSize(<const char *>f.parent, 8),
            row_time(f.start), f.status,
            PyUnicode_DecodeUTF8(<const char *>f.msg, f.ml, NULL) if f.ml else None,
            f.kind, attrs, events, links,
        )

    cdef tuple metric(self, const uint8_t *p, Py_ssize_t n, const Head *h):
        cdef MetricFields f
        cdef Py_ssize_t i, kept
        cdef double d, lo = 0.0, hi = 0.0
        cdef Buf *b = &self.js
        if not self.accepted(parse_metric(p, n, h, &self.st, &f)):
            return None
        job = self.job()
        if f.instrument != I_HISTOGRAM:
            return (
                row_time(h.time), job, self.cached(S_NAME, f.name, f.nl), f.instrument,
                self.cached(S_UNIT, f.unit, f.ul),
                <int64_t>rd64(f.vals) if f.tag == T_INT else rdf64(f.vals),
                None, None, None, None, None, None, self.attributes(),
            )
        # store._metric_row: NaN values are dropped; min/max as Python's (the first of
        # equal values wins, so 0.0 and -0.0 keep their order); the sum is records.value_sum's.
        values = []
        b.len = 0
        kept = 0
        for i in range(f.count):
            d = rdf64(f.vals + 8 * i)
            if d != d:
                continue
            if kept == 0:
                lo = hi = d
            elif d < lo:
                lo = d
            elif d > hi:
                hi = d
            values.append(d)
            put_raw(b, f.vals + 8 * i, 8)  # the record's f64 is little-endian, as the blob
            kept += 1
        if b.oom:
            raise MemoryError()
        blob = PyBytes_FromStringAndSize(<const char *>b.data, b.len)
        total = _value_sum(values) if kept else 0.0
        bounds_json = None
        if f.nb:
            b.len = 0
            put1(b, 91)
            for i in range(f.nb):
                if i:
                    put1(b, 44)
                json_f64(b, rdf64(f.bounds + 8 * i))
            put1(b, 93)
            bounds_json = take_ascii(b)
        return (
            row_time(h.time), job, self.cached(S_NAME, f.name, f.nl), f.instrument,
            self.cached(S_UNIT, f.unit, f.ul), None, kept, total, lo if kept else None,
            hi if kept else None, blob, bounds_json, self.attributes(),
        )

    cdef tuple row(self, const uint8_t *p, Py_ssize_t n, int *which):
        """The row of one record and its table (``which``); None to decline it."""
        cdef Head h
        which[0] = ROW_DECLINE
        if not parse_head(p, n, &h):
            return None
        if p[1] == K_LOG:
            out = self.log(p, n, &h)
            which[0] = ROW_LOG
        elif p[1] == K_EVENT:
            out = self.event(p, n, &h)
            which[0] = ROW_EVENT
        elif p[1] == K_SPAN:
            out = self.span(p, n, &h)
            which[0] = ROW_SPAN
        else:
            out = self.metric(p, n, &h)
            which[0] = ROW_METRIC
        if out is None:
            which[0] = ROW_DECLINE
        else:
            # Ints, floats, str, bytes and None only: the row can never be part of a
            # reference cycle, so the collector need not scan it (as it would conclude on
            # its first pass, after visiting every row of the batch).
            PyObject_GC_UnTrack(out)
        return out


def store_rows(records, redactor=None):
    """The embedded store's rows for the raw records of one chunk, built natively.

    Returns ``(logs, events, spans, metrics, declined)``: four lists of row tuples, each
    equal to ``store.store_row(reference.decode_record(raw))[1]`` (types included) and in
    input order, and the records not handled here (the same objects, in input order),
    which the caller decodes in Python. Declined: every record ``reference.decode_record``
    rejects (malformed, invalid UTF-8, unknown version, kind, tag or flag bits) and a
    bytearray or memoryview element whose buffer cannot be read in place (not contiguous,
    or released).

    ``records`` is a list, a tuple or another iterable of ``bytes`` (``bytearray`` and
    ``memoryview`` are read too); anything else raises ``TypeError``. With a ``Redactor``,
    the secrets of attributes and log bodies are replaced (and counted there); the
    declined records are not: their caller redacts what it decodes.
    """
    cdef list logs = []
    cdef list events = []
    cdef list spans = []
    cdef list metrics = []
    cdef list declined = []
    cdef _Rows rows = _Rows()
    rows.use(redactor)
    cdef Py_buffer view
    cdef int which = ROW_DECLINE
    cdef tuple out
    if type(records) is list or type(records) is tuple:
        seq = records
    elif isinstance(records, (bytes, bytearray, memoryview, str)):
        raise TypeError(
            f"store_rows expects a list of records, not a single {type(records).__name__}")
    else:
        try:
            seq = list(records)
        except TypeError:
            raise TypeError(
                f"store_rows expects a list of records (bytes), not {type(records).__name__}"
            ) from None
    for raw in seq:
        if PyBytes_Check(raw):
            out = rows.row(<const uint8_t *>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw),
                           &which)
        elif isinstance(raw, (bytearray, memoryview)):
            try:
                PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
            except (BufferError, ValueError):  # not contiguous, or released
                declined.append(raw)
                continue
            try:
                out = rows.row(<const uint8_t *>view.buf, view.len, &which)
            finally:
                PyBuffer_Release(&view)
        else:
            raise TypeError(
                f"records must be bytes, bytearray or memoryview, not {type(raw).__name__}")
        if which == ROW_LOG:
            logs.append(out)
        elif which == ROW_EVENT:
            events.append(out)
        elif which == ROW_SPAN:
            spans.append(out)
        elif which == ROW_METRIC:
            metrics.append(out)
        else:
            declined.append(raw)
    return logs, events, spans, metrics, declined
