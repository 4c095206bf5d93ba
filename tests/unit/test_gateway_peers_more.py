"""Signature nonces among the gateway's processes (fnsession.gateway.peers), after a third review: peers
that do not answer, connections not read, membership churn, copies and hand-offs of large tables, and
clocks that differ. Real sockets on loopback, no cluster (helpers: tests/unit/test_gateway_peers.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from fnsession.gateway import peers as peers_module
from fnsession.gateway.peers import Link, Verdict
from tests.unit.test_gateway_peers import PORTS, Clock, Cluster, cluster, connect, k, opened, peer  # noqa: F401 - a fixture


async def test_a_peer_that_accepts_but_never_says_hello_is_backed_off() -> None:
    """The ask's time does not cut the hello short (so that it is never counted): a timed-out ask or
    hello marks the peer down, and the next asks do not wait for it."""
    accepted = 0

    async def wedged(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await asyncio.sleep(30)
    server = await asyncio.start_server(wedged, "127.0.0.60", 39398)
    clock = Clock()

    async def hello() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        reader, writer = await asyncio.open_connection("127.0.0.60", 39398)
        writer.write(b"A token\n")
        return reader, writer, (await reader.readline()).decode()
    link = Link(hello, clock=clock)
    try:
        assert await link.ask(b"C x 1.0\n") is None
        assert link.failures == 1 and link.down_until > clock.now
        assert await link.ask(b"C y 1.0\n") is None  # down: not tried, not waited for
        assert accepted == 1 and link.failures == 1
    finally:
        link.shut()
        server.close()


async def test_a_pod_that_accepts_but_never_says_hello_is_not_waited_for_on_every_claim(cluster: Cluster) -> None:
    accepted = 0

    async def wedged(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await asyncio.sleep(30)
    server = await asyncio.start_server(wedged, "127.0.0.63", cluster.port)
    try:
        [a] = await cluster.pod("127.0.0.2")
        a.set_pods(["127.0.0.63"])
        cluster.settle()
        assert await a.claim(k("x")) is Verdict.UNSURE
        link = a.link("pod:127.0.0.63")
        assert link.failures == 1 and link.down_until > cluster.clock.now
        assert await a.claim(k("y")) is Verdict.UNSURE and accepted == 1  # not tried while it is down
    finally:
        server.close()


async def test_a_connect_that_never_ends_is_backed_off() -> None:
    opened = 0

    async def never() -> Any:
        nonlocal opened
        opened += 1
        await asyncio.sleep(30)
    clock = Clock()
    link = Link(never, clock=clock)
    assert await link.ask(b"L x 1.0\n") is None
    assert link.failures == 1 and link.down_until > clock.now
    assert await link.ask(b"L y 1.0\n") is None and opened == 1
    link.shut()


async def test_a_connected_peer_that_stops_answering_is_backed_off() -> None:
    lines: list[bytes] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            lines.append(line)
    server = await asyncio.start_server(mute, "127.0.0.61", 39398)
    clock = Clock()
    link = Link(lambda: opened("127.0.0.61", 39398), clock=clock)
    try:
        assert await link.ask(b"L x 1.0\n") is None
        assert link.failures == 1 and link.down_until > clock.now
        assert await link.ask(b"L y 1.0\n") is None
        await asyncio.sleep(0.05)
        assert lines == [b"L x 1.0\n"]  # the second was not even sent
    finally:
        link.shut()
        server.close()


async def test_a_pod_that_flaps_out_and_back_during_the_hello_leaves_no_orphaned_connection(cluster: Cluster) -> None:
    [b] = await cluster.pod("127.0.0.3")
    a = peer("127.0.0.2", cluster.port, cluster.clock)
    await a.serve()
    try:
        for _ in range(5):
            a.set_pods(["127.0.0.3"])
            await asyncio.sleep(0)  # (the hello is under way)
            a.set_pods([])
        a.set_pods(["127.0.0.3"])
        await asyncio.sleep(0.3)  # (every hello done)
        assert b.connections == 1, f"{b.connections} connections held at the other pod for 1 link"
        assert a.link("pod:127.0.0.3").writer is not None
    finally:
        a.close()


async def test_a_link_shut_during_its_hello_keeps_nothing() -> None:
    release = asyncio.Event()

    async def slow_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        await release.wait()
        writer.write(b"A b\n")
        await writer.drain()
        await reader.read()
    server = await asyncio.start_server(slow_hello, "127.0.0.62", 39398)

    async def hello() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        reader, writer = await asyncio.open_connection("127.0.0.62", 39398)
        writer.write(b"A token\n")
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        return reader, writer, line.decode()
    link = Link(hello, clock=Clock())
    try:
        asking = asyncio.create_task(link.ask(b"L x 1.0\n"))
        await asyncio.sleep(0.1)
        link.shut()
        release.set()
        assert await asking is None  # (told None, not cancelled)
        await asyncio.sleep(0.05)
        assert link.writer is None and link.reader_task is None
        assert await link.ask(b"L y 1.0\n") is None
    finally:
        server.close()



async def eventually(condition: Any, within: float = 5.0) -> bool:
    """Whether ``condition()`` comes true within ``within`` seconds (a bound for a stuck state, not a speed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_peer_that_does_not_read_its_answers_does_not_hold_a_connection_slot(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers stall (the peer does not read them), the requests go on: the connection is dropped and
    its slot freed, though the peer is still there (it used to wait for ever to queue one more answer)."""
    monkeypatch.setattr(peers_module, "MAX_PENDING", 4)
    monkeypatch.setattr(peers_module, "STALLED", 0.2)
    [a] = await cluster.pod("127.0.0.2")
    for s in a.servers[-1].sockets:  # (small buffers: less traffic fills them)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.2", cluster.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"A peer:127.0.0.3\n")
        assert await reader.readline() == b"A 127.0.0.2\n"
        assert a.connections == 1
        line = b"L " + k("x").encode() + b" 900.0\n"
        for _ in range(600):  # (until the answers outgrow the buffers on the way: then they stall)
            if a.connections == 0 or writer.is_closing():
                break
            writer.write(line * 1000)  # and never reads an answer
            await asyncio.sleep(0.01)
        assert await eventually(lambda: a.connections == 0), "the slot of a peer that reads no answer is held"
    finally:
        writer.transport.abort()


async def test_pods_whose_clocks_differ_keep_a_nonce_until_the_same_instant() -> None:
    """A nonce is told with the Unix time it must be kept until (its date plus the window), not with
    seconds from the teller's clock: a pod whose clock is behind keeps it until its own date check
    refuses the request, so a replay to it in between is refused too; so do copies and hand-offs."""
    port = next(PORTS)
    fast, slow = Clock(), Clock()
    fast.now += 30.0  # the teller's clock is 30 s ahead
    a = peer("127.0.0.2", port, fast)
    b = peer("127.0.0.3", port, slow)
    procs = [a, b]
    try:
        for p in procs:
            await p.serve()
        a.set_pods(["127.0.0.3"])
        b.set_pods(["127.0.0.2"])
        for c in (fast, slow):
            c.now += 6.0  # (settled)
        until = slow.now + a.guard.window  # a request dated now (by the true time, b's)
        assert a.guard.mark(k("n"), until) and await a.claim(k("n"), until) is Verdict.NEW
        c = peer("127.0.0.4", port, slow)
        procs.append(c)
        await c.serve()
        c.set_pods(["127.0.0.2"])
        assert await c.copy_from_peers() == (1, 1)
        d = peer("127.0.0.5", port, slow)
        procs.append(d)
        await d.serve()
        a.set_pods(["127.0.0.3", "127.0.0.5"])
        await asyncio.sleep(0.1)  # (the hello)
        assert await a.hand_off() == 2
        for c_ in (fast, slow):
            c_.now = until - 5 + (30.0 if c_ is fast else 0.0)  # b's date check still takes the request
        for p in (b, c, d):
            assert k("n") in p.guard, p.name  # (kept 30 s short with seconds from a's clock)
        assert not b.guard.mark(k("n"))
    finally:
        for p in procs:
            p.close()


async def test_an_expiry_on_the_wire_is_clamped_and_must_be_a_plain_number(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    reader, writer = await connect("127.0.0.2", cluster.port, b"peer:127.0.0.3")
    far, past = cluster.clock.now + 10 * a.guard.window, cluster.clock.now - 100
    writer.write(b"C %s %.1f\nC %s %.1f\n" % (k("far").encode(), far, k("past").encode(), past))
    assert await reader.readline() == b"N\n" and await reader.readline() == b"N\n"
    assert k("far") in a.guard and k("past") in a.guard  # (kept at least to the end of this slot)
    cluster.clock.now += 2 * a.guard.window + 2 * a.guard.BUCKET
    assert k("far") not in a.guard  # at most twice the window
    for garbage in (b"1e9", b"1234567890123.0", b"+5", b"5.", b"5.1234", b"0x10"):
        writer.write(b"C " + k("x").encode() + b" " + garbage + b"\n")
        assert await reader.read() == b"", garbage
        writer.close()
        reader, writer = await connect("127.0.0.2", cluster.port, b"peer:127.0.0.3")
    writer.close()
    assert k("x") not in a.guard


async def test_a_process_whose_copy_was_not_whole_stays_unsure_until_a_whole_copy_or_twice_the_window(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "COPY_AGAIN", 0.05, raising=False)
    [b] = await cluster.pod("127.0.0.3")
    cluster.settle()
    assert await cluster.take(b, k("used")) is Verdict.NEW
    [a] = await cluster.pod("127.0.0.2")
    a.set_pods(["127.0.0.3", "127.0.0.9"])  # 127.0.0.9 cannot be reached: its copy fails
    assert await a.copy_from_peers() == (1, 2)
    cluster.settle()
    assert not a.settled()
    assert await cluster.take(a, k("fresh")) is Verdict.UNSURE  # (claimed in the API server too)
    cluster.clock.now += 2 * a.guard.window
    assert a.settled()  # what it could have missed has expired
    # or a later copy that is whole
    [c] = await cluster.pod("127.0.0.4")
    c.set_pods(["127.0.0.3", "127.0.0.9"])
    assert await c.copy_from_peers() == (1, 2)
    cluster.settle()
    assert not c.settled()
    c.set_pods(["127.0.0.3"])  # (the pod that could not be reached is gone)
    cluster.settle()
    assert await eventually(c.settled)
    assert await cluster.take(c, k("fresh-2")) is Verdict.NEW


@pytest.fixture
def short_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """The base times too short for the tables here: each nonce adds to them."""
    monkeypatch.setattr(peers_module, "COPY_TIMEOUT", 0.1)
    monkeypatch.setattr(peers_module, "HAND_OFF_TIMEOUT", 0.1)
    monkeypatch.setattr(peers_module, "PER_ENTRY", 100e-6, raising=False)


@pytest.mark.usefixtures("short_times")
async def test_a_large_table_is_copied_in_a_time_that_grows_with_it(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    for n in range(100_000):
        a.guard.mark(k(f"old-{n}"))
    b = await cluster.pod("127.0.0.3", workers=2)
    for p in b:
        assert await p.copy_from_peers() == (2, 2)
    assert len(b[0].guard) == len(b[1].guard) == 100_000


@pytest.mark.usefixtures("short_times")
async def test_a_large_table_is_handed_off_in_a_time_that_grows_with_it(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    b = await cluster.pod("127.0.0.3", workers=2)
    [c] = await cluster.pod("127.0.0.4")
    await asyncio.sleep(0.1)  # (the hellos)
    for n in range(100_000):
        c.guard.mark(k(f"c-{n}"))
    assert await c.hand_off() == 2
    assert all(k("c-0") in p.guard and k("c-99999") in p.guard for p in [a, *b])
