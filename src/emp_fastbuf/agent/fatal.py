"""The workers' fatal-error dumps (``records.fatal``) as their ERROR records.

The drain loop calls ``FatalFiles.collect`` every few seconds, never per read: it lists
``<home>/crashes`` and looks only at the files of processes that are gone (pid and start
time, from the file's name). A dump of this agent's ring becomes one ERROR record with
that process's resource and job, which the agent spools like a drained batch; the file is
removed once the spool has it (``remove``). The empty file of a process that is gone (it
died without a fatal error) is removed at once, whatever its ring. A file the agent cannot
read, or whose header it does not know, is left alone, counted and logged once.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from emp_fastbuf.records import LaneChunk, fatal, reference
from emp_fastbuf.ring import process_alive

log = logging.getLogger("emp_fastbuf.agent")

# The files a scan looks at, at most (the rest wait for the next scan).
MAX_FILES_PER_SCAN = 4096


class FatalFiles:
    """The fatal-error files in ``directory`` that belong to ring ``ring_name``."""

    def __init__(self, directory: Path, ring_name: str) -> None:
        self.directory = directory
        self.ring_name = ring_name
        self.recorded = 0  # dumps turned into records
        self.unreadable = 0  # files left alone: cannot be read, or not a header we know
        self._logged: set[str] = set()
        # Files recorded whose removal failed: never recorded twice.
        self._recorded_names: set[str] = set()

    def _skip(self, name: str, why: str) -> None:
        """Count and log a file left alone, once (beyond 1024 such files, at debug)."""
        if name in self._logged:
            return
        if len(self._logged) >= 1024:
            log.debug("fatal-error file %s left alone: %s", self.directory / name, why)
            return
        self._logged.add(name)
        self.unreadable += 1
        log.warning("fatal-error file %s left alone: %s", self.directory / name, why)

    def _read(self, path: Path) -> tuple[bytes, int]:
        """The file's first bytes (header and dump, up to the cap) and its mtime in ns."""
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            limit = fatal.HEADER_SIZE + fatal.MAX_DUMP_BYTES
            parts: list[bytes] = []
            got = 0
            while got < limit:
                part = os.read(fd, limit - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
            return b"".join(parts), st.st_mtime_ns
        finally:
            os.close(fd)

    def collect(self) -> tuple[list[LaneChunk], list[Path]]:
        """The records of the dumps of gone processes of this ring (one chunk each), and
        their files, to ``remove`` once the records are spooled."""
        chunks: list[LaneChunk] = []
        done: list[Path] = []
        try:
            entries = sorted(os.listdir(self.directory))[:MAX_FILES_PER_SCAN]
        except FileNotFoundError:
            return chunks, done
        except OSError as exc:
            self._skip(".", exc.strerror or str(exc))
            return chunks, done
        for name in entries:
            owner = fatal.parse_name(name)
            if owner is None or name in self._recorded_names or process_alive(*owner):
                continue
            path = self.directory / name
            try:
                data, mtime_ns = self._read(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._skip(name, exc.strerror or str(exc))
                continue
            decoded = fatal.decode(data)
            if decoded is None:
                self._skip(name, "not a fatal-error file of this version")
                continue
            header, dump = decoded
            if not dump.strip():
                self._unlink(path)  # died without a fatal error
                continue
            if header.ring != self.ring_name:
                continue  # its ring's agent delivers it
            chunk = self._chunk(header, dump, mtime_ns)
            if chunk is None:
                self._skip(name, "its header cannot be encoded as a resource")
                continue
            chunks.append(chunk)
            done.append(path)
        return chunks, done

    def _chunk(self, header: fatal.Header, dump: str, mtime_ns: int) -> LaneChunk | None:
        resource, rec = fatal.to_record(header, dump, mtime_ns)
        try:
            meta = reference.encode_resource(resource)
        except (TypeError, ValueError):
            return None
        return LaneChunk(meta, [reference.encode_record(rec)])

    def remove(self, files: list[Path]) -> None:
        """The files whose records are spooled now."""
        for path in files:
            self.recorded += 1
            if not self._unlink(path):
                self._recorded_names.add(path.name)

    def _unlink(self, path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._skip(path.name, f"cannot remove it: {exc.strerror or exc}")
            return False
        return True
