"""Agent configuration: OpenTelemetry and Dash0 environment variables plus `fastbuf agent` flags.

Precedence, highest first:

* endpoints: the ``endpoint`` override (a base URL, applied to every signal) >
  ``OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT`` (used as they are) >
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (base URL, ``v1/<signal>`` appended) > ``DASH0_ENDPOINT``
  (base URL). With none of them the agent runs in local store mode (every endpoint is None).
* headers: the ``headers`` override > ``OTEL_EXPORTER_OTLP_HEADERS`` > the Dash0 variables
  (``DASH0_AUTH_TOKEN`` -> ``Authorization: Bearer <token>``, ``DASH0_DATASET`` ->
  ``Dash0-Dataset``); the ``dataset`` override beats every source of ``Dash0-Dataset``.
  A ``Dash0-Dataset`` of ``default`` is dropped (the token's default dataset is used).
  Header names compare case-insensitively.
* ``OTEL_EXPORTER_OTLP_CERTIFICATE``: a PEM bundle trusted instead of the system store.
* ``EMP_FASTBUF_LOG_LEVEL``: debug, info (default), warning, error or critical.
* everything else: override > environment variable > default.

A signal with no endpoint goes to the local store (:meth:`AgentConfig.stored_signals`).

An empty environment variable counts as unset, as the OpenTelemetry specification says.
URLs are parsed by urllib3's ``parse_url``, the parser that sends the requests, and
ambiguous ones (backslash, user info, whitespace, control characters) are refused.
Header values must be ISO-8859-1 (what HTTP/1.1 can carry); others are refused.
Secrets (the ``Authorization`` header and other credential-like headers, URL query
strings) never appear in ``repr()``, ``str()``, ``describe()`` or ``ConfigError``, and
credential-like headers go over plain http only to this machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import unquote, urlsplit

from emp_fastbuf.errors import ConfigError as ConfigError
from emp_fastbuf.errors import HomeError
from emp_fastbuf.paths import checked_home

if TYPE_CHECKING:
    from urllib3.util import Url

Signal = Literal["traces", "metrics", "logs"]
Compression = Literal["gzip", "zstd", "none"]

SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")
COMPRESSIONS: tuple[Compression, ...] = ("gzip", "zstd", "none")
REDACTED = "<redacted>"

DEFAULT_TIMEOUT_S = 10.0
# An agent spawned on demand by a worker exits after this much idle time.
SPAWNED_IDLE_EXIT_S = 30.0

# The spool (EMP_FASTBUF_SPOOL_MAX_BYTES, --spool-max, EMP_FASTBUF_SPOOL_CODEC).
SpoolCodec = Literal["zstd", "lz4"]
SPOOL_CODECS: tuple[SpoolCodec, ...] = ("zstd", "lz4")
DEFAULT_SPOOL_MAX_BYTES = 1 << 30
# Below this a spool would evict on nearly every write: refused as a likely typo (512 for 512M).
MIN_SPOOL_MAX_BYTES = 1 << 20

OVERRIDE_KEYS = frozenset(
    {
        "endpoint",
        "headers",
        "compression",
        "timeout",
        "dataset",
        "home",
        "spool_max",
        "local_copy",
        "ring",
        "idle_exit",
    }
)

# Header names whose values are credentials: never shown, never sent over plain http
# off this machine. x-honeycomb-team carries Honeycomb's API key.
_SENSITIVE_HEADER = re.compile(
    r"auth|token|secret|key|cookie|passw|pwd|credential|session|signature|honeycomb-team",
    re.IGNORECASE,
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# A host as urllib3 connects to it: a name (IDNA-encoded by parse_url) or an IP literal.
_HOST = re.compile(r"^(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])$")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def is_sensitive_header(name: str) -> bool:
    """Whether a header's value must never be shown (Authorization, tokens, keys...)."""
    return bool(_SENSITIVE_HEADER.search(name))


def _parse_url(url: str) -> Url:
    """Parse with urllib3's parser: the one that decides where a request goes."""
    from urllib3.util import parse_url

    return parse_url(url)


