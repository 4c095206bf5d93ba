"""FC's ACS3-HMAC-SHA256 signatures and the replay window. The vector is a request FC's official
Python SDK (alibabacloud_fc20230330 4.8.3) signed with access key AKIDEXAMPLE / secret "secret",
captured on the wire."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from fnsession.gateway import errors
from fnsession.gateway.signing import (
    EMPTY_SHA256,
    ReplayGuard,
    canonical_query,
    canonical_request,
    parse_authorization,
    sign,
    verify,
)

SIGNED = ("accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;"
          "x-acs-signature-nonce;x-acs-version")
HEADERS = {
    "accept": "application/json", "host": "127.0.0.1:18931",
    "user-agent": "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
    "x-acs-action": "ListSessions", "x-acs-content-sha256": EMPTY_SHA256, "x-acs-credentials-provider": "static_ak",
    "x-acs-date": "2026-11-22T03:47:51Z", "x-acs-signature-nonce": "506b67af2904c33df8b1f84caa4a38f4",
    "x-acs-version": "2023-03-30", "accept-encoding": "identity",  # not signed
}
TARGET = "/2023-03-30/functions/my-func/sessions?limit=10&nextToken=tok%2Fen%2B1+2&qualifier=prod&sessionId=sess-123&sessionStatus=Active"
SDK_SIGNATURE = "7cb6c549ba496ab9c08ac32e0e2496ae4410b89ba2ffb3c42568e8433669588e"
SENT = datetime(2026, 11, 22, 3, 47, 51, tzinfo=UTC).timestamp()  # the captured x-acs-date
AUTH = f"ACS3-HMAC-SHA256 Credential=AKIDEXAMPLE,SignedHeaders={SIGNED},Signature={SDK_SIGNATURE}"


def test_the_sdks_own_signature_verifies() -> None:
    auth = parse_authorization(AUTH)
    assert (auth.access_key_id, auth.signature, len(auth.signed_headers)) == ("AKIDEXAMPLE", SDK_SIGNATURE, 9)
    canonical = canonical_request("GET", TARGET, HEADERS, auth.signed_headers, EMPTY_SHA256)
    assert canonical.splitlines()[2] == "limit=10&nextToken=tok%2Fen%2B1%202&qualifier=prod&sessionId=sess-123&sessionStatus=Active"
    assert sign("secret", canonical) == SDK_SIGNATURE
    verify(method="GET", raw_target=TARGET, headers=HEADERS, body=b"", secret="secret", authorization=auth)


@pytest.mark.parametrize("change", [
    {"secret": "not-the-secret"},
    {"method": "DELETE"},
    {"raw_target": TARGET.replace("my-func", "other-func")},
    {"raw_target": TARGET.replace("limit=10", "limit=11")},
    {"headers": {**HEADERS, "x-acs-action": "DeleteSession"}},
    {"headers": {**HEADERS, "host": "127.0.0.1:18932"}},
    {"body": b"{}"},
])
def test_any_change_to_a_signed_part_is_refused(change: dict) -> None:
    kw = {"method": "GET", "raw_target": TARGET, "headers": HEADERS, "body": b"", "secret": "secret",
          "authorization": parse_authorization(AUTH), **change}
    with pytest.raises(errors.FCError) as err:
        verify(**kw)
    assert err.value.status == 401 and err.value.code == "SignatureDoesNotMatch"


def test_unsigned_headers_may_change() -> None:
    verify(method="GET", raw_target=TARGET, headers={**HEADERS, "accept-encoding": "gzip", "content-length": "0"},
           body=b"", secret="secret", authorization=parse_authorization(AUTH))


def test_the_raw_path_is_signed_not_a_decoded_one() -> None:
    raw = "/2023-03-30/functions/my%20func%2A~/sessions/sess%20id%2F1?qualifier=a%20b"
    canonical = canonical_request("GET", raw, HEADERS, ("host",), EMPTY_SHA256)
    assert canonical.splitlines()[1] == "/2023-03-30/functions/my%20func%2A~/sessions/sess%20id%2F1"
    absolute = canonical_request("GET", "http://127.0.0.1:18931" + raw, HEADERS, ("host",), EMPTY_SHA256)
    assert absolute == canonical  # a request that came through an HTTP proxy


@pytest.mark.parametrize("wire,canonical", [
    ("", ""),
    ("b=2&a=1", "a=1&b=2"),
    ("sessionId=", "sessionId="),
    ("q=%C3%BC*~!'()", "q=%C3%BC%2A~%21%27%28%29"),
    ("x=a+b&x=c", "x=a%20b&x=c"),
])
def test_canonical_query(wire: str, canonical: str) -> None:
    assert canonical_query(wire) == canonical


@pytest.mark.parametrize("value,why", [
    (None, "is not ACS3-HMAC-SHA256"),
    ("Bearer abc", "is not ACS3-HMAC-SHA256"),
    ("ACS3-HMAC-SHA256 Credential=AK,Signature=ab", "lacks SignedHeaders"),
])
def test_malformed_authorization_is_refused_with_the_reason(value: str | None, why: str) -> None:
    with pytest.raises(errors.FCError) as err:
        parse_authorization(value)
    assert err.value.status == 401 and why in err.value.message


def test_replay_window_refuses_old_dates_and_reused_nonces() -> None:
    auth = parse_authorization(AUTH)
    sent = SENT
    clock = [sent + 10]
    guard = ReplayGuard(window=900, clock=lambda: clock[0])
    guard.check(HEADERS, auth)
    with pytest.raises(errors.FCError, match="already used"):
        guard.check(HEADERS, auth)
    clock[0] = sent + 901
    with pytest.raises(errors.FCError, match="900 s away"):
        guard.check({**HEADERS, "x-acs-signature-nonce": "other"}, auth)
    with pytest.raises(errors.FCError, match="x-acs-date must be"):
        guard.check({**HEADERS, "x-acs-date": "yesterday"}, auth)
    clock[0] = sent + 300
    guard.check({**HEADERS, "x-acs-signature-nonce": "fresh"}, auth)
    assert len(guard.seen) == 2


def test_nonces_are_forgotten_after_the_window() -> None:
    auth = parse_authorization(AUTH)
    clock = [SENT]
    guard = ReplayGuard(window=900, clock=lambda: clock[0])
    for i in range(100):
        guard.check({**HEADERS, "x-acs-signature-nonce": f"n{i}"}, auth)
    clock[0] += 911  # the date + the window, to the end of the guard's 10 s slot
    guard.check({**HEADERS, "x-acs-signature-nonce": "late", "x-acs-date": "2026-11-22T04:03:02Z"}, auth)
    assert len(guard) == 1


def test_errors_are_json_objects_the_sdk_reads() -> None:
    err = errors.session_not_found("abc")
    assert err.status == 404
    assert json.loads(err.body("req-1")) == {
        "Code": "SessionNotFound", "RequestId": "req-1",
        "Message": "session abc does not exist, deleted by the user or expired and removed by the system"}
    assert errors.session_id_too_long("a" * 65).message == "SessionID exceeds the maximum allowed length (max: 64, actual: '65')"
