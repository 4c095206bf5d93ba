"""Signature nonces claimed among the gateway's processes (fnsession.gateway.peers): real sockets on
loopback (abstract unix sockets for a pod's workers, TCP on 127.0.0.x for pods), no cluster."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from fnsession.gateway import peers as peers_module
from fnsession.gateway import signing
from fnsession.gateway.auth import Authenticator
from fnsession.gateway.errors import FCError
from fnsession.gateway.peers import Link, Peers, TokenVerifier, Verdict, endpoint_addresses, sibling_address
from fnsession.gateway.signing import ReplayGuard

PORTS = itertools.count(39400)


def k(name: str) -> str:
    """A key as the gateway makes them (what peers accept)."""
    return ReplayGuard.key("KEY1", name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def verify(token: str) -> str | None:
    """A stand-in for the TokenReview: a peer's token is ``peer:<its pod name>``."""
    return token.removeprefix("peer:") if token.startswith("peer:") else None


def peer(ip: str, port: int, clock: Clock, **kwargs: Any) -> Peers:
    """A gateway process of the pod ``ip`` (its name too), on 127.0.0.x."""
    kwargs.setdefault("settle", 5.0)
    return Peers(ReplayGuard(clock=clock), peer_port=port, host=ip, scope=f"-test-{ip}", clock=clock, verify=verify,
                 token=lambda: f"peer:{ip}", name=ip, **kwargs)


class Cluster:
    """Gateway pods on 127.0.0.<n>, each with ``workers`` processes, all in this event loop."""

    def __init__(self, port: int, clock: Clock) -> None:
        self.port, self.clock = port, clock
        self.pods: dict[str, list[Peers]] = {}

    async def pod(self, ip: str, workers: int = 1, copy: bool = False) -> list[Peers]:
        procs = [peer(ip, self.port, self.clock, index=i, workers=workers) for i in range(workers)]
        for p in procs:
            await p.serve()
        self.pods[ip] = procs
        self.membership()
        if copy:
            for p in procs:
                await p.copy_from_peers()
        return procs

    def membership(self) -> None:
        for ip, procs in self.pods.items():
            for p in procs:
                p.set_pods(other for other in self.pods if other != ip)

    def settle(self) -> None:
        self.clock.now += 6.0

    async def take(self, proc: Peers, key: str) -> Verdict:
        """What the gateway does with a signed request's nonce: mark it here, then ask the others."""
        if not proc.guard.mark(key):
            return Verdict.SEEN
        return await proc.claim(key)

    def close(self) -> None:
        for procs in self.pods.values():
            for p in procs:
                p.close()


def drop(c: Cluster, ip: str) -> None:
    """Pod ``ip`` is gone."""
    for p in c.pods.pop(ip):
        p.close()
    c.membership()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster(next(PORTS), Clock())
    yield c
    c.close()


async def test_a_nonce_taken_by_one_process_is_refused_by_every_other_worker_and_pod(cluster: Cluster) -> None:
    a0, a1 = await cluster.pod("127.0.0.2", workers=2)
    [b0] = await cluster.pod("127.0.0.3")
    cluster.settle()
    assert await cluster.take(a0, k("k1")) is Verdict.NEW
    assert await cluster.take(a1, k("k1")) is Verdict.SEEN  # a sibling worker
    assert await cluster.take(b0, k("k1")) is Verdict.SEEN  # another pod
    assert await cluster.take(a0, k("k1")) is Verdict.SEEN  # itself
    # a nonce first taken at the other pod reaches both workers of the first (the pod relays it)
    assert await cluster.take(b0, k("k2")) is Verdict.NEW
    assert not a0.guard.mark(k("k2")) and not a1.guard.mark(k("k2"))
    assert a0.claims[Verdict.NEW] == 1 and b0.claims[Verdict.NEW] == 1


