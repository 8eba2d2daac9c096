"""``fastbuf deadletter list`` and ``fastbuf deadletter replay``: the requests an endpoint
refused for good (``<home>/dead-letter/``), shown, and sent again with the current
configuration.

``list`` exits 0 when it showed a dead letter, 1 when there is none. ``replay`` exits 0
when every one it sent was accepted, 1 for an unknown id or nothing to replay, 2 for bad
arguments or configuration, and ``EXIT_REPLAY_FAILED`` (4) when some failed again (they
stay in ``dead-letter/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import emp_fastbuf.agent.deadletter as deadletter
from emp_fastbuf.agent.deadletter import Damaged, DamagedFile, DeadLetter, ReplayResult
from emp_fastbuf.cli import render
from emp_fastbuf.cli.commands import EXIT_OK, NotFound
from emp_fastbuf.cli.flags import UsageError, home
from emp_fastbuf.cli.jsonl import format_time, write_line
from emp_fastbuf.errors import ConfigError

EXIT_REPLAY_FAILED = 4
# Human views show this much of a response body; --json has all that was kept.
_BODY_SHOWN = 300


def run_list(args: argparse.Namespace) -> int:
    """``fastbuf deadletter list``: every dead letter, oldest first."""
    path = home(args)
    letters, damaged = _scan(path)
    secrets = deadletter.secrets_from_env(path)
    for bad in damaged:
        _damaged_line("fastbuf deadletter list", bad)
    if not letters:
        readable = "readable " if damaged else ""
        raise NotFound(f"no {readable}dead letters in {deadletter.directory(path)}")
    if args.json:
        for letter in letters:
            write_line(_letter_json(letter, secrets), sys.stdout)
    elif render.piped():
        for letter in letters:
            sys.stdout.write(_letter_line(letter, secrets) + "\n")
    else:
        _print_blocks(letters, secrets)
    return EXIT_OK


def run_replay(args: argparse.Namespace) -> int:
    """``fastbuf deadletter replay --all | ID``: send dead letters again."""
    if args.all == (args.id is not None):
        raise UsageError(
            "give either --all or one ID (fastbuf deadletter list shows them), not both"
            if args.all
            else "say which: --all, or one ID (fastbuf deadletter list shows them)"
        )
    path = home(args)
    # What there is to replay is said before the configuration is checked.
    _select(args.id, *_scan(path), path)
    overrides: dict[str, object] = {"home": path}
    for key in ("endpoint", "headers", "compression", "dataset"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.timeout is not None:
        overrides["timeout"] = args.timeout / 1000.0  # milliseconds, as for fastbuf agent
    try:
        config = deadletter.replay_config(overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not config.exporting:
        raise UsageError(
            "no OTLP endpoint to send to: set OTEL_EXPORTER_OTLP_ENDPOINT (or DASH0_ENDPOINT)"
            " or pass --endpoint, as for fastbuf agent"
        )
    # The exporter's own log lines would repeat what each result line says.
    logging.getLogger("emp_fastbuf.agent").addHandler(logging.NullHandler())
    prefix = "fastbuf deadletter replay"
    try:
        with deadletter.Replayer(config) as replayer:
            # Again under the lock: another replay may have sent some meanwhile.
            letters, damaged = _select(args.id, *replayer.scan(), path)
            for bad in damaged:
                _damaged_line(prefix, bad)
            results = [_send(replayer, letter) for letter in letters]
    except OSError as exc:
        raise NotFound(f"cannot use {deadletter.directory(path)}: {exc.strerror or exc}") from None
    failed_again = sum(1 for r in results if r.outcome == "failed")
    sent = len(results) - failed_again
    failed = failed_again + len(damaged)
    summary = f"{sent} sent, {failed} failed"
    if failed:
        summary += f" (kept in {deadletter.directory(path)})"
    print(f"replayed {len(results) + len(damaged)} dead letter(s): {summary}")
    return EXIT_REPLAY_FAILED if failed else EXIT_OK


def _scan(path: Path) -> tuple[list[DeadLetter], list[Damaged]]:
    try:
        return deadletter.scan(path)
    except OSError as exc:
        raise NotFound(f"cannot read {deadletter.directory(path)}: {exc.strerror or exc}") from None


def _select(
    wanted: str | None, letters: list[DeadLetter], damaged: list[Damaged], path: Path
) -> tuple[list[DeadLetter], list[Damaged]]:
    """What to replay: every dead letter (and the damaged ones, reported), or the one
    ``wanted`` names (ids are matched, never used as paths)."""
    if wanted is None:
        if not letters and not damaged:
            raise NotFound(f"nothing to replay: no dead letters in {deadletter.directory(path)}")
        return letters, damaged
    text = wanted.strip()
    for letter in letters:
        if letter.id == text:
            return [letter], []
    for bad in damaged:
        if bad.id == text:
            raise NotFound(f"dead letter {text} cannot be read: {bad.reason}")
    raise NotFound(
        f"no dead letter {render.one_line(text)!r} in {deadletter.directory(path)}"
        " (fastbuf deadletter list shows them)"
    )


def _send(replayer: deadletter.Replayer, letter: DeadLetter) -> ReplayResult:
    try:
        result = replayer.send(letter)
    except DamagedFile as exc:
        result = ReplayResult(letter, "failed", None, f"cannot be read: {exc}")
    if result.outcome == "sent":
        detail = f"HTTP {result.http_status}"
        if result.rejected:
            detail += f", {result.rejected} rejected by the endpoint (partial success)"
    else:
        detail = render.one_line(result.message)[:_BODY_SHOWN]
    print(f"{result.outcome:<6}  {letter.id}  {letter.signal}  {_records(letter)}  {detail}")
    return result


def _damaged_line(prefix: str, bad: Damaged) -> None:
    print(
        f"{prefix}: dead letter {bad.id} cannot be read ({bad.reason}); move it aside or delete it",
        file=sys.stderr,
    )


def _records(letter: DeadLetter) -> str:
    if letter.records is None:
        return "? records"
    return f"{letter.records} record{'' if letter.records == 1 else 's'}"


def _response(letter: DeadLetter, secrets: list[str], limit: int | None) -> str:
    """The response body on one line (the message when there was none), no secret in it."""
    text = _scrub(letter.body.strip() or letter.message, secrets)
    text = render.one_line(text)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


def _letter_json(letter: DeadLetter, secrets: list[str]) -> dict[str, Any]:
    last = letter.last_replay_unix_nano
    return {
        "id": letter.id,
        "time_unix_nano": letter.time_unix_nano,
        "time": format_time(letter.time_unix_nano),
        "signal": letter.signal,
        "status": letter.status,
        "records": letter.records,
        "message": _scrub(letter.message, secrets),
        "body": _scrub(letter.body, secrets),
        "url": letter.url,
        "payload_bytes": letter.payload_bytes,
        "replays": letter.replays,
        "last_replay_unix_nano": last,
        "last_replay_time": None if last is None else format_time(last),
    }


def _letter_line(letter: DeadLetter, secrets: list[str]) -> str:
    status = "-" if letter.status is None else str(letter.status)
    return (
        f"{letter.id}  {render.human_time(letter.time_unix_nano)}  {letter.signal}  {status}"
        f"  {_records(letter)}  replays {letter.replays}  {_response(letter, secrets, None)}"
    )


def _print_blocks(letters: list[DeadLetter], secrets: list[str]) -> None:
    """For a terminal: each dead letter as its id on a line of its own (what replay
    takes, never cut or wrapped), then what happened to it, then the response."""
    from rich.text import Text

    console = render.make_console()
    for letter in letters:
        status = "-" if letter.status is None else str(letter.status)
        console.print(Text(letter.id, style="bold"), soft_wrap=True)
        console.print(
            f"  {render.human_time(letter.time_unix_nano)}  {letter.signal}  status {status}"
            f"  {_records(letter)}  replays {letter.replays}",
            markup=False,
        )
        # Text: a response body is never read as rich markup.
        console.print(Text(f"  {_response(letter, secrets, _BODY_SHOWN)}"))
    console.print(
        f"{len(letters)} dead letter(s); fastbuf deadletter replay --all sends them again",
        markup=False,
    )
