"""``fastbuf deadletter list`` and ``replay`` as real processes: a real agent exporting to
a real OTLP/HTTP receiver that refuses its token (401) leaves its requests in
``dead-letter/``; they are listed, replayed while the receiver still refuses (kept), and
replayed once it accepts (sent: the receiver decodes every record, and the directory is
empty). Bad arguments, unknown ids, damaged files and old sidecars are refused or read
in one line, never with a traceback, and no token ever shows."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emp_fastbuf.agent.config import AgentConfig
from emp_fastbuf.agent.otlp.http import OTLPExporter, RetryPolicy
from emp_fastbuf.testing.receiver import OTLPReceiver, Response
from support.agent import AgentProc, run_worker, seqs
from support.otlp import logs_payload, spans_payload

OLD_TOKEN = "auth_0ld-t0ken-that-was-revoked-4242"
NEW_TOKEN = "auth_n3w-t0ken-that-works-4711"
REFUSED = f"token {OLD_TOKEN} is not valid".encode()


def fastbuf(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m emp_fastbuf ARGS`` as a real process, stdout a pipe."""
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        env={**os.environ, "EMP_FASTBUF_HOME": str(home), "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def listed(home: Path, **env: str) -> list[dict[str, Any]]:
    out = fastbuf(["deadletter", "list", "--json"], home, **env)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def dead_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "dead-letter").iterdir())


def data_points(rx: OTLPReceiver) -> int:
    return sum(
        len(getattr(m, m.WhichOneof("data")).data_points)
        for _res, m in rx.metrics()
        if m.WhichOneof("data")
    )


def no_token(*outs: subprocess.CompletedProcess[str]) -> None:
    for out in outs:
        for token in (OLD_TOKEN, NEW_TOKEN):
            assert token not in out.stdout + out.stderr
        assert "Traceback" not in out.stderr


def test_refused_batches_are_listed_kept_when_refused_again_and_sent_once_fixed(
    env_clean: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    home = env_clean
    receiver.default = Response(401, body=REFUSED)
    run_worker(agent_ring, 20, "d")
    # The configuration from the environment, for the agent and for the replays alike.
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    agent = AgentProc(agent_ring, home, env={**endpoint, "DASH0_AUTH_TOKEN": OLD_TOKEN})
    dead = home / "dead-letter"
    try:
        deadline = time.monotonic() + 60
        while not (list(dead.glob("*-logs-401.json")) and list(dead.glob("*-traces-401.json"))):
            assert time.monotonic() < deadline, "no dead letters for logs and traces"
            time.sleep(0.1)
    finally:
        assert agent.stop() == 0, agent.output()  # stopping exports the metrics: refused too
    assert OLD_TOKEN not in agent.output()

    # list: time, signal, status, response body and record count of each batch.
    human = fastbuf(["deadletter", "list"], home, DASH0_AUTH_TOKEN=OLD_TOKEN)
    assert human.returncode == 0, human.stderr
    letters = listed(home)
    assert {d["signal"] for d in letters} == {"logs", "traces", "metrics"}
    assert len(human.stdout.splitlines()) == len(letters)
    for letter, line in zip(letters, human.stdout.splitlines(), strict=True):
        assert letter["status"] == 401 and letter["replays"] == 0
        assert letter["body"] == "token <redacted> is not valid"
        assert letter["time"].endswith("Z")
        assert abs(letter["time_unix_nano"] - time.time_ns()) < 600 * 10**9
        assert line.startswith(letter["id"]) and f"  {letter['signal']}  401  " in line
        assert f"{letter['records']} record" in line and "token <redacted> is not valid" in line
    records = Counter[str]()
    for letter in letters:
        records[letter["signal"]] += letter["records"]
    assert records["logs"] == 21 and records["traces"] == 1  # 20 steps and the event; the span
    assert records["metrics"] >= 1
    for path in dead.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = dead_files(home)

    # Replayed while the endpoint still refuses: every one fails again and stays.
    again = fastbuf(["deadletter", "replay", "--all"], home, **endpoint, DASH0_AUTH_TOKEN=OLD_TOKEN)
    assert again.returncode == 4, again.stderr
    lines = again.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["failed"] * len(letters)
    assert all("HTTP 401: token <redacted> is not valid" in ln for ln in lines[:-1])
    assert lines[-1].startswith(f"replayed {len(letters)} dead letter(s): 0 sent, {len(letters)}")
    assert dead_files(home) == before
    assert [(d["status"], d["replays"]) for d in listed(home)] == [(401, 1)] * len(letters)
    assert all(d["last_replay_time"] for d in listed(home))
    for path in dead.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(dead.stat().st_mode) == 0o700

    # The token is fixed: the same command sends them all, with the new token.
    receiver.default = Response(200)
    receiver.clear()
    sent = fastbuf(["deadletter", "replay", "--all"], home, **endpoint, DASH0_AUTH_TOKEN=NEW_TOKEN)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:-1]] == ["sent"] * len(letters)
    assert lines[-1] == f"replayed {len(letters)} dead letter(s): {len(letters)} sent, 0 failed"
    assert dead_files(home) == []
    assert seqs(receiver) == Counter(range(20))
    assert len(receiver.logs()) == records["logs"] and len(receiver.spans()) == 1
    assert data_points(receiver) == records["metrics"]
    assert {h["authorization"] for _p, h, _r in receiver.requests} == {f"Bearer {NEW_TOKEN}"}

    empty = fastbuf(["deadletter", "list"], home)
    assert empty.returncode == 1 and "no dead letters in" in empty.stderr
    nothing = fastbuf(["deadletter", "replay", "--all"], home, DASH0_AUTH_TOKEN=NEW_TOKEN)
    assert nothing.returncode == 1 and "nothing to replay" in nothing.stderr
    no_token(human, again, sent, empty, nothing)


