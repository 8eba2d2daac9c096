"""Redaction (``agent.redact``, the native ``_transcode.Redactor``): which keys match, what
is replaced inside text, the ``EMP_FASTBUF_REDACT`` rules and their errors, and the native
paths (OTLP requests, store rows, metric points) agreeing with the Python path on
generated records, counts included. The end-to-end runs through a real agent are in
test_redact_e2e.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from emp_fastbuf.agent.config import AgentConfig, ConfigError
from emp_fastbuf.agent.redact import DEFAULT_WORDS, MARKER, RedactRules, redact_record
from emp_fastbuf.agent.transcode import _transcode
from emp_fastbuf.records import LOG, SPAN, Record, Resource, SpanEvent, SpanLink, reference
from support.strategies import mutated, records

pytestmark = pytest.mark.native

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN_ID = bytes.fromhex("00f067aa0ba902b7")


def default() -> _transcode.Redactor:
    redactor = RedactRules().redactor()
    assert redactor is not None
    return redactor


# ---- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        *DEFAULT_WORDS,
        "PASSWORD",
        "db_password",
        "db.password",
        "githubToken",
        "x-api-key",
        "X-Api-Key",
        "http.request.header.authorization",
        "http.response.header.set-cookie",
        "Set_Cookie",
        "password_hint",  # a whole word inside the key
        "token_count",
        "aws.secret.access",
        "ssh private key",
    ],
)
def test_secret_like_keys_match(key: str) -> None:
    assert default().key_redacted(key)


@pytest.mark.parametrize(
    "key",
    ["tokenizer", "max_tokens", "passwords_count", "secretary", "user", "cookies_enabled", "", "é"],
)
def test_other_keys_do_not_match(key: str) -> None:
    assert not default().key_redacted(key)


def test_added_words_globs_and_kept_keys() -> None:
    rules = RedactRules.from_env({"EMP_FASTBUF_REDACT": "session_id, *_pin ,x?_auth,!token_count"})
    r = rules.redactor()
    assert r is not None
    assert rules.words[: len(DEFAULT_WORDS)] == DEFAULT_WORDS
    assert r.key_redacted("session_id") and r.key_redacted("user.session-id")
    assert r.key_redacted("card_pin") and r.key_redacted("Card-PIN")
    assert not r.key_redacted("pin_count")  # a glob is matched against the whole key
    assert r.key_redacted("xy_auth") and not r.key_redacted("xyz_auth")
    assert not r.key_redacted("token_count") and r.key_redacted("token")
    assert rules.describe()["added"] == ["session_id"]


def test_key_cache_keeps_answers_past_its_size() -> None:
    r = default()
    for i in range(3000):  # several times the cache: it is cleared and refilled
        assert r.key_redacted(f"k{i}_password")
        assert not r.key_redacted(f"k{i}_plain")
    assert r.key_redacted("password") and not r.key_redacted("plain")


# ---- text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://bob:hunter2@db.example.com/x", f"https://{MARKER}@db.example.com/x"),
        ("postgres://u:p@h:5432/db?x=1", f"postgres://{MARKER}@h:5432/db?x=1"),
        ("git https://ghp_abc@github.com/o/r", f"git https://{MARKER}@github.com/o/r"),
        ("a http://x:y@h and ftp://u@f", f"a http://{MARKER}@h and ftp://{MARKER}@f"),
        ("https://u:p@ss@host/", f"https://{MARKER}@host/"),  # the last @ ends it
        ("https://host/path/@user", "https://host/path/@user"),  # @ past the authority
        ("mail bob@example.com", "mail bob@example.com"),
        ("ratio 3:2 at 10:30", "ratio 3:2 at 10:30"),
        ("", ""),
    ],
)
def test_url_credentials_in_text(text: str, expected: str) -> None:
    assert default().text(text) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Authorization: Bearer abc.def", f"Authorization: {MARKER}"),
        ("authorization=tok&b=2", f"authorization={MARKER}&b=2"),
        (
            "h={'Authorization': 'Basic dXNlcg==', 'x': 1}",
            f"h={{'Authorization': '{MARKER}', 'x': 1}}",
        ),
        ('{"authorization":"Bearer a b"}', f'{{"authorization":"{MARKER}"}}'),
        ("Proxy-Authorization: Digest x\nnext: 1", f"Proxy-Authorization: {MARKER}\nnext: 1"),
        ("AUTHORIZATION :  tok  ", f"AUTHORIZATION :  {MARKER}  "),  # trailing blanks kept
        ("no authorization given", "no authorization given"),
        ("authorization:", "authorization:"),
        ("GET https://u:p@h/ Authorization: t", f"GET https://{MARKER}@h/ Authorization: {MARKER}"),
    ],
)
def test_authorization_values_in_bodies(body: str, expected: str) -> None:
    assert default().text(body, True) == expected


def test_headers_are_left_in_attribute_values() -> None:
    # Only bodies are searched for headers; an attribute holding one is caught by its key.
    assert default().text("Authorization: x") == "Authorization: x"


def test_counts_and_redacting_twice() -> None:
    r = default()
    once = r.text("Authorization: t\nhttps://u:p@h", True)
    assert r.counts() == {"attributes": 0, "urls": 1, "headers": 1}
    assert r.text(once, True) == once  # already redacted: unchanged and not counted again
    assert r.counts() == {"attributes": 0, "urls": 1, "headers": 1}
    assert r.attributes({"token": "x", "ok": 1}) == {"token": MARKER, "ok": 1}
    assert r.attributes({"token": MARKER}) == {"token": MARKER}
    assert r.counts()["attributes"] == 1


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a,,b", "off,x", "OFF,token", "!", "!a*", "! ", "x" * 300, "a\x01b", ",".join("w" * 300)],
)
def test_bad_redact_values_are_clear_config_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="EMP_FASTBUF_REDACT"):
        AgentConfig.from_env({"EMP_FASTBUF_REDACT": value})


def test_off_and_empty() -> None:
    assert AgentConfig.from_env({"EMP_FASTBUF_REDACT": " Off "}).redaction.redactor() is None
    assert AgentConfig.from_env({"EMP_FASTBUF_REDACT": " "}).redaction == RedactRules()
    assert AgentConfig.from_env({}).describe()["redaction"]["enabled"] is True


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("password",), TypeError),  # a str, not a list of them
        (([1],), TypeError),
        (([""],), ValueError),
        ((["x" * 256],), ValueError),
        (([], "*"), TypeError),
    ],
)
def test_redactor_rejects_bad_rules(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        _transcode.Redactor(*args)


def test_transcoders_reject_a_redactor_of_another_type() -> None:
    raw = reference.encode_record(Record(LOG, 1, body="b"))
    calls = [
        lambda bad: _transcode.logs_requests([(b"", [raw])], 1, redactor=bad),
        lambda bad: _transcode.spans_requests([(b"", [raw])], redactor=bad),
        lambda bad: _transcode.store_rows([raw], bad),
        lambda bad: _transcode.metric_points([raw], bad),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="redactor must be a Redactor"):
            call({"words": ["x"]})


# ---- the native paths agree with the Python path -------------------------------------------

SECRET_KEYS = ["password", "db.password", "api_key", "token_count", "job_id", "url", "a", "Cookie"]
SECRET_TEXTS = [
    "https://bob:hunter2@db/x",
    "x ftp://u@h y https://a:b@c",
    "Authorization: Bearer t",
    MARKER,
    "plain",
    "://u@",
]
secret_values = st.one_of(st.sampled_from(SECRET_TEXTS), st.text(max_size=12), st.integers(0, 9))
secret_attrs = st.dictionaries(
    st.one_of(st.sampled_from(SECRET_KEYS), st.text(max_size=6)), secret_values, max_size=5
)


@st.composite
def secret_records(draw: st.DrawFn) -> Record:
    rec = draw(records())
    rec.context = draw(secret_attrs)
    rec.attributes = draw(secret_attrs)
    if rec.kind == LOG:
        rec.body = draw(st.one_of(st.sampled_from(SECRET_TEXTS), st.text(max_size=40)))
    for item in [*rec.events, *rec.links]:
        item.attributes = draw(secret_attrs)
    return rec


def python_path(raw: bytes, redactor: _transcode.Redactor) -> bytes | None:
    """``raw`` decoded, redacted in Python and encoded again; None when corrupt."""
    try:
        rec = reference.decode_record(raw)
    except ValueError:
        return None
    return reference.encode_record(redact_record(rec, redactor))


@FAST
@given(st.lists(st.one_of(secret_records().map(reference.encode_record), mutated()), max_size=8))
def test_native_store_rows_and_points_redact_as_the_python_path(raws: list[bytes]) -> None:
    native, python = default(), default()
    again = [p for p in (python_path(raw, python) for raw in raws) if p is not None]
    got = _transcode.store_rows(raws, native)
    want = _transcode.store_rows(again)
    assert repr(got[:4]) == repr(want[:4])  # repr: NaN values compare equal
    points = _transcode.metric_points(raws, default())[0]
    assert repr(points) == repr(_transcode.metric_points(again)[0])
    assert native.counts() == python.counts()


@FAST
@given(
    st.lists(st.one_of(secret_records().map(reference.encode_record), mutated()), max_size=8),
    secret_attrs,
)
def test_native_requests_redact_as_the_python_path(raws: list[bytes], res_attrs: dict) -> None:
    res = Resource(attributes={"service.name": "svc", **res_attrs})
    meta = reference.encode_resource(res)
    python = default()
    again = [p for p in (python_path(raw, python) for raw in raws) if p is not None]
    clean = reference.encode_resource(Resource(attributes=python.attributes(res.attributes)))
    for build in (
        lambda chunks, r: _transcode.logs_requests(chunks, 7, redactor=r),
        lambda chunks, r: _transcode.spans_requests(chunks, redactor=r),
    ):
        (got, n, _bad), (want, n_want, _) = (
            build([(meta, raws)], default()),
            build([(clean, again)], None),
        )
        assert (got, n) == (want, n_want)  # a corrupt record is rejected on both paths


def test_secrets_in_every_place_of_a_span_and_a_log_are_replaced() -> None:
    secret = "hunter2"
    span = Record(
        SPAN,
        2,
        trace_id=TRACE,
        span_id=SPAN_ID,
        name="s",
        start_unix_nano=1,
        context={"token": secret},
        attributes={"db.url": f"postgres://bob:{secret}@db/x"},
        events=[SpanEvent("e", 1, {"api_key": secret})],
        links=[SpanLink(TRACE, SPAN_ID, {"password": [secret]})],
    )
    log = Record(LOG, 1, body=f"Authorization: Bearer {secret}", attributes={"Cookie": secret})
    meta = reference.encode_resource(Resource(attributes={"db.password": secret}))
    raws = [reference.encode_record(r) for r in (span, log)]
    r = default()
    bodies = [
        *_transcode.logs_requests([(meta, raws)], 5, redactor=r)[0],
        *_transcode.spans_requests([(meta, raws)], redactor=r)[0],
    ]
    rows = _transcode.store_rows(raws, r)
    assert secret.encode() not in b"".join(bodies)
    assert secret not in repr(rows)
    request = ExportLogsServiceRequest.FromString(bodies[0])
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    assert record.body.string_value == f"Authorization: {MARKER}"
    # Twice each (the requests, then the rows): the span's 3 keys and URL, the log's key
    # and header; and the resource once per request.
    assert r.counts() == {"attributes": 2 * 3 + 2 * 1 + 2, "urls": 2, "headers": 2}
