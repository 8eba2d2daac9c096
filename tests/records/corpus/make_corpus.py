"""Writes the replay corpus in ``records/`` (run from the repository root:
``python tests/records/corpus/make_corpus.py``). The files are committed;
``tests/records/test_reference.py`` replays them: every ``valid_*.bin`` decodes (and
re-encodes to the same bytes), every ``bad_*.bin`` raises ``CorruptRecord``. Regenerate
only for a deliberate format change."""

from __future__ import annotations

import struct
from pathlib import Path

from emp_fastbuf.records import (
    COUNTER,
    EVENT,
    GAUGE,
    HISTOGRAM,
    LOG,
    METRIC,
    SPAN,
    STATUS_ERROR,
    Record,
    Resource,
    SpanEvent,
    SpanLink,
    reference,
)

OUT = Path(__file__).parent / "records"
T0 = 1_700_000_000_000_000_000
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN_ID = bytes.fromhex("00f067aa0ba902b7")
PARENT = bytes.fromhex("53995c3f42cd8ad8")


def valid() -> dict[str, bytes]:
    log = Record(
        kind=LOG,
        time_unix_nano=T0,
        severity_number=9,
        severity_text="INFO",
        body="epoch 3 done",
        context={"job_id": "job-1"},
        attributes={"epoch": 3, "loss": 0.125, "model": "resnet50", "ok": True},
    )
    return {
        "valid_log.bin": reference.encode_record(log),
        "valid_log_trace_limits.bin": reference.encode_record(
            Record(
                kind=LOG,
                time_unix_nano=T0,
                trace_id=TRACE,
                span_id=SPAN_ID,
                dropped_attributes=2,
                truncated_values=1,
                severity_number=17,
                severity_text="ERROR",
                body="CUDA error: out of memory ✗",
            )
        ),
        "valid_event.bin": reference.encode_record(
            Record(kind=EVENT, time_unix_nano=T0, name="checkpoint", attributes={"n": None})
        ),
        "valid_span.bin": reference.encode_record(
            Record(
                kind=SPAN,
                time_unix_nano=T0,
                trace_id=TRACE,
                span_id=SPAN_ID,
                name="train_step",
                parent_span_id=PARENT,
                start_unix_nano=T0 - 2_000_000,
                status_code=STATUS_ERROR,
                span_kind=1,
                status_message="failed",
                events=[SpanEvent("exception", T0 - 1, {"exception.type": "ValueError"})],
                links=[SpanLink(bytes(range(16)), bytes(range(8)), {"why": "batch"})],
            )
        ),
        "valid_metric_counter.bin": reference.encode_record(
            Record(kind=METRIC, time_unix_nano=T0, instrument=COUNTER, name="tokens", value=512)
        ),
        "valid_metric_gauge.bin": reference.encode_record(
            Record(
                kind=METRIC,
                time_unix_nano=T0,
                instrument=GAUGE,
                name="gpu.temp",
                unit="Cel",
                value=71.5,
            )
        ),
        "valid_metric_histogram.bin": reference.encode_record(
            Record(
                kind=METRIC,
                time_unix_nano=T0,
                instrument=HISTOGRAM,
                name="step.ms",
                unit="ms",
                values=[1.5, 20.0, 300.0],
                bounds=[0.0, 10.0, 100.0],
            )
        ),
        "valid_attr_types.bin": reference.encode_record(
            Record(
                kind=EVENT,
                time_unix_nano=T0,
                name="types",
                attributes={
                    "none": None,
                    "str": "héllo",
                    "int": -(1 << 63),
                    "float": float("-inf"),
                    "bool": False,
                    "bytes": b"\x00\xff",
                    "array": [1, "a", 2.5, True, None, b"z"],
                    "empty": [],
                },
            )
        ),
    }


def bad(v: dict[str, bytes]) -> dict[str, bytes]:
    log = v["valid_log.bin"]
    span = v["valid_span.bin"]
    hist = v["valid_metric_histogram.bin"]

    def patched(buf: bytes, at: int, new: bytes) -> bytes:
        return buf[:at] + new + buf[at + len(new) :]

    # Offsets into valid_metric_histogram.bin: 12 header, 1 instrument, 2+7 name,
    # 1+2 unit, 2 description, then u32 n at 27.
    n_at = 12 + 1 + 2 + len(b"step.ms") + 1 + 2 + 2
    bounds_at = n_at + 4 + 3 * 8 + 2
    eventless = Record(kind=EVENT, time_unix_nano=T0, name="e")
    return {
        "bad_empty.bin": b"",
        "bad_truncated_header.bin": log[:7],
        "bad_truncated_attrs.bin": log[:-3],
        "bad_version_2.bin": patched(log, 0, b"\x02"),
        "bad_kind_9.bin": patched(log, 1, b"\x09"),
        "bad_unknown_flag.bin": patched(log, 2, b"\x04"),
        "bad_zero_trace_id.bin": patched(span, 12, bytes(16)),
        "bad_span_without_trace.bin": patched(span, 2, b"\x00"),
        "bad_body_length_past_end.bin": patched(log, 12 + 1 + 5, b"\xff\xff\x00\x00"),
        "bad_invalid_utf8.bin": log.replace(b"resnet50", b"resn\xc3\x2850"),
        "bad_nested_array.bin": reference.encode_record(eventless)[:-2]
        + struct.pack("<H", 1)
        + struct.pack("<H", 1)
        + b"a"
        + b"\x06\x01\x00\x06\x00\x00",
        "bad_bool_2.bin": log[:-1] + b"\x02",
        "bad_unknown_tag.bin": reference.encode_record(eventless)[:-2] + b"\x01\x00\x01\x00k\x07",
        "bad_trailing_byte.bin": log + b"\x00",
        "bad_histogram_n_zero.bin": patched(hist, n_at, b"\x00\x00\x00\x00"),
        "bad_histogram_bounds_decreasing.bin": patched(hist, bounds_at, struct.pack("<d", 50.0)),
        "bad_attr_count_huge.bin": reference.encode_record(eventless)[:-2] + b"\xff\xff",
        "bad_resource_as_record.bin": reference.encode_resource(
            Resource(attributes={"service.name": "x"}, scope_version="1")
        ),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    v = valid()
    for name, data in {**v, **bad(v)}.items():
        (OUT / name).write_bytes(data)


if __name__ == "__main__":
    main()
