"""Header policy, on the full path and the lane: what is refused before anything is routed (a repeated
session header or cookie, no Host or several, a version other than HTTP/1.0 and 1.1), what never
reaches an instance (hop-by-hop headers, credentials, a client's own X-Forwarded-*), and what the
gateway sets (X-Forwarded-For, -Proto, -Host from the peer)."""

from __future__ import annotations

import json

import pytest

from tests.adversarial.harness import AUTH, COOKIE_SESSION, Message, World, final, req
from tests.adversarial.test_smuggling import warm

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.parametrize("lane", ["full", "lane"])]


async def one(world: World, lane: str, raw: bytes) -> tuple[Message, list[Message]]:
    """The one answer to ``raw`` and the requests the instances received for it."""
    if lane == "lane":
        await warm(world)
    before = len(world.a.requests), len(world.b.requests)
    c = await world.client()
    await c.send(raw)
    answers = final(await c.answers(1))
    assert len(answers) == 1, c.got
    await c.settle(0.05)
    world.check_instances()
    return answers[0], [m for _, m in world.a.requests[before[0]:]] + [m for _, m in world.b.requests[before[1]:]]


def fc_error(answer: Message, status: int, code: str) -> None:
    assert answer.status == status, answer.raw
    assert json.loads(answer.body)["Code"] == code, answer.raw


# --- refused before routing ---------------------------------------------------------------------------

SESSION_TWICE = {
    "two-sessions": req(b"/fn/echo/x", b"x-session-id: s-2\r\n"),
    "two-sessions-other-order": req(b"/fn/echo/x", b"x-session-id: s-1\r\n", session=b"s-2"),
    "same-session-twice": req(b"/fn/echo/x", b"x-session-id: s-1\r\n"),
    "other-case-name": req(b"/fn/echo/x", b"X-SESSION-ID: s-2\r\n"),
    "empty-then-value": req(b"/fn/echo/x", b"x-session-id: s-1\r\n", session=b"\t"),
}


@pytest.mark.parametrize("raw", SESSION_TWICE.values(), ids=SESSION_TWICE.keys())
async def test_a_repeated_session_header_is_refused(world: World, lane: str, raw: bytes) -> None:
    answer, forwarded = await one(world, lane, raw)
    fc_error(answer, 400, "InvalidArgument")
    assert forwarded == []


def cookie_req(*cookies: bytes) -> bytes:
    return (b"GET /fn/web/x HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"Cookie: " + c + b"\r\n" for c in cookies)
            + AUTH + b"\r\n")


SESSION_COOKIE = b"x-fc-cookie-session-id=" + COOKIE_SESSION
OTHER_COOKIE = b"x-fc-cookie-session-id=" + b"d" * 32
COOKIE_TWICE = {
    "two-cookie-headers": cookie_req(SESSION_COOKIE, OTHER_COOKIE),
    "one-header-two-cookies": cookie_req(SESSION_COOKIE + b"; " + OTHER_COOKIE),
    "one-header-same-cookie-twice": cookie_req(SESSION_COOKIE + b"; theme=dark; " + SESSION_COOKIE),
    "other-first": cookie_req(OTHER_COOKIE, b"theme=dark; " + SESSION_COOKIE),
}


@pytest.mark.parametrize("raw", COOKIE_TWICE.values(), ids=COOKIE_TWICE.keys())
async def test_a_repeated_session_cookie_is_refused(world: World, lane: str, raw: bytes) -> None:
    answer, forwarded = await one(world, lane, raw)
    fc_error(answer, 400, "InvalidArgument")
    assert forwarded == []


async def test_one_session_cookie_among_others_is_routed(world: World, lane: str) -> None:
    answer, forwarded = await one(world, lane, cookie_req(b"theme=dark; " + SESSION_COOKIE + b"; lang=en"))
    assert answer.status == 200 and len(forwarded) == 1
    assert forwarded[0].values(b"cookie") == [b"theme=dark; " + SESSION_COOKIE + b"; lang=en"]


HOSTS = {
    "no-host": req(b"/fn/echo/x", host=None),
    "two-hosts": req(b"/fn/echo/x", b"Host: evil\r\n"),
    "same-host-twice": req(b"/fn/echo/x", b"Host: gw\r\n"),
}


@pytest.mark.parametrize("raw", HOSTS.values(), ids=HOSTS.keys())
async def test_no_host_or_several_is_a_400(world: World, lane: str, raw: bytes) -> None:
    answer, forwarded = await one(world, lane, raw)
    assert answer.status == 400 and forwarded == [], answer.raw


VERSIONS = {
    "http-2.0": b"HTTP/2.0",
    "http-1.2": b"HTTP/1.2",
    "http-3.0": b"HTTP/3.0",
    "http-0.9": b"HTTP/0.9",
}


@pytest.mark.parametrize("version", VERSIONS.values(), ids=VERSIONS.keys())
async def test_another_http_version_is_a_505(world: World, lane: str, version: bytes) -> None:
    answer, forwarded = await one(world, lane, req(b"/fn/echo/x", version=version))
    assert answer.status == 505 and forwarded == [], answer.raw


