# Redaction of secrets (docs/configuration.md, "Redaction"): the rules, matched on the
# raw bytes of the records so that the exporters and the store never see a secret.
#
# - A key matches a word of the list when, compared case-insensitively with ``-``, ``.``
#   and spaces read as ``_``, it ends with the word (``db_password``, ``githubToken``) or
#   holds it as a whole word (``password_hint``, ``x_api_key_id``); ``tokenizer`` does not
#   hold ``token``. A glob (``*`` and ``?``) matches the whole key. A kept key (``!key``)
#   is never matched. The value of a matching key, of any type, becomes ``MARKER``.
# - In a string value, the user info of a URL (``https://user:pass@host``) becomes
#   ``MARKER``; in a log body, so does the value of an ``Authorization`` header.
#
# The lists' values point into the records' bytes, which are read-only: a rewritten value
# goes to a scratch buffer of the parser's state, sized first (``text_size``) so that no
# pointer into it moves while the record is written.

cdef const char *MARKER = b"<redacted>"
cdef str MARKER_STR = "<redacted>"
cdef enum:
    MARKER_LEN = 10
    AUTH_LEN = 13       # len("authorization")
    SLOTS = 1024        # the key cache (a power of two); cleared when half full
    SLOT_KEY = 54       # longer keys are matched every time, not cached


ctypedef struct KeySlot:
    uint64_t h
    uint8_t state       # 0 empty, 1 kept, 2 redacted
    uint8_t klen
    uint8_t key[SLOT_KEY]


ctypedef struct Rules:
    const uint8_t **words   # normalized (see ``norm``), as are the globs and kept keys
    Py_ssize_t *wlen
    Py_ssize_t n_words
    const uint8_t **globs
    Py_ssize_t *glen
    Py_ssize_t n_globs
    const uint8_t **keep
    Py_ssize_t *klen
    Py_ssize_t n_keep
    KeySlot *slots
    Py_ssize_t used
    # What was redacted: values of matching keys, URL credentials, Authorization values.
    uint64_t n_attributes
    uint64_t n_urls
    uint64_t n_headers


cdef inline uint8_t norm(uint8_t c) noexcept:
    if 65 <= c <= 90:
        return c + 32
    if c == 45 or c == 46 or c == 32:  # '-', '.', ' '
        return 95  # '_'
    return c


cdef inline bint same_at(const uint8_t *k, Py_ssize_t at, const uint8_t *w,
                         Py_ssize_t wl) noexcept:
    cdef Py_ssize_t i
    for i in range(wl):
        if norm(k[at + i]) != w[i]:
            return False
    return True


cdef bint holds_word(const uint8_t *k, Py_ssize_t kl, const uint8_t *w, Py_ssize_t wl) noexcept:
    """``w`` ends ``k`` or stands in it as a whole word (between ``_``s or the start)."""
    cdef Py_ssize_t at
    if wl > kl:
        return False
    if same_at(k, kl - wl, w, wl):
        return True
    for at in range(kl - wl):
        if (at == 0 or norm(k[at - 1]) == 95) and norm(k[at + wl]) == 95 \
                and same_at(k, at, w, wl):
            return True
    return False


cdef bint glob_match(const uint8_t *k, Py_ssize_t kl, const uint8_t *g, Py_ssize_t gl) noexcept:
    """``g`` (``*``: any run, ``?``: one byte) matches all of ``k``; backtracks to the last
    star only, so it is linear in practice."""
    cdef Py_ssize_t i = 0, j = 0, star = -1, mark = 0
    while i < kl:
        if j < gl and (g[j] == 63 or g[j] == norm(k[i])):
            i += 1
            j += 1
        elif j < gl and g[j] == 42:
            star = j
            mark = i
            j += 1
        elif star >= 0:
            j = star + 1
            mark += 1
            i = mark
        else:
            return False
    while j < gl and g[j] == 42:
        j += 1
    return j == gl


