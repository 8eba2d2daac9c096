"""Bulk transcoding: raw records (docs/record-format.md) -> serialized OTLP protobuf
``ExportLogsServiceRequest`` / ``ExportTraceServiceRequest``, without decoding to Python
objects.

The output means exactly what ``agent.otlp.build_logs_request`` /
``build_traces_request`` build from ``reference``-decoded records (tests/test_transcode.py
parses both and compares): same resource grouping (equal attribute sets share one
resource, first-seen order), one scope per (scope_name, scope_version), context
attributes first with ``job_id`` renamed ``emp.job_id`` and the record's own attributes
winning on a conflict.

Input is untrusted: every read is bounds-checked and the accept/reject rules are those of
``reference.decode_record``. A malformed record is skipped and counted; a malformed
resource blob becomes ``{"emp.resource_corrupt": True}``, like ``agent.main.decode_batch``.

The protobuf wire format is written by hand into growable buffers. A nested message's
length is not known before its content is written, so two bytes are reserved for it and
the content is moved when the length needs one or three-plus bytes (``begin``/``finish``).

``store_rows`` reuses the same parsing to build the embedded store's row tuples (what
``store.store_row`` builds from a ``reference``-decoded record), attribute JSON included.
"""

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.conversion cimport Py_DTSF_ADD_DOT_0
from cpython.exc cimport PyErr_Clear
from cpython.mem cimport PyMem_Free
from cpython.unicode cimport (
    Py_UCS1,
    PyUnicode_1BYTE_DATA,
    PyUnicode_AsUTF8AndSize,
    PyUnicode_DecodeUTF8,
    PyUnicode_New,
)
from libc.math cimport isfinite, signbit
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcmp, memcpy, memmove, strlen

