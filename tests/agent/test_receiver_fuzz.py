"""The receiver's decoding under random and mutated bodies: every body either converts or
is a BadRequest, never another exception; the native logs path means what the Python
path means."""

from __future__ import annotations

import random
import time

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from emp_fastbuf.agent.receiver.convert import Cumulative, convert_logs
from emp_fastbuf.agent.receiver.decode import BadRequest, _native_logs, convert_request
from emp_fastbuf.records import reference


def _request(rng: random.Random) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for _ in range(rng.randint(1, 3)):
        rl = req.resource_logs.add()
        rl.resource.attributes.add(key="service.name").value.string_value = f"s{rng.random()}"
        sl = rl.scope_logs.add()
        sl.scope.name = "scope"
        for i in range(rng.randint(0, 20)):
            rec = sl.log_records.add(
                time_unix_nano=rng.randint(1, 2**63), severity_number=rng.randint(0, 24)
            )
            if rng.random() < 0.8:
                rec.body.string_value = "é" * rng.randint(0, 300)
            elif rng.random() < 0.5:
                rec.body.int_value = i
            if rng.random() < 0.5:
                rec.trace_id = rng.randbytes(16)
                rec.span_id = rng.randbytes(8)
                rec.flags = rng.choice((0, 1, 0x101))
            if rng.random() < 0.1:
                rec.event_name = "ev"
            rec.severity_text = "x" * rng.choice((0, 5, 300))
            a = rec.attributes.add(key="k" * rng.randint(1, 10))
            a.value.array_value.values.add().double_value = rng.random()
            rec.attributes.add(key="b").value.bytes_value = rng.randbytes(5)
            if rng.random() < 0.1:
                rec.attributes.add(key="kv").value.kvlist_value.values.add(key="x")
    return req


@pytest.mark.parametrize("seed", range(40))
def test_native_logs_mean_what_the_python_path_means(seed: int) -> None:
    rng = random.Random(seed)
    req = _request(rng)
    native = _native_logs(req.SerializeToString())
    python = convert_logs(req)
    assert native.accepted == python.accepted and native.rejected == python.rejected

    def decoded(chunks: list) -> list:
        return [
            (reference.decode_resource(c.meta), [reference.decode_record(r) for r in c.records])
            for c in chunks
        ]

    assert decoded(native.chunks) == decoded(python.chunks)


@pytest.mark.parametrize("signal", ["logs", "traces", "metrics"])
def test_mutated_and_random_bodies_never_escape(signal: str) -> None:
    rng = random.Random(signal)
    valid = _request(rng).SerializeToString()
    state = Cumulative(time.time_ns())
    outcomes = {"ok": 0, "bad": 0}
    for i in range(1500):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(body) or 1)
            if op < 0.4 and body:
                body[pos] = rng.randrange(256)
            elif op < 0.7:
                body[pos:pos] = rng.randbytes(rng.randint(1, 8))
            else:
                del body[pos:]
        if i % 5 == 0:
            body = bytearray(rng.randbytes(rng.randint(0, 200)))
        try:
            converted = convert_request(signal, bytes(body), "application/x-protobuf", state)
        except BadRequest as exc:
            assert exc.status == 400 and exc.message
            outcomes["bad"] += 1
            continue
        for chunk in converted.chunks:
            reference.decode_resource(chunk.meta)
            for record in chunk.records:
                reference.decode_record(record)  # what was taken is valid ring data
        outcomes["ok"] += 1
    assert outcomes["bad"] > 0 and outcomes["ok"] > 0