def redact_url(url: str) -> str:
    """The URL with user info and query string replaced by ``<redacted>``, for display."""
    from urllib3.exceptions import LocationParseError

    try:
        parts = _parse_url(url)
    except (LocationParseError, ValueError):
        return REDACTED
    netloc = parts.host or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.auth is not None:
        netloc = f"{REDACTED}@{netloc}"
    scheme = f"{parts.scheme}://" if parts.scheme else ""
    query = f"?{REDACTED}" if parts.query else ""
    return f"{scheme}{netloc}{parts.path or ''}{query}"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_loopback


def _comparable_host(host: str) -> str:
    host = host.strip("[]").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def check_url(url: object, source: str) -> str:
    """Validate an OTLP/HTTP URL: http or https, with a host; return it stripped.

    The URL is parsed by urllib3, which sends the requests, so the host checked here is the
    host connected to. Anything two parsers could read differently is refused: a backslash,
    user info, whitespace, control characters, or a host that ``urlsplit`` reads otherwise.
    """
    from urllib3.exceptions import LocationParseError

    if not isinstance(url, str):
        raise ConfigError(f"{source}: expected a URL string, got {type(url).__name__}")
    url = url.strip()
    if not url:
        raise ConfigError(f"{source}: the URL is empty")
    if any(c.isspace() for c in url):
        raise ConfigError(f"{source}: the URL {redact_url(url)!r} contains whitespace")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ConfigError(f"{source}: the URL {redact_url(url)!r} contains a control character")
    if "\\" in url:
        raise ConfigError(f"{source}: the URL {redact_url(url)!r} contains a backslash")
    try:
        parts = _parse_url(url)
        split = urlsplit(url)
        split_host, split_port = split.hostname, split.port  # raise ValueError if bad
    except (LocationParseError, ValueError):
        raise ConfigError(f"{source}: {redact_url(url)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"{source}: {redact_url(url)!r} must start with http:// or https:// "
            "(OTLP/HTTP endpoint)"
        )
    if not parts.host:
        raise ConfigError(f"{source}: {redact_url(url)!r} has no host")
    if parts.auth is not None:
        raise ConfigError(
            f"{source}: {redact_url(url)!r} must not contain user info (user:password@); "
            "send credentials in headers (OTEL_EXPORTER_OTLP_HEADERS)"
        )
    if parts.fragment:
        raise ConfigError(f"{source}: {redact_url(url)!r} must not have a #fragment")
    if (
        not _HOST.match(parts.host)
        or split_host is None
        or _comparable_host(split_host) != _comparable_host(parts.host)
        or split_port != parts.port
    ):
        raise ConfigError(f"{source}: {redact_url(url)!r} has an ambiguous or invalid host")
    return url


def signal_url(base: str, signal: Signal) -> str:
    """Join an OTLP base URL and ``v1/<signal>`` with exactly one ``/`` between them."""
    parts = _parse_url(base)
    path = (parts.path or "").rstrip("/") + f"/v1/{signal}"
    return str(parts._replace(path=path, fragment=None).url)


def check_header(name: str, value: str, source: str) -> None:
    """Refuse a header HTTP/1.1 cannot carry as it is; the message names it, never its value.

    A value must be ISO-8859-1 (latin-1) without control characters other than tab:
    http.client encodes values as latin-1, and anything else would fail every export.
    """
    if not _HEADER_NAME.match(name):
        raise ConfigError(f"{source}: invalid header name {name!r}")
    for c in value:
        if ord(c) > 0xFF:
            raise ConfigError(
                f"{source}: the value of header {name!r} has a character outside ISO-8859-1 "
                "(latin-1), which HTTP headers cannot carry"
            )
        if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F:
            raise ConfigError(f"{source}: the value of header {name!r} has a control character")


