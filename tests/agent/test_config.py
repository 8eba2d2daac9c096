"""AgentConfig.from_env: OpenTelemetry and Dash0 variables, flags, validation, redaction."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from emp_fastbuf.agent.config import (
    SPAWNED_IDLE_EXIT_S,
    AgentConfig,
    ConfigError,
    parse_headers,
    redact_url,
    signal_url,
)
from emp_fastbuf.errors import HomeError
from emp_fastbuf.paths import home

TOKEN = "auth_s3cr3tT0kenValue"
HOME = {"HOME": "/home/someone"}


def cfg(overrides: Mapping[str, object] | None = None, **env: str) -> AgentConfig:
    return AgentConfig.from_env({**HOME, **env}, overrides)


def endpoints(c: AgentConfig) -> tuple[str | None, str | None, str | None]:
    return c.endpoint("traces"), c.endpoint("metrics"), c.endpoint("logs")


# -- defaults ----------------------------------------------------------------------------


def test_defaults_are_local_mode() -> None:
    c = cfg()
    assert endpoints(c) == (None, None, None)
    assert c.mode == "local" and not c.exporting
    assert c.headers == {}
    assert c.compression == "gzip"
    assert c.timeout_s == 10.0
    assert c.timeout_for("logs") == 10.0
    assert c.home == Path("/home/someone/.local/share/emp-fastbuf")
    assert c.spool_limit_bytes == 1 << 30
    assert c.batch_interval_s == 1.0
    assert c.batch_max_bytes == 8 << 20
    assert c.request_max_bytes == 64 << 20
    assert c.metrics_interval_s == 10.0
    assert c.local_copy is False
    assert c.ring is None
    assert c.idle_exit_s is None
    assert c.store_retention_s == 7 * 86400
    assert c.store_max_bytes == 2 << 30
    assert SPAWNED_IDLE_EXIT_S == 30.0


def test_empty_variables_count_as_unset() -> None:
    c = cfg(
        OTEL_EXPORTER_OTLP_ENDPOINT="",
        OTEL_EXPORTER_OTLP_HEADERS=" ",
        OTEL_EXPORTER_OTLP_COMPRESSION="",
        OTEL_EXPORTER_OTLP_TIMEOUT="",
        EMP_FASTBUF_RING="",
    )
    assert c.mode == "local" and c.compression == "gzip" and c.timeout_s == 10.0
    assert c.ring is None


# -- endpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "logs"),
    [
        ("http://collector:4318", "http://collector:4318/v1/logs"),
        ("http://collector:4318/", "http://collector:4318/v1/logs"),
        ("https://h.example/otlp", "https://h.example/otlp/v1/logs"),
        ("https://h.example/otlp/", "https://h.example/otlp/v1/logs"),
        ("https://h.example/otlp//", "https://h.example/otlp/v1/logs"),
        ("http://[::1]:4318", "http://[::1]:4318/v1/logs"),
    ],
)
def test_base_endpoint_joined_with_one_slash(base: str, logs: str) -> None:
    c = cfg(OTEL_EXPORTER_OTLP_ENDPOINT=base)
    assert c.endpoint("logs") == logs
    assert c.endpoint("traces") == logs.replace("/v1/logs", "/v1/traces")
    assert c.endpoint("metrics") == logs.replace("/v1/logs", "/v1/metrics")
    assert c.mode == "otlp"


def test_signal_url_keeps_query() -> None:
    assert signal_url("https://h/p?x=1", "logs") == "https://h/p/v1/logs?x=1"


def test_per_signal_endpoints_used_as_they_are() -> None:
    c = cfg(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://base:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://t:1/custom/path/",
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="https://l.example",
    )
    assert endpoints(c) == (
        "http://t:1/custom/path/",
        "http://base:4318/v1/metrics",
        "https://l.example",
    )


def test_only_one_signal_configured() -> None:
    c = cfg(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://m:9/x")
    assert endpoints(c) == (None, "http://m:9/x", None)
    assert c.mode == "otlp"


def test_otel_base_beats_dash0_endpoint() -> None:
    c = cfg(
        OTEL_EXPORTER_OTLP_ENDPOINT="https://otel.example",
        DASH0_ENDPOINT="https://ingress.eu-west-1.aws.dash0.com",
    )
    assert c.endpoint("logs") == "https://otel.example/v1/logs"
    d = cfg(DASH0_ENDPOINT="https://ingress.eu-west-1.aws.dash0.com/")
    assert d.endpoint("traces") == "https://ingress.eu-west-1.aws.dash0.com/v1/traces"


def test_endpoint_flag_beats_every_variable() -> None:
    c = cfg(
        {"endpoint": "http://flag:1"},
        OTEL_EXPORTER_OTLP_ENDPOINT="http://base:2",
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://logs:3/v1/logs",
        DASH0_ENDPOINT="https://d.example",
    )
    assert endpoints(c) == (
        "http://flag:1/v1/traces",
        "http://flag:1/v1/metrics",
        "http://flag:1/v1/logs",
    )


def test_none_overrides_mean_flag_not_given() -> None:
    c = cfg({"endpoint": None, "compression": None}, OTEL_EXPORTER_OTLP_ENDPOINT="http://e:1")
    assert c.endpoint("logs") == "http://e:1/v1/logs" and c.compression == "gzip"


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("collector:4318", "http:// or https://"),
        ("ftp://collector", "http:// or https://"),
        ("grpc://collector:4317", "http:// or https://"),
        ("http://", "no host"),
        ("http:///v1/logs", "no host"),
        ("http://host:99999", "not a valid URL"),
        ("http://host:port", "not a valid URL"),
        ("http://ho st:1", "whitespace"),
        ("http://h/#frag", "fragment"),
    ],
)
def test_malformed_endpoint_refused(url: str, expect: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT") as info:
        cfg(OTEL_EXPORTER_OTLP_ENDPOINT=url)
    assert expect in str(info.value)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        cfg(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=url)
    with pytest.raises(ConfigError, match="--endpoint"):
        cfg({"endpoint": url})


def test_endpoint_flag_of_wrong_type() -> None:
    with pytest.raises(ConfigError, match="--endpoint: expected a URL string"):
        cfg({"endpoint": 4318})


# -- headers -----------------------------------------------------------------------------


def test_headers_url_decoded() -> None:
    c = cfg(OTEL_EXPORTER_OTLP_HEADERS="api-key=a%20b%2Cc , X-Tenant=t%3D1,empty=,")
    assert c.headers == {"api-key": "a b,c", "X-Tenant": "t=1", "empty": ""}


def test_value_may_contain_equals() -> None:
    assert parse_headers("k=a=b", "S") == {"k": "a=b"}


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("novalue", "entry 1 is not of the form key=value"),
        ("a=1,broken", "entry 2 is not of the form key=value"),
        ("=v", "entry 1 has an empty header name"),
        ("bad name=v", "entry 1 has an invalid header name"),
        ("k=a%0Db", "control character"),
    ],
)
def test_bad_header_syntax(text: str, expect: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_HEADERS") as info:
        cfg(OTEL_EXPORTER_OTLP_HEADERS=text)
    assert expect in str(info.value)


def test_bad_header_error_does_not_echo_the_secret() -> None:
    with pytest.raises(ConfigError) as info:
        cfg(OTEL_EXPORTER_OTLP_HEADERS=f"Authorization=Bearer {TOKEN},{TOKEN}")
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)


def test_dash0_variables() -> None:
    c = cfg(
        DASH0_ENDPOINT="https://ingress.eu-west-1.aws.dash0.com",
        DASH0_AUTH_TOKEN=TOKEN,
        DASH0_DATASET="gpu-workers",
    )
    assert c.headers == {"Authorization": f"Bearer {TOKEN}", "Dash0-Dataset": "gpu-workers"}


def test_dash0_default_dataset_is_omitted() -> None:
    c = cfg(DASH0_AUTH_TOKEN=TOKEN, DASH0_DATASET="default")
    assert c.headers == {"Authorization": f"Bearer {TOKEN}"}
    d = cfg(OTEL_EXPORTER_OTLP_HEADERS="Dash0-Dataset=default")
    assert d.headers == {}
    e = cfg({"dataset": "default"}, DASH0_DATASET="prod")
    assert e.headers == {}


def test_header_precedence_flags_over_otel_over_dash0() -> None:
    env = {
        "DASH0_AUTH_TOKEN": "auth_fromdash0",
        "DASH0_DATASET": "from-dash0",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer auth_fromotel,X-A=1",
    }
    c = cfg(**env)
    # Names compare case-insensitively: the OTEL header replaced the Dash0 one.
    assert c.headers == {
        "Dash0-Dataset": "from-dash0",
        "authorization": "Bearer auth_fromotel",
        "X-A": "1",
    }
    d = cfg({"headers": ["X-A=2", "Authorization=Bearer auth_flag"], "dataset": "flagged"}, **env)
    assert d.headers == {
        "X-A": "2",
        "Authorization": "Bearer auth_flag",
        "Dash0-Dataset": "flagged",
    }
    e = cfg({"headers": {"X-B": "3"}}, **env)
    assert e.headers["X-B"] == "3" and e.headers["X-A"] == "1"


@pytest.mark.parametrize("bad", [5, ["ok=1", 7], {"k": 1}, {"bad name": "v"}, ["novalue"]])
def test_header_flag_of_wrong_shape(bad: object) -> None:
    with pytest.raises(ConfigError, match="--header"):
        cfg({"headers": bad})


def test_token_with_whitespace_refused_without_echo() -> None:
    with pytest.raises(ConfigError, match="DASH0_AUTH_TOKEN") as info:
        cfg(DASH0_AUTH_TOKEN="auth_abc def")
    assert "auth_abc" not in str(info.value)


# -- compression, timeout, other options ------------------------------------------------


@pytest.mark.parametrize("value", ["gzip", "zstd", "none", "GZIP", " zstd "])
def test_compression_values(value: str) -> None:
    assert cfg(OTEL_EXPORTER_OTLP_COMPRESSION=value).compression == value.strip().lower()


def test_compression_flag_beats_env() -> None:
    assert cfg({"compression": "zstd"}, OTEL_EXPORTER_OTLP_COMPRESSION="none").compression == "zstd"


@pytest.mark.parametrize("value", ["lz4", "brotli", "gz"])
def test_unknown_compression(value: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown compression '{value}'"):
        cfg(OTEL_EXPORTER_OTLP_COMPRESSION=value)
    with pytest.raises(ConfigError, match="--compression"):
        cfg({"compression": value})


def test_timeout_milliseconds_and_per_signal() -> None:
    c = cfg(OTEL_EXPORTER_OTLP_TIMEOUT="2500", OTEL_EXPORTER_OTLP_LOGS_TIMEOUT="500")
    assert c.timeout_s == 2.5
    assert c.timeout_for("logs") == 0.5
    assert c.timeout_for("traces") == 2.5


def test_timeout_flag_in_seconds_beats_env() -> None:
    c = cfg({"timeout": 3}, OTEL_EXPORTER_OTLP_TIMEOUT="100", OTEL_EXPORTER_OTLP_LOGS_TIMEOUT="9")
    assert c.timeout_s == 3.0 and c.timeout_for("logs") == 3.0


@pytest.mark.parametrize("value", ["ten", "10s", "-5", "0", "nan", "inf"])
def test_bad_timeout(value: str) -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TIMEOUT"):
        cfg(OTEL_EXPORTER_OTLP_TIMEOUT=value)
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"):
        cfg(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=value)


@pytest.mark.parametrize("value", ["3", True, -1, 0])
def test_bad_timeout_flag(value: object) -> None:
    with pytest.raises(ConfigError, match="--timeout"):
        cfg({"timeout": value})


def test_home_ring_local_copy_idle_exit(tmp_path: Path) -> None:
    c = cfg(EMP_FASTBUF_HOME=str(tmp_path), EMP_FASTBUF_RING="r1", EMP_FASTBUF_LOCAL_COPY="yes")
    assert c.home == tmp_path and c.ring == "r1" and c.local_copy is True
    d = cfg(
        {"home": tmp_path / "x", "ring": "r2", "local_copy": False, "idle_exit": 30},
        EMP_FASTBUF_HOME=str(tmp_path),
        EMP_FASTBUF_RING="r1",
        EMP_FASTBUF_LOCAL_COPY="1",
    )
    assert d.home == tmp_path / "x" and d.ring == "r2" and d.local_copy is False
    assert d.idle_exit_s == 30.0


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp/somewhere"


DEFAULT_HOME = Path("/home/someone/.local/share/emp-fastbuf")


@pytest.mark.parametrize(
    ("override", "env", "expected"),
    [
        (None, {"EMP_FASTBUF_HOME": " "}, DEFAULT_HOME),  # blank: unset
        (None, {"HOME": " "}, Path.home() / ".local/share/emp-fastbuf"),  # the passwd entry's
        ("", {}, "--home: the path is empty"),
        (5, {}, "--home: expected a path, got int"),
        (_BytesPath(), {}, "--home: the path is empty"),
    ],
)
def test_home_is_the_one_paths_home(
    override: object, env: dict[str, str], expected: Path | str
) -> None:
    """The agent's home is ``paths.home``'s, its HomeError the same words as a ConfigError."""
    try:
        from_paths: Path | str = home(override, {**HOME, **env})  # type: ignore[arg-type]
    except HomeError as exc:
        from_paths = str(exc)
    try:
        from_config: Path | str = cfg({"home": override}, **env).home
    except ConfigError as exc:
        from_config = str(exc)
    assert from_paths == from_config == expected


@pytest.mark.parametrize(
    ("overrides", "env", "match"),
    [
        ({"token": TOKEN}, {}, "unknown agent option"),
        ({"endpoit": "http://x"}, {}, "unknown agent option"),
        ({"local_copy": "yes"}, {}, "--local-copy"),
        ({"idle_exit": "30"}, {}, "--idle-exit"),
        ({"idle_exit": -1}, {}, "--idle-exit"),
        ({"ring": ""}, {}, "--ring"),
        ({"home": 5}, {}, "--home"),
        ({"dataset": 3}, {}, "--dataset"),
        ({"dataset": "a b"}, {}, "--dataset"),
        ({}, {"EMP_FASTBUF_LOCAL_COPY": "maybe"}, "EMP_FASTBUF_LOCAL_COPY"),
    ],
)
def test_bad_options(overrides: dict[str, object], env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        cfg(overrides, **env)
    assert TOKEN not in str(info.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match="compression"):
        AgentConfig(compression="lz4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="logs_endpoint"):
        AgentConfig(logs_endpoint="nope")
    with pytest.raises(ConfigError, match="batch_max_bytes"):
        AgentConfig(batch_max_bytes=0)
    c = AgentConfig()
    with pytest.raises(ConfigError, match="timeout_s"):
        dataclasses.replace(c, timeout_s=-1.0)


# -- credentials over plain http ---------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint", ["http://collector.example:4318", "http://10.0.0.5:4318", "http://[fe80::1]:1"]
)
def test_token_over_http_to_remote_host_refused(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="plain http") as info:
        cfg(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, DASH0_AUTH_TOKEN=TOKEN)
    assert TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match="plain http"):
        cfg(
            OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Basic {TOKEN}",
        )


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:4318",
        "http://127.1.2.3:4318",
        "http://localhost:4318",
        "http://LOCALHOST",
        "http://[::1]:4318",
        "https://collector.example",
        "https://10.0.0.5:4318",
    ],
)
def test_token_allowed_over_https_or_loopback(endpoint: str) -> None:
    c = cfg(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, DASH0_AUTH_TOKEN=TOKEN)
    assert c.headers["Authorization"] == f"Bearer {TOKEN}"


def test_no_token_over_http_is_fine() -> None:
    assert cfg(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector.example").mode == "otlp"


def test_token_never_shown() -> None:
    c = cfg(
        OTEL_EXPORTER_OTLP_ENDPOINT="https://ingress.example/base?key=qsecret",
        DASH0_AUTH_TOKEN=TOKEN,
        DASH0_DATASET="prod",
        OTEL_EXPORTER_OTLP_HEADERS=(
            "x-api-key=k3y-secret,X-Plain=visible,x-honeycomb-team=hc-secret,"
            "dash0-auth-extra=d0-secret,X-Db-Password=pw-secret"
        ),
    )
    for text in (repr(c), str(c), json.dumps(c.describe())):
        for secret in (TOKEN, "qsecret", "k3y-secret", "hc-secret", "d0-secret", "pw-secret"):
            assert secret not in text
        assert "<redacted>" in text
        assert "visible" in text and "prod" in text
    described = c.describe()
    assert described["headers"]["Authorization"] == "<redacted>"
    assert described["headers"]["x-honeycomb-team"] == "<redacted>"
    assert described["mode"] == "otlp"
    assert described["endpoints"]["logs"] == "https://ingress.example/base/v1/logs?<redacted>"
    assert TOKEN in c.secrets() and "hc-secret" in c.secrets()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3:4318\\@localhost",  # urlsplit reads localhost, urllib3 10.1.2.3
        "http://10.1.2.3:4318\\",
        "http://localhost:4318@10.1.2.3",
        "https://user:pw-secret@ingress.example",
        "http://10.1.2.3\x01@localhost",
        "http://127.0.0.1:4318/\x7f",
        "http://10.1.2.3\u00a0@localhost",
        "http://127.0.0.1%2f@10.1.2.3",
        "http://local%68ost:4318",
    ],
)
def test_ambiguous_url_refused_at_start(url: str) -> None:
    for name in (
        "DASH0_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    ):
        with pytest.raises(ConfigError, match=name) as info:
            cfg(**{name: url, "DASH0_AUTH_TOKEN": TOKEN})
        assert TOKEN not in str(info.value) and "pw-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="--endpoint"):
        cfg({"endpoint": url})
    with pytest.raises(ConfigError, match="logs_endpoint"):
        AgentConfig(logs_endpoint=url)


@pytest.mark.parametrize(
    "header",
    [
        "Authorization",
        "x-honeycomb-team",
        "api-key",
        "x-api-key",
        "dash0-auth-token",
        "X-Auth",
        "x-access-token",
        "x-client-secret",
        "x-password",
        "Cookie",
    ],
)
def test_every_credential_header_refused_over_plain_http(header: str) -> None:
    with pytest.raises(ConfigError, match="plain http") as info:
        cfg(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://10.1.2.3:4318",
            OTEL_EXPORTER_OTLP_HEADERS=f"{header}={TOKEN}",
        )
    assert header in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match="plain http"):
        cfg({"headers": {header: TOKEN}}, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://c.example")
    for endpoint in ("https://10.1.2.3:4318", "http://127.0.0.1:4318", "http://[::1]:1"):
        c = cfg(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_HEADERS=f"{header}={TOKEN}"
        )
        assert c.describe()["headers"][header] == "<redacted>"


def test_plain_header_over_http_is_fine() -> None:
    c = cfg(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://10.1.2.3:4318", OTEL_EXPORTER_OTLP_HEADERS="x-team=a"
    )
    assert c.headers == {"x-team": "a"}


def test_idn_host_still_accepted() -> None:
    assert cfg(OTEL_EXPORTER_OTLP_ENDPOINT="https://b\u00fccher.example").exporting


# -- header values HTTP cannot carry ------------------------------------------------------


def test_header_value_outside_latin1_refused_naming_the_header() -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_HEADERS") as info:
        cfg(OTEL_EXPORTER_OTLP_HEADERS="x-team=%E2%82%AC")
    text = str(info.value)
    assert "'x-team'" in text and "latin-1" in text
    assert "\u20ac" not in text and "%E2" not in text
    with pytest.raises(ConfigError, match="x-api-key") as info:
        cfg({"headers": {"x-api-key": "s3cr\u20acT"}})
    assert "s3cr" not in str(info.value)
    with pytest.raises(ConfigError, match="x-team"):
        AgentConfig(headers={"x-team": "\u20ac"})
    with pytest.raises(ConfigError, match="DASH0_AUTH_TOKEN") as info:
        cfg(DASH0_AUTH_TOKEN="auth_\u20ac")
    assert "auth_" not in str(info.value)


def test_header_value_with_control_character_refused() -> None:
    with pytest.raises(ConfigError, match="'x-team' has a control character"):
        cfg(OTEL_EXPORTER_OTLP_HEADERS="x-team=a%01b")


def test_latin1_header_value_kept() -> None:
    assert cfg(OTEL_EXPORTER_OTLP_HEADERS="x-team=caf%C3%A9\tb").headers == {
        "x-team": "caf\u00e9\tb"
    }


def test_redact_url() -> None:
    assert redact_url("https://h:1/p") == "https://h:1/p"
    assert redact_url("https://u:p@h/p?t=1") == "https://<redacted>@h/p?<redacted>"
    assert redact_url("http://h:notaport") == "<redacted>"


def self_signed_pem(directory: Path) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = directory / "ca.pem", directory / "key.pem"
    args = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    args += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=t"]
    proc = subprocess.run(args, capture_output=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {proc.stderr[-200:]!r}")
    return cert


def test_certificate_variable(tmp_path: Path) -> None:
    pem = self_signed_pem(tmp_path)
    assert cfg(OTEL_EXPORTER_OTLP_CERTIFICATE=str(pem)).certificate == pem
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_CERTIFICATE"):
        cfg(OTEL_EXPORTER_OTLP_CERTIFICATE=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    "content", [b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\n", b"\x30\x82\x01"]
)
def test_certificate_that_is_not_pem_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_CERTIFICATE: .* is not a PEM"):
        cfg(OTEL_EXPORTER_OTLP_CERTIFICATE=str(bad))
    with pytest.raises(ConfigError, match="certificate"):
        AgentConfig(certificate=bad)


# -- log level, routes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "level"),
    [("", logging.INFO), ("debug", logging.DEBUG), (" WARN ", logging.WARNING), ("Error", 40)],
)
def test_log_level(value: str, level: int) -> None:
    assert cfg(EMP_FASTBUF_LOG_LEVEL=value).log_level == level


@pytest.mark.parametrize("value", ["LOUD", "10", "notset", "in\x01fo"])
def test_unknown_log_level_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="EMP_FASTBUF_LOG_LEVEL: unknown level") as info:
        cfg(EMP_FASTBUF_LOG_LEVEL=value)
    assert "\x01" not in str(info.value)


def test_a_signal_without_endpoint_goes_to_the_store() -> None:
    logs_only = cfg(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://127.0.0.1:4318/v1/logs")
    assert logs_only.stored_signals() == ("traces", "metrics")
    assert logs_only.describe()["routes"] == {
        "traces": ["store"],
        "metrics": ["store"],
        "logs": ["http://127.0.0.1:4318/v1/logs"],
    }
    assert logs_only.routes_text() == (
        "traces, metrics -> store; logs -> http://127.0.0.1:4318/v1/logs"
    )
    assert cfg().stored_signals() == ("traces", "metrics", "logs")
    every = cfg(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
    assert every.stored_signals() == ()
    copy = cfg({"local_copy": True}, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")
    assert copy.stored_signals() == ("traces", "metrics", "logs")