# ---- dead letters made by the real exporter, without an agent ------------------------------


@pytest.fixture
def letters(env_clean: Path, receiver: OTLPReceiver) -> Iterator[Path]:
    """Three dead letters in ``env_clean`` (two logs requests, one traces request), refused
    by the receiver with a body that echoes the token; the receiver then answers 200."""
    config = AgentConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "EMP_FASTBUF_HOME": str(env_clean),
            "DASH0_AUTH_TOKEN": OLD_TOKEN,
        }
    )
    receiver.script(*[Response(401, body=REFUSED)] * 3)
    with OTLPExporter(config, RetryPolicy(max_elapsed_s=1.0)) as exporter:
        results = [
            exporter.export("logs", logs_payload("a", "b")),
            exporter.export("logs", logs_payload("c")),
            exporter.export("traces", spans_payload("s")),
        ]
    assert [r.status for r in results] == ["dead_letter"] * 3
    receiver.clear()
    yield env_clean


def ids(home: Path) -> list[str]:
    return [d["id"] for d in listed(home)]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["replay"], ["--all", "ID"]),
        (["replay", "--all", "1-2-3-logs-401"], ["not both"]),
        (["replay", "--all", "--timeout", "soon"], ["--timeout"]),
        (["frobnicate"], ["invalid choice"]),
        ([], ["required"]),
    ],
)
def test_bad_arguments_are_exit_2(letters: Path, args: list[str], words: list[str]) -> None:
    out = fastbuf(["deadletter", *args], letters)
    assert out.returncode == 2, out.stdout + out.stderr
    for word in words:
        assert word in out.stderr
    assert "Traceback" not in out.stderr
    assert len(dead_files(letters)) == 6  # nothing was sent


@pytest.mark.parametrize("wanted", ["1-2-3-logs-401", "../../etc/passwd", "nope"])
def test_an_unknown_id_is_exit_1_and_sends_nothing(
    letters: Path, receiver: OTLPReceiver, wanted: str
) -> None:
    out = fastbuf(["deadletter", "replay", wanted, "--endpoint", receiver.url], letters)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "no dead letter" in out.stderr and "fastbuf deadletter list" in out.stderr
    assert receiver.attempt_count() == 0 and len(dead_files(letters)) == 6


