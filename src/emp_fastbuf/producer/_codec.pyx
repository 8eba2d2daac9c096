"""The hot path: encode telemetry records (docs/record-format.md) straight into the
calling process's ring lane. No intermediate bytes object: the encoder writes into the
window the ring hands out and commits it with one release-store.

Nothing here raises into the host program except for a malformed call (a non-str name
raises TypeError): a bad attribute value is coerced or truncated and counted.
"""

from contextvars import ContextVar

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.contextvars cimport PyContextVar_Reset, PyContextVar_Set
from cpython.dict cimport PyDict_Next
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_CheckExact
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.float cimport DBL_MAX
from libc.string cimport memcpy, memmove

# The one severity table and instrument names (private here: records is where they live).
from emp_fastbuf.records import INSTRUMENT_NAMES as _INSTRUMENT_NAMES
from emp_fastbuf.records import SEVERITY_TEXT as _SEVERITY_TEXT
from emp_fastbuf.records._format cimport (
    F_HAS_LIMITS,
    F_HAS_TRACE,
    F_HAS_TRACE_FLAGS,
    FORMAT_VERSION,
    I_COUNTER,
    I_GAUGE,
    I_HISTOGRAM,
    I_UPDOWNCOUNTER,
    K_EVENT,
    K_LOG,
    K_METRIC,
    K_RESOURCE,
    K_SPAN,
    MAX_SEVERITY,
    MAX_SPAN_KIND,
    MAX_STATUS_CODE,
    SEVERITY_DEBUG,
    SEVERITY_ERROR,
    SEVERITY_FATAL,
    SEVERITY_INFO,
    SEVERITY_WARN,
    SPAN_KIND_INTERNAL,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    T_ARRAY,
    T_BOOL,
    T_BYTES,
    T_DOUBLE,
    T_INT,
    T_NONE,
    T_STR,
)
from emp_fastbuf.ring._ring cimport (
    DROP_FULL,
    DROP_TOO_LARGE,
    EFB_UNLIKELY,
    Ring,
    fork_generation,
)

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    bint PyUnicode_IS_COMPACT_ASCII(object s)
    void *PyUnicode_DATA(object s)
    Py_ssize_t PyDict_GET_SIZE(object d)
    int PyContextVar_Get(object var, PyObject *default_value, PyObject **value) except -1

cdef extern from "_proc.h" nogil:
    uint64_t efb_now_ns(int realtime)


# Counters kept per process (fastbuf.stats()).
cdef enum:
    C_LOG = 1
    C_EVENT = 2
    C_SPAN = 3
    C_METRIC = 4
    C_DROP_FULL = 5
    C_DROP_NO_LANE = 6
    C_DROP_TOO_LARGE = 7
    C_BYTES = 8
    C_TRUNCATED = 9
    C_DROPPED_ATTRS = 10
    C_COERCED = 11
    C_ERRORS = 12
    C_UNSAMPLED = 13  # spans the sampler dropped: never encoded
    C_COUNT = 14

cdef uint64_t counters[C_COUNT]

COUNTER_NAMES = {
    "log": C_LOG, "event": C_EVENT, "span": C_SPAN, "metric": C_METRIC,
    "dropped_full": C_DROP_FULL, "dropped_no_lane": C_DROP_NO_LANE,
    "dropped_too_large": C_DROP_TOO_LARGE, "bytes": C_BYTES,
    "truncated_values": C_TRUNCATED, "dropped_attributes": C_DROPPED_ATTRS,
    "coerced_values": C_COERCED, "errors": C_ERRORS, "unsampled_spans": C_UNSAMPLED,
}


def counter_values():
    """This process's emit counters (see ``fastbuf.stats``)."""
    return {name: int(counters[i]) for name, i in COUNTER_NAMES.items()}


def count_coerced(n=1):
    """Count ``n`` values that Python-level API code coerced (``fastbuf.record_span``'s
    clamped times), where ``fastbuf.stats()`` reads them."""
    counters[C_COERCED] += <uint64_t>n


def reset_counters():
    cdef int i
    for i in range(C_COUNT):
        counters[i] = 0


# ---- limits -------------------------------------------------------------------------
cdef int max_key_length = 128
cdef int max_array_length = 128
cdef int max_body_length = 65536
# Attributes per record and characters per string value, by record kind: index 0 is the
# context attributes (encoded once per scope), the resource and instrument heads; then
# K_LOG..K_METRIC. An encoder takes its kind's pair at the start of a record.
cdef enum:
    N_LIMIT_KINDS = K_METRIC + 1
cdef int lim_attrs[N_LIMIT_KINDS]
cdef int lim_value[N_LIMIT_KINDS]
# Fixed (docs/record-format.md): span events and links kept per span; an instrument's
# name and description in UTF-8 bytes.
cdef enum:
    MAX_SPAN_EVENTS = 128
    MAX_SPAN_LINKS = 128
    MAX_INSTRUMENT_NAME_BYTES = 1024
    MAX_INSTRUMENT_DESCRIPTION_BYTES = 2048


cdef void _set_kinds(int *table, int value, int first, int last) noexcept:
    cdef int k
    for k in range(first, last + 1):
        table[k] = value


def set_limits(attributes=None, key_length=None, value_length=None, array_length=None,
               body_length=None, *, span_attributes=None, span_value_length=None,
               log_attributes=None, log_value_length=None):
    """Set the encoder's limits (documented in docs/record-format.md). ``attributes`` and
    ``value_length`` apply to every record kind and to the context attributes; the
    ``span_*`` ones then to SPAN records, the ``log_*`` ones to LOG and EVENT records.
    None keeps a limit as it is."""
    global max_key_length, max_array_length, max_body_length
    for label, v, hi in (("max_attributes", attributes, 65535),
                         ("max_key_length", key_length, 16384),
                         ("max_value_length", value_length, 1 << 24),
                         ("max_array_length", array_length, 65535),
                         ("max_body_length", body_length, 1 << 24),
                         ("span_attributes", span_attributes, 65535),
                         ("span_value_length", span_value_length, 1 << 24),
                         ("log_attributes", log_attributes, 65535),
                         ("log_value_length", log_value_length, 1 << 24)):
        if v is not None and (type(v) is not int or not 1 <= v <= hi):
            raise ValueError(f"{label} must be an int between 1 and {hi}, got {v!r}")
    # Every kind first, then the span and log forms over them.
    if attributes is not None:
        _set_kinds(lim_attrs, attributes, 0, K_METRIC)
    if value_length is not None:
        _set_kinds(lim_value, value_length, 0, K_METRIC)
    if span_attributes is not None:
        _set_kinds(lim_attrs, span_attributes, K_SPAN, K_SPAN)
    if span_value_length is not None:
        _set_kinds(lim_value, span_value_length, K_SPAN, K_SPAN)
    if log_attributes is not None:
        _set_kinds(lim_attrs, log_attributes, K_LOG, K_EVENT)
    if log_value_length is not None:
        _set_kinds(lim_value, log_value_length, K_LOG, K_EVENT)
    if key_length is not None:
        max_key_length = key_length
    if array_length is not None:
        max_array_length = array_length
    if body_length is not None:
        max_body_length = body_length


set_limits(attributes=128, value_length=4096)


def get_limits():
    """The limits in force: ``max_attributes`` and ``max_value_length`` are those of
    the context attributes and METRIC records; ``span_*`` and ``log_*`` those of SPAN
    and of LOG and EVENT records."""
    return dict(max_attributes=lim_attrs[0], max_key_length=max_key_length,
                max_value_length=lim_value[0], max_array_length=max_array_length,
                max_body_length=max_body_length,
                span_max_attributes=lim_attrs[K_SPAN], span_max_value_length=lim_value[K_SPAN],
                log_max_attributes=lim_attrs[K_LOG], log_max_value_length=lim_value[K_LOG])


