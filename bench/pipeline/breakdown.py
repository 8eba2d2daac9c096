"""Where the export path's time goes: each stage of ``agent.export`` timed on its own.

``python -m bench.pipeline breakdown [BATCHES] [gzip|zstd]`` prints the table. The stages
are the agent's own calls, one at a time: the drain's read and spool write, the spool file
read back into a ``Batch``, the native transcoder on its chunks (as ``OTLPSink`` calls it),
the batch's metric scan (``Batch.metric_records``), the exporter's compression, its POST,
the file marked done for each of the sink's destinations. Beside them the Python encoder's
stages (decode, build, serialize) on the same batches, and the SDK's ``encode_logs`` and
serialize on the same records.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.pipeline.common import BATCH, StagedRing, agent_config, spool_for, start_receiver
from bench.pipeline.export import sdk_batch


@dataclass
class _Stage:
    wall_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)


def breakdown(batches: int = 20, compression: str = "gzip") -> dict[str, dict[str, float]]:
    """Each stage of the export path timed on its own over ``batches`` batches of ``BATCH``
    records: median wall and CPU nanoseconds per record. The native path: read, spool
    write (fsync) and read, transcode (logs, spans), metric scan, compress, send (export
    minus compress), done (spool file deleted). The Python encoder's stages (decode, build,
    serialize) on the same batches, and the SDK's encode_logs/serialize on the same records.
    """
    from bench.pipeline.sinks import otlp_sink
    from emp_fastbuf.agent.batch import Batch, decode_batch
    from emp_fastbuf.agent.otlp.reference import build_logs_request
    from emp_fastbuf.agent.transcode import _transcode

    home = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    staged = StagedRing("breakdown")
    receiver = start_receiver()
    stages: dict[str, _Stage] = {}
    try:
        staged.fill((batches + 1) * BATCH)
        config = agent_config(home, receiver.url, compression)
        sink = otlp_sink(config)
        exporter = sink.exporter
        spool = spool_for(config, sink)
        max_bytes = config.request_max_bytes

        def timed(stage: str, fn: Callable[[], Any]) -> Any:
            w0, c0 = time.perf_counter_ns(), time.process_time_ns()
            out = fn()
            w1, c1 = time.perf_counter_ns(), time.process_time_ns()
            s = stages.setdefault(stage, _Stage())
            s.wall_ns.append(w1 - w0)
            s.cpu_ns.append(c1 - c0)
            return out

        def done(file_id: str) -> None:
            spool.mark_done(file_id, *sink.destinations)

        for b in range(batches + 1):
            chunks = timed("read", partial(staged.read_batch, BATCH))
            file_id = timed("spool write (fsync)", partial(spool.write, chunks))
            staged.consumer.ack()
            batch = timed("spool read", partial(Batch.read, spool, file_id))
            payloads, _n, _bad = timed(
                "transcode logs (native)",
                partial(_transcode.logs_requests, batch.chunks, time.time_ns(), max_bytes),
            )
            timed(
                "transcode spans (native)",
                partial(_transcode.spans_requests, batch.chunks, max_bytes),
            )
            timed("metric scan", batch.metric_records)
            data = payloads[0]
            # The exporter's own compression (private: timed here on its own).
            timed("compress", partial(exporter._compress, data))
            timed("compress + send", partial(exporter.export, "logs", data))
            timed("done (spool delete)", partial(done, file_id))
            groups = timed("decode (python)", partial(decode_batch, batch.chunks))
            request = timed("build (python)", partial(build_logs_request, groups))
            timed("serialize (python)", request.SerializeToString)
            if b == 0:  # the first batch warms caches up: not counted
                for s in stages.values():
                    s.wall_ns.clear()
                    s.cpu_ns.clear()
        sink.close()
    finally:
        receiver.close()
        staged.close()
        shutil.rmtree(home, ignore_errors=True)

    def median(values: Sequence[int]) -> float:
        ordered = sorted(values)
        return float(ordered[len(ordered) // 2]) / BATCH

    out = {
        name: {"wall_ns": median(s.wall_ns), "cpu_ns": median(s.cpu_ns)}
        for name, s in stages.items()
    }
    both = out.pop("compress + send")
    out["send"] = {
        "wall_ns": max(0.0, both["wall_ns"] - out["compress"]["wall_ns"]),
        "cpu_ns": max(0.0, both["cpu_ns"] - out["compress"]["cpu_ns"]),
    }
    out.update(_sdk_breakdown(batches))
    return out


def _sdk_breakdown(batches: int) -> dict[str, dict[str, float]]:
    try:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    except ImportError:
        return {}
    batch = sdk_batch(BATCH)
    encode = _Stage()
    serialize = _Stage()
    for b in range(batches + 1):
        w0, c0 = time.perf_counter_ns(), time.process_time_ns()
        request = encode_logs(batch)
        w1, c1 = time.perf_counter_ns(), time.process_time_ns()
        request.SerializeToString()
        w2, c2 = time.perf_counter_ns(), time.process_time_ns()
        if b:
            encode.wall_ns.append(w1 - w0)
            encode.cpu_ns.append(c1 - c0)
            serialize.wall_ns.append(w2 - w1)
            serialize.cpu_ns.append(c2 - c1)

    def median(values: list[int]) -> float:
        return float(sorted(values)[len(values) // 2]) / BATCH

    return {
        "sdk encode_logs": {"wall_ns": median(encode.wall_ns), "cpu_ns": median(encode.cpu_ns)},
        "sdk serialize": {
            "wall_ns": median(serialize.wall_ns),
            "cpu_ns": median(serialize.cpu_ns),
        },
    }


_COMMON = (
    "read",
    "spool write (fsync)",
    "spool read",
    "compress",
    "send",
    "done (spool delete)",
)
_NATIVE_PATH = (*_COMMON, "transcode logs (native)", "transcode spans (native)", "metric scan")
_PYTHON_PATH = (*_COMMON, "decode (python)", "build (python)", "serialize (python)")


def breakdown_markdown(rows: dict[str, dict[str, float]], compression: str) -> str:
    """The stage table of ``breakdown``'s rows, with the agent's CPU per record."""
    native = sum(rows[s]["cpu_ns"] for s in _NATIVE_PATH)
    python = sum(rows[s]["cpu_ns"] for s in _PYTHON_PATH)
    lines = [
        f"Per record, median over batches of {BATCH:,} ({compression}):",
        "",
        "| stage | wall ns/record | CPU ns/record | share of the agent's CPU (native) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        share = f"{row['cpu_ns'] / native:.0%}" if name in _NATIVE_PATH else ""
        lines.append(f"| {name} | {row['wall_ns']:.0f} | {row['cpu_ns']:.0f} | {share} |")
    lines += [
        "",
        f"Agent CPU per record, native encoder: {native:.0f} ns = "
        f"{1e9 / native:,.0f} records/s/core; Python encoder: {python:.0f} ns = "
        f"{1e9 / python:,.0f} records/s/core.",
    ]
    return "\n".join(lines)