def test_replay_of_one_id_sends_only_that_one(letters: Path, receiver: OTLPReceiver) -> None:
    first, *rest = ids(letters)
    out = fastbuf(
        ["deadletter", "replay", first, "--endpoint", receiver.url, "--compression", "zstd"],
        letters,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0].startswith(f"sent    {first}  logs  2 records  HTTP 200")
    assert ids(letters) == rest
    assert [rec.body.string_value for _res, rec in receiver.logs()] == ["a", "b"]
    assert {h["content-encoding"] for _p, h, _r in receiver.requests} == {"zstd"}


def test_replay_without_an_endpoint_is_a_usage_error(letters: Path) -> None:
    out = fastbuf(["deadletter", "replay", "--all"], letters)
    assert out.returncode == 2 and "no OTLP endpoint" in out.stderr
    bad = fastbuf(["deadletter", "replay", "--all", "--endpoint", "ftp://x"], letters)
    assert bad.returncode == 2 and "--endpoint" in bad.stderr
    assert len(dead_files(letters)) == 6


def test_a_replay_to_an_endpoint_that_is_down_keeps_them(
    letters: Path, receiver: OTLPReceiver
) -> None:
    receiver.down()
    out = fastbuf(["deadletter", "replay", "--all", "--endpoint", receiver.url], letters)
    assert out.returncode == 4, out.stdout + out.stderr
    assert out.stdout.count("failed  ") == 3 and "connection failed" in out.stdout
    after = listed(letters)
    assert [(d["status"], d["replays"]) for d in after] == [(None, 1)] * 3
    human = fastbuf(["deadletter", "list"], letters)
    rows = zip(after, human.stdout.splitlines(), strict=True)
    assert all(f"  {d['signal']}  -  " in line for d, line in rows)


def test_the_token_never_shows_even_when_the_endpoint_echoes_it(
    letters: Path, receiver: OTLPReceiver
) -> None:
    receiver.default = Response(403, body=f"bearer {NEW_TOKEN} lacks write access".encode())
    outs = [
        fastbuf(
            ["deadletter", "replay", "--all", "--endpoint", receiver.url],
            letters,
            OTEL_EXPORTER_OTLP_HEADERS=f"Authorization=Bearer {NEW_TOKEN}",
        ),
        fastbuf(["deadletter", "list"], letters, DASH0_AUTH_TOKEN=NEW_TOKEN),
        fastbuf(["deadletter", "list", "--json"], letters),
    ]
    assert outs[0].returncode == 4
    assert "HTTP 403: bearer <redacted> lacks write access" in outs[0].stdout
    assert all(d["status"] == 403 for d in listed(letters))
    no_token(*outs)
    for path in (letters / "dead-letter").glob("*.json"):
        text = path.read_text()
        assert OLD_TOKEN not in text and NEW_TOKEN not in text


def test_damaged_files_are_one_line_each_and_stay(letters: Path, receiver: OTLPReceiver) -> None:
    dead = letters / "dead-letter"
    good, garbage, traversal = ids(letters)
    (dead / f"{garbage}.json").write_bytes(b"\x00not json{")
    meta = json.loads((dead / f"{traversal}.json").read_text())
    (dead / f"{traversal}.json").write_text(json.dumps({**meta, "payload": "../../x.pb"}))
    out = fastbuf(["deadletter", "list"], letters)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and out.stdout.startswith(good)
    errors = out.stderr.splitlines()
    assert len(errors) == 2 and all("cannot be read" in e for e in errors)
    assert any(garbage in e and "not JSON" in e for e in errors)
    assert any(traversal in e and "payload file other than its own" in e for e in errors)

    one = fastbuf(["deadletter", "replay", garbage, "--endpoint", receiver.url], letters)
    assert one.returncode == 1 and one.stdout == ""
    assert f"dead letter {garbage} cannot be read: the sidecar is not JSON" in one.stderr

    every = fastbuf(["deadletter", "replay", "--all", "--endpoint", receiver.url], letters)
    assert every.returncode == 4, every.stdout + every.stderr
    assert every.stdout.splitlines() == [
        f"sent    {good}  logs  2 records  HTTP 200",
        f"replayed 3 dead letter(s): 1 sent, 2 failed (kept in {dead})",
    ]
    assert len(every.stderr.splitlines()) == 2
    assert sorted(p.stem for p in dead.glob("*.json")) == sorted([garbage, traversal])
    assert receiver.attempt_count() == 1
    for done in (out, one, every):
        assert "Traceback" not in done.stderr


