# OTLP requests from raw records: LOG and EVENT records as ``LogRecord``s, SPAN records as
# ``Span``s, grouped by resource and scope into ``ExportLogsServiceRequest`` /
# ``ExportTraceServiceRequest`` bodies and split under a size cap (``logs_requests``,
# ``spans_requests``).

DEFAULT_MAX_BYTES = 64 << 20

# {"emp.resource_corrupt": True} as an attrlist: what a bad resource blob becomes.
cdef bytes CORRUPT_ATTRS = b"\x01\x00\x14\x00emp.resource_corrupt\x04\x01"
cdef bytes DEFAULT_SCOPE_NAME = b"emp_fastbuf"


# ---- AnyValue / KeyValue ------------------------------------------------------------
# Field numbers (opentelemetry/proto/common/v1/common.proto): AnyValue string_value 1,
# bool_value 2, int_value 3, double_value 4, array_value 5, bytes_value 7; ArrayValue
# values 1; KeyValue key 1, value 2. A oneof member is always written, even when it holds
# the default value, as the generated classes do.

cdef size_t value_size(int tag, const uint8_t *val, Py_ssize_t vlen) noexcept:
    """Encoded size of the AnyValue (its content, without its own framing)."""
    cdef size_t inner, es
    cdef Py_ssize_t _j
    cdef const uint8_t *q
    cdef const uint8_t *ev
    cdef Py_ssize_t elen
    cdef int etag
    if tag == T_STR or tag == T_BYTES:
        return 1 + varint_len(vlen) + vlen
    if tag == T_INT:
        return 1 + varint_len(rd64(val))
    if tag == T_DOUBLE:
        return 9
    if tag == T_BOOL:
        return 2
    if tag == T_ARRAY:
        inner = 0
        q = val
        for _j in range(vlen):
            q = elem(q, &etag, &ev, &elen)
            es = value_size(etag, ev, elen)
            inner += 1 + varint_len(es) + es
        return 1 + varint_len(inner) + inner
    return 0  # None: an empty AnyValue


cdef void put_value(Buf *b, int tag, const uint8_t *val, Py_ssize_t vlen) noexcept:
    """The AnyValue content."""
    if tag == T_STR:
        put_bytes_field(b, 0x0A, val, vlen)
    elif tag == T_BYTES:
        put_bytes_field(b, 0x3A, val, vlen)
    elif tag == T_INT:
        put1(b, 0x18)
        put_varint(b, rd64(val))
    elif tag == T_DOUBLE:
        put1(b, 0x21)
        put_raw(b, val, 8)  # the record's f64 is little-endian IEEE 754, as protobuf's
    elif tag == T_BOOL:
        put1(b, 0x10)
        put1(b, <uint8_t>vlen)
    elif tag == T_ARRAY:
        put1(b, 0x2A)
        put_array(b, val, vlen)


cdef void put_array(Buf *b, const uint8_t *val, Py_ssize_t n) noexcept:
    """An ArrayValue's length and content (elements already validated)."""
    cdef size_t inner = 0
    cdef size_t es
    cdef Py_ssize_t _j
    cdef const uint8_t *q = val
    cdef const uint8_t *ev
    cdef Py_ssize_t elen
    cdef int etag
    for _j in range(n):
        q = elem(q, &etag, &ev, &elen)
        es = value_size(etag, ev, elen)
        inner += 1 + varint_len(es) + es
    put_varint(b, inner)
    q = val
    for _j in range(n):
        q = elem(q, &etag, &ev, &elen)
        put1(b, 0x0A)
        put_varint(b, value_size(etag, ev, elen))
        put_value(b, etag, ev, elen)


cdef void put_kv(Buf *b, uint8_t field_tag, const uint8_t *key, Py_ssize_t klen,
                 const Ent *e) noexcept:
    """One framed KeyValue of the repeated field ``field_tag``."""
    cdef size_t av = value_size(e.tag, e.val, e.vlen)
    cdef size_t kv = 1 + varint_len(klen) + klen + 1 + varint_len(av) + av
    put1(b, field_tag)
    put_varint(b, kv)
    put_bytes_field(b, 0x0A, key, klen)
    put1(b, 0x12)
    put_varint(b, av)
    put_value(b, e.tag, e.val, e.vlen)