def parse_headers(text: str, source: str) -> dict[str, str]:
    """Parse the W3C-baggage-like ``k1=v1,k2=v2`` list, URL-decoding keys and values.

    Error messages name the entry by position only: a value may be a secret.
    """
    headers: dict[str, str] = {}
    for index, raw in enumerate(text.split(","), start=1):
        entry = raw.strip()
        if not entry:
            # Tolerate a trailing comma or empty entries ("a=b,,c=d"), like the SDKs.
            continue
        name, sep, value = entry.partition("=")
        if not sep:
            raise ConfigError(f"{source}: entry {index} is not of the form key=value")
        name = unquote(name).strip()
        if not name:
            raise ConfigError(f"{source}: entry {index} has an empty header name")
        if not _HEADER_NAME.match(name):
            raise ConfigError(f"{source}: entry {index} has an invalid header name")
        value = unquote(value).strip()
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{source}: entry {index} has a control character in its value")
        check_header(name, value, source)
        _set_header(headers, name, value)
    return headers


def _set_header(headers: dict[str, str], name: str, value: str) -> None:
    """Set a header, replacing any existing one whose name differs only by case."""
    for existing in [k for k in headers if k.lower() == name.lower()]:
        del headers[existing]
    headers[name] = value


def _get_header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _parse_timeout_ms(text: str, source: str) -> float:
    try:
        millis = float(text.strip())
    except ValueError:
        raise ConfigError(f"{source}: {text.strip()!r} is not a number of milliseconds") from None
    if not math.isfinite(millis) or millis <= 0:
        raise ConfigError(f"{source}: the timeout must be a positive number of milliseconds")
    return millis / 1000.0


