"""Fuzz the gateway's connection state machine: the real Gateway, Lane, ServerConnection and
UpstreamConnection (_lane.c's read callbacks built with ASan and UBSan, or all in Python), driven
with no socket: a client's bytes in reads of any split, the instance's answers in reads of any
split, either side going away, back-pressure, and the event loop stepped between.

Input: byte 0's low bit picks the path (C or Python); then operations, each an op byte, a length
byte and that many bytes: client bytes, instance bytes (to the upstream connection in use, or the
first), client lost, instance lost, pause/resume writing, a step of the loop.

What stops the run: a crash, a sanitizer report, any exception out of a protocol callback; with
FUZZ_STRICT=1 also a stream to an instance that does not read as whole HTTP/1.1 requests or that
carries an Authorization header, unless the client asked for a tunnel (issue 11's fixed behaviour;
off by default: it has held for a few minutes of fuzzing, not yet for long)."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from types import SimpleNamespace

import atheris
from common import load_sanitized_lane

native = load_sanitized_lane()
with atheris.instrument_imports(include=["fnsession"]):
    from fnsession.gateway import errors, http  # noqa: F401 - http imported here to be instrumented
    from fnsession.gateway.auth import Authenticator, Identity
    from fnsession.gateway.http import Listener, Pool, UpstreamConnection
    from fnsession.gateway.invoke import Invoker
    from fnsession.gateway.routes import Route, Routes
    from fnsession.gateway.server import Gateway
    from fnsession.gateway.session_api import SessionAPI

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from tests.adversarial.harness import Bad, split  # noqa: E402 - after the sanitized module is in place

STRICT = os.environ.get("FUZZ_STRICT") == "1"
TOKEN = "tok-fuzz"
WHO = Identity("system:serviceaccount:team:caller", (), "uid-1", "team")
A, B = ("10.0.0.1", 8080), ("10.0.0.2", 8080)
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)


async def _api():  # type: ignore[no-untyped-def]
    from kubernetes_asyncio.client import ApiClient
    return ApiClient()  # never called: the Authenticator's API calls are replaced below


CLIENTS = SimpleNamespace(api=LOOP.run_until_complete(_api()))


class FakeTransport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer, self.written, self.closed, self.reading = peer, bytearray(), False, True
        self.protocol = None

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.written += data

    def writelines(self, parts) -> None:  # type: ignore[no-untyped-def]
        for p in parts:
            self.write(p)

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default=None):  # type: ignore[no-untyped-def]
        return self.peer if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high=None, low=None) -> None:  # type: ignore[no-untyped-def]
        pass


def world(python: bool):  # type: ignore[no-untyped-def]
    clients = CLIENTS
    routes = Routes(clients)  # type: ignore[arg-type]
    routes.functions[("team", "echo")] = {"sessionAffinity": "HEADER_FIELD",
                                          "sessionAffinityConfig": {"affinityHeaderFieldName": "x-session-id"}}
    routes.functions[("team", "web")] = {"sessionAffinity": "GENERATED_COOKIE"}
    now = time.time()
    routes.sessions[("team", "echo", "s-1")] = Route("echo-s1", A[0], A[1], math.inf, math.inf, now)
    routes.sessions[("team", "echo", "s-2")] = Route("echo-s2", B[0], B[1], math.inf, math.inf, now)
    routes.sessions[("team", "web", "c" * 32)] = Route("web-c", A[0], A[1], math.inf, math.inf, now)
    auth = Authenticator(clients, "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]
    auth.tokens.put((TOKEN, None), WHO)
    auth.reviews.put((WHO, "get"), True)
    auth.reviews.put((WHO, "create"), False)

    async def unknown(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise errors.unauthenticated("not a token this run knows")  # no API server here

    auth.by_token = unknown  # type: ignore[method-assign]
    pool = Pool(LOOP)
    ups: list[UpstreamConnection] = []

    def connect(address):  # type: ignore[no-untyped-def]
        up = UpstreamConnection(pool, address)
        up.connection_made(FakeTransport(address))
        ups.append(up)
        return up

    async def open_(address):  # type: ignore[no-untyped-def]
        return connect(address)

    pool.open = open_  # type: ignore[method-assign]
    for address in (A, A, B):  # kept-alive connections, so the lane can take requests
        up = connect(address)
        up.used = 1
        pool.give(up)
    invoker = Invoker(clients, SessionAPI(clients, changes=routes), routes, pool)  # type: ignore[arg-type]
    gateway = Gateway(None, auth, invoker)  # type: ignore[arg-type]
    if python:
        gateway.lane.use_python()
    listener = Listener(gateway.handle, LOOP, gateway.lane)
    return gateway, listener, ups


def step() -> None:
    LOOP.run_until_complete(asyncio.sleep(0))


def TestOneInput(data: bytes) -> None:  # atheris's name for the entry point
    if not data:
        return
    _gateway, listener, ups = world(bool(data[0] & 1))
    conn = listener()
    client = FakeTransport(("127.0.0.1", 40000))
    conn.connection_made(client)
    client_gone = False
    tunnelled = False  # the client's connection became a tunnel: its bytes are the client's to send as it likes
    gone: set[int] = set()
    at = 1
    while at + 2 <= len(data):
        op, n = data[at] % 6, data[at + 1]
        payload = data[at + 2:at + 2 + n]
        at += 2 + n
        if op == 0:
            if not client_gone and client.reading and not client.closed and payload:
                conn.data_received(payload)
        elif op == 1:
            live = [u for u in ups if id(u) not in gone and not u.transport.closed]
            busy = [u for u in live if u.exchange is not None or u.flight is not None]
            target = (busy or live or [None])[0]
            if target is not None and target.transport.reading and payload:
                target.data_received(payload)
        elif op == 2:
            if not client_gone:
                client_gone = True
                client.closed = True
                conn.connection_lost(None)
        elif op == 3:
            live = [u for u in ups if id(u) not in gone]
            busy = [u for u in live if u.exchange is not None or u.flight is not None]
            target = (busy or live or [None])[0]
            if target is not None:
                gone.add(id(target))
                target.transport.closed = True
                target.connection_lost(None)
        elif op == 4:
            if not client_gone:
                (conn.pause_writing if payload[:1] < b"\x80" else conn.resume_writing)()
        else:
            step()
        tunnelled = tunnelled or conn.tunnel is not None or conn.upgraded is not None
        if client.closed and not client_gone:  # the gateway closed it: asyncio reports the loss
            client_gone = True
            conn.connection_lost(None)
        for u in ups:
            if u.transport.closed and id(u) not in gone:
                gone.add(id(u))
                u.connection_lost(None)
    for _ in range(3):
        step()
    if not client_gone:
        client.closed = True
        conn.connection_lost(None)
    for u in ups:
        if id(u) not in gone:
            u.transport.closed = True
            u.connection_lost(None)
    for task in [t for t in asyncio.all_tasks(LOOP) if not t.done()]:
        task.cancel()
    step()
    if STRICT and not tunnelled:
        for u in ups:
            raw = bytes(u.transport.written)
            try:
                msgs, rest = split(raw, response=False)
            except Bad as exc:
                raise AssertionError(f"an instance received a malformed stream ({exc}): {raw!r}") from None
            heads = [m.raw.partition(b"\r\n\r\n")[0] for m in msgs] + [rest.partition(b"\r\n\r\n")[0]]
            for head in heads:  # (the token's text may be anywhere the client put it: a body, another header)
                if b"\nauthorization:" in head.lower():
                    raise AssertionError(f"the caller's credential reached an instance in a head: {raw!r}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