cdef inline void put_list(Buf *b, uint8_t field_tag, const EntList *l) noexcept:
    cdef Py_ssize_t i
    for i in range(l.n):
        put_kv(b, field_tag, l.items[i].key, l.items[i].klen, &l.items[i])


cdef int put_record_attrs(Buf *b, uint8_t field_tag, State *s) noexcept:
    """Context attributes first (``job_id`` -> ``emp.job_id``), then the record's own,
    which win on a conflict: what ``otlp._AttrEncoder.encode`` writes."""
    cdef Py_ssize_t i, kl
    cdef const Ent *e
    cdef const uint8_t *k
    if s.ctx.n == 0:
        put_list(b, field_tag, &s.own)
        return R_OK
    if (ent_find(&s.ctx, <const uint8_t *>JOB_ID, 6) >= 0
            and ent_find(&s.ctx, <const uint8_t *>EMP_JOB_ID, 10) >= 0):
        # Both spellings in the context: the dict merge of ``record_attributes`` decides.
        if merge_record_attrs(s) != R_OK:
            return R_NOMEM
        put_list(b, field_tag, &s.merged)
        return R_OK
    for i in range(s.ctx.n):
        e = &s.ctx.items[i]
        k = e.key
        kl = e.klen
        if is_job_id(k, kl):
            k = <const uint8_t *>EMP_JOB_ID
            kl = 10
        if ent_find(&s.own, k, kl) >= 0:
            continue
        put_kv(b, field_tag, k, kl, e)
    put_list(b, field_tag, &s.own)
    return R_OK


# ---- writing LogRecord and Span -----------------------------------------------------
cdef int encode_log(Buf *b, State *s, const uint8_t *p, Py_ssize_t n) noexcept:
    """One LOG or EVENT record -> a framed ``LogRecord`` (ScopeLogs.log_records, field 2).
    Nothing is written unless the whole record is valid."""
    cdef Head h
    cdef LogFields f
    cdef size_t mark
    cdef int r
    if not parse_head(p, n, &h):
        return R_BAD
    r = parse_log(p, n, &h, s, &f)
    if r != R_OK:
        return r
    # LogRecord fields (opentelemetry/proto/logs/v1/logs.proto), in field-number order.
    put1(b, 0x12)
    mark = begin(b)
    if h.time:
        put1(b, 0x09)
        put_fixed64(b, h.time)
    if p[1] == K_LOG:
        if f.sev:
            put1(b, 0x10)
            put1(b, f.sev)
        if f.tl:
            put_bytes_field(b, 0x1A, f.text, f.tl)
        put1(b, 0x2A)  # body: an AnyValue holding the string, even an empty one
        put_varint(b, 1 + varint_len(f.bl) + f.bl)
        put_bytes_field(b, 0x0A, f.body, f.bl)
    if s.ctx.n or s.own.n:
        if put_record_attrs(b, 0x32, s) != R_OK:
            return R_NOMEM
    if h.dropped:
        put1(b, 0x38)
        put_varint(b, h.dropped)
    if h.trace != NULL:
        if h.flags:
            put1(b, 0x45)  # flags, fixed32: the W3C trace flags in the low byte
            put1(b, h.flags)
            put1(b, 0)
            put1(b, 0)
            put1(b, 0)
        put_bytes_field(b, 0x4A, h.trace, 16)
        put_bytes_field(b, 0x52, h.trace + 16, 8)
    if s.observed:
        put1(b, 0x59)
        put_fixed64(b, s.observed)
    if f.nl:
        put_bytes_field(b, 0x62, f.name, f.nl)
    finish(b, mark)
    return R_NOMEM if b.oom else R_OK


