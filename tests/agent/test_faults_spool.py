"""Faults in the agent's spool directory and its limits: entries that are not regular files
(directories, FIFOs, symlinks, a `quarantine` that is a file), names outside the documented
format, a used-up sequence number, eviction during a long outage, and the two codecs.

Anything that could block or read without end on a faulty spool runs in a child process
with a timeout and a memory cap, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import lz4.frame
import pytest

from emp_fastbuf.agent import spool as spool_module
from emp_fastbuf.agent.config import SPOOL_CODECS, AgentConfig, ConfigError, parse_size
from emp_fastbuf.agent.runner import config_from_args
from emp_fastbuf.agent.spool import CorruptSpoolFile, LaneChunk, Spool
from emp_fastbuf.cli import build_parser
from emp_fastbuf.testing.receiver import OTLPReceiver
from support import ROOT
from support.agent import AgentProc, run_worker, seqs

HEADER = struct.Struct("<8sHBBIQQQ")  # docs/spool-format.md
ID_FORMAT = "[0-9]{12}-[0-9]{19}"
T0 = 1_700_000_000_000_000_000
SRC = str(ROOT / "src")


def batch(tag: int, n: int = 3) -> list[LaneChunk]:
    return [LaneChunk(f"meta-{tag}".encode(), [f"rec-{tag}-{i}".encode() * 4 for i in range(n)])]


def file_name(seq: int, created: int = T0) -> str:
    return f"{seq:012d}-{created:019d}.spool"


def valid_file(content: list[LaneChunk], tmp_path: Path) -> bytes:
    """The bytes of a spool file the module wrote for ``content``."""
    scratch = Spool(tmp_path / "scratch" / "spool")
    file_id = scratch.write(content)
    return (tmp_path / "scratch" / "spool" / f"{file_id}.spool").read_bytes()


def run_isolated(code: str, timeout: float = 60) -> dict[str, Any]:
    """Run ``code`` in a child with 2 GiB of address space; it prints one JSON line."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": SRC},
            preexec_fn=cap_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the spool blocked (killed after the timeout)")
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- entries that are not regular files ---------------------------------------------------


