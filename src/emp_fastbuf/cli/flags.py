"""The values the ``fastbuf`` flags take: parsing them, and refusing bad ones with a
``UsageError`` (one line on stderr, exit 2)."""

from __future__ import annotations

import argparse
import os
import re
from datetime import datetime
from pathlib import Path

from emp_fastbuf import paths
from emp_fastbuf.errors import HomeError
from emp_fastbuf.records import SEVERITY_FATAL, SEVERITY_TEXT, SEVERITY_WARN
from emp_fastbuf.store import MAX_TIME_UNIX_NANO, TRACE_ID_DIGITS

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)
# The severity names in lower case, and the two other names Python's logging gives them.
_LEVELS = {text.lower(): number for number, text in SEVERITY_TEXT.items()}
_LEVELS.update(warning=SEVERITY_WARN, critical=SEVERITY_FATAL)
# The ring names ``Ring.open`` and ``Ring.create`` accept.
_RING_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
# Counts and ids go into SQLite, whose integers are signed 64-bit.
_MAX_COUNT = 2**63 - 1
# The fewest hex digits a trace id may be given by (``fastbuf trace 0af7``): fewer would
# name one trace in only the smallest stores.
MIN_TRACE_PREFIX = 4


class UsageError(ValueError):
    """A flag's value is wrong: exit 2 with one line on stderr."""


def parse_since(value: str, now_ns: int, flag: str = "--since") -> int:
    """``30s``, ``10m``, ``2h``, ``7d`` (before ``now_ns``) or an RFC 3339 time -> unix ns.
    A time after ``store.MAX_TIME_UNIX_NANO`` (2262) or before 1678 is refused; errors
    name ``flag`` (``--until`` takes the same values)."""
    text = value.strip()
    if not text:
        raise UsageError(f"{flag}: the value is empty")
    m = _DURATION.match(text)
    if m:
        return _in_range(flag, value, now_ns - int(m.group(1)) * _UNIT_NS[m.group(2)])
    m = _RFC3339.match(text)
    if m:
        date, clock, frac, offset = m.groups()
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            dt = datetime.fromisoformat(f"{date}T{clock}{offset}")
            seconds = int(dt.timestamp())
        except (ValueError, OverflowError):
            raise UsageError(f"{flag}: {value!r} is not a valid time") from None
        return _in_range(flag, value, seconds * 10**9 + int((frac or "0").ljust(9, "0")))
    raise UsageError(
        f"{flag}: {value!r} is neither a duration (30s, 10m, 2h, 7d) nor an RFC 3339 time"
    )


def _in_range(flag: str, value: str, ns: int) -> int:
    if ns > MAX_TIME_UNIX_NANO:
        raise UsageError(
            f"{flag}: {value!r} is after 2262-04-11T23:47:16Z, the latest time the store holds"
        )
    if ns < -MAX_TIME_UNIX_NANO - 1:
        raise UsageError(f"{flag}: {value!r} is before 1677-09-21, further back than the store")
    return ns


def parse_attr(value: str) -> tuple[str, str]:
    """``KEY=VALUE`` (split at the first ``=``; the key is not empty) -> (key, value)."""
    key, sep, rest = value.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--attr: {value!r} is not KEY=VALUE (e.g. --attr gpu=2)")
    return key.strip(), rest


def _ascii_digits(text: str) -> bool:
    # str.isdigit() is also true for "²" and other characters int() refuses.
    return text.isascii() and text.isdigit()


def parse_level(value: str) -> int:
    """A level name (debug, info, warn, error, fatal) or a severity number 1..24."""
    text = value.strip().lower()
    if text in _LEVELS:
        return _LEVELS[text]
    if _ascii_digits(text) and 1 <= int(text) <= 24:
        return int(text)
    raise UsageError(
        f"--level: {value!r} is not a level (trace, debug, info, warn, error, fatal or 1..24)"
    )


def count(flag: str, value: str | None) -> int | None:
    """A whole number >= 0 that SQLite can hold; None when the flag is absent."""
    if value is None:
        return None
    text = value.strip()
    if not _ascii_digits(text):
        raise UsageError(f"{flag}: {value!r} is not a whole number >= 0")
    n = int(text)
    if n > _MAX_COUNT:
        raise UsageError(f"{flag}: {value!r} is larger than {_MAX_COUNT}")
    return n


def trace_prefix(flag: str, value: str) -> str:
    """A trace id (32 hex digits, any case) or its first ``MIN_TRACE_PREFIX`` or more
    digits, as lowercase hex: the store resolves a prefix to the one trace it names."""
    text = value.strip().lower()
    if not MIN_TRACE_PREFIX <= len(text) <= TRACE_ID_DIGITS or not re.fullmatch(r"[0-9a-f]+", text):
        raise UsageError(
            f"{flag}: {value!r} is not a trace id: {TRACE_ID_DIGITS} hex digits, or the first"
            f" {MIN_TRACE_PREFIX} or more of them"
        )
    return text


def home(args: argparse.Namespace) -> Path:
    """``--home``, else ``$EMP_FASTBUF_HOME``, else ``~/.local/share/emp-fastbuf``; one
    that is not a directory, belongs to another user or is world-writable is refused."""
    try:
        return paths.checked_home(getattr(args, "home", None))
    except HomeError as exc:
        raise UsageError(str(exc)) from None


def check_ring(args: argparse.Namespace) -> None:
    """Refuse a ring name (``--ring``, else ``$EMP_FASTBUF_RING``) that no ring can have."""
    value = getattr(args, "ring", None)
    source = "--ring"
    if value is None:
        value = os.environ.get("EMP_FASTBUF_RING") or None  # empty: the default ring
        source = "EMP_FASTBUF_RING"
    if value is not None and not _RING_NAME.fullmatch(value.strip()):
        raise UsageError(
            f"{source}: {value!r} is not a ring name (1-200 letters, digits, '.', '_', '-')"
        )


def check_utf8(args: argparse.Namespace) -> None:
    """Arguments that are not valid UTF-8 (kept by Python as lone surrogates) match no
    record and cannot be stored or sent; a path (``--home``) may be any bytes."""
    for key, value in vars(args).items():
        if key == "home":
            continue
        for text in value if isinstance(value, list) else [value]:  # --attr repeats
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"an argument is not valid UTF-8: {text!r}") from None
