# METRIC records: the one native parser of their body (``parse_metric``, which the store's
# rows use too), and ``metric_points``, which turns them into the points the agent's
# metrics aggregation takes (``agent.otlp.metrics.MetricsAggregator.feed_points``), so
# that the agent never decodes a metric record in Python.

ctypedef struct MetricFields:
    uint8_t instrument
    const uint8_t *name
    Py_ssize_t nl
    const uint8_t *unit
    Py_ssize_t ul
    const uint8_t *desc    # the description
    Py_ssize_t dl
    uint8_t tag            # COUNTER, UPDOWNCOUNTER, GAUGE: T_INT or T_DOUBLE
    const uint8_t *vals    # the value's 8 bytes, or the histogram's ``count`` f64s
    Py_ssize_t count       # HISTOGRAM: 1..MAX_HISTOGRAM_VALUES
    const uint8_t *bounds  # HISTOGRAM: ``nb`` f64s, strictly increasing, no NaN
    Py_ssize_t nb
    Py_ssize_t tail        # where the context and the attributes start


cdef int parse_metric(const uint8_t *p, Py_ssize_t n, const Head *h, State *s,
                      MetricFields *f) noexcept:
    """A METRIC record past its header ``h``, as ``parse_log`` and ``parse_span`` parse
    theirs; the values and bounds are left in the record's bytes (little-endian f64s)."""
    cdef Py_ssize_t pos = h.pos, i
    cdef double d, prev = 0.0
    f.tag = 0
    f.count = f.nb = 0
    f.vals = f.bounds = NULL
    if pos >= n:
        return R_BAD
    f.instrument = p[pos]
    if f.instrument < I_COUNTER or f.instrument > I_HISTOGRAM:
        return R_BAD
    pos = str16(p, pos + 1, n, &f.name, &f.nl)
    if pos < 0 or pos >= n:
        return R_BAD
    f.ul = p[pos]
    pos += 1
    if f.ul > n - pos or not utf8_ok(p + pos, f.ul):
        return R_BAD
    f.unit = p + pos
    pos = str16(p, pos + f.ul, n, &f.desc, &f.dl)
    if pos < 0:
        return R_BAD
    if f.instrument != I_HISTOGRAM:
        if pos + 9 > n:
            return R_BAD
        f.tag = p[pos]
        if f.tag != T_INT and f.tag != T_DOUBLE:
            return R_BAD
        f.vals = p + pos + 1
        pos += 9
    else:
        if pos + 4 > n:
            return R_BAD
        f.count = rd32(p + pos)
        pos += 4
        if f.count < 1 or f.count > MAX_HISTOGRAM_VALUES or f.count * 8 > n - pos:
            return R_BAD
        f.vals = p + pos
        pos += f.count * 8
        if pos + 2 > n:
            return R_BAD
        f.nb = rd16(p + pos)
        pos += 2
        if f.nb * 8 > n - pos:
            return R_BAD
        f.bounds = p + pos
        for i in range(f.nb):
            d = rdf64(f.bounds + 8 * i)
            if d != d or (i and not prev < d):
                return R_BAD
            prev = d
        pos += f.nb * 8
    f.tail = pos
    return parse_tail(p, pos, n, s)


cdef tuple FROZEN_NAN = ("float", "nan")
cdef tuple FROZEN_NONE = ("none", None)


cdef object freeze_value(object v):
    """``otlp._freeze_value`` of a decoded value: tagged with its type (``1``, ``1.0``
    and ``True`` differ), NaN equal to itself."""
    cdef type t = type(v)
    if t is str:
        return ("str", v)
    if t is int:
        return ("int", v)
    if t is float:
        return FROZEN_NAN if <double>v != <double>v else ("float", v)
    if t is bool:
        return ("bool", v)
    if t is bytes:
        return ("bytes", v)
    if t is list:
        return ("list", tuple([freeze_value(x) for x in <list>v]))
    return FROZEN_NONE