from emp_fastbuf.records import value_sum as _value_sum


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* float.__repr__ of d when 1e-4 <= |d| < 2**53 (the fixed-point notation), found
       exactly with 128-bit integers, without dtoa's big numbers. With |d| = M * 2**-s,
       the numbers that read back as d lie within 2**-s / 2 of it (2**-s / 4 below it when
       M is a power of two). repr's digits are the fewest fraction digits f for which a
       decimal m / 10**f lies strictly inside that interval and, of the two candidates
       around d, the closer one. Writes at most 48 bytes; returns their count, or 0 to
       leave the value to PyOS_double_to_string: out of range, a candidate on the edge of
       the interval, or two candidates equally close. */
    static int emp_fixed_repr(double d, char *out) {
    #if defined(__SIZEOF_INT128__)
        typedef unsigned __int128 u128;
        uint64_t bits, frac, M, m = 0;
        double a = d < 0 ? -d : d;
        int s, f, nd, i, n = 0, low_shift, in_low, in_up;
        u128 X, p10 = 1, r, one, dl, du, q;
        char digits[24];
        if (!(a >= 1e-4 && a < 9007199254740992.0))
            return 0;
        memcpy(&bits, &a, 8);
        frac = bits & ((1ULL << 52) - 1);
        M = frac | (1ULL << 52);
        s = 1075 - (int)(bits >> 52);  /* |d| = M * 2**-s, 0 <= s <= 66 */
        low_shift = frac == 0 ? 2 : 1;  /* the gap below a power of two is half as wide */
        one = (u128)1 << s;
        X = M;
        for (f = 0; f <= 21; f++) {
            if (f) {
                X *= 10;  /* M * 10**f < 2**53 * 10**21 < 2**123 */
                p10 *= 10;
            }
            q = X >> s;
            r = X & (one - 1);
            if (q >= ((u128)1 << 62))
                return 0;
            if (r == 0) {  /* |d| * 10**f is an integer */
                m = (uint64_t)q;
                break;
            }
            /* candidates q (|d| * 10**f - r / 2**s) and q + 1 (+ (2**s - r) / 2**s):
               inside when their distance times 10**-f is below the gap on their side */
            dl = r << low_shift;
            du = (one - r) << 1;
            if (dl == p10 || du == p10)
                return 0;
            in_low = dl < p10;
            in_up = du < p10;
            if (in_low && in_up) {
                if (r == one - r)
                    return 0;
                in_low = r < one - r;
                in_up = !in_low;
            }
            if (in_low) {
                m = (uint64_t)q;
                break;
            }
            if (in_up) {
                m = (uint64_t)q + 1;
                break;
            }
        }
        if (f > 21 || (f && m % 10 == 0))
            return 0;
        nd = 0;
        do {
            digits[nd++] = (char)('0' + m % 10);
            m /= 10;
        } while (m);
        if (d < 0)
            out[n++] = '-';
        if (nd > f) {
            for (i = nd - 1; i >= f; i--)
                out[n++] = digits[i];
            out[n++] = '.';
            if (f == 0)
                out[n++] = '0';
        } else {
            out[n++] = '0';
            out[n++] = '.';
            for (i = 0; i < f - nd; i++)
                out[n++] = '0';
        }
        for (i = f - 1 < nd - 1 ? f - 1 : nd - 1; i >= 0; i--)
            out[n++] = digits[i];
        return n;
    #else
        (void)d;
        (void)out;
        return 0;
    #endif
    }
    """
    int emp_fixed_repr(double d, char *out) noexcept


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(object op)
    # Declared here without ``except NULL``: the JSON writers below run as noexcept code
    # and turn a failure into their buffer's ``oom`` flag.
    char *double_to_string "PyOS_double_to_string" (
        double val, char format_code, int precision, int flags, int *ptype)

DEFAULT_MAX_BYTES = 64 << 20

# ---- format constants (docs/record-format.md) ---------------------------------------
cdef enum:
    K_LOG = 1
    K_EVENT = 2
    K_SPAN = 3
    K_METRIC = 4
    K_RESOURCE = 5
    F_HAS_TRACE = 1
    F_HAS_LIMITS = 2
    T_NONE = 0
    T_STR = 1
    T_INT = 2
    T_DOUBLE = 3
    T_BOOL = 4
    T_BYTES = 5
    T_ARRAY = 6
    MAX_SEVERITY = 24
    MAX_STATUS_CODE = 2
    MAX_SPAN_KIND = 5
    # Attribute lists longer than this get a hash index for key lookups (dedup, merge).
    HASH_MIN = 16

# Result codes of the C-level helpers.
cdef enum:
    R_OK = 1
    R_BAD = 0
    R_NOMEM = -1

cdef const char *JOB_ID = b"job_id"
cdef const char *EMP_JOB_ID = b"emp.job_id"
# {"emp.resource_corrupt": True} as an attrlist: what a bad resource blob becomes.
cdef bytes CORRUPT_ATTRS = b"\x01\x00\x14\x00emp.resource_corrupt\x04\x01"
cdef bytes DEFAULT_SCOPE_NAME = b"emp_fastbuf"


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


# ---- output buffer ------------------------------------------------------------------
# Writes never fail loudly: when memory runs out the buffer sets ``oom`` and drops the
# write; callers check ``oom`` once per record. A ``fixed`` buffer (the final payload,
# sized exactly beforehand) never reallocates.
ctypedef struct Buf:
    uint8_t *data
    size_t len
    size_t cap
    bint oom
    bint fixed


cdef bint buf_grow(Buf *b, size_t extra) noexcept:
    cdef size_t need = b.len + extra
    cdef size_t cap
    cdef uint8_t *p
    if b.oom or b.fixed or need < b.len:
        b.oom = True
        return False
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <uint8_t *>realloc(b.data, cap)
    if p == NULL:
        b.oom = True
        return False
    b.data = p
    b.cap = cap
    return True


cdef inline bint ensure(Buf *b, size_t extra) noexcept:
    if b.cap - b.len >= extra:
        return True
    return buf_grow(b, extra)


cdef inline void put1(Buf *b, uint8_t c) noexcept:
    if ensure(b, 1):
        b.data[b.len] = c
        b.len += 1


cdef inline void put_raw(Buf *b, const void *p, size_t n) noexcept:
    if ensure(b, n):
        memcpy(b.data + b.len, p, n)
        b.len += n


cdef inline int varint_len(uint64_t v) noexcept:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline uint8_t *write_varint(uint8_t *o, uint64_t v) noexcept:
    while v >= 0x80:
        o[0] = <uint8_t>((v & 0x7F) | 0x80)
        o += 1
        v >>= 7
    o[0] = <uint8_t>v
    return o + 1


cdef inline void put_varint(Buf *b, uint64_t v) noexcept:
    if ensure(b, 10):
        b.len = write_varint(b.data + b.len, v) - b.data


cdef inline void put_fixed64(Buf *b, uint64_t v) noexcept:
    cdef int i
    if ensure(b, 8):
        for i in range(8):
            b.data[b.len + i] = <uint8_t>(v >> (8 * i))
        b.len += 8


cdef inline void put_bytes_field(Buf *b, uint8_t tag, const uint8_t *p, size_t n) noexcept:
    """A length-delimited field: tag, varint length, bytes."""
    put1(b, tag)
    put_varint(b, n)
    put_raw(b, p, n)


cdef inline size_t begin(Buf *b) noexcept:
    """Reserve two bytes for the length of the nested message written next."""
    cdef size_t mark = b.len
    if ensure(b, 2):
        b.len += 2
    return mark


cdef void finish(Buf *b, size_t mark) noexcept:
    """Write the length of the nested message started at ``mark``, moving its content
    when the length does not take exactly the two reserved bytes."""
    cdef size_t n
    cdef int vl
    if b.oom:
        return
    n = b.len - mark - 2
    vl = varint_len(n)
    if vl != 2:
        if vl > 2 and not ensure(b, vl - 2):
            return
        memmove(b.data + mark + vl, b.data + mark + 2, n)
        b.len = b.len + vl - 2
    write_varint(b.data + mark, n)


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


# ---- AnyValue / KeyValue ------------------------------------------------------------
# Field numbers (opentelemetry/proto/common/v1/common.proto): AnyValue string_value 1,
# bool_value 2, int_value 3, double_value 4, array_value 5, bytes_value 7; ArrayValue
# values 1; KeyValue key 1, value 2. A oneof member is always written, even when it holds
# the default value, as the generated classes do.

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


# ---- records ------------------------------------------------------------------------
ctypedef struct State:
    EntList ctx
    EntList own
    EntList merged
    EntList tmp
    uint64_t observed


ctypedef struct Head:
    uint64_t time
    const uint8_t *trace  # trace_id then span_id; NULL without HAS_TRACE
    uint32_t dropped
    Py_ssize_t pos


cdef bint parse_head(const uint8_t *p, Py_ssize_t n, Head *h) noexcept:
    cdef Py_ssize_t pos = 12
    if n < 12 or p[0] != 1 or p[1] < K_LOG or p[1] > K_METRIC:
        return False
    if (p[2] & ~(F_HAS_TRACE | F_HAS_LIMITS)) or p[3]:
        return False
    h.time = rd64(p + 4)
    h.trace = NULL
    h.dropped = 0
    if p[2] & F_HAS_TRACE:
        if pos + 24 > n or all_zero(p + pos, 16) or all_zero(p + pos + 16, 8):
            return False
        h.trace = p + pos
        pos += 24
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
        # Both spellings in the context: the dict merge of ``record_attributes`` decides
        # (the first spelling keeps its place, the later value stays, own keys replace
        # values in place).
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


# ---- parsing LOG, EVENT and SPAN records -------------------------------------------
# One parser per record shape, shared by the OTLP writers below and by ``_Rows`` (the
# store's rows), so that both accept and reject exactly what ``reference.decode_record``
# does. They return R_OK, R_BAD or R_NOMEM, and leave the context and the record's own
# attributes in ``s.ctx`` and ``s.own``; the fields point into the record's bytes.
# ``parse_log`` and ``parse_span`` are inline: called once per record, out of line they
# cost the exporter a few percent.

cdef int parse_tail(const uint8_t *p, Py_ssize_t pos, Py_ssize_t n, State *s) noexcept:
    """The context and attributes at ``pos``, which must end the record."""
    pos = parse_attrs(p, pos, n, &s.ctx)
    if pos < 0:
        return attrs_result(pos)
    pos = parse_attrs(p, pos, n, &s.own)
    if pos < 0:
        return attrs_result(pos)
    return R_OK if pos == n else R_BAD


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
    """A LOG or EVENT record past its header ``h``; the other kind's fields stay empty."""
    cdef Py_ssize_t pos = h.pos
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
    return parse_tail(p, pos, n, s)


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
        if q < 0:
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
        if q < 0:
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
cdef Py_ssize_t parse_resource(const uint8_t *p, Py_ssize_t n, const uint8_t **name,
                               Py_ssize_t *nl, const uint8_t **version, Py_ssize_t *vl,
                               EntList *attrs) noexcept:
    """A resource blob: -1 if malformed, -2 out of memory, else its length."""
    cdef Py_ssize_t pos
    if n < 2 or p[0] != 1 or p[1] != K_RESOURCE:
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


