"""FC's session model mapped to FunctionSessions, and session ids from headers and cookies."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fnsession.api.session import FunctionSessionSpec
from fnsession.gateway import fc
from fnsession.gateway.errors import FCError


def test_empty_create_input_gets_a_generated_fc_style_id_and_the_function_defaults() -> None:
    spec = fc.create_input_to_spec("my-func", None, None)
    assert re.fullmatch(r"[0-9a-f]{32}", spec["sessionId"])
    assert spec == {"functionName": "my-func", "qualifier": "LATEST", "sessionId": spec["sessionId"]}
    FunctionSessionSpec.model_validate(spec)


def test_create_input_with_nas_config_maps_to_session_storage() -> None:
    spec = fc.create_input_to_spec("f", "prod", {
        "sessionId": "tenant_1001", "sessionTTLInSeconds": 600, "sessionIdleTimeoutInSeconds": 60,
        "disableSessionIdReuse": True,
        "nasConfig": {"userId": 1001, "groupId": 1001, "mountPoints": [
            {"serverAddr": "tenant-data:/tenants/1001", "mountDir": "/data", "enableTLS": True}]}})
    assert spec["storage"] == {"runAsUser": 1001, "runAsGroup": 1001,
                               "mounts": [{"claimName": "tenant-data", "subPath": "tenants/1001", "mountPath": "/data"}]}
    assert (spec["qualifier"], spec["sessionTTLInSeconds"], spec["disableSessionIdReuse"]) == ("prod", 600, True)
    FunctionSessionSpec.model_validate(spec)


def test_the_sdks_empty_mount_points_mean_no_storage() -> None:
    assert "storage" not in fc.create_input_to_spec("f", None, {"nasConfig": {"mountPoints": [], "userId": 1, "groupId": 1}})


@pytest.mark.parametrize("body,says", [
    ({"sessionId": "a" * 65}, "SessionID exceeds the maximum allowed length (max: 64, actual: '65')"),
    ({"sessionId": "-abc"}, "The provided sessionID is invalid"),
    ({"sessionId": ""}, "The provided sessionID is invalid"),
    ({"sessionId": "a b"}, "The provided sessionID is invalid"),
    ({"sessionId": "abc\n"}, "The provided sessionID is invalid"),
    ({"sessionId": 12345}, "The provided sessionID is invalid"),
    ({"sessionTTLInSeconds": 0}, "sessionTTLInSeconds must be an integer from 1 to 21600, got 0"),
    ({"sessionTTLInSeconds": "600"}, "sessionTTLInSeconds must be an integer"),
    ({"sessionIdleTimeoutInSeconds": 21601}, "sessionIdleTimeoutInSeconds must be an integer from 0 to 21600"),
    ({"sessionTTLInSeconds": 60, "sessionIdleTimeoutInSeconds": 61}, "must not exceed sessionTTLInSeconds"),
    ({"nasConfig": {"userId": 1, "groupId": 1, "mountPoints": [{"serverAddr": "nas.example.com", "mountDir": "/d"}]}},
     "serverAddr must be '<claimName>:/<subPath>'"),
    ({"enableAutoPause": "yes"}, "enableAutoPause must be a boolean"),
    ({"enableAutoResume": 1}, "enableAutoResume must be a boolean"),
    ({"nasConfig": {"groupId": 1, "mountPoints": [{"serverAddr": "c:/a", "mountDir": "/d"}]}}, "nasConfig.userId must be an integer"),
])
def test_bad_create_input_gets_fcs_400_naming_the_field(body: dict, says: str) -> None:
    with pytest.raises(FCError) as err:
        fc.create_input_to_spec("f", None, body)
    assert err.value.status == 400 and says in err.value.message


def test_a_function_session_as_fc_session_json() -> None:
    obj = {"metadata": {"name": "s1"}, "spec": {"functionName": "f", "sessionId": "abc", "storage": {
        "runAsUser": 7, "runAsGroup": 8, "mounts": [{"claimName": "c", "subPath": "t/7", "mountPath": "/d"}]}},
        "status": {"sessionStatus": "Active", "sessionId": "abc", "sessionAffinityType": "HEADER_FIELD",
                   "createdTime": "2026-11-22T00:00:00.100000Z", "lastModifiedTime": "2026-11-22T00:00:01.000000Z",
                   "instance": {"containerId": "containerd://x"}}}
    out = fc.session_json(obj, {"sessionTTLInSeconds": 3600, "sessionIdleTimeoutInSeconds": 600})
    assert out == {"sessionId": "abc", "functionName": "f", "qualifier": "LATEST", "sessionAffinityType": "HEADER_FIELD",
                   "sessionTTLInSeconds": 3600, "sessionIdleTimeoutInSeconds": 600, "disableSessionIdReuse": False,
                   "createdTime": "2026-11-22T00:00:00.100000Z", "lastModifiedTime": "2026-11-22T00:00:01.000000Z",
                   "sessionStatus": "Active", "containerId": "containerd://x",
                   "enableAutoPause": False, "enableAutoResume": False,
                   "nasConfig": {"userId": 7, "groupId": 8, "mountPoints": [
                       {"serverAddr": "c:/t/7", "mountDir": "/d", "enableTLS": False}]}}
    assert fc.nas_to_storage(out["nasConfig"]) == obj["spec"]["storage"]


def test_session_ids_from_the_affinity_header() -> None:
    assert fc.request_session_id("HEADER_FIELD", "X-Session-Id", {"x-session-id": "abc"}) == "abc"
    assert fc.request_session_id("HEADER_FIELD", "X-Session-Id", {}) is None
    with pytest.raises(FCError) as err:
        fc.request_session_id("HEADER_FIELD", "x-session-id", {"x-session-id": "bad id"})
    assert err.value.status == 400
    with pytest.raises(FCError, match="only supports GENERATED_COOKIE and HEADER_FIELD"):
        fc.request_session_id("MCP_STREAMABLE", None, {})


def test_cookie_ids_are_read_but_a_malformed_cookie_is_no_session() -> None:
    assert fc.cookie_session_id("a=1; x-fc-cookie-session-id=0123abcd; b=2") == "0123abcd"
    assert fc.cookie_session_id("x-fc-cookie-session-id=") is None
    assert fc.cookie_session_id("x-fc-cookie-session-id=bad/id") is None
    assert fc.cookie_session_id(None) is None
    assert fc.set_cookie("0123", 60) == "x-fc-cookie-session-id=0123; Max-Age=60; Path=/; HttpOnly"


@given(st.text(min_size=1, max_size=80))
def test_object_names_are_valid_kubernetes_names_for_any_valid_id(session_id: str) -> None:
    try:
        fc.check_session_id(session_id)
    except FCError:
        return
    name = fc.object_name("my-func", session_id)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 253
    assert len(fc.session_id_hash(session_id)) <= 63


def test_create_input_carries_the_auto_pause_flags() -> None:
    spec = fc.create_input_to_spec("f", None, {"enableAutoPause": True, "enableAutoResume": False})
    assert (spec["enableAutoPause"], spec["enableAutoResume"]) == (True, False)
    assert FunctionSessionSpec.model_validate(spec).enable_auto_pause is True


@pytest.mark.parametrize("raw, value", [(None, True), ("", True), ("True", True), ("true", True), ("False", False), ("false", False)])
def test_file_system_only_as_the_sdk_sends_it(raw: str | None, value: bool) -> None:
    assert fc.file_system_only(raw) is value


def test_file_system_only_must_be_a_boolean() -> None:
    with pytest.raises(FCError, match="fileSystemOnly must be true or false"):
        fc.file_system_only("maybe")


@pytest.mark.parametrize("state", ["Active", "Paused", "Expired"])
def test_the_sdks_session_model_round_trips_every_field_the_gateway_returns(state: str) -> None:
    from alibabacloud_fc20230330 import models

    obj = {"metadata": {"name": "s1"}, "spec": {"functionName": "f", "sessionId": "abc", "qualifier": "prod",
                                                  "enableAutoPause": True, "enableAutoResume": True, "storage": {
        "runAsUser": 7, "runAsGroup": 8, "mounts": [{"claimName": "c", "subPath": "t/7", "mountPath": "/d"}]}},
        "status": {"sessionStatus": state, "sessionId": "abc", "sessionAffinityType": "HEADER_FIELD",
                   "createdTime": "2026-11-22T00:00:00.100000Z", "lastModifiedTime": "2026-11-22T00:00:01.000000Z",
                   "instance": {"containerId": "containerd://x"}}}
    out = fc.session_json(obj, {"sessionTTLInSeconds": 3600, "sessionIdleTimeoutInSeconds": 600})
    parsed = models.Session().from_map(out)
    assert parsed.to_map() == out, "a field the gateway returns is not one FC's SDK reads (or reads differently)"
    assert (parsed.session_status, parsed.enable_auto_pause, parsed.enable_auto_resume) == (state, True, True)
