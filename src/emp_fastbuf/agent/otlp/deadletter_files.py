"""The files of ``<home>/dead-letter/``: requests an endpoint refused for good.

Each dead letter is two owner-only files with one stem, its id
(``<ns>-<pid>-<thread>-<signal>-<first status>``): ``<id>.pb``, the serialized, uncompressed
``Export*ServiceRequest``, and ``<id>.json``, the sidecar saying what happened to it
(fields in ``docs/spool-format.md``). The exporter writes them (:func:`write`); ``fastbuf
deadletter`` lists them (:func:`scan`), records a replay that failed again
(:func:`record_failure`) and removes one that went through (:func:`remove`).

Files read back are untrusted: a sidecar that does not parse, names a payload other than
its own, or holds values of the wrong type is reported as :class:`Damaged`, never
followed. Sidecars written before ``records`` and ``replays`` existed are read as they are
(the record count then comes from the payload).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from emp_fastbuf.agent.config import REDACTED, SIGNALS, Signal

#: A dead letter's id: the stem of its two files.
ID_PATTERN = re.compile(r"[0-9]{1,20}-[0-9]{1,10}-[0-9]{1,20}-(traces|metrics|logs)-[0-9]{1,3}")
_SIDECAR = re.compile(rf"({ID_PATTERN.pattern})\.json")
# A sidecar holds at most 64 KiB of body twice (text, escaped, and base64) and a few fields.
SIDECAR_MAX_BYTES = 1 << 20
# No payload the exporter writes is larger (requests are cut at request_max_bytes).
PAYLOAD_MAX_BYTES = 1 << 30
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_REQUEST_TYPES: dict[str, type[Message]] = {
    "logs": ExportLogsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}


class DamagedFile(Exception):
    """A dead-letter file that cannot be used; the message says why."""


@dataclass(frozen=True)
class DeadLetter:
    """One refused request, as its sidecar describes it.

    ``status``, ``message`` and ``body`` are those of the latest attempt: the refusal that
    made it a dead letter, or the last replay that failed (``status`` None: no HTTP
    answer, e.g. the connection failed or the request was too large to send).
    """

    id: str
    directory: Path
    signal: Signal
    status: int | None
    message: str
    body: str
    #: When the endpoint first refused it.
    time_unix_nano: int
    #: Log records, spans or metric data points in the request; None when the payload
    #: does not parse.
    records: int | None
    payload_bytes: int
    #: The endpoint that refused it, without credentials.
    url: str
    replays: int
    last_replay_unix_nano: int | None

    @property
    def sidecar(self) -> Path:
        return self.directory / f"{self.id}.json"

    @property
    def payload(self) -> Path:
        return self.directory / f"{self.id}.pb"


@dataclass(frozen=True)
class Damaged:
    """A sidecar in the directory that cannot be read as a dead letter."""

    id: str
    reason: str


def parse_request(signal: str, payload: bytes) -> Message | None:
    """A serialized ``Export*ServiceRequest`` of ``signal``, parsed; None when it does not
    parse."""
    request_type = _REQUEST_TYPES.get(signal)
    if request_type is None:
        return None
    request = request_type()
    try:
        request.ParseFromString(payload)
    except DecodeError:
        return None
    return request


def count_records(signal: str, payload: bytes) -> int | None:
    """Log records, spans or metric data points in a serialized request; None when it
    does not parse."""
    request: Any = parse_request(signal, payload)
    if request is None:
        return None
    if signal == "logs":
        return sum(
            len(scope.log_records) for res in request.resource_logs for scope in res.scope_logs
        )
    if signal == "traces":
        return sum(len(scope.spans) for res in request.resource_spans for scope in res.scope_spans)
    total = 0
    for res in request.resource_metrics:
        for scope in res.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def scrub_body(body: bytes, secrets: Sequence[str]) -> tuple[str, bytes]:
    """A response body as text and as bytes to keep, with every secret replaced. The raw
    bytes are kept only when the server did not echo a secret back."""
    text = body.decode("utf-8", "replace")
    echoed = False
    for secret in secrets:
        if secret in text or secret.encode("utf-8") in body:
            echoed = True
            text = text.replace(secret, REDACTED)
    return text, (text.encode("utf-8") if echoed else body)


def write(
    directory: Path,
    signal: Signal,
    data: bytes,
    url: str,
    status: int | None,
    resp_body: bytes,
    message: str,
    secrets: Sequence[str],
    *,
    protocol: str = "http/protobuf",
) -> Path:
    """Keep a refused request: its payload (the protobuf request, whatever ``protocol``
    sent it), then its sidecar (``url`` already without credentials, ``message`` already
    scrubbed). Returns the sidecar's path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    now_ns = time.time_ns()
    stem = f"{now_ns}-{os.getpid()}-{threading.get_ident()}-{signal}-{status or 0}"
    body_text, raw = scrub_body(resp_body, secrets)
    sidecar = {
        "signal": signal,
        "status": status,
        "message": message,
        "body": body_text,
        "body_b64": base64.b64encode(raw).decode("ascii"),
        "url": url,
        "protocol": protocol,
        "time": _iso(now_ns),
        "time_unix_nano": now_ns,
        "payload": f"{stem}.pb",
        "payload_bytes": len(data),
        "records": count_records(signal, data),
        "content_type": "application/x-protobuf",
        "replays": 0,
        "last_replay_time": None,
        "last_replay_unix_nano": None,
    }
    _write_private(directory / f"{stem}.pb", data)
    sidecar_path = directory / f"{stem}.json"
    _write_private(sidecar_path, _encode(sidecar))
    return sidecar_path