async def test_http_1_0_is_served(world: World, lane: str) -> None:
    answer, forwarded = await one(world, lane, req(b"/fn/echo/old", version=b"HTTP/1.0"))
    assert answer.status == 200 and len(forwarded) == 1 and forwarded[0].target == b"/old"


async def test_no_credential_is_a_401_and_nothing_is_routed(world: World, lane: str) -> None:
    answer, forwarded = await one(world, lane, req(b"/fn/echo/x", auth=b""))
    assert answer.status == 401 and forwarded == [], answer.raw


# --- never forwarded ----------------------------------------------------------------------------------

HOP_BY_HOP = {
    "connection-names-a-header": (b"Connection: X-Secret\r\nX-Secret: 1\r\n", [b"connection", b"x-secret"], None),
    "connection-keep-alive-and-a-name": (b"Connection: keep-alive, X-Other\r\nX-Other: 1\r\n",
                                         [b"connection", b"x-other"], None),
    "keep-alive": (b"Keep-Alive: timeout=5\r\n", [b"keep-alive"], None),
    "te": (b"TE: trailers\r\n", [b"te"], None),
    "trailer": (b"Trailer: X-T\r\n", [b"trailer"], None),
    "proxy-connection": (b"Proxy-Connection: keep-alive\r\n", [b"proxy-connection"], None),
    "upgrade-without-connection": (b"Upgrade: h2c\r\n", [b"upgrade"], None),
    "proxy-authorization": (b"Proxy-Authorization: Basic c2VjcmV0\r\n", [b"proxy-authorization"], None),
}


@pytest.mark.parametrize("extra,names", [pytest.param(e, n, marks=m or (), id=k) for k, (e, n, m) in HOP_BY_HOP.items()])
async def test_hop_by_hop_headers_never_reach_the_instance(world: World, lane: str, extra: bytes,
                                                           names: list[bytes]) -> None:
    answer, forwarded = await one(world, lane, req(b"/fn/echo/hop", extra, b"X-Kept: yes\r\n"))
    assert answer.status == 200 and len(forwarded) == 1, answer.raw
    got = forwarded[0].names()
    assert [n for n in names if n in got] == [], forwarded[0].raw
    assert forwarded[0].values(b"x-kept") == [b"yes"]


# --- X-Forwarded-* -----------------------------------------------------------------------------------

async def test_the_gateway_sets_x_forwarded_for(world: World, lane: str) -> None:
    _, [got] = await one(world, lane, req(b"/fn/echo/xff"))
    assert got.values(b"x-forwarded-for") == [b"127.0.0.1"]


async def test_the_gateway_sets_x_forwarded_proto_and_host(world: World, lane: str) -> None:
    _, [got] = await one(world, lane, req(b"/fn/echo/xff"))
    assert got.values(b"x-forwarded-proto") == [b"http"] and got.values(b"x-forwarded-host") == [b"gw"]


SPOOFED = {
    "for": (b"X-Forwarded-For: 6.6.6.6\r\n", b"x-forwarded-for", [b"127.0.0.1"]),
    "for-list": (b"X-Forwarded-For: 6.6.6.6, 7.7.7.7\r\n", b"x-forwarded-for", [b"127.0.0.1"]),
    "proto": (b"X-Forwarded-Proto: https\r\n", b"x-forwarded-proto", [b"http"]),
    "host": (b"X-Forwarded-Host: evil.example\r\n", b"x-forwarded-host", [b"gw"]),
}


@pytest.mark.parametrize("extra,name,want", SPOOFED.values(), ids=SPOOFED.keys())
async def test_a_clients_own_x_forwarded_header_is_dropped(world: World, lane: str, extra: bytes, name: bytes,
                                                           want: list[bytes]) -> None:
    """The peer (127.0.0.1) is not a trusted proxy: what it claims is dropped, the gateway's value stands."""
    _, [got] = await one(world, lane, req(b"/fn/echo/xff", extra))
    assert got.values(name) == want, got.raw


async def test_a_trusted_proxys_x_forwarded_headers_are_kept_and_extended(world: World, lane: str) -> None:
    """A peer in --trusted-proxies (here 127.0.0.0/8): its X-Forwarded-For gets the peer appended, its
    X-Forwarded-Proto and -Host are kept."""
    from ipaddress import ip_network

    from fnsession.gateway import http

    world.listener.limits = http.Limits(trusted_proxies=(ip_network("127.0.0.0/8"),))  # type: ignore[attr-defined]
    _, [got] = await one(world, lane, req(b"/fn/echo/xff", b"X-Forwarded-For: 6.6.6.6\r\n",
                                          b"X-Forwarded-Proto: https\r\n", b"X-Forwarded-Host: app.example\r\n"))
    assert b", ".join(got.values(b"x-forwarded-for")) == b"6.6.6.6, 127.0.0.1", got.raw
    assert got.values(b"x-forwarded-proto") == [b"https"] and got.values(b"x-forwarded-host") == [b"app.example"]