cdef bytes take(Buf *b):
    """The buffer's content as bytes; frees the buffer."""
    cdef bytes out
    if b.oom:
        free(b.data)
        b.data = NULL
        raise MemoryError()
    if b.data == NULL:
        return b""
    out = PyBytes_FromStringAndSize(<char *>b.data, b.len)
    free(b.data)
    b.data = NULL
    b.len = b.cap = 0
    return out


cdef bytes pyvarint(size_t n):
    cdef bytearray out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


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


cdef inline size_t framed(size_t n) noexcept:
    """Size of a field 1 or 2 holding ``n`` bytes: tag, varint length, content."""
    return 1 + varint_len(n) + n


cdef class _Builder:
    cdef State st
    cdef bint spans
    cdef dict by_meta     # resource blob -> _Scope
    cdef dict slots       # frozen resource attributes -> _Slot
    cdef dict scopes      # (frozen attributes, scope name, scope version) -> _Scope
    cdef list order       # _Slot in first-record order
    cdef Py_ssize_t encoded
    cdef Py_ssize_t rejected

    def __cinit__(self, bint spans, uint64_t observed):
        self.spans = spans
        self.st.observed = observed
        self.by_meta = {}
        self.slots = {}
        self.scopes = {}
        self.order = []

    def __dealloc__(self):
        ent_free(&self.st.ctx)
        ent_free(&self.st.own)
        ent_free(&self.st.merged)
        ent_free(&self.st.tmp)

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