# ---- the encoder state --------------------------------------------------------------
cdef struct Enc:
    char *p
    char *end
    bint overflow
    uint32_t dropped
    uint32_t truncated
    uint32_t nattrs
    uint32_t max_attrs  # this record kind's limits (lim_attrs, lim_value)
    Py_ssize_t max_value


cdef inline bint room(Enc *e, Py_ssize_t n) noexcept:
    if e.end - e.p < n:
        e.overflow = True
        return False
    return True


cdef inline void put_u8(Enc *e, uint8_t v) noexcept:
    if room(e, 1):
        e.p[0] = <char>v
        e.p += 1


cdef inline void put_raw(Enc *e, const char *src, Py_ssize_t n) noexcept:
    if room(e, n):
        memcpy(e.p, src, n)
        e.p += n


# Fixed-width little-endian values (the formats' byte order is the machine's: x86-64 and
# arm64 are little-endian; docs/record-format.md).
cdef inline void put_u16(Enc *e, uint16_t v) noexcept:
    put_raw(e, <const char *>&v, 2)


cdef inline void put_u32(Enc *e, uint32_t v) noexcept:
    put_raw(e, <const char *>&v, 4)


cdef inline void put_u64(Enc *e, uint64_t v) noexcept:
    put_raw(e, <const char *>&v, 8)


cdef inline void put_f64(Enc *e, double v) noexcept:
    put_raw(e, <const char *>&v, 8)


cdef int put_text(Enc *e, object s, int width, Py_ssize_t max_chars) except -1:
    """A str as str8/str16/str32 (``width`` bytes of length), truncated to ``max_chars``
    characters (and to what the width can hold), counted."""
    cdef Py_ssize_t n
    cdef Py_ssize_t cap = 255 if width == 1 else (65535 if width == 2 else 0x7FFFFFFF)
    n = PyUnicode_GET_LENGTH(s)
    if n <= max_chars and n <= cap and PyUnicode_IS_COMPACT_ASCII(s):
        # The common case: ASCII, within limits, its bytes are the UTF-8.
        if width == 1:
            put_u8(e, <uint8_t>n)
        elif width == 2:
            put_u16(e, <uint16_t>n)
        else:
            put_u32(e, <uint32_t>n)
        put_raw(e, <const char *>PyUnicode_DATA(s), n)
        return 0
    return put_text_cut(e, s, width, max_chars, cap)


cdef int put_text_cut(Enc *e, object s, int width, Py_ssize_t max_chars,
                      Py_ssize_t max_bytes) except -1:
    """put_text's slow path: non-ASCII or too long. Truncated to ``max_chars`` characters,
    then to ``max_bytes`` bytes of UTF-8 at a character boundary; counted once."""
    cdef Py_ssize_t n
    cdef const char *u
    cdef bint cut = False
    if not PyUnicode_CheckExact(s):
        s = str.__str__(s)  # a str subclass: its characters, whatever its methods do
    if PyUnicode_GET_LENGTH(s) > max_chars:
        s = s[:max_chars]
        cut = True
    try:
        u = PyUnicode_AsUTF8AndSize(s, &n)
    except UnicodeEncodeError:  # lone surrogates
        s = s.encode("utf-8", "replace").decode("utf-8")
        u = PyUnicode_AsUTF8AndSize(s, &n)
        counters[C_COERCED] += 1
    if n > max_bytes:
        # Cut at a character boundary so the result stays valid UTF-8.
        n = max_bytes
        while n > 0 and (<uint8_t>u[n] & 0xC0) == 0x80:
            n -= 1
        cut = True
    e.truncated += cut
    if width == 1:
        put_u8(e, <uint8_t>n)
    elif width == 2:
        put_u16(e, <uint16_t>n)
    else:
        put_u32(e, <uint32_t>n)
    put_raw(e, u, n)
    return 0


cdef int put_scalar(Enc *e, object v, bint in_array) except -1:
    """One attribute value with its tag. Never raises for odd values: they are coerced."""
    cdef int overflow = 0
    cdef long long iv
    cdef type t = type(v)
    cdef Py_ssize_t n
    if t is str:
        put_u8(e, T_STR)
        return put_text(e, v, 4, e.max_value)
    if t is int:
        iv = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow:
            put_u8(e, T_STR)  # beyond 64 bits: as text
            return put_text(e, big_int_text(v, e.max_value), 4, e.max_value)
        put_u8(e, T_INT)
        put_u64(e, <uint64_t>iv)
        return 0
    if t is float:
        put_u8(e, T_DOUBLE)
        put_f64(e, PyFloat_AS_DOUBLE(v))
        return 0
    if t is bool:
        put_u8(e, T_BOOL)
        put_u8(e, 1 if v is True else 0)
        return 0
    if v is None:
        put_u8(e, T_NONE)
        return 0
    if t is bytes or t is bytearray or t is memoryview:
        try:
            b = bytes(v)
        except Exception:  # a non-contiguous memoryview
            counters[C_COERCED] += 1
            b = coerced_text(v)
            put_u8(e, T_STR)
            return put_text(e, b, 4, e.max_value)
        n = len(b)
        if n > e.max_value:
            n = e.max_value
            e.truncated += 1
        put_u8(e, T_BYTES)
        put_u32(e, <uint32_t>n)
        put_raw(e, PyBytes_AS_STRING(b), n)
        return 0
    if (t is list or t is tuple) and not in_array:
        return put_array(e, v)
    # Everything else is first turned into one of the exact types above.
    return put_scalar(e, plain_value(v), in_array)


cdef object plain_value(object v):
    """An exact str, int, float, bool or bytes for ``v``; never raises. Subclasses
    (IntEnum, str enums; numpy.float64 is a float subclass) become their base type;
    numpy scalars (numpy.int32, numpy.bool_, ...) their ``.item()``, found without
    importing numpy; anything else, or a value whose conversion raises (a ``__str__``
    or ``__getattr__`` that raises), its text, counted as coerced."""
    try:
        if isinstance(v, str):
            s = str(v)
            if type(s) is str:
                return s
        elif isinstance(v, int):
            return int(v)
        elif isinstance(v, float):
            return float(v)
        elif hasattr(v, "dtype") and hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            item = v.item()
            if type(item) in (int, float, bool, str, bytes):
                return item
    except Exception:
        pass
    counters[C_COERCED] += 1
    return coerced_text(v)


cdef str coerced_text(object v):
    """``str(v)``, or where that raises or is no str: the characters of a str subclass,
    an int in scientific notation, else ``<unprintable TYPE>``. Never raises."""
    try:
        s = str(v)
        if type(s) is str:
            return s
    except Exception:
        pass
    try:
        if isinstance(v, str):
            return str.__str__(v)
        if isinstance(v, int):
            return int_scientific(int.__index__(v))
    except Exception:
        pass
    try:
        return f"<unprintable {type(v).__name__}>"
    except Exception:
        return "<unprintable>"


cdef str big_int_text(object v, Py_ssize_t max_value):
    """An int beyond 64 bits: its decimal string, or where that is longer than the value
    length limit or than Python converts (``sys.get_int_max_str_digits()``, 4,300 digits
    by default), its scientific notation, counted as coerced."""
    try:
        s = str(v)
        if PyUnicode_GET_LENGTH(s) <= max_value:
            return s
    except ValueError:
        pass
    counters[C_COERCED] += 1
    return int_scientific(v)


