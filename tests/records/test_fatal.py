"""The fatal-error file's format (``records.fatal``): the header always fits its bytes, the
decoder takes any bytes without raising, and a dump becomes the record the agent sends."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emp_fastbuf.records import LOG, fatal, reference


def header(**changes: object) -> fatal.Header:
    values: dict[str, object] = {
        "pid": 4242,
        "start": 987654,
        "ring": "emp-fastbuf-1000",
        "resource": {"service.name": "svc", "emp.worker_id": "w-1", "process.pid": 4242},
        "job_id": "job-1",
    }
    values.update(changes)
    return fatal.Header(**values)  # type: ignore[arg-type]


def test_a_header_round_trips_in_exactly_its_size() -> None:
    h = header()
    data = fatal.encode_header(h)
    assert len(data) == fatal.HEADER_SIZE and data.endswith(b" \n")
    assert fatal.decode(data + b"the dump\n") == (h, "the dump\n")
    assert fatal.decode(data) == (h, "")


def test_what_does_not_fit_is_left_out_core_attributes_first() -> None:
    many = {f"custom.{i}": "x" * 100 for i in range(100)}
    h = header(resource={"service.name": "svc", "emp.machine_id": "m", **many})
    got = fatal.decode(fatal.encode_header(h))
    assert got is not None
    assert got[0].resource == {"service.name": "svc", "emp.machine_id": "m"}
    # Values too long even then are clipped; escaped non-ASCII still fits.
    h = header(resource={k: "é" * 5000 for k in fatal.CORE_RESOURCE_KEYS}, job_id="ü" * 5000)
    got = fatal.decode(fatal.encode_header(h))
    assert got is not None
    assert got[0].resource["service.name"] == "é" * 64 and got[0].job_id == "ü" * 64
    # A ring name of 200 characters with everything else huge: pid, ring and service.
    h = header(ring="r" * 200, resource={"service.name": "\u2603" * 5000}, job_id="\u2603" * 5000)
    got = fatal.decode(fatal.encode_header(h))
    assert got is not None and got[0].ring == "r" * 200 and got[0].pid == 4242


def test_values_the_format_cannot_hold_are_dropped() -> None:
    h = header(resource={"ok": 1, "list": [1, 2], "none": None, "big": 1 << 70, "f": 0.5})
    got = fatal.decode(fatal.encode_header(h))
    assert got is not None and got[0].resource == {"ok": 1, "f": 0.5}


def _with_body(body: object) -> bytes:
    text = fatal.MAGIC + json.dumps(body).encode()
    return text + b" " * (fatal.HEADER_SIZE - 1 - len(text)) + b"\n"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        fatal.encode_header(header())[:-1],  # short
        b"X" + fatal.encode_header(header())[1:],  # another magic
        fatal.encode_header(header())[:-1] + b" ",  # no final newline
        _with_body([1, 2]),
        _with_body({"pid": "1", "start": 0, "ring": "r", "resource": {}}),
        _with_body({"pid": 0, "start": 0, "ring": "r", "resource": {}}),
        _with_body({"pid": 1, "start": -1, "ring": "r", "resource": {}}),
        _with_body({"pid": True, "start": 0, "ring": "r", "resource": {}}),
        _with_body({"pid": 1, "start": 0, "ring": 5, "resource": {}}),
        _with_body({"pid": 1, "start": 0, "ring": "r", "resource": []}),
        _with_body({"pid": 1, "start": 0, "ring": "r", "resource": {}, "job_id": 7}),
        fatal.MAGIC + b"[" * (fatal.HEADER_SIZE - len(fatal.MAGIC) - 1) + b"\n",
        fatal.MAGIC + b"\xff" * (fatal.HEADER_SIZE - len(fatal.MAGIC) - 1) + b"\n",
    ],
)
def test_a_header_this_version_does_not_write_is_refused(data: bytes) -> None:
    assert fatal.decode(data) is None


@given(st.binary(max_size=fatal.HEADER_SIZE + 64))
def test_any_bytes_decode_or_are_refused_without_raising(data: bytes) -> None:
    fatal.decode(data)
    fatal.decode(fatal.MAGIC + data)


def test_the_dump_is_capped_and_its_bad_bytes_replaced() -> None:
    head = fatal.encode_header(header())
    got = fatal.decode(head + b"ok \xff\x00 end" + b"x" * (fatal.MAX_DUMP_BYTES + 10))
    assert got is not None
    dump = got[1]
    assert dump.startswith("ok \ufffd end") and len(dump) == fatal.MAX_DUMP_BYTES - 1


def test_a_dump_becomes_the_error_record_of_its_process_and_job() -> None:
    dump = (
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x1 (most recent call first):\n"
        '  File "w.py", line 3 in die\n'
    )
    res, rec = fatal.to_record(header(), "\n" + dump, 123)
    assert res.attributes["service.name"] == "svc" and res.scope_name == "emp_fastbuf"
    assert rec.kind == LOG and rec.time_unix_nano == 123
    assert (rec.severity_number, rec.severity_text) == (17, "ERROR")
    assert rec.context == {"job_id": "job-1"}
    assert rec.body == "Fatal Python error: Segmentation fault"
    assert rec.attributes == {
        "exception.type": "Segmentation fault",
        "exception.message": "Fatal Python error: Segmentation fault",
        "exception.stacktrace": dump,
    }
    # The agent encodes it strictly: it is a valid record.
    assert reference.decode_record(reference.encode_record(rec)) == rec
    _, rec = fatal.to_record(header(job_id=None), "garbage\nmore", 1)
    assert rec.attributes["exception.type"] == "Fatal error" and rec.body == "garbage"
    assert rec.context == {}


def test_a_long_dump_keeps_its_beginning() -> None:
    text = "Fatal Python error: Aborted\n" + "  frame\n" * 10_000
    clipped = fatal.clip_dump(text)
    assert len(clipped) == fatal.STACKTRACE_MAX_CHARS
    assert clipped.startswith("Fatal Python error: Aborted\n") and clipped.endswith("\n  ...\n")


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("12-34-ab.fatal", (12, 34)),
        (fatal.file_name(99, 0, "00ff"), (99, 0)),
        ("12-34-ab.fatal.tmp", None),
        ("0-34-ab.fatal", None),
        ("12-34-XY.fatal", None),
        ("12-34.fatal", None),
        ("../12-34-ab.fatal", None),
    ],
)
def test_file_names(name: str, owner: tuple[int, int] | None) -> None:
    assert fatal.parse_name(name) == owner
