"""Reading back, decoded, what the telemetry API wrote into a ring (the ``ring`` fixture
in conftest.py gives a private one)."""

from __future__ import annotations

import emp_fastbuf as fastbuf
from emp_fastbuf.records import Record, Resource, reference


def drain(ring: fastbuf.Ring) -> list[tuple[Resource, Record]]:
    """Everything in the ring, decoded with its producer's resource, then acknowledged."""
    out: list[tuple[Resource, Record]] = []
    c = ring.consumer()
    try:
        while True:
            got = c.read_lanes(10_000)
            if not got:
                break
            for _lane, meta, recs in got:
                res = reference.decode_resource(meta)
                out.extend((res, reference.decode_record(r)) for r in recs)
        c.ack()
    finally:
        c.close()
    return out


def records(ring: fastbuf.Ring) -> list[Record]:
    return [r for _res, r in drain(ring)]