cdef int encode_span(Buf *b, State *s, const uint8_t *p, Py_ssize_t n) noexcept:
    """One SPAN record -> a framed ``Span`` (ScopeSpans.spans, field 2). The record is
    validated completely first; events and links are then read a second time to write
    them after the attributes (field-number order)."""
    cdef Head h
    cdef SpanFields f
    cdef Py_ssize_t q, _i, el = 0
    cdef const uint8_t *ev_name = NULL
    cdef const uint8_t *ids
    cdef uint64_t t
    cdef size_t mark, sub
    cdef int r
    if n < 2 or p[1] != K_SPAN or not parse_head(p, n, &h):
        return R_BAD
    r = parse_span(p, n, &h, s, &f)
    if r != R_OK:
        return r
    # Span fields (opentelemetry/proto/trace/v1/trace.proto), in field-number order.
    put1(b, 0x12)
    mark = begin(b)
    put_bytes_field(b, 0x0A, h.trace, 16)
    put_bytes_field(b, 0x12, h.trace + 16, 8)
    if not all_zero(f.parent, 8):  # all zero: a root span, no parent_span_id
        put_bytes_field(b, 0x22, f.parent, 8)
    if f.nl:
        put_bytes_field(b, 0x2A, f.name, f.nl)
    if f.kind:
        put1(b, 0x30)
        put1(b, f.kind)
    if f.start:
        put1(b, 0x39)
        put_fixed64(b, f.start)
    if h.time:
        put1(b, 0x41)
        put_fixed64(b, h.time)
    if s.ctx.n or s.own.n:
        if put_record_attrs(b, 0x4A, s) != R_OK:
            return R_NOMEM
    if h.dropped:
        put1(b, 0x50)
        put_varint(b, h.dropped)
    q = f.ev_pos
    for _i in range(f.n_events):
        q = str16(p, q, n, &ev_name, &el)
        t = rd64(p + q)
        q = parse_attrs(p, q + 8, n, &s.tmp)
        if q < 0 or redact_tmp(s) != R_OK:
            return R_NOMEM  # validated by parse_span: only memory can fail here
        put1(b, 0x5A)
        sub = begin(b)
        if t:
            put1(b, 0x09)
            put_fixed64(b, t)
        if el:
            put_bytes_field(b, 0x12, ev_name, el)
        put_list(b, 0x1A, &s.tmp)
        finish(b, sub)
    q = f.ln_pos
    for _i in range(f.n_links):
        ids = p + q
        q = parse_attrs(p, q + 24, n, &s.tmp)
        if q < 0 or redact_tmp(s) != R_OK:
            return R_NOMEM
        put1(b, 0x6A)
        sub = begin(b)
        put_bytes_field(b, 0x0A, ids, 16)  # all-zero link ids are kept, as bytes
        put_bytes_field(b, 0x12, ids + 16, 8)
        put_list(b, 0x22, &s.tmp)
        finish(b, sub)
    if f.status or f.ml:
        put1(b, 0x7A)
        sub = begin(b)
        if f.ml:
            put_bytes_field(b, 0x12, f.msg, f.ml)
        if f.status:
            put1(b, 0x18)
            put1(b, f.status)
        finish(b, sub)
    if f.flags:
        put1(b, 0x85)  # field 16, fixed32: a two-byte tag
        put1(b, 0x01)
        put1(b, f.flags)
        put1(b, 0)
        put1(b, 0)
        put1(b, 0)
    finish(b, mark)
    return R_NOMEM if b.oom else R_OK


# ---- resources ----------------------------------------------------------------------
cdef void put_canon(Buf *b, int tag, const uint8_t *val, Py_ssize_t vlen) noexcept:
    """A value as ``otlp.freeze_attributes`` compares it: type-aware, NaN equal to NaN,
    -0.0 equal to 0.0."""
    cdef uint64_t bits
    cdef double d
    cdef Py_ssize_t _j
    cdef const uint8_t *q
    cdef const uint8_t *ev
    cdef Py_ssize_t elen
    cdef int etag
    put1(b, <uint8_t>tag)
    if tag == T_STR or tag == T_BYTES:
        put_varint(b, vlen)
        put_raw(b, val, vlen)
    elif tag == T_INT:
        put_raw(b, val, 8)
    elif tag == T_DOUBLE:
        bits = rd64(val)
        memcpy(&d, &bits, 8)
        if d != d:
            bits = 0x7FF8000000000000ULL
        elif d == 0.0:
            bits = 0
        put_fixed64(b, bits)
    elif tag == T_BOOL:
        put1(b, <uint8_t>vlen)
    elif tag == T_ARRAY:
        put_varint(b, vlen)
        q = val
        for _j in range(vlen):
            q = elem(q, &etag, &ev, &elen)
            put_canon(b, etag, ev, elen)


cdef bytes scope_header(bytes name, bytes version):
    """InstrumentationScope name (1) and version (2); empty strings are not written."""
    cdef bytes out = b""
    if name:
        out += b"\x0a" + pyvarint(len(name)) + name
    if version:
        out += b"\x12" + pyvarint(len(version)) + version
    return out