cdef bint decide(const Rules *r, const uint8_t *k, Py_ssize_t kl) noexcept:
    cdef Py_ssize_t i
    for i in range(r.n_keep):
        if r.klen[i] == kl and same_at(k, 0, r.keep[i], kl):
            return False
    for i in range(r.n_words):
        if holds_word(k, kl, r.words[i], r.wlen[i]):
            return True
    for i in range(r.n_globs):
        if glob_match(k, kl, r.globs[i], r.glen[i]):
            return True
    return False


cdef bint key_redacted(Rules *r, const uint8_t *k, Py_ssize_t kl) noexcept:
    """Whether the value of key ``k`` is replaced; the answer is cached per key, since
    records repeat a few keys."""
    cdef uint64_t h
    cdef size_t slot
    cdef KeySlot *e
    cdef bint out
    if kl > SLOT_KEY or r.slots == NULL:
        return decide(r, k, kl)
    h = key_hash(k, kl)  # the attribute lists' hash (_parse.pxi)
    slot = <size_t>h & (SLOTS - 1)
    while True:
        e = &r.slots[slot]
        if e.state == 0:
            break
        if e.h == h and e.klen == kl and memcmp(e.key, k, kl) == 0:
            return e.state == 2
        slot = (slot + 1) & (SLOTS - 1)
    out = decide(r, k, kl)
    if 2 * r.used >= SLOTS:
        memset(r.slots, 0, SLOTS * sizeof(KeySlot))
        r.used = 0
        slot = <size_t>h & (SLOTS - 1)
        e = &r.slots[slot]
    e.h = h
    e.klen = <uint8_t>kl
    memcpy(e.key, k, kl)
    e.state = 2 if out else 1
    r.used += 1
    return out


# ---- secrets inside text ----------------------------------------------------------------
cdef inline bint is_marker(const uint8_t *v, Py_ssize_t n) noexcept:
    """``v`` is ``MARKER`` already (a record redacted twice): not counted again."""
    return n == MARKER_LEN and memcmp(v, MARKER, MARKER_LEN) == 0


cdef inline bint value_end(uint8_t c) noexcept:
    """Ends an unquoted header value: a line end or a delimiter of the text around it."""
    return c == 10 or c == 13 or c == 34 or c == 39 or c == 44 or c == 59 or c == 125 \
        or c == 93 or c == 38


cdef inline bint authority_end(uint8_t c) noexcept:
    """Ends a URL's authority: ``/ ? #``, white space, quotes and brackets."""
    return c == 47 or c == 63 or c == 35 or c <= 32 or c == 34 or c == 39 or c == 60 \
        or c == 62 or c == 41 or c == 93 or c == 125


cdef inline Py_ssize_t find(const uint8_t *v, Py_ssize_t n, Py_ssize_t i, int c) noexcept:
    """The next ``c`` of ``v`` from ``i`` on (memchr: the scan is nearly free), else ``n``."""
    cdef const uint8_t *hit
    if i >= n:
        return n
    hit = <const uint8_t *>memchr(v + i, c, n - i)
    return n if hit == NULL else hit - v


cdef Py_ssize_t userinfo(const uint8_t *v, Py_ssize_t n, Py_ssize_t j, Py_ssize_t *s0,
                         Py_ssize_t *s1) noexcept:
    """The URL authority starting at ``j`` (past ``://``): ``[s0, s1)`` its user info, up to
    its last ``@``, when it has one; returns where the authority ends."""
    cdef Py_ssize_t e = j, at = -1
    while e < n and not authority_end(v[e]):
        if v[e] == 64:  # '@'
            at = e
        e += 1
    s0[0] = j
    s1[0] = at if at > j else j
    return e


