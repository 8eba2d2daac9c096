"""Faults at the store and the CLI, with real processes: records from after 2262 (through
the logging bridge, the OpenTelemetry SDK bridge and a raw ring write), another process
holding the store's write lock, a damaged store file, and arguments and homes the
commands refuse in one line (exit 2) instead of a traceback."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from emp_fastbuf.store import MAX_TIME_UNIX_NANO, Store, StoredRecord, StoreError
from support.agent import AgentProc, run_worker
from support.store import TRACE_A, damage_pages, sample_groups

QUERIES = [["logs"], ["trace", TRACE_A.hex()], ["metrics"], ["correlate", "job-a"], ["tail"]]

POISON_WORKER = r"""
import logging, sys
import emp_fastbuf as fastbuf
from emp_fastbuf.producer import api
from emp_fastbuf.records import reference
from emp_fastbuf.integrations.otel import FastbufSpanProcessor
from emp_fastbuf.integrations.stdlib import FastbufHandler
from emp_fastbuf.records import LOG, Record
from opentelemetry.sdk.trace import TracerProvider

fastbuf.configure(service="poison-svc", machine_id="m-p", worker_id="w-p", ring=sys.argv[1],
                  agent="external")
logger = logging.getLogger("poison")
logger.propagate = False
logger.setLevel(logging.INFO)
logger.addHandler(FastbufHandler())
provider = TracerProvider(shutdown_on_exit=False)
provider.add_span_processor(FastbufSpanProcessor(flush_timeout=0.1))
with fastbuf.context(job_id="job-poison"):
    fastbuf.log.info("before the poison")
    rec = logger.makeRecord("poison", logging.INFO, "poison.py", 1, "from 2302", (), None)
    rec.created = 1.05e10  # seconds: 1.05e19 ns, past 2**63
    logger.handle(rec)
    span = provider.get_tracer("poison").start_span("far span")
    span.end(end_time=10**19)
    # The latest time the record format holds, written into the ring as it is.
    api.ring().write(reference.encode_record(Record(
        kind=LOG, time_unix_nano=2**64 - 1, body="raw poison", severity_number=9,
        context={"job_id": "job-poison"})))
    fastbuf.log.info("after the poison")
print(format(span.get_span_context().trace_id, "032x"), flush=True)
"""

LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def fastbuf_cmd(
    args: Sequence[str | bytes], home: Path | None, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    """``python -m emp_fastbuf ARGS`` as a real process."""
    full = {**os.environ, "COLUMNS": "120", **(env or {})}
    if home is not None:
        full["EMP_FASTBUF_HOME"] = str(home)
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "emp_fastbuf", *args],
        env=full,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        **kw,
    )


def refused(out: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr naming the problem."""
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("fastbuf "), out.stderr
    for w in words:
        assert w in out.stderr, out.stderr