# ---- grouping and the request -------------------------------------------------------
cdef class _Scope:
    """The encoded items (LogRecords or Spans) of one (resource, scope)."""
    cdef Buf buf
    cdef bytes header
    cdef _Slot slot
    cdef Py_ssize_t count

    def __dealloc__(self):
        free(self.buf.data)
        self.buf.data = NULL


cdef class _Slot:
    """One ResourceLogs/ResourceSpans: the serialized Resource and its scopes in
    first-record order."""
    cdef bytes header
    cdef list scopes
    cdef Py_ssize_t count


cdef class _Builder:
    cdef State st
    cdef bint spans
    cdef dict by_meta     # resource blob -> _Scope
    cdef dict slots       # frozen resource attributes -> _Slot
    cdef dict scopes      # (frozen attributes, scope name, scope version) -> _Scope
    cdef list order       # _Slot in first-record order
    cdef Py_ssize_t encoded
    cdef Py_ssize_t rejected
    cdef Redactor redactor  # holds ``st.rules``

    def __cinit__(self, bint spans, uint64_t observed, Redactor redactor):
        self.spans = spans
        self.st.observed = observed
        self.redactor = redactor
        self.st.rules = NULL if redactor is None else redactor.rules()
        self.by_meta = {}
        self.slots = {}
        self.scopes = {}
        self.order = []

    def __dealloc__(self):
        state_free(&self.st)

    cdef _Scope scope_for(self, bytes meta):
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(meta)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(meta)
        cdef const uint8_t *np = NULL
        cdef const uint8_t *vp = NULL
        cdef Py_ssize_t nl = 0, vl = 0, r, i
        cdef Buf tmp
        cdef EntList *attrs = &self.st.tmp
        cdef bytes name = DEFAULT_SCOPE_NAME
        cdef bytes version = b""
        cdef _Slot slot
        cdef _Scope sc
        if n == 0:
            ent_reset(attrs)  # no blob: an empty resource (decode_batch's Resource())
        else:
            r = parse_resource(p, n, &np, &nl, &vp, &vl, attrs)
            if r == -2:
                raise MemoryError()
            if r >= 0:
                name = PyBytes_FromStringAndSize(<const char *>np, nl)
                version = PyBytes_FromStringAndSize(<const char *>vp, vl)
            elif parse_attrs(<const uint8_t *>PyBytes_AS_STRING(CORRUPT_ATTRS), 0,
                             PyBytes_GET_SIZE(CORRUPT_ATTRS), attrs) < 0:
                raise MemoryError()
        if redact_tmp(&self.st) != R_OK:
            raise MemoryError()
        pairs = []
        for i in range(attrs.n):
            tmp = Buf(NULL, 0, 0, False, False)
            put_canon(&tmp, attrs.items[i].tag, attrs.items[i].val, attrs.items[i].vlen)
            pairs.append((PyBytes_FromStringAndSize(<const char *>attrs.items[i].key,
                                                    attrs.items[i].klen), take(&tmp)))
        frozen = tuple(sorted(pairs))
        slot = self.slots.get(frozen)
        if slot is None:
            tmp = Buf(NULL, 0, 0, False, False)
            put_list(&tmp, 0x0A, attrs)  # Resource.attributes, field 1
            slot = _Slot()
            slot.header = take(&tmp)
            slot.scopes = []
            self.slots[frozen] = slot
        key = (frozen, name, version)
        sc = self.scopes.get(key)
        if sc is None:
            sc = _Scope()
            sc.header = scope_header(name, version)
            sc.slot = slot
            self.scopes[key] = sc
        self.by_meta[meta] = sc
        return sc

    cdef feed(self, chunks):
        cdef _Scope sc
        cdef const uint8_t *p
        cdef Py_ssize_t n
        cdef int kind, r
        for chunk in chunks:
            if type(chunk) is tuple:
                if len(<tuple>chunk) != 2:
                    raise TypeError("a chunk is a (meta, records) pair")
                meta, records = <tuple>chunk
            else:
                try:
                    meta = chunk.meta
                    records = chunk.records
                except AttributeError:
                    raise TypeError(
                        f"a chunk is a (meta, records) pair or a LaneChunk, "
                        f"not {type(chunk).__name__}") from None
            if not PyBytes_Check(meta):
                raise TypeError(f"chunk meta must be bytes, not {type(meta).__name__}")
            sc = self.by_meta.get(meta)
            if sc is None:
                sc = self.scope_for(meta)
            for raw in records:
                if not PyBytes_Check(raw):
                    raise TypeError(f"records must be bytes, not {type(raw).__name__}")
                p = <const uint8_t *>PyBytes_AS_STRING(raw)
                n = PyBytes_GET_SIZE(raw)
                kind = p[1] if n >= 2 else 0
                if self.spans:
                    if kind != K_SPAN:
                        continue
                    r = encode_span(&sc.buf, &self.st, p, n)
                elif kind == K_LOG or kind == K_EVENT:
                    r = encode_log(&sc.buf, &self.st, p, n)
                elif kind == K_SPAN or kind == K_METRIC:
                    continue
                else:
                    self.rejected += 1  # no signal's record: counted here, once
                    continue
                if r == R_OK:
                    self.encoded += 1
                    sc.count += 1
                    if sc.count == 1:
                        if sc.slot.count == 0:
                            self.order.append(sc.slot)
                        sc.slot.count += 1
                        sc.slot.scopes.append(sc)
                elif r == R_BAD:
                    self.rejected += 1
                else:
                    raise MemoryError()

    cdef bytes serialize(self, list parts):
        """One request from ``parts``: (slot, scope, start, stop) ranges of encoded items,
        in order; consecutive parts of one slot share its ResourceLogs/ResourceSpans."""
        cdef list groups = []
        cdef list sizes = []
        cdef size_t total = 0, inner, start, stop
        cdef _Slot slot
        cdef _Scope sc
        cdef Buf b
        cdef bytes out
        cdef list members = None
        cdef object last = None
        for part in parts:
            if part[0] is not last:
                last = part[0]
                members = []
                groups.append((last, members))
            members.append(part)
        for slot, members in groups:
            inner = framed(len(slot.header))
            for _slot, sc, start, stop in members:
                inner += framed(framed(len(sc.header)) + stop - start)
            sizes.append(inner)
            total += framed(inner)
        out = PyBytes_FromStringAndSize(NULL, total)
        b = Buf(<uint8_t *>PyBytes_AS_STRING(out), 0, total, False, True)
        for i, (slot, members) in enumerate(groups):
            put1(&b, 0x0A)  # resource_logs / resource_spans
            put_varint(&b, <size_t>sizes[i])
            put_bytes_field(&b, 0x0A, <const uint8_t *>PyBytes_AS_STRING(slot.header),
                            len(slot.header))
            for _slot, sc, start, stop in members:
                put1(&b, 0x12)  # scope_logs / scope_spans
                put_varint(&b, framed(len(sc.header)) + stop - start)
                put_bytes_field(&b, 0x0A, <const uint8_t *>PyBytes_AS_STRING(sc.header),
                                len(sc.header))
                put_raw(&b, sc.buf.data + start, stop - start)
        if b.oom or b.len != total:
            raise SystemError("transcode: request size mismatch")
        return out

    cdef list payloads(self, Py_ssize_t max_bytes):
        """The serialized requests; with ``max_bytes`` > 0, split like
        ``otlp._split``: items in order, each request's estimated size (never an
        undercount) at most ``max_bytes`` unless one item alone is larger."""
        cdef list full = []
        cdef list parts = []
        cdef list out = []
        cdef _Slot slot
        cdef _Scope sc
        cdef object cur_slot = None
        cdef object cur_scope = None
        cdef size_t total = 0, pos, item, res_cost, scope_cost, cost, chunk_size = 0
        cdef size_t part_start
        cdef bint part_open
        cdef Py_ssize_t chunk_items = 0
        cdef uint64_t ln
        cdef int shift
        cdef const uint8_t *d
        for slot in self.order:
            inner = framed(len(slot.header))
            for sc in slot.scopes:
                full.append((slot, sc, 0, sc.buf.len))
                inner += framed(framed(len(sc.header)) + sc.buf.len)
            total += framed(inner)
        if not full:
            return out
        if max_bytes <= 0 or total <= <size_t>max_bytes:
            out.append(self.serialize(full))
            return out
        for slot in self.order:
            res_cost = 5 + framed(len(slot.header))  # the frame bound of otlp._FRAME (6)
            for sc in slot.scopes:
                scope_cost = 5 + framed(len(sc.header))
                d = sc.buf.data
                pos = 0
                part_open = False
                part_start = 0
                while pos < sc.buf.len:
                    # an item: tag byte, varint length, content
                    ln = 0
                    shift = 0
                    item = 1
                    while True:
                        ln |= <uint64_t>(d[pos + item] & 0x7F) << shift
                        shift += 7
                        item += 1
                        if not (d[pos + item - 1] & 0x80):
                            break
                    item += ln
                    cost = item
                    if cur_scope is not sc:
                        cost += scope_cost
                        if cur_slot is not slot:
                            cost += res_cost
                    if chunk_items and chunk_size + cost > <size_t>max_bytes:
                        if part_open:
                            parts.append((slot, sc, part_start, pos))
                        out.append(self.serialize(parts))
                        parts = []
                        chunk_items = 0
                        chunk_size = 0
                        cur_slot = cur_scope = None
                        part_open = False
                        cost = item + scope_cost + res_cost
                    if cur_slot is not slot:
                        cur_slot = slot
                        cur_scope = None
                    if cur_scope is not sc:
                        cur_scope = sc
                    if not part_open:
                        part_open = True
                        part_start = pos
                    chunk_items += 1
                    chunk_size += cost
                    pos += item
                if part_open:
                    parts.append((slot, sc, part_start, pos))
        if chunk_items:
            out.append(self.serialize(parts))
        return out