def test_a_missing_payload_is_reported_not_sent(letters: Path, receiver: OTLPReceiver) -> None:
    first = ids(letters)[0]
    (letters / "dead-letter" / f"{first}.pb").unlink()
    out = fastbuf(["deadletter", "list"], letters)
    assert out.returncode == 0 and "payload file is missing" in out.stderr
    every = fastbuf(["deadletter", "replay", "--all", "--endpoint", receiver.url], letters)
    assert every.returncode == 4 and "2 sent, 1 failed" in every.stdout
    assert receiver.attempt_count() == 2


def test_a_sidecar_written_before_record_counts_is_read(letters: Path) -> None:
    """Sidecars of an older exporter: no records, replays or time_unix_nano; the count
    then comes from the payload and the time from the ISO field."""
    dead = letters / "dead-letter"
    first = ids(letters)[0]
    meta = json.loads((dead / f"{first}.json").read_text())
    old = {
        k: meta[k]
        for k in (
            "signal",
            "status",
            "message",
            "body",
            "body_b64",
            "url",
            "time",
            "payload",
            "payload_bytes",
            "content_type",
        )
    }
    old["time"] = "2026-01-02T03:04:05.678901+00:00"
    (dead / f"{first}.json").write_text(json.dumps(old, indent=1))
    letter = next(d for d in listed(letters) if d["id"] == first)
    assert letter["records"] == 2 and letter["replays"] == 0
    assert letter["time"] == "2026-01-02T03:04:05.678901000Z"


def _waiting_for_a_lock(pid: int) -> bool:
    """Whether ``pid`` is blocked on a flock (``/proc/locks`` lists waiters with ``->``)."""
    with open("/proc/locks") as locks:
        return any("-> FLOCK" in line and line.split()[5] == str(pid) for line in locks.readlines())


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
def test_two_replays_at_once_send_each_dead_letter_once(
    letters: Path, receiver: OTLPReceiver
) -> None:
    dead = letters / "dead-letter"
    env = {**os.environ, "EMP_FASTBUF_HOME": str(letters)}
    command = [sys.executable, "-m", "emp_fastbuf", "deadletter", "replay", "--all"]
    # Hold the directory's lock, as a replay in progress does, while two more start.
    fd = os.open(dead, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        replays = [
            subprocess.Popen(
                [*command, "--endpoint", receiver.url],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 60
        while not all(_waiting_for_a_lock(p.pid) for p in replays):
            assert time.monotonic() < deadline, "the replays did not wait for the lock"
            assert all(p.poll() is None for p in replays)
            time.sleep(0.05)
        assert receiver.attempt_count() == 0
    finally:
        os.close(fd)
    outs = [p.communicate(timeout=120) for p in replays]
    codes = sorted(p.returncode for p in replays)
    assert codes == [0, 1], outs
    assert any("nothing to replay" in err for _out, err in outs)
    assert receiver.attempt_count() == 3 and dead_files(letters) == []
    assert sorted(rec.body.string_value for _res, rec in receiver.logs()) == ["a", "b", "c"]


def test_on_a_terminal_each_id_has_a_line_of_its_own_and_bodies_are_plain_text(
    env_clean: Path, receiver: OTLPReceiver
) -> None:
    config = AgentConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "EMP_FASTBUF_HOME": str(env_clean)}
    )
    receiver.script(Response(400, body=b"[bold]field[/] 7\nis wrong"))
    with OTLPExporter(config, RetryPolicy(max_elapsed_s=1.0)) as exporter:
        assert exporter.export("logs", logs_payload("a")).status == "dead_letter"
    (letter,) = listed(env_clean)
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "emp_fastbuf", "deadletter", "list"],
            env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean), "COLUMNS": "40"},
            stdout=secondary,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other side is closed and everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r", "")
    lines = text.splitlines()
    assert lines[0] == letter["id"]  # whole, on a 40-column terminal
    words = " ".join(text.split())  # as the terminal wrapped it
    assert "logs status 400 1 record replays 0 [bold]field[/] 7\\nis wrong" in words
    assert words.endswith("1 dead letter(s); fastbuf deadletter replay --all sends them again")