def wait_for(check: Callable[[], bool], timeout: float = 45.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def stored_logs(home: Path, job: str) -> list[StoredRecord]:
    try:
        with Store(home / "store.sqlite", readonly=True) as store:
            return store.logs(job=job)
    except StoreError:  # not created yet, or the damaged file not moved aside yet
        return []


def error_lines(agent: AgentProc) -> list[str]:
    return [line for line in agent.output().splitlines() if " ERROR " in line]


# ---- records from after 2262 ------------------------------------------------------------


def test_records_after_2262_are_stored_at_the_latest_time_with_the_rest(
    env_clean: Path,
    agent_ring: str,
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", POISON_WORKER, agent_ring],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
    )
    assert out.returncode == 0, out.stderr
    trace_id = out.stdout.strip()
    agent = AgentProc(agent_ring, env_clean)
    try:
        assert wait_for(lambda: len(stored_logs(env_clean, "job-poison")) == 4)
    finally:
        assert agent.stop() == 0
    status = json.loads((env_clean / f"status-{agent_ring}.json").read_text())
    assert status["spool"]["files"] == 0  # nothing left behind for the next start
    assert "Traceback" not in agent.output()

    times = {r.body: r.time_unix_nano for r in stored_logs(env_clean, "job-poison")}
    assert times["from 2302"] == times["raw poison"] == MAX_TIME_UNIX_NANO
    assert times["before the poison"] < MAX_TIME_UNIX_NANO
    assert times["after the poison"] < MAX_TIME_UNIX_NANO
    # The CLI shows them, as JSON and as tables.
    logs = fastbuf_cmd(["logs", "--job", "job-poison", "--json"], env_clean)
    assert logs.returncode == 0, logs.stderr
    by_body = {o["body"]: o for o in map(json.loads, logs.stdout.splitlines())}
    assert by_body["raw poison"]["time"] == "2262-04-11T23:47:16.854775807Z"
    for args in (["logs"], ["tail", "-n", "5", "--count", "4"], ["trace", trace_id]):
        shown = fastbuf_cmd(args, env_clean)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert "far span" in shown.stdout


# ---- another process holds the write lock ---------------------------------------------------


def test_a_write_lock_held_by_another_process_delays_the_store_and_loses_nothing(
    env_clean: Path,
    agent_ring: str,
) -> None:
    agent = AgentProc(agent_ring, env_clean)
    try:
        agent.wait_ready()
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(env_clean / "store.sqlite"), "8"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        run_worker(agent_ring, 30, "lock")  # drained and spooled while the lock is held
        assert locker.wait(timeout=60) == 0
        locker.stdout.close()
        assert wait_for(lambda: len(stored_logs(env_clean, "job-lock")) == 31)  # + the event
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0
    text = agent.output()
    assert "write lock" in text and "the spool keeps the records" in text
    assert "Traceback" not in text
    steps = [r for r in stored_logs(env_clean, "job-lock") if r.body == "step"]
    assert sorted(r.attributes["seq"] for r in steps) == list(range(30))


# ---- a damaged store file -----------------------------------------------------------------


def test_a_store_file_that_is_not_sqlite_is_moved_aside_by_the_agent(
    env_clean: Path,
    agent_ring: str,
) -> None:
    garbage = b"\x13\x37 not a database " * 500
    (env_clean / "store.sqlite").write_bytes(garbage)
    run_worker(agent_ring, 20, "nd")
    agent = AgentProc(agent_ring, env_clean)
    try:
        assert wait_for(lambda: len(stored_logs(env_clean, "job-nd")) == 20 + 1)  # + event
    finally:
        assert agent.stop() == 0
    moved = list(env_clean.glob("store.sqlite.corrupt-*"))
    assert [m.read_bytes() for m in moved] == [garbage]
    errors = error_lines(agent)
    assert len(errors) == 1 and str(moved[0]) in errors[0], agent.output()


def test_damaged_pages_are_moved_aside_and_the_spooled_records_stored_anew(
    env_clean: Path,
    agent_ring: str,
) -> None:
    run_worker(agent_ring, 200, "old")
    first = AgentProc(agent_ring, env_clean)
    try:
        assert wait_for(lambda: len(stored_logs(env_clean, "job-old")) == 201)
    finally:
        assert first.stop() == 0
    damage_pages(env_clean / "store.sqlite")
    run_worker(agent_ring, 40, "new")
    agent = AgentProc(agent_ring, env_clean)
    try:
        assert wait_for(lambda: len(stored_logs(env_clean, "job-new")) == 41)
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0
    assert len(list(env_clean.glob("store.sqlite.corrupt-*"))) == 1
    errors = error_lines(agent)
    assert len(errors) == 1 and "damaged" in errors[0], agent.output()
    steps = [r for r in stored_logs(env_clean, "job-new") if r.body == "step"]
    assert sorted(r.attributes["seq"] for r in steps) == list(range(40))


@pytest.fixture
def sample_home(fastbuf_home: Path) -> Path:
    with Store(fastbuf_home / "store.sqlite") as store:
        for _ in range(20):
            store.ingest(sample_groups())
    return fastbuf_home


@pytest.mark.parametrize("query", QUERIES)
def test_queries_on_damaged_pages_are_one_line_and_exit_2(
    sample_home: Path, query: list[str]
) -> None:
    damage_pages(sample_home / "store.sqlite")
    refused(fastbuf_cmd(query, sample_home), "damaged", str(sample_home / "store.sqlite"))


@pytest.mark.parametrize("query", QUERIES)
def test_queries_on_a_file_that_is_not_sqlite_are_one_line_and_exit_2(
    fastbuf_home: Path, query: list[str]
) -> None:
    (fastbuf_home / "store.sqlite").write_bytes(b"garbage" * 1000)
    refused(fastbuf_cmd(query, fastbuf_home), "not an SQLite database")


# ---- arguments the CLI refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["logs", "--since", "2300-01-01T00:00:00Z"], ["--since", "2262"]),
        (["logs", "--since", "99999999999d"], ["--since"]),
        (["metrics", "--since", "2300-01-01T00:00:00Z"], ["--since"]),
        (["logs", "--limit", "9223372036854775808"], ["--limit"]),
        (["logs", "--limit", "²"], ["--limit"]),
        (["logs", "--level", "³"], ["--level"]),
        (["tail", "-n", "²"], ["--lines"]),
        (["logs", "--since", ""], ["--since", "empty"]),
        (["logs", "--home", ""], ["--home", "empty"]),
        (["logs", "--job", b"job-\xff"], ["UTF-8"]),
        (["logs", "--grep", b"\xc3("], ["UTF-8"]),
        (["correlate", b"\xff\xfe"], ["UTF-8"]),
        (["agent", "--ring", "bad/name"], ["--ring", "bad/name"]),
        (["demo", "--ring", "bad/name"], ["--ring", "bad/name"]),
        (["status", "--ring", "bad/name"], ["--ring", "bad/name"]),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    sample_home: Path, args: list[str | bytes], words: list[str]
) -> None:
    refused(fastbuf_cmd(args, sample_home), *words)


