"""Redaction of secrets before export and before the store (docs/configuration.md,
"Redaction").

The rules run natively where the records are transcoded (``_transcode.Redactor``, see
``agent/transcode/_redact.pxi``): the value of an attribute whose key holds a secret-like
word is replaced by ``<redacted>``, as are the credentials of URLs in string values and
the values of ``Authorization`` headers in log bodies. Records and resources decoded in
Python (a resource blob, a record the native path leaves) go through the same rules here.

``EMP_FASTBUF_REDACT`` adjusts the rules: ``off`` turns redaction off; otherwise a
comma-separated list of entries added to the default words: a word (``session_id``), a
glob over the whole key (``*_pin``, ``x?_auth``), or ``!key`` for a key never redacted by
its name (``!token_count``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emp_fastbuf.errors import ConfigError
from emp_fastbuf.records import Record, Resource

if TYPE_CHECKING:
    from emp_fastbuf.agent.transcode._transcode import Redactor

REDACT_VAR = "EMP_FASTBUF_REDACT"
MARKER = "<redacted>"
# Keys whose values are secrets, matched case-insensitively as a whole word of the key
# or as its suffix, with ``-``, ``.`` and spaces read as ``_``.
DEFAULT_WORDS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "set-cookie",
    "private_key",
)
MAX_ENTRIES = 256
MAX_ENTRY_BYTES = 255


@dataclass(frozen=True)
class RedactRules:
    """What the agent redacts: ``enabled``, the key ``words`` (the defaults and the added
    ones), key ``globs`` and ``keep`` (keys never redacted by their name)."""

    enabled: bool = True
    words: tuple[str, ...] = DEFAULT_WORDS
    globs: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("redaction: enabled must be a boolean")
        for name in ("words", "globs", "keep"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"redaction: {name} must be a tuple of str")
            for entry in value:
                _check_entry(entry, f"redaction {name}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RedactRules:
        """The rules ``EMP_FASTBUF_REDACT`` asks for; raises ConfigError on a bad value."""
        value = environ.get(REDACT_VAR)
        if value is None or not value.strip():
            return cls()
        entries = [e.strip() for e in value.split(",")]
        if any(not e for e in entries):
            raise ConfigError(f"{REDACT_VAR}: an entry is empty (entries are comma-separated)")
        if len(entries) > MAX_ENTRIES:
            raise ConfigError(f"{REDACT_VAR}: {len(entries)} entries, at most {MAX_ENTRIES}")
        if any(e.lower() == "off" for e in entries):
            if len(entries) > 1:
                raise ConfigError(f"{REDACT_VAR}: 'off' turns redaction off and stands alone")
            return cls(enabled=False, words=())
        words = list(DEFAULT_WORDS)
        globs: list[str] = []
        keep: list[str] = []
        for entry in entries:
            _check_entry(entry, REDACT_VAR)
            if entry.startswith("!"):
                key = entry[1:].strip()
                if not key or any(c in key for c in "*?"):
                    raise ConfigError(
                        f"{REDACT_VAR}: {_shown(entry)!r}: '!' takes one key, not a pattern"
                    )
                keep.append(key)
            elif "*" in entry or "?" in entry:
                globs.append(entry)
            elif entry.lower() not in words:
                words.append(entry)
        return cls(words=tuple(words), globs=tuple(globs), keep=tuple(keep))

    def redactor(self) -> Redactor | None:
        """A native redactor with these rules (its counts start at 0), None when off."""
        if not self.enabled:
            return None
        from emp_fastbuf.agent.transcode._transcode import Redactor

        return Redactor(list(self.words), list(self.globs), list(self.keep))

    def describe(self) -> dict[str, Any]:
        """For ``fastbuf status``: on or off, and the entries added to the defaults."""
        return {
            "enabled": self.enabled,
            "words": list(self.words),
            "added": [w for w in self.words if w not in DEFAULT_WORDS],
            "globs": list(self.globs),
            "keep": list(self.keep),
        }


def _shown(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:60]


def _check_entry(entry: str, source: str) -> None:
    if not entry or not entry.strip():
        raise ConfigError(f"{source}: an entry is empty")
    if len(entry.encode("utf-8", "surrogatepass")) > MAX_ENTRY_BYTES:
        raise ConfigError(f"{source}: {_shown(entry)!r}... is longer than {MAX_ENTRY_BYTES} bytes")
    if any(not c.isprintable() or c == "," for c in entry):
        raise ConfigError(f"{source}: {_shown(entry)!r} holds a control character or a comma")


def redact_resource(res: Resource, redactor: Redactor | None) -> Resource:
    """``res`` with its attributes redacted (the same object when nothing changes)."""
    if redactor is None or not res.attributes:
        return res
    attrs = redactor.attributes(res.attributes)
    if attrs == res.attributes:
        return res
    return dataclasses.replace(res, attributes=attrs)


def redact_record(rec: Record, redactor: Redactor | None) -> Record:
    """A record decoded in Python, redacted as the native paths redact raw records: its
    context and attributes, its events' and links' attributes, a log's body."""
    if redactor is None:
        return rec
    rec.context = redactor.attributes(rec.context)
    rec.attributes = redactor.attributes(rec.attributes)
    for ev in rec.events:
        ev.attributes = redactor.attributes(ev.attributes)
    for link in rec.links:
        link.attributes = redactor.attributes(link.attributes)
    if rec.body:
        rec.body = redactor.text(rec.body, True)
    return rec
