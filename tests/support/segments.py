"""A ring segment whose creator is dead and that another live process maps (the segment
sweep's and the agent's start-up tests). The children are started with "spawn": what they
run is importable from here."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import emp_fastbuf as fastbuf

WRITTEN_LATE = b"written after the sweep"


def _map_and_wait(name: str, created: Any, ready: Any, go: Any, write: bool) -> None:
    assert created.wait(60)
    ring = fastbuf.Ring.open(name)  # attached, but no lane taken: nothing written yet
    ready.set()
    go.wait(120)
    if write:
        assert ring.write(WRITTEN_LATE)
    ring.close()


def _create_until_mapped(name: str, created: Any, ready: Any) -> None:
    fastbuf.Ring.create(name, 1 << 20, lanes=4, max_record=1024)
    created.set()
    assert ready.wait(60)
    # exits without unlinking: the creator is dead, the mapper lives on


@contextmanager
def mapped_by_another_process(name: str, write: bool = False) -> Iterator[int]:
    """An empty segment whose creator is dead and that another live process has mapped
    without writing (it maps it while the creator still lives, so that no agent started
    meanwhile on this machine can take it for stale). Yields the mapper's pid; on the
    way out the mapper writes ``WRITTEN_LATE`` if ``write``, then exits."""
    ctx = mp.get_context("spawn")
    created, ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    mapper = ctx.Process(target=_map_and_wait, args=(name, created, ready, go, write))
    mapper.start()
    try:
        creator = ctx.Process(target=_create_until_mapped, args=(name, created, ready))
        creator.start()
        creator.join(60)
        assert creator.exitcode == 0 and ready.is_set()
        assert mapper.pid is not None
        yield mapper.pid
    finally:
        go.set()
        mapper.join(60)
        if mapper.is_alive():
            mapper.kill()
    assert mapper.exitcode == 0