@pytest.mark.parametrize("command", ["agent", "demo", "status"])
def test_a_bad_ring_name_in_the_environment_is_one_line_and_exit_2(
    fastbuf_home: Path, command: str
) -> None:
    out = fastbuf_cmd([command], fastbuf_home, {"EMP_FASTBUF_RING": "bad/name"})
    refused(out, "EMP_FASTBUF_RING", "bad/name")


def test_a_home_with_bytes_that_are_not_utf8_still_works(sample_home: Path) -> None:
    odd = sample_home.parent / os.fsdecode(b"h\xffome")
    odd.mkdir(mode=0o700)
    (sample_home / "store.sqlite").rename(odd / "store.sqlite")
    out = fastbuf_cmd(["logs", "--json", "--home", os.fsencode(odd)], None)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 20 * 9


# ---- homes the CLI and the agent refuse -----------------------------------------------------


HOME_COMMANDS = [
    *QUERIES,
    ["agent", "--idle-exit", "1"],
    ["demo", "--workers", "1", "--jobs", "1"],
    ["status"],
    ["deadletter", "list"],
    ["deadletter", "replay", "--all"],
]


def test_a_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home-file"
    home.write_text("not a directory")
    for args in HOME_COMMANDS:
        refused(fastbuf_cmd(args, home), "is not a directory")
        refused(fastbuf_cmd([*args, "--home", str(home)], None), "is not a directory")


def test_a_world_writable_home_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "loose"
    home.mkdir()
    home.chmod(0o777)
    for args in HOME_COMMANDS:
        refused(fastbuf_cmd(args, home), "writable by every user")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_home_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    os.chown(home, 12345, 12345)
    for args in HOME_COMMANDS:
        refused(fastbuf_cmd(args, home), "belongs to uid 12345")


def _unused_uid() -> int:
    for uid in range(54321, 54400):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid")


def _as_user_without_passwd_entry() -> list[str] | None:
    """A command prefix that runs as a uid with no passwd entry (root and setpriv only)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    for uid in range(54321, 54400):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            prefix = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            probe = subprocess.run([*prefix, sys.executable, "-c", "pass"], timeout=60)
            return prefix if probe.returncode == 0 else None
    return None


@pytest.mark.parametrize("args", [["logs"], ["agent", "--idle-exit", "1"], ["demo"]])
def test_no_home_directory_at_all_is_one_line_and_exit_2(args: list[str]) -> None:
    """No $HOME, no EMP_FASTBUF_HOME and a uid without a passwd entry: nowhere to look."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "EMP_FASTBUF_HOME")}
    prefix = _as_user_without_passwd_entry()
    if prefix is not None:
        command = [*prefix, sys.executable, "-m", "emp_fastbuf", *args]
    else:  # this user has a passwd entry: its lookup fails as it would without one
        code = (
            "import pwd, sys\n"
            "def missing(uid): raise KeyError(uid)\n"
            "pwd.getpwuid = missing\n"
            "from emp_fastbuf.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        command = [sys.executable, "-c", code, *args]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    refused(out, "home directory", "EMP_FASTBUF_HOME")


def test_a_foreign_database_is_still_exit_1(fastbuf_home: Path) -> None:
    conn = sqlite3.connect(fastbuf_home / "store.sqlite")
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    out = fastbuf_cmd(["logs"], fastbuf_home)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr


def test_without_a_home_auto_spawn_says_it_starts_no_agent() -> None:
    """The zero-config path with nowhere to put the agent's home: one warning, no crash."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "EMP_FASTBUF_HOME")}
    env["EMP_FASTBUF_RING"] = f"emp-fastbuf-test-nohome-{os.getpid()}"
    env.pop("EMP_FASTBUF_AGENT", None)
    code = (
        "import emp_fastbuf as f\nfor i in range(3): f.emit('x', i=i)\nprint(f.stats()['emitted'])"
    )
    prefix = _as_user_without_passwd_entry()
    if prefix is not None:
        command = [*prefix, sys.executable, "-c", code]
    else:
        command = [
            sys.executable,
            "-c",
            "import pwd\ndef missing(uid): raise KeyError(uid)\npwd.getpwuid = missing\n" + code,
        ]
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        Path(f"/dev/shm/{env['EMP_FASTBUF_RING']}").unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"  # the records are in the ring
    assert out.stderr.count("cannot start an agent") == 1, out.stderr
    assert "Traceback" not in out.stderr