def test_directory_named_like_a_spool_file_is_quarantined(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    first = spool.write(batch(1))
    planted = spool_dir / file_name(10**6)
    planted.mkdir()
    (planted / "inside").write_bytes(b"kept")
    last = spool.write(batch(2))
    # Read directly (as a delivery loop holding an older listing would): an error that
    # quarantines, not an IsADirectoryError that stops delivery.
    with pytest.raises(CorruptSpoolFile, match="directory"):
        spool.read(planted.name[: -len(".spool")])
    assert spool.pending() == [first, last]
    assert [spool.read(f) for f in (first, last)] == [batch(1), batch(2)]
    moved = tmp_path / "quarantine" / planted.name
    assert moved.is_dir() and (moved / "inside").read_bytes() == b"kept"
    # Found by the scan too, before anything reads it.
    again = spool_dir / file_name(10**6 + 1)
    again.mkdir()
    assert spool.pending() == [first, last]
    assert (tmp_path / "quarantine" / again.name).is_dir()
    assert spool.stats()["quarantined_files"] == 2


def test_fifo_in_the_spool_neither_blocks_opening_nor_reading(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    (spool_dir / file_name(1)).write_bytes(valid_file(batch(1), tmp_path))
    os.mkfifo(spool_dir / file_name(2))
    result = run_isolated(
        f"""
        import json, os
        from pathlib import Path
        from emp_fastbuf.agent.spool import CorruptSpoolFile, Spool
        spool_dir = Path({str(spool_dir)!r})
        spool = Spool(spool_dir)
        pending = spool.pending()
        first = [c.records for c in spool.read(pending[0])]
        os.mkfifo(spool_dir / {file_name(3)!r})
        try:
            spool.read({file_name(3)[:-6]!r})
            error = ""
        except CorruptSpoolFile as exc:
            error = str(exc)
        print(json.dumps({{"pending": pending, "first": [[r.decode() for r in c] for c in first],
                          "error": error, "stats": spool.stats()}}))
        """
    )
    assert result["pending"] == [file_name(1)[:-6]]
    assert result["first"] == [[r.decode() for r in batch(1)[0].records]]
    assert "FIFO" in result["error"]
    assert result["stats"]["quarantined_files"] == 2
    for seq in (2, 3):
        assert stat.S_ISFIFO(os.lstat(tmp_path / "quarantine" / file_name(seq)).st_mode)


def test_symlink_to_dev_zero_is_not_followed(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    zero_mode = os.stat("/dev/zero").st_mode
    os.symlink("/dev/zero", spool_dir / file_name(1))
    elsewhere = tmp_path / "elsewhere.spool"
    elsewhere_bytes = valid_file(batch(2), tmp_path)
    elsewhere.write_bytes(elsewhere_bytes)
    os.symlink(elsewhere, spool_dir / file_name(2))
    (spool_dir / file_name(3)).write_bytes(valid_file(batch(3), tmp_path))
    result = run_isolated(
        f"""
        import json
        from pathlib import Path
        from emp_fastbuf.agent.spool import CorruptSpoolFile, Spool
        spool = Spool(Path({str(spool_dir)!r}))
        errors = []
        for file_id in ({file_name(1)[:-6]!r}, {file_name(2)[:-6]!r}):
            try:
                spool.read(file_id)
            except CorruptSpoolFile as exc:
                errors.append(str(exc))
            except FileNotFoundError:
                errors.append("gone")
        print(json.dumps({{"errors": errors, "pending": spool.pending(),
                          "stats": spool.stats()}}))
        """
    )
    # Opening quarantined them both; reading them later finds them gone.
    assert result["errors"] == ["gone", "gone"]
    assert result["pending"] == [file_name(3)[:-6]]
    assert result["stats"]["quarantined_files"] == 2
    for seq in (1, 2):
        assert (tmp_path / "quarantine" / file_name(seq)).is_symlink()
    assert os.stat("/dev/zero").st_mode == zero_mode  # chmod never followed the link
    assert elsewhere.read_bytes() == elsewhere_bytes


def test_symlink_planted_after_the_scan_is_refused_on_read(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    (spool_dir / file_name(1)).write_bytes(valid_file(batch(1), tmp_path))
    result = run_isolated(
        f"""
        import json, os
        from pathlib import Path
        from emp_fastbuf.agent.spool import CorruptSpoolFile, Spool
        spool_dir = Path({str(spool_dir)!r})
        spool = Spool(spool_dir)
        (file_id,) = spool.pending()
        os.unlink(spool_dir / {file_name(1)!r})
        os.symlink("/dev/zero", spool_dir / {file_name(1)!r})
        try:
            spool.read(file_id)
            error = ""
        except CorruptSpoolFile as exc:
            error = str(exc)
        print(json.dumps({{"error": error, "pending": spool.pending()}}))
        """
    )
    assert "symbolic link" in result["error"]
    assert result["pending"] == []
    assert (tmp_path / "quarantine" / file_name(1)).is_symlink()


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_quarantine_path_that_is_not_a_directory_is_moved_aside(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    blocker = tmp_path / "quarantine"
    if kind == "file":
        blocker.write_bytes(b"someone's notes")
    else:
        os.symlink("/dev/null", blocker)
    good = spool.write(batch(1))
    (spool_dir / file_name(10**6)).write_bytes(b"garbage")
    with (
        caplog.at_level(logging.WARNING, logger="emp_fastbuf.agent"),
        pytest.raises(CorruptSpoolFile, match="truncated"),
    ):
        spool.read(file_name(10**6)[:-6])
    assert blocker.is_dir() and not blocker.is_symlink()
    assert (blocker / file_name(10**6)).read_bytes() == b"garbage"
    aside = tmp_path / "quarantine.not-a-directory"
    if kind == "file":
        assert aside.read_bytes() == b"someone's notes"
    else:
        assert os.readlink(aside) == "/dev/null"
    assert any("not a directory" in r.getMessage() for r in caplog.records)
    assert spool.read(good) == batch(1)
    assert spool.stats()["quarantined_files"] == 1


def test_non_regular_marker_and_temporary_names_do_not_stop_the_spool(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, destinations=("export", "store"))
    file_id = spool.write(batch(1))
    (spool_dir / f"{file_id}.export.done").mkdir()
    (spool_dir / "leftover.tmp").mkdir()
    assert spool.pending() == [file_id]
    assert spool.done_for(file_id) == set()
    spool.mark_done(file_id, "export")
    spool.mark_done(file_id, "store")
    assert spool.pending() == []
    assert (tmp_path / "quarantine" / f"{file_id}.export.done").is_dir()
    assert (tmp_path / "quarantine" / "leftover.tmp").is_dir()


# ---- a real agent with a FIFO in its spool --------------------------------------------------


@pytest.fixture
def agent_home(env_clean: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``env_clean`` without spool settings in the environment either."""
    for var in list(os.environ):
        if var.startswith("EMP_FASTBUF_SPOOL_"):
            monkeypatch.delenv(var)
    return env_clean


def test_agent_with_a_fifo_in_its_spool_starts_and_delivers(
    agent_home: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    spool_dir = agent_home / "spool"
    spool_dir.mkdir(mode=0o700)
    fifo = spool_dir / file_name(1)
    os.mkfifo(fifo)
    agent = AgentProc(agent_ring, agent_home, "--endpoint", receiver.url)
    try:
        agent.wait_ready()
        assert agent.status_path.exists(), agent.output()
        run_worker(agent_ring, 40, "w1")
        assert receiver.wait_for(lambda r: len(seqs(r, "w1")) == 40, 30), agent.output()
    finally:
        if not agent.status_path.exists() and agent.proc.poll() is None:
            agent.proc.kill()  # blocked before it installed its signal handlers
        code = agent.stop(signal.SIGKILL if agent.proc.poll() is not None else signal.SIGTERM)
    assert code == 0, agent.output()
    assert stat.S_ISFIFO(os.lstat(agent_home / "quarantine" / fifo.name).st_mode)
    assert "FIFO" in agent.output()


# ---- names and sequence numbers -------------------------------------------------------------


def test_batches_after_the_last_sequence_number_are_listed_and_delivered(
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    (spool_dir / file_name(7)).write_bytes(valid_file(batch(7), tmp_path))
    (spool_dir / file_name(10**12 - 1)).write_bytes(valid_file(batch(0), tmp_path))
    spool = Spool(spool_dir)
    written = [spool.write(batch(i)) for i in (1, 2)]
    pending = spool.pending()
    assert all(len(f) == 32 and f[12] == "-" for f in pending)
    assert pending[-2:] == written
    # Everything is listed, counted and read back, in the order it was written.
    assert [spool.read(f) for f in pending] == [batch(7), batch(0), batch(1), batch(2)]
    assert spool.stats()["files"] == 4
    # And after a restart, the next batch still goes after them.
    reopened = Spool(spool_dir)
    newest = reopened.write(batch(3))
    assert reopened.pending() == [*pending, newest]


def test_renumbering_keeps_done_markers(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    top = file_name(10**12 - 1)
    (spool_dir / top).write_bytes(valid_file(batch(0), tmp_path))
    (spool_dir / f"{top[:-6]}.export.done").write_bytes(b"")
    spool = Spool(spool_dir, destinations=("export", "store"))
    spool.write(batch(1))
    oldest, newest = spool.pending()
    assert spool.done_for(oldest) == {"export"} and spool.read(oldest) == batch(0)
    assert spool.done_for(newest) == set()
    spool.mark_done(oldest, "store")  # its last destination: deleted with its marker
    assert spool.pending() == [newest]
    assert sorted(p.name for p in spool_dir.iterdir()) == [f"{newest}.spool"]


@pytest.mark.parametrize(
    "name",
    [
        f"{10**12:013d}-{T0:019d}.spool",  # a 13-digit sequence
        "000000000001-170000000000000000.spool",  # an 18-digit time
        "\u0661" * 12 + f"-{T0:019d}.spool",  # digits, but not ASCII ones
        "notes.spool",
    ],
)
def test_foreign_spool_names_are_quarantined(tmp_path: Path, name: str) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    content = valid_file(batch(1), tmp_path)
    (spool_dir / name).write_bytes(content)
    (spool_dir / "README").write_bytes(b"left alone")
    assert spool.pending() == []
    assert (tmp_path / "quarantine" / name).read_bytes() == content
    assert (spool_dir / "README").exists()
    assert spool.stats()["quarantined_files"] == 1


# ---- eviction ---------------------------------------------------------------------------


def big_batch(n: int) -> list[LaneChunk]:
    return [LaneChunk(b"m", [os.urandom(1000) for _ in range(n)])]  # ~n KB, incompressible


def test_one_warning_per_eviction_burst_with_its_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool", limit_bytes=40_000)
    with caplog.at_level(logging.INFO, logger="emp_fastbuf.agent"):
        ids = [spool.write(big_batch(10)) for _ in range(8)]  # ~80 KB: a long outage
        stats = spool.stats()
        evicted = [f for f in ids if f not in spool.pending()]
        assert stats["evicted_files"] == len(evicted) >= 4
        assert stats["evicted_records"] == 10 * len(evicted)
        assert stats["eviction_bursts"] == 1 and stats["limit_bytes"] == 40_000
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "evicted the oldest 10 records (1 file)" in warnings[0].getMessage()
        assert "EMP_FASTBUF_SPOOL_MAX_BYTES" in warnings[0].getMessage()
        # The outage ends: the destination catches up, the next write fits.
        for file_id in spool.pending():
            spool.mark_done(file_id, "export")
        spool.write(big_batch(1))
        ended = [
            m for r in caplog.records if (m := r.getMessage()).startswith("spool has room again")
        ]
        assert ended == [f"spool has room again: {10 * len(evicted)} records "
                         f"({len(evicted)} files) were evicted while it was full"]  # fmt: skip
        # A second outage is a second burst, warned about again.
        for _ in range(5):
            spool.write(big_batch(10))
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert spool.stats()["eviction_bursts"] == 2


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("2G", 2 << 30),
        ("2GiB", 2 << 30),
        ("2 GB", 2 << 30),
        ("1.5G", 3 << 29),
        ("4096K", 4 << 20),
        ("1T", 1 << 40),
        ("2097152B", 2 << 20),
    ],
)
def test_spool_limit_sizes(text: str, size: int) -> None:
    assert parse_size(text, "x") == size
    env = {"HOME": "/home/someone", "EMP_FASTBUF_SPOOL_MAX_BYTES": text}
    assert AgentConfig.from_env(env).spool_limit_bytes == size
    assert AgentConfig.from_env({"HOME": "/h"}, {"spool_max": text}).spool_limit_bytes == size


@pytest.mark.parametrize("text", ["abc", "-1", "1X", "1.G", "0", "512", "1e9", "G", "1 G B"])
def test_bad_spool_limit_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="EMP_FASTBUF_SPOOL_MAX_BYTES"):
        AgentConfig.from_env({"HOME": "/h", "EMP_FASTBUF_SPOOL_MAX_BYTES": text})
    with pytest.raises(ConfigError, match="--spool-max"):
        AgentConfig.from_env({"HOME": "/h"}, {"spool_max": text})


def test_spool_settings_come_from_the_flag_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EMP_FASTBUF_HOME", str(tmp_path))
    monkeypatch.setenv("EMP_FASTBUF_SPOOL_MAX_BYTES", "3G")
    monkeypatch.setenv("EMP_FASTBUF_SPOOL_CODEC", "LZ4")
    parser = build_parser()
    config = config_from_args(parser.parse_args(["agent", "--spool-max", "512M"]))
    assert (config.spool_limit_bytes, config.spool_codec) == (512 << 20, "lz4")
    assert config.describe()["spool_limit_bytes"] == 512 << 20
    assert config.describe()["spool_codec"] == "lz4"
    config = config_from_args(parser.parse_args(["agent"]))
    assert config.spool_limit_bytes == 3 << 30
    monkeypatch.delenv("EMP_FASTBUF_SPOOL_MAX_BYTES")
    monkeypatch.delenv("EMP_FASTBUF_SPOOL_CODEC")
    config = config_from_args(parser.parse_args(["agent"]))
    assert (config.spool_limit_bytes, config.spool_codec) == (1 << 30, "zstd")


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--spool-max", "lots"], {}, "--spool-max"),
        ([], {"EMP_FASTBUF_SPOOL_MAX_BYTES": "2X"}, "EMP_FASTBUF_SPOOL_MAX_BYTES"),
        ([], {"EMP_FASTBUF_SPOOL_CODEC": "snappy"}, "EMP_FASTBUF_SPOOL_CODEC"),
    ],
)
def test_agent_with_bad_spool_settings_exits_2_with_one_line(
    agent_home: Path, ring_name: str, args: list[str], env: dict[str, str], named: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring_name, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("fastbuf agent: ")
    assert not (agent_home / "spool").exists()


# ---- codecs -------------------------------------------------------------------------------


def compression_of(path: Path) -> int:
    return int(HEADER.unpack_from(path.read_bytes())[2])


@pytest.mark.parametrize(("codec", "compression"), [("zstd", 1), ("lz4", 2)])
def test_codec_round_trip(tmp_path: Path, codec: str, compression: int) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, codec=codec)
    batches = [batch(1), [LaneChunk(b"", [])], [LaneChunk(b"m" * 99, [os.urandom(200_000)])]]
    ids = [spool.write(b) for b in batches]
    assert [spool.read(f) for f in ids] == batches
    assert {compression_of(spool_dir / f"{f}.spool") for f in ids} == {compression}


def test_switching_codecs_reads_what_the_other_wrote(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    first = Spool(spool_dir, codec="zstd").write(batch(1))
    switched = Spool(spool_dir, codec="lz4")
    second = switched.write(batch(2))
    assert switched.pending() == [first, second]
    assert [switched.read(f) for f in (first, second)] == [batch(1), batch(2)]
    back = Spool(spool_dir, codec="zstd")
    assert [back.read(f) for f in back.pending()] == [batch(1), batch(2)]
    assert [compression_of(spool_dir / f"{f}.spool") for f in (first, second)] == [1, 2]


def hand_built_lz4(payload: bytes, frame: bytes, n_chunks: int, n_records: int) -> bytes:
    header = HEADER.pack(b"EFBSPOOL", 1, 2, 0, n_chunks, T0, n_records, len(payload))
    return b"".join(
        (
            header,
            struct.pack("<I", zlib.crc32(header)),
            struct.pack("<QI", len(frame), zlib.crc32(frame)),
            frame,
        )
    )


def test_lz4_files_follow_the_documented_layout_and_bad_frames_are_quarantined(
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    content = [LaneChunk(b"mm", [b"abc", b"de"])]
    payload = struct.pack("<I", 2) + b"mm" + struct.pack("<III", 2, 3, 2) + b"abcde"
    good = lz4.frame.compress(payload, store_size=True)
    (spool_dir / file_name(1)).write_bytes(hand_built_lz4(payload, good, 1, 2))
    no_size = lz4.frame.compress(payload, store_size=False)
    (spool_dir / file_name(2)).write_bytes(hand_built_lz4(payload, no_size, 1, 2))
    (spool_dir / file_name(3)).write_bytes(hand_built_lz4(payload, good[:-6], 1, 2))
    (spool_dir / file_name(4)).write_bytes(hand_built_lz4(payload, b"\0" * 20, 1, 2))
    ids = spool.pending()
    assert spool.read(ids[0]) == content
    for file_id, reason in zip(ids[1:], ["content size", "end", "decompression"], strict=True):
        with pytest.raises(CorruptSpoolFile, match=reason):
            spool.read(file_id)
    assert spool.stats()["quarantined_files"] == 3


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="codec"):
        Spool(Path("/nonexistent/spool"), codec="snappy")
    with pytest.raises(ConfigError, match="EMP_FASTBUF_SPOOL_CODEC"):
        AgentConfig.from_env({"HOME": "/h", "EMP_FASTBUF_SPOOL_CODEC": "gzip"})
    with pytest.raises(ConfigError, match="spool_codec"):
        AgentConfig(spool_codec="brotli")  # type: ignore[arg-type]
    assert spool_module.SPOOL_CODECS == SPOOL_CODECS
