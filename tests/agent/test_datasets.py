"""Dataset routing by deployment environment (``EMP_FASTBUF_DATASETS``, ``--dataset
ENV=DATASET``): real producer processes of several environments and one real agent send
each dataset its own requests with its ``Dash0-Dataset``; the sink's per-dataset spool
destinations keep delivery exact when one dataset fails; bad mappings stop the agent at
start (exit 2); ``fastbuf status`` shows the routes and what each dataset got."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from emp_fastbuf.agent.batch import Batch
from emp_fastbuf.agent.config import AgentConfig, ConfigError
from emp_fastbuf.agent.datasets import DatasetRoutes, Router, destination
from emp_fastbuf.agent.deadletter import Replayer
from emp_fastbuf.agent.otlp.http import OTLPExporter, RetryPolicy
from emp_fastbuf.agent.runner import config_from_args
from emp_fastbuf.agent.sinks.otlp import OTLPSink
from emp_fastbuf.agent.spool import Spool
from emp_fastbuf.cli.parser import build_parser
from emp_fastbuf.records import LOG, SPAN, LaneChunk, Record, Resource
from emp_fastbuf.records.reference import encode_record, encode_resource
from emp_fastbuf.testing.receiver import OTLPReceiver, Response, attrs_dict
from support.agent import AgentProc, fastbuf_cli, run_script

ROUTES = "production=prod,staging=stg"
FILE_ID = "000000000001-0000000000000000001"
ENV_KEY = "deployment.environment.name"
OLD_ENV_KEY = "deployment.environment"
# Retry briefly, never open the breaker: a failing request answers retry_later quickly.
QUICK = RetryPolicy(
    initial_backoff_s=0.01, max_backoff_s=0.02, max_elapsed_s=0.2, breaker_threshold=1000
)

# A producer process: ``n`` logs in one span and a counter; its environment given to
# configure() when argv[4] is set, else taken from OTEL_RESOURCE_ATTRIBUTES.
WORKER = r"""
import sys
import emp_fastbuf as fastbuf
ring, n, tag, environment = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
extra = {"resource_attributes": {"deployment.environment.name": environment}} if environment else {}
fastbuf.configure(service="ds-svc", worker_id=tag, ring=ring, agent="external", **extra)
with fastbuf.span("job", tag=tag):
    for i in range(n):
        fastbuf.log.info("step", seq=i, tag=tag)
    fastbuf.metrics.counter("jobs.done").inc(1, tag=tag)
"""


def run_producer(ring: str, n: int, tag: str, environment: str = "", resource: str = "") -> None:
    run_script(
        WORKER, ring, str(n), tag, environment, env={"OTEL_RESOURCE_ATTRIBUTES": resource or None}
    )


def environment(resource: dict[str, Any]) -> str | None:
    value = resource.get(ENV_KEY, resource.get(OLD_ENV_KEY))
    return value if isinstance(value, str) else None


def resource_lists(request: Any) -> list[Any]:
    for name in ("resource_logs", "resource_spans", "resource_metrics"):
        if hasattr(request, name):
            return list(getattr(request, name))
    raise AssertionError(type(request))


def fastbuf_status(home: Path, ring: str, *args: str) -> subprocess.CompletedProcess[str]:
    return fastbuf_cli(home, "status", "--ring", ring, *args)


def tags_by_dataset(rx: OTLPReceiver) -> dict[str | None, Counter[str]]:
    """Which worker's log records arrived in the requests of which dataset."""
    out: dict[str | None, Counter[str]] = {}
    for path, headers, request in rx.requests:
        if path != "/v1/logs":
            continue
        for res in request.resource_logs:
            for scope in res.scope_logs:
                for rec in scope.log_records:
                    tag = attrs_dict(rec.attributes).get("tag")
                    out.setdefault(headers.get("dash0-dataset"), Counter())[str(tag)] += 1
    return out


# ---- end to end -------------------------------------------------------------------------------


