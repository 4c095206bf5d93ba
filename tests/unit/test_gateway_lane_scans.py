"""The lane's two scans take the same requests and answers and read them the same: the C module
(``fnsession.gateway._lane``) and the pure-Python ones (lane.Lane.parse, llhttp with Python callbacks;
http.whole_answer),
compared on generated messages, near-misses included (bare LFs, control characters, two lengths,
framing headers, bytes after the body, a second message). What either takes, the other takes too,
with the same method, target, credential, namespace, session id, forwarded head and body."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fnsession.gateway.http import whole_answer
from fnsession.gateway.lane import Lane, native

pytestmark = pytest.mark.skipif(native is None, reason="fnsession.gateway._lane is not built (no C compiler)")


def llhttp_lane() -> Lane:
    return Lane(None, SimpleNamespace(routes=None, limit=200, pool=SimpleNamespace(idle={})), None)  # type: ignore[arg-type]


NAMES = [b"Host", b"host", b"X-Session-Id", b"x-session-id", b"Authorization", b"AUTHORIZATION", b"Accept",
         b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection", b"Expect", b"Upgrade", b"TE",
         b"X-Fnsession-Namespace", b"Cookie", b"X Bad", b"X:Bad", b"", b"X-\x01"]
VALUES = [b"gw", b"s-1", b"Bearer tok", b"keep-alive", b"close", b"chunked", b"100-continue", b"5", b"0", b" 7 ",
          b"a\tb", b"caf\xc3\xa9", b"x\x00y", b"x\ry", b"", b"  padded  ", b"12345678901234567890"]
# long values, whose bytes _lane.c reads sixteen and eight at a time: a stray byte anywhere in a word, or at its edges
LONG = st.lists(st.sampled_from([b"a", b"a", b"a", b"Z", b" ", b"\t", b"\x80", b"\xff", b"\x7f", b"\x1f", b"\x00",
                                 b"\r"]), min_size=7, max_size=70).map(b"".join)
header = st.tuples(st.sampled_from(NAMES), st.one_of(st.sampled_from(VALUES), LONG),
                   st.sampled_from([b"\r\n", b"\r\n", b"\n"]))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"get", b"FOO"]))
    target = draw(st.sampled_from([b"/fn/echo/", b"/fn/echo/a?x=1", b"/fn/echo", b"*", b"http://h/fn/echo/",
                                   b"/fn/e\xc3\xa9", b"/fn/echo/a b", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"]))
    headers = [(b"Host", b"gw", b"\r\n")] if draw(st.booleans()) else []
    headers += draw(st.lists(header, max_size=6))
    body = draw(st.sampled_from([b"", b"hello", b"hi\r\n"]))
    if body and draw(st.booleans()):
        headers.append((b"Content-Length", str(len(body.rstrip() if draw(st.booleans()) else body)).encode(), b"\r\n"))
    head = b"".join(n + b": " + v + e for n, v, e in draw(st.permutations(headers)))
    tail = draw(st.sampled_from([b"", b"", b"\r\n", b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n", b"GE"]))
    return method + b" " + target + b" " + version + b"\r\n" + head + b"\r\n" + body + tail


@given(requests(), st.sampled_from([b"x-session-id", b"host", b"", b"cookie"]))
@settings(max_examples=3000, deadline=None)
@example(b"GET /fn/echo/ HTTP/1.1\r\nHost: gw\r\nx-session-id: s-1\r\nAuthorization: Bearer t\r\n\r\n", b"x-session-id")
@example(b"POST /fn/echo/ HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello", b"")
@example(b"GET /fn/echo/ HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\nauthorization: a\r\n\r\n", b"")
@example(b"GET /fn/echo/ HTTP/1.1\r\nHost: gw\r\nX-Session-Id:  7 \r\n\r\n", b"x-session-id")  # found in CI
def test_both_scans_take_the_same_requests_and_read_them_alike(data: bytes, want: bytes) -> None:
    xff = b"X-Forwarded-For: 10.0.0.1\r\n"
    expected, got = llhttp_lane().parse(data, want, xff), native.scan(data, want, xff)
    if expected is None or got is None:
        assert got is expected
    else:  # C forwards header lines as they came, llhttp's callbacks rebuild them: the same fields
        assert got[:4] == expected[:4] and fields(got[4]) == fields(expected[4])
        # given what a connection's last request named (``last``), both return the request for the
        # instance alone when this one names the same four, and all five when any one differs
        for scan, first in ((native.scan, got), (llhttp_lane().parse, expected)):
            assert scan(data, want, xff, first[:4]) == first[4]
            for i in range(4):
                other = (*first[:i], b"other" if first[i] is None else None, *first[i + 1:4])
                assert scan(data, want, xff, other) == first
            assert scan(data, want, xff, None) == first


def test_a_last_that_is_not_four_items_is_a_type_error() -> None:
    ok = b"GET /fn/echo/ HTTP/1.1\r\nHost: gw\r\n\r\n"
    for last in ((b"echo", None, None), [b"echo", None, None, None], b"echo"):
        with pytest.raises(TypeError):
            native.scan(ok, b"", b"", last)
    assert native.scan(ok, b"", b"", (b"echo", None, None, None)) == native.scan(ok, b"", b"")[4]


def fields(request: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    return line, [(n, v.strip(b" \t")) for n, _, v in (x.partition(b":") for x in lines)], body


def test_what_the_scans_take_and_leave() -> None:
    lane = llhttp_lane()
    ok = b"GET /fn/echo/a HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\nx-session-id: s-1\r\nConnection: keep-alive\r\nX-A: b\r\n\r\n"
    xff = b"X-Forwarded-For: 10.0.0.1\r\n"
    post = b"POST /fn/echo?q=/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi"
    for scan in (native.scan, lane.parse):
        assert scan(ok, b"x-session-id", xff) == (
            b"echo", b"Bearer t", None, b"s-1",
            b"GET /a HTTP/1.1\r\nHost: gw\r\nx-session-id: s-1\r\nX-A: b\r\n" + xff + b"X-Forwarded-Host: gw\r\n\r\n")
        assert scan(post, b"", xff) == (
            b"echo", None, None, None,
            b"POST /?q=/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n" + xff + b"X-Forwarded-Host: gw\r\n\r\nhi")
        for bad in (ok.replace(b"X-A: b", b"Transfer-Encoding: chunked"), ok.replace(b"keep-alive", b"close"),
                    ok.replace(b"X-A: b", b"Authorization: again"), ok + b"GET", ok.replace(b"HTTP/1.1", b"HTTP/1.0"),
                    ok.replace(b"X-A: b\r\n", b"X-A: b\n"), ok.replace(b"GET", b"HEAD"), ok.replace(b"/fn/echo", b"/fn/e%63ho"),
                    ok.replace(b"/fn/echo/a", b"/fn/"), ok.replace(b"/fn/echo/a", b"/api/echo"),
                    ok.replace(b"X-A: b", b"X-Forwarded-For: 6.6.6.6"), ok.replace(b"X-A: b", b"Proxy-Connection: x"),
                    ok.replace(b"X-A: b", b"Keep-Alive: 5"), ok.replace(b"X-A: b", b"Host: two"),
                    ok.replace(b"X-A: b", b"X-Forwarded-Host: evil")):
            assert scan(bad, b"x-session-id", xff) is None, bad


ANSWER_HEADERS = [b"Content-Type: text/plain", b"Content-Length: 5", b"Content-Length: 5", b"Content-Length: 4",
                  b"Transfer-Encoding: chunked", b"Connection: close", b"Connection: keep-alive", b"X-A: b",
                  b"X-Bad\x01: c", b"Date: Tue, 01 Dec 2026 23:00:00 GMT", b"X-Folded: a\r\n b", b"Keep-Alive: 5",
                  b"Proxy-Authenticate: x", b"Upgrade: h2c", b"Trailer: X", b"Content-Length:  5 ", b"X-E:"]


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 503 Service Unavailable", b"HTTP/1.1 204 No Content",
                                 b"HTTP/1.1 100 Continue", b"HTTP/1.0 200 OK", b"HTTP/1.1 302 Found", b"HTTP/1.1 200",
                                 b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 999 Odd", b"HTTP/1.1 600 X",
                                 b"HTTP/1.1 099 X", b"HTTP/1.1 200 caf\xc3\xa9", b"HTTP/1.1 200 \x01"]))
    headers = draw(st.lists(st.sampled_from(ANSWER_HEADERS), max_size=4))
    ends = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    body = draw(st.sampled_from([b"hello", b"", b"hello\r\n", b"hello" + b"HTTP/1.1 200 OK\r\n",
                                 b"helloHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]))
    return line + b"\r\n" + b"".join(h + ends for h in headers) + b"\r\n" + body


@given(answers())
@settings(max_examples=2000, deadline=None)
@example(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
@example(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nhello")
def test_both_scans_take_the_same_answers(data: bytes) -> None:
    assert native.whole(data, b"x-fc-request-id: r-1\r\n") == whole_answer(data, b"x-fc-request-id: r-1\r\n")


def test_what_is_forwarded_as_it_came_and_what_is_not() -> None:
    extra = b"x-fc-request-id: r-1\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    for whole in (native.whole, whole_answer):
        assert whole(ok, extra) == b"HTTP/1.1 200 OK\r\n" + extra + ok[17:]
        for bad in (ok.replace(b"Content-Type: text/plain", b"X-Folded: a\r\n b"),  # obs-fold
                    ok.replace(b"200 OK", b"999 Odd"), ok.replace(b"200 OK", b"101 Switching Protocols"),
                    ok + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",  # a second answer after it
                    ok.replace(b"Content-Type: text/plain", b"Connection: close"),
                    ok.replace(b"Content-Type: text/plain", b"Keep-Alive: timeout=5"),
                    ok.replace(b"Content-Type: text/plain", b"Proxy-Authenticate: Basic"), ok[:-1]):
            assert whole(bad, extra) is None, bad


def test_the_c_module_reads_by_the_same_hop_by_hop_table() -> None:
    from fnsession.gateway.http import FORWARDED, HOP_BY_HOP
    assert frozenset(native.HOP_BY_HOP) == HOP_BY_HOP and frozenset(native.FORWARDED) == FORWARDED
