# The parser of untrusted records (docs/record-format.md): bounds-checked little-endian
# readers, strict UTF-8, attribute lists, the record header and the LOG, EVENT and SPAN
# bodies, resource blobs, and validated values as Python objects. Nothing here writes
# output; the parsers accept and reject exactly what ``reference.decode_record`` does.
# The METRIC body has its parser in _metrics.pxi.

# Result codes of the C-level helpers.
cdef enum:
    R_OK = 1
    R_BAD = 0
    R_NOMEM = -1

cdef const char *JOB_ID = b"job_id"
cdef const char *EMP_JOB_ID = b"emp.job_id"

# Attribute lists longer than this get a hash index for key lookups (dedup, merge).
cdef enum:
    HASH_MIN = 16


# ---- reading (little-endian, unaligned) ---------------------------------------------
cdef inline uint16_t rd16(const uint8_t *p) noexcept:
    return <uint16_t>(p[0] | (<uint16_t>p[1] << 8))


cdef inline uint32_t rd32(const uint8_t *p) noexcept:
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint64_t rd64(const uint8_t *p) noexcept:
    return <uint64_t>rd32(p) | (<uint64_t>rd32(p + 4) << 32)


cdef inline bint all_zero(const uint8_t *p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef bint utf8_ok(const uint8_t *s, Py_ssize_t n) noexcept:
    """Strict UTF-8, as Python's decoder: no overlongs, surrogates or code points past
    U+10FFFF, no truncated sequences."""
    cdef Py_ssize_t i = 0
    cdef uint64_t w
    cdef uint8_t c, c1
    while i < n:
        while i + 8 <= n:
            memcpy(&w, s + i, 8)
            if w & 0x8080808080808080ULL:
                break
            i += 8
        if i >= n:
            break
        c = s[i]
        if c < 0x80:
            i += 1
        elif c < 0xC2:
            return False
        elif c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
        elif c < 0xF0:
            if i + 2 >= n:
                return False
            c1 = s[i + 1]
            if c == 0xE0:
                if c1 < 0xA0 or c1 > 0xBF:
                    return False
            elif c == 0xED:
                if c1 < 0x80 or c1 > 0x9F:
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (s[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
        elif c < 0xF5:
            if i + 3 >= n:
                return False
            c1 = s[i + 1]
            if c == 0xF0:
                if c1 < 0x90 or c1 > 0xBF:
                    return False
            elif c == 0xF4:
                if c1 < 0x80 or c1 > 0x8F:
                    return False
            elif (c1 & 0xC0) != 0x80:
                return False
            if (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
                return False
            i += 4
        else:
            return False
    return True


cdef inline double rdf64(const uint8_t *p) noexcept:
    cdef uint64_t bits = rd64(p)
    cdef double d
    memcpy(&d, &bits, 8)
    return d


# ---- attribute lists ----------------------------------------------------------------
# An attrlist is parsed into entries that point into the record's bytes. Entries are kept
# with dict semantics: a repeated key keeps its first position and its last value.
ctypedef struct Ent:
    const uint8_t *key
    Py_ssize_t klen
    const uint8_t *val   # str/bytes: the data; int/double: the 8 bytes; array: element 0
    Py_ssize_t vlen      # str/bytes: length; bool: 0 or 1; array: element count
    int tag


ctypedef struct EntList:
    Ent *items
    Py_ssize_t n
    Py_ssize_t cap
    int32_t *table       # open addressing, slot = index + 1, 0 = empty
    Py_ssize_t tsize     # a power of two; the table is in use when hashed
    bint hashed


cdef inline uint64_t key_hash(const uint8_t *k, Py_ssize_t n) noexcept:
    cdef uint64_t h = 1469598103934665603ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ k[i]) * 1099511628211ULL
    return h ^ (h >> 29)


cdef inline bint key_eq(const Ent *e, const uint8_t *k, Py_ssize_t n) noexcept:
    return e.klen == n and memcmp(e.key, k, n) == 0


cdef Py_ssize_t ent_find(const EntList *l, const uint8_t *k, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    cdef size_t mask, h
    if not l.hashed:
        for i in range(l.n):
            if key_eq(&l.items[i], k, n):
                return i
        return -1
    mask = l.tsize - 1
    h = key_hash(k, n) & mask
    while l.table[h]:
        i = l.table[h] - 1
        if key_eq(&l.items[i], k, n):
            return i
        h = (h + 1) & mask
    return -1


cdef int ent_rehash(EntList *l) noexcept:
    cdef Py_ssize_t size = 64
    cdef Py_ssize_t i
    cdef size_t h, mask
    while size < 4 * l.n:
        size *= 2
    if size > l.tsize:
        free(l.table)
        l.table = <int32_t *>calloc(size, sizeof(int32_t))
        if l.table == NULL:
            l.tsize = 0
            l.hashed = False
            return R_NOMEM
        l.tsize = size
    else:
        size = l.tsize
        for i in range(size):
            l.table[i] = 0
    mask = size - 1
    for i in range(l.n):
        h = key_hash(l.items[i].key, l.items[i].klen) & mask
        while l.table[h]:
            h = (h + 1) & mask
        l.table[h] = <int32_t>(i + 1)
    l.hashed = True
    return R_OK


cdef inline void ent_reset(EntList *l) noexcept:
    l.n = 0
    l.hashed = False


cdef int ent_put(EntList *l, const uint8_t *k, Py_ssize_t klen, int tag,
                 const uint8_t *val, Py_ssize_t vlen) noexcept:
    """Insert with dict semantics (an existing key keeps its place, takes the value)."""
    cdef Py_ssize_t i = ent_find(l, k, klen)
    cdef Ent *items
    cdef Py_ssize_t cap
    cdef size_t h, mask
    if i < 0:
        if l.n == l.cap:
            cap = l.cap * 2 if l.cap else 32
            items = <Ent *>realloc(l.items, cap * sizeof(Ent))
            if items == NULL:
                return R_NOMEM
            l.items = items
            l.cap = cap
        i = l.n
        l.n += 1
        l.items[i].key = k
        l.items[i].klen = klen
        if l.hashed and 2 * l.n <= l.tsize:
            mask = l.tsize - 1
            h = key_hash(k, klen) & mask
            while l.table[h]:
                h = (h + 1) & mask
            l.table[h] = <int32_t>(i + 1)
        elif l.n > HASH_MIN:
            if ent_rehash(l) != R_OK:
                return R_NOMEM
    l.items[i].tag = tag
    l.items[i].val = val
    l.items[i].vlen = vlen
    return R_OK


cdef void ent_free(EntList *l) noexcept:
    free(l.items)
    free(l.table)
    l.items = NULL
    l.table = NULL
    l.n = l.cap = l.tsize = 0
    l.hashed = False


cdef Py_ssize_t scalar_end(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end, int tag,
                           Py_ssize_t *vlen) noexcept:
    """Validate the value of scalar ``tag`` at ``pos``; its end, or -1 if malformed."""
    cdef Py_ssize_t n
    if tag == T_STR or tag == T_BYTES:
        if pos + 4 > end:
            return -1
        n = rd32(p + pos)
        pos += 4
        if n > end - pos:
            return -1
        if tag == T_STR and not utf8_ok(p + pos, n):
            return -1
        vlen[0] = n
        return pos + n
    if tag == T_INT or tag == T_DOUBLE:
        vlen[0] = 8
        return pos + 8 if pos + 8 <= end else -1
    if tag == T_BOOL:
        if pos >= end or p[pos] > 1:
            return -1
        vlen[0] = p[pos]
        return pos + 1
    if tag == T_NONE:
        vlen[0] = 0
        return pos
    return -1  # nested array or unknown tag


cdef Py_ssize_t parse_attrs(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end,
                            EntList *out) noexcept:
    """Parse the attrlist at ``pos`` into ``out``: the offset after it, -1 if malformed,
    -2 when out of memory."""
    cdef Py_ssize_t count, _i, _j, klen, n, vlen, stop
    cdef const uint8_t *key
    cdef const uint8_t *val
    cdef int tag
    ent_reset(out)
    if pos + 2 > end:
        return -1
    count = rd16(p + pos)
    pos += 2
    for _i in range(count):
        if pos + 2 > end:
            return -1
        klen = rd16(p + pos)
        pos += 2
        if pos + klen >= end:  # the key and its tag byte
            return -1
        key = p + pos
        if not utf8_ok(key, klen):
            return -1
        pos += klen
        tag = p[pos]
        pos += 1
        if tag == T_ARRAY:
            if pos + 2 > end:
                return -1
            n = rd16(p + pos)
            pos += 2
            val = p + pos
            for _j in range(n):
                if pos >= end:
                    return -1
                pos = scalar_end(p, pos + 1, end, p[pos], &vlen)
                if pos < 0:
                    return -1
            vlen = n
        else:
            stop = scalar_end(p, pos, end, tag, &vlen)
            if stop < 0:
                return -1
            val = p + pos + (4 if tag == T_STR or tag == T_BYTES else 0)
            pos = stop
        if ent_put(out, key, klen, tag, val, vlen) != R_OK:
            return -2
    return pos


# Array elements are walked again after validation (to write them, to make them Python
# values): ``elem`` steps over one without checks.
cdef inline const uint8_t *elem(const uint8_t *q, int *tag, const uint8_t **val,
                                Py_ssize_t *vlen) noexcept:
    """One validated array element at ``q``: its tag and value; returns the next one."""
    tag[0] = q[0]
    q += 1
    if tag[0] == T_STR or tag[0] == T_BYTES:
        vlen[0] = rd32(q)
        val[0] = q + 4
        return q + 4 + vlen[0]
    val[0] = q
    if tag[0] == T_INT or tag[0] == T_DOUBLE:
        vlen[0] = 8
        return q + 8
    if tag[0] == T_BOOL:
        vlen[0] = q[0]
        return q + 1
    vlen[0] = 0
    return q


# ---- records ------------------------------------------------------------------------
ctypedef struct State:
    EntList ctx
    EntList own
    EntList merged
    EntList tmp
    uint64_t observed
    Rules *rules   # redaction (_redact.pxi); NULL: none
    Buf sc_rec     # the rewritten values of ``ctx`` and ``own``
    Buf sc_body    # the rewritten log body
    Buf sc_tmp     # the rewritten values of ``tmp``


cdef void state_free(State *s) noexcept:
    ent_free(&s.ctx)
    ent_free(&s.own)
    ent_free(&s.merged)
    ent_free(&s.tmp)
    free(s.sc_rec.data)
    free(s.sc_body.data)
    free(s.sc_tmp.data)
    s.sc_rec.data = s.sc_body.data = s.sc_tmp.data = NULL


ctypedef struct Head:
    uint64_t time
    const uint8_t *trace  # trace_id then span_id; NULL without HAS_TRACE
    uint8_t flags  # W3C trace flags of a record in a trace (HAS_TRACE_FLAGS, else 1)
    uint32_t dropped
    Py_ssize_t pos


cdef bint parse_head(const uint8_t *p, Py_ssize_t n, Head *h) noexcept:
    cdef Py_ssize_t pos = 12
    if n < 12 or p[0] != FORMAT_VERSION or p[1] < K_LOG or p[1] > K_METRIC:
        return False
    if (p[2] & ~F_KNOWN) or p[3]:
        return False
    h.time = rd64(p + 4)
    h.trace = NULL
    h.flags = 1
    h.dropped = 0
    if p[2] & F_HAS_TRACE:
        if pos + 24 > n or all_zero(p + pos, 16) or all_zero(p + pos + 16, 8):
            return False
        h.trace = p + pos
        pos += 24
    if p[2] & F_HAS_TRACE_FLAGS:
        # Only in a trace, and never on a SPAN (its body carries the flags).
        if h.trace == NULL or p[1] == K_SPAN or pos + 1 > n:
            return False
        h.flags = p[pos]
        pos += 1
    if p[2] & F_HAS_LIMITS:
        if pos + 4 > n:
            return False
        h.dropped = rd16(p + pos)
        pos += 4
    h.pos = pos
    return True


cdef inline Py_ssize_t str16(const uint8_t *p, Py_ssize_t pos, Py_ssize_t end,
                             const uint8_t **s, Py_ssize_t *slen) noexcept:
    cdef Py_ssize_t n
    if pos + 2 > end:
        return -1
    n = rd16(p + pos)
    pos += 2
    if n > end - pos or not utf8_ok(p + pos, n):
        return -1
    s[0] = p + pos
    slen[0] = n
    return pos + n


cdef inline int attrs_result(Py_ssize_t pos) noexcept:
    return R_BAD if pos == -1 else R_NOMEM


cdef inline bint is_job_id(const uint8_t *k, Py_ssize_t n) noexcept:
    return n == 6 and memcmp(k, JOB_ID, 6) == 0


cdef int merge_record_attrs(State *s) noexcept:
    """``s.merged`` = the exported attributes, as ``otlp.record_attributes``' dict merge
    makes them: the context (``job_id`` -> ``emp.job_id``; of both spellings the first
    keeps its place, the later value stays), then the record's own, which replace values
    in place. R_OK or R_NOMEM."""
    cdef Py_ssize_t i, kl
    cdef const Ent *e
    cdef const uint8_t *k
    ent_reset(&s.merged)
    for i in range(s.ctx.n):
        e = &s.ctx.items[i]
        k = e.key
        kl = e.klen
        if is_job_id(k, kl):
            k = <const uint8_t *>EMP_JOB_ID
            kl = 10
        if ent_put(&s.merged, k, kl, e.tag, e.val, e.vlen) != R_OK:
            return R_NOMEM
    for i in range(s.own.n):
        e = &s.own.items[i]
        if ent_put(&s.merged, e.key, e.klen, e.tag, e.val, e.vlen) != R_OK:
            return R_NOMEM
    return R_OK


# ---- parsing LOG, EVENT and SPAN records -------------------------------------------
# One parser per record shape, shared by the OTLP writers (_otlp.pxi) and ``_Rows`` (the
# store's rows, _rows.pxi), so that both accept and reject exactly what
# ``reference.decode_record`` does; METRIC's (``parse_metric``) is in _metrics.pxi. They
# return R_OK, R_BAD or R_NOMEM, and leave the context and the record's own attributes
# in ``s.ctx`` and ``s.own``; the fields point into the record's bytes.
# ``parse_log`` and ``parse_span`` are inline: called once per record, out of line they
# cost the exporter a few percent.

# ---- redaction of parsed lists (the rules are in _redact.pxi) ----------------------------
# A value to rewrite is marked T_PENDING while the lists are looked through and the sizes
# of the rewritten values summed; the scratch buffer is then sized once and the values
# written, so that no pointer into it moves.
cdef enum:
    T_PENDING = 0xFE


cdef Py_ssize_t redact_marks(Rules *r, EntList *l) noexcept:
    """Replace the values of matching keys, mark the strings holding URL credentials;
    the bytes the marked ones need."""
    cdef Py_ssize_t i, size, need = 0
    cdef Ent *e
    for i in range(l.n):
        e = &l.items[i]
        if key_redacted(r, e.key, e.klen):
            if not (e.tag == T_STR and is_marker(e.val, e.vlen)):
                r.n_attributes += 1
            e.tag = T_STR
            e.val = <const uint8_t *>MARKER
            e.vlen = MARKER_LEN
        elif e.tag == T_STR and e.vlen >= 5:  # "://u@" at least
            size = text_size(e.val, e.vlen, False)
            if size >= 0:
                e.tag = T_PENDING
                need += size
    return need


cdef void redact_write(Rules *r, EntList *l, Buf *scratch) noexcept:
    cdef Py_ssize_t i, start
    cdef Ent *e
    for i in range(l.n):
        e = &l.items[i]
        if e.tag == T_PENDING:
            start = scratch.len
            write_text(r, e.val, e.vlen, False, scratch)
            e.tag = T_STR
            e.val = scratch.data + start
            e.vlen = scratch.len - start


cdef int redact_lists(Rules *r, EntList *a, EntList *b, Buf *scratch) noexcept:
    """Apply the rules to ``a`` and ``b`` (may be NULL), rewritten values in ``scratch``
    (emptied first). R_OK or R_NOMEM."""
    cdef Py_ssize_t need = redact_marks(r, a)
    if b != NULL:
        need += redact_marks(r, b)
    scratch.len = 0
    if need == 0:
        return R_OK
    if not ensure(scratch, need):
        return R_NOMEM
    redact_write(r, a, scratch)
    if b != NULL:
        redact_write(r, b, scratch)
    return R_OK


cdef inline int redact_tmp(State *s) noexcept:
    """The rules applied to ``s.tmp`` (an event's, a link's or a resource's)."""
    if s.rules == NULL:
        return R_OK
    return redact_lists(s.rules, &s.tmp, NULL, &s.sc_tmp)


cdef int parse_tail(const uint8_t *p, Py_ssize_t pos, Py_ssize_t n, State *s) noexcept:
    """The context and attributes at ``pos``, which must end the record; redacted when
    ``s.rules`` is set."""
    pos = parse_attrs(p, pos, n, &s.ctx)
    if pos < 0:
        return attrs_result(pos)
    pos = parse_attrs(p, pos, n, &s.own)
    if pos < 0:
        return attrs_result(pos)
    if pos != n:
        return R_BAD
    if s.rules != NULL:
        return redact_lists(s.rules, &s.ctx, &s.own, &s.sc_rec)
    return R_OK


ctypedef struct LogFields:
    uint8_t sev           # LOG: severity, its text and the body
    const uint8_t *text
    Py_ssize_t tl
    const uint8_t *body
    Py_ssize_t bl
    const uint8_t *name   # EVENT: the event name
    Py_ssize_t nl


cdef inline int parse_log(const uint8_t *p, Py_ssize_t n, const Head *h, State *s,
                          LogFields *f) noexcept:
    """A LOG or EVENT record past its header ``h``; the other kind's fields stay empty.
    With ``s.rules``, the body's secrets are replaced too."""
    cdef Py_ssize_t pos = h.pos, size
    cdef int r
    f.sev = 0
    f.text = f.body = f.name = NULL
    f.tl = f.bl = f.nl = 0
    if p[1] == K_LOG:
        if pos + 2 > n:
            return R_BAD
        f.sev = p[pos]
        if f.sev > MAX_SEVERITY:
            return R_BAD
        f.tl = p[pos + 1]
        pos += 2
        if f.tl > n - pos or not utf8_ok(p + pos, f.tl):
            return R_BAD
        f.text = p + pos
        pos += f.tl
        if pos + 4 > n:
            return R_BAD
        f.bl = rd32(p + pos)
        pos += 4
        if f.bl > n - pos or not utf8_ok(p + pos, f.bl):
            return R_BAD
        f.body = p + pos
        pos += f.bl
    elif p[1] == K_EVENT:
        pos = str16(p, pos, n, &f.name, &f.nl)
        if pos < 0:
            return R_BAD
    else:
        return R_BAD
    r = parse_tail(p, pos, n, s)
    if r == R_OK and s.rules != NULL and f.bl:
        size = text_size(f.body, f.bl, True)
        if size >= 0:
            s.sc_body.len = 0
            if not ensure(&s.sc_body, size):
                return R_NOMEM
            write_text(s.rules, f.body, f.bl, True, &s.sc_body)
            f.body = s.sc_body.data
            f.bl = s.sc_body.len
    return r


# Events and links are validated here, then walked a second time by the writers (from
# ``ev_pos``/``ln_pos``), which can then skip every bounds check but memory.
ctypedef struct SpanFields:
    const uint8_t *name
    Py_ssize_t nl
    const uint8_t *parent  # 8 bytes, all zero for a root span
    uint64_t start
    uint8_t status
    uint8_t kind
    uint8_t flags
    const uint8_t *msg     # status message
    Py_ssize_t ml
    Py_ssize_t n_events
    Py_ssize_t ev_pos      # the first event
    Py_ssize_t n_links
    Py_ssize_t ln_pos      # the first link


cdef inline int parse_span(const uint8_t *p, Py_ssize_t n, const Head *h, State *s,
                           SpanFields *f) noexcept:
    """A SPAN record past its header ``h``. Uses ``s.tmp`` for the events' and links'
    attributes."""
    cdef Py_ssize_t pos, _i, el
    cdef const uint8_t *ev_name
    if h.trace == NULL:
        return R_BAD
    pos = str16(p, h.pos, n, &f.name, &f.nl)
    if pos < 0 or pos + 19 > n:
        return R_BAD
    f.parent = p + pos
    f.start = rd64(p + pos + 8)
    f.status = p[pos + 16]
    f.kind = p[pos + 17]
    f.flags = p[pos + 18]
    if f.status > MAX_STATUS_CODE or f.kind > MAX_SPAN_KIND:
        return R_BAD
    pos = str16(p, pos + 19, n, &f.msg, &f.ml)
    if pos < 0 or pos + 2 > n:
        return R_BAD
    f.n_events = rd16(p + pos)
    pos += 2
    f.ev_pos = pos
    for _i in range(f.n_events):
        pos = str16(p, pos, n, &ev_name, &el)
        if pos < 0 or pos + 8 > n:
            return R_BAD
        pos = parse_attrs(p, pos + 8, n, &s.tmp)
        if pos < 0:
            return attrs_result(pos)
    if pos + 2 > n:
        return R_BAD
    f.n_links = rd16(p + pos)
    pos += 2
    f.ln_pos = pos
    for _i in range(f.n_links):
        if pos + 24 > n:
            return R_BAD
        pos = parse_attrs(p, pos + 24, n, &s.tmp)
        if pos < 0:
            return attrs_result(pos)
    return parse_tail(p, pos, n, s)


# ---- resources ----------------------------------------------------------------------
cdef Py_ssize_t parse_resource(const uint8_t *p, Py_ssize_t n, const uint8_t **name,
                               Py_ssize_t *nl, const uint8_t **version, Py_ssize_t *vl,
                               EntList *attrs) noexcept:
    """A resource blob: -1 if malformed, -2 out of memory, else its length."""
    cdef Py_ssize_t pos
    if n < 2 or p[0] != FORMAT_VERSION or p[1] != K_RESOURCE:
        return -1
    pos = str16(p, 2, n, name, nl)
    if pos < 0:
        return -1
    pos = str16(p, pos, n, version, vl)
    if pos < 0:
        return -1
    pos = parse_attrs(p, pos, n, attrs)
    if pos < 0:
        return pos
    return pos if pos == n else -1


# ---- validated values as Python objects -------------------------------------------
cdef object py_scalar(int tag, const uint8_t *val, Py_ssize_t vlen):
    """A validated value as ``reference`` decodes it."""
    if tag == T_STR:
        return PyUnicode_DecodeUTF8(<const char *>val, vlen, NULL)
    if tag == T_INT:
        return <int64_t>rd64(val)
    if tag == T_DOUBLE:
        return rdf64(val)
    if tag == T_BOOL:
        return vlen != 0
    if tag == T_BYTES:
        return PyBytes_FromStringAndSize(<const char *>val, vlen)
    if tag == T_ARRAY:
        return py_array(val, vlen)
    return None


cdef list py_array(const uint8_t *q, Py_ssize_t n):
    cdef list out = []
    cdef Py_ssize_t _j
    cdef const uint8_t *ev
    cdef Py_ssize_t elen
    cdef int etag
    for _j in range(n):
        q = elem(q, &etag, &ev, &elen)
        out.append(py_scalar(etag, ev, elen))
    return out


cdef Redactor checked_redactor(object redactor):
    if redactor is not None and not isinstance(redactor, Redactor):
        raise TypeError(f"redactor must be a Redactor or None, not {type(redactor).__name__}")
    return redactor


# ---- the state of one call over many records ----------------------------------------
# The fields ``_Parser.cached`` keeps the last str of.
cdef enum:
    S_JOB = 0
    S_TEXT = 1
    S_NAME = 2
    S_UNIT = 3
    S_DESC = 4


cdef class _Parser:
    """The parsing state of one call, and the last str made for a few fields:
    consecutive records mostly repeat these."""
    cdef State st
    cdef Redactor redactor  # holds ``st.rules``
    cdef str c_job
    cdef str c_text
    cdef str c_name
    cdef str c_unit
    cdef str c_desc

    def __dealloc__(self):
        state_free(&self.st)

    cdef use(self, object redactor):
        """Redact with ``redactor`` (a ``Redactor``, or None for no redaction)."""
        self.redactor = checked_redactor(redactor)
        self.st.rules = NULL if self.redactor is None else self.redactor.rules()

    cdef inline str cached(self, int which, const uint8_t *p, Py_ssize_t n):
        """The ``n`` bytes of validated UTF-8 at ``p`` as a str; the previous one of
        field ``which`` (S_*) when equal."""
        cdef str prev
        cdef const char *u
        cdef Py_ssize_t ul
        if which == S_JOB:
            prev = self.c_job
        elif which == S_TEXT:
            prev = self.c_text
        elif which == S_NAME:
            prev = self.c_name
        elif which == S_UNIT:
            prev = self.c_unit
        else:
            prev = self.c_desc
        if prev is not None:
            u = PyUnicode_AsUTF8AndSize(prev, &ul)
            if ul == n and memcmp(u, p, n) == 0:
                return prev
        prev = PyUnicode_DecodeUTF8(<const char *>p, n, NULL)
        if which == S_JOB:
            self.c_job = prev
        elif which == S_TEXT:
            self.c_text = prev
        elif which == S_NAME:
            self.c_name = prev
        elif which == S_UNIT:
            self.c_unit = prev
        else:
            self.c_desc = prev
        return prev