def test_two_producers_of_two_environments_each_request_carries_its_dataset(
    env_clean: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    """Producers of production (OTEL_RESOURCE_ATTRIBUTES) and staging (configure), one of
    the older deployment.environment and one unmapped, into one agent: every request holds
    the resources of one dataset and carries its Dash0-Dataset; the unmapped environment
    gets DASH0_DATASET; status shows the routes and the records each dataset got."""
    run_producer(agent_ring, 40, "p", resource=f"{ENV_KEY}=production,team=a")
    run_producer(agent_ring, 30, "s", environment="staging")
    run_producer(agent_ring, 20, "old", resource=f"{OLD_ENV_KEY}=production")
    run_producer(agent_ring, 10, "qa", resource=f"{ENV_KEY}=qa")
    agent = AgentProc(
        agent_ring,
        env_clean,
        "--endpoint",
        receiver.url,
        env={
            "EMP_FASTBUF_DATASETS": ROUTES,
            "DASH0_DATASET": "base",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
        },
    )
    expected = {"prod": {"p": 40, "old": 20}, "stg": {"s": 30}, "base": {"qa": 10}}
    try:
        assert receiver.wait_for(
            lambda r: {k: dict(v) for k, v in tags_by_dataset(r).items()} == expected, 30
        ), agent.output()
        assert receiver.wait_for(lambda r: len(r.spans()) == 4, 30), agent.output()
        assert receiver.wait_for(
            lambda r: (
                {environment(a) for a, m in r.metrics() if m.name == "jobs.done"}
                == {"production", "staging", "qa"}
            ),
            30,
        ), agent.output()
        # Records sent per dataset: logs and one span per producer.
        want = {"prod": 62, "stg": 31, "base": 11}

        def per_dataset() -> dict[str, int]:
            try:
                st = json.loads(agent.status_path.read_text())
            except (OSError, ValueError):
                return {}
            return {d["dataset"]: d["records"] for d in (st.get("export") or {})["datasets"]}

        deadline = time.monotonic() + 30
        while per_dataset() != want:
            assert time.monotonic() < deadline, per_dataset()
            time.sleep(0.1)
        status = fastbuf_status(env_clean, agent_ring, "--json")
        human = fastbuf_status(env_clean, agent_ring)
    finally:
        assert agent.stop() == 0
    mapped = {"production": "prod", "staging": "stg"}
    seen: set[tuple[str, str]] = set()
    for path, headers, request in receiver.requests:
        datasets = {
            mapped.get(environment(attrs_dict(res.resource.attributes)) or "", "base")
            for res in resource_lists(request)
        }
        assert len(datasets) == 1, (path, datasets)
        assert headers.get("dash0-dataset") == datasets.pop()
        seen.add((path, headers["dash0-dataset"]))
    for dataset in ("prod", "stg", "base"):
        for path in ("/v1/logs", "/v1/traces", "/v1/metrics"):
            assert (path, dataset) in seen
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["agent"]["config"]["datasets"] == {
        "source": "EMP_FASTBUF_DATASETS",
        "routes": {"production": "prod", "staging": "stg"},
        "fallback": None,
        "unmapped": {"traces": "base", "metrics": "base", "logs": "base"},
    }
    by_name = {d["dataset"]: d for d in st["export"]["datasets"]}
    assert {k: v["records"] for k, v in by_name.items()} == want
    assert all(d["requests"] >= 2 and d["dead_lettered"] == 0 for d in by_name.values())
    assert by_name["prod"]["metric_points"] >= 2  # a series of each of its producers
    assert set(st["agent"]["destinations"]) == {
        "export",
        "dataset-prod",
        "dataset-stg",
        "metrics",
    }
    assert human.returncode == 0, human.stderr
    assert (
        "datasets (EMP_FASTBUF_DATASETS): production -> prod, staging -> stg; "
        "unmapped environments: base"
    ) in human.stdout
    assert "sent per dataset: " in human.stdout and "prod 62 records" in human.stdout


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("production", "'production' is not ENV=DATASET"),
        ("production=", "names no dataset after '='"),
        ("=prod", "names no environment before '='"),
        ("production=prod,,staging=stg", "entry 2 is empty"),
        ("production=prod,production=other", "'production' is mapped twice"),
        ("*=a,*=b", "'*' is mapped twice"),
        ("production=my dataset", "is not a dataset slug"),
    ],
)
def test_a_bad_mapping_stops_the_agent_at_start_with_exit_2(
    env_clean: Path, agent_ring: str, value: str, needle: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", agent_ring, "--idle-exit", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean), "EMP_FASTBUF_DATASETS": value},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("fastbuf agent: EMP_FASTBUF_DATASETS") and needle in lines[0]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--dataset", "a", "--dataset", "b"], "the one dataset is given 2 times"),
        (["--dataset", "a", "--dataset", "*=b"], "name the dataset of unmapped environments"),
        (["--dataset", "staging=stg", "--dataset", "staging=x"], "'staging' is mapped twice"),
        (["--dataset", "prod="], "names no dataset after '='"),
    ],
)
def test_bad_dataset_flags_stop_the_agent_at_start_with_exit_2(
    env_clean: Path, agent_ring: str, flags: list[str], needle: str
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "emp_fastbuf",
            "agent",
            "--ring",
            agent_ring,
            "--idle-exit",
            "1",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_HOME": str(env_clean)},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastbuf agent: --dataset"), out.stderr
    assert needle in lines[0]


