"""The ring: the shared-memory segment that producers write records into and the agent
drains (``docs/ring-layout.md``). Native: ``_ring.pyx`` with ``_atomics.h`` and
``_proc.h``; ``shm`` sizes a new ring to ``/dev/shm``; ``segments`` finds stale ones."""
