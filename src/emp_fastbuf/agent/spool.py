"""Durable spool of raw batches between the drainer and the destinations.

The drainer writes each batch (raw ring bytes, per lane) to one file and acknowledges the
ring records only after ``Spool.write`` returns; exporters read the oldest files, and mark
each destination done; the file is deleted once every destination has it. The on-disk
format is described in ``docs/spool-format.md``. Files read back are untrusted: a file that
does not parse, and any entry that is not a regular file or whose name is not one the spool
writes, is moved to ``<directory>/../quarantine/`` instead of being retried forever.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import shutil
import stat
import struct
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lz4.frame
import zstandard

from emp_fastbuf.errors import CorruptSpoolFile as CorruptSpoolFile
from emp_fastbuf.records import LaneChunk

__all__ = [
    "COMPRESSION_LZ4",
    "COMPRESSION_NONE",
    "COMPRESSION_ZSTD",
    "DEFAULT_LIMIT_BYTES",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_PAYLOAD",
    "SPOOL_CODECS",
    "CorruptSpoolFile",
    "LaneChunk",
    "Spool",
    "SpoolCodec",
]

log = logging.getLogger("emp_fastbuf.agent")

MAGIC = b"EFBSPOOL"
FORMAT_VERSION = 1
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
COMPRESSION_LZ4 = 2
ZSTD_LEVEL = 1
SpoolCodec = Literal["zstd", "lz4"]
SPOOL_CODECS: tuple[SpoolCodec, ...] = ("zstd", "lz4")
_CODEC_IDS: dict[str, int] = {"zstd": COMPRESSION_ZSTD, "lz4": COMPRESSION_LZ4}
DEFAULT_LIMIT_BYTES = 1 << 30
# Largest uncompressed payload a file may hold; also the most a reader will allocate.
MAX_PAYLOAD = 1 << 30

# magic, version, compression, flags, chunk count, created ns, record count, payload length
_HEADER = struct.Struct("<8sHBBIQQQ")
_HEADER_CRC = struct.Struct("<I")
_FRAME = struct.Struct("<QI")  # compressed length, crc32 of the compressed bytes
_PREFIX_LEN = _HEADER.size + _HEADER_CRC.size + _FRAME.size  # 56
_U32 = struct.Struct("<I")
# Upper bound of a valid file: zstd and lz4 never expand input by more than a small fraction.
_MAX_FILE = _PREFIX_LEN + MAX_PAYLOAD + (MAX_PAYLOAD >> 6)
_U32_MAX = 0xFFFFFFFF

_DATA_SUFFIX = ".spool"
# Names are parsed strictly: ASCII digits only, fixed widths. The sequence number never
# grows past 12 digits (see Spool._renumber), so every id the writer makes is one the scan
# lists.
_SEQ_DIGITS = 12
_SEQ_MAX = 10**_SEQ_DIGITS - 1
_ID_RE = re.compile(r"[0-9]{12}-[0-9]{19}")
_DATA_RE = re.compile(r"([0-9]{12}-[0-9]{19})\.spool")
_MARKER_RE = re.compile(r"([0-9]{12}-[0-9]{19})\.([A-Za-z0-9_-]{1,64})\.done")
_DEST_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TMP_RE = re.compile(r"\.([0-9]{12}-[0-9]{19})\.([0-9]+)\.tmp")
# Opening an entry of the spool never follows a symlink and never blocks (a FIFO).
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
# While the spool keeps evicting, the warning is repeated at most this often.
_EVICTION_WARN_INTERVAL_S = 300.0
# A temporary file of a live process other than this one is left alone for this long.
_TMP_GRACE_S = 3600.0

# Record lengths are stored as little-endian u32; pick the array code that is 4 bytes.
_LEN_CODE = "I" if array("I").itemsize == 4 else "L"
_BIG_ENDIAN = sys.byteorder == "big"

# Temporary files being written right now by any Spool of this process.
_active_tmp: set[str] = set()
_active_tmp_lock = threading.Lock()


class _Corrupt(Exception):
    """Internal: why a file does not parse."""


class _NotRegular(Exception):
    """Internal: a spool entry is not a regular file (directory, FIFO, symlink, device)."""


@dataclass(slots=True)
class _Entry:
    size: int
    records: int


def _u32_lengths(items: Sequence[bytes | bytearray], what: str) -> bytes:
    try:
        lengths = array(_LEN_CODE, map(len, items))
    except OverflowError:
        raise ValueError(f"a {what} is larger than 4 GiB - 1") from None
    if _BIG_ENDIAN:
        lengths.byteswap()
    return lengths.tobytes()


def _encode_payload(batch: Sequence[LaneChunk]) -> tuple[bytes, int, int]:
    """Serialize a batch; returns (payload, chunk count, record count)."""
    if not isinstance(batch, list | tuple):
        raise TypeError(f"batch must be a list of LaneChunk, not {type(batch).__name__}")
    parts: list[bytes] = []
    n_records = 0
    for chunk in batch:
        if not isinstance(chunk, LaneChunk):
            raise TypeError(f"batch items must be LaneChunk, not {type(chunk).__name__}")
        meta, recs = chunk.meta, chunk.records
        if not isinstance(meta, bytes | bytearray):
            raise TypeError(f"LaneChunk.meta must be bytes, not {type(meta).__name__}")
        if not isinstance(recs, list | tuple):
            raise TypeError(f"LaneChunk.records must be a list, not {type(recs).__name__}")
        # The common case is all bytes; only walk the slow path when it is not.
        if not all(type(r) is bytes for r in recs):
            for r in recs:
                if not isinstance(r, bytes | bytearray):
                    raise TypeError(f"records must be bytes, not {type(r).__name__}")
        if len(meta) > _U32_MAX or len(recs) > _U32_MAX:
            raise ValueError("lane metadata or record count does not fit in 32 bits")
        parts.append(_U32.pack(len(meta)))
        parts.append(bytes(meta))
        parts.append(_U32.pack(len(recs)))
        parts.append(_u32_lengths(recs, "record"))
        parts.extend(recs)
        n_records += len(recs)
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"batch of {len(payload)} bytes exceeds the {MAX_PAYLOAD} byte limit")
    return payload, len(batch), n_records


def _decode_payload(payload: bytes, n_chunks: int, n_records: int) -> list[LaneChunk]:
    """Parse a payload; every length is checked against what is left."""
    end = len(payload)
    pos = 0
    chunks: list[LaneChunk] = []
    seen_records = 0
    for index in range(n_chunks):
        if end - pos < 4:
            raise _Corrupt(f"chunk {index}: metadata length runs past the payload")
        (meta_len,) = _U32.unpack_from(payload, pos)
        pos += 4
        if meta_len > end - pos:
            raise _Corrupt(f"chunk {index}: metadata length {meta_len} out of bounds")
        meta = payload[pos : pos + meta_len]
        pos += meta_len
        if end - pos < 4:
            raise _Corrupt(f"chunk {index}: record count runs past the payload")
        (count,) = _U32.unpack_from(payload, pos)
        pos += 4
        if count > n_records - seen_records or count * 4 > end - pos:
            raise _Corrupt(f"chunk {index}: record count {count} out of bounds")
        lengths = array(_LEN_CODE)
        lengths.frombytes(payload[pos : pos + count * 4])
        if _BIG_ENDIAN:
            lengths.byteswap()
        pos += count * 4
        offsets = list(itertools.accumulate(lengths, initial=pos))
        if offsets[-1] > end:
            raise _Corrupt(f"chunk {index}: record lengths run past the payload")
        records = [payload[a:b] for a, b in itertools.pairwise(offsets)]
        pos = offsets[-1]
        seen_records += count
        chunks.append(LaneChunk(meta, records))
    if pos != end:
        raise _Corrupt(f"{end - pos} bytes left over after the last chunk")
    if seen_records != n_records:
        raise _Corrupt(f"header says {n_records} records, payload holds {seen_records}")
    return chunks


def _parse_header(head: bytes) -> tuple[int, int, int, int, int]:
    """Check the fixed header; returns (compression, chunks, created ns, records, payload len)."""
    if len(head) < len(MAGIC) + 2:
        raise _Corrupt(f"truncated: {len(head)} bytes, shorter than the header")
    if head[: len(MAGIC)] != MAGIC:
        raise _Corrupt("bad magic (not a spool file)")
    (version,) = struct.unpack_from("<H", head, len(MAGIC))
    if version != FORMAT_VERSION:
        raise _Corrupt(f"unknown format version {version}")
    if len(head) < _HEADER.size + _HEADER_CRC.size:
        raise _Corrupt(f"truncated: {len(head)} bytes, shorter than the header")
    fields = _HEADER.unpack_from(head, 0)
    (crc,) = _HEADER_CRC.unpack_from(head, _HEADER.size)
    if zlib.crc32(head[: _HEADER.size]) != crc:
        raise _Corrupt("header checksum mismatch")
    _, _, compression, flags, n_chunks, created, n_records, payload_len = fields
    if flags != 0:
        raise _Corrupt(f"unknown header flags {flags:#x}")
    if compression not in (COMPRESSION_NONE, COMPRESSION_ZSTD, COMPRESSION_LZ4):
        raise _Corrupt(f"unknown compression id {compression}")
    if payload_len > MAX_PAYLOAD:
        raise _Corrupt(f"payload length {payload_len} exceeds the {MAX_PAYLOAD} byte cap")
    # Each chunk needs 8 bytes and each record 4 bytes of the payload.
    if n_chunks * 8 + n_records * 4 > payload_len:
        raise _Corrupt(f"{n_chunks} chunks / {n_records} records cannot fit the payload")
    return compression, n_chunks, created, n_records, payload_len


def _decode_file(data: bytes) -> list[LaneChunk]:
    """Parse a whole spool file (untrusted bytes)."""
    compression, n_chunks, _created, n_records, payload_len = _parse_header(data)
    if len(data) < _PREFIX_LEN:
        raise _Corrupt(f"truncated: {len(data)} bytes, no frame header")
    frame_len, frame_crc = _FRAME.unpack_from(data, _HEADER.size + _HEADER_CRC.size)
    available = len(data) - _PREFIX_LEN
    if frame_len != available:
        if frame_len > available:
            raise _Corrupt(f"truncated: frame length {frame_len}, {available} bytes present")
        raise _Corrupt(f"frame length {frame_len} but {available} bytes follow the header")
    frame = data[_PREFIX_LEN:]
    if zlib.crc32(frame) != frame_crc:
        raise _Corrupt("payload checksum mismatch")
    if compression == COMPRESSION_ZSTD:
        try:
            content_size = zstandard.get_frame_parameters(frame).content_size
        except zstandard.ZstdError as exc:
            raise _Corrupt(f"decompression error: {exc}") from None
        # The writer always records the content size; refuse anything else so the
        # decompressor never sizes its output from an unchecked field.
        if content_size != payload_len:
            raise _Corrupt(f"zstd content size {content_size} != payload length {payload_len}")
        try:
            payload = zstandard.ZstdDecompressor().decompress(
                frame, max_output_size=payload_len, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise _Corrupt(f"decompression error: {exc}") from None
    elif compression == COMPRESSION_LZ4:
        payload = _decompress_lz4(frame, payload_len)
    else:
        payload = frame
    if len(payload) != payload_len:
        raise _Corrupt(f"payload is {len(payload)} bytes, header says {payload_len}")
    return _decode_payload(payload, n_chunks, n_records)


def _decompress_lz4(frame: bytes, payload_len: int) -> bytes:
    """Decompress one lz4 frame whose declared content size must equal ``payload_len``."""
    try:
        content_size = lz4.frame.get_frame_info(frame)["content_size"]
    except (RuntimeError, ValueError) as exc:
        raise _Corrupt(f"decompression error: {exc}") from None
    if content_size != payload_len:
        raise _Corrupt(f"lz4 content size {content_size} != payload length {payload_len}")
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        # Never more output than the checked length, whatever the frame's blocks say.
        payload: bytes = decompressor.decompress(frame, max_length=payload_len)
    except (RuntimeError, ValueError) as exc:
        raise _Corrupt(f"decompression error: {exc}") from None
    if not decompressor.eof or decompressor.unused_data:
        raise _Corrupt("lz4 frame does not end where the file ends")
    return payload


def _open_regular(path: Path) -> int:
    """Open a spool entry for reading without following a symlink or blocking on a FIFO.

    Raises ``_NotRegular`` for anything but a regular file (checked on the open fd, so a
    swap after a directory scan is caught too) and ``FileNotFoundError`` when it is gone.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotRegular("a symbolic link, not a regular file") from None
        if exc.errno in (errno.ENXIO, errno.EACCES, errno.EPERM, errno.EISDIR):
            raise _NotRegular(f"cannot be opened ({exc.strerror})") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _NotRegular(f"a {_kind(mode)}, not a regular file")
    return fd


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _header_records(path: Path) -> int:
    """Record count from a file's header, 0 when the header does not parse.

    Raises ``_NotRegular`` when ``path`` is not a regular file."""
    try:
        fd = _open_regular(path)
    except OSError:
        return 0
    try:
        head = os.read(fd, _HEADER.size + _HEADER_CRC.size)
        return _parse_header(head)[3]
    except (OSError, _Corrupt):
        return 0
    finally:
        os.close(fd)