cdef class _Points(_Parser):
    """The parsing state and caches of one ``metric_points`` call."""
    # The frozen key of each attribute section (context and attributes, as bytes) seen:
    # records mostly repeat a few attribute sets, and equal bytes are equal attributes.
    cdef dict keys

    def __cinit__(self):
        self.keys = {}

    cdef tuple attributes(self, const uint8_t *p, Py_ssize_t n, Py_ssize_t tail):
        """``otlp.record_attributes`` of the parsed record, as a new dict, and its
        ``otlp.freeze_attributes`` key; ``p[tail:n]`` holds them."""
        cdef State *s = &self.st
        cdef const EntList *attrs = &s.own
        cdef const Ent *e
        cdef Py_ssize_t i
        cdef dict out = {}
        cdef list pairs = None
        if s.ctx.n:
            if merge_record_attrs(s) != R_OK:
                raise MemoryError()
            attrs = &s.merged
        if attrs.n == 0:
            return out, ()
        section = PyBytes_FromStringAndSize(<const char *>p + tail, n - tail)
        frozen = self.keys.get(section)
        if frozen is None:
            pairs = []
        for i in range(attrs.n):
            e = &attrs.items[i]
            key = PyUnicode_DecodeUTF8(<const char *>e.key, e.klen, NULL)
            value = py_scalar(e.tag, e.val, e.vlen)
            out[key] = value
            if pairs is not None:
                pairs.append((key, freeze_value(value)))
        if pairs is not None:
            pairs.sort()  # the keys are distinct: only they are compared
            frozen = tuple(pairs)
            self.keys[section] = frozen
        return out, frozen

    cdef tuple point(self, const uint8_t *p, Py_ssize_t n):
        """The point of one METRIC record, or None when it is malformed."""
        cdef Head h
        cdef MetricFields f
        cdef Py_ssize_t i
        cdef int r
        if not parse_head(p, n, &h):
            return None
        r = parse_metric(p, n, &h, &self.st, &f)
        if r == R_NOMEM:
            raise MemoryError()
        if r != R_OK:
            return None
        if f.instrument != I_HISTOGRAM:
            value = <int64_t>rd64(f.vals) if f.tag == T_INT else rdf64(f.vals)
            bounds = None
        else:
            value = [rdf64(f.vals + 8 * i) for i in range(f.count)]
            bounds = tuple([rdf64(f.bounds + 8 * i) for i in range(f.nb)])
        attributes, key = self.attributes(p, n, f.tail)
        return (
            h.time, f.instrument, self.cached(S_NAME, f.name, f.nl),
            self.cached(S_UNIT, f.unit, f.ul), self.cached(S_DESC, f.desc, f.dl),
            attributes, key, value, bounds,
        )


def metric_points(records, redactor=None):
    """The METRIC records among ``records`` (the raw records of one chunk), parsed natively
    into the points ``MetricsAggregator.feed_points`` takes.

    Returns ``(points, rejected)``. ``points`` has one tuple per valid METRIC record, in
    input order: ``(time_unix_nano, instrument, name, unit, description, attributes,
    attributes_key, value, bounds)``, equal (types included) to ``metrics.metric_point``
    of ``reference.decode_record(raw)``: ``attributes`` is a new dict, the context first
    (``job_id`` as ``emp.job_id``) then the record's own, and ``attributes_key`` its
    ``otlp.freeze_attributes``; ``value`` is the int or float of a sum or gauge, or the
    list of a histogram's values; ``bounds`` is the tuple of a histogram's explicit
    bounds (empty for the default ones), None for the others.
    ``rejected`` counts the METRIC records (kind byte 4) that ``reference.decode_record``
    rejects; records of the other kinds, or too short to have one, are skipped unchecked.

    ``records`` is an iterable of ``bytes``; anything else raises ``TypeError``. With a
    ``Redactor``, the attributes' secrets are replaced (and counted there).
    """
    cdef list points = []
    cdef Py_ssize_t rejected = 0
    cdef _Points parser = _Points()
    parser.use(redactor)
    cdef const uint8_t *p
    cdef Py_ssize_t n
    cdef tuple out
    for raw in records:
        if not PyBytes_Check(raw):
            raise TypeError(f"records must be bytes, not {type(raw).__name__}")
        p = <const uint8_t *>PyBytes_AS_STRING(raw)
        n = PyBytes_GET_SIZE(raw)
        if n < 2 or p[1] != K_METRIC:
            continue
        out = parser.point(p, n)
        if out is None:
            rejected += 1
        else:
            points.append(out)
    return points, rejected