async def test_two_copies_sent_to_two_processes_at_once_are_never_both_taken(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    [b] = await cluster.pod("127.0.0.3")
    cluster.settle()
    for n in range(50):
        key = k(f"same-{n}")
        verdicts = await asyncio.gather(cluster.take(a, key), cluster.take(b, key))
        assert verdicts.count(Verdict.NEW) <= 1, verdicts


async def test_the_other_pods_unknown_changed_lately_or_silent_make_it_unsure(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    assert await cluster.take(a, k("k0")) is Verdict.UNSURE  # just started: settling
    cluster.settle()
    assert await cluster.take(a, k("k1")) is Verdict.NEW
    a.set_pods(["127.0.0.9"])  # a pod that does not answer (nothing listens there)
    cluster.settle()
    assert await cluster.take(a, k("k2")) is Verdict.UNSURE
    a.set_pods([])  # it is gone: settling again, then sure
    assert await cluster.take(a, k("k3")) is Verdict.UNSURE
    cluster.settle()
    assert await cluster.take(a, k("k4")) is Verdict.NEW
    # one that never learns its pods (several replicas, no peer port) is never sure
    lonely = Peers(ReplayGuard(), peer_port=0, settle=0.0, pods_known=False, clock=cluster.clock, name="lonely")
    assert await lonely.claim(k("k5")) is Verdict.UNSURE


async def test_a_replay_is_refused_even_while_settling(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    [b] = await cluster.pod("127.0.0.3")
    assert await cluster.take(a, k("k")) is Verdict.UNSURE  # (then the API server decides)
    assert await cluster.take(b, k("k")) is Verdict.SEEN


async def test_a_process_that_starts_copies_the_nonces_used_before(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    cluster.settle()
    for n in range(2500):  # more than one batch of the dump
        assert a.guard.mark(k(f"old-{n}"))
    [b] = await cluster.pod("127.0.0.3", copy=True)
    assert len(b.guard) == 2500
    assert not b.guard.mark(k("old-2499"))
    # ages are kept: a copied nonce is forgotten when the original would have been
    cluster.clock.now += a.guard.window + 2 * a.guard.BUCKET + 1  # (each hop may round up to the next slot)
    assert b.guard.mark(k("old-0"))


async def opened(ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, None]:
    """A plain connection, as a :class:`Link` opens one (no hello, so no peer name)."""
    reader, writer = await asyncio.open_connection(ip, port)
    return reader, writer, None


async def connect(ip: str, port: int, hello: bytes | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(ip, port)
    if hello is not None:
        writer.write(b"A " + hello + b"\n")
        assert await reader.readline() == b"A " + ip.encode() + b"\n"
    return reader, writer


async def test_nothing_is_read_from_the_peer_port_before_a_peers_token(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    for first in (b"C " + k("x").encode() + b" 900.0\n", b"D\n", b"A not-a-peer\n", b"A " + b"x" * 9000 + b"\n",
                  b"P " + k("x").encode() + b" 900.0\n"):
        reader, writer = await asyncio.open_connection("127.0.0.2", cluster.port)
        writer.write(first)
        assert await reader.read() == b""  # closed without an answer
        writer.close()
    assert len(a.guard) == 0
    # a token proves a peer; then garbage still closes the connection, and only a real request is answered
    for garbage in (b"X something\n", b"C " + b"k" * 400 + b"\n", b"C not-a-key-the-gateway-makes 1.0\n",
                    b"C " + k("x").encode() + b" inf\n", b"C " + k("x").encode() + b" -5\n",
                    b"C " + k("x").encode() + b" nan\n", b"C " + k("x").encode() + b"\n"):
        reader, writer = await connect("127.0.0.2", cluster.port, b"peer:127.0.0.3")
        writer.write(garbage)
        assert await reader.read() == b"", garbage
        writer.close()
    assert len(a.guard) == 0
    reader, writer = await connect("127.0.0.2", cluster.port, b"peer:127.0.0.3")
    writer.write(b"C " + k("x").encode() + b" 900.0\n")
    assert await reader.readline() == b"N\n"
    writer.close()
    assert k("x") in a.guard and len(a.guard) == 1


async def test_a_peer_that_does_not_prove_itself_in_time_is_let_go_and_connections_are_capped(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers_module, "HELLO_TIMEOUT", 0.2)
    monkeypatch.setattr(peers_module, "MAX_CONNECTIONS", 3)
    [a] = await cluster.pod("127.0.0.2")
    silent = [await asyncio.open_connection("127.0.0.2", cluster.port) for _ in range(3)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.2", cluster.port)  # the fourth: closed at once
    assert await asyncio.wait_for(reader.read(), 0.1) == b""
    writer.close()
    for reader, writer in silent:  # the three that said nothing: closed after the hello timeout
        assert await asyncio.wait_for(reader.read(), 1.0) == b""
        writer.close()
    await asyncio.sleep(0.05)
    assert a.connections == 0
    await connect("127.0.0.2", cluster.port, b"peer:127.0.0.3")  # and a peer gets in again


async def test_a_rolling_update_forgets_no_nonce(cluster: Cluster) -> None:
    """maxSurge 0, maxUnavailable 1 (manifests/): A goes (handing its nonces off), A' comes (copying
    every process's), then B, with two workers each."""
    a = await cluster.pod("127.0.0.2", workers=2)
    b = await cluster.pod("127.0.0.3", workers=2)
    cluster.settle()
    assert await cluster.take(a[0], k("used-a")) is Verdict.NEW
    assert await cluster.take(b[1], k("used-b")) is Verdict.NEW
    a_only = k("only-a")  # one that only A knew (taken before it knew of the others)
    assert a[1].guard.mark(a_only)
    for p in a:  # A is shut down: its workers hand their nonces to the other pods first
        assert await p.hand_off() == 1
    drop(cluster, "127.0.0.2")
    a2 = await cluster.pod("127.0.0.4", workers=2, copy=True)
    for p in b:
        assert await p.hand_off() == 1
    drop(cluster, "127.0.0.3")
    b2 = await cluster.pod("127.0.0.5", workers=2, copy=True)
    cluster.settle()
    for p in a2 + b2:
        for key in (k("used-a"), k("used-b"), a_only):
            assert key in p.guard
    assert await cluster.take(a2[0], k("used-a")) is Verdict.SEEN
    assert await cluster.take(b2[1], a_only) is Verdict.SEEN


async def test_two_pods_starting_together_copy_every_other_process_not_only_each_other(cluster: Cluster) -> None:
    await cluster.pod("127.0.0.20")
    await cluster.pod("127.0.0.21")
    cluster.settle()
    assert await cluster.take(cluster.pods["127.0.0.20"][0], k("used")) is Verdict.NEW
    n1 = await cluster.pod("127.0.0.10")
    n2 = await cluster.pod("127.0.0.11")
    assert [await p.copy_from_peers() for p in n1 + n2] == [(3, 3), (3, 3)]
    drop(cluster, "127.0.0.20")
    drop(cluster, "127.0.0.21")
    cluster.settle()
    assert await cluster.take(n1[0], k("used")) is Verdict.SEEN
    assert await cluster.take(n2[0], k("used")) is Verdict.SEEN


async def test_a_copy_cut_short_is_kept_but_not_counted_whole(cluster: Cluster) -> None:
    [full] = await cluster.pod("127.0.0.3")
    for n in range(10):
        full.guard.mark(k(f"n{n}"))

    async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"A 127.0.0.2\n")
        await reader.readline()
        writer.write(f"{k('other')} {cluster.clock.now + 800:.1f}\n".encode())  # one line, then the pod is gone
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(dying, "127.0.0.2", cluster.port)
    try:
        new = peer("127.0.0.4", cluster.port, cluster.clock)
        new.set_pods(["127.0.0.2", "127.0.0.3"])
        assert await new.copy_from_peers() == (1, 2)
        assert len(new.guard) == 11
    finally:
        server.close()
        new.close()


async def test_a_request_dated_ahead_is_refused_until_its_date_is_past_the_window(cluster: Cluster) -> None:
    """x-acs-date may be up to 900 s ahead of the gateway's clock: the nonce is kept until the date is
    900 s past (up to 1,800 s), in this process and in the others it told."""
    [a] = await cluster.pod("127.0.0.2")
    [b] = await cluster.pod("127.0.0.3")
    cluster.settle()
    until = cluster.clock.now + 800 + a.guard.window  # a client clock 800 s fast
    assert a.guard.mark(k("ahead"), until)
    assert await a.claim(k("ahead"), until) is Verdict.NEW
    cluster.clock.now += 1650
    assert k("ahead") in a.guard and k("ahead") in b.guard
    [c] = await cluster.pod("127.0.0.4", copy=True)  # and in a copy
    assert k("ahead") in c.guard
    cluster.clock.now += 60 + 2 * a.guard.BUCKET  # past the date + 900 s (a replay fails the date check anyway)
    assert k("ahead") not in a.guard and k("ahead") not in b.guard and k("ahead") not in c.guard


async def test_a_broken_watch_of_the_pods_makes_every_nonce_unsure_until_it_is_back_and_settled(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    cluster.settle()
    assert await cluster.take(a, k("k1")) is Verdict.NEW
    a.watch_broken()  # a pod may have come that this process does not know of
    assert await cluster.take(a, k("k2")) is Verdict.UNSURE
    cluster.settle()
    assert await cluster.take(a, k("k3")) is Verdict.UNSURE
    a.watch_answered()
    assert await cluster.take(a, k("k4")) is Verdict.UNSURE  # what it missed: settling again
    cluster.settle()
    assert await cluster.take(a, k("k5")) is Verdict.NEW


async def test_a_pod_never_asks_itself_nor_one_pod_twice(cluster: Cluster) -> None:
    """socket.gethostname() may not be the pod's name (spec.hostname), and a dual-stack Service lists a
    pod under two addresses: each pod's hello tells who it is."""
    [a] = await cluster.pod("127.0.0.2")
    b = peer("b", cluster.port, cluster.clock, )
    b.host = "0.0.0.0"  # b answers on every loopback address
    await b.serve()
    try:
        a.set_pods(["127.0.0.2", "127.0.0.3", "127.0.0.4"])  # itself, and b twice
        await asyncio.sleep(0.1)  # (the hellos, sent when the pods changed)
        cluster.settle()
        assert [name for name, _ in a.targets()] == ["pod:127.0.0.3"]
        assert await cluster.take(a, k("fresh")) is Verdict.NEW
        assert k("fresh") in b.guard
    finally:
        b.close()


async def test_a_slow_worker_in_the_asked_pod_does_not_hold_the_other_requests_up(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    _b0, b1 = await cluster.pod("127.0.0.3", workers=2)
    b1.close()  # worker 1 of B answers, but 150 ms late

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def answer() -> None:
            while True:
                when = await arrived.get()
                await asyncio.sleep(max(0.0, when + 0.15 - time.monotonic()))
                writer.write(b"N\n")
        answering = asyncio.create_task(answer())
        while await reader.readline():
            arrived.put_nowait(time.monotonic())
        answering.cancel()
    slow_b1 = await asyncio.start_unix_server(slow, sibling_address(cluster.port, 1, "-test-127.0.0.3"))
    cluster.settle()
    try:
        verdicts = await asyncio.gather(*(a.claim(k(f"c{n}")) for n in range(5)))
        assert verdicts == [Verdict.NEW] * 5
    finally:
        slow_b1.close()


async def test_one_late_answer_does_not_fail_the_asks_behind_it() -> None:
    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        await reader.readline()
        await asyncio.sleep(0.15)  # both answered at 0.55 s, in order: the first one late
        writer.write(b"N\nN\n")
        await writer.drain()
        await asyncio.sleep(1)
    server = await asyncio.start_server(late, "127.0.0.7", 39399)
    link = Link(lambda: opened("127.0.0.7", 39399))
    first = asyncio.create_task(link.ask(b"L x\n"))
    await asyncio.sleep(0.4)
    assert await link.ask(b"L y\n") == b"N"
    assert await first is None  # (timed out; its answer was dropped in order)
    server.close()
    link.close()


async def test_a_pod_does_not_vouch_for_a_worker_it_could_not_reach(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    _b0, b1 = await cluster.pod("127.0.0.3", workers=2)
    b1.close()  # restarting, or stalled
    cluster.settle()
    assert await a.claim(k("x")) is Verdict.UNSURE


async def test_a_pod_that_cannot_be_reached_is_not_waited_for_again_at_once(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    a.set_pods(["127.0.0.9"])  # nothing listens there: refused at once
    cluster.settle()
    assert await a.claim(k("x")) is Verdict.UNSURE
    link = a.link("pod:127.0.0.9")
    assert link.failures == 1 and link.down_until > cluster.clock.now
    opened = 0
    real = link.open_connection

    async def counting() -> Any:
        nonlocal opened
        opened += 1
        return await real()
    link.open_connection = counting  # type: ignore[assignment]
    assert await a.claim(k("y")) is Verdict.UNSURE and opened == 0  # not tried while it is down
    cluster.clock.now += peers_module.DOWN_FIRST
    assert await a.claim(k("z")) is Verdict.UNSURE and opened == 1 and link.failures == 2


def test_the_other_pods_are_every_endpoint_of_the_gateway_service_but_this_one() -> None:
    slices = [{"endpoints": [
        {"addresses": ["10.244.0.5"], "conditions": {"ready": True}, "targetRef": {"name": "gw-a"}},
        {"addresses": ["10.244.0.6"], "conditions": {"ready": False, "serving": True, "terminating": True},
         "targetRef": {"name": "gw-b"}},
    ]}, {"endpoints": [{"addresses": ["10.244.0.7"], "targetRef": {"name": "gw-c"}}]}, {"endpoints": None}]
    assert endpoint_addresses(slices, "gw-a") == {"10.244.0.6", "10.244.0.7"}
    assert endpoint_addresses(slices, "not-its-name", ["10.244.0.5"]) == {"10.244.0.6", "10.244.0.7"}
    dual = [{"endpoints": [{"addresses": ["10.244.0.6"], "targetRef": {"name": "gw-b", "uid": "u-b"}}]},
            {"endpoints": [{"addresses": ["fd00::6"], "targetRef": {"name": "gw-b", "uid": "u-b"}}]}]
    assert endpoint_addresses(dual, "gw-a") == {"10.244.0.6"}  # one pod, asked once


def test_the_guard_keeps_a_nonce_until_its_date_is_a_window_past() -> None:
    clock = Clock()
    g = ReplayGuard(window=900, clock=clock)
    assert g.mark(k("a")) and not g.mark(k("a"))
    g.merge(k("b"), clock.now + 800)
    g.merge(k("c"), clock.now - 1)  # past: not kept
    g.merge(k("d"), float("inf"))  # at most twice the window
    g.merge(k("e"), float("nan"))
    assert not g.mark(k("b")) and g.mark(k("c"))
    assert k("e") not in g
    g.mark(k("f"), clock.now + 1700)  # dated 800 s ahead
    clock.now += 901 + g.BUCKET  # (kept to the end of a BUCKET-second slot)
    assert k("a") not in g and k("b") not in g and k("f") in g and k("d") in g
    clock.now += 900
    assert len(g) == 0 and g.slots == {} and g.order == []
    assert ReplayGuard.key("KEY", "n") != ReplayGuard.key("KEY", "m") and len(ReplayGuard.key("KEY", "n")) == 32


def test_the_guard_holds_a_nonce_in_under_200_bytes() -> None:
    clock = Clock()
    g = ReplayGuard(clock=clock)
    keys = [k(f"m{n}") for n in range(50_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n, key in enumerate(keys):
        g.mark(key)
        if n % 500 == 0:
            clock.now += 1.0  # spread over slots, as real traffic is
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"{used / len(keys):.0f} bytes per nonce")
    assert used / len(keys) < 200


async def test_the_token_verifier_reviews_only_what_claims_to_be_a_peer_and_caches_the_answer(tmp_path: Any) -> None:
    def jwt(claims: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        return f"e30.{body}.sig"
    sa = "system:serviceaccount:fnsession-system:fnsession-gateway"
    own = tmp_path / "token"
    own.write_text(jwt({"sub": sa, "aud": [peers_module.AUDIENCE]}))

    class Api:
        def __init__(self) -> None:
            self.asked: list[Any] = []

        async def create_token_review(self, body: Any, **_: Any) -> Any:
            self.asked.append(body.spec)
            ok = body.spec.token.endswith(".sig")
            user = SimpleNamespace(username=sa, extra={"authentication.kubernetes.io/pod-name": ["gw-b"]})
            return SimpleNamespace(status=SimpleNamespace(authenticated=ok, user=user, audiences=body.spec.audiences))

    verifier = TokenVerifier(SimpleNamespace(api=None), token_file=str(own))  # type: ignore[arg-type]
    verifier.api = api = Api()
    assert await verifier(jwt({"sub": sa, "aud": [peers_module.AUDIENCE]})) == "gw-b"
    assert await verifier(jwt({"sub": sa, "aud": [peers_module.AUDIENCE]})) == "gw-b"  # cached
    assert len(api.asked) == 1 and api.asked[0].audiences == [peers_module.AUDIENCE]
    # another ServiceAccount, another audience, garbage: not even reviewed
    assert await verifier(jwt({"sub": "system:serviceaccount:team:app", "aud": [peers_module.AUDIENCE]})) is None
    assert await verifier(jwt({"sub": sa, "aud": ["https://kubernetes.default.svc"]})) is None
    assert await verifier("garbage") is None
    assert len(api.asked) == 1
    # one that says it is, but the API server does not agree
    assert await verifier(jwt({"sub": sa, "aud": [peers_module.AUDIENCE]}) + "-forged") is None
    assert len(api.asked) == 2


# --- the authenticator: peers first, the API server only when they cannot tell


class FakePeers:
    def __init__(self, verdict: Verdict) -> None:
        self.verdict, self.asked = verdict, 0

    async def claim(self, key: str, until: float | None = None) -> Verdict:
        self.asked += 1
        return self.verdict


class FakeLeases:
    def __init__(self) -> None:
        self.claimed = 0

    async def claim(self, access_key_id: str, nonce: str) -> None:
        self.claimed += 1


def signed_headers(secret: str, nonce: str) -> tuple[str, dict[str, str]]:
    target = "/2023-03-30/functions/echo/sessions"
    headers = {"host": "gw", "x-acs-date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "x-acs-signature-nonce": nonce, "x-acs-content-sha256": signing.EMPTY_SHA256}
    names = tuple(sorted(headers))
    sig = signing.sign(secret, signing.canonical_request("GET", target, headers, names, signing.EMPTY_SHA256))
    headers["authorization"] = f"ACS3-HMAC-SHA256 Credential=KEY1,SignedHeaders={';'.join(names)},Signature={sig}"
    return target, headers


@pytest.mark.parametrize(("verdict", "leases_asked", "refused"), [
    (Verdict.NEW, 0, False), (Verdict.UNSURE, 1, False), (Verdict.SEEN, 0, True)])
async def test_a_signed_request_asks_the_api_server_only_when_the_peers_cannot_tell(
        verdict: Verdict, leases_asked: int, refused: bool) -> None:
    auth = Authenticator(SimpleNamespace(api=None), "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]
    peers, leases = FakePeers(verdict), FakeLeases()
    auth.peers, auth.nonces = peers, leases  # type: ignore[assignment]

    async def access_key(key_id: str) -> dict[str, Any]:
        return {"secret": "s3cret", "namespace": "team", "serviceAccount": "app"}

    auth.access_key = access_key  # type: ignore[method-assign]
    target, headers = signed_headers("s3cret", "n-1")
    if refused:
        with pytest.raises(FCError) as err:
            await auth.by_access_key("GET", target, headers, b"")
        assert err.value.status == 401 and "already used" in err.value.message
    else:
        who = await auth.by_access_key("GET", target, headers, b"")
        assert who.namespace == "team"
    assert (peers.asked, leases.claimed) == (1, leases_asked)


async def test_a_nonce_or_key_id_spelled_another_way_is_the_same_nonce() -> None:
    """Whitespace around the nonce is not signed, and the key id names a Secret through a label selector:
    neither may make a replayed request look new."""
    auth = Authenticator(SimpleNamespace(api=None), "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]

    async def access_key(key_id: str) -> dict[str, Any]:
        return {"secret": "s3cret", "namespace": "team", "serviceAccount": "app"}

    auth.access_key = access_key  # type: ignore[method-assign]
    target, headers = signed_headers("s3cret", "n-1")
    await auth.by_access_key("GET", target, headers, b"")
    for spelled in ("n-1 ", "n-1\t", " n-1"):
        target, again = signed_headers("s3cret", spelled)
        with pytest.raises(FCError) as err:
            await auth.by_access_key("GET", target, again, b"")
        assert err.value.status == 401 and "already used" in err.value.message, spelled
    for key_id in ("KEY1 ", "=KEY1", "KEY1=", ""):
        with pytest.raises(FCError) as err:
            signing.parse_authorization(f"ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders=host,Signature=00")
        assert err.value.status == 401 and "Credential" in err.value.message, key_id
