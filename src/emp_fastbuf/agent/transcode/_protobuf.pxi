# The protobuf wire format, written by hand into growable buffers: varints, fixed64,
# length-delimited fields and nested messages whose length is written once their content
# is (``begin``/``finish``). The JSON writers of _rows.pxi use the same buffer.

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


cdef inline size_t framed(size_t n) noexcept:
    """Size of a field 1 or 2 holding ``n`` bytes: tag, varint length, content."""
    return 1 + varint_len(n) + n