cdef tuple run(object chunks, bint spans, uint64_t observed, Py_ssize_t max_bytes):
    cdef _Builder builder = _Builder(spans, observed)
    builder.feed(chunks)
    return builder.payloads(max_bytes), builder.encoded, builder.rejected


def logs_request(chunks, observed_time_unix_nano):
    """Serialized ``ExportLogsServiceRequest`` for the LOG and EVENT records of
    ``chunks`` (``(meta, records)`` pairs or ``LaneChunk``s), straight from the raw bytes.

    Returns ``(payload, records_encoded, records_rejected)``; ``payload`` is ``b""`` when
    no record was encoded (send nothing). ``records_rejected`` counts malformed LOG/EVENT
    records and records of no known kind (shorter than 2 bytes, kind byte not 1..4);
    SPAN and METRIC records are skipped without being checked. No size cap: see
    ``logs_requests``.
    """
    payloads, encoded, rejected = run(chunks, False, check_observed(observed_time_unix_nano),
                                      0)
    return (payloads[0] if payloads else b""), encoded, rejected


def logs_requests(chunks, observed_time_unix_nano, max_bytes=DEFAULT_MAX_BYTES):
    """Like ``logs_request``, split as ``otlp.iter_logs_requests`` splits: a list of
    request bodies, each at most ``max_bytes`` unless one record alone is larger."""
    cdef Py_ssize_t cap = check_max_bytes(max_bytes)
    return run(chunks, False, check_observed(observed_time_unix_nano), cap)


def spans_request(chunks):
    """Serialized ``ExportTraceServiceRequest`` for the SPAN records of ``chunks``.

    Returns ``(payload, records_encoded, records_rejected)``; ``payload`` is ``b""`` when
    no span was encoded. ``records_rejected`` counts malformed SPAN records only (see
    ``logs_request`` for the others). No size cap: see ``spans_requests``.
    """
    payloads, encoded, rejected = run(chunks, True, 0, 0)
    return (payloads[0] if payloads else b""), encoded, rejected


def spans_requests(chunks, max_bytes=DEFAULT_MAX_BYTES):
    """Like ``spans_request``, split as ``otlp.iter_traces_requests`` splits."""
    cdef Py_ssize_t cap = check_max_bytes(max_bytes)
    return run(chunks, True, 0, cap)


# ---- store rows ---------------------------------------------------------------------
# ``store_rows`` builds the row tuples of ``store.store_row`` straight from raw records.
# Attribute values become JSON as ``store._to_json`` writes them: the C ``json`` encoder
# with ensure_ascii, compact separators, ``float.__repr__`` for floats, bytes as hex (its
# ``default``) and, because ``_to_json`` retries through ``store._finite``, NaN and the
# infinities as the strings "NaN", "Infinity" and "-Infinity".