def _read_bounded(fd: int, limit: int) -> bytes:
    """Everything in ``fd``; raises ``_Corrupt`` past ``limit`` bytes (a file that grows)."""
    parts = []
    total = 0
    while chunk := os.read(fd, min(1 << 24, limit + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise _Corrupt(f"file is larger than any valid spool file ({limit} bytes)")
    return b"".join(parts)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_private_dir(path: Path) -> None:
    """Create ``path`` and missing parents as 0700; tighten ``path`` if it exists."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    os.chmod(path, 0o700)


def _make_quarantine_dir(path: Path) -> None:
    """Like ``_make_private_dir``, but whatever holds the name and is not a real directory
    (a file, a FIFO, a symlink) is renamed to ``<name>.not-a-directory[.N]`` first, so
    that quarantining keeps working."""
    try:
        mode: int | None = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISDIR(mode):
        aside = path.with_name(path.name + ".not-a-directory")
        n = 1
        while os.path.lexists(aside):
            aside = path.with_name(f"{path.name}.not-a-directory.{n}")
            n += 1
        os.rename(path, aside)
        log.warning("spool: %s was a %s, not a directory; moved it to %s", path, _kind(mode), aside)
    _make_private_dir(path)


def _is_regular(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _move(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target``; False when it was gone already."""
    try:
        os.rename(source, target)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # The quarantine is on another filesystem.
    mode = os.lstat(source).st_mode
    if stat.S_ISREG(mode):
        shutil.move(str(source), str(target))
        return True
    if stat.S_ISDIR(mode):
        raise OSError(errno.EXDEV, "a directory is not copied to another filesystem")
    # A FIFO, symlink, socket or device holds none of the spool's data.
    os.unlink(source)
    return False


class Spool:
    """A bounded directory of durable batch files, oldest first.

    Safe for one writer thread and one reader thread (or more readers) in one process.
    ``codec`` (``zstd`` or ``lz4``) compresses the files this spool writes; each file
    records its own codec, so files written with either are read.
    """

    def __init__(
        self,
        directory: Path,
        limit_bytes: int = DEFAULT_LIMIT_BYTES,
        destinations: tuple[str, ...] = ("export",),
        codec: str = "zstd",
    ) -> None:
        if not isinstance(directory, str | os.PathLike):
            raise TypeError(f"directory must be a path, not {type(directory).__name__}")
        if not isinstance(limit_bytes, int) or isinstance(limit_bytes, bool):
            raise TypeError(f"limit_bytes must be an int, not {type(limit_bytes).__name__}")
        if limit_bytes <= 0:
            raise ValueError("limit_bytes must be positive")
        if not isinstance(destinations, tuple) or not destinations:
            raise ValueError("destinations must be a non-empty tuple of names")
        for name in destinations:
            if not isinstance(name, str) or not _DEST_RE.fullmatch(name):
                raise ValueError(f"invalid destination name {name!r} (letters, digits, _ -)")
        if len(set(destinations)) != len(destinations):
            raise ValueError("destination names must be unique")
        if not isinstance(codec, str) or codec not in _CODEC_IDS:
            raise ValueError(f"unknown spool codec {codec!r} (expected zstd or lz4)")
        self.directory = Path(directory)
        self.quarantine_dir = self.directory.parent / "quarantine"
        self.limit_bytes = limit_bytes
        self.destinations = destinations
        self.codec = codec
        self._compression = _CODEC_IDS[codec]
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        self._index: dict[str, _Entry] = {}
        self._done: dict[str, set[str]] = {}
        self._bytes = 0
        self._next_seq = 1
        # Names that could not be moved to quarantine: left in place and skipped.
        self._stuck: set[str] = set()
        # The eviction burst in progress: evicted since it began, and the last warning.
        self._burst_files = 0
        self._burst_records = 0
        self._burst_unreported = (0, 0)  # (files, records) since the last warning
        self._burst_warned_at: float | None = None
        self._counters = dict.fromkeys(
            (
                "written_files",
                "written_records",
                "evicted_files",
                "evicted_records",
                "eviction_bursts",
                "quarantined_files",
                "deleted_files",
            ),
            0,
        )
        _make_private_dir(self.directory)
        with self._lock:
            self._reconcile()
            # Finish deletions a crash interrupted: every destination already has these.
            for file_id in [f for f, d in self._done.items() if d >= set(destinations)]:
                if file_id in self._index:
                    self._delete(file_id)
                    self._counters["deleted_files"] += 1

    # ---- paths --------------------------------------------------------------------------

    def _data_path(self, file_id: str) -> Path:
        return self.directory / (file_id + _DATA_SUFFIX)

    def _marker_path(self, file_id: str, destination: str) -> Path:
        return self.directory / f"{file_id}.{destination}.done"

    @staticmethod
    def _check_id(file_id: str) -> None:
        if not isinstance(file_id, str):
            raise TypeError(f"file id must be a str, not {type(file_id).__name__}")
        if not _ID_RE.fullmatch(file_id):
            raise ValueError(f"not a spool file id: {file_id!r}")

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- directory scan -----------------------------------------------------------------

    def _tmp_is_stale(self, name: str) -> bool:
        path = str(self.directory / name)
        with _active_tmp_lock:
            if path in _active_tmp:
                return False
        m = _TMP_RE.fullmatch(name)
        if m is None:
            return True
        pid = int(m.group(2))
        if pid == os.getpid() or not _pid_alive(pid):
            return True
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return False
        return age > _TMP_GRACE_S

    def _not_regular(self, name: str) -> str:
        try:
            return f"a {_kind(os.lstat(self.directory / name).st_mode)}, not a regular file"
        except OSError:
            return "not a regular file"

    def _reconcile(self) -> None:
        """Bring the index in line with the directory (caller holds the lock).

        Entries with the spool's names that are not regular files, and ``*.spool`` names
        the spool does not write, are moved to quarantine: nothing else may stall delivery.
        """
        with os.scandir(self.directory) as it:
            entries = [(e.name, _is_regular(e)) for e in it]
        data: set[str] = set()
        markers: dict[str, set[str]] = {}
        for name, regular in entries:
            if name in self._stuck:
                continue
            if name.endswith(".tmp"):
                if not regular:
                    self._quarantine_entry(name, self._not_regular(name))
                elif self._tmp_is_stale(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.directory / name)
                    log.info("spool: removed leftover temporary file %s", name)
                continue
            m = _DATA_RE.fullmatch(name)
            if m is not None:
                if regular:
                    data.add(m.group(1))
                else:
                    self._quarantine_entry(name, self._not_regular(name), m.group(1))
                continue
            m = _MARKER_RE.fullmatch(name)
            if m is not None:
                if regular:
                    markers.setdefault(m.group(1), set()).add(m.group(2))
                else:
                    self._quarantine_entry(name, self._not_regular(name))
                continue
            if name.endswith(_DATA_SUFFIX):
                # Not a name this spool writes (e.g. a 13-digit sequence): never listed,
                # so never delivered; quarantined where it can be seen and counted.
                self._quarantine_entry(name, "not a spool file name (docs/spool-format.md)")
        for file_id in [f for f in self._index if f not in data]:
            self._forget(file_id)
        for file_id in sorted(data - self._index.keys()):
            path = self._data_path(file_id)
            try:
                size = os.lstat(path).st_size
                records = _header_records(path)
            except FileNotFoundError:
                continue
            except _NotRegular as exc:
                self._quarantine_entry(path.name, str(exc), file_id)
                continue
            self._index[file_id] = _Entry(size, records)
            self._bytes += size
            self._done[file_id] = set(markers.get(file_id, ())) & set(self.destinations)
            self._next_seq = max(self._next_seq, int(file_id[:_SEQ_DIGITS]) + 1)
        # Markers whose data file is gone belong to a deletion a crash interrupted.
        for file_id in markers.keys() - data:
            for dest in markers[file_id]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._marker_path(file_id, dest))

    def _renumber(self) -> None:
        """Give the files present the sequence numbers 1, 2, ... in their order (caller
        holds the lock).

        Only when the 12-digit sequence is used up (a file named ``999999999999-...``):
        the next id would not fit the names the scan lists. The order of the files, and so
        of delivery, is unchanged; a crash midway leaves an order-preserving mix.
        """
        self._reconcile()
        seq = 0
        renamed = 0
        for old in sorted(self._index):
            seq += 1
            while True:
                new = f"{seq:0{_SEQ_DIGITS}d}{old[_SEQ_DIGITS:]}"
                if new == old or not os.path.lexists(self._data_path(new)):
                    break
                seq += 1
            if new == old:
                continue
            try:
                os.rename(self._data_path(old), self._data_path(new))
            except FileNotFoundError:
                self._forget(old)
                seq -= 1
                continue
            done = self._done.pop(old, set())
            for dest in done:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self._marker_path(old, dest), self._marker_path(new, dest))
            self._index[new] = self._index.pop(old)
            self._done[new] = done
            renamed += 1
        self._next_seq = seq + 1
        self._fsync_dir()
        log.warning(
            "spool: the %d-digit sequence number was used up; renumbered %d of %d files "
            "from 1 (their order is unchanged)",
            _SEQ_DIGITS,
            renamed,
            len(self._index),
        )

    def _forget(self, file_id: str) -> None:
        entry = self._index.pop(file_id, None)
        if entry is not None:
            self._bytes -= entry.size
        self._done.pop(file_id, None)

    def _delete(self, file_id: str) -> None:
        """Remove a file and then its markers (caller holds the lock)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._data_path(file_id))
        for dest in self._done.get(file_id, ()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._marker_path(file_id, dest))
        self._forget(file_id)

    # ---- public API ---------------------------------------------------------------------

    def _compress(self, payload: bytes) -> bytes:
        if self._compression == COMPRESSION_LZ4:
            frame: bytes = lz4.frame.compress(payload, store_size=True)
            return frame
        return self._cctx.compress(payload)

    def write(self, batch: list[LaneChunk]) -> str:
        """Store a batch durably and return its file id; durable once this returns."""
        payload, n_chunks, n_records = _encode_payload(batch)
        with self._write_lock:
            frame = self._compress(payload)
            # The id's time field has 19 digits (until the year 2286).
            created = min(time.time_ns(), 10**19 - 1)
            with self._lock:
                if self._next_seq > _SEQ_MAX:
                    self._renumber()
                seq = self._next_seq
                self._next_seq += 1
            file_id = f"{seq:0{_SEQ_DIGITS}d}-{created:019d}"
            header = _HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                self._compression,
                0,
                n_chunks,
                created,
                n_records,
                len(payload),
            )
            blob = b"".join(
                (
                    header,
                    _HEADER_CRC.pack(zlib.crc32(header)),
                    _FRAME.pack(len(frame), zlib.crc32(frame)),
                    frame,
                )
            )
            tmp = self.directory / f".{file_id}.{os.getpid()}.tmp"
            with _active_tmp_lock:
                _active_tmp.add(str(tmp))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.fchmod(fd, 0o600)
                    view = memoryview(blob)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                with self._lock:
                    os.rename(tmp, self._data_path(file_id))
                    self._index[file_id] = _Entry(len(blob), n_records)
                    self._done[file_id] = set()
                    self._bytes += len(blob)
                    self._counters["written_files"] += 1
                    self._counters["written_records"] += n_records
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            finally:
                with _active_tmp_lock:
                    _active_tmp.discard(str(tmp))
            self._fsync_dir()
        with self._lock:
            self._evict(keep=file_id)
        return file_id

    def _evict(self, keep: str) -> None:
        """Drop the oldest files until under the limit; never the one just written.

        A *burst* is a run of writes that each had to evict; it ends at the first write
        that fits. It is warned about once when it begins (and again every few minutes
        while it lasts), with the counts; each file is logged at debug level.
        """
        if self._bytes <= self.limit_bytes:
            self._end_burst()
            return
        files = records = 0
        for file_id in sorted(self._index):
            if self._bytes <= self.limit_bytes:
                break
            if file_id == keep:
                continue
            n = self._index[file_id].records
            self._delete(file_id)
            files += 1
            records += n
            log.debug(
                "spool over its %d byte limit: evicted %s (%d records)",
                self.limit_bytes,
                file_id,
                n,
            )
        if not files:
            return
        self._counters["evicted_files"] += files
        self._counters["evicted_records"] += records
        self._burst_files += files
        self._burst_records += records
        now = time.monotonic()
        if self._burst_warned_at is None:
            self._counters["eviction_bursts"] += 1
            self._burst_warned_at = now
            self._burst_unreported = (0, 0)
            log.warning(
                "spool full: evicted the oldest %d records (%s) to stay under its %d byte "
                "limit; they are lost. The destinations are not keeping up; further "
                "evictions are counted in the status (evicted_records) until the spool has "
                "room again. Raise the limit with EMP_FASTBUF_SPOOL_MAX_BYTES or "
                "fastbuf agent --spool-max",
                records,
                _files(files),
                self.limit_bytes,
            )
            return
        unreported_files, unreported_records = self._burst_unreported
        unreported_files += files
        unreported_records += records
        if now - self._burst_warned_at < _EVICTION_WARN_INTERVAL_S:
            self._burst_unreported = (unreported_files, unreported_records)
            return
        self._burst_warned_at = now
        self._burst_unreported = (0, 0)
        log.warning(
            "spool still full: evicted %d more records (%s); %d records (%s) since evictions began",
            unreported_records,
            _files(unreported_files),
            self._burst_records,
            _files(self._burst_files),
        )

    def _end_burst(self) -> None:
        if self._burst_warned_at is None:
            return
        log.info(
            "spool has room again: %d records (%s) were evicted while it was full",
            self._burst_records,
            _files(self._burst_files),
        )
        self._burst_files = self._burst_records = 0
        self._burst_unreported = (0, 0)
        self._burst_warned_at = None

    def pending(self) -> list[str]:
        """File ids not yet done for every destination, oldest first."""
        with self._lock:
            self._reconcile()
            return sorted(self._index)

    def read(self, file_id: str) -> list[LaneChunk]:
        """The batch stored in ``file_id``.

        Raises ``CorruptSpoolFile`` (after moving the file to quarantine) when it does not
        parse or is not a regular file, ``FileNotFoundError`` when it is no longer in the
        spool.
        """
        self._check_id(file_id)
        path = self._data_path(file_id)
        try:
            try:
                fd = _open_regular(path)
            except FileNotFoundError:
                raise FileNotFoundError(f"spool file {file_id} is not in the spool") from None
            except _NotRegular as exc:
                raise _Corrupt(str(exc)) from None
            try:
                size = os.fstat(fd).st_size
                # Never read a file no writer could have produced.
                if size > _MAX_FILE:
                    raise _Corrupt(f"file of {size} bytes is larger than any valid spool file")
                data = _read_bounded(fd, _MAX_FILE)
            finally:
                os.close(fd)
            return _decode_file(data)
        except _Corrupt as exc:
            where = self._quarantine_entry(path.name, str(exc), file_id)
            moved = "left in place, skipped" if where is None else f"moved to {where}"
            raise CorruptSpoolFile(f"spool file {file_id} is corrupt ({exc}); {moved}") from None

    def quarantine(self, file_id: str, reason: str) -> Path | None:
        """Move ``file_id`` to quarantine (a file that keeps failing delivery for a reason
        of its own): it is no longer pending. Returns where it went."""
        self._check_id(file_id)
        return self._quarantine_entry(self._data_path(file_id).name, reason, file_id)

    def _quarantine_target(self, name: str) -> Path:
        if name.endswith(_DATA_SUFFIX):
            base, ext = name[: -len(_DATA_SUFFIX)], _DATA_SUFFIX
        else:
            base, ext = name, ""
        target = self.quarantine_dir / name
        n = 1
        while os.path.lexists(target):
            target = self.quarantine_dir / f"{base}.{n}{ext}"
            n += 1
        return target

    def _quarantine_entry(self, name: str, reason: str, file_id: str | None = None) -> Path | None:
        """Move the spool entry ``name`` (any kind) to quarantine; with ``file_id``, drop
        that file's markers and index entry. Returns where it went, None when it could not
        be moved (it is then skipped from now on)."""
        target: Path | None
        with self._lock:
            try:
                _make_quarantine_dir(self.quarantine_dir)
                target = self._quarantine_target(name)
                _move(self.directory / name, target)
            except OSError as exc:
                self._stuck.add(name)
                target = None
                log.error("spool entry %s cannot be quarantined (%s): %s", name, reason, exc)
            if target is not None:
                with contextlib.suppress(OSError):
                    # Only a regular file: chmod would follow a symlink out of the spool.
                    if stat.S_ISREG(os.lstat(target).st_mode):
                        os.chmod(target, 0o600)
            if file_id is not None:
                for dest in self._done.get(file_id, ()):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._marker_path(file_id, dest))
                self._forget(file_id)
            if target is not None:
                self._counters["quarantined_files"] += 1
        if target is not None:
            log.error("spool file %s quarantined to %s: %s", name, target, reason)
        return target

    def mark_done(self, file_id: str, *destinations: str) -> None:
        """Record durably that each of ``destinations`` accepted ``file_id``; the file is
        deleted once every destination has. Destinations one delivery completed are marked
        together: one directory fsync for all their markers, and none at all when they
        finish the file (deleting it is then the durable record). A file no longer in the
        spool is ignored."""
        self._check_id(file_id)
        for destination in destinations:
            if destination not in self.destinations:
                raise ValueError(f"unknown destination {destination!r}")
        with self._lock:
            if file_id not in self._index:
                self._reconcile()
                if file_id not in self._index:
                    return
            done = self._done.setdefault(file_id, set())
            new = [d for d in dict.fromkeys(destinations) if d not in done]
            if not new:
                return
            if done.union(new) >= set(self.destinations):
                # The last destinations: deleting the file is the durable record.
                self._delete(file_id)
                self._counters["deleted_files"] += 1
                self._fsync_dir()
                return
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            for destination in new:
                fd = os.open(self._marker_path(file_id, destination), flags, 0o600)
                try:
                    os.fchmod(fd, 0o600)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._fsync_dir()
            done.update(new)

    def done_for(self, file_id: str) -> set[str]:
        """Destinations that have accepted ``file_id`` (empty once it left the spool)."""
        self._check_id(file_id)
        with self._lock:
            return set(self._done.get(file_id, ()))

    def stats(self) -> dict[str, int]:
        """Counters: files, bytes, the byte limit, written/evicted/quarantined/deleted files
        and records, and eviction bursts (runs of writes that had to evict)."""
        with self._lock:
            return {
                "files": len(self._index),
                "bytes": self._bytes,
                "limit_bytes": self.limit_bytes,
                **self._counters,
            }
