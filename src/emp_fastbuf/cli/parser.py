"""The ``fastbuf`` argument parser, built from one table: each command, its help line, its
handler and its arguments, in the order ``--help`` lists them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from emp_fastbuf._version import __version__
from emp_fastbuf.cli.commands import (
    Handler,
    cmd_correlate,
    cmd_logs,
    cmd_metrics,
    cmd_tail,
    cmd_trace,
    delegate,
)
from emp_fastbuf.cli.jobs import cmd_jobs, cmd_why


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call: the flags (or the positional's name) and the keywords."""

    names: tuple[str, ...]
    options: dict[str, Any]


def _arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    #: None for a command that only has subcommands.
    handler: Handler | None
    args: tuple[Arg, ...]
    #: ``fastbuf NAME SUBCOMMAND ...``: one of these is required; each has its own handler.
    subcommands: tuple[Command, ...] = ()


_HOME = _arg("--home", help="the emp-fastbuf home (default: $EMP_FASTBUF_HOME)")
_RING = _arg("--ring", help="the ring name")
# Every store command ends with these.
_STORE = (
    _HOME,
    _arg("--json", action="store_true", help="print JSON Lines (docs/cli.md)"),
    _arg("--utc", action="store_true", help="print times in UTC (default: local time)"),
)
_SINCE = "30s, 10m, 2h, 7d or an RFC 3339 time"
# The filters of logs and tail (Store.logs and Store.tail take the same).
_LOG_FILTERS = (
    _arg("--job", help="only records of this job id"),
    _arg("--trace", help="only records of this trace id (32 hex digits, or its first 4+)"),
    _arg("--machine", help="only records from this machine id"),
    _arg("--worker", help="only records from this worker id"),
    _arg("--service", help="only records from this service (service.name)"),
    _arg("--level", help="only logs at or above: debug, info, warn, error, fatal"),
    _arg("--since", help=f"only records at or after: {_SINCE}"),
    _arg("--until", help=f"only records at or before: {_SINCE}"),
    _arg(
        "--attr",
        action="append",
        metavar="KEY=VALUE",
        help="only records with this attribute value (repeatable: all must match)",
    ),
    _arg(
        "--grep",
        help="only records whose body, name or an attribute value (exception text"
        " included) contains this text",
    ),
)

