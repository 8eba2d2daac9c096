# cython: freethreading_compatible = False
"""Shared-memory multi-producer ring with per-producer lanes.

Layout and memory ordering: docs/ring-layout.md. Each producer process claims one
single-producer lane with a compare-and-swap on the lane's owner word; its hot path is
a copy and a release-store of the lane head. The one consumer walks the lanes and frees
space with a release-store of each lane's tail after ``ack()``.
"""

import os
import re
import time

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EEXIST, ENOENT, errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from emp_fastbuf.errors import (
    RecordTooLarge,
    RingBusy,
    RingCorrupt,
    RingError,
    RingExists,
    RingNotFound,
    RingPermissionError,
    RingVersionError,
)


from posix.fcntl cimport O_CREAT, O_EXCL, O_RDWR
from posix.mman cimport (
    MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap, shm_open, shm_unlink,
)
from posix.stat cimport fchmod, fstat, struct_stat
from posix.types cimport off_t
from posix.unistd cimport close, ftruncate, geteuid, getpid

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from *:
    """
    #ifdef __linux__
    #define EFB_MAP_POPULATE MAP_POPULATE
    #else
    #define EFB_MAP_POPULATE 0
    #endif
    """
    int EFB_MAP_POPULATE

cdef extern from "_proc.h" nogil:
    int efb_proc_stat(long pid, uint64_t *start)
    int efb_alive(long pid, uint64_t start)
    uint64_t efb_now_ns(int realtime)
    int efb_reserve(int fd, uint64_t size)
    void efb_sleep_ns(long ns)


# ---- layout: the numbers are in _ring.pxd (docs/ring-layout.md) -------------------
LAYOUT_VERSION = VERSION

DEFAULT_SIZE = 128 << 20
DEFAULT_MAX_RECORD = 64 << 10
DEFAULT_META_SIZE = 8192
MAX_LANES = 1024
MAX_SIZE = 1 << 40  # 1 TiB of lane data; also keeps the sizing arithmetic far from 2**64

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")

efb_register_atfork()

# The drop warning's rate limit is per process (docs/ring-layout.md, "Over capacity").
cdef uint64_t _warn_next_ns = 0
cdef uint64_t _warn_pending = 0
cdef uint64_t _warn_gen = 0


cdef inline uint64_t *U64(char *p, size_t off) noexcept nogil:
    return <uint64_t *>(p + off)


cdef inline uint32_t *U32(char *p, size_t off) noexcept nogil:
    return <uint32_t *>(p + off)


cdef void _reconcile_dead_lane(char *d) noexcept nogil:
    """A producer killed inside a write may have bumped its counters for a record it never
    published. Once its lane is drained (tail == head) every published record is acked, so
    the owner's counters are set from the consumer's: an interrupted write counts nowhere,
    and written == acked + dropped holds again."""
    cdef uint64_t acked = efb_load_acquire(U64(d, L_ACKED))
    efb_store_relaxed(U64(d, L_ACCEPTED), acked)
    efb_store_relaxed(U64(d, L_BYTES), efb_load_acquire(U64(d, L_BYTES_ACKED)))
    efb_store_relaxed(U64(d, L_WRITTEN), acked + efb_load_relaxed(U64(d, L_DROP_FULL))
                      + efb_load_relaxed(U64(d, L_DROP_TOO_LARGE)))


