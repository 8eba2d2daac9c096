"""The ring: the shared-memory segment that producers write records into and the agent
drains (``docs/ring-layout.md``). Native: ``_ring.pyx`` with ``_atomics.h`` and
``_proc.h``; ``shm`` sizes a new ring to ``/dev/shm``; ``segments`` finds stale ones.

The names below are the ring's public surface for the other stages; only the producer's
native encoder cimports ``_ring`` itself (the lane protocol in ``_ring.pxd``)."""

from emp_fastbuf.ring._ring import (
    DEFAULT_MAX_RECORD,
    DEFAULT_META_SIZE,
    DEFAULT_SIZE,
    LAYOUT_VERSION,
    MAX_LANES,
    MAX_SIZE,
    Consumer,
    Ring,
    default_ring_name,
    layout_for,
    process_alive,
    process_start,
)

__all__ = [
    "DEFAULT_MAX_RECORD",
    "DEFAULT_META_SIZE",
    "DEFAULT_SIZE",
    "LAYOUT_VERSION",
    "MAX_LANES",
    "MAX_SIZE",
    "Consumer",
    "Ring",
    "default_ring_name",
    "layout_for",
    "process_alive",
    "process_start",
]