def _check_seconds(value: object, source: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{source}: expected a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{source}: expected a positive number of seconds, got {seconds}")
    return seconds


def _parse_bool(text: str, source: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{source}: {text.strip()!r} is not a boolean (use true/false or 1/0)")


def _check_compression(value: object, source: str) -> Compression:
    if not isinstance(value, str):
        raise ConfigError(f"{source}: expected a string, got {type(value).__name__}")
    lowered = value.strip().lower()
    if lowered not in COMPRESSIONS:
        raise ConfigError(
            f"{source}: unknown compression {value.strip()!r} (expected gzip, zstd or none)"
        )
    return lowered


def _override_headers(value: object) -> dict[str, str]:
    """Headers given as flags: a mapping, a ``k=v,k2=v2`` string or a list of ``k=v``."""
    source = "--header"
    if isinstance(value, str):
        return parse_headers(value, source)
    if isinstance(value, Mapping):
        headers: dict[str, str] = {}
        for name, val in value.items():
            if not isinstance(name, str) or not isinstance(val, str):
                raise ConfigError(f"{source}: header names and values must be strings")
            if not _HEADER_NAME.match(name):
                raise ConfigError(f"{source}: invalid header name {name!r}")
            if any(c in val for c in "\r\n\0"):
                raise ConfigError(f"{source}: a header value contains a control character")
            check_header(name, val, source)
            _set_header(headers, name, val)
        return headers
    if isinstance(value, Iterable):
        headers = {}
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(f"{source}: expected key=value strings")
            for name, val in parse_headers(item, source).items():
                _set_header(headers, name, val)
        return headers
    raise ConfigError(f"{source}: expected key=value strings, got {type(value).__name__}")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value


@dataclass(repr=False)
class AgentConfig:
    """Everything the agent needs; build it with :meth:`from_env`.

    ``*_endpoint`` is the full URL of a signal, or None: with no endpoint at all the agent
    writes to the local store only.
    """

    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    compression: Compression = "gzip"
    timeout_s: float = DEFAULT_TIMEOUT_S
    traces_timeout_s: float | None = None
    metrics_timeout_s: float | None = None
    logs_timeout_s: float | None = None
    home: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "emp-fastbuf")
    spool_limit_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    spool_codec: SpoolCodec = "zstd"
    batch_interval_s: float = 1.0
    batch_max_bytes: int = 8 << 20
    request_max_bytes: int = 64 << 20
    metrics_interval_s: float = 10.0
    local_copy: bool = False
    ring: str | None = None
    idle_exit_s: float | None = None
    store_retention_s: float = 7 * 86400.0
    store_max_bytes: int = 2 << 30
    # How long a stopping agent keeps trying to deliver what it has spooled.
    shutdown_timeout_s: float = 10.0
    # A PEM bundle trusted instead of the system store (OTEL_EXPORTER_OTLP_CERTIFICATE).
    certificate: Path | None = None
    # The agent's logging level (EMP_FASTBUF_LOG_LEVEL).
    log_level: int = logging.INFO

    def __post_init__(self) -> None:
        for signal in SIGNALS:
            url = getattr(self, f"{signal}_endpoint")
            if url is not None:
                setattr(self, f"{signal}_endpoint", check_url(url, f"{signal}_endpoint"))
        if not isinstance(self.headers, dict):
            raise ConfigError("headers: expected a dict of strings")
        for name, value in self.headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ConfigError("headers: header names and values must be strings")
            check_header(name, value, "headers")
        self.compression = _check_compression(self.compression, "compression")
        _check_seconds(self.timeout_s, "timeout_s")
        for signal in SIGNALS:
            _check_seconds(
                getattr(self, f"{signal}_timeout_s"), f"{signal}_timeout_s", allow_none=True
            )
        if not isinstance(self.home, Path):
            raise ConfigError(f"home: expected a Path, got {type(self.home).__name__}")
        for name in (
            "spool_limit_bytes",
            "batch_max_bytes",
            "request_max_bytes",
            "store_max_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: expected a positive integer")
        for name in (
            "batch_interval_s",
            "metrics_interval_s",
            "store_retention_s",
            "shutdown_timeout_s",
        ):
            _check_seconds(getattr(self, name), name)
        _check_seconds(self.idle_exit_s, "idle_exit_s", allow_none=True)
        self.spool_codec = _check_spool_codec(self.spool_codec, "spool_codec")
        if not isinstance(self.local_copy, bool):
            raise ConfigError("local_copy: expected a boolean")
        if self.ring is not None and (not isinstance(self.ring, str) or not self.ring):
            raise ConfigError("ring: expected a non-empty name")
        if self.certificate is not None:
            if not isinstance(self.certificate, Path):
                raise ConfigError("certificate: expected a Path")
            _check_certificate(self.certificate, "certificate")
        if (
            isinstance(self.log_level, bool)
            or not isinstance(self.log_level, int)
            or self.log_level not in logging.getLevelNamesMapping().values()
        ):
            raise ConfigError("log_level: expected a logging level (logging.INFO...)")
        self._check_token_transport()

    def _check_token_transport(self) -> None:
        """Refuse to send credentials in clear text anywhere but to this machine."""
        credentials = [name for name in self.headers if is_sensitive_header(name)]
        if not credentials:
            return
        for signal in SIGNALS:
            url = self.endpoint(signal)
            if url is None:
                continue
            # The same parser as the sender: the host checked is the host connected to.
            parts = _parse_url(url)
            if parts.scheme == "http" and not is_loopback_host(parts.host or ""):
                raise ConfigError(
                    f"refusing to send credentials (header {', '.join(credentials)}) over "
                    f"plain http to {redact_url(url)!r}: use https:// (http is allowed only "
                    "for localhost, 127.0.0.0/8 and ::1)"
                )

    # -- accessors -------------------------------------------------------------------------

    def endpoint(self, signal: Signal) -> str | None:
        """The full URL for a signal, or None when that signal is not exported."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}")
        return cast("str | None", getattr(self, f"{signal}_endpoint"))

    def timeout_for(self, signal: Signal) -> float:
        """The per-request timeout in seconds for a signal."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}")
        specific = cast("float | None", getattr(self, f"{signal}_timeout_s"))
        return self.timeout_s if specific is None else specific

    @property
    def exporting(self) -> bool:
        """True when at least one signal goes to an OTLP endpoint."""
        return any(self.endpoint(s) is not None for s in SIGNALS)

    @property
    def mode(self) -> Literal["otlp", "local"]:
        """``otlp`` when exporting, ``local`` when only the embedded store is written."""
        return "otlp" if self.exporting else "local"

    def stored_signals(self) -> tuple[Signal, ...]:
        """The signals the local store gets: those with no OTLP endpoint, all of them with
        ``local_copy``. A signal is never acknowledged without a destination."""
        return tuple(s for s in SIGNALS if self.local_copy or self.endpoint(s) is None)

    def routes(self) -> dict[str, list[str]]:
        """Where each signal goes: its redacted OTLP endpoint and/or ``store``."""
        out: dict[str, list[str]] = {}
        stored = self.stored_signals()
        for signal in SIGNALS:
            url = self.endpoint(signal)
            where = [] if url is None else [redact_url(url)]
            if signal in stored:
                where.append("store")
            out[signal] = where
        return out

    def routes_text(self) -> str:
        """One line for the log: ``logs -> http://h/v1/logs; traces, metrics -> store``."""
        grouped: dict[str, list[str]] = {}
        for signal, where in self.routes().items():
            grouped.setdefault(" + ".join(where), []).append(signal)
        return "; ".join(f"{', '.join(signals)} -> {where}" for where, signals in grouped.items())

    def redacted_headers(self) -> dict[str, str]:
        """Headers for display: credential-like values replaced by ``<redacted>``."""
        return {k: (REDACTED if is_sensitive_header(k) else v) for k, v in self.headers.items()}

    def secrets(self) -> list[str]:
        """Values that must never be shown: credential-like header values and bearer tokens."""
        found: list[str] = []
        for name, value in self.headers.items():
            if is_sensitive_header(name) and value:
                found.append(value)
                scheme, _, credential = value.partition(" ")
                if credential and scheme.lower() in ("bearer", "basic", "token"):
                    found.append(credential)
        return found

    def describe(self) -> dict[str, Any]:
        """A JSON-ready, secret-free summary for ``fastbuf status``."""
        return {
            "mode": self.mode,
            "endpoints": {
                s: (None if (u := self.endpoint(s)) is None else redact_url(u)) for s in SIGNALS
            },
            "headers": self.redacted_headers(),
            "compression": self.compression,
            "timeout_s": self.timeout_s,
            "timeouts_s": {s: self.timeout_for(s) for s in SIGNALS},
            "home": str(self.home),
            "spool_limit_bytes": self.spool_limit_bytes,
            "spool_codec": self.spool_codec,
            "batch_interval_s": self.batch_interval_s,
            "batch_max_bytes": self.batch_max_bytes,
            "request_max_bytes": self.request_max_bytes,
            "metrics_interval_s": self.metrics_interval_s,
            "local_copy": self.local_copy,
            "ring": self.ring,
            "idle_exit_s": self.idle_exit_s,
            "store_retention_s": self.store_retention_s,
            "store_max_bytes": self.store_max_bytes,
            "shutdown_timeout_s": self.shutdown_timeout_s,
            "certificate": None if self.certificate is None else str(self.certificate),
            "log_level": logging.getLevelName(self.log_level),
            "routes": self.routes(),
        }

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "headers":
                value = self.redacted_headers()
            elif f.name.endswith("_endpoint") and value is not None:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"AgentConfig({', '.join(shown)})"

    __str__ = __repr__

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, object] | None = None,
    ) -> AgentConfig:
        """Build the configuration from environment variables and ``fastbuf agent`` flags.

        ``environ`` defaults to ``os.environ``. ``overrides`` keys are the flag names
        (``endpoint``, ``headers``, ``compression``, ``timeout`` in seconds, ``dataset``,
        ``home``, ``spool_max`` (bytes, or a size such as ``512M``), ``local_copy``,
        ``ring``, ``idle_exit`` in seconds); a None value means
        "flag not given". Raises :class:`ConfigError` on anything invalid.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        given: dict[str, object] = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = sorted(set(given) - OVERRIDE_KEYS)
        if unknown:
            raise ConfigError(f"unknown agent option(s): {', '.join(unknown)}")

        endpoints = _endpoints(env, given.get("endpoint"))
        headers = _headers(env, given)
        return cls(
            traces_endpoint=endpoints["traces"],
            metrics_endpoint=endpoints["metrics"],
            logs_endpoint=endpoints["logs"],
            headers=headers,
            compression=_compression(env, given.get("compression")),
            **_timeouts(env, given.get("timeout")),
            home=_home(env, given.get("home")),
            **_spool_settings(env, given.get("spool_max")),
            local_copy=_local_copy(env, given.get("local_copy")),
            ring=_ring(env, given.get("ring")),
            idle_exit_s=_check_seconds(given.get("idle_exit"), "--idle-exit", allow_none=True),
            certificate=_certificate(env),
            log_level=_log_level(env),
        )


def _endpoints(env: Mapping[str, str], override: object) -> dict[Signal, str | None]:
    if override is not None:
        flag_base = check_url(override, "--endpoint")
        return {s: signal_url(flag_base, s) for s in SIGNALS}
    base: str | None = None
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "DASH0_ENDPOINT"):
        value = _env(env, name)
        if value is not None:
            base = check_url(value, name)
            break
    result: dict[Signal, str | None] = {}
    for signal in SIGNALS:
        name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        specific = _env(env, name)
        if specific is not None:
            result[signal] = check_url(specific, name)
        elif base is not None:
            result[signal] = signal_url(base, signal)
        else:
            result[signal] = None
    return result


def _headers(env: Mapping[str, str], given: Mapping[str, object]) -> dict[str, str]:
    headers: dict[str, str] = {}
    token = _env(env, "DASH0_AUTH_TOKEN")
    if token is not None:
        token = token.strip()
        if any(c.isspace() or c in "\0" for c in token):
            raise ConfigError("DASH0_AUTH_TOKEN: the token contains whitespace or control bytes")
        check_header("Authorization", token, "DASH0_AUTH_TOKEN")
        _set_header(headers, "Authorization", f"Bearer {token}")
    dataset = _env(env, "DASH0_DATASET")
    if dataset is not None:
        _set_header(headers, "Dash0-Dataset", _check_dataset(dataset, "DASH0_DATASET"))
    text = _env(env, "OTEL_EXPORTER_OTLP_HEADERS")
    if text is not None:
        for name, value in parse_headers(text, "OTEL_EXPORTER_OTLP_HEADERS").items():
            _set_header(headers, name, value)
    if "headers" in given:
        for name, value in _override_headers(given["headers"]).items():
            _set_header(headers, name, value)
    if "dataset" in given:
        dataset_flag = given["dataset"]
        if not isinstance(dataset_flag, str):
            raise ConfigError("--dataset: expected a string")
        _set_header(headers, "Dash0-Dataset", _check_dataset(dataset_flag, "--dataset"))
    if (_get_header(headers, "Dash0-Dataset") or "").strip() in ("default", ""):
        for key in [k for k in headers if k.lower() == "dash0-dataset"]:
            del headers[key]
    return headers


def _check_dataset(value: str, source: str) -> str:
    value = value.strip()
    if any(c.isspace() or c in "\0," for c in value):
        raise ConfigError(f"{source}: {value!r} is not a valid dataset slug")
    return value


def _compression(env: Mapping[str, str], override: object) -> Compression:
    if override is not None:
        return _check_compression(override, "--compression")
    value = _env(env, "OTEL_EXPORTER_OTLP_COMPRESSION")
    if value is None:
        return "gzip"
    return _check_compression(value, "OTEL_EXPORTER_OTLP_COMPRESSION")


def _timeouts(env: Mapping[str, str], override: object) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if override is not None:
        # An explicit flag sets one timeout for every signal.
        result["timeout_s"] = _check_seconds(override, "--timeout")
        return result
    value = _env(env, "OTEL_EXPORTER_OTLP_TIMEOUT")
    result["timeout_s"] = (
        DEFAULT_TIMEOUT_S
        if value is None
        else _parse_timeout_ms(value, "OTEL_EXPORTER_OTLP_TIMEOUT")
    )
    for signal in SIGNALS:
        name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"
        specific = _env(env, name)
        if specific is not None:
            result[f"{signal}_timeout_s"] = _parse_timeout_ms(specific, name)
    return result


def _home(env: Mapping[str, str], override: object) -> Path:
    """``paths.home`` (``--home``, else EMP_FASTBUF_HOME, else the default) after
    ``check_home``; its HomeError is the configuration's error here."""
    try:
        return checked_home(cast("str | os.PathLike[str] | None", override), env)
    except HomeError as exc:
        raise ConfigError(str(exc)) from None