cdef inline uint64_t align8(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef inline uint64_t align_page(uint64_t n) noexcept nogil:
    return (n + 4095) & ~(<uint64_t>4095)


cdef inline uint64_t meta_offset(uint64_t lanes) noexcept nogil:
    """Where the lane metadata slots start: after the header and the descriptors."""
    return align_page(HEADER_SIZE + lanes * DESC_SIZE)


cdef inline uint64_t data_offset(uint64_t lanes, uint64_t meta_size) noexcept nogil:
    """Where the lane data starts: after the metadata slots."""
    return align_page(meta_offset(lanes) + lanes * meta_size)


def default_ring_name():
    """``EMP_FASTBUF_RING``, else ``emp-fastbuf-<uid>``."""
    return os.environ.get("EMP_FASTBUF_RING") or f"emp-fastbuf-{os.geteuid()}"


cdef bytes _shm_name(object name):
    if name is None:
        name = default_ring_name()
    if not isinstance(name, str):
        raise TypeError(f"ring name must be a str, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid ring name {name!r}: use 1-200 letters, digits, '.', '_' or '-'"
        )
    return ("/" + name).encode()


cdef uint64_t _my_start() noexcept:
    cdef uint64_t st = 0
    efb_proc_stat(getpid(), &st)
    return st


def process_start(long pid):
    """The start time of process ``pid`` as the ring records its owners (Linux: clock ticks
    since boot), 0 where it cannot be read; ``process_alive(pid, start)`` compares it."""
    cdef uint64_t st = 0
    efb_proc_stat(pid, &st)
    return st


def process_alive(long pid, uint64_t start=0):
    """True if the process ``pid`` (started at ``start``, 0 = any) is alive."""
    return bool(efb_alive(pid, start))


def _check_int(value, label):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{label} must be an int, not {type(value).__name__}")


def layout_for(size=DEFAULT_SIZE, lanes=None, max_record=DEFAULT_MAX_RECORD):
    """The layout ``Ring.create`` makes for these arguments: a dict with ``lanes``,
    ``lane_size`` and ``segment_size`` (the bytes of shared memory it takes).

    The sizing rule (docs/ring-layout.md): the smallest lane holds two maximum records
    (256 KiB for the default 64 KiB), rounded up to a power of two; without ``lanes``, the
    ring has as many of those as ``size`` allows, up to 1024, and the lanes then grow (by
    powers of two) into the size. With ``lanes``, each lane is the largest power of two
    that ``size / lanes`` holds. Raises ``ValueError`` when the size cannot hold one lane.
    """
    _check_int(size, "size")
    if lanes is not None:
        _check_int(lanes, "lanes")
    _check_int(max_record, "max_record")
    if lanes is not None and not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"lanes must be between 1 and {MAX_LANES}, got {lanes}")
    if not 1 <= max_record <= (16 << 20):
        raise ValueError(f"max_record must be between 1 and 16 MiB, got {max_record}")
    if size > MAX_SIZE:
        raise ValueError(f"size {size} is too large: a ring holds at most 1 TiB of lanes")
    if size < 1:
        raise ValueError(f"size {size} is too small")
    need = max(4096, 2 * align8(max_record + 8))
    min_lane = 4096
    while min_lane < need:
        min_lane *= 2
    if lanes is None:
        lanes = min(MAX_LANES, size // min_lane)
        if lanes < 1:
            raise ValueError(
                f"size {size} is too small: a lane needs at least {min_lane} bytes "
                f"(2 x max_record {max_record} + framing, a power of two)"
            )
    lane_size = 1
    while lane_size * 2 <= size // lanes:
        lane_size *= 2
    if size // lanes < 1 or lane_size < need:
        raise ValueError(
            f"size {size} is too small for {lanes} lanes: each lane needs at least "
            f"{need} bytes (2 x max_record {max_record} + framing)"
        )
    if lane_size > (1 << 34):
        raise ValueError(f"lanes of {lane_size} bytes are too large (16 GiB max)")
    return dict(lanes=lanes, lane_size=lane_size,
                segment_size=data_offset(lanes, DEFAULT_META_SIZE) + lanes * lane_size)


# ---- creation -------------------------------------------------------------------------
cdef struct Plan:
    uint32_t lanes
    uint64_t lane_size
    uint32_t meta_size
    uint32_t max_record
    uint64_t segment_size
    bint chain


cdef Plan plan_layout(size, lanes, max_record, chain):
    """The layout of a new segment (``layout_for``, which validates the arguments) and
    whether its producers chain: by default when the lanes follow from the size."""
    lay = layout_for(size, lanes, max_record)
    cdef Plan plan
    plan.lanes = lay["lanes"]
    plan.lane_size = lay["lane_size"]
    plan.meta_size = DEFAULT_META_SIZE
    plan.max_record = max_record
    plan.segment_size = lay["segment_size"]
    plan.chain = (lanes is None) if chain is None else bool(chain)
    return plan


cdef Ring map_new_segment(int fd, bytes shm, uint64_t total):
    """Size the segment just created on ``fd``, reserve its pages and map it. Closes
    ``fd``; on failure the segment is removed again."""
    cdef Ring ring
    try:
        fchmod(fd, 0o600)  # the umask may have cleared bits; never widened
        if ftruncate(fd, <off_t>total) != 0:
            raise OSError(errno, f"cannot size ring segment to {total} bytes: "
                                 f"{os.strerror(errno)}")
        # Reserve the pages now: touching a page tmpfs cannot back is a SIGBUS.
        err = efb_reserve(fd, total)
        if err != 0:
            raise OSError(
                err,
                f"cannot reserve {total} bytes of shared memory for ring "
                f"{shm[1:].decode()!r}: {os.strerror(err)} (is /dev/shm large enough? "
                f"in a container, raise --shm-size or pass a smaller size)",
            )
        ring = Ring.__new__(Ring)
        ring._map(fd, total, shm)
    except BaseException:
        close(fd)
        shm_unlink(shm)
        raise
    close(fd)
    return ring


cdef void write_header(char *b, const Plan *plan) noexcept:
    """The header of a new, zeroed segment: its layout and creator, then the magic."""
    U32(b, H_VERSION)[0] = VERSION
    U32(b, H_HEADER_SIZE)[0] = HEADER_SIZE
    U64(b, H_SEGMENT_SIZE)[0] = plan.segment_size
    U32(b, H_LANE_COUNT)[0] = plan.lanes
    U32(b, H_META_SIZE)[0] = plan.meta_size
    U64(b, H_LANE_SIZE)[0] = plan.lane_size
    U32(b, H_MAX_RECORD)[0] = plan.max_record
    U32(b, H_FLAGS)[0] = FLAG_CHAIN if plan.chain else 0
    U64(b, H_FREE_LANES)[0] = plan.lanes
    U64(b, H_CREATED_NS)[0] = efb_now_ns(1)
    U32(b, H_CREATOR_UID)[0] = geteuid()
    U32(b, H_CREATOR_PID)[0] = getpid()
    U64(b, H_CREATOR_START)[0] = _my_start()
    # The magic goes last: a segment without it is one whose creator died mid-way.
    efb_store_release(U64(b, H_MAGIC), MAGIC)


cdef class Ring:
    """A named shared-memory ring. See ``docs/ring-layout.md``.

    ``Ring.create`` makes a segment, ``Ring.open`` attaches to one; ``write`` never
    blocks; ``consumer()`` takes the single consumer role.
    """

    def __cinit__(self):
        self.base = NULL
        self.lane = -1
        self.closed = True
        self.meta = b""
        self.block_ns = 0
        self.released = []
        self.waiting = 0

    def __init__(self):
        raise TypeError("use Ring.create(name) or Ring.open(name)")

    def __dealloc__(self):
        if self.base != NULL:
            self._release_lane()
            munmap(self.base, self.map_size)
            self.base = NULL

    # ---- creation and attachment ----------------------------------------------

    @staticmethod
    def create(name=None, size=DEFAULT_SIZE, *, lanes=None,
               max_record=DEFAULT_MAX_RECORD, chain=None, exist_ok=False):
        """Create the segment ``name`` owner-only (0600), with ``size`` bytes of lane data.

        The size is enough to ask for: without ``lanes`` the lane count and lane size
        follow from it (``layout_for``, docs/ring-layout.md). With ``chain`` (the default
        when the lanes follow from the size) a producer whose lane is full moves on to a
        free lane instead of dropping; with explicit ``lanes`` each producer keeps to one
        lane unless ``chain=True``. If the
        segment exists: with ``exist_ok`` it is opened (and validated), else ``RingExists``
        says who created it and whether they are alive.
        """
        cdef bytes shm = _shm_name(name)
        cdef Plan plan = plan_layout(size, lanes, max_record, chain)
        cdef int fd = shm_open(shm, O_RDWR | O_CREAT | O_EXCL, 0o600)
        if fd < 0:
            if errno == EEXIST:
                if exist_ok:
                    return Ring.open(name)
                raise RingExists(_describe_existing(name, shm))
            raise OSError(errno, f"shm_open({shm.decode()!r}) failed: {os.strerror(errno)}")
        cdef Ring self = map_new_segment(fd, shm, plan.segment_size)
        # Pre-fault every page now so that no producer takes a page fault on the hot path.
        memset(self.base, 0, plan.segment_size)
        write_header(self.base, &plan)
        self._setup()
        return self

    @staticmethod
    def open(name=None):
        """Attach to an existing segment, validating its header, owner and mode."""
        cdef bytes shm = _shm_name(name)
        cdef int fd = shm_open(shm, O_RDWR, 0)
        if fd < 0:
            if errno == ENOENT:
                raise RingNotFound(f"no ring named {shm[1:].decode()!r} (create it first)")
            if errno == 13:
                raise RingPermissionError(
                    f"ring {shm[1:].decode()!r} belongs to another user or is not writable"
                )
            raise OSError(errno, f"shm_open({shm.decode()!r}) failed: {os.strerror(errno)}")
        cdef struct_stat st
        cdef Ring self = Ring.__new__(Ring)
        try:
            if fstat(fd, &st) != 0:
                raise OSError(errno, os.strerror(errno))
            if st.st_uid != geteuid():
                raise RingPermissionError(
                    f"ring {shm[1:].decode()!r} belongs to uid {st.st_uid}, not to this "
                    f"user (uid {geteuid()})"
                )
            if st.st_mode & 0o077:
                raise RingPermissionError(
                    f"ring {shm[1:].decode()!r} has mode {st.st_mode & 0o777:o}: other users "
                    f"could read it; expected 600"
                )
            if <uint64_t>st.st_size < HEADER_SIZE:
                raise RingCorrupt(
                    f"ring {shm[1:].decode()!r} is truncated: {st.st_size} bytes, smaller "
                    f"than its {HEADER_SIZE}-byte header"
                )
            self._map(fd, HEADER_SIZE, shm)
            total = self._validate_header(<uint64_t>st.st_size)
            munmap(self.base, self.map_size)
            self.base = NULL
            self._map(fd, total, shm)
            self._validate_header(<uint64_t>st.st_size)
        finally:
            close(fd)
        self._setup()
        return self

    @staticmethod
    def unlink(name=None):
        """Remove the segment ``name``. Attached processes keep their mapping."""
        cdef bytes shm = _shm_name(name)
        if shm_unlink(shm) != 0 and errno != ENOENT:
            raise OSError(errno, f"shm_unlink({shm.decode()!r}): {os.strerror(errno)}")

    cdef _map(self, int fd, uint64_t size, bytes shm):
        cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | EFB_MAP_POPULATE,
                            fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, f"mmap of ring {shm.decode()!r} failed: {os.strerror(errno)}")
        self.base = <char *>p
        self.map_size = size
        self.name = shm[1:].decode()

    cdef uint64_t _validate_header(self, uint64_t file_size) except 0:
        cdef char *b = self.base
        cdef str name = self.name
        magic = efb_load_acquire(U64(b, H_MAGIC))
        if magic != MAGIC:
            raise RingCorrupt(
                f"ring {name!r} has a wrong magic number ({magic:#x}): not an emp-fastbuf "
                f"ring, or its creator died while creating it; remove it with "
                f"Ring.unlink({name!r})"
            )
        version = U32(b, H_VERSION)[0]
        if version != VERSION:
            raise RingVersionError(
                f"ring {name!r} has layout version {version}; this emp-fastbuf reads "
                f"version {VERSION}"
            )
        lanes = U32(b, H_LANE_COUNT)[0]
        lane_size = U64(b, H_LANE_SIZE)[0]
        max_record = U32(b, H_MAX_RECORD)[0]
        meta_size = U32(b, H_META_SIZE)[0]
        seg = U64(b, H_SEGMENT_SIZE)[0]
        if (U32(b, H_HEADER_SIZE)[0] != HEADER_SIZE or not 1 <= lanes <= MAX_LANES
                or lane_size < 4096 or lane_size & (lane_size - 1) or lane_size > (1 << 34)
                or not 1 <= max_record <= (16 << 20)
                or lane_size < 2 * align8(max_record + 8)
                or not 0 < meta_size <= (1 << 20) or meta_size % 8):
            raise RingCorrupt(f"ring {name!r} has an inconsistent header")
        total = data_offset(lanes, meta_size) + lanes * lane_size
        if seg != total:
            raise RingCorrupt(
                f"ring {name!r} has an inconsistent header (segment size {seg}, layout "
                f"needs {total})"
            )
        if file_size < total:
            raise RingCorrupt(
                f"ring {name!r} is truncated: {file_size} bytes, its layout needs {total}"
            )
        return total

    cdef _setup(self):
        cdef char *b = self.base
        self.lane_count = U32(b, H_LANE_COUNT)[0]
        self.lane_size = U64(b, H_LANE_SIZE)[0]
        self.lane_mask = self.lane_size - 1
        self.max_record = U32(b, H_MAX_RECORD)[0]
        self.meta_size = U32(b, H_META_SIZE)[0]
        self.lanes_desc = b + HEADER_SIZE
        self.meta_base = b + meta_offset(self.lane_count)
        self.data_base = b + data_offset(self.lane_count, self.meta_size)
        self.closed = False
        self.lane = -1
        self.fork_gen = efb_fork_gen()
        self.chain = (U32(b, H_FLAGS)[0] & FLAG_CHAIN) != 0 and self.lane_count > 1
        # Lanes kept free for processes that have none yet: chaining stops at this many.
        self.reserve = self.lane_count // 4 if self.lane_count >= 4 else 1

    # ---- producer side ---------------------------------------------------------

    cdef char *_desc(self, uint32_t i) noexcept:
        return self.lanes_desc + <uint64_t>i * DESC_SIZE

    cdef int _ensure_lane(self) except -1:
        """Claim a lane for this process. 0: claimed; 1: none free (the caller drops).

        Pure C from here on: it never releases the GIL, so two threads of one process
        cannot both claim.
        """
        if self.closed:
            raise RingError("ring is closed")
        cdef uint64_t gen = efb_fork_gen()
        if gen != self.fork_gen:
            # A forked child: the parent's lane and half-written record stay the parent's.
            self.lane = -1
            self.fork_gen = gen
            self.next_claim_ns = 0
            self.next_chain_ns = 0
            self.released = []
            self.own_drops[0] = self.own_drops[1] = self.own_drops[2] = 0
        if self.lane >= 0:
            return 0
        cdef uint64_t now = efb_now_ns(0)
        if now < self.next_claim_ns:
            return 1
        cdef uint64_t pid = <uint64_t>getpid()
        cdef uint64_t start = _my_start()
        cdef uint32_t n = self.lane_count, k, i
        cdef char *d
        cdef uint64_t owner, head, tail
        cdef int attempt
        for attempt in range(2):
            for k in range(n):
                i = (<uint32_t>pid + k) % n
                d = self._desc(i)
                owner = efb_load_acquire(U64(d, L_OWNER))
                if owner == 0:
                    if not efb_cas(U64(d, L_OWNER), 0, pid):
                        continue
                    efb_fetch_add(U64(self.base, H_FREE_LANES), <uint64_t>-1)
                elif attempt == 1:
                    # Second pass: take over a drained lane whose owner is dead.
                    head = efb_load_acquire(U64(d, L_HEAD))
                    tail = efb_load_acquire(U64(d, L_TAIL))
                    if head != tail or efb_alive(<long>owner,
                                                 efb_load_acquire(U64(d, L_OWNER_START))):
                        continue
                    if not efb_cas(U64(d, L_OWNER), owner, pid):
                        continue
                    _reconcile_dead_lane(d)
                else:
                    continue
                self._take_lane(i, start)
                return 0
        self.next_claim_ns = now + 50000000  # retry in 50 ms: keeps the drop path cheap
        return 1

    cdef void _take_lane(self, uint32_t i, uint64_t start) noexcept:
        cdef char *d = self._desc(i)
        efb_store_relaxed(U64(d, L_OWNER_START), start)
        efb_store_relaxed(U64(d, L_STATE), 0)
        efb_fetch_add(U64(d, L_GENERATION), 1)
        cdef uint64_t head = efb_load_acquire(U64(d, L_HEAD))
        cdef uint64_t tail = efb_load_acquire(U64(d, L_TAIL))
        if head < tail or head - tail > self.lane_size or head & 7:
            # A corrupted lane: start after the consumer's position; nothing valid is lost.
            head = align8(tail)
            efb_store_release(U64(d, L_HEAD), head)
        cdef Py_ssize_t m = len(self.meta)
        if m > self.meta_size:
            m = 0
        if m:
            memcpy(self.meta_base + <uint64_t>i * self.meta_size,
                   PyBytes_AS_STRING(self.meta), m)
        efb_store_release(U64(d, L_META_LEN), <uint64_t>m)
        # The consumer reads a producer's lanes in this order (docs/ring-layout.md).
        self.chain_seq += 1
        efb_store_release(U64(d, L_CHAIN_SEQ), self.chain_seq)
        self.lane = i
        self.lane_data = self.data_base + <uint64_t>i * self.lane_size
        self.lane_head = U64(d, L_HEAD)
        self.lane_tail = U64(d, L_TAIL)
        self.lane_ctr = U64(d, L_WRITTEN)
        self.head = head
        self._publish_drops()

    cdef _release_lane(self):
        """Hand the lane back: the consumer drains what is left, then frees it."""
        if self.lane < 0 or self.fork_gen != efb_fork_gen() or self.base == NULL:
            self.lane = -1
            return
        self.released.append((self.lane, self.head))  # flush() still waits for them
        efb_store_release(U64(self._desc(self.lane), L_STATE), STATE_RELEASED)
        self.lane = -1

    cdef Py_ssize_t _window(self, char **out, int mode) except -2:
        """Room for one record: capacity in bytes, or -1 without room.

        ``AT_HEAD``: at the lane head. ``AT_START``: at the start of the lane, the rest of
        the lane becoming padding committed together with the record. ``NEW_LANE``: this
        lane is handed back and the record goes to a newly claimed (drained) lane, where
        the capacity is at least ``max_record``; -1 when chaining is off or too few lanes
        are free.
        """
        cdef uint64_t tail, free_, off, to_end, room
        cdef Py_ssize_t cap
        if mode == NEW_LANE:
            if not self._chain():
                return -1
            # A drained lane holds a maximum record at its head or at its start.
            cap = self._window(out, AT_HEAD)
            if cap < <Py_ssize_t>self.max_record:
                return self._window(out, AT_START)
            return cap
        tail = efb_load_acquire(self.lane_tail)
        free_ = self.lane_size - (self.head - tail)
        off = self.head & self.lane_mask
        to_end = self.lane_size - off
        if EFB_UNLIKELY(tail > self.head):
            # The consumer skipped a corrupted stretch past our head: continue after it.
            self.head = (tail + 7) & ~(<uint64_t>7)
            free_ = self.lane_size
            off = self.head & self.lane_mask
            to_end = self.lane_size - off
        elif self.head - tail > self.lane_size:
            return -1  # a corrupted tail; drop rather than overwrite unread records
        if mode == AT_HEAD:
            room = to_end if to_end < free_ else free_
            self.w_pos = self.head
        else:
            if off == 0 or free_ < to_end + 8:
                return -1
            room = free_ - to_end
            self.w_pos = self.head + to_end
            off = 0
        if room < 8:
            return -1
        room -= 8
        if room > self.max_record:
            room = self.max_record
        out[0] = self.lane_data + off + 8
        return <Py_ssize_t>room

    cdef int _chain(self) except -1:
        """Hand this lane back and claim a free one. 1: moved; 0: chaining is off, too few
        lanes are free, or none was found (then no new scan for 1 ms)."""
        if not self.chain or self.lane < 0:
            return 0
        cdef uint64_t free_ = efb_load_relaxed(U64(self.base, H_FREE_LANES))
        if free_ <= self.reserve:
            return 0
        cdef uint64_t now = efb_now_ns(0)
        if now < self.next_chain_ns:
            return 0
        cdef uint64_t pid = <uint64_t>getpid()
        cdef uint32_t n = self.lane_count, k, i
        cdef char *d
        cdef uint32_t old = <uint32_t>self.lane
        for k in range(1, n):
            i = (old + k) % n
            d = self._desc(i)
            if efb_load_relaxed(U64(d, L_OWNER)) != 0:
                continue
            if not efb_cas(U64(d, L_OWNER), 0, pid):
                continue
            efb_fetch_add(U64(self.base, H_FREE_LANES), <uint64_t>-1)
            # Remembered until acknowledged, for pending() and flush().
            self.released.append((old, self.head))
            efb_store_release(U64(self._desc(old), L_STATE), STATE_RELEASED)
            self._take_lane(i, _my_start())
            return 1
        self.next_chain_ns = now + 1000000
        return 0

    cdef void _commit(self, Py_ssize_t n) noexcept:
        cdef char *p
        cdef uint64_t off
        if self.w_pos != self.head:
            p = self.lane_data + (self.head & self.lane_mask)
            efb_put_u32(p, PAD_BIT)
            efb_put_u32(p + 4, ~PAD_BIT)
        off = self.w_pos & self.lane_mask
        p = self.lane_data + off
        efb_put_u32(p, <uint32_t>n)
        efb_put_u32(p + 4, ~(<uint32_t>n))
        efb_bump(self.lane_ctr, 1)  # written
        efb_bump(self.lane_ctr + 1, 1)  # accepted
        efb_bump(self.lane_ctr + 2, <uint64_t>n)  # bytes
        self.head = self.w_pos + align8(8 + <uint64_t>n)
        efb_store_release(self.lane_head, self.head)

    cdef void _drop(self, int reason) noexcept:
        if self.lane < 0:
            efb_fetch_add(U64(self.base, H_NO_LANE), 1)
            self.own_drops[DROP_NO_LANE] += 1
        else:
            efb_bump(self.lane_ctr, 1)  # written
            efb_bump(self.lane_ctr + 3 + reason, 1)
            self.own_drops[reason] += 1
            self._publish_drops()
        global _warn_pending, _warn_gen, _warn_next_ns
        if _warn_gen != efb_fork_gen():  # a forked child is a new process: warn again
            _warn_gen = efb_fork_gen()
            _warn_next_ns = 0
            _warn_pending = 0
        _warn_pending += 1
        if efb_now_ns(0) >= _warn_next_ns:
            self._warn_drop()

    cdef void _publish_drops(self) noexcept:
        """This process's drop totals, into its lane (``fastbuf status`` shows them)."""
        if self.lane < 0:
            return
        cdef char *d = self._desc(<uint32_t>self.lane)
        cdef int k
        for k in range(3):
            efb_store_relaxed(U64(d, L_OWN_DROPS + 8 * k), self.own_drops[k])

    cdef void _warn_drop(self) noexcept:
        """One line on stderr for the process's first drop, then at most one a minute."""
        global _warn_next_ns, _warn_pending
        cdef uint64_t n = _warn_pending
        _warn_pending = 0
        _warn_next_ns = efb_now_ns(0) + 60000000000
        try:
            _print_drop_warning(self.name, int(n), int(self.own_drops[DROP_FULL]),
                                int(self.own_drops[DROP_NO_LANE]),
                                int(self.own_drops[DROP_TOO_LARGE]))
        except BaseException:
            pass  # telemetry never raises into the host for a warning

    cdef bint _wait_room(self, uint64_t need, uint64_t *deadline) noexcept:
        """The opt-in block policy: wait up to ``block_ns`` for room, sleeping with the GIL
        released so the process's other threads run. True when room may have appeared
        (the caller looks again); False at the deadline, or when the ring was closed."""
        if self.block_ns <= 0 or self.lane < 0 or self.closed:
            return False
        if deadline[0] == 0:
            deadline[0] = efb_now_ns(0) + <uint64_t>self.block_ns
        cdef uint64_t until = deadline[0]
        cdef uint64_t *tailp = self.lane_tail
        cdef uint64_t *freep = U64(self.base, H_FREE_LANES)
        cdef uint64_t head = self.head, lane_size = self.lane_size
        cdef uint64_t off = head & self.lane_mask
        cdef uint64_t reserve = self.reserve
        cdef bint chain = self.chain
        cdef bint ok = False
        cdef long delay_ns = 20000
        need = align8(need + 8)
        if lane_size - off < need:
            need += lane_size - off  # the record goes to the lane's start, after a pad
        self.waiting += 1  # close() keeps the mapping while a thread waits here
        with nogil:
            while True:
                if lane_size - (head - efb_load_acquire(tailp)) >= need:
                    ok = True
                    break
                if chain and efb_load_relaxed(freep) > reserve:
                    ok = True
                    break
                if efb_now_ns(0) >= until:
                    break
                efb_sleep_ns(delay_ns)
                if delay_ns < 1000000:
                    delay_ns *= 2
        self.waiting -= 1
        return ok and not self.closed

    def write(self, data):
        """Copy one record into this process's lane. False when dropped (no room or no
        free lane); never blocks (unless a spin budget was set with ``spin_ns``).

        Raises ``RecordTooLarge`` above ``max_record`` and ``TypeError`` for anything that
        is not bytes-like.
        """
        cdef Py_buffer view
        cdef const char *src
        cdef Py_ssize_t n
        cdef bint release = False
        if type(data) is bytes:
            src = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        else:
            if isinstance(data, str):
                raise TypeError("ring.write() takes a bytes-like object, not str")
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            src = <const char *>view.buf
            n = view.len
            release = True
        try:
            return self._write(src, n)
        finally:
            if release:
                PyBuffer_Release(&view)

    cdef object _write(self, const char *src, Py_ssize_t n):
        cdef char *dst
        cdef Py_ssize_t cap
        cdef uint64_t deadline = 0
        while True:
            if EFB_UNLIKELY(self.lane < 0 or self.fork_gen != efb_fork_gen()):
                if self.closed:
                    raise RingError("ring is closed")
                if self._ensure_lane():
                    if n > self.max_record:
                        self._drop(DROP_TOO_LARGE)  # counted as no lane: there is none
                        raise RecordTooLarge(
                            f"record of {n} bytes exceeds the ring's maximum of "
                            f"{self.max_record}"
                        )
                    self._drop(DROP_FULL)
                    return False
            if EFB_UNLIKELY(n > self.max_record):
                self._drop(DROP_TOO_LARGE)
                raise RecordTooLarge(
                    f"record of {n} bytes exceeds the ring's maximum of {self.max_record}"
                )
            cap = self._window(&dst, AT_HEAD)
            if EFB_UNLIKELY(cap < n):
                cap = self._window(&dst, AT_START)
                if cap < n:
                    cap = self._window(&dst, NEW_LANE)
            if EFB_LIKELY(cap >= n):
                memcpy(dst, src, n)
                self._commit(n)
                return True
            if not self._wait_room(<uint64_t>n, &deadline):
                if self.closed:
                    return False  # closed by another thread while this one waited
                self._drop(DROP_FULL)
                return False

    def set_meta(self, data):
        """Publish this producer's metadata (its resource blob) for the consumer.

        A lane's metadata never changes while it holds records: if this Ring already
        writes into a lane, it hands that lane back and the next write claims a new one.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"meta must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) > self.meta_size:
            raise ValueError(
                f"meta of {len(data)} bytes exceeds the ring's {self.meta_size}-byte slot"
            )
        self.meta = data
        self._release_lane()

    cdef list _unacked(self):
        """(tail pointer, target head) of every lane this Ring object wrote into whose
        records are not all acknowledged yet: the current lane and the chained-from ones."""
        if self.closed or self.fork_gen != efb_fork_gen():
            return []
        out = []
        keep = []
        cdef uint64_t *tail
        for lane, target in self.released:
            tail = U64(self._desc(<uint32_t>lane), L_TAIL)
            if efb_load_acquire(tail) < <uint64_t>target:
                keep.append((lane, target))
                out.append((lane, target))
        self.released = keep
        if self.lane >= 0:
            out.append((self.lane, self.head))
        return out

    def hand_back(self):
        """Hand this process's lane back: the consumer frees it once its records are
        acknowledged. A later write claims a lane again (at exit, so that a short-lived
        process does not hold its lane until the consumer sees it gone)."""
        if not self.closed:
            self._release_lane()

    def pending(self):
        """Bytes this Ring object wrote that the consumer has not acked (in its current
        lane and in the lanes it chained from)."""
        total = 0
        for lane, target in self._unacked():
            tail = efb_load_acquire(U64(self._desc(<uint32_t>lane), L_TAIL))
            if target > tail:
                total += target - tail
        return int(total)

    def flush(self, timeout=5.0):
        """Wait until every record this Ring object wrote so far is acknowledged by the
        consumer. True when they are, False at the timeout."""
        targets = self._unacked()
        if not targets:
            return True
        deadline = time.monotonic() + timeout
        delay = 0.0005
        for lane, target in targets:
            while efb_load_acquire(U64(self._desc(<uint32_t>lane), L_TAIL)) < <uint64_t>target:
                if self.closed or time.monotonic() >= deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        return True

    @property
    def lane_index(self):
        """The lane this Ring object writes into, or None before its first write."""
        if self.lane < 0 or self.fork_gen != efb_fork_gen():
            return None
        return self.lane

    @property
    def size(self):
        return int(self.lane_size * self.lane_count)

    @property
    def lanes(self):
        return int(self.lane_count)

    # ---- consumer side ---------------------------------------------------------

    def consumer(self):
        """Take the consumer role. ``RingBusy`` if a live process holds it."""
        self._check_open()
        return Consumer._take(self)

    # ---- accounting ------------------------------------------------------------

    def stats(self):
        """Counters from shared memory, per lane and in total.

        ``written`` counts every record offered to ``write`` (and the encoder);
        ``written == acked + dropped + in_flight`` at every quiescent point.
        """
        self._check_open()
        cdef char *b = self.base
        cdef char *d
        cdef uint32_t i
        lanes = []
        tot = dict(written=0, accepted=0, bytes_written=0, dropped_full=0,
                   dropped_too_large=0, acked=0, bytes_acked=0)
        for i in range(self.lane_count):
            d = self._desc(i)
            owner = efb_load_acquire(U64(d, L_OWNER))
            head = efb_load_acquire(U64(d, L_HEAD))
            tail = efb_load_acquire(U64(d, L_TAIL))
            lane = dict(
                lane=i,
                owner_pid=int(owner) or None,
                alive=bool(owner) and bool(efb_alive(<long>owner,
                                                     efb_load_relaxed(U64(d, L_OWNER_START)))),
                released=efb_load_relaxed(U64(d, L_STATE)) == STATE_RELEASED,
                generation=int(efb_load_relaxed(U64(d, L_GENERATION))),
                written=int(efb_load_relaxed(U64(d, L_WRITTEN))),
                accepted=int(efb_load_relaxed(U64(d, L_ACCEPTED))),
                bytes_written=int(efb_load_relaxed(U64(d, L_BYTES))),
                dropped_full=int(efb_load_relaxed(U64(d, L_DROP_FULL))),
                dropped_too_large=int(efb_load_relaxed(U64(d, L_DROP_TOO_LARGE))),
                acked=int(efb_load_relaxed(U64(d, L_ACKED))),
                bytes_acked=int(efb_load_relaxed(U64(d, L_BYTES_ACKED))),
                occupancy=int(head - tail) if head >= tail else 0,
                capacity=int(self.lane_size),
                chain_seq=int(efb_load_relaxed(U64(d, L_CHAIN_SEQ))),
                owner_dropped_full=int(efb_load_relaxed(U64(d, L_OWN_DROPS))),
                owner_dropped_too_large=int(efb_load_relaxed(U64(d, L_OWN_DROPS + 8))),
                owner_dropped_no_lane=int(efb_load_relaxed(U64(d, L_OWN_DROPS + 16))),
            )
            for k in tot:
                tot[k] += lane[k]
            if owner or lane["written"]:
                lanes.append(lane)
        no_lane = int(efb_load_relaxed(U64(b, H_NO_LANE)))
        lease_pid = efb_load_acquire(U64(b, H_LEASE_PID))
        lease_start = efb_load_relaxed(U64(b, H_LEASE_START))
        tot["dropped_no_lane"] = no_lane
        tot["written"] += no_lane
        tot["dropped"] = tot["dropped_full"] + tot["dropped_too_large"] + no_lane
        tot["in_flight"] = tot["accepted"] - tot["acked"]
        tot.update(
            name=self.name,
            layout_version=LAYOUT_VERSION,
            size=self.size,
            lane_count=int(self.lane_count),
            lane_size=int(self.lane_size),
            segment_size=int(self.map_size),
            chain=bool(self.chain),
            free_lanes=sum(1 for ln in lanes if not ln["owner_pid"])
            + int(self.lane_count) - len(lanes),
            reserve=int(self.reserve),
            max_record=int(self.max_record),
            created_ns=int(U64(b, H_CREATED_NS)[0]),
            creator_pid=int(U32(b, H_CREATOR_PID)[0]),
            corrupt_skipped=int(efb_load_relaxed(U64(b, H_CORRUPT))),
            reread=int(efb_load_relaxed(U64(b, H_REREAD))),
            consumer=dict(
                pid=int(lease_pid) or None,
                alive=bool(lease_pid) and bool(efb_alive(<long>lease_pid, lease_start)),
                heartbeat_ns=int(efb_load_relaxed(U64(b, H_LEASE_HEARTBEAT))),
                epoch=int(efb_load_relaxed(U64(b, H_LEASE_EPOCH))),
            ),
            lanes=lanes,
        )
        return tot

    def _check_open(self):
        if self.closed:
            raise RingError("ring is closed")

    def close(self):
        """Detach. This process's lane is handed back once the consumer drained it."""
        if self.base == NULL:
            self.closed = True
            return
        self._release_lane()
        if self.consumer_open or self.waiting:
            # A live Consumer, or a thread waiting for room (block policy), still uses the
            # mapping; it is unmapped when the object goes.
            self.closed = True
            return
        munmap(self.base, self.map_size)
        self.base = NULL
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"{self.lane_count} lanes x {self.lane_size} B"
        return f"<Ring {self.name!r} {state}>"


