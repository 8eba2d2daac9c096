"""Agent configuration: OpenTelemetry and Dash0 environment variables plus `fastbuf agent` flags.

Every variable of the OTLP exporter specification is read, in its general form
(``OTEL_EXPORTER_OTLP_<SETTING>``) and per signal (``OTEL_EXPORTER_OTLP_<SIGNAL>_<SETTING>``,
which wins): ENDPOINT, HEADERS, COMPRESSION, TIMEOUT, PROTOCOL, CERTIFICATE, CLIENT_KEY,
CLIENT_CERTIFICATE and INSECURE. Precedence, highest first:

* endpoints: the ``endpoint`` override (a base URL, applied to every signal) >
  ``OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT`` (used as they are) >
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (base URL, ``v1/<signal>`` appended) > ``DASH0_ENDPOINT``
  (base URL). Over grpc every form is used as it is (``scheme://host:port``; without a
  scheme, https unless INSECURE is true). With none of them the agent runs in local store
  mode (every endpoint is None). ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER=none`` takes a
  signal off OTLP whatever its endpoint: it goes to the local store.
* headers: the ``headers`` override > the signal's ``HEADERS`` variable, which replaces the
  general ``OTEL_EXPORTER_OTLP_HEADERS`` (as the SDKs do) > the Dash0 variables
  (``DASH0_AUTH_TOKEN`` -> ``Authorization: Bearer <token>``, ``DASH0_DATASET`` ->
  ``Dash0-Dataset``); the ``dataset`` override beats every source of ``Dash0-Dataset``.
  A ``Dash0-Dataset`` of ``default`` is dropped (the token's default dataset is used).
  Header names compare case-insensitively.
* datasets by environment (``EMP_FASTBUF_DATASETS``, ``--dataset ENV=DATASET``): a route
  beats every source of ``Dash0-Dataset`` for the records of its environment
  (:mod:`emp_fastbuf.agent.datasets`); ``--dataset NAME`` alone is the one dataset, as above.
* compression and timeout: the override (for every signal) > per signal > general > default.
* protocol (``http/protobuf``, ``http/json``, ``grpc``), CERTIFICATE (a PEM bundle trusted
  instead of the system store), CLIENT_CERTIFICATE and CLIENT_KEY (a PEM pair, both or
  neither), INSECURE: per signal > general > default.
* ``OTEL_METRIC_EXPORT_INTERVAL`` (ms): how often the metrics aggregate is exported.
* ``EMP_FASTBUF_LOG_LEVEL``: debug, info (default), warning, error or critical.
* everything else: override > environment variable > default.

A signal with no endpoint goes to the local store (:meth:`AgentConfig.stored_signals`).
grpc needs the optional ``grpc`` extra (grpcio): a signal exported over grpc without it is
a ConfigError naming the extra, never a silent fallback to another protocol.

An empty environment variable counts as unset, as the OpenTelemetry specification says.
URLs are parsed by urllib3's ``parse_url``, the parser that sends the requests, and
ambiguous ones (backslash, user info, whitespace, control characters) are refused.
Header values must be ISO-8859-1 (what HTTP/1.1 can carry), printable ASCII over grpc;
others are refused. Secrets (the ``Authorization`` header and other credential-like
headers, URL query strings) never appear in ``repr()``, ``str()``, ``describe()`` or
``ConfigError``, and credential-like headers go over plain http (or insecure grpc) only to
this machine.
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

from emp_fastbuf.agent import datasets as dataset_routing
from emp_fastbuf.agent.datasets import DatasetRoutes
from emp_fastbuf.agent.redact import RedactRules
from emp_fastbuf.errors import ConfigError as ConfigError
from emp_fastbuf.errors import HomeError
from emp_fastbuf.paths import checked_home

if TYPE_CHECKING:
    from urllib3.util import Url

Signal = Literal["traces", "metrics", "logs"]
Compression = Literal["gzip", "zstd", "none"]
Protocol = Literal["http/protobuf", "http/json", "grpc"]

SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")
COMPRESSIONS: tuple[Compression, ...] = ("gzip", "zstd", "none")
PROTOCOLS: tuple[Protocol, ...] = ("http/protobuf", "http/json", "grpc")
REDACTED = "<redacted>"
GRPC_EXTRA = "pip install 'emp-fastbuf[grpc]'"

DEFAULT_TIMEOUT_S = 10.0
# The SDKs export metrics every 60 s; the agent's aggregate goes out every 10 s by default.
DEFAULT_METRICS_INTERVAL_S = 10.0
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
# gRPC metadata: lowercase names (sent lowercased), printable ASCII values.
_GRPC_VALUE = re.compile(r"^[\x20-\x7e]*$")


@dataclass(frozen=True)
class OTLPVariable:
    """One setting of the OTLP exporter specification: its general variable and the
    variable of each signal, which wins over the general one."""

    general: str
    traces: str
    metrics: str
    logs: str

    def of(self, signal: Signal) -> str:
        """The variable of ``signal``."""
        return cast("str", getattr(self, signal))


# Spelled out, never built from a template: docs/configuration.md has a row for every
# variable the package reads, and its test finds them by their literal names.
ENDPOINT_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
)
HEADERS_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
)
COMPRESSION_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
)
TIMEOUT_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
)
PROTOCOL_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
)
CERTIFICATE_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
)
CLIENT_CERTIFICATE_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE",
)
CLIENT_KEY_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY",
)
INSECURE_VARS = OTLPVariable(
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
    "OTEL_EXPORTER_OTLP_LOGS_INSECURE",
)
EXPORTER_VARS: dict[Signal, str] = {
    "traces": "OTEL_TRACES_EXPORTER",
    "metrics": "OTEL_METRICS_EXPORTER",
    "logs": "OTEL_LOGS_EXPORTER",
}
METRIC_INTERVAL_VAR = "OTEL_METRIC_EXPORT_INTERVAL"
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


def grpc_url(value: object, source: str, insecure: bool = False) -> str:
    """An OTLP/gRPC endpoint as ``scheme://host:port``, the form the exporter dials.

    ``http://`` and ``https://`` are kept as given (they win over INSECURE, as the
    specification says); a ``host:port`` without a scheme is https, or http when
    ``insecure``. A missing port is the scheme's (443, 80). A gRPC endpoint has no path:
    the service path is fixed, so ``/v1/traces`` and the like are refused.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{source}: expected a URL string, got {type(value).__name__}")
    text = value.strip()
    if text and "://" not in text:
        text = ("http://" if insecure else "https://") + text
    url = check_url(text, source)
    parts = _parse_url(url)
    if (parts.path or "/") != "/":
        raise ConfigError(
            f"{source}: {redact_url(url)!r} has a path, which a gRPC endpoint cannot have "
            "(give scheme://host:port; the service path is fixed)"
        )
    if parts.query:
        raise ConfigError(f"{source}: {redact_url(url)!r} must not have a query string over grpc")
    port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.host}:{port}"


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