cdef uint64_t check_observed(object observed) except? 0:
    if type(observed) is not int:
        raise TypeError(
            f"observed_time_unix_nano must be an int, not {type(observed).__name__}")
    if not 0 <= observed < (1 << 64):
        raise ValueError(f"observed_time_unix_nano {observed} is not a u64")
    return observed


cdef Py_ssize_t check_max_bytes(object max_bytes) except -1:
    if type(max_bytes) is not int or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    return min(max_bytes, 1 << 62)


cdef tuple run(object chunks, bint spans, uint64_t observed, Py_ssize_t max_bytes,
               object redactor):
    cdef _Builder builder = _Builder(spans, observed, checked_redactor(redactor))
    builder.feed(chunks)
    return builder.payloads(max_bytes), builder.encoded, builder.rejected


def logs_request(chunks, observed_time_unix_nano, redactor=None):
    """Serialized ``ExportLogsServiceRequest`` for the LOG and EVENT records of
    ``chunks`` (``(meta, records)`` pairs or ``LaneChunk``s), straight from the raw bytes.

    Returns ``(payload, records_encoded, records_rejected)``; ``payload`` is ``b""`` when
    no record was encoded (send nothing). ``records_rejected`` counts malformed LOG/EVENT
    records and records of no known kind (shorter than 2 bytes, kind byte not 1..4);
    SPAN and METRIC records are skipped without being checked. No size cap: see
    ``logs_requests``. With a ``Redactor``, secrets are replaced (and counted there) in
    the attributes of records and resources and in log bodies.
    """
    payloads, encoded, rejected = run(chunks, False, check_observed(observed_time_unix_nano),
                                      0, redactor)
    return (payloads[0] if payloads else b""), encoded, rejected