# ---- the configuration ------------------------------------------------------------------------


def agent_config(monkeypatch: pytest.MonkeyPatch, *flags: str, **env: str) -> AgentConfig:
    """What ``fastbuf agent FLAGS`` builds in ``env`` (the real parser and its options)."""
    for name in list(os.environ):
        if name.startswith(("OTEL_", "DASH0_", "EMP_FASTBUF_DATASETS")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return config_from_args(build_parser().parse_args(["agent", *flags]))


def test_flags_replace_the_variable_and_name_their_fallback(
    monkeypatch: pytest.MonkeyPatch, fastbuf_home: Path
) -> None:
    env = {"EMP_FASTBUF_DATASETS": "production=prod,*=dev", "DASH0_DATASET": "base"}
    assert agent_config(monkeypatch, **env).datasets == DatasetRoutes(
        {"production": "prod"}, "dev", "EMP_FASTBUF_DATASETS"
    )
    # ENV=DATASET flags replace the variable; a NAME beside them is their "*".
    routed = agent_config(
        monkeypatch, "--dataset", "staging=stg,qa=test", "--dataset", "other", **env
    )
    assert routed.datasets == DatasetRoutes({"staging": "stg", "qa": "test"}, "other", "--dataset")
    assert routed.headers.get("Dash0-Dataset") == "base"
    # NAME alone keeps its meaning: the one dataset for everything, no routes.
    one = agent_config(monkeypatch, "--dataset", "only", **env)
    assert one.datasets is None and one.headers["Dash0-Dataset"] == "only"
    # A bad variable is refused even when flags replace it.
    with pytest.raises(ConfigError, match="EMP_FASTBUF_DATASETS"):
        agent_config(monkeypatch, "--dataset", "only", EMP_FASTBUF_DATASETS="production")


@pytest.mark.parametrize(
    ("env", "unmapped"),
    [
        ({"EMP_FASTBUF_DATASETS": "production=prod", "DASH0_DATASET": "base"}, "base"),
        ({"EMP_FASTBUF_DATASETS": "production=prod,*=dev", "DASH0_DATASET": "base"}, "dev"),
        ({"EMP_FASTBUF_DATASETS": "production=prod"}, None),
        ({"EMP_FASTBUF_DATASETS": "production=prod,*=default", "DASH0_DATASET": "base"}, None),
        (
            {
                "EMP_FASTBUF_DATASETS": "production=default",
                "OTEL_EXPORTER_OTLP_HEADERS": "Dash0-Dataset=hdr",
            },
            "hdr",
        ),
    ],
)
def test_unmapped_environments_take_the_star_then_the_configured_dataset(
    receiver: OTLPReceiver, tmp_path: Path, env: dict[str, str], unmapped: str | None
) -> None:
    """A real sink and receiver: production goes to its route (``default``: no header),
    an unmapped environment and a resource without one to ``*``, else to the configured
    Dash0-Dataset (DASH0_DATASET, the headers), else without the header."""
    config = AgentConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "HOME": str(tmp_path), **env}
    )
    sink = OTLPSink(config, OTLPExporter(config, QUICK))
    chunks = [chunk("production", "p", 3), chunk("qa", "q", 2), chunk(None, "none", 1)]
    try:
        delivery = sink.deliver(Batch(FILE_ID, chunks))
    finally:
        sink.close()
    assert delivery.taken and not delivery.later and delivery.records == 9  # 6 logs, 3 spans
    got = tags_by_dataset(receiver)
    production = env["EMP_FASTBUF_DATASETS"].split(",")[0].split("=")[1]
    production_header = None if production == "default" else production
    if production_header == unmapped:
        assert got == {unmapped: Counter({"p": 3, "q": 2, "none": 1})}
    else:
        assert got == {production_header: Counter({"p": 3}), unmapped: Counter(q=2, none=1)}


