"""The gateway's HTTP/1.1 layer (fnsession.gateway.http) on loopback, with no cluster: a real client
socket, the proxy's protocols, and an aiohttp server standing in for a function instance.

What is shown: bodies both ways (length and chunked), streaming that is not held back, keep-alive
reuse of upstream connections, pipelined requests answered in order, HEAD, a close-delimited
answer, an instance that goes away (502 before the head, a cut connection after it), a client that
goes away (the exchange ends and its upstream connection is not reused), WebSocket tunnels,
``Expect: 100-continue``, malformed and oversized heads, and FC's form of a function error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
import uvloop
from aiohttp import WSMsgType, web

from fnsession.gateway import http

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: the gateway runs on uvloop, whose transports differ from asyncio's."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


async def instance_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"method": request.method, "path": request.path_qs, "body": body.decode(),
                                  "headers": {k.lower(): v for k, v in request.headers.items()}})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.2)
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="function says no")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
        return sock

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def die(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(1)
        return web.Response(text="never")

    app = web.Application()
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ws", ws)
    app.router.add_get("/hang", hang)
    app.router.add_get("/die", die)
    return app


class Proxy:
    """A minimal gateway: every request goes to the one instance; ``/local`` is answered by the proxy."""

    def __init__(self, upstream: http.Address) -> None:
        self.loop = asyncio.get_running_loop()
        self.pool = http.Pool(self.loop)
        self.upstream = upstream
        self.ended: list[http.Exchange] = []
        self.exchanges: list[http.Exchange] = []
        self.opening: set[asyncio.Task[None]] = set()

    def handle(self, req: http.Request) -> None:
        req.request_id = "rid-1"
        if req.path == "/local":
            req.conn.respond(req, 200, [("x-fc-request-id", req.request_id)], b'{"local":true}')
            return
        ex = http.Exchange(req, self.pool, self.upstream, req.target.encode(), b"x-fc-request-id: rid-1\r\n",
                           sdk=req.path.startswith("/status/4"), done=self.ended.append)
        self.exchanges.append(ex)
        if (task := ex.start()) is not None:
            self.opening.add(task)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Proxy, int]]:
    runner = web.AppRunner(await instance_app(), handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy = Proxy(("127.0.0.1", up_port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: http.ServerConnection(proxy.handle, loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield proxy, port
    server.close()
    await runner.cleanup()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if status < 200 or status in (204, 304):
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
    return status, headers, await reader.read()


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await read_response(reader)
    finally:
        writer.close()


def body_json(body: bytes) -> dict[str, Any]:
    return json.loads(body)


async def test_a_body_goes_up_and_the_answer_comes_back_with_the_request_id(setup: tuple[Proxy, int]) -> None:
    proxy, port = setup
    status, headers, body = await request(port, b"POST /echo/a?x=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer secret\r\n"
                                                b"X-Custom: yes\r\nContent-Length: 5\r\n\r\nhello")
    answer = body_json(body)
    assert status == 200 and headers["x-fc-request-id"] == "rid-1"
    assert answer["method"] == "POST" and answer["path"] == "/echo/a?x=1" and answer["body"] == "hello"
    assert answer["headers"]["x-custom"] == "yes" and answer["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert "authorization" not in answer["headers"], "the caller's credential reached the function"
    assert len(proxy.ended) == 1


async def test_a_chunked_upload_is_streamed_up(setup: tuple[Proxy, int]) -> None:
    _, port = setup
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PUT /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.sleep(0.1)
    writer.write(b"2\r\nde\r\n0\r\n\r\n")
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 200 and body_json(body)["body"] == "abcde"


async def test_keep_alive_reuses_one_upstream_connection_and_pipelined_requests_keep_their_order(
        setup: tuple[Proxy, int]) -> None:
    proxy, port = setup
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: gw\r\n\r\n" % i for i in range(5)))
    paths = [body_json((await read_response(reader))[2])["path"] for _ in range(5)]
    assert paths == [f"/echo/{i}" for i in range(5)]
    for _i in range(3):
        writer.write(b"GET /local HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await read_response(reader))[2] == b'{"local":true}'
    writer.close()
    assert proxy.pool.opened == 1 and proxy.pool.size() == 1


async def test_a_stream_is_not_held_back(setup: tuple[Proxy, int]) -> None:
    _, port = setup
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: gw\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"Transfer-Encoding: chunked" in head and b"text/event-stream" in head
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = await asyncio.wait_for(reader.readuntil(b"data: 0\n\n"), 5)
    assert loop.time() - started < 0.15, "the first event waited for the next"
    assert first.endswith(b"data: 0\n\n")
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert b"data: 2" in rest
    writer.close()


async def test_head_and_a_close_delimited_answer(setup: tuple[Proxy, int]) -> None:
    _, port = setup
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /echo HTTP/1.1\r\nHost: gw\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length" in head
    writer.write(b"GET /local HTTP/1.1\r\nHost: gw\r\n\r\n")  # the connection is still in step
    assert (await read_response(reader))[2] == b'{"local":true}'
    writer.close()
    status, _headers, body = await request(port, b"GET /echo HTTP/1.0\r\nHost: gw\r\n\r\n")
    assert status == 200 and body_json(body)["path"] == "/echo"


async def test_an_instance_that_is_gone_gets_502_in_fcs_form(setup: tuple[Proxy, int]) -> None:
    proxy, port = setup
    proxy.upstream = ("127.0.0.1", 1)  # nothing listens there
    status, headers, body = await request(port, b"GET /echo HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 502 and body_json(body)["Code"] == "FunctionNotReachable" and headers["x-fc-request-id"] == "rid-1"
    assert len(proxy.ended) == 1


async def test_an_instance_that_drops_the_connection_gets_502(setup: tuple[Proxy, int]) -> None:
    proxy, port = setup
    status, _, body = await request(port, b"GET /die HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 502 and body_json(body)["RequestId"] == "rid-1"
    assert len(proxy.ended) == 1 and proxy.pool.size() == 0


async def test_a_client_that_goes_away_ends_the_exchange(setup: tuple[Proxy, int]) -> None:
    proxy, port = setup
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: gw\r\n\r\n")
    await asyncio.sleep(0.2)
    assert proxy.ended == []
    writer.close()
    for _ in range(50):
        if proxy.ended:
            break
        await asyncio.sleep(0.02)
    assert len(proxy.ended) == 1 and proxy.pool.size() == 0, "a half-used upstream connection went back to the pool"


async def test_cutting_an_exchange_closes_the_client_connection(setup: tuple[Proxy, int]) -> None:
    proxy, port = setup
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hang HTTP/1.1\r\nHost: gw\r\n\r\n")
    await asyncio.sleep(0.2)
    proxy.exchanges[-1].cut()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    assert len(proxy.ended) == 1


async def test_a_websocket_is_tunnelled(setup: tuple[Proxy, int]) -> None:
    proxy, port = setup
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 101 and headers["upgrade"].lower() == "websocket" and headers["x-fc-request-id"] == "rid-1"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    mask = b"\x01\x02\x03\x04"
    text = b"hi"
    writer.write(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
    frame = await asyncio.wait_for(reader.readexactly(2 + len(b"echo:hi")), 5)
    assert frame == bytes([0x81, 7]) + b"echo:hi"
    assert proxy.ended == [], "a tunnel is in flight until it closes"
    writer.close()
    for _ in range(50):
        if proxy.ended:
            break
        await asyncio.sleep(0.02)
    assert len(proxy.ended) == 1


async def test_expect_100_continue_is_answered_by_the_gateway(setup: tuple[Proxy, int]) -> None:
    _, port = setup
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 200 and body_json(body)["body"] == "ok"


async def test_a_function_error_reaches_fcs_sdk_as_200_with_its_status(setup: tuple[Proxy, int]) -> None:
    _, port = setup
    status, headers, body = await request(port, b"GET /status/404 HTTP/1.1\r\nHost: gw\r\n\r\n")  # sdk=True here
    assert status == 200 and headers["x-fc-error-type"] == "FunctionError" and headers["x-fc-function-status"] == "404"
    assert body == b"function says no"
    status, headers, _ = await request(port, b"GET /status/503 HTTP/1.1\r\nHost: gw\r\n\r\n")  # not sdk: as is
    assert status == 503 and "x-fc-error-type" not in headers


async def test_malformed_and_oversized_requests_are_refused(setup: tuple[Proxy, int]) -> None:
    _, port = setup
    status, _, body = await request(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400 and b"malformed" in body
    big = b"X-Big: " + b"a" * (http.MAX_HEAD_BYTES + 1) + b"\r\n"
    status, _, _ = await request(port, b"GET /echo HTTP/1.1\r\nHost: gw\r\n" + big + b"\r\n")
    assert status == 431


def test_request_ids_are_uuid_shaped_and_distinct() -> None:
    ids = http.RequestIds()
    a, b = ids.next(), ids.next()
    assert a != b and [len(p) for p in a.split("-")] == [8, 4, 4, 4, 12]


def test_request_id_lines_count_on_from_one_across_the_blocks_of_4096() -> None:
    ids = http.RequestIds()
    lines = [ids.header() for _ in range(8200)]
    assert all(line.startswith(b"x-fc-request-id: " + ids.prefix.encode()) and line.endswith(b"\r\n") for line in lines)
    assert [int(line[17:-2].decode().split("-")[-1], 16) for line in lines] == list(range(1, 8201))
    assert ids.next() == f"{ids.prefix}{8201:012x}", "the full path's ids go on with the same counter"


class RawInstance(asyncio.Protocol):
    """An instance that answers every request with fixed bytes, written in the pieces given."""

    pieces: ClassVar[list[bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            for piece in self.pieces:
                self.transport.write(piece)  # type: ignore[attr-defined]


@pytest.mark.parametrize("pieces", [
    [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"],       # whole: forwarded as is
    [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-", b"Length: 5\r\n\r\nhel", b"lo"],  # in pieces: parsed
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"],             # two lengths: refused
], ids=["whole", "pieces", "two-lengths"])
async def test_an_answer_in_one_piece_or_many_reaches_the_client_the_same(pieces: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    RawInstance.pieces = pieces
    upstream = await loop.create_server(RawInstance, "127.0.0.1", 0)
    proxy = Proxy(("127.0.0.1", upstream.sockets[0].getsockname()[1]))
    server = await loop.create_server(lambda: http.ServerConnection(proxy.handle, loop), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        for _ in range(3):
            writer.write(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            status, headers, body = await read_response(reader)
            if len(pieces) == 1 and b"Length: 6" in pieces[0]:
                assert status == 502
                break
            assert status == 200 and body == b"hello" and headers["x-fc-request-id"] == "rid-1"
            assert headers["content-type"] == "text/plain"
        else:
            assert proxy.pool.opened == 1, "the upstream connection was not kept alive"
    finally:
        writer.close()
        server.close()
        upstream.close()