def logs_requests(chunks, observed_time_unix_nano, max_bytes=DEFAULT_MAX_BYTES,
                  redactor=None):
    """Like ``logs_request``, split as ``otlp.iter_logs_requests`` splits: a list of
    request bodies, each at most ``max_bytes`` unless one record alone is larger."""
    cdef Py_ssize_t cap = check_max_bytes(max_bytes)
    return run(chunks, False, check_observed(observed_time_unix_nano), cap, redactor)


def spans_request(chunks, redactor=None):
    """Serialized ``ExportTraceServiceRequest`` for the SPAN records of ``chunks``.

    Returns ``(payload, records_encoded, records_rejected)``; ``payload`` is ``b""`` when
    no span was encoded. ``records_rejected`` counts malformed SPAN records only (see
    ``logs_request`` for the others, and for ``redactor``). No size cap: see
    ``spans_requests``.
    """
    payloads, encoded, rejected = run(chunks, True, 0, 0, redactor)
    return (payloads[0] if payloads else b""), encoded, rejected


def spans_requests(chunks, max_bytes=DEFAULT_MAX_BYTES, redactor=None):
    """Like ``spans_request``, split as ``otlp.iter_traces_requests`` splits."""
    cdef Py_ssize_t cap = check_max_bytes(max_bytes)
    return run(chunks, True, 0, cap, redactor)
