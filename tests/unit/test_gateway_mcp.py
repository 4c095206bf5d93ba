"""MCP session affinity's pure parts (fnsession.gateway.mcp): which requests open a session and which
name one, the id in an instance's answer or SSE endpoint event, when a DELETE ends the session, the
routes the gateway keeps by MCP id, and FC's Session JSON of a session named by its instance."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fnsession.gateway import fc, mcp
from fnsession.gateway.errors import FCError
from fnsession.gateway.routes import Route, Routes

STREAMABLE: dict[str, Any] = {"sessionAffinity": "MCP_STREAMABLE", "sessionAffinityConfig": {}}
SSE: dict[str, Any] = {"sessionAffinity": "MCP_SSE", "sessionAffinityConfig": {"sseEndpointPath": "/mcp/sse"}}


def classify(spec: dict[str, Any], method: str, path: str, query: str = "", **headers: str) -> str | None:
    return mcp.classify(spec["sessionAffinity"], spec, method, path, query, {k.replace("_", "-"): v for k, v in headers.items()})


def test_streamable_a_post_without_the_header_opens_a_session_and_the_header_names_one() -> None:
    assert classify(STREAMABLE, "POST", "/mcp") is None
    assert classify(STREAMABLE, "POST", "/mcp", mcp_session_id="abc-1") == "abc-1"
    assert classify(STREAMABLE, "GET", "/mcp", mcp_session_id=" abc-1 ") == "abc-1"
    assert classify(STREAMABLE, "DELETE", "/mcp", mcp_session_id="x.y:z") == "x.y:z"  # any visible ASCII


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_streamable_only_a_post_may_come_without_the_header(method: str) -> None:
    with pytest.raises(FCError) as err:
        classify(STREAMABLE, method, "/mcp")
    assert (err.value.status, err.value.code) == (400, "InvalidArgument")
    assert "Mcp-Session-Id" in err.value.message and method in err.value.message


@pytest.mark.parametrize("bad", ["", "has space", "é", "x" * 257, "tab\there"])
def test_an_id_outside_visible_ascii_or_too_long_is_fcs_400_naming_where_it_came(bad: str) -> None:
    with pytest.raises(FCError) as err:
        classify(STREAMABLE, "POST", "/mcp", mcp_session_id=bad)
    assert err.value.status == 400 and "Mcp-Session-Id" in err.value.message and "0x21-0x7E" in err.value.message
    with pytest.raises(FCError) as err:
        classify(SSE, "POST", "/mcp/messages", f"sessionId={bad}")
    assert err.value.status == 400 and "sessionId query parameter" in err.value.message


def test_sse_a_get_on_the_endpoint_path_opens_and_the_sessionid_query_names() -> None:
    assert classify(SSE, "GET", "/mcp/sse") is None
    assert classify(SSE, "POST", "/mcp/messages", "sessionId=abc&x=1") == "abc"
    assert classify(SSE, "POST", "/anything", "x=1&sessionId=a%2Fb") == "a/b"


@pytest.mark.parametrize("method,path", [("POST", "/mcp/sse"), ("GET", "/sse"), ("POST", "/mcp/messages"), ("GET", "/")])
def test_sse_anything_else_is_fcs_400_naming_the_endpoint_path(method: str, path: str) -> None:
    with pytest.raises(FCError) as err:
        classify(SSE, method, path)
    assert err.value.status == 400 and "/mcp/sse" in err.value.message and "sessionId" in err.value.message


def test_sse_endpoint_path_defaults_to_fcs_sse() -> None:
    spec = {"sessionAffinity": "MCP_SSE"}
    assert classify(spec, "GET", "/sse") is None
    with pytest.raises(FCError):
        classify(spec, "GET", "/mcp/sse")


def test_the_id_of_an_answer_is_a_2xx_answers_valid_mcp_session_id() -> None:
    assert mcp.answer_id(200, [(b"Content-Type", b"application/json"), (b"Mcp-Session-Id", b"s-1")]) == "s-1"
    assert mcp.answer_id(202, [(b"mcp-session-id", b" s-2 ")]) == "s-2"
    assert mcp.answer_id(400, [(b"Mcp-Session-Id", b"s-1")]) is None  # an error opens nothing
    assert mcp.answer_id(200, [(b"Content-Type", b"application/json")]) is None  # a stateless server
    assert mcp.answer_id(200, [(b"Mcp-Session-Id", b"bad id")]) is None


def test_the_endpoint_event_gives_the_message_urls_session_id_in_whatever_pieces_it_comes() -> None:
    stream = b": hello\n\nevent: endpoint\r\ndata: /fn/f/mcp/messages?sessionId=0123abc&x=1\r\n\r\nevent: message\ndata: {}\n\n"
    for size in (1, 3, 7, len(stream)):
        scan = mcp.EndpointScan()
        found = [scan.feed(stream[i:i + size]) for i in range(0, len(stream), size)]
        assert [f for f in found if f is not None] == ["0123abc"] and scan.done


def test_a_stream_whose_first_event_is_not_endpoint_or_that_says_nothing_gives_up() -> None:
    scan = mcp.EndpointScan()
    assert scan.feed(b"event: message\ndata: {}\n\nevent: endpoint\ndata: m?sessionId=late\n\n") is None and scan.done
    scan = mcp.EndpointScan()
    assert scan.feed(b"event: endpoint\ndata: messages\n\n") is None and scan.done  # no sessionId
    scan = mcp.EndpointScan()
    assert scan.feed(b": keep-alive\n\n" * 10) is None and not scan.done  # comments: still looking
    assert scan.feed(b"x" * (mcp.SCAN_LIMIT + 1)) is None and scan.done  # but not forever


@given(st.binary(max_size=600))
def test_the_scan_never_raises_and_finds_only_a_valid_id(data: bytes) -> None:
    found = mcp.EndpointScan().feed(data)
    assert found is None or mcp.check_mcp_id(found) == found


def test_a_delete_ends_the_session_when_the_instance_took_it_or_no_longer_knows_it() -> None:
    assert mcp.ends_session("DELETE", 204) and mcp.ends_session("DELETE", 200) and mcp.ends_session("DELETE", 404)
    assert not mcp.ends_session("DELETE", 405)  # the server does not let clients end sessions (MCP spec)
    assert not mcp.ends_session("DELETE", 500) and not mcp.ends_session("POST", 200)


def test_fcs_session_json_shows_an_mcp_session_by_the_id_its_instance_named() -> None:
    obj = {"metadata": {"name": "f-abc-123", "annotations": {mcp.ANNOTATION: "mcp-id-1"}},
           "spec": {"functionName": "f", "sessionId": "0" * 32}, "status": {"sessionStatus": "Active", "sessionId": "0" * 32}}
    assert fc.session_json(obj)["sessionId"] == "mcp-id-1"
    del obj["metadata"]["annotations"]
    assert fc.session_json(obj)["sessionId"] == "0" * 32


class _Routes:
    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str, str], Route] = {}
        self.keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.functions: dict[tuple[str, str], dict[str, Any]] = {}

    by_name = Routes.by_name  # (the real lookup, over the two tables above)


class _Invoker:
    def __init__(self) -> None:
        self.routes, self.api = _Routes(), None


def route(name: str) -> Route:
    return Route(name, "10.0.0.1", 9000, math.inf, math.inf, 0.0)


def test_routes_by_mcp_id_before_the_watch_has_it_then_from_the_table_and_never_an_ended_one() -> None:
    m = mcp.Mcp(_Invoker())
    table = m.routes
    table.sessions[("ns", "f", "gen-1")], table.keys[("ns", "f-1")] = route("f-1"), ("ns", "f", "gen-1")
    assert m.route("ns", "f", "mcp-1") is None
    m.aliases[("ns", "f", "mcp-1")] = (route("f-1"), time.monotonic())  # named by its instance here: routed at once
    assert m.route("ns", "f", "mcp-1") is table.sessions[("ns", "f", "gen-1")]
    del table.sessions[("ns", "f", "gen-1")]  # the watch re-keys it by its annotation
    table.sessions[("ns", "f", "mcp-1")], table.keys[("ns", "f-1")] = route("f-1"), ("ns", "f", "mcp-1")
    assert m.route("ns", "f", "mcp-1") is not None
    assert m.route("ns", "other", "mcp-1") is None and m.route("ns2", "f", "mcp-1") is None
    m.gone[("ns", "f-1")] = 0.0  # ended here: not routed while the watch still shows it
    assert m.route("ns", "f", "mcp-1") is None
    del m.gone[("ns", "f-1")]
    del table.sessions[("ns", "f", "mcp-1")], table.keys[("ns", "f-1")]  # expired or deleted
    assert m.route("ns", "f", "mcp-1") is not None, "a moment ago it was opened here: the watch may lag"
    m.aliases[("ns", "f", "mcp-1")] = (route("f-1"), time.monotonic() - mcp.ALIAS_LAG)
    assert m.route("ns", "f", "mcp-1") is None and not m.aliases
    table.sessions[("ns", "f", "mcp-2")] = Route("f-2", "10.0.0.1", 9000, 0.0, math.inf, 0.0)  # past its TTL
    assert m.route("ns", "f", "mcp-2") is None