def count(directory: Path) -> int:
    """How many dead letters (sidecars) ``directory`` holds; 0 when it does not exist."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return sum(1 for name in names if _SIDECAR.fullmatch(name))


def scan(directory: Path) -> tuple[list[DeadLetter], list[Damaged]]:
    """Every dead letter in ``directory``, oldest first, and the sidecars that cannot be
    read. Raises ``OSError`` when the directory exists but cannot be listed."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return [], []
    letters: list[DeadLetter] = []
    damaged: list[Damaged] = []
    for name in names:
        m = _SIDECAR.fullmatch(name)
        if m is None:
            continue  # payloads, temporary files, anything else
        try:
            letters.append(read(directory, m.group(1)))
        except FileNotFoundError:
            continue  # removed meanwhile (a replay that went through)
        except DamagedFile as exc:
            damaged.append(Damaged(m.group(1), str(exc)))
    letters.sort(key=lambda d: (d.time_unix_nano, d.id))
    damaged.sort(key=lambda d: d.id)
    return letters, damaged


def read(directory: Path, letter_id: str) -> DeadLetter:
    """The dead letter ``letter_id``. Raises ``FileNotFoundError`` when its sidecar is
    gone and :class:`DamagedFile` when it cannot be used."""
    if not ID_PATTERN.fullmatch(letter_id):
        raise DamagedFile(f"{letter_id!r} is not a dead-letter id")
    raw = _read_file(directory / f"{letter_id}.json", SIDECAR_MAX_BYTES, "sidecar")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise DamagedFile("the sidecar is not JSON") from None
    if not isinstance(meta, dict):
        raise DamagedFile("the sidecar is not a JSON object")
    signal = meta.get("signal")
    if signal not in SIGNALS or signal != letter_id.split("-")[3]:
        raise DamagedFile(f"the sidecar's signal {signal!r} is not the one of its name")
    if meta.get("payload", f"{letter_id}.pb") != f"{letter_id}.pb":
        raise DamagedFile("the sidecar names a payload file other than its own")
    status = meta.get("status")
    if status is not None and not (_is_int(status) and 100 <= status <= 599):
        raise DamagedFile(f"the sidecar's status {status!r} is not an HTTP status")
    for key in ("message", "body", "url"):
        if not isinstance(meta.get(key, ""), str):
            raise DamagedFile(f"the sidecar's {key} is not a string")
    try:
        st = os.lstat(directory / f"{letter_id}.pb")
    except FileNotFoundError:
        raise DamagedFile("its payload file is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise DamagedFile("its payload is not a regular file")
    records = meta.get("records")
    if "records" not in meta:
        # A sidecar from before the count was kept: count the payload now.
        records = count_records(signal, read_payload(directory, letter_id))
    elif records is not None and not (_is_int(records) and records >= 0):
        raise DamagedFile(f"the sidecar's record count {records!r} is not a count")
    replays = meta.get("replays", 0)
    last_replay = meta.get("last_replay_unix_nano")
    if not _is_int(replays) or replays < 0 or not (last_replay is None or _is_int(last_replay)):
        raise DamagedFile("the sidecar's replay fields are not counts")
    return DeadLetter(
        id=letter_id,
        directory=directory,
        signal=cast("Signal", signal),
        status=status,
        message=meta.get("message", ""),
        body=meta.get("body", ""),
        time_unix_nano=_time_of(meta, letter_id),
        records=records,
        payload_bytes=st.st_size,
        url=meta.get("url", ""),
        replays=replays,
        last_replay_unix_nano=last_replay,
    )


def read_payload(directory: Path, letter_id: str) -> bytes:
    """The request bytes of ``letter_id``. Raises :class:`DamagedFile` when they cannot be
    read (missing, not a regular file, larger than any request)."""
    try:
        return _read_file(directory / f"{letter_id}.pb", PAYLOAD_MAX_BYTES, "payload")
    except FileNotFoundError:
        raise DamagedFile("its payload file is missing") from None


def record_failure(
    letter: DeadLetter,
    status: int | None,
    message: str,
    resp_body: bytes,
    secrets: Sequence[str],
) -> None:
    """A replay of ``letter`` failed again: its sidecar gets the latest status, message
    and body, one more replay and its time. The rest of the sidecar is kept as it was."""
    raw = _read_file(letter.sidecar, SIDECAR_MAX_BYTES, "sidecar")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise DamagedFile("the sidecar is not JSON") from None
    if not isinstance(meta, dict):
        raise DamagedFile("the sidecar is not a JSON object")
    now_ns = time.time_ns()
    body_text, body = scrub_body(resp_body, secrets)
    meta.update(
        status=status,
        message=message,
        body=body_text,
        body_b64=base64.b64encode(body).decode("ascii"),
        records=letter.records,
        replays=letter.replays + 1,
        last_replay_time=_iso(now_ns),
        last_replay_unix_nano=now_ns,
    )
    _write_private(letter.sidecar, _encode(meta))


def remove(letter: DeadLetter) -> None:
    """Delete a dead letter that was delivered: the sidecar first (it is what makes a dead
    letter), then the payload."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(letter.sidecar)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(letter.payload)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _iso(unix_nano: int) -> str:
    return datetime.fromtimestamp(unix_nano / 1e9, UTC).isoformat()


def _time_of(meta: dict[str, Any], letter_id: str) -> int:
    """``time_unix_nano``, else the ISO ``time`` of an older sidecar, else the id's."""
    value = meta.get("time_unix_nano")
    if _is_int(value):
        return cast("int", value)
    text = meta.get("time")
    if isinstance(text, str):
        with contextlib.suppress(ValueError, OverflowError):
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return int(when.timestamp()) * 10**9 + when.microsecond * 1000
    return int(letter_id.split("-")[0])


def _encode(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8")


def _read_file(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, never through a symlink nor from a FIFO, at most
    ``limit``. Raises ``FileNotFoundError`` when it is gone, :class:`DamagedFile` else."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DamagedFile(f"the {what} is a symbolic link") from None
        raise DamagedFile(f"the {what} cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DamagedFile(f"the {what} is not a regular file")
        if st.st_size > limit:
            raise DamagedFile(f"the {what} is larger than {limit} bytes")
        parts: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise DamagedFile(f"the {what} is larger than {limit} bytes")
        return b"".join(parts)
    except OSError as exc:
        raise DamagedFile(f"the {what} cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """Write an owner-only file, atomically visible under its final name (replacing one
    that is there: a sidecar after a replay)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