cdef bint auth_value(const uint8_t *v, Py_ssize_t n, Py_ssize_t i, Py_ssize_t *s0,
                     Py_ssize_t *s1) noexcept:
    """Whether the ``:`` or ``=`` at ``i`` follows ``authorization`` (then maybe its key's
    closing quote and blanks); its non-empty value is then ``[s0, s1)``: to its closing
    quote when quoted, else to the first ``value_end``, less trailing blanks."""
    cdef Py_ssize_t k = i, j = i + 1, e
    cdef uint8_t quote = 0
    while k > 0 and (v[k - 1] == 32 or v[k - 1] == 9):
        k -= 1
    while k > 0 and (v[k - 1] == 34 or v[k - 1] == 39):
        k -= 1
    if k < AUTH_LEN or not same_at(v, k - AUTH_LEN, <const uint8_t *>b"authorization",
                                   AUTH_LEN):
        return False
    while j < n and (v[j] == 32 or v[j] == 9):
        j += 1
    if j < n and (v[j] == 34 or v[j] == 39):
        quote = v[j]
        j += 1
    e = j
    if quote:
        while e < n and v[e] != quote and v[e] != 10 and v[e] != 13:
            e += 1
    else:
        while e < n and not value_end(v[e]):
            e += 1
        while e > j and (v[e - 1] == 32 or v[e - 1] == 9):
            e -= 1
    s0[0] = j
    s1[0] = e
    return e > j


cdef bint next_secret(const uint8_t *v, Py_ssize_t n, Py_ssize_t i, bint headers,
                      Py_ssize_t *s0, Py_ssize_t *s1, bint *is_header) noexcept:
    """The next secret of ``v`` from ``i`` on, as ``[s0, s1)``: a URL's user info, or with
    ``headers`` an Authorization header's value. Both hang on a ``:`` (``://``,
    ``Authorization:``) or, for a header, an ``=``: only those bytes are looked at."""
    cdef Py_ssize_t e, colon, equals = n
    colon = find(v, n, i, 58)  # ':'
    if headers:
        equals = find(v, n, i, 61)  # '='
    while True:
        if colon < i:
            colon = find(v, n, i, 58)
        if headers and equals < i:
            equals = find(v, n, i, 61)
        i = colon if colon < equals else equals
        if i >= n:
            return False
        if v[i] == 58 and i + 2 < n and v[i + 1] == 47 and v[i + 2] == 47:
            e = userinfo(v, n, i + 3, s0, s1)
            if s1[0] > s0[0]:
                is_header[0] = False
                return True
            i = e if e > i + 1 else i + 1
        elif headers and auth_value(v, n, i, s0, s1):
            is_header[0] = True
            return True
        else:
            i += 1


cdef Py_ssize_t text_size(const uint8_t *v, Py_ssize_t n, bint headers) noexcept:
    """The length of ``v`` with its secrets replaced; -1 when it holds none."""
    cdef Py_ssize_t i = 0, s0 = 0, s1 = 0, size = n
    cdef bint is_header = False, found = False
    while next_secret(v, n, i, headers, &s0, &s1, &is_header):
        if not is_marker(v + s0, s1 - s0):
            found = True
            size += MARKER_LEN - (s1 - s0)
        i = s1
    return size if found else -1


cdef void write_text(Rules *r, const uint8_t *v, Py_ssize_t n, bint headers,
                     Buf *out) noexcept:
    """``v`` with its secrets replaced, appended to ``out`` (sized by ``text_size``)."""
    cdef Py_ssize_t i = 0, s0 = 0, s1 = 0
    cdef bint is_header = False
    while next_secret(v, n, i, headers, &s0, &s1, &is_header):
        put_raw(out, v + i, s0 - i)
        put_raw(out, MARKER, MARKER_LEN)
        if is_marker(v + s0, s1 - s0):
            pass
        elif is_header:
            r.n_headers += 1
        else:
            r.n_urls += 1
        i = s1
    put_raw(out, v + i, n - i)


# ---- the rules as a Python object ---------------------------------------------------------
cdef bytes normalized(object entry, str what):
    if not isinstance(entry, str):
        raise TypeError(f"redaction {what} must be str, not {type(entry).__name__}")
    raw = (<str>entry).encode("utf-8")
    if not raw or len(raw) > 255:
        raise ValueError(f"redaction {what} {entry!r} must be 1 to 255 bytes")
    return bytes([norm(c) for c in raw])


