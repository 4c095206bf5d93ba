"""Signature nonces claimed among the gateway's processes (fnsession.gateway.peers): real sockets on
loopback (abstract unix sockets for a pod's workers, TCP on 127.0.0.x for pods), no cluster."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from fnsession.gateway import signing
from fnsession.gateway.auth import Authenticator
from fnsession.gateway.errors import FCError
from fnsession.gateway.peers import Peers, Verdict, endpoint_addresses
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


class Cluster:
    """Gateway pods on 127.0.0.<n>, each with ``workers`` processes, all in this event loop."""

    def __init__(self, port: int, clock: Clock) -> None:
        self.port, self.clock = port, clock
        self.pods: dict[str, list[Peers]] = {}

    async def pod(self, ip: str, workers: int = 1, copy: bool = False) -> list[Peers]:
        procs = [Peers(ReplayGuard(clock=self.clock), peer_port=self.port, index=i, workers=workers, settle=5.0, host=ip,
                       scope=f"-test-{ip}", clock=self.clock) for i in range(workers)]
        for p in procs:
            await p.serve()
        self.pods[ip] = procs
        self.membership()
        if copy:
            for p in procs:
                await p.copy_from_a_peer()
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
    lonely = Peers(ReplayGuard(), peer_port=0, settle=0.0, pods_known=False, clock=cluster.clock)
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
    assert len(b.guard.seen) == 2500
    assert not b.guard.mark(k("old-2499"))
    # ages are kept: a copied nonce is forgotten when the original would have been
    cluster.clock.now += a.guard.window + 1
    assert b.guard.mark(k("old-0"))


async def test_garbage_on_the_peer_port_gets_no_answer_and_changes_nothing(cluster: Cluster) -> None:
    [a] = await cluster.pod("127.0.0.2")
    reader, writer = await asyncio.open_connection("127.0.0.2", cluster.port)
    writer.write(b"X something\n")
    assert await reader.read() == b""  # closed without an answer
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.2", cluster.port)
    writer.write(b"C " + b"k" * 400 + b"\n")
    assert await reader.read() == b""
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.2", cluster.port)
    writer.write(b"C not-a-key-the-gateway-makes\n")
    assert await reader.read() == b""
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.2", cluster.port)
    writer.write(b"C " + k("x").encode() + b"\n")  # a real one is answered
    assert await reader.readline() == b"N\n"
    writer.close()
    assert list(a.guard.seen) == [k("x")]


def test_the_other_pods_are_every_endpoint_of_the_gateway_service_but_this_one() -> None:
    slices = [{"endpoints": [
        {"addresses": ["10.244.0.5"], "conditions": {"ready": True}, "targetRef": {"name": "gw-a"}},
        {"addresses": ["10.244.0.6"], "conditions": {"ready": False, "serving": True, "terminating": True},
         "targetRef": {"name": "gw-b"}},
    ]}, {"endpoints": [{"addresses": ["10.244.0.7"], "targetRef": {"name": "gw-c"}}]}, {"endpoints": None}]
    assert endpoint_addresses(slices, "gw-a") == {"10.244.0.6", "10.244.0.7"}


def test_the_guard_marks_once_and_merges_copies_by_their_age() -> None:
    clock = Clock()
    g = ReplayGuard(window=900, clock=clock)
    assert g.mark("a") and not g.mark("a")
    g.merge("b", clock.now - 100)
    g.merge("c", clock.now - 1000)  # older than the window: not kept
    assert not g.mark("b") and g.mark("c")
    assert ReplayGuard.key("KEY", "n") != ReplayGuard.key("KEY", "m") and len(ReplayGuard.key("KEY", "n")) == 32


# --- the authenticator: peers first, the API server only when they cannot tell


class FakePeers:
    def __init__(self, verdict: Verdict) -> None:
        self.verdict, self.asked = verdict, 0

    async def claim(self, key: str) -> Verdict:
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