cdef enum:
    ROW_LOG = 0
    ROW_EVENT = 1
    ROW_SPAN = 2
    ROW_METRIC = 3
    ROW_DECLINE = -1
    K_COUNTER = 1
    K_HISTOGRAM = 4
    MAX_HISTOGRAM_VALUES = 1048576

cdef const char *HEXDIGITS = b"0123456789abcdef"


# store.MAX_TIME_UNIX_NANO: SQLite integers are signed 64-bit, so a later time (the year
# 2262 on) is stored as this one, as ``store.store_row`` does.
cdef uint64_t MAX_TIME = 9223372036854775807ULL


cdef inline uint64_t row_time(uint64_t t) noexcept:
    return t if t <= MAX_TIME else MAX_TIME


cdef inline double rdf64(const uint8_t *p) noexcept:
    cdef uint64_t bits = rd64(p)
    cdef double d
    memcpy(&d, &bits, 8)
    return d


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


cdef class _Rows:
    """The parsing state and small caches of one ``store_rows`` call."""
    cdef State st
    cdef Buf js  # JSON is written here
    # The last str made for a field: consecutive records mostly repeat these.
    cdef str c_job
    cdef str c_text
    cdef str c_name
    cdef str c_unit

    def __dealloc__(self):
        ent_free(&self.st.ctx)
        ent_free(&self.st.own)
        ent_free(&self.st.merged)
        ent_free(&self.st.tmp)
        free(self.js.data)
        self.js.data = NULL

    cdef inline str cached(self, int which, const uint8_t *p, Py_ssize_t n):
        cdef str prev
        cdef const char *u
        cdef Py_ssize_t ul
        if which == 0:
            prev = self.c_job
        elif which == 1:
            prev = self.c_text
        elif which == 2:
            prev = self.c_name
        else:
            prev = self.c_unit
        if prev is not None:
            u = PyUnicode_AsUTF8AndSize(prev, &ul)
            if ul == n and memcmp(u, p, n) == 0:
                return prev
        prev = PyUnicode_DecodeUTF8(<const char *>p, n, NULL)
        if which == 0:
            self.c_job = prev
        elif which == 1:
            self.c_text = prev
        elif which == 2:
            self.c_name = prev
        else:
            self.c_unit = prev
        return prev

    cdef object job(self):
        """``store._job_and_attributes``'s job: the context's ``job_id`` as text."""
        cdef Py_ssize_t i = ent_find(&self.st.ctx, <const uint8_t *>JOB_ID, 6)
        cdef const Ent *e
        if i < 0:
            return None
        e = &self.st.ctx.items[i]
        if e.tag == T_STR:
            return self.cached(0, e.val, e.vlen)
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
            self.cached(1, f.text, f.tl) if f.tl else None,
            opt_bytes(h.trace, 16), opt_bytes(h.trace + 16 if h.trace else NULL, 8),
            self.attributes(),
        )

    cdef tuple event(self, const uint8_t *p, Py_ssize_t n, const Head *h):
        cdef LogFields f
        if not self.accepted(parse_log(p, n, h, &self.st, &f)):
            return None
        job = self.job()
        return (
            row_time(h.time), job, self.cached(2, f.name, f.nl),
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
                if q < 0:
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
                if q < 0:
                    raise MemoryError()
                json_object(b, &s.tmp)
                put1(b, 125)
            put1(b, 93)
            links = take_ascii(b)
        return (
            row_time(h.time), job, self.cached(2, f.name, f.nl),
            PyBytes_FromStringAndSize(<const char *>h.trace, 16),
            PyBytes_FromStringAndSize(<const char *>h.trace + 16, 8),
            None if all_zero(f.parent, 8)
            else PyBytes_FromStringAndSize(<const char *>f.parent, 8),
            row_time(f.start), f.status,
            PyUnicode_DecodeUTF8(<const char *>f.msg, f.ml, NULL) if f.ml else None,
            f.kind, attrs, events, links,
        )

    cdef tuple metric(self, const uint8_t *p, Py_ssize_t n, const Head *h):
        cdef Py_ssize_t pos = h.pos, nl = 0, ul, dl = 0, count = 0, nb = 0, i, kept
        cdef const uint8_t *name = NULL
        cdef const uint8_t *unit
        cdef const uint8_t *desc = NULL
        cdef const uint8_t *vals = NULL
        cdef const uint8_t *bounds = NULL
        cdef uint8_t instrument, tag = 0
        cdef double d, prev = 0.0, lo = 0.0, hi = 0.0
        cdef Buf *b = &self.js
        if pos >= n:
            return None
        instrument = p[pos]
        if instrument < K_COUNTER or instrument > K_HISTOGRAM:
            return None
        pos = str16(p, pos + 1, n, &name, &nl)
        if pos < 0 or pos >= n:
            return None
        ul = p[pos]
        pos += 1
        if ul > n - pos or not utf8_ok(p + pos, ul):
            return None
        unit = p + pos
        pos = str16(p, pos + ul, n, &desc, &dl)
        if pos < 0:
            return None
        if instrument != K_HISTOGRAM:
            if pos + 9 > n:
                return None
            tag = p[pos]
            if tag != T_INT and tag != T_DOUBLE:
                return None
            vals = p + pos + 1
            pos += 9
        else:
            if pos + 4 > n:
                return None
            count = rd32(p + pos)
            pos += 4
            if count < 1 or count > MAX_HISTOGRAM_VALUES or count * 8 > n - pos:
                return None
            vals = p + pos
            pos += count * 8
            if pos + 2 > n:
                return None
            nb = rd16(p + pos)
            pos += 2
            if nb * 8 > n - pos:
                return None
            bounds = p + pos
            for i in range(nb):
                d = rdf64(bounds + 8 * i)
                if d != d or (i and not prev < d):
                    return None
                prev = d
            pos += nb * 8
        if not self.accepted(parse_tail(p, pos, n, &self.st)):
            return None
        job = self.job()
        if instrument != K_HISTOGRAM:
            return (
                row_time(h.time), job, self.cached(2, name, nl), instrument,
                self.cached(3, unit, ul), <int64_t>rd64(vals) if tag == T_INT else rdf64(vals),
                None, None, None, None, None, None, self.attributes(),
            )
        # store._metric_row: NaN values are dropped; min/max as Python's (the first of
        # equal values wins, so 0.0 and -0.0 keep their order); the sum is records.value_sum's.
        values = []
        b.len = 0
        kept = 0
        for i in range(count):
            d = rdf64(vals + 8 * i)
            if d != d:
                continue
            if kept == 0:
                lo = hi = d
            elif d < lo:
                lo = d
            elif d > hi:
                hi = d
            values.append(d)
            put_raw(b, vals + 8 * i, 8)  # the record's f64 is little-endian, as the blob
            kept += 1
        if b.oom:
            raise MemoryError()
        blob = PyBytes_FromStringAndSize(<const char *>b.data, b.len)
        total = _value_sum(values) if kept else 0.0
        bounds_json = None
        if nb:
            b.len = 0
            put1(b, 91)
            for i in range(nb):
                if i:
                    put1(b, 44)
                json_f64(b, rdf64(bounds + 8 * i))
            put1(b, 93)
            bounds_json = take_ascii(b)
        return (
            row_time(h.time), job, self.cached(2, name, nl), instrument,
            self.cached(3, unit, ul), None, kept, total, lo if kept else None,
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


def store_rows(records):
    """The embedded store's rows for the raw records of one chunk, built natively.

    Returns ``(logs, events, spans, metrics, declined)``: four lists of row tuples, each
    equal to ``store.store_row(reference.decode_record(raw))[1]`` (types included) and in
    input order, and the records not handled here (the same objects, in input order),
    which the caller decodes in Python. Declined: every record ``reference.decode_record``
    rejects (malformed, invalid UTF-8, unknown version, kind, tag or flag bits) and a
    bytearray or memoryview element whose buffer cannot be read in place (not contiguous,
    or released).

    ``records`` is a list, a tuple or another iterable of ``bytes`` (``bytearray`` and
    ``memoryview`` are read too); anything else raises ``TypeError``.
    """
    cdef list logs = []
    cdef list events = []
    cdef list spans = []
    cdef list metrics = []
    cdef list declined = []
    cdef _Rows rows = _Rows()
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