# ---- exact delivery per dataset -----------------------------------------------------------------


def chunk(env: str | None, tag: str, n: int, key: str = ENV_KEY) -> LaneChunk:
    attributes: dict[str, Any] = {"service.name": "ds-svc", "emp.worker_id": tag}
    if env is not None:
        attributes[key] = env
    meta = encode_resource(Resource(attributes=attributes))
    now = time.time_ns()
    records = [
        encode_record(
            Record(
                kind=LOG,
                time_unix_nano=now,
                body="step " + "x" * 200,
                severity_number=9,
                attributes={"seq": i, "tag": tag},
            )
        )
        for i in range(n)
    ]
    records.append(
        encode_record(
            Record(
                kind=SPAN,
                time_unix_nano=now + 1000,  # a span's time is its end
                start_unix_nano=now,
                name="job",
                trace_id=b"\x01" * 16,
                span_id=tag.encode().ljust(8, b"-")[:8],
                attributes={"tag": tag},
            )
        )
    )
    return LaneChunk(meta, records)


def routed_config(receiver: OTLPReceiver, home: Path, **fields: Any) -> AgentConfig:
    config = AgentConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "EMP_FASTBUF_DATASETS": ROUTES,
            "EMP_FASTBUF_HOME": str(home),
            "HOME": str(home),
        }
    )
    return dataclasses.replace(config, **fields) if fields else config


def log_tags(rx: OTLPReceiver) -> Counter[str]:
    return Counter(str(attrs_dict(rec.attributes)["tag"]) for _res, rec in rx.logs())


