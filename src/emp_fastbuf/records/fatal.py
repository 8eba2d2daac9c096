"""The fatal-error file: where a worker's ``faulthandler`` writes the dump of a fatal error
(a segfault, an abort), and what the agent turns into that worker's ERROR record.

One file per process, ``<home>/crashes/<pid>-<start>-<random>.fatal`` (``start``: the
process's start time, so that a reused pid is not taken for the process that died). It
begins with a header of ``HEADER_SIZE`` bytes that says whose process it was: ``MAGIC``,
then a JSON object (ASCII) padded with spaces up to a final newline. The producer writes
it when it enables faulthandler and rewrites it in place when its resource or its job
changes; faulthandler writes the dump after it. A file that holds nothing past the header
is the file of a process that died without a fatal error.

The producer writes the file (``producer.crash``); the agent reads it once the process is
gone (``agent.fatal``) and treats it as untrusted: a bad header makes it unusable
(``decode`` returns None), the dump is read up to a size cap, bad UTF-8 is replaced, and
every header value is checked for its type and clipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from emp_fastbuf.records import LOG, SEVERITY_ERROR, SEVERITY_TEXT, AttrValue, Record, Resource

SUFFIX = ".fatal"
MAGIC = b"emp-fastbuf-fatal 1 "
HEADER_SIZE = 4096
#: What the agent reads of a file past its header; the rest of a longer dump is dropped.
MAX_DUMP_BYTES = 1 << 20
#: A crash record's ``exception.stacktrace`` may be this long (characters): the Python
#: crash records of ``producer.crash`` and the fatal-error records alike.
STACKTRACE_MAX_CHARS = 16384
# Header values are clipped to this many characters (a job id, a resource value).
MAX_VALUE_CHARS = 1024
# The resource attributes a header keeps when all of them do not fit in it.
CORE_RESOURCE_KEYS = (
    "service.name",
    "service.instance.id",
    "host.name",
    "process.pid",
    "emp.machine_id",
    "emp.worker_id",
    "telemetry.sdk.name",
    "telemetry.sdk.version",
)
_NAME = re.compile(r"^([1-9][0-9]{0,9})-([0-9]{1,20})-[0-9a-f]{1,32}\.fatal$")
_FATAL_LINE = re.compile(r"^Fatal Python error: ?(.*)$", re.M)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def file_name(pid: int, start: int, unique: str) -> str:
    """The file name of process ``pid`` started at ``start`` (``unique``: lowercase hex)."""
    return f"{pid}-{start}-{unique}{SUFFIX}"


def parse_name(name: str) -> tuple[int, int] | None:
    """``(pid, start)`` of a fatal-error file's name; None for any other name."""
    m = _NAME.match(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


@dataclass(slots=True)
class Header:
    """Whose process the file belongs to."""

    pid: int
    start: int
    ring: str
    resource: dict[str, AttrValue] = field(default_factory=dict)
    job_id: str | None = None


def _fits(header: Header, resource: dict[str, AttrValue], clip: int) -> bytes | None:
    def cut(value: Any) -> Any:
        return value[:clip] if isinstance(value, str) else value

    body = {
        "pid": header.pid,
        "start": header.start,
        "ring": header.ring,
        "resource": {k[:clip]: cut(v) for k, v in resource.items()},
        "job_id": cut(header.job_id),
    }
    text = MAGIC + json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if len(text) > HEADER_SIZE - 1:
        return None
    return text + b" " * (HEADER_SIZE - 1 - len(text)) + b"\n"


def encode_header(header: Header) -> bytes:
    """The header, exactly ``HEADER_SIZE`` bytes. What does not fit is left out: first the
    resource attributes beyond ``CORE_RESOURCE_KEYS``, then values are clipped shorter."""
    resource = {k: v for k, v in header.resource.items() if _scalar(v) is not None}
    core = {k: resource[k] for k in CORE_RESOURCE_KEYS if k in resource}
    for attrs, clip in ((resource, MAX_VALUE_CHARS), (core, MAX_VALUE_CHARS), (core, 64)):
        out = _fits(header, attrs, clip)
        if out is not None:
            return out
    service: dict[str, AttrValue] = {
        k: core[k] for k in ("service.name", "process.pid") if k in core
    }
    out = _fits(Header(header.pid, header.start, header.ring[:200]), service, 64)
    assert out is not None  # a pid, a start, 200 ASCII characters and two short values
    return out


def _scalar(value: object) -> AttrValue:
    if isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else None
    if isinstance(value, str):
        return value[:MAX_VALUE_CHARS]
    return None


def decode(data: bytes) -> tuple[Header, str] | None:
    """The header and the dump (bad UTF-8 replaced, NULs dropped) of a file's bytes; None
    when the header is not one this version writes."""
    head = data[:HEADER_SIZE]
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC) or not head.endswith(b"\n"):
        return None
    try:
        obj = json.loads(head[len(MAGIC) :].decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    pid, start, ring = obj.get("pid"), obj.get("start"), obj.get("ring")
    resource, job_id = obj.get("resource"), obj.get("job_id")
    if type(pid) is not int or type(start) is not int or not isinstance(ring, str):
        return None
    if not (0 < pid < 1 << 31 and 0 <= start < 1 << 64) or not isinstance(resource, dict):
        return None
    if job_id is not None and not isinstance(job_id, str):
        return None
    attrs: dict[str, AttrValue] = {}
    for key, value in resource.items():
        checked = _scalar(value)
        if checked is not None and key:
            attrs[key[:MAX_VALUE_CHARS]] = checked
    dump = data[HEADER_SIZE : HEADER_SIZE + MAX_DUMP_BYTES].decode("utf-8", "replace")
    header = Header(pid, start, ring[:200], attrs, job_id[:MAX_VALUE_CHARS] if job_id else None)
    return header, dump.replace("\x00", "")


def clip_dump(text: str, limit: int = STACKTRACE_MAX_CHARS) -> str:
    """The dump's first ``limit`` characters: a dump starts with the error and the
    current thread's stack; what is cut is the other threads and the module list."""
    if len(text) <= limit:
        return text
    marker = "\n  ...\n"
    return text[: limit - len(marker)] + marker


def to_record(header: Header, dump: str, time_unix_nano: int) -> tuple[Resource, Record]:
    """The ERROR record of a fatal-error dump, with its process's resource.

    ``exception.type`` is what the ``Fatal Python error:`` line names (``Segmentation
    fault``, ``Aborted``), ``exception.message`` and the body that line,
    ``exception.stacktrace`` the dump up to ``STACKTRACE_MAX_CHARS``; the job id, when
    the header has one, is the record's ``job_id``."""
    text = dump.strip("\n")
    m = _FATAL_LINE.search(text)
    if m is not None:
        kind = m.group(1).strip()[:200] or "Fatal error"
        line = m.group(0).strip()[:MAX_VALUE_CHARS]
    else:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        kind, line = "Fatal error", (first or "Fatal error")[:MAX_VALUE_CHARS]
    sdk = header.resource.get("telemetry.sdk.version")
    resource = Resource(
        attributes=dict(header.resource),
        scope_name="emp_fastbuf",
        scope_version=sdk if isinstance(sdk, str) else "",
    )
    rec = Record(
        kind=LOG,
        time_unix_nano=time_unix_nano,
        context={"job_id": header.job_id} if header.job_id else {},
        attributes={
            "exception.type": kind,
            "exception.message": line,
            "exception.stacktrace": clip_dump(text + "\n"),
        },
        severity_number=SEVERITY_ERROR,
        severity_text=SEVERITY_TEXT[SEVERITY_ERROR],
        body=line,
    )
    return resource, rec