COMMANDS = (
    Command(
        "logs",
        "logs and events, oldest first",
        cmd_logs,
        (
            *_LOG_FILTERS,
            _arg("--limit", default="1000", help="the newest N records (default 1000; 0: all)"),
            *_STORE,
        ),
    ),
    Command(
        "trace",
        "a trace as a span tree with a waterfall",
        cmd_trace,
        (_arg("trace_id", help="the trace id (32 hex digits, or its first 4+)"), *_STORE),
    ),
    Command(
        "metrics",
        "the current value of every metric series",
        cmd_metrics,
        (
            _arg("--machine", help="only series from this machine id"),
            _arg("--worker", help="only series from this worker id"),
            _arg("--name", help="only series whose name matches this glob (gpu.*)"),
            _arg("--since", help=f"only updates after: {_SINCE}"),
            *_STORE,
        ),
    ),
    Command(
        "correlate",
        "everything about a job, in time order",
        cmd_correlate,
        (
            _arg("--job", dest="job_option", metavar="ID", help="the job id"),
            _arg("job", nargs="?", metavar="JOB", help="the job id (the same as --job)"),
            *_STORE,
        ),
    ),
    Command(
        "jobs",
        "one row per job, newest first: status, start, duration, sources, first error",
        cmd_jobs,
        (
            _arg("--failed", action="store_true", help="only the failed jobs"),
            _arg("--since", help=f"only jobs still running at or after: {_SINCE}"),
            _arg("--until", help=f"only jobs started at or before: {_SINCE}"),
            *_STORE,
        ),
    ),
    Command(
        "why",
        "why a job failed: span path, exception, last logs, machine metrics, evidence",
        cmd_why,
        (_arg("--job", metavar="ID", help="the job id"), *_STORE),
    ),
    Command(
        "tail",
        "follow new logs and events (Ctrl-C stops)",
        cmd_tail,
        (
            *_LOG_FILTERS,
            _arg("-n", "--lines", default="10", help="print the last N first (default 10)"),
            _arg("--interval", type=float, default=0.2, help=argparse.SUPPRESS),
            _arg("--count", help=argparse.SUPPRESS),  # stop after N records (tests)
            _arg("--max-seconds", type=float, help=argparse.SUPPRESS),
            *_STORE,
        ),
    ),
    Command(
        "agent",
        "run the agent: drain the ring, export or store",
        delegate("emp_fastbuf.agent.runner", "run_agent"),
        (
            _arg(
                "--endpoint",
                help="OTLP endpoint, the base URL of every signal (default:"
                " $OTEL_EXPORTER_OTLP_ENDPOINT; protocol: $OTEL_EXPORTER_OTLP_PROTOCOL)",
            ),
            _arg("--headers", help="request headers, k=v,k2=v2"),
            _arg("--compression", choices=("gzip", "zstd", "none")),
            _arg("--timeout", type=int, help="export request timeout in milliseconds"),
            _arg(
                "--dataset",
                action="append",
                metavar="NAME|ENV=DATASET",
                help="the Dash0 dataset, or the dataset of one deployment environment"
                " (repeatable; * for the others; default: $EMP_FASTBUF_DATASETS)",
            ),
            _HOME,
            _RING,
            _arg("--local-copy", action="store_true", help="also keep records in the store"),
            _arg("--idle-exit", type=float, metavar="SECONDS", help="exit after idle seconds"),
            _arg(
                "--spool-max",
                metavar="BYTES",
                help="spool size limit: bytes or 512M, 2G"
                " (default 1G; $EMP_FASTBUF_SPOOL_MAX_BYTES)",
            ),
            _arg(
                "--otlp-listen",
                metavar="HOST:PORT",
                help="OTLP/HTTP receiver address, or off (default 127.0.0.1:4318;"
                " $EMP_FASTBUF_OTLP_LISTEN)",
            ),
            _arg(
                "--otlp-grpc-listen",
                metavar="HOST:PORT",
                help="OTLP/gRPC receiver address, or off (default 127.0.0.1:4317 with the"
                " grpc extra; $EMP_FASTBUF_OTLP_GRPC_LISTEN)",
            ),
            _arg("--spawned", action="store_true", help=argparse.SUPPRESS),
        ),
    ),
    Command(
        "status",
        "the agent's status",
        delegate("emp_fastbuf.cli.status", "run"),
        (_arg("--json", action="store_true", help="print JSON"), _HOME, _RING),
    ),
    Command(
        "deadletter",
        "requests the endpoint refused: list them, send them again",
        None,
        (),
        (
            Command(
                "list",
                "each dead letter: time, signal, status, records, response",
                delegate("emp_fastbuf.cli.deadletter", "run_list"),
                (
                    _HOME,
                    _arg("--json", action="store_true", help="print JSON Lines (docs/cli.md)"),
                    _arg("--utc", action="store_true", help="print times in UTC"),
                ),
            ),
            Command(
                "replay",
                "send dead letters again with the current configuration",
                delegate("emp_fastbuf.cli.deadletter", "run_replay"),
                (
                    _arg("id", nargs="?", metavar="ID", help="the dead letter (list shows ids)"),
                    _arg("--all", action="store_true", help="every dead letter"),
                    _arg("--endpoint", help="OTLP endpoint (as fastbuf agent)"),
                    _arg("--headers", help="request headers, k=v,k2=v2"),
                    _arg("--compression", choices=("gzip", "zstd", "none")),
                    _arg("--timeout", type=int, help="request timeout in milliseconds"),
                    _arg("--dataset", help="the Dash0 dataset"),
                    _HOME,
                ),
            ),
        ),
    ),
    Command(
        "demo",
        "run simulated GPU workers through the pipeline",
        delegate("emp_fastbuf.demo", "run"),
        (
            _arg("--workers", type=int, default=4, metavar="N"),
            _arg("--jobs", type=int, default=20, metavar="M"),
            _arg("--seconds", type=float, default=0.0, metavar="S", help="0: as fast as they go"),
            _HOME,
            _RING,
        ),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastbuf`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fastbuf",
        description="Query the emp-fastbuf local store; run the agent or the demo.",
    )
    parser.add_argument("--version", action="version", version=f"fastbuf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        _add_command(sub, command)
    return parser


def _add_command(sub: Any, command: Command) -> None:
    p = sub.add_parser(command.name, help=command.help)
    for arg in command.args:
        p.add_argument(*arg.names, **arg.options)
    if command.handler is not None:
        p.set_defaults(handler=command.handler)
    if command.subcommands:
        nested = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        for subcommand in command.subcommands:
            _add_command(nested, subcommand)
