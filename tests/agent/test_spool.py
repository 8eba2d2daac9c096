"""The durable spool: round trips, permissions, crash leftovers, corruption, bounds."""

from __future__ import annotations

import logging
import os
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from emp_fastbuf.agent.spool import CorruptSpoolFile, Spool
from emp_fastbuf.records import LaneChunk

MAGIC = b"EFBSPOOL"
HEADER = struct.Struct("<8sHBBIQQQ")  # as documented in docs/spool-format.md


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sample_batch(n_chunks: int = 2, n_records: int = 3, size: int = 20) -> list[LaneChunk]:
    return [
        LaneChunk(
            f"meta-{c}".encode(),
            [bytes([c % 256, r % 256]) * (size // 2) for r in range(n_records)],
        )
        for c in range(n_chunks)
    ]


def encode_payload(batch: list[LaneChunk]) -> bytes:
    """The payload layout of docs/spool-format.md, written independently of the module."""
    out = bytearray()
    for chunk in batch:
        out += struct.pack("<I", len(chunk.meta)) + chunk.meta
        out += struct.pack("<I", len(chunk.records))
        for rec in chunk.records:
            out += struct.pack("<I", len(rec))
        for rec in chunk.records:
            out += rec
    return bytes(out)


def build_file(
    payload: bytes,
    *,
    n_chunks: int,
    n_records: int,
    compression: int = 1,
    version: int = 1,
    flags: int = 0,
    payload_len: int | None = None,
    frame: bytes | None = None,
    frame_len: int | None = None,
    created: int = 1_700_000_000_000_000_000,
) -> bytes:
    """A spool file per the documented format, with every field overridable."""
    if frame is None:
        frame = zstandard.ZstdCompressor(level=1).compress(payload) if compression else payload
    header = HEADER.pack(
        MAGIC,
        version,
        compression,
        flags,
        n_chunks,
        created,
        n_records,
        len(payload) if payload_len is None else payload_len,
    )
    return b"".join(
        (
            header,
            struct.pack("<I", zlib.crc32(header)),
            struct.pack("<QI", len(frame) if frame_len is None else frame_len, zlib.crc32(frame)),
            frame,
        )
    )


def place(spool_dir: Path, seq: int, data: bytes) -> str:
    file_id = f"{seq:012d}-{1_700_000_000_000_000_000 + seq:019d}"
    (spool_dir / f"{file_id}.spool").write_bytes(data)
    return file_id


# ---- round trips ------------------------------------------------------------------------


def test_round_trip_shapes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    batches = [
        [],
        [LaneChunk(b"", [])],
        [LaneChunk(b"meta", [b"", b"", b"x", b""])],
        [LaneChunk(b"m" * 300, [os.urandom(1 << 20), b"small", os.urandom(70_000)])],
        [
            LaneChunk(f"lane{c}".encode(), [bytes([j]) * j for j in range(c % 7)])
            for c in range(300)
        ],
    ]
    ids = [spool.write(b) for b in batches]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for file_id, batch in zip(ids, batches, strict=True):
        back = spool.read(file_id)
        assert back == batch
        for chunk in back:
            assert type(chunk.meta) is bytes
            assert all(type(r) is bytes for r in chunk.records)
    stats = spool.stats()
    assert stats["files"] == len(batches)
    assert stats["written_files"] == len(batches)
    assert stats["written_records"] == sum(len(c.records) for b in batches for c in b)
    assert stats["bytes"] == sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.spool"))


def test_bytearray_records_are_stored_as_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    file_id = spool.write([LaneChunk(b"m", [bytearray(b"abc"), b"def"])])  # type: ignore[list-item]
    assert spool.read(file_id) == [LaneChunk(b"m", [b"abc", b"def"])]


def test_large_batch_round_trip(tmp_path: Path) -> None:
    records = [os.urandom(30) + b"x" * 120 for _ in range(100_000)]
    batch = [LaneChunk(b"meta", records[:60_000]), LaneChunk(b"meta2", records[60_000:])]
    spool = Spool(tmp_path / "spool")
    file_id = spool.write(batch)
    assert spool.read(file_id) == batch
    assert spool.stats()["written_records"] == 100_000


def test_reads_documented_format_written_by_hand(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    batch = sample_batch(3, 4)
    payload = encode_payload(batch)
    zstd_id = place(spool_dir, 1, build_file(payload, n_chunks=3, n_records=12))
    raw_id = place(spool_dir, 2, build_file(payload, n_chunks=3, n_records=12, compression=0))
    assert spool.pending() == [zstd_id, raw_id]
    assert spool.read(zstd_id) == batch
    assert spool.read(raw_id) == batch
    # And the module's own files parse with the documented layout.
    own = spool.write(batch)
    data = (spool_dir / f"{own}.spool").read_bytes()
    magic, version, compression, flags, n_chunks, _created, n_records, plen = HEADER.unpack_from(
        data
    )
    assert (magic, version, compression, flags, n_chunks, n_records) == (MAGIC, 1, 1, 0, 3, 12)
    frame_len, frame_crc = struct.unpack_from("<QI", data, 44)
    frame = data[56:]
    assert frame_len == len(frame) and zlib.crc32(frame) == frame_crc
    assert zstandard.ZstdDecompressor().decompress(frame) == payload and plen == len(payload)


# ---- permissions ------------------------------------------------------------------------


def test_permissions_owner_only(tmp_path: Path) -> None:
    spool_dir = tmp_path / "a" / "b" / "spool"
    spool = Spool(spool_dir, destinations=("export", "store"))
    assert mode(spool_dir) == 0o700
    assert mode(spool_dir.parent) == 0o700
    file_id = spool.write(sample_batch())
    spool.mark_done(file_id, "export")
    files = list(spool_dir.iterdir())
    assert len(files) == 2  # data file and marker
    assert all(mode(p) == 0o600 for p in files)
    place(spool_dir, 99, b"garbage")
    with pytest.raises(CorruptSpoolFile):
        spool.read(spool.pending()[-1])
    quarantine = tmp_path / "a" / "b" / "quarantine"
    assert mode(quarantine) == 0o700
    assert all(mode(p) == 0o600 for p in quarantine.iterdir())


def test_existing_directory_is_tightened(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o755)
    os.chmod(spool_dir, 0o755)
    Spool(spool_dir)
    assert mode(spool_dir) == 0o700


def test_path_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / "spool"
    target.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        Spool(target)


# ---- crash leftovers --------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_are_ignored_and_removed(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    stale = spool_dir / f".000000000007-{1:019d}.{dead_pid()}.tmp"
    stale.write_bytes(b"half a file")
    odd = spool_dir / "something.tmp"
    odd.write_bytes(b"")
    spool = Spool(spool_dir)
    assert spool.pending() == []
    assert not stale.exists() and not odd.exists()
    # Leftovers appearing later (another crashed writer) are cleaned by pending().
    late = spool_dir / f".000000000008-{1:019d}.{dead_pid()}.tmp"
    late.write_bytes(b"x")
    file_id = spool.write(sample_batch())
    assert spool.pending() == [file_id]
    assert not late.exists()


def test_temporary_file_of_a_live_process_is_kept(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    other = spool_dir / f".000000000001-{1:019d}.{os.getppid()}.tmp"
    other.write_bytes(b"being written")
    assert spool.pending() == []
    assert other.exists()


def test_files_survive_a_killed_writer(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from emp_fastbuf.agent.spool import Spool
        from emp_fastbuf.records import LaneChunk
        spool = Spool(Path({str(spool_dir)!r}))
        batch = [LaneChunk(b"m", [bytes(200)] * 20_000)]
        while True:
            print(spool.write(batch), flush=True)
        """
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        acknowledged = [proc.stdout.readline().strip() for _ in range(5)]
        proc.kill()
        proc.wait(timeout=30)
        acknowledged += [line.strip() for line in proc.stdout if line.strip()]
    assert len(acknowledged) >= 5 and all(acknowledged)
    spool = Spool(spool_dir)
    pending = spool.pending()
    # Every id write() returned is durable; anything half written is gone.
    assert set(acknowledged) <= set(pending)
    for file_id in pending:
        assert spool.read(file_id) == [LaneChunk(b"m", [bytes(200)] * 20_000)]
    assert not [p for p in spool_dir.iterdir() if p.name.endswith(".tmp")]


# ---- corruption -------------------------------------------------------------------------


def _valid() -> bytes:
    return build_file(encode_payload(sample_batch()), n_chunks=2, n_records=6)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def _bad_inner_length() -> bytes:
    payload = bytearray(encode_payload(sample_batch()))
    struct.pack_into("<I", payload, 0, 10_000_000)  # the first chunk's meta length
    return build_file(bytes(payload), n_chunks=2, n_records=6)


def _bad_record_length() -> bytes:
    batch = [LaneChunk(b"m", [b"abc", b"def"])]
    payload = bytearray(encode_payload(batch))
    struct.pack_into("<I", payload, 4 + 1 + 4, 0xFFFFFFFF)  # first record's length
    return build_file(bytes(payload), n_chunks=1, n_records=2)


CORRUPTIONS: dict[str, tuple[Callable[[], bytes], str]] = {
    "truncated": (lambda: _valid()[: len(_valid()) // 2], "truncated"),
    "truncated_header": (lambda: _valid()[:20], "truncated"),
    "empty": (lambda: b"", "truncated"),
    "flipped_payload_byte": (lambda: _flip(_valid(), 60), "checksum"),
    "flipped_header_byte": (lambda: _flip(_valid(), 30), "header checksum"),
    "wrong_magic": (lambda: b"NOTSPOOL" + _valid()[8:], "magic"),
    "unknown_version": (lambda: build_file(b"", n_chunks=0, n_records=0, version=2), "version"),
    "garbage": (lambda: os.urandom(500), "magic"),
    "huge_frame_length": (
        lambda: build_file(b"", n_chunks=0, n_records=0, frame_len=1 << 62),
        "frame length",
    ),
    "huge_payload_length": (
        lambda: build_file(b"", n_chunks=0, n_records=0, payload_len=1 << 60),
        "cap",
    ),
    "counts_exceed_payload": (
        lambda: build_file(b"", n_chunks=0, n_records=1 << 40),
        "cannot fit",
    ),
    "trailing_bytes": (lambda: _valid() + b"extra", "follow the header"),
    "unknown_compression": (
        lambda: build_file(b"", n_chunks=0, n_records=0, compression=9, frame=b""),
        "compression",
    ),
    "unknown_flags": (lambda: build_file(b"", n_chunks=0, n_records=0, flags=4), "flags"),
    "not_zstd": (
        lambda: build_file(b"abcd", n_chunks=0, n_records=0, frame=b"definitely not zstd"),
        "decompression",
    ),
    "zstd_size_mismatch": (
        lambda: build_file(
            encode_payload(sample_batch()),
            n_chunks=2,
            n_records=6,
            payload_len=len(encode_payload(sample_batch())) - 1,
        ),
        "content size",
    ),
    "inner_length_out_of_bounds": (_bad_inner_length, "out of bounds"),
    "record_length_out_of_bounds": (_bad_record_length, "run past"),
    "record_count_mismatch": (
        lambda: build_file(encode_payload(sample_batch()), n_chunks=2, n_records=5),
        "out of bounds",
    ),
    "leftover_payload": (
        lambda: build_file(encode_payload(sample_batch()) + b"\0" * 8, n_chunks=2, n_records=6),
        "left over",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_file_is_quarantined(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, reason = CORRUPTIONS[case]
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, destinations=("export", "store"))
    before = spool.write(sample_batch(1, 2))
    content = make()
    bad = place(spool_dir, 50, content)
    assert spool.pending() == [before, bad]
    after = spool.write(sample_batch(2, 2))
    spool.mark_done(bad, "export")  # its marker must go with it
    assert spool.pending() == [before, bad, after]
    with (
        caplog.at_level(logging.ERROR, logger="emp_fastbuf.agent"),
        pytest.raises(CorruptSpoolFile, match=reason) as info,
    ):
        spool.read(bad)
    assert bad in str(info.value)
    assert any(bad in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    quarantined = tmp_path / "quarantine" / f"{bad}.spool"
    assert quarantined.read_bytes() == content
    assert not list(spool_dir.glob(f"{bad}*"))
    assert spool.pending() == [before, after]
    assert spool.read(before) == sample_batch(1, 2)
    assert spool.read(after) == sample_batch(2, 2)
    assert spool.stats()["quarantined_files"] == 1
    with pytest.raises(FileNotFoundError):
        spool.read(bad)


def test_quarantine_keeps_earlier_files_with_the_same_name(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    for content in (b"first", b"second"):
        bad = place(spool_dir, 5, content)
        with pytest.raises(CorruptSpoolFile):
            spool.read(bad)
    names = sorted(p.read_bytes() for p in (tmp_path / "quarantine").iterdir())
    assert names == [b"first", b"second"]


# ---- bounds -----------------------------------------------------------------------------


def test_eviction_drops_oldest_first_and_counts_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    # Incompressible records so that each file has a predictable size (~10 KB).
    batches = [[LaneChunk(b"m", [os.urandom(1000) for _ in range(10 + i)])] for i in range(6)]
    spool = Spool(spool_dir, limit_bytes=40_000)
    ids = []
    with caplog.at_level(logging.DEBUG, logger="emp_fastbuf.agent"):
        for batch in batches:
            ids.append(spool.write(batch))
            assert spool.stats()["bytes"] <= 40_000 or len(spool.pending()) == 1
    pending = spool.pending()
    assert pending == ids[-len(pending) :]  # a suffix: the oldest went first
    evicted = ids[: len(ids) - len(pending)]
    assert len(evicted) >= 2
    stats = spool.stats()
    assert stats["evicted_files"] == len(evicted)
    assert stats["evicted_records"] == sum(10 + ids.index(e) for e in evicted)
    assert stats["bytes"] <= 40_000
    # Each file at debug level; one warning for the whole burst, with its count.
    assert all(any(e in r.getMessage() for r in caplog.records) for e in evicted)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "evicted" in warnings[0].getMessage()
    for file_id in pending:
        assert spool.read(file_id) == batches[ids.index(file_id)]


def test_file_larger_than_the_limit_is_kept_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=1000)
    first = spool.write([LaneChunk(b"", [os.urandom(5000)])])
    second = spool.write([LaneChunk(b"", [os.urandom(5000)])])
    assert spool.pending() == [second]
    assert spool.stats()["evicted_files"] == 1
    with pytest.raises(FileNotFoundError):
        spool.read(first)
    spool.mark_done(first, "export")  # an evicted file: nothing to do, no error


def test_eviction_counts_records_of_files_from_a_previous_run(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    old = Spool(spool_dir)
    first = old.write([LaneChunk(b"", [os.urandom(3000) for _ in range(7)])])
    spool = Spool(spool_dir, limit_bytes=25_000)
    spool.write([LaneChunk(b"", [os.urandom(3000) for _ in range(7)])])
    spool.write([LaneChunk(b"", [os.urandom(3000) for _ in range(1)])])
    assert first not in spool.pending()
    assert spool.stats()["evicted_records"] == 7


# ---- destinations -----------------------------------------------------------------------


def test_mark_done_needs_every_destination_and_survives_reopen(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, destinations=("export", "store"))
    a = spool.write(sample_batch())
    b = spool.write(sample_batch())
    spool.mark_done(a, "store")
    spool.mark_done(a, "store")  # idempotent
    assert spool.done_for(a) == {"store"}
    assert spool.done_for(b) == set()
    assert spool.pending() == [a, b]

    reopened = Spool(spool_dir, destinations=("export", "store"))
    assert reopened.pending() == [a, b]
    assert reopened.done_for(a) == {"store"}
    reopened.mark_done(a, "export")
    assert reopened.pending() == [b]
    assert reopened.stats()["deleted_files"] == 1
    assert sorted(p.name for p in spool_dir.iterdir()) == [f"{b}.spool"]

    again = Spool(spool_dir, destinations=("export", "store"))
    assert again.pending() == [b]
    assert again.done_for(a) == set()
    again.mark_done(b, "export")
    again.mark_done(b, "store")
    assert again.pending() == []
    assert list(spool_dir.iterdir()) == []


def test_destinations_marked_together_write_one_marker_each_or_none(tmp_path: Path) -> None:
    """What one delivery completes is marked in one call: markers for a part of the
    destinations (durable across a reopen), and no marker at all when they finish the
    file, which is deleted at once."""
    spool_dir = tmp_path / "spool"
    dests = ("export", "metrics", "store")
    spool = Spool(spool_dir, destinations=dests)
    a = spool.write(sample_batch())
    b = spool.write(sample_batch())
    spool.mark_done(a, "export", "metrics", "export")  # a repeat counts once
    assert spool.done_for(a) == {"export", "metrics"}
    assert sorted(p.name for p in spool_dir.iterdir()) == sorted(
        [f"{a}.spool", f"{a}.export.done", f"{a}.metrics.done", f"{b}.spool"]
    )
    assert Spool(spool_dir, destinations=dests).done_for(a) == {"export", "metrics"}
    spool.mark_done(b, *dests)
    assert spool.pending() == [a]
    assert not any(p.name.startswith(b) for p in spool_dir.iterdir())
    spool.mark_done(a, "metrics", "store")
    assert spool.pending() == []
    assert list(spool_dir.iterdir()) == []
    assert spool.stats()["deleted_files"] == 2
    spool.mark_done(a)  # nothing to mark: a no-op
    with pytest.raises(ValueError, match="destination"):
        spool.mark_done(spool.write(sample_batch()), "store", "elsewhere")


def test_interrupted_completion_is_finished_on_open(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, destinations=("export", "store"))
    a = spool.write(sample_batch())
    b = spool.write(sample_batch())
    # Markers for every destination but the file still there; and orphan markers.
    for dest in ("export", "store"):
        (spool_dir / f"{a}.{dest}.done").write_bytes(b"")
    (spool_dir / f"000000000042-{5:019d}.export.done").write_bytes(b"")
    reopened = Spool(spool_dir, destinations=("export", "store"))
    assert reopened.pending() == [b]
    assert sorted(p.name for p in spool_dir.iterdir()) == [f"{b}.spool"]


def test_mark_done_rejects_bad_arguments(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", destinations=("export", "store"))
    file_id = spool.write(sample_batch())
    with pytest.raises(ValueError, match="destination"):
        spool.mark_done(file_id, "elsewhere")
    with pytest.raises(ValueError, match="file id"):
        spool.mark_done("../../etc/passwd", "export")
    with pytest.raises(TypeError):
        spool.mark_done(123, "export")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="file id"):
        spool.done_for("nope")
    assert spool.pending() == [file_id]


# ---- ordering ---------------------------------------------------------------------------


def test_pending_is_oldest_first_across_instances(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    first = Spool(spool_dir)
    ids = [first.write(sample_batch(1, 1)) for _ in range(12)]
    assert first.pending() == ids
    second = Spool(spool_dir)
    later = [second.write(sample_batch(1, 1)) for _ in range(3)]
    assert second.pending() == ids + later
    assert all(x < y for x, y in zip(ids + later, (ids + later)[1:], strict=False))
    # A file dropped in by hand with a higher sequence number is picked up, and new
    # files are numbered after it.
    foreign = place(spool_dir, 500, _valid())
    assert second.pending()[-1] == foreign
    newest = second.write(sample_batch())
    assert second.pending()[-2:] == [foreign, newest]


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch",
    [
        "not a list",
        [b"raw bytes"],
        [LaneChunk("meta", [b"x"])],  # type: ignore[arg-type]
        [LaneChunk(b"meta", ["text"])],  # type: ignore[list-item]
        [LaneChunk(b"meta", b"x")],  # type: ignore[arg-type]
        [LaneChunk(b"meta", [b"ok", 5])],  # type: ignore[list-item]
    ],
)
def test_write_rejects_wrong_types(tmp_path: Path, batch: object) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(TypeError):
        spool.write(batch)  # type: ignore[arg-type]
    assert spool.pending() == []
    assert [p for p in (tmp_path / "spool").iterdir()] == []


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"limit_bytes": 0}, ValueError),
        ({"limit_bytes": "big"}, TypeError),
        ({"limit_bytes": True}, TypeError),
        ({"destinations": ()}, ValueError),
        ({"destinations": ["export"]}, ValueError),
        ({"destinations": ("export", "export")}, ValueError),
        ({"destinations": ("../x",)}, ValueError),
        ({"destinations": ("a.b",)}, ValueError),
    ],
)
def test_constructor_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        Spool(tmp_path / "spool", **kwargs)


def test_read_rejects_bad_ids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ValueError):
        spool.read("../quarantine/x")
    with pytest.raises(FileNotFoundError):
        spool.read(f"{1:012d}-{1:019d}")


# ---- threads ----------------------------------------------------------------------------


def test_one_writer_one_reader_deliver_everything_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", destinations=("export", "store"))
    n_batches = 60
    written: list[str] = []
    seen: dict[str, list[LaneChunk]] = {}
    errors: list[BaseException] = []
    writer_done = threading.Event()

    def writer() -> None:
        try:
            for i in range(n_batches):
                written.append(spool.write([LaneChunk(b"m", [i.to_bytes(4, "little")] * 50)]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer_done.set()

    def reader() -> None:
        try:
            while True:
                finished = writer_done.is_set()
                for file_id in spool.pending():
                    assert file_id not in seen
                    seen[file_id] = spool.read(file_id)
                    spool.mark_done(file_id, "store")
                    spool.mark_done(file_id, "export")
                if finished and not spool.pending():
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert sorted(seen) == written
    for i, file_id in enumerate(written):
        assert seen[file_id] == [LaneChunk(b"m", [i.to_bytes(4, "little")] * 50)]
    assert spool.stats()["deleted_files"] == n_batches
    assert list((tmp_path / "spool").iterdir()) == []
