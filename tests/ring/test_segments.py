"""Stale ring segments of dead owners: removed when empty, reported when they still
hold records, never touched while someone alive uses them (holds a lane, the consumer
role, or only has the segment mapped)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.ring import segments
from emp_fastbuf.ring.segments import list_segments, sweep_stale
from support.segments import mapped_by_another_process

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(sys.platform != "linux", reason="lists /dev/shm"),
]


def _create_and_exit(name: str, records: int) -> None:
    ring = fastbuf.Ring.create(name, 1 << 20, lanes=4, max_record=1024)
    for i in range(records):
        ring.write(b"r%d" % i)
    # exits without unlinking, like a crashed owner


def _in_child(name: str, records: int) -> None:
    p = mp.get_context("spawn").Process(target=_create_and_exit, args=(name, records))
    p.start()
    p.join(60)
    assert p.exitcode == 0


def _names() -> set[str]:
    return {s.name for s in list_segments()}


def test_empty_segment_of_a_dead_owner_is_removed(ring_name: str) -> None:
    _in_child(ring_name, 0)
    assert ring_name in _names()
    sweep_stale(dry_run=True)
    assert ring_name in _names()  # a dry run removes nothing
    sweep_stale()
    assert ring_name not in _names()


def test_segment_with_records_is_reported_not_removed(
    ring_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    _in_child(ring_name, 5)
    with caplog.at_level(logging.WARNING, logger="emp_fastbuf"):
        found = {s.name: s for s in sweep_stale()}
    assert found[ring_name].in_flight == 5 and not found[ring_name].stale
    assert ring_name in _names()
    assert f"fastbuf agent --ring {ring_name}" in caplog.text
    ring = fastbuf.Ring.open(ring_name)
    c = ring.consumer()
    assert len(c.read(100)) == 5  # still deliverable
    c.ack()
    c.close()
    ring.close()


def test_live_and_kept_segments_are_left_alone(ring_name: str) -> None:
    ring = fastbuf.Ring.create(ring_name, 1 << 20, lanes=4, max_record=1024)
    try:
        info = {s.name: s for s in sweep_stale()}[ring_name]
        assert info.live_processes == 1 and not info.stale  # its creator (us) is alive
        assert ring_name in _names()
    finally:
        ring.close()


def test_unreadable_segment_is_reported(ring_name: str, caplog: pytest.LogCaptureFixture) -> None:
    fd = os.open(f"/dev/shm/{ring_name}", os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 8192)
    os.close(fd)
    with caplog.at_level(logging.WARNING, logger="emp_fastbuf"):
        found = {s.name: s for s in sweep_stale()}
    assert found[ring_name].error is not None and not found[ring_name].stale
    assert ring_name in _names() and "cannot be used" in caplog.text


def test_segment_a_live_process_maps_is_left_until_it_exits(ring_name: str) -> None:
    with mapped_by_another_process(ring_name):  # creator dead, empty: stale by its header
        info = {s.name: s for s in sweep_stale()}[ring_name]
        assert info.mapped is True and not info.stale
        assert ring_name in _names()
    sweep_stale()
    assert ring_name not in _names()


def test_mappings_are_read_from_proc_maps(
    ring_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /proc here, restricted to this process and the one that maps the ring: the real
    # maps files, without other processes whose maps this user may not read.
    proc_dir = tmp_path / "proc"
    proc_dir.mkdir()
    (proc_dir / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    monkeypatch.setattr(segments, "PROC_DIR", proc_dir)
    with mapped_by_another_process(ring_name) as pid:
        inode = os.stat(f"/dev/shm/{ring_name}").st_ino
        assert segments._mapped_inodes({ring_name}) == {ring_name: set()}
        (proc_dir / str(pid)).symlink_to(f"/proc/{pid}")
        assert segments._mapped_inodes({ring_name}) == {ring_name: {inode}}


def test_without_a_way_to_tell_who_maps_it_nothing_is_removed(
    ring_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # This process as on a system without file leases and without a readable /proc (the
    # segment is mapped elsewhere only so that agents started meanwhile leave it alone).
    monkeypatch.setattr(segments, "_open_elsewhere", lambda _path, _inode: None)
    monkeypatch.setattr(segments, "PROC_DIR", tmp_path / "no-proc")
    with mapped_by_another_process(ring_name):
        with caplog.at_level(logging.WARNING, logger="emp_fastbuf"):
            info = {s.name: s for s in sweep_stale()}[ring_name]
        assert info.mapped is None and not info.stale
        assert ring_name in _names()
    assert f"Ring.unlink({ring_name!r})" in caplog.text