cdef str int_scientific(object v):
    """``v`` as ``d.ddddddddddddddddde+N``: 17 significant digits, truncated (not
    rounded). Linear in the size of ``v``: no full decimal conversion."""
    a = -v if v < 0 else v
    if a < 10 ** 17:
        d = str(a)
        shift = 0
    else:
        # a // 10**shift keeps about 20 leading digits (log10(2) = 0.30103 underestimates
        # the digit count by at most one).
        shift = max(0, int(a.bit_length() * 0.30102999566398120) - 19)
        d = str(a // 10 ** shift)
    return f"{'-' if v < 0 else ''}{d[0]}.{d[1:17].ljust(16, '0')}e+{shift + len(d) - 1}"


cdef int put_array(Enc *e, object seq) except -1:
    cdef Py_ssize_t n = len(seq), i
    if n > max_array_length:
        n = max_array_length
        e.truncated += 1
    put_u8(e, T_ARRAY)
    put_u16(e, <uint16_t>n)
    for i in range(n):
        put_scalar(e, seq[i], True)
    return 0


cdef int put_key(Enc *e, object k) except -1:
    if type(k) is not str:
        k = coerced_text(k)
        counters[C_COERCED] += 1
    return put_text(e, k, 2, max_key_length)


cdef int put_attrlist(Enc *e, PyObject *attrs, PyObject *kn, PyObject **kv,
                      int reduce) except -1:
    """An attrlist (u16 count, then entries) from a dict ``attrs`` or from fastcall
    keywords ``kn``/``kv`` (no dict built), within the per-record attribute budget. At
    reduction step ``reduce`` only the first ``n >> reduce`` are kept, the rest counted
    as dropped."""
    cdef char *count_at = e.p
    cdef Py_ssize_t pos = 0, i = 0, total, keep
    cdef PyObject *k
    cdef PyObject *v
    cdef uint16_t n = 0
    put_u16(e, 0)
    if kn != NULL:
        total = PyTuple_GET_SIZE(<object>kn)
    elif attrs != NULL:
        total = PyDict_GET_SIZE(<object>attrs)
    else:
        return 0
    keep = total >> reduce
    if keep < total:
        e.dropped += <uint32_t>(total - keep)
    while i < keep:
        if kn != NULL:
            k = PyTuple_GET_ITEM(<object>kn, i)
            v = kv[i]
        elif not PyDict_Next(<object>attrs, &pos, &k, &v):
            break
        i += 1
        if e.nattrs >= e.max_attrs:
            e.dropped += 1
            continue
        put_key(e, <object>k)
        put_scalar(e, <object>v, False)
        n += 1
        e.nattrs += 1
        if e.overflow:
            return 0
    if not e.overflow:
        memcpy(count_at, &n, 2)
    return 0


cdef inline int put_attrs(Enc *e, dict attrs) except -1:
    return put_attrlist(e, <PyObject *>attrs if attrs is not None else NULL, NULL, NULL, 0)


# ---- correlation scope ---------------------------------------------------------------
cdef class Scope:
    """What every record inside a ``context()`` or span carries: the encoded context
    attributes and the current trace and span ids. Immutable; one per scope entry."""

    cdef readonly dict attrs
    cdef bytes ctx  # encoded context entries, without their count
    cdef uint16_t nctx
    cdef readonly bytes trace_id  # 16 bytes or None
    cdef readonly bytes span_id  # 8 bytes or None
    cdef readonly int trace_flags
    cdef readonly bint remote  # the span id came from a traceparent header

    def __cinit__(self):
        self.attrs = {}
        self.ctx = b""
        self.nctx = 0
        self.trace_flags = 1

    cdef _encode_ctx(self):
        cdef char buf[65536]
        cdef Enc e
        e.p = buf
        e.end = buf + sizeof(buf)
        e.overflow = False
        e.dropped = 0
        e.truncated = 0
        e.nattrs = 0
        e.max_attrs = <uint32_t>lim_attrs[0]
        e.max_value = lim_value[0]
        put_attrs(&e, self.attrs)
        if e.overflow:
            # Oversized context: keep what fits by dropping values, never fail the scope.
            self.attrs = {k: coerced_text(v)[:256] for k, v in list(self.attrs.items())[:32]}
            e.p = buf
            e.overflow = False
            e.nattrs = 0
            put_attrs(&e, self.attrs)
        memcpy(&self.nctx, buf, 2)
        self.ctx = buf[2:e.p - buf]

    def with_attrs(self, dict more):
        """A scope with these context attributes added (re-encoded once, here)."""
        merged = dict(self.attrs)
        merged.update(more)
        return make_scope(merged, self.trace_id, self.span_id, self.trace_flags, self.remote)

    def with_span(self, bytes trace_id, bytes span_id, int trace_flags=1, bint remote=False):
        """A scope in span ``span_id`` of trace ``trace_id``, with these context attributes."""
        return derive(self, trace_id, span_id, trace_flags, remote)


cpdef Scope make_scope(dict attrs, bytes trace_id=None, bytes span_id=None, int trace_flags=1,
                       bint remote=False):
    """A scope with context ``attrs`` (encoded once) and, optionally, a current span."""
    if (trace_id is None) != (span_id is None) or (
            trace_id is not None and (len(trace_id) != 16 or len(span_id) != 8)):
        raise ValueError("a scope needs both a 16-byte trace id and an 8-byte span id, "
                         "or neither")
    cdef Scope sc = Scope.__new__(Scope)
    sc.attrs = attrs if attrs is not None else {}
    sc.trace_id = trace_id
    sc.span_id = span_id
    sc.trace_flags = trace_flags & 0xFF
    sc.remote = remote
    sc._encode_ctx()
    return sc


cdef inline Scope derive(Scope parent, bytes trace_id, bytes span_id, int trace_flags,
                         bint remote):
    # Shares the parent's encoded context instead of encoding it again.
    cdef Scope sc = Scope.__new__(Scope)
    sc.attrs = parent.attrs
    sc.ctx = parent.ctx
    sc.nctx = parent.nctx
    sc.trace_id = trace_id
    sc.span_id = span_id
    sc.trace_flags = trace_flags & 0xFF
    sc.remote = remote
    return sc


cdef Scope EMPTY_SCOPE = Scope.__new__(Scope)
scope_var = ContextVar("emp_fastbuf_scope", default=EMPTY_SCOPE)
cdef object _scope_var = scope_var


cdef inline Scope current_scope():
    cdef PyObject *value = NULL
    PyContextVar_Get(_scope_var, NULL, &value)
    if value == NULL:
        return EMPTY_SCOPE
    cdef Scope s = <Scope>value
    Py_XDECREF(value)  # PyContextVar_Get gave a new reference; `s` holds its own
    return s


def current():
    """The current scope (context attributes and span ids)."""
    return current_scope()


# ---- ids -----------------------------------------------------------------------------
cdef uint64_t rng_state = 0
cdef uint64_t rng_fork_gen = 0xFFFFFFFFFFFFFFFF
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15
cdef uint64_t MIX1 = 0xBF58476D1CE4E5B9
cdef uint64_t MIX2 = 0x94D049BB133111EB


cdef uint64_t next_random() except? 0:
    """splitmix64, seeded from the OS and reseeded in a forked child (ids must differ)."""
    global rng_state, rng_fork_gen
    cdef uint64_t z
    if EFB_UNLIKELY(rng_fork_gen != fork_generation()):
        rng_fork_gen = fork_generation()
        import os
        rng_state = int.from_bytes(os.urandom(8), "little")
    rng_state += GOLDEN
    z = rng_state
    z = (z ^ (z >> 30)) * MIX1
    z = (z ^ (z >> 27)) * MIX2
    return z ^ (z >> 31)


cdef bytes new_id(int n):
    cdef uint64_t parts[2]
    parts[0] = next_random()
    parts[1] = next_random()
    while parts[0] == 0:
        parts[0] = next_random()
    return (<char *>parts)[:n]


def new_span_id():
    return new_id(8)


# ---- sampling ------------------------------------------------------------------------
# The sampler (OTEL_TRACES_SAMPLER, set by api.configure): the decision for a span with
# no parent (root_mode), and whether a span with a parent, local or remote, follows the
# parent's sampled flag instead (the parentbased_* samplers). An unsampled span gets ids
# and a scope (its children and traceparent() carry flags 00) but is never encoded.
cdef enum:
    SAMPLE_OFF = 0
    SAMPLE_ON = 1
    SAMPLE_RATIO = 2

cdef int root_mode = SAMPLE_ON
cdef bint parent_based = True
cdef uint64_t ratio_bound = 0  # SAMPLE_RATIO: kept when the trace id's low 64 bits are below

SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")


def set_sampler(str name, double ratio=1.0):
    """Use sampler ``name`` (one of ``SAMPLERS``) from now on; ``ratio`` (0..1) is the
    share of traces the two ratio samplers keep. The ratio sampler is OpenTelemetry's
    TraceIdRatioBased: a trace is kept when the low 64 bits of its id, read big-endian,
    are below ``round(ratio * 2**64)``, so every service keeps the same traces."""
    global root_mode, parent_based, ratio_bound
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    if not 0.0 <= ratio <= 1.0:  # NaN too
        raise ValueError(f"the sampler ratio must be between 0 and 1, got {ratio!r}")
    base = name.removeprefix("parentbased_")
    bound = round(ratio * (1 << 64))
    mode = SAMPLE_ON if base == "always_on" else SAMPLE_OFF if base == "always_off" else (
        SAMPLE_ON if bound >= (1 << 64) else SAMPLE_OFF if bound == 0 else SAMPLE_RATIO)
    ratio_bound = bound if mode == SAMPLE_RATIO else 0
    root_mode = mode
    parent_based = name.startswith("parentbased_")


def get_sampler():
    """(root decision: "on", "off" or "ratio", follows the parent, the ratio bound)."""
    return ({SAMPLE_OFF: "off", SAMPLE_ON: "on"}.get(root_mode, "ratio"), bool(parent_based),
            int(ratio_bound))


cdef inline uint64_t low64(bytes trace_id) noexcept:
    # The trace id's last 8 bytes as a big-endian number (the id's low 64 bits in W3C).
    cdef const uint8_t *b = <const uint8_t *>PyBytes_AS_STRING(trace_id)
    cdef uint64_t v = 0
    cdef int i
    for i in range(8, 16):
        v = (v << 8) | b[i]
    return v


cdef inline int sample_flags(Scope parent, bytes trace_id) noexcept:
    """The W3C trace flags of a new span of trace ``trace_id`` under ``parent``: the
    parent's (none for a root span), with the sampled bit as the sampler decides."""
    cdef int flags
    if parent.trace_id is None:
        flags = 0
    else:
        flags = parent.trace_flags
        if parent_based:
            return flags
    if root_mode == SAMPLE_ON:
        return flags | 1
    if root_mode == SAMPLE_RATIO and low64(trace_id) < ratio_bound:
        return flags | 1
    return flags & 0xFE


def span_flags(Scope parent not None, bytes trace_id not None):
    """The trace flags the sampler gives a new span of ``trace_id`` (16 bytes) under
    scope ``parent``: bit 0 set when it is sampled."""
    if len(trace_id) != 16:
        raise ValueError("a trace id is 16 bytes")
    return sample_flags(parent, trace_id)


# ---- the producer ------------------------------------------------------------------
cdef Ring _ring = None
cdef bint _disabled = False
cdef object _attach = None  # api-level callable: attaches to the ring on first use
cdef uint64_t _fork_gen = 0
cdef object _after_fork = None


def bind(ring, attach=None, after_fork=None, disabled=False):
    """Point the encoder at ``ring`` (api.configure calls this)."""
    global _ring, _attach, _disabled, _after_fork, _fork_gen
    _ring = ring
    _attach = attach
    _after_fork = after_fork
    _disabled = bool(disabled)
    _fork_gen = fork_generation()


cdef int ensure_ring() except -1:
    """0 when a ring is attached, 1 when telemetry is off (disabled or no ring)."""
    global _fork_gen
    if EFB_UNLIKELY(_ring is None or _fork_gen != fork_generation()):
        if _disabled:
            return 1
        if _ring is not None and _fork_gen != fork_generation():
            _fork_gen = fork_generation()
            if _after_fork is not None:
                _after_fork()
        if _ring is None:
            if _attach is None:
                return 1
            _attach()
            if _ring is None:
                return 1
    return 0


cdef inline void begin(Enc *e, char *buf, Py_ssize_t cap, int kind) noexcept:
    """Start a record of ``kind`` (0: the context, resource and instrument heads)."""
    e.p = buf
    e.end = buf + cap
    e.overflow = False
    e.dropped = 0
    e.truncated = 0
    e.nattrs = 0
    e.max_attrs = <uint32_t>lim_attrs[kind]
    e.max_value = lim_value[kind]


cdef inline void put_header(Enc *e, uint8_t kind, Scope sc, uint64_t t) noexcept:
    cdef char *p = e.p
    cdef uint8_t flags = 0
    if not room(e, 12):
        return
    if sc.trace_id is not None:
        flags = F_HAS_TRACE
        # A SPAN carries its flags in its body; other records only when they are not
        # the common "sampled" (01), so that those stay as they were.
        if sc.trace_flags != 1 and kind != K_SPAN:
            flags |= F_HAS_TRACE_FLAGS
    p[0] = <char>FORMAT_VERSION
    p[1] = <char>kind
    p[2] = <char>flags
    p[3] = 0
    memcpy(p + 4, &t, 8)
    e.p += 12
    if flags:
        put_raw(e, PyBytes_AS_STRING(sc.trace_id), 16)
        put_raw(e, PyBytes_AS_STRING(sc.span_id), 8)
        if flags & F_HAS_TRACE_FLAGS:
            put_u8(e, <uint8_t>sc.trace_flags)


cdef inline void put_ctx(Enc *e, Scope sc) noexcept:
    put_u16(e, sc.nctx)
    put_raw(e, PyBytes_AS_STRING(sc.ctx), PyBytes_GET_SIZE(sc.ctx))
    e.nattrs += sc.nctx


cdef inline Py_ssize_t finish(Enc *e, char *start) noexcept:
    """Length of the record, after inserting the limits field when anything was cut."""
    cdef Py_ssize_t n = e.p - start
    cdef Py_ssize_t at
    cdef uint16_t d, t
    if e.overflow:
        return -1
    if EFB_UNLIKELY(e.dropped or e.truncated):
        if e.end - e.p < 4:
            return -1
        at = (12 + (24 if start[2] & F_HAS_TRACE else 0)
              + (1 if start[2] & F_HAS_TRACE_FLAGS else 0))
        memmove(start + at + 4, start + at, n - at)
        d = <uint16_t>(e.dropped if e.dropped < 65535 else 65535)
        t = <uint16_t>(e.truncated if e.truncated < 65535 else 65535)
        memcpy(start + at, &d, 2)
        memcpy(start + at + 2, &t, 2)
        start[2] = start[2] | F_HAS_LIMITS
        n += 4
        counters[C_TRUNCATED] += e.truncated
        counters[C_DROPPED_ATTRS] += e.dropped
    return n


# Body writers: each encodes one whole record into the window and returns its length,
# -1 when it did not fit. ``write_record`` retries them at the lane's start, after a spin
# if configured, and with a reduced record when even the maximum size is too small.
cdef struct Call:
    PyObject *name  # str: event, span or log text
    PyObject *sev_text  # LOG: severity text
    int severity  # LOG
    PyObject *attrs  # a dict, or NULL with kn/kv
    PyObject *kn  # fastcall keyword names (a tuple) or NULL
    PyObject **kv  # fastcall keyword values
    PyObject *obj  # SPAN: the Span; METRIC: the Instrument
    PyObject *value  # METRIC HISTOGRAM: a list of floats
    int vtag  # METRIC otherwise: T_INT (ival) or T_DOUBLE (dval)
    int64_t ival
    double dval
    uint64_t t  # the record's time; 0: now

ctypedef Py_ssize_t (*body_fn)(Enc *e, char *start, Call *c, Scope sc, uint64_t t,
                               int reduce) except -2


cdef inline void init_call(Call *c) noexcept:
    c.name = NULL
    c.sev_text = NULL
    c.severity = 0
    c.attrs = NULL
    c.kn = NULL
    c.kv = NULL
    c.obj = NULL
    c.value = NULL
    c.vtag = 0
    c.ival = 0
    c.dval = 0.0
    c.t = 0


cdef int write_record(uint8_t kind, body_fn fn, Call *c, Scope sc) except -1:
    cdef Ring r = _ring
    cdef char *buf
    cdef Py_ssize_t cap, n = -1
    cdef Enc e
    cdef uint64_t t = c.t if c.t else efb_now_ns(1)
    cdef uint64_t deadline = 0
    cdef int reduce = 0, mode
    while True:
        if EFB_UNLIKELY(r.lane < 0 or r.fork_gen != fork_generation()):
            # First write, a fork, or another thread handed the lane back while the
            # block policy waited.
            if r.closed or r._ensure_lane():
                r._drop(DROP_FULL)
                counters[C_DROP_NO_LANE] += 1
                return 0
        # At the head; then at the lane's start; then in a new lane (chaining).
        for mode in range(3):
            cap = r._window(&buf, mode)
            if cap >= 0:
                begin(&e, buf, cap, kind)
                n = fn(&e, buf, c, sc, t, reduce)
                if n >= 0 or cap >= r.max_record:
                    break
        if n >= 0:
            break
        if cap < r.max_record:
            # No room anywhere: wait (block policy) or drop.
            if r._wait_room(<uint64_t>r.max_record // 4, &deadline):
                continue
            if r.closed:
                return 0
            r._drop(DROP_FULL)
            counters[C_DROP_FULL] += 1
            return 0
        # Larger than the ring's maximum record: cut it down, step by step.
        reduce += 1
        if reduce >= 8:
            r._drop(DROP_TOO_LARGE)
            counters[C_DROP_TOO_LARGE] += 1
            return 0
    r._commit(n)
    counters[kind] += 1
    counters[C_BYTES] += <uint64_t>n
    return 0


cdef inline int put_own_attrs(Enc *e, Call *c, int reduce) except -1:
    """The record's own attributes, from a dict or straight from the call's keywords."""
    return put_attrlist(e, c.attrs, c.kn, c.kv, reduce)


cdef Py_ssize_t body_event(Enc *e, char *start, Call *c, Scope sc, uint64_t t,
                           int reduce) except -2:
    put_header(e, K_EVENT, sc, t)
    put_text(e, <object>c.name, 2, max_key_length * 4)
    put_ctx(e, sc)
    put_own_attrs(e, c, reduce)
    return finish(e, start)


cdef Py_ssize_t body_log(Enc *e, char *start, Call *c, Scope sc, uint64_t t,
                         int reduce) except -2:
    cdef Py_ssize_t limit = max_body_length
    put_header(e, K_LOG, sc, t)
    put_u8(e, <uint8_t>c.severity)
    put_text(e, <object>c.sev_text, 1, 64)
    if reduce:
        limit = min(limit, max(64, (_ring.max_record >> reduce) // 4))
    put_text(e, <object>c.name, 4, limit)
    put_ctx(e, sc)
    put_own_attrs(e, c, reduce)
    return finish(e, start)


cdef Py_ssize_t body_span(Enc *e, char *start, Call *c, Scope sc, uint64_t t,
                          int reduce) except -2:
    cdef Span s = <Span>c.obj
    cdef bytes parent = s.parent_span
    cdef list events = s.events
    cdef list links = s.links
    cdef Py_ssize_t nev = len(events) if events is not None else 0
    cdef Py_ssize_t nln = len(links) if links is not None else 0
    cdef Py_ssize_t nev_all = nev, nln_all = nln
    put_header(e, K_SPAN, sc, t)
    put_text(e, s.name, 2, max_key_length * 4)
    if parent is None:
        put_u64(e, 0)
    else:
        put_raw(e, PyBytes_AS_STRING(parent), 8)
    put_u64(e, s.start_ns)
    put_u8(e, <uint8_t>s.status)
    put_u8(e, <uint8_t>s.kind)
    put_u8(e, <uint8_t>sc.trace_flags)
    put_text(e, s.message, 2, e.max_value)
    if nev > MAX_SPAN_EVENTS:
        nev = MAX_SPAN_EVENTS
    if nln > MAX_SPAN_LINKS:
        nln = MAX_SPAN_LINKS
    if reduce:
        nev >>= reduce
        nln >>= reduce
    if nev < nev_all or s.cut & 1:
        e.truncated += 1
    if nln < nln_all or s.cut & 2:
        e.truncated += 1
    put_u16(e, <uint16_t>nev)
    for i in range(nev):
        ev = events[i]
        put_text(e, ev[0], 2, max_key_length * 4)
        put_u64(e, <uint64_t>ev[1])
        put_attrs(e, ev[2])
    put_u16(e, <uint16_t>nln)
    for i in range(nln):
        ln = links[i]
        put_raw(e, PyBytes_AS_STRING(ln[0]), 16)
        put_raw(e, PyBytes_AS_STRING(ln[1]), 8)
        put_attrs(e, ln[2])
    put_ctx(e, sc)
    put_own_attrs(e, c, reduce)
    return finish(e, start)


cdef Py_ssize_t body_metric(Enc *e, char *start, Call *c, Scope sc, uint64_t t,
                            int reduce) except -2:
    cdef Instrument ins = <Instrument>c.obj
    cdef Py_ssize_t i, n
    cdef double d
    cdef list values
    put_header(e, K_METRIC, sc, t)
    put_raw(e, PyBytes_AS_STRING(ins.head), PyBytes_GET_SIZE(ins.head))
    e.truncated += ins.head_cut
    if ins.kind == I_HISTOGRAM:
        values = <list?>(<object>c.value)
        n = len(values)
        put_u32(e, <uint32_t>n)
        if room(e, 8 * n):
            for i in range(n):
                d = <double>values[i]
                memcpy(e.p, &d, 8)
                e.p += 8
        put_raw(e, PyBytes_AS_STRING(ins.bounds), PyBytes_GET_SIZE(ins.bounds))
    elif c.vtag == T_INT:
        put_u8(e, T_INT)
        put_u64(e, <uint64_t>c.ival)
    else:
        put_u8(e, T_DOUBLE)
        put_f64(e, c.dval)
    put_ctx(e, sc)
    put_own_attrs(e, c, reduce)
    return finish(e, start)


# ---- public hot paths ---------------------------------------------------------------
# emit and the log methods are METH_FASTCALL functions made by hand: keyword arguments
# are encoded straight from the call's argument vector, with no kwargs dict built.
cdef extern from *:
    """
    /* A method definition lives as long as the module: made once, bound many times. */
    static void *efb_new_def(const char *name, void *fn, const char *doc) {
        PyMethodDef *def = (PyMethodDef *)PyMem_Malloc(sizeof(PyMethodDef));
        if (!def) { PyErr_NoMemory(); return NULL; }
        def->ml_name = name;
        def->ml_meth = (PyCFunction)(void (*)(void))fn;
        def->ml_flags = METH_FASTCALL | METH_KEYWORDS;
        def->ml_doc = doc;
        return def;
    }
    static PyObject *efb_bind(void *def, PyObject *self) {
        return PyCFunction_NewEx((PyMethodDef *)def, self, NULL);
    }
    static PyObject *efb_make_fastcall(const char *name, void *fn, PyObject *self,
                                       const char *doc) {
        void *def = efb_new_def(name, fn, doc);
        return def ? efb_bind(def, self) : NULL;
    }
    """
    void *efb_new_def(const char *name, void *fn, const char *doc) except NULL
    object efb_bind(void *fn_def, object self)
    object efb_make_fastcall(const char *name, void *fn, object self, const char *doc)


cdef object emit_fast(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    cdef Call c
    if nargs != 1:
        raise TypeError(f"emit() takes 1 positional argument (the event name), {nargs} given")
    if not PyUnicode_CheckExact(<object>args[0]):
        raise TypeError(f"event name must be a str, not {type(<object>args[0]).__name__}")
    if ensure_ring():
        return None
    init_call(&c)
    c.name = args[0]
    if kwnames != NULL:
        c.kn = kwnames
        c.kv = args + 1
    try:
        write_record(K_EVENT, body_event, &c, current_scope())
    except Exception:
        counters[C_ERRORS] += 1
    return None


emit = efb_make_fastcall(
    "emit", <void *>emit_fast, None,
    "emit(name, /, **attributes)\n--\n\nRecord an event ``name``: the fastest path.")


cdef int _log(int severity, object sev_text, object msg, PyObject *attrs, PyObject *kn,
              PyObject **kv, uint64_t t=0) except -1:
    cdef Call c
    if not PyUnicode_CheckExact(msg):
        msg = coerced_text(msg)
        counters[C_COERCED] += 1
    if ensure_ring():
        return 0
    init_call(&c)
    c.severity = severity
    c.sev_text = <PyObject *>sev_text
    c.name = <PyObject *>msg
    c.attrs = attrs
    c.kn = kn
    c.kv = kv
    c.t = t
    try:
        write_record(K_LOG, body_log, &c, current_scope())
    except Exception:
        counters[C_ERRORS] += 1
    return 0


cdef object log_fast(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    # self is the severity number (a Python int) the function was made with.
    if nargs != 1:
        raise TypeError(f"log methods take 1 positional argument (the message), {nargs} given")
    cdef int sev = self
    _log(sev, _SEVERITY_TEXT[sev], <object>args[0], NULL, kwnames,
         args + 1 if kwnames != NULL else NULL)
    return None


def log_record(int severity, str severity_text, msg, dict attrs, uint64_t time_unix_nano=0):
    """A log record with an explicit severity and, optionally, its original time in ns
    (0: now). Used by the logging bridges."""
    if not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be 0..{MAX_SEVERITY}, got {severity}")
    _log(severity, severity_text, msg, <PyObject *>attrs, NULL, NULL, time_unix_nano)


def log_record_raised(int severity, str severity_text, msg, dict attrs, int value_length):
    """``log_record`` (time: now) with the string value limit raised to ``value_length``
    characters for this one record (a crash record's stack trace); the limit in force is
    back before this returns. No other Python code runs in between, unless an on-full
    wait (``block:<ms>``) releases the GIL: then a record another thread writes meanwhile
    gets the raised limit too."""
    if not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be 0..{MAX_SEVERITY}, got {severity}")
    if not 1 <= value_length <= (1 << 24):
        raise ValueError(f"value_length must be 1..{1 << 24}, got {value_length}")
    cdef int saved = lim_value[K_LOG]
    if value_length > saved:
        lim_value[K_LOG] = value_length
    try:
        _log(severity, severity_text, msg, <PyObject *>attrs, NULL, NULL, 0)
    finally:
        lim_value[K_LOG] = saved


cdef class Log:
    """``fastbuf.log``: ``debug``/``info``/``warning``/``error``/``critical`` (severity
    numbers 5, 9, 13, 17, 21) take a message and keyword attributes."""

    cdef readonly object debug
    cdef readonly object info
    cdef readonly object warning
    cdef readonly object warn
    cdef readonly object error
    cdef readonly object critical

    def __cinit__(self):
        self.debug = efb_make_fastcall("debug", <void *>log_fast, SEVERITY_DEBUG,
                                       "debug(msg, **attributes)")
        self.info = efb_make_fastcall("info", <void *>log_fast, SEVERITY_INFO,
                                      "info(msg, **attributes)")
        self.warning = efb_make_fastcall("warning", <void *>log_fast, SEVERITY_WARN,
                                         "warning(msg, **attributes)")
        self.warn = self.warning
        self.error = efb_make_fastcall("error", <void *>log_fast, SEVERITY_ERROR,
                                       "error(msg, **attributes)")
        self.critical = efb_make_fastcall("critical", <void *>log_fast, SEVERITY_FATAL,
                                          "critical(msg, **attributes)")

    def exception(self, msg, **attrs):
        """An ERROR record with ``exception.type``, ``exception.message`` and
        ``exception.stacktrace`` of the exception being handled."""
        import sys
        import traceback
        exc = sys.exc_info()[1]
        if exc is not None:
            attrs.setdefault("exception.type", type(exc).__qualname__)
            attrs.setdefault("exception.message", str(exc))
            attrs.setdefault("exception.stacktrace",
                             "".join(traceback.format_exception(exc)))
        _log(SEVERITY_ERROR, _SEVERITY_TEXT[SEVERITY_ERROR], msg, <PyObject *>attrs, NULL, NULL)


# Called by Span.__exit__ for an exception leaving the span, while the span's scope is
# still current: ``hook(exc_type, exc, tb)`` returns the exception event's attributes, or
# None for the default ones (set by ``producer.crash``; None: no hook).
cdef object _span_exception_hook = None


def set_span_exception_hook(hook):
    """Set (or, with None, clear) the hook ``Span.__exit__`` calls for an exception."""
    global _span_exception_hook
    if hook is not None and not callable(hook):
        raise TypeError("the span exception hook must be callable or None")
    _span_exception_hook = hook


def write_span(str name, bytes trace_id, bytes span_id, bytes parent_span_id,
               uint64_t start_ns, uint64_t end_ns, int status, int kind, str message,
               dict attrs, list events=None, list links=None, int trace_flags=1):
    """Write a finished span with explicit ids and times (used by the OpenTelemetry
    bridge). Ids are 16 and 8 bytes; events are ``(name, time_ns, attrs)``, links
    ``(trace_id, span_id, attrs)``. A span whose ``trace_flags`` say unsampled (bit 0
    clear) is counted in ``unsampled_spans`` and not written."""
    if len(trace_id) != 16 or len(span_id) != 8 or (
            parent_span_id is not None and len(parent_span_id) != 8):
        raise ValueError("trace_id must be 16 bytes, span ids 8 bytes")
    if not 0 <= status <= MAX_STATUS_CODE or not 0 <= kind <= MAX_SPAN_KIND:
        raise ValueError(f"status must be 0..{MAX_STATUS_CODE} and kind 0..{MAX_SPAN_KIND} "
                         f"(OTLP numbering)")
    if not trace_flags & 1:
        counters[C_UNSAMPLED] += 1
        return
    if ensure_ring():
        return
    cdef Span s = Span.__new__(Span)
    s.name = name
    s.attrs = attrs
    s.parent_span = parent_span_id
    s.start_ns = start_ns
    s.status = status
    s.kind = kind
    s.message = message
    s.events = events
    s.links = links
    s.scope = derive(current_scope(), trace_id, span_id, trace_flags, False)
    s._write(end_ns)


cdef class Span:
    """A span: ``with fastbuf.span(name, **attrs) as s``. Nested spans are children;
    an exception that leaves the span ends it with status error."""

    cdef readonly str name
    cdef dict attrs
    cdef Scope scope
    cdef bytes parent_span
    cdef object token
    cdef uint64_t start_ns
    cdef int status
    cdef str message
    cdef public int kind
    cdef list events
    cdef list links
    cdef int cut  # bit 0: add_event, bit 1: add_link refused one beyond the limit
    cdef bint ended

    def __cinit__(self):
        self.status = STATUS_UNSET
        self.kind = SPAN_KIND_INTERNAL
        self.message = ""

    def __init__(self, name, **attrs):
        if type(name) is not str:
            raise TypeError(f"span name must be a str, not {type(name).__name__}")
        self.name = name
        self.attrs = attrs

    def __enter__(self):
        cdef Scope parent = current_scope()
        cdef bytes trace_id = parent.trace_id
        if trace_id is None:
            trace_id = new_id(16)
        cdef int flags = sample_flags(parent, trace_id)
        self.parent_span = parent.span_id
        self.scope = derive(parent, trace_id, new_id(8), flags, False)
        self.token = PyContextVar_Set(_scope_var, self.scope)
        if flags & 1:  # an unsampled span is never written: no clock to read
            self.start_ns = efb_now_ns(1)
        return self

    def __exit__(self, exc_type, exc, tb):
        cdef uint64_t end_ns = 0
        if self.scope is not None and self.scope.trace_flags & 1:
            end_ns = efb_now_ns(1)
        if exc is not None and self.status != STATUS_OK:
            self.status = STATUS_ERROR
            try:
                self.message = f"{type(exc).__name__}: {exc}"
            except Exception:
                self.message = type(exc).__name__
            event = None
            hook = _span_exception_hook
            if hook is not None:
                try:
                    event = hook(exc_type, exc, tb)  # under this span's scope, still current
                except Exception:
                    event = None
            if type(event) is not dict:
                event = {
                    "exception.type": type(exc).__qualname__,
                    "exception.message": self.message,
                }
            self.add_event("exception", **event)
        if self.token is not None:
            try:
                PyContextVar_Reset(_scope_var, self.token)
            except ValueError:
                pass  # exited in another context (e.g. a generator): nothing to restore
            self.token = None
        if not self.ended:
            self.ended = True
            self._write(end_ns)
        return False

    cdef _write(self, uint64_t end_ns):
        cdef Call c
        if not self.scope.trace_flags & 1:
            counters[C_UNSAMPLED] += 1
            return
        if ensure_ring():
            return
        init_call(&c)
        c.obj = <PyObject *>self
        c.attrs = <PyObject *>self.attrs if self.attrs is not None else NULL
        c.t = end_ns
        try:
            write_record(K_SPAN, body_span, &c, self.scope)
        except Exception:
            counters[C_ERRORS] += 1

    def end(self):
        """Write the span now (``with`` does this; for spans used without ``with``)."""
        if self.ended or self.scope is None:
            return
        self.ended = True
        self._write(efb_now_ns(1) if self.scope.trace_flags & 1 else 0)

    def set(self, **attrs):
        """Add or replace attributes."""
        if self.attrs is None:
            self.attrs = attrs
        else:
            self.attrs.update(attrs)
        return self

    def set_status(self, str status, str message not None=""):
        """``"ok"``, ``"error"`` or ``"unset"``."""
        codes = {"unset": STATUS_UNSET, "ok": STATUS_OK, "error": STATUS_ERROR}
        if status not in codes:
            raise ValueError(f"status must be one of {sorted(codes)}, got {status!r}")
        self.status = codes[status]
        self.message = message

    def add_event(self, str name not None, **attrs):
        """A timestamped event inside the span (at most 128 are kept; the record counts
        one truncated value when more were added)."""
        if self.events is None:
            self.events = []
        if len(self.events) < MAX_SPAN_EVENTS:
            self.events.append((name, efb_now_ns(1), attrs))
        else:
            self.cut |= 1

    def add_link(self, bytes trace_id, bytes span_id, **attrs):
        """A link to another span (at most 128 are kept; the record counts one truncated
        value when more were added)."""
        if len(trace_id) != 16 or len(span_id) != 8:
            raise ValueError("a link needs a 16-byte trace id and an 8-byte span id")
        if self.links is None:
            self.links = []
        if len(self.links) < MAX_SPAN_LINKS:
            self.links.append((trace_id, span_id, attrs))
        else:
            self.cut |= 2

    @property
    def trace_id(self):
        """Lowercase hex, once entered."""
        return self.scope.trace_id.hex() if self.scope is not None else None

    @property
    def span_id(self):
        return self.scope.span_id.hex() if self.scope is not None else None

    @property
    def parent_span_id(self):
        return self.parent_span.hex() if self.parent_span is not None else None

    @property
    def sampled(self):
        """Whether the sampler kept the span (it is written when it ends), once entered."""
        return bool(self.scope.trace_flags & 1) if self.scope is not None else None


cdef object span_fast(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    cdef Span s
    cdef Py_ssize_t i, n
    if nargs != 1:
        raise TypeError(f"span() takes 1 positional argument (the name), {nargs} given")
    if not PyUnicode_CheckExact(<object>args[0]):
        raise TypeError(f"span name must be a str, not {type(<object>args[0]).__name__}")
    s = Span.__new__(Span)
    s.name = <str>args[0]
    if kwnames != NULL:
        n = PyTuple_GET_SIZE(<object>kwnames)
        d = {}
        for i in range(n):
            d[<object>PyTuple_GET_ITEM(<object>kwnames, i)] = <object>args[1 + i]
        s.attrs = d
    return s


span = efb_make_fastcall(
    "span", <void *>span_fast, None,
    "span(name, /, **attributes)\n--\n\n``with fastbuf.span(\"denoise\", steps=30) as s: ...``")


INSTRUMENT_METHODS = {I_COUNTER: "inc", I_UPDOWNCOUNTER: "add", I_GAUGE: "set",
                      I_HISTOGRAM: "record"}


cdef double int_to_double(object v) except? -1.0:
    """An int beyond 64 bits as a double; beyond the double range (about 1.8e308) the
    largest finite double of its sign, counted as coerced."""
    try:
        return float(v)
    except OverflowError:
        counters[C_COERCED] += 1
        return -DBL_MAX if v < 0 else DBL_MAX


cdef object _metric_call(object self, PyObject **args, Py_ssize_t nargs,
                         PyObject *kwnames, int op):
    # op: the instrument the method belongs to (inc: COUNTER, add: UPDOWNCOUNTER, set:
    # GAUGE, record: HISTOGRAM); a counter also takes add.
    cdef Instrument ins = <Instrument>self
    cdef Call c
    cdef object value
    cdef int overflow = 0
    cdef long long iv
    if op != ins.kind and not (op == I_COUNTER and ins.kind == I_UPDOWNCOUNTER):
        raise TypeError(f"{ins.name!r} is a {_INSTRUMENT_NAMES[ins.kind]}: use "
                        f"{INSTRUMENT_METHODS[ins.kind]}(), not {INSTRUMENT_METHODS[op]}()")
    if nargs > 1:
        raise TypeError(f"takes at most 1 positional argument (the value), {nargs} given")
    init_call(&c)
    if nargs == 0:
        if op != I_COUNTER:
            raise TypeError("missing the value")
        c.vtag = T_INT
        c.ival = 1
    else:
        value = <object>args[0]
        if not PyLong_CheckExact(value) and not PyFloat_CheckExact(value):
            value = ins._number(value)
        if PyFloat_CheckExact(value):
            c.vtag = T_DOUBLE
            c.dval = PyFloat_AS_DOUBLE(value)
        else:
            iv = PyLong_AsLongLongAndOverflow(value, &overflow)
            if overflow:
                c.vtag = T_DOUBLE
                c.dval = int_to_double(value)
            else:
                c.vtag = T_INT
                c.ival = iv
    if op == I_COUNTER and ins.kind == I_COUNTER and (
            c.ival < 0 if c.vtag == T_INT else not c.dval >= 0):
        counters[C_COERCED] += 1  # a counter never goes down: ignored, counted
        return None
    if ensure_ring():
        return None
    if op == I_HISTOGRAM:
        value = [c.dval if c.vtag == T_DOUBLE else <double>c.ival]
        c.value = <PyObject *>value
    c.obj = <PyObject *>ins
    if kwnames != NULL:
        c.kn = kwnames
        c.kv = args + nargs
    try:
        write_record(K_METRIC, body_metric, &c, current_scope())
    except Exception:
        counters[C_ERRORS] += 1
    return None


cdef object inc_fast(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    return _metric_call(self, args, nargs, kwnames, I_COUNTER)


cdef object add_fast(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    return _metric_call(self, args, nargs, kwnames, I_UPDOWNCOUNTER)


cdef object set_fast(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    return _metric_call(self, args, nargs, kwnames, I_GAUGE)


cdef object record_fast(object self, PyObject **args, Py_ssize_t nargs, PyObject *kwnames):
    return _metric_call(self, args, nargs, kwnames, I_HISTOGRAM)


cdef void *INC_DEF = efb_new_def("inc", <void *>inc_fast,
                                 "inc(amount=1, **attributes): add to a counter")
cdef void *ADD_DEF = efb_new_def("add", <void *>add_fast,
                                 "add(amount, **attributes): add to an up-down counter")
cdef void *SET_DEF = efb_new_def("set", <void *>set_fast,
                                 "set(value, **attributes): the gauge's current value")
cdef void *RECORD_DEF = efb_new_def("record", <void *>record_fast,
                                    "record(value, **attributes): one observation")


cdef class Instrument:
    """A metric instrument; updates are records the drainer aggregates."""

    cdef readonly str name  # as given (records carry it truncated to the limits)
    cdef readonly str unit
    cdef readonly str description
    cdef readonly int kind
    cdef bytes head  # encoded: u8 instrument, str16 name, str8 unit, str16 description
    cdef uint32_t head_cut  # values truncated in head: counted in every record
    cdef bytes bounds  # HISTOGRAM: encoded u16 n_bounds + f64s
    # Update methods are METH_FASTCALL functions bound to the instrument (no kwargs dict).
    cdef readonly object inc  # COUNTER: inc(amount=1, **attrs); negative amounts ignored
    cdef readonly object add  # UPDOWNCOUNTER: add(amount, **attrs)
    cdef readonly object set  # GAUGE: set(value, **attrs)
    cdef readonly object record  # HISTOGRAM: record(value, **attrs)

    def __cinit__(self, int kind, str name, str unit="", str description="", bounds=None):
        cdef char buf[4096]
        cdef Enc e
        if not I_COUNTER <= kind <= I_HISTOGRAM:
            raise ValueError(f"instrument kind must be {I_COUNTER}..{I_HISTOGRAM}, got {kind}")
        self.kind = kind
        self.name = name
        self.unit = unit
        self.description = description
        begin(&e, buf, sizeof(buf), 0)
        put_u8(&e, <uint8_t>kind)
        # Within both a character and a UTF-8 byte limit, so that the head (at most
        # 3,333 bytes) fits the buffer and leaves room in every record.
        put_text_cut(&e, name, 2, max_key_length * 4, MAX_INSTRUMENT_NAME_BYTES)
        put_text_cut(&e, unit, 1, 63, 255)
        put_text_cut(&e, description, 2, 1024, MAX_INSTRUMENT_DESCRIPTION_BYTES)
        if e.overflow:
            raise AssertionError("instrument head does not fit its buffer")
        self.head = buf[:e.p - buf]
        self.head_cut = e.truncated
        begin(&e, buf, sizeof(buf), 0)
        if bounds is None:
            put_u16(&e, 0)
        else:
            bl = [float(b) for b in bounds]
            if (not bl or len(bl) > 256 or any(b != b for b in bl)
                    or any(not (a < b) for a, b in zip(bl, bl[1:]))):
                raise ValueError("histogram bounds must be 1 to 256 strictly increasing "
                                 "numbers")
            put_u16(&e, <uint16_t>len(bl))
            for b in bl:
                put_f64(&e, b)
        self.bounds = buf[:e.p - buf]
        self.inc = efb_bind(INC_DEF, self)
        self.add = efb_bind(ADD_DEF, self)
        self.set = efb_bind(SET_DEF, self)
        self.record = efb_bind(RECORD_DEF, self)

    cdef int _update(self, list values, dict attrs) except -1:
        """A HISTOGRAM record of ``values`` (record_many)."""
        cdef Call c
        if ensure_ring():
            return 0
        init_call(&c)
        c.obj = <PyObject *>self
        c.value = <PyObject *>values
        if attrs:
            c.attrs = <PyObject *>attrs
        try:
            write_record(K_METRIC, body_metric, &c, current_scope())
        except Exception:
            counters[C_ERRORS] += 1
        return 0

    cdef object _number(self, value):
        if type(value) is float:
            return value
        if type(value) is int:
            return value if -(1 << 63) <= value < (1 << 63) else int_to_double(value)
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, (str, bytes, bytearray)):
            raise TypeError(f"metric value must be a number, not {type(value).__name__}")
        try:
            return value.__index__() if hasattr(value, "__index__") else float(value)
        except OverflowError:  # a number beyond the double range (Fraction(10**400))
            counters[C_COERCED] += 1
            try:
                return -DBL_MAX if value < 0 else DBL_MAX
            except Exception:
                return DBL_MAX
        except Exception:
            raise TypeError(f"metric value must be a number, not {type(value).__name__}")

    def record_many(self, values, **attrs):
        """HISTOGRAM: many observations in one call (a numpy array or a sequence),
        split over several records only when they exceed the record size."""
        if self.kind != I_HISTOGRAM:
            raise TypeError(f"{self.name!r} is a {_INSTRUMENT_NAMES[self.kind]}: "
                            f"record_many() is for histograms")
        try:
            if hasattr(values, "tolist"):
                vals = values.tolist()
            else:
                vals = list(values)
            try:
                vals = [float(v) for v in vals]
            except OverflowError:  # an int beyond the double range: saturated, counted
                vals = [int_to_double(v) if isinstance(v, int) else float(v) for v in vals]
        except Exception:
            raise TypeError("record_many takes a sequence or array of numbers")
        cdef Py_ssize_t chunk = 4096
        if _ring is not None:
            chunk = max(1, (_ring.max_record - 1024) // 8)
        cdef Py_ssize_t i
        for i in range(0, len(vals), chunk):
            self._update(vals[i:i + chunk], attrs)


def encode_resource(dict attrs, str scope_name="emp_fastbuf", str scope_version=""):
    """The resource blob a producer publishes in its lane's metadata."""
    cdef char buf[8192]
    cdef Enc e
    begin(&e, buf, sizeof(buf), 0)
    put_u8(&e, FORMAT_VERSION)
    put_u8(&e, K_RESOURCE)
    put_text(&e, scope_name, 2, 256)
    put_text(&e, scope_version, 2, 256)
    put_attrs(&e, attrs)
    if e.overflow:
        raise ValueError("resource attributes do not fit in 8 KiB")
    return buf[:e.p - buf]