# -- spool settings ----------------------------------------------------------------------
# EMP_FASTBUF_SPOOL_MAX_BYTES / --spool-max (sizes in powers of 1024) and
# EMP_FASTBUF_SPOOL_CODEC (constants at the top); the spool is emp_fastbuf.agent.spool.

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, source: str) -> int:
    """A byte count: digits, optionally with a fraction and a K, M, G or T suffix (powers of
    1024; ``KiB``, ``KB`` and a trailing ``B`` are accepted): ``1048576``, ``512M``, ``1.5G``."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(
            f"{source}: {text.strip()!r} is not a size (use bytes or a suffix: 512M, 2G)"
        )
    unit = _SIZE_UNITS[m.group(2).lower()] if m.group(2) else 1
    return int(Fraction(m.group(1)) * unit)


def _spool_max(value: object, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{source}: expected a size, got {type(value).__name__}")
    size = value if isinstance(value, int) else parse_size(value, source)
    if size < MIN_SPOOL_MAX_BYTES:
        raise ConfigError(f"{source}: the spool limit must be at least 1M ({size} bytes given)")
    return size


def _check_spool_codec(value: object, source: str) -> SpoolCodec:
    if not isinstance(value, str):
        raise ConfigError(f"{source}: expected a string, got {type(value).__name__}")
    lowered = value.strip().lower()
    if lowered not in SPOOL_CODECS:
        raise ConfigError(f"{source}: unknown spool codec {value.strip()!r} (expected zstd or lz4)")
    return lowered


def _spool_settings(env: Mapping[str, str], spool_max: object) -> dict[str, Any]:
    if spool_max is not None:
        limit = _spool_max(spool_max, "--spool-max")
    elif (value := _env(env, "EMP_FASTBUF_SPOOL_MAX_BYTES")) is not None:
        limit = _spool_max(value, "EMP_FASTBUF_SPOOL_MAX_BYTES")
    else:
        limit = DEFAULT_SPOOL_MAX_BYTES
    codec_text = _env(env, "EMP_FASTBUF_SPOOL_CODEC")
    codec = (
        "zstd" if codec_text is None else _check_spool_codec(codec_text, "EMP_FASTBUF_SPOOL_CODEC")
    )
    return {"spool_limit_bytes": limit, "spool_codec": codec}


def _local_copy(env: Mapping[str, str], override: object) -> bool:
    if override is not None:
        if not isinstance(override, bool):
            raise ConfigError("--local-copy: expected a boolean")
        return override
    value = _env(env, "EMP_FASTBUF_LOCAL_COPY")
    return False if value is None else _parse_bool(value, "EMP_FASTBUF_LOCAL_COPY")


def _ring(env: Mapping[str, str], override: object) -> str | None:
    if override is not None:
        if not isinstance(override, str) or not override.strip():
            raise ConfigError("--ring: expected a non-empty ring name")
        return override.strip()
    value = _env(env, "EMP_FASTBUF_RING")
    return None if value is None else value.strip()


def _certificate(env: Mapping[str, str]) -> Path | None:
    value = _env(env, "OTEL_EXPORTER_OTLP_CERTIFICATE")
    if value is None:
        return None
    path = Path(value.strip()).expanduser()
    _check_certificate(path, "OTEL_EXPORTER_OTLP_CERTIFICATE")
    return path


def _check_certificate(path: Path, source: str) -> None:
    """Load the bundle as the exporter will: a file that is not PEM fails here, at start,
    not at every export."""
    if not path.is_file():
        raise ConfigError(f"{source}: {str(path)!r} is not a readable file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        reason = exc.reason or "not PEM"
        raise ConfigError(
            f"{source}: {str(path)!r} is not a PEM certificate bundle ({reason})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{source}: {str(path)!r} cannot be read ({exc.strerror})") from None


def _log_level(env: Mapping[str, str]) -> int:
    value = _env(env, "EMP_FASTBUF_LOG_LEVEL")
    if value is None:
        return logging.INFO
    name = value.strip().lower()
    if name == "warn":
        name = "warning"
    if name not in _LOG_LEVELS:
        shown = "".join(c if c.isprintable() else "?" for c in value.strip())[:40]
        raise ConfigError(
            f"EMP_FASTBUF_LOG_LEVEL: unknown level {shown!r} (expected {', '.join(_LOG_LEVELS)})"
        )
    return logging.getLevelNamesMapping()[name.upper()]