def test_a_failing_dataset_never_makes_the_others_be_sent_again(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """prod is accepted, stg answers 503 until the exporter gives up: the file is done for
    dataset-prod, not dataset-stg (durably: a new spool and sink, as after a restart, send stg and
    nothing of prod again), and is deleted once stg is delivered."""
    config = routed_config(receiver, tmp_path)
    spool = Spool(tmp_path / "spool", destinations=OTLPSink(config).destinations)
    file_id = spool.write([chunk("production", "p", 20), chunk("staging", "s", 10)])
    receiver.script(Response(200), Response(200))  # prod's logs and spans
    receiver.default = Response(503)
    sink = OTLPSink(config, OTLPExporter(config, QUICK))
    first = sink.deliver(Batch.read(spool, file_id))
    sink.close()
    # Done: prod, and "export" (no record of this file is unmapped).
    assert first.later and first.taken and first.done == ("export", "dataset-prod")
    assert first.records == 21  # prod's logs and span, taken
    spool.mark_done(file_id, *first.done)
    assert log_tags(receiver) == Counter({"p": 20})

    receiver.default = Response(200)
    spool = Spool(tmp_path / "spool", destinations=spool.destinations)
    assert spool.done_for(file_id) == {"export", "dataset-prod"}
    sink = OTLPSink(config, OTLPExporter(config, QUICK))
    second = sink.deliver(Batch.read(spool, file_id))
    # stg's logs and span; the file has no metric update: done for metrics too.
    assert second.done == ("dataset-stg", "metrics") and not second.later
    assert second.records == 11
    spool.mark_done(file_id, *second.done)
    assert spool.pending() == []
    assert log_tags(receiver) == Counter({"p": 20, "s": 10})
    assert Counter(s.name for _r, s in receiver.spans()) == Counter({"job": 2})
    stats = {d["dataset"]: d for d in sink.status()["datasets"]}
    assert stats["stg"]["records"] == 11 and stats["stg"]["requests"] == 2
    assert "prod" not in stats  # nothing of prod went out again
    sink.close()


def test_a_split_dataset_is_done_only_when_every_request_is_delivered(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """prod's logs cut into several requests under a small request cap: two accepted, then
    503s. The file is not done for prod; the next delivery sends only the requests that
    had not gone, and every record arrives once."""
    config = routed_config(receiver, tmp_path, request_max_bytes=4096)
    spool = Spool(tmp_path / "spool", destinations=OTLPSink(config).destinations)
    file_id = spool.write([chunk("production", "p", 60), chunk("staging", "s", 5)])
    receiver.script(Response(200), Response(200))
    receiver.default = Response(503)
    sink = OTLPSink(config, OTLPExporter(config, QUICK))
    first = sink.deliver(Batch.read(spool, file_id))
    assert first.later and "dataset-prod" not in first.done
    spool.mark_done(file_id, *first.done)
    accepted_first = sum(1 for p, _h, _r in receiver.requests if p == "/v1/logs")
    assert 0 < len(receiver.logs()) < 60
    receiver.default = Response(200)
    second = sink.deliver(Batch.read(spool, file_id))
    assert not second.later and "dataset-prod" in second.done
    spool.mark_done(file_id, *second.done)
    assert spool.pending() == []
    tags = log_tags(receiver)
    assert tags["p"] == 60 and tags["s"] == 5
    seqs = Counter(
        int(attrs_dict(rec.attributes)["seq"])
        for res, rec in receiver.logs()
        if res["emp.worker_id"] == "p"
    )
    assert set(seqs.values()) == {1} and len(seqs) == 60
    prod_requests = [
        h for p, h, _r in receiver.requests if p == "/v1/logs" and h["dash0-dataset"] == "prod"
    ]
    assert len(prod_requests) >= 3 and accepted_first >= 2
    sink.close()


def test_a_dataset_refused_for_good_is_dead_lettered_and_replayed_to_its_dataset(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """stg's token is refused (403): its request is a dead letter, prod's is accepted, the
    file is done. Status counts it per dataset; a replay sends it with Dash0-Dataset stg."""
    config = routed_config(receiver, tmp_path)
    receiver.script(Response(200), Response(200), Response(403), Response(403))
    sink = OTLPSink(config, OTLPExporter(config, QUICK))
    delivery = sink.deliver(
        Batch(
            "000000000001-0000000000000000001",
            [chunk("production", "p", 4), chunk("staging", "s", 3)],
        )
    )
    assert delivery.done == ("export", "dataset-prod", "dataset-stg", "metrics")
    assert not delivery.later
    stats = {d["dataset"]: d for d in sink.status()["datasets"]}
    sink.close()
    assert stats["prod"] == {
        "dataset": "prod",
        "records": 5,
        "metric_points": 0,
        "requests": 2,
        "dead_lettered": 0,
    }
    assert stats["stg"]["records"] == 0 and stats["stg"]["dead_lettered"] == 2
    receiver.clear()
    with Replayer(config, QUICK) as replayer:
        letters, damaged = replayer.scan()
        assert len(letters) == 2 and damaged == []
        assert all(replayer.send(letter).outcome == "sent" for letter in letters)
    assert {h["dash0-dataset"] for _p, h, _r in receiver.requests} == {"stg"}
    assert log_tags(receiver) == Counter({"s": 3})


def test_a_replayed_request_of_two_datasets_is_split_by_the_current_routes(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """A dead letter written before the routes existed holds two environments: sent again,
    it goes as one request per dataset."""
    plain = AgentConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "EMP_FASTBUF_HOME": str(tmp_path)}
    )
    receiver.default = Response(400)
    sink = OTLPSink(plain, OTLPExporter(plain, QUICK))
    sink.deliver(
        Batch(
            "000000000001-0000000000000000001",
            [chunk("production", "p", 2), chunk("staging", "s", 2)],
        )
    )
    sink.close()
    receiver.clear()
    receiver.default = Response(200)
    routed = routed_config(receiver, tmp_path)
    with Replayer(routed, QUICK) as replayer:
        letters, _damaged = replayer.scan()
        logs = [letter for letter in letters if letter.signal == "logs"]
        assert len(logs) == 1 and replayer.send(logs[0]).outcome == "sent"
    got = tags_by_dataset(receiver)
    assert got == {"prod": Counter({"p": 2}), "stg": Counter({"s": 2})}


def test_the_router_reads_the_older_attribute_and_remembers_each_blob() -> None:
    routes = DatasetRoutes({"production": "prod"}, None)
    router = Router(routes)
    new, old = chunk("production", "a", 1), chunk("production", "b", 1, key=OLD_ENV_KEY)
    both_meta = encode_resource(
        Resource(attributes={ENV_KEY: "qa", OLD_ENV_KEY: "production"})
    )  # the newer attribute wins
    groups = router.split([new, old, LaneChunk(both_meta, []), LaneChunk(b"\x01bad", [])])
    assert {k: len(v) for k, v in groups.items()} == {"prod": 2, None: 2}
    assert destination(None) == "export" and destination("prod") == "dataset-prod"
    odd = destination("team.a/prod")
    assert odd.startswith("dataset_") and odd != destination("team.a/dev")


def test_over_grpc_each_dataset_is_the_call_metadata(tmp_path: Path) -> None:
    """A real OTLP/gRPC receiver: each dataset's calls carry its dash0-dataset metadata,
    the others' headers unchanged; the unmapped environment keeps DASH0_DATASET."""
    pytest.importorskip("grpc")
    from emp_fastbuf.testing.grpc_receiver import GrpcReceiver

    with GrpcReceiver() as rx:
        config = AgentConfig.from_env(
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_ENDPOINT": rx.url,
                "OTEL_EXPORTER_OTLP_HEADERS": "x-team=a",
                "DASH0_DATASET": "base",
                "EMP_FASTBUF_DATASETS": ROUTES,
                "EMP_FASTBUF_HOME": str(tmp_path),
            }
        )
        sink = OTLPSink(config, OTLPExporter(config, QUICK))
        chunks = [chunk("production", "p", 2), chunk("staging", "s", 2), chunk("qa", "q", 2)]
        try:
            delivery = sink.deliver(Batch(FILE_ID, chunks))
        finally:
            sink.close()
        assert not delivery.later
        got: dict[str, set[str]] = {}
        for call in rx.calls:
            assert call.code == "OK" and call.metadata["x-team"] == "a"
            for res in resource_lists(call.request):
                tag = attrs_dict(res.resource.attributes)["emp.worker_id"]
                got.setdefault(str(call.metadata["dash0-dataset"]), set()).add(tag)
    assert got == {"prod": {"p"}, "stg": {"s"}, "base": {"q"}}