def _print_drop_warning(name, new, full, no_lane, too_large):
    import sys
    sys.stderr.write(
        f"emp_fastbuf: pid {os.getpid()} dropped {new} record(s) on ring {name!r} "
        f"(so far: ring full {full}, no free lane {no_lane}, too large {too_large}); the "
        f"agent is not keeping up or not running: see `fastbuf status`, give the ring "
        f"more room (EMP_FASTBUF_RING_SIZE) or wait for room "
        f"(EMP_FASTBUF_ON_FULL=block:<ms>). Further drops are reported at most once a "
        f"minute.\n"
    )


def _describe_existing(name, bytes shm):
    try:
        ring = Ring.open(name)
    except RingError as exc:
        return (f"a segment named {shm[1:].decode()!r} exists and cannot be used: {exc}")
    try:
        st = ring.stats()
        pid = st["creator_pid"]
        alive = process_alive(pid)
        return (
            f"ring {shm[1:].decode()!r} already exists (created by pid {pid}, "
            f"{'alive' if alive else 'no longer running'}); pass exist_ok=True to attach "
            f"to it, or Ring.unlink({shm[1:].decode()!r}) to remove it"
        )
    finally:
        ring.close()


cdef class Consumer:
    """The single consumer of a ring (see ``Ring.consumer``)."""

    cdef Ring ring
    cdef uint64_t *pos
    cdef uint64_t *nrec
    cdef uint64_t *nbytes
    cdef uint64_t *gen_seen
    cdef uint64_t *bad_head
    cdef uint64_t *reread_until
    cdef dict metas
    cdef long pid
    cdef uint64_t fork_gen
    cdef readonly bint closed
    cdef double next_reap

    def __cinit__(self):
        self.pos = NULL
        self.nrec = NULL
        self.nbytes = NULL
        self.gen_seen = NULL
        self.bad_head = NULL
        self.reread_until = NULL
        self.closed = True

    def __init__(self):
        raise TypeError("use ring.consumer()")

    @staticmethod
    cdef Consumer _take(Ring ring):
        cdef char *b = ring.base
        cdef uint64_t me = <uint64_t>getpid()
        cdef uint64_t cur, start
        while True:
            cur = efb_load_acquire(U64(b, H_LEASE_PID))
            if cur == 0:
                if efb_cas(U64(b, H_LEASE_PID), 0, me):
                    break
                continue
            if cur == me:
                raise RingBusy(f"this process (pid {me}) already holds the consumer role "
                               f"of ring {ring.name!r}")
            start = efb_load_acquire(U64(b, H_LEASE_START))
            if efb_alive(<long>cur, start):
                raise RingBusy(
                    f"the consumer role of ring {ring.name!r} is held by live pid {cur}"
                )
            # Zero the start time before the pid changes hands, so nobody ever sees the
            # new pid with the dead holder's start time (and takes a live lease).
            if not efb_cas(U64(b, H_LEASE_START), start, 0):
                continue
            if efb_cas(U64(b, H_LEASE_PID), cur, me):
                break  # took over a dead consumer's lease
        efb_store_release(U64(b, H_LEASE_START), _my_start())
        efb_store_release(U64(b, H_LEASE_HEARTBEAT), efb_now_ns(1))
        efb_fetch_add(U64(b, H_LEASE_EPOCH), 1)
        cdef Consumer c = Consumer.__new__(Consumer)
        cdef uint32_t n = ring.lane_count
        c.pos = <uint64_t *>calloc(n, sizeof(uint64_t))
        c.nrec = <uint64_t *>calloc(n, sizeof(uint64_t))
        c.nbytes = <uint64_t *>calloc(n, sizeof(uint64_t))
        c.gen_seen = <uint64_t *>calloc(n, sizeof(uint64_t))
        c.bad_head = <uint64_t *>calloc(n, sizeof(uint64_t))
        c.reread_until = <uint64_t *>calloc(n, sizeof(uint64_t))
        if (c.pos == NULL or c.nrec == NULL or c.nbytes == NULL or c.gen_seen == NULL
                or c.bad_head == NULL or c.reread_until == NULL):
            efb_store_release(U64(b, H_LEASE_PID), 0)
            raise MemoryError()
        cdef uint32_t i
        for i in range(n):
            # Start at the acked position: what the last consumer read but did not ack is
            # read again (at-least-once).
            c.pos[i] = efb_load_acquire(U64(ring._desc(i), L_TAIL))
            c.bad_head[i] = 0xFFFFFFFFFFFFFFFF  # no damage seen yet
            # What the previous consumer read past the tail is read again: counted.
            c.reread_until[i] = efb_load_relaxed(U64(ring._desc(i), L_READ))
        c.ring = ring
        c.metas = {}
        c.pid = <long>me
        c.fork_gen = efb_fork_gen()
        c.closed = False
        c.next_reap = 0.0
        ring.consumer_open = True
        return c

    def __dealloc__(self):
        if not self.closed and self.ring is not None and self.ring.base != NULL:
            self._release()
        free(self.pos)
        free(self.nrec)
        free(self.nbytes)
        free(self.gen_seen)
        free(self.bad_head)
        free(self.reread_until)

    cdef _check(self):
        if self.closed:
            raise RingError("consumer is closed")
        if self.fork_gen != efb_fork_gen():
            raise RingError("the consumer role does not survive fork(); take it again in "
                            "the child")

    cdef _corrupt(self, uint32_t lane, uint64_t head):
        self.bad_head[lane] = head  # the damage is counted once, not on every read
        # Untrusted bytes: skip the rest of the lane rather than read out of bounds. The
        # position stays 8-aligned; a live producer resumes after it (see _window).
        self.pos[lane] = align8(head)
        efb_fetch_add(U64(self.ring.base, H_CORRUPT), 1)

    cdef int _read_lane(self, uint32_t i, list out, Py_ssize_t limit) except -1:
        cdef Ring r = self.ring
        cdef char *d = r._desc(i)
        cdef uint64_t head = efb_load_acquire(U64(d, L_HEAD))
        cdef uint64_t pos = self.pos[i]
        cdef uint64_t tail = efb_load_acquire(U64(d, L_TAIL))
        cdef char *data = r.data_base + <uint64_t>i * r.lane_size
        cdef uint64_t off, size
        cdef uint32_t tag, check
        cdef int count = 0
        if pos < tail:
            pos = tail
        if head < pos or head - tail > r.lane_size:
            if head != self.bad_head[i]:  # count each corruption once, not every read
                self._corrupt(i, head)
                if head < pos:
                    self.pos[i] = pos
            return 0
        while pos < head and count < limit:
            off = pos & r.lane_mask
            if off & 7 or head - pos < 8:
                self._corrupt(i, head)
                return count
            tag = efb_get_u32(data + off)
            check = efb_get_u32(data + off + 4)
            if check != ~tag or (tag & PAD_BIT and tag != PAD_BIT):
                self._corrupt(i, head)
                return count
            if tag & PAD_BIT:
                # A pad is committed together with the record after it: it can never
                # reach the head.
                if pos + (r.lane_size - off) >= head:
                    self._corrupt(i, head)
                    return count
                pos += r.lane_size - off
                continue
            size = align8(8 + <uint64_t>tag)
            if tag > r.max_record or off + size > r.lane_size or pos + size > head:
                self._corrupt(i, head)
                return count
            out.append(PyBytes_FromStringAndSize(data + off + 8, tag))
            self.nrec[i] += 1
            self.nbytes[i] += tag
            if EFB_UNLIKELY(pos < self.reread_until[i]):
                efb_fetch_add(U64(r.base, H_REREAD), 1)
            pos += size
            count += 1
        self.pos[i] = pos
        efb_store_relaxed(U64(d, L_READ), pos)
        return count

    def read(self, max_records=4096):
        """Up to ``max_records`` records (bytes), oldest first within each producer."""
        out = []
        for _lane, _meta, records in self.read_lanes(max_records):
            out.extend(records)
        return out

    def read_lanes(self, max_records=4096):
        """Like ``read``, grouped: a list of ``(lane, meta, records)``."""
        self._check()
        if not isinstance(max_records, int) or isinstance(max_records, bool):
            raise TypeError(f"max_records must be an int, not {type(max_records).__name__}")
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        cdef Ring r = self.ring
        cdef uint32_t i, free_ = 0
        cdef Py_ssize_t left = max_records
        cdef list records
        cdef char *d
        cdef uint64_t owner
        ready = []
        out = []
        efb_store_relaxed(U64(r.base, H_LEASE_HEARTBEAT), efb_now_ns(1))
        for i in range(r.lane_count):
            d = r._desc(i)
            owner = efb_load_acquire(U64(d, L_OWNER))
            if owner == 0:
                free_ += 1
            if efb_load_acquire(U64(d, L_HEAD)) != self.pos[i]:
                ready.append((owner, efb_load_relaxed(U64(d, L_CHAIN_SEQ)), i))
        # The exact count corrects the producers' decrements (and any a kill cut short).
        efb_store_relaxed(U64(r.base, H_FREE_LANES), free_)
        # A producer's lanes in the order it filled them: one that chained on is read
        # after the lane it left.
        if r.chain and len(ready) > 1:
            ready.sort()
        for _owner, _seq, i in ready:
            if left <= 0:
                break
            records = []
            left -= self._read_lane(i, records, left)
            if records:
                out.append((int(i), self._meta(i), records))
        return out

    def pressure(self):
        """How close producers are to dropping, from 0 to 1: the share of the lanes
        producers may chain into that are taken, or, where a producer cannot chain, how
        full its lane is. The agent cuts a batch at once when it is high."""
        self._check()
        cdef Ring r = self.ring
        cdef uint32_t i, owned = 0
        cdef char *d
        cdef uint64_t head, tail
        cdef double lane_max = 0.0, occ
        for i in range(r.lane_count):
            d = r._desc(i)
            if efb_load_relaxed(U64(d, L_OWNER)) == 0:
                continue
            owned += 1
            if efb_load_relaxed(U64(d, L_STATE)) == STATE_RELEASED:
                continue
            head = efb_load_acquire(U64(d, L_HEAD))
            tail = efb_load_acquire(U64(d, L_TAIL))
            if head > tail:
                occ = <double>(head - tail) / <double>r.lane_size
                if occ > lane_max:
                    lane_max = occ
        cdef double chainable = <double>(r.lane_count - r.reserve) if r.chain else 0.0
        cdef double pool = min(1.0, owned / chainable) if chainable > 0 else 0.0
        if pool >= 1.0 or not r.chain:
            return float(max(pool, min(1.0, lane_max)))
        return float(pool)

    cdef bytes _meta(self, uint32_t i):
        cdef Ring r = self.ring
        cdef char *d = r._desc(i)
        cdef uint64_t gen = efb_load_acquire(U64(d, L_GENERATION))
        cached = self.metas.get(i)
        if cached is not None and self.gen_seen[i] == gen:
            return cached
        cdef uint64_t m = efb_load_acquire(U64(d, L_META_LEN))
        if m > r.meta_size:
            m = 0
        meta = PyBytes_FromStringAndSize(r.meta_base + <uint64_t>i * r.meta_size, m)
        self.metas[i] = meta
        self.gen_seen[i] = gen
        return meta

    def ack(self):
        """Everything read so far may now be overwritten by the producers."""
        self._check()
        cdef Ring r = self.ring
        cdef uint32_t i
        cdef char *d
        for i in range(r.lane_count):
            d = r._desc(i)
            if self.pos[i] != efb_load_relaxed(U64(d, L_TAIL)):
                efb_store_relaxed(U64(d, L_ACKED),
                                  efb_load_relaxed(U64(d, L_ACKED)) + self.nrec[i])
                efb_store_relaxed(U64(d, L_BYTES_ACKED),
                                  efb_load_relaxed(U64(d, L_BYTES_ACKED)) + self.nbytes[i])
                efb_store_release(U64(d, L_TAIL), self.pos[i])
            self.nrec[i] = 0
            self.nbytes[i] = 0
        efb_store_relaxed(U64(r.base, H_LEASE_HEARTBEAT), efb_now_ns(1))
        # Lanes handed back (chained from, or closed) are freed at every ack, so that they
        # serve again at once; the liveness check of every owner runs every 0.5 s.
        now = time.monotonic()
        if now >= self.next_reap:
            self.next_reap = now + 0.5
            self.reap()
        else:
            self._reap(False)

    def reap(self):
        """Free drained lanes whose owner is dead or handed them back. Returns how many."""
        self._check()
        return self._reap(True)

    cdef int _reap(self, bint check_alive) except -1:
        cdef Ring r = self.ring
        cdef uint32_t i
        cdef char *d
        cdef uint64_t owner
        freed = 0
        for i in range(r.lane_count):
            d = r._desc(i)
            owner = efb_load_acquire(U64(d, L_OWNER))
            if owner == 0:
                continue
            if efb_load_acquire(U64(d, L_TAIL)) != efb_load_acquire(U64(d, L_HEAD)):
                continue
            if efb_load_acquire(U64(d, L_STATE)) != STATE_RELEASED:
                if not check_alive or efb_alive(<long>owner,
                                                efb_load_acquire(U64(d, L_OWNER_START))):
                    continue
                _reconcile_dead_lane(d)
            # Clear the meta before the owner word: the next claimer writes its own.
            efb_store_release(U64(d, L_META_LEN), 0)
            if efb_cas(U64(d, L_OWNER), owner, 0):
                efb_fetch_add(U64(r.base, H_FREE_LANES), 1)
                freed += 1
        return freed

    def producers(self):
        """Live and dead producers that own lanes: a list of dicts (lane, pid, alive)."""
        self._check()
        cdef Ring r = self.ring
        cdef uint32_t i
        cdef char *d
        out = []
        for i in range(r.lane_count):
            d = r._desc(i)
            owner = efb_load_acquire(U64(d, L_OWNER))
            if owner:
                out.append(dict(
                    lane=int(i), pid=int(owner),
                    alive=bool(efb_alive(<long>owner,
                                         efb_load_acquire(U64(d, L_OWNER_START))))
                    and efb_load_acquire(U64(d, L_STATE)) != STATE_RELEASED,
                ))
        return out

    def backlog(self):
        """Bytes written by producers and not yet read by this consumer."""
        self._check()
        cdef Ring r = self.ring
        cdef uint32_t i
        total = 0
        for i in range(r.lane_count):
            head = efb_load_acquire(U64(r._desc(i), L_HEAD))
            if head > self.pos[i]:
                total += head - self.pos[i]
        return total

    cdef _release(self):
        cdef char *b = self.ring.base
        if self.fork_gen != efb_fork_gen():
            self.closed = True  # a forked child's copy: the role stays the parent's
            return
        if efb_load_acquire(U64(b, H_LEASE_PID)) == <uint64_t>self.pid:
            efb_store_release(U64(b, H_LEASE_START), 0)
        efb_cas(U64(b, H_LEASE_PID), <uint64_t>self.pid, 0)
        self.closed = True
        self.ring.consumer_open = False

    def close(self):
        """Give the role up. Unacknowledged records are read again by the next consumer."""
        if self.closed:
            return
        if self.fork_gen != efb_fork_gen():
            self.closed = True  # the parent still holds the role
            return
        self._release()
        if self.ring.closed and self.ring.base != NULL and not self.ring.waiting:
            munmap(self.ring.base, self.ring.map_size)
            self.ring.base = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef uint64_t fork_generation() noexcept nogil:
    return efb_fork_gen()
