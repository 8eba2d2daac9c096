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