cdef class Redactor:
    """Redaction rules for the transcoders (``logs_requests``, ``spans_requests``,
    ``store_rows``, ``metric_points`` take one as ``redactor``), and the counts of what they
    redacted. ``words`` are key words, ``globs`` key patterns, ``keep`` keys never redacted
    (see _redact.pxi); ``emp_fastbuf.agent.redact`` builds one from the configuration."""
    cdef Rules r
    cdef list held  # the normalized entries the rules point into

    def __cinit__(self):
        self.held = []
        self.r.slots = <KeySlot *>calloc(SLOTS, sizeof(KeySlot))
        if self.r.slots == NULL:
            raise MemoryError()

    def __init__(self, words=(), globs=(), keep=()):
        if self.held:
            raise TypeError("a Redactor is initialized once")
        self.r.n_words = self.fill(words, "word", &self.r.words, &self.r.wlen)
        self.r.n_globs = self.fill(globs, "glob", &self.r.globs, &self.r.glen)
        self.r.n_keep = self.fill(keep, "kept key", &self.r.keep, &self.r.klen)

    cdef Py_ssize_t fill(self, object entries, str what, const uint8_t ***ptrs,
                         Py_ssize_t **lens) except -1:
        if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
            raise TypeError(f"redaction {what}s must be a list or tuple of str")
        cdef list items = [normalized(e, what) for e in entries]
        cdef Py_ssize_t i, n = len(items)
        free(ptrs[0])  # NULL unless __init__ runs again on an empty Redactor
        free(lens[0])
        ptrs[0] = <const uint8_t **>calloc(n + 1, sizeof(uint8_t *))
        lens[0] = <Py_ssize_t *>calloc(n + 1, sizeof(Py_ssize_t))
        if ptrs[0] == NULL or lens[0] == NULL:
            raise MemoryError()
        for i in range(n):
            ptrs[0][i] = <const uint8_t *>PyBytes_AS_STRING(items[i])
            lens[0][i] = PyBytes_GET_SIZE(items[i])
        self.held.extend(items)
        return n

    def __dealloc__(self):
        free(self.r.words)
        free(self.r.wlen)
        free(self.r.globs)
        free(self.r.glen)
        free(self.r.keep)
        free(self.r.klen)
        free(self.r.slots)

    cdef Rules *rules(self):
        return &self.r

    def counts(self):
        """What was redacted so far: ``attributes`` (values of matching keys), ``urls``
        (URL credentials) and ``headers`` (Authorization values in log bodies)."""
        return {
            "attributes": self.r.n_attributes,
            "urls": self.r.n_urls,
            "headers": self.r.n_headers,
        }

    def key_redacted(self, str key not None):
        """Whether the value of attribute ``key`` is replaced."""
        raw = key.encode("utf-8", "surrogatepass")
        return key_redacted(&self.r, <const uint8_t *>PyBytes_AS_STRING(raw), len(raw))

    def text(self, str value not None, bint headers=False):
        """``value`` with its URL credentials (and with ``headers`` its Authorization
        header values) replaced, counted."""
        raw = value.encode("utf-8", "surrogatepass")
        cdef const uint8_t *v = <const uint8_t *>PyBytes_AS_STRING(raw)
        cdef Py_ssize_t n = len(raw)
        cdef Py_ssize_t size = text_size(v, n, headers)
        cdef Buf out
        if size < 0:
            return value
        out = Buf(NULL, 0, 0, False, False)
        try:
            write_text(&self.r, v, n, headers, &out)
            if out.oom:
                raise MemoryError()
            return (<bytes>PyBytes_FromStringAndSize(<const char *>out.data, out.len)).decode(
                "utf-8", "surrogatepass")
        finally:
            free(out.data)

    def attributes(self, dict attrs not None):
        """A copy of ``attrs`` (decoded attributes) redacted as the native paths redact
        them: for the records and resources decoded in Python."""
        cdef dict out = {}
        for key, value in attrs.items():
            if isinstance(key, str) and self.key_redacted(key):
                if value != MARKER_STR:  # already redacted: not counted again
                    self.r.n_attributes += 1
                out[key] = MARKER_STR
            elif isinstance(value, str):
                out[key] = self.text(value)
            else:
                out[key] = value
        return out