def _check_protocol(value: object, source: str) -> Protocol:
    if not isinstance(value, str):
        raise ConfigError(f"{source}: expected a string, got {type(value).__name__}")
    lowered = value.strip().lower()
    if lowered not in PROTOCOLS:
        raise ConfigError(
            f"{source}: unknown protocol {_shown(value)!r} "
            "(expected http/protobuf, http/json or grpc)"
        )
    return lowered


def _shown(value: str) -> str:
    """A bad value for an error message: printable, and short."""
    return "".join(c if c.isprintable() else "?" for c in value.strip())[:40]


def _check_grpc_headers(headers: Mapping[str, str], source: str) -> None:
    """gRPC metadata is stricter than HTTP/1.1 headers: printable ASCII values, no
    ``grpc-`` names (the transport's own) and no ``-bin`` names (binary values)."""
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith("grpc-") or lowered.endswith("-bin"):
            raise ConfigError(
                f"{source}: header {name!r} cannot be sent over grpc "
                "(grpc-* names are the transport's, -bin names carry binary values)"
            )
        if not _GRPC_VALUE.match(value):
            raise ConfigError(
                f"{source}: the value of header {name!r} is not printable ASCII, "
                "which gRPC metadata requires"
            )


def _require_grpc(source: str) -> None:
    """grpcio is the optional ``grpc`` extra: without it, say so at start."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{source}: the grpc protocol needs the optional grpc extra (grpcio), "
            f"which is not installed: {GRPC_EXTRA}"
        ) from None


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


@dataclass(frozen=True, repr=False)
class SignalSettings:
    """A signal's own settings, from its ``OTEL_EXPORTER_OTLP_<SIGNAL>_*`` variables; None
    means the general setting applies. ``headers``, when set, is the signal's whole header
    set (the Dash0 variables and the flags included)."""

    headers: dict[str, str] | None = None
    compression: Compression | None = None
    timeout_s: float | None = None
    protocol: Protocol | None = None
    certificate: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "headers":
                value = _redacted(value)
            shown.append(f"{f.name}={value!r}")
        return f"SignalSettings({', '.join(shown)})"


@dataclass(frozen=True, repr=False)
class SignalExport:
    """Everything the exporter needs for one signal, resolved: see
    :meth:`AgentConfig.export_settings`."""

    signal: Signal
    endpoint: str
    protocol: Protocol
    headers: dict[str, str]
    compression: Compression
    timeout_s: float
    certificate: Path | None
    client_certificate: Path | None
    client_key: Path | None

    def __repr__(self) -> str:
        return (
            f"SignalExport({self.signal}, {self.protocol} {redact_url(self.endpoint)}, "
            f"headers={_redacted(self.headers)!r}, compression={self.compression}, "
            f"timeout_s={self.timeout_s})"
        )


def _redacted(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_sensitive_header(k) else v) for k, v in headers.items()}


@dataclass(repr=False)
class AgentConfig:
    """Everything the agent needs; build it with :meth:`from_env`.

    ``*_endpoint`` is the full URL of a signal (``scheme://host:port`` over grpc), or None:
    with no endpoint at all the agent writes to the local store only. ``headers`` to
    ``client_key`` are the general settings; ``signals`` holds what a signal sets for
    itself, which wins (:meth:`export_settings` resolves both).
    """

    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    compression: Compression = "gzip"
    timeout_s: float = DEFAULT_TIMEOUT_S
    protocol: Protocol = "http/protobuf"
    # A PEM bundle trusted instead of the system store (OTEL_EXPORTER_OTLP_CERTIFICATE).
    certificate: Path | None = None
    # The client's PEM certificate and key, for servers that ask for one (mutual TLS).
    client_certificate: Path | None = None
    client_key: Path | None = None
    signals: dict[Signal, SignalSettings] = field(default_factory=dict)
    # Signals whose OTEL_<SIGNAL>_EXPORTER is none: never exported (they have no endpoint).
    exporters_off: frozenset[Signal] = frozenset()
    home: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "emp-fastbuf")
    spool_limit_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    spool_codec: SpoolCodec = "zstd"
    batch_interval_s: float = 1.0
    batch_max_bytes: int = 8 << 20
    request_max_bytes: int = 64 << 20
    metrics_interval_s: float = DEFAULT_METRICS_INTERVAL_S
    local_copy: bool = False
    ring: str | None = None
    idle_exit_s: float | None = None
    store_retention_s: float = 7 * 86400.0
    store_max_bytes: int = 2 << 30
    # How long a stopping agent keeps trying to deliver what it has spooled.
    shutdown_timeout_s: float = 10.0
    # The agent's logging level (EMP_FASTBUF_LOG_LEVEL).
    log_level: int = logging.INFO
    # Datasets by deployment environment (EMP_FASTBUF_DATASETS, --dataset ENV=DATASET).
    datasets: DatasetRoutes | None = None
    # What is redacted before export and before the store (EMP_FASTBUF_REDACT).
    redaction: RedactRules = field(default_factory=RedactRules)

    def __post_init__(self) -> None:
        for signal in SIGNALS:
            url = getattr(self, f"{signal}_endpoint")
            if url is not None:
                setattr(self, f"{signal}_endpoint", check_url(url, f"{signal}_endpoint"))
        _check_headers_dict(self.headers, "headers")
        self.compression = _check_compression(self.compression, "compression")
        _check_seconds(self.timeout_s, "timeout_s")
        self.protocol = _check_protocol(self.protocol, "protocol")
        for name in ("certificate", "client_certificate", "client_key"):
            _check_path_field(getattr(self, name), name)
        self._check_signals()
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
        if (
            isinstance(self.log_level, bool)
            or not isinstance(self.log_level, int)
            or self.log_level not in logging.getLevelNamesMapping().values()
        ):
            raise ConfigError("log_level: expected a logging level (logging.INFO...)")
        if self.datasets is not None and not isinstance(self.datasets, DatasetRoutes):
            raise ConfigError("datasets: expected DatasetRoutes or None")
        if not isinstance(self.redaction, RedactRules):
            raise ConfigError("redaction: expected RedactRules")
        for signal in SIGNALS:
            if self.endpoint(signal) is not None:
                self._check_export(signal)
        self._check_token_transport()

    def _check_signals(self) -> None:
        if not isinstance(self.signals, dict) or any(
            s not in SIGNALS or not isinstance(v, SignalSettings) for s, v in self.signals.items()
        ):
            raise ConfigError("signals: expected a dict of signal -> SignalSettings")
        for signal, own in self.signals.items():
            if own.headers is not None:
                _check_headers_dict(own.headers, f"{signal} headers")
            if own.compression is not None:
                _check_compression(own.compression, f"{signal} compression")
            _check_seconds(own.timeout_s, f"{signal} timeout_s", allow_none=True)
            if own.protocol is not None:
                _check_protocol(own.protocol, f"{signal} protocol")
            for name in ("certificate", "client_certificate", "client_key"):
                _check_path_field(getattr(own, name), f"{signal} {name}")
        if not isinstance(self.exporters_off, frozenset) or not self.exporters_off <= set(SIGNALS):
            raise ConfigError("exporters_off: expected a frozenset of signals")
        for signal in self.exporters_off:
            if self.endpoint(signal) is not None:
                raise ConfigError(f"{signal}: its exporter is none, yet it has an endpoint")

    def _check_export(self, signal: Signal) -> None:
        """What only the combination of a signal's settings can get wrong."""
        export = self.export_settings(signal)
        cert, key = CLIENT_CERTIFICATE_VARS, CLIENT_KEY_VARS
        if export.client_certificate is not None and export.client_key is None:
            raise ConfigError(
                f"{signal}: a client certificate ({cert.of(signal)} or {cert.general}) needs "
                f"its private key ({key.of(signal)} or {key.general})"
            )
        if export.client_key is not None and export.client_certificate is None:
            raise ConfigError(
                f"{signal}: a client key ({key.of(signal)} or {key.general}) needs its "
                f"certificate ({cert.of(signal)} or {cert.general})"
            )
        if export.client_certificate is not None and export.client_key is not None:
            _check_client_pair(
                export.client_certificate, export.client_key, f"{signal} client certificate"
            )
        if export.protocol != "grpc":
            return
        source = f"{signal} ({PROTOCOL_VARS.of(signal)} or {PROTOCOL_VARS.general})"
        _require_grpc(source)
        if export.compression == "zstd":
            raise ConfigError(
                f"{source}: zstd compression is not available over grpc: set "
                f"{COMPRESSION_VARS.of(signal)} or {COMPRESSION_VARS.general} to gzip or none"
            )
        _check_grpc_headers(export.headers, f"{signal} headers")
        _check_grpc_url(export.endpoint, f"{signal}_endpoint")

    def _check_token_transport(self) -> None:
        """Refuse to send credentials in clear text anywhere but to this machine."""
        for signal in SIGNALS:
            url = self.endpoint(signal)
            if url is None:
                continue
            credentials = [name for name in self.headers_for(signal) if is_sensitive_header(name)]
            if not credentials:
                continue
            # The same parser as the sender: the host checked is the host connected to.
            parts = _parse_url(url)
            if parts.scheme == "http" and not is_loopback_host(parts.host or ""):
                plain = "insecure grpc" if self.protocol_for(signal) == "grpc" else "plain http"
                raise ConfigError(
                    f"refusing to send credentials (header {', '.join(credentials)}) over "
                    f"{plain} to {redact_url(url)!r}: use https:// (http is allowed only "
                    "for localhost, 127.0.0.0/8 and ::1)"
                )

    # -- accessors -------------------------------------------------------------------------

    def endpoint(self, signal: Signal) -> str | None:
        """The full URL for a signal, or None when that signal is not exported."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}")
        return cast("str | None", getattr(self, f"{signal}_endpoint"))

    def _own(self, signal: Signal) -> SignalSettings:
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r}")
        return self.signals.get(signal) or SignalSettings()

    def timeout_for(self, signal: Signal) -> float:
        """The per-request timeout in seconds for a signal."""
        own = self._own(signal).timeout_s
        return self.timeout_s if own is None else own

    def headers_for(self, signal: Signal) -> dict[str, str]:
        """The headers a signal's requests carry."""
        own = self._own(signal).headers
        return self.headers if own is None else own

    def compression_for(self, signal: Signal) -> Compression:
        """The compression of a signal's requests."""
        return self._own(signal).compression or self.compression

    def protocol_for(self, signal: Signal) -> Protocol:
        """The OTLP protocol of a signal: http/protobuf, http/json or grpc."""
        return self._own(signal).protocol or self.protocol

    def dataset_sent(self, signal: Signal, dataset: str | None) -> str | None:
        """The ``Dash0-Dataset`` a request of ``signal`` routed to ``dataset`` carries
        (None: no header): the configured header when ``dataset`` is None (no route),
        none for ``default``."""
        if dataset is None:
            return _get_header(self.headers_for(signal), "Dash0-Dataset")
        return None if dataset == dataset_routing.OMIT else dataset

    def describe_datasets(self) -> dict[str, Any] | None:
        """The routes for ``fastbuf status``, with the dataset each signal's unmapped
        environments get (``unmapped``; null: no header); None without routes."""
        if self.datasets is None:
            return None
        unmapped = {s: self.dataset_sent(s, self.datasets.fallback) for s in SIGNALS}
        return {**self.datasets.describe(), "unmapped": unmapped}

    def export_settings(self, signal: Signal) -> SignalExport:
        """A signal's settings, the signal's own over the general ones. Raises
        ValueError for a signal that is not exported."""
        url = self.endpoint(signal)
        if url is None:
            raise ValueError(f"no OTLP endpoint is configured for {signal}")
        own = self._own(signal)
        return SignalExport(
            signal=signal,
            endpoint=url,
            protocol=self.protocol_for(signal),
            headers=self.headers_for(signal),
            compression=self.compression_for(signal),
            timeout_s=self.timeout_for(signal),
            certificate=own.certificate or self.certificate,
            client_certificate=own.client_certificate or self.client_certificate,
            client_key=own.client_key or self.client_key,
        )

    @property
    def exporting(self) -> bool:
        """True when at least one signal goes to an OTLP endpoint."""
        return any(self.endpoint(s) is not None for s in SIGNALS)

    @property
    def mode(self) -> Literal["otlp", "local"]:
        """``otlp`` when exporting, ``local`` when only the embedded store is written."""
        return "otlp" if self.exporting else "local"

    def stored_signals(self) -> tuple[Signal, ...]:
        """The signals the local store gets: those with no OTLP endpoint (an exporter of
        none included), all of them with ``local_copy``. A signal is never acknowledged
        without a destination."""
        return tuple(s for s in SIGNALS if self.local_copy or self.endpoint(s) is None)

    def routes(self) -> dict[str, list[str]]:
        """Where each signal goes: its redacted OTLP endpoint (with its protocol when that
        is not http/protobuf) and/or ``store``."""
        out: dict[str, list[str]] = {}
        stored = self.stored_signals()
        for signal in SIGNALS:
            url = self.endpoint(signal)
            where = []
            if url is not None:
                protocol = self.protocol_for(signal)
                suffix = "" if protocol == "http/protobuf" else f" ({protocol})"
                where.append(redact_url(url) + suffix)
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
        return _redacted(self.headers)

    def secrets(self) -> list[str]:
        """Values that must never be shown: credential-like header values and bearer
        tokens, of every signal."""
        found: list[str] = []
        sets = [self.headers] + [s.headers for s in self.signals.values() if s.headers]
        for headers in sets:
            for name, value in headers.items():
                if is_sensitive_header(name) and value and value not in found:
                    found.append(value)
                    scheme, _, credential = value.partition(" ")
                    if credential and scheme.lower() in ("bearer", "basic", "token"):
                        found.append(credential)
        return found

    def _describe_signal(self, signal: Signal) -> dict[str, Any]:
        own = self._own(signal)
        url = self.endpoint(signal)

        def path(value: Path | None) -> str | None:
            return None if value is None else str(value)

        return {
            "exporter": "none" if signal in self.exporters_off else "otlp",
            "endpoint": None if url is None else redact_url(url),
            "protocol": self.protocol_for(signal),
            "headers": _redacted(self.headers_for(signal)),
            "compression": self.compression_for(signal),
            "timeout_s": self.timeout_for(signal),
            "certificate": path(own.certificate or self.certificate),
            "client_certificate": path(own.client_certificate or self.client_certificate),
            "client_key": path(own.client_key or self.client_key),
        }

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
            "protocol": self.protocol,
            "signals": {s: self._describe_signal(s) for s in SIGNALS},
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
            "datasets": self.describe_datasets(),
            "redaction": self.redaction.describe(),
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
        # --dataset NAME is the Dash0-Dataset header; its ENV=DATASET forms are routes.
        one_dataset, datasets = dataset_routing.resolve(env, given.pop("dataset", None))
        if one_dataset is not None:
            given["dataset"] = one_dataset

        return cls(
            **_otlp_settings(env, given),
            datasets=datasets,
            home=_home(env, given.get("home")),
            **_spool_settings(env, given.get("spool_max")),
            metrics_interval_s=_metrics_interval(env),
            local_copy=_local_copy(env, given.get("local_copy")),
            ring=_ring(env, given.get("ring")),
            idle_exit_s=_check_seconds(given.get("idle_exit"), "--idle-exit", allow_none=True),
            log_level=_log_level(env),
            redaction=RedactRules.from_env(env),
        )


def _check_headers_dict(headers: object, source: str) -> None:
    if not isinstance(headers, dict):
        raise ConfigError(f"{source}: expected a dict of strings")
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(f"{source}: header names and values must be strings")
        check_header(name, value, source)


def _check_path_field(value: object, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, Path):
        raise ConfigError(f"{name}: expected a Path")
    if name.endswith("certificate") and not name.endswith("client_certificate"):
        _check_certificate(value, name)
    elif not value.is_file():
        raise ConfigError(f"{name}: {str(value)!r} is not a readable file")


def _check_grpc_url(url: str, source: str) -> None:
    parts = _parse_url(url)
    if (parts.path or "/") != "/" or parts.query:
        raise ConfigError(
            f"{source}: {redact_url(url)!r} has a path or query, which a gRPC endpoint "
            "cannot have (scheme://host:port)"
        )


# -- the OTLP exporter's variables ----------------------------------------------------------


def _otlp_settings(env: Mapping[str, str], given: Mapping[str, object]) -> dict[str, Any]:
    """The AgentConfig fields the OTLP exporter's variables and flags set."""
    out: dict[str, Any] = {"headers": _headers(env, given, HEADERS_VARS.general)}
    if "compression" in given:
        out["compression"] = _check_compression(given["compression"], "--compression")
    elif (value := _env(env, COMPRESSION_VARS.general)) is not None:
        out["compression"] = _check_compression(value, COMPRESSION_VARS.general)
    if "timeout" in given:
        # An explicit flag sets one timeout for every signal.
        out["timeout_s"] = _check_seconds(given["timeout"], "--timeout")
    elif (value := _env(env, TIMEOUT_VARS.general)) is not None:
        out["timeout_s"] = _parse_timeout_ms(value, TIMEOUT_VARS.general)
    if (value := _env(env, PROTOCOL_VARS.general)) is not None:
        out["protocol"] = _check_protocol(value, PROTOCOL_VARS.general)
    out["certificate"] = _certificate(env, CERTIFICATE_VARS.general)
    out["client_certificate"] = _pem_file(env, CLIENT_CERTIFICATE_VARS.general)
    out["client_key"] = _pem_file(env, CLIENT_KEY_VARS.general)
    general_insecure = False  # INSECURE only decides how a scheme-less grpc endpoint is read
    if (value := _env(env, INSECURE_VARS.general)) is not None:
        general_insecure = _parse_bool(value, INSECURE_VARS.general)
    signals: dict[Signal, SignalSettings] = {}
    off: set[Signal] = set()
    for signal in SIGNALS:
        own: dict[str, Any] = {}
        if _env(env, HEADERS_VARS.of(signal)) is not None:
            own["headers"] = _headers(env, given, HEADERS_VARS.of(signal))
        name = COMPRESSION_VARS.of(signal)
        if (value := _env(env, name)) is not None:
            compression = _check_compression(value, name)
            if "compression" not in given:
                own["compression"] = compression
        name = TIMEOUT_VARS.of(signal)
        if (value := _env(env, name)) is not None:
            timeout = _parse_timeout_ms(value, name)
            if "timeout" not in given:
                own["timeout_s"] = timeout
        name = PROTOCOL_VARS.of(signal)
        if (value := _env(env, name)) is not None:
            own["protocol"] = _check_protocol(value, name)
        own["certificate"] = _certificate(env, CERTIFICATE_VARS.of(signal))
        own["client_certificate"] = _pem_file(env, CLIENT_CERTIFICATE_VARS.of(signal))
        own["client_key"] = _pem_file(env, CLIENT_KEY_VARS.of(signal))
        insecure = general_insecure
        name = INSECURE_VARS.of(signal)
        if (value := _env(env, name)) is not None:
            insecure = _parse_bool(value, name)
        protocol = own.get("protocol") or out.get("protocol", "http/protobuf")
        endpoint = _endpoint(env, given.get("endpoint"), signal, protocol, insecure)
        if _exporter_off(env, signal):
            off.add(signal)
            endpoint = None
        out[f"{signal}_endpoint"] = endpoint
        own = {k: v for k, v in own.items() if v is not None}
        if own:
            signals[signal] = SignalSettings(**own)
    out["signals"] = signals
    out["exporters_off"] = frozenset(off)
    return out


def _endpoint(
    env: Mapping[str, str], flag: object, signal: Signal, protocol: Protocol, insecure: bool
) -> str | None:
    """A signal's endpoint (see the module docstring for the precedence)."""
    if flag is not None:
        raw: object = flag
        source, base = "--endpoint", True
    elif (value := _env(env, ENDPOINT_VARS.of(signal))) is not None:
        raw, source, base = value, ENDPOINT_VARS.of(signal), False
    else:
        for name in (ENDPOINT_VARS.general, "DASH0_ENDPOINT"):
            if (value := _env(env, name)) is not None:
                raw, source, base = value, name, True
                break
        else:
            return None
    if protocol == "grpc":
        return grpc_url(raw, source, insecure)
    url = check_url(raw, source)
    return signal_url(url, signal) if base else url


def _exporter_off(env: Mapping[str, str], signal: Signal) -> bool:
    """``OTEL_<SIGNAL>_EXPORTER``: ``otlp`` (the default) or ``none``; a comma-separated
    list of the same is accepted, as the specification allows lists."""
    name = EXPORTER_VARS[signal]
    value = _env(env, name)
    if value is None:
        return False
    items = {item.strip().lower() for item in value.split(",") if item.strip()}
    if items == {"none"}:
        return True
    if items == {"otlp"}:
        return False
    raise ConfigError(
        f"{name}: {_shown(value)!r} is not an exporter this agent has (expected otlp or none)"
    )


def _metrics_interval(env: Mapping[str, str]) -> float:
    value = _env(env, METRIC_INTERVAL_VAR)
    if value is None:
        return DEFAULT_METRICS_INTERVAL_S
    try:
        millis = float(value.strip())
    except ValueError:
        raise ConfigError(
            f"{METRIC_INTERVAL_VAR}: {_shown(value)!r} is not a number of milliseconds"
        ) from None
    if not math.isfinite(millis) or millis <= 0:
        raise ConfigError(
            f"{METRIC_INTERVAL_VAR}: the interval must be a positive number of milliseconds"
        )
    return millis / 1000.0


def _headers(env: Mapping[str, str], given: Mapping[str, object], variable: str) -> dict[str, str]:
    """The Dash0 variables, then ``variable`` (a HEADERS variable), then the flags."""
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
    text = _env(env, variable)
    if text is not None:
        for name, value in parse_headers(text, variable).items():
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


def _certificate(env: Mapping[str, str], name: str) -> Path | None:
    """A CERTIFICATE variable: a PEM bundle, loaded now to refuse a bad one at start."""
    value = _env(env, name)
    if value is None:
        return None
    path = Path(value.strip()).expanduser()
    _check_certificate(path, name)
    return path


def _pem_file(env: Mapping[str, str], name: str) -> Path | None:
    """A CLIENT_CERTIFICATE or CLIENT_KEY variable: an existing file (the pair is loaded
    together once both sides are known)."""
    value = _env(env, name)
    if value is None:
        return None
    path = Path(value.strip()).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}: {str(path)!r} is not a readable file")
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


def no_passphrase() -> bytes:
    """The password callback for client keys: an encrypted key fails to load instead of
    OpenSSL asking for its passphrase on the terminal (the agent runs unattended)."""
    return b""


def _check_client_pair(certificate: Path, key: Path, source: str) -> None:
    """Load the client certificate and key as the exporter will: not PEM, encrypted, or
    a key of another certificate fails here. Messages name the files, never their bytes."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            str(certificate), str(key), password=no_passphrase
        )
    except ssl.SSLError as exc:
        reason = exc.reason or "not PEM"
        raise ConfigError(
            f"{source}: {str(certificate)!r} and {str(key)!r} are not a PEM certificate and "
            f"its unencrypted private key ({reason})"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{source}: {str(certificate)!r} or {str(key)!r} cannot be read ({exc.strerror})"
        ) from None


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
