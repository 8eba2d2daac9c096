from libc.stdint cimport uint32_t, uint64_t


cdef extern from "_atomics.h":
    uint64_t efb_load_acquire(const uint64_t *p) nogil
    uint64_t efb_load_relaxed(const uint64_t *p) nogil
    void efb_store_release(uint64_t *p, uint64_t v) nogil
    void efb_store_relaxed(uint64_t *p, uint64_t v) nogil
    int efb_cas(uint64_t *p, uint64_t expected, uint64_t desired) nogil
    uint64_t efb_fetch_add(uint64_t *p, uint64_t v) nogil
    void efb_bump(uint64_t *p, uint64_t v) nogil
    uint32_t efb_get_u32(const char *p) nogil
    void efb_put_u32(char *p, uint32_t v) nogil
    int efb_register_atfork() nogil
    uint64_t efb_fork_gen() nogil
    bint EFB_LIKELY(bint) nogil
    bint EFB_UNLIKELY(bint) nogil


# ---- layout (docs/ring-layout.md; tests/ring/test_ring_layout_doc.py checks the doc against
# this text) --------------------------------------------------------------------------
# Two numbers do not fit a C enum (an int), so they are macros.
cdef extern from *:
    """
    #define EFB_RING_MAGIC 0x474E5242465F4D45ULL
    #define EFB_FRAME_PAD_BIT 0x80000000u
    """
    # header word 0: "EM_FBRNG" little-endian, written last at creation
    const uint64_t MAGIC "EFB_RING_MAGIC"
    # frame header: u32 tag (bit 31: padding to the lane's end), u32 check = ~tag
    const uint32_t PAD_BIT "EFB_FRAME_PAD_BIT"

cdef enum:
    VERSION = 2  # the layout version (LAYOUT_VERSION in Python)
    HEADER_SIZE = 4096
    DESC_SIZE = 256  # one lane descriptor

# header offsets
cdef enum:
    H_MAGIC = 0
    H_VERSION = 8
    H_HEADER_SIZE = 12
    H_SEGMENT_SIZE = 16
    H_LANE_COUNT = 24
    H_META_SIZE = 28
    H_LANE_SIZE = 32
    H_MAX_RECORD = 40
    H_FLAGS = 44
    H_CREATED_NS = 48
    H_CREATOR_UID = 56
    H_CREATOR_PID = 60
    H_CREATOR_START = 64
    H_LEASE_PID = 128
    H_LEASE_START = 136
    H_LEASE_HEARTBEAT = 144
    H_LEASE_EPOCH = 152
    H_NO_LANE = 192
    H_CORRUPT = 200
    H_FREE_LANES = 208
    H_REREAD = 216

# lane descriptor offsets; the producer's words and the consumer's (from L_TAIL) are on
# separate cache lines. L_WRITTEN .. L_DROP_TOO_LARGE are consecutive u64 counters (the
# write path bumps them by index from L_WRITTEN).
cdef enum:
    L_OWNER = 0
    L_OWNER_START = 8
    L_GENERATION = 16
    L_META_LEN = 24
    L_STATE = 32
    L_HEAD = 64
    L_WRITTEN = 72
    L_ACCEPTED = 80
    L_BYTES = 88
    L_DROP_FULL = 96
    L_DROP_TOO_LARGE = 104
    L_TAIL = 128
    L_ACKED = 136
    L_BYTES_ACKED = 144
    L_READ = 152  # the consumer's read position, for counting what a successor reads again
    L_CHAIN_SEQ = 192
    L_OWN_DROPS = 200  # three u64: full, too large, no lane (the owner process's totals)

# lane state (L_STATE)
cdef enum:
    STATE_RELEASED = 1

# header flags (H_FLAGS)
cdef enum:
    FLAG_CHAIN = 1

# Drop reasons (index into the lane's dropped counters).
cdef enum:
    DROP_FULL = 0
    DROP_TOO_LARGE = 1
    DROP_NO_LANE = 2

# Where ``_window`` looks for room: at the head, at the lane's start (the rest of the lane
# becomes padding), or in a new lane (chaining).
cdef enum:
    AT_HEAD = 0
    AT_START = 1
    NEW_LANE = 2


cdef class Ring:
    cdef char *base
    cdef size_t map_size
    cdef readonly str name
    cdef uint32_t lane_count
    cdef uint64_t lane_size
    cdef uint64_t lane_mask
    cdef readonly uint32_t max_record
    cdef uint32_t meta_size
    cdef char *lanes_desc
    cdef char *meta_base
    cdef char *data_base
    cdef readonly bint closed
    # Producer state: the lane this Ring object writes into, or -1.
    cdef int lane
    cdef char *lane_data
    cdef uint64_t *lane_head
    cdef uint64_t *lane_tail
    cdef uint64_t *lane_ctr
    cdef uint64_t head
    cdef uint64_t fork_gen
    cdef uint64_t next_claim_ns
    cdef bytes meta
    # Opt-in block policy: wait up to this long for room (GIL released), then drop.
    cdef public long long block_ns
    # Lane chaining (docs/ring-layout.md): a producer whose lane is full moves to a free
    # lane while more than ``reserve`` lanes are free; its old lanes wait in ``released``
    # (lane, head at hand-back) until the consumer acknowledged them.
    cdef bint chain
    cdef uint32_t reserve
    cdef uint64_t chain_seq
    cdef uint64_t next_chain_ns
    cdef list released
    # This process's drops, published into its lane for ``fastbuf status``.
    cdef uint64_t own_drops[3]
    cdef int waiting
    # Pending write (between _window and _commit).
    cdef uint64_t w_pos
    cdef bint consumer_open

    cdef _map(self, int fd, uint64_t size, bytes shm)
    cdef uint64_t _validate_header(self, uint64_t file_size) except 0
    cdef _setup(self)
    cdef char *_desc(self, uint32_t i) noexcept
    cdef void _take_lane(self, uint32_t i, uint64_t start) noexcept
    cdef _release_lane(self)
    cdef list _unacked(self)
    cdef object _write(self, const char *src, Py_ssize_t n)
    cdef int _ensure_lane(self) except -1
    cdef Py_ssize_t _window(self, char **out, int mode) except -2
    cdef int _chain(self) except -1
    cdef void _commit(self, Py_ssize_t n) noexcept
    cdef void _drop(self, int reason) noexcept
    cdef void _publish_drops(self) noexcept
    cdef void _warn_drop(self) noexcept
    cdef bint _wait_room(self, uint64_t need, uint64_t *deadline) noexcept


# The fork generation of the _ring module: the one counter its pthread_atfork handler
# bumps. Other native modules must use this, not their own copy of the header's static.
cdef uint64_t fork_generation() noexcept nogil
