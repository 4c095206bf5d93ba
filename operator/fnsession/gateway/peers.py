"""Signature nonces claimed among the gateway's own processes, without a write to the API server.

A signed request (FC's SDKs) carries a nonce that must be used once. One process refuses a nonce it
has seen (:class:`fnsession.gateway.signing.ReplayGuard`); with several processes (``--workers``,
replicas) a replay sent to another process must be refused too. Each process therefore tells every
other process of each nonce it takes, and takes it only when none of them had seen it:

1. the process marks the nonce in its own table (a replay to the same process stops there);
2. it asks every sibling worker of its pod (an abstract unix socket per worker) and every other
   gateway pod (``--peer-port``, found from the gateway Service's EndpointSlices) to mark it too;
   a pod that is asked marks it and asks its own workers;
3. the nonce is **new** when every process answered that it had not seen it, **seen** (a replay:
   FC's 401) when any had, and **unsure** when a process did not answer or this process does not yet
   know its peers for certain.

Two copies of one request sent to two processes at once are both refused: each marks before it
asks, so each finds the other's mark. A copy is missed only if neither process knows of the other,
which can happen only around a membership change (a process started, or a pod came or went); for
:attr:`Peers.settle` seconds after any such change, and whenever a peer does not answer, the nonce is
**unsure** and the caller claims it in the API server as well (a Lease, created once; see
``auth.SharedNonces``). A process that starts copies the seen nonces of a peer first, so a rolling
restart loses none. So the steady state costs a loopback or pod-network round trip per signed request
and no API write; membership changes and unreachable peers cost what every signed request cost before.

The wire: one line per request on a kept-alive connection, answered in order: ``C <key>`` (mark, and
ask this pod's other workers), ``L <key>`` (mark here only), answered ``N`` (was new) or ``S`` (seen);
``D`` answers every key this process holds with its age in seconds, ``<key> <age>`` a line, then ``.``.
Keys are digests of the access key id and the nonce, never the nonce itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from fnsession.gateway.signing import ReplayGuard
from fnsession.kube.client import Clients
from fnsession.kube.watching import Backoff, Reach, Resource, list_watch

log = logging.getLogger(__name__)
ASK_TIMEOUT = 0.5  # seconds a peer's answer may take before the nonce is unsure (claimed in the API server)
SETTLE_SECONDS = 10.0  # after a membership change, nonces are unsure (see the module's docstring)
CONNECT_TIMEOUT = 0.5
COPY_TIMEOUT = 5.0  # seconds the copy of one peer's nonces may take at start (then the next peer is tried)
MAX_LINE = 256
KEY = re.compile(rb"[0-9a-f]{32}")  # signing.ReplayGuard.key: nothing else is marked for a peer


class Verdict(Enum):
    NEW = "new"
    SEEN = "seen"
    UNSURE = "unsure"


def sibling_address(peer_port: int, index: int, scope: str = "") -> str:
    """The abstract unix socket of worker ``index`` of this pod (no file: it lives in the pod's network
    namespace; ``scope`` tells apart several gateways sharing one, as tests do)."""
    return f"\0fnsession-gateway-nonces{scope}-{peer_port}-{index}"


class Link:
    """One kept-alive connection to a peer, requests pipelined and answered in order."""

    def __init__(self, open_connection: Callable[[], Any]) -> None:
        self.open_connection = open_connection
        self.writer: asyncio.StreamWriter | None = None
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.reader_task: asyncio.Task[None] | None = None
        self.opening: asyncio.Lock = asyncio.Lock()

    async def ask(self, line: bytes) -> bytes | None:
        """The peer's answer to ``line``, or None when it cannot be reached or does not answer in time."""
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                writer = await self._connected()
                answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                self.waiting.append(answer)
                writer.write(line)
                return await answer
        except (OSError, TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            self.close()
            return None

    async def _connected(self) -> asyncio.StreamWriter:
        if self.writer is not None and not self.writer.is_closing():
            return self.writer
        async with self.opening:
            if self.writer is None or self.writer.is_closing():
                reader, writer = await self.open_connection()
                self.writer = writer
                self.reader_task = asyncio.create_task(self._read(reader, writer), name="nonce-peer-reader")
            return self.writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if self.waiting:
                    waiter = self.waiting.popleft()
                    if not waiter.done():  # (one whose asker timed out is dropped in order)
                        waiter.set_result(line.strip())
        except (OSError, ConnectionError):
            pass
        finally:
            if self.writer is writer:
                self.close()

    def close(self) -> None:
        writer, self.writer = self.writer, None
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the peer closed the connection"))
        if writer is not None:
            writer.close()


class Peers:
    """This process's part in claiming nonces among the gateway's processes (module docstring).

    ``index`` and ``workers``: this process among its pod's workers; ``peer_port``: where every gateway
    pod listens for other pods (``0``: this pod's workers only, for a single pod)."""

    def __init__(self, guard: ReplayGuard, *, peer_port: int, index: int = 0, workers: int = 1,
                 settle: float = SETTLE_SECONDS, pods_known: bool = False, host: str = "0.0.0.0",
                 scope: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.guard, self.peer_port, self.index, self.workers = guard, peer_port, index, workers
        self.host, self.scope = host, scope
        self.settle, self.clock = settle, clock
        self.pods: frozenset[str] = frozenset()  # other gateway pods' addresses
        self.pods_known = pods_known  # the pods were listed, or there are none (never, for pods it cannot reach)
        self.listed = asyncio.Event()  # the first list of the pods came
        self.changed = clock()  # the last membership change (this process's start counts)
        self.links: dict[str, Link] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.claims = dict.fromkeys(Verdict, 0)  # for metrics

    # --- membership
    def set_pods(self, addresses: Iterable[str]) -> None:
        pods = frozenset(addresses)
        if pods != self.pods or not self.pods_known:
            for gone in self.pods - pods:
                link = self.links.pop(f"pod:{gone}", None)
                if link is not None:
                    link.close()
            self.pods, self.pods_known, self.changed = pods, True, self.clock()
            log.info("nonce peers: %d other gateway pod(s) %s", len(pods), sorted(pods))
        self.listed.set()

    def settled(self) -> bool:
        return self.pods_known and self.clock() - self.changed >= self.settle

    def targets(self) -> list[tuple[str, bytes]]:
        """(link name, request verb) for every other process: this pod's workers, then the other pods."""
        out = [(f"worker:{i}", b"L") for i in range(self.workers) if i != self.index]
        out += [(f"pod:{ip}", b"C") for ip in sorted(self.pods)]
        return out

    def link(self, name: str) -> Link:
        link = self.links.get(name)
        if link is None:
            kind, _, where = name.partition(":")
            if kind == "worker":
                path = sibling_address(self.peer_port, int(where), self.scope)
                link = Link(lambda: asyncio.open_unix_connection(path))
            else:
                link = Link(lambda: asyncio.wait_for(asyncio.open_connection(where, self.peer_port), CONNECT_TIMEOUT))
            self.links[name] = link
        return link

    # --- claiming
    async def claim(self, key: str) -> Verdict:
        """Whether ``key`` (already marked in this process's guard) is new to every other process."""
        verdict = await self._ask_all(key, self.targets())
        if verdict is Verdict.NEW and not self.settled():
            verdict = Verdict.UNSURE
        self.claims[verdict] += 1
        return verdict

    async def _ask_all(self, key: str, targets: list[tuple[str, bytes]]) -> Verdict:
        if not targets:
            return Verdict.NEW
        line_end = b" " + key.encode() + b"\n"
        answers = await asyncio.gather(*(self.link(name).ask(verb + line_end) for name, verb in targets))
        if any(a == b"S" for a in answers):
            return Verdict.SEEN
        if any(a != b"N" for a in answers):
            return Verdict.UNSURE
        return Verdict.NEW

    # --- serving
    async def serve(self) -> None:
        """Listen for this pod's workers (abstract unix socket) and, with a peer port, for other pods."""
        self.servers.append(await asyncio.start_unix_server(self._serve, sibling_address(self.peer_port, self.index,
                                                                                          self.scope)))
        if self.peer_port:
            self.servers.append(await asyncio.start_server(self._serve, self.host, self.peer_port,
                                                           reuse_address=True, reuse_port=True))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if len(line) > MAX_LINE or not line.endswith(b"\n"):
                    break
                verb, _, key = line.strip().partition(b" ")
                if verb == b"D":
                    await self._dump(writer)
                    continue
                if verb not in (b"C", b"L") or not KEY.fullmatch(key):
                    break
                new = self.guard.mark(key.decode("ascii"))
                if verb == b"C":  # from another pod: this pod's other workers mark it too
                    others = [(f"worker:{i}", b"L") for i in range(self.workers) if i != self.index]
                    if await self._ask_all(key.decode("ascii"), others) is Verdict.SEEN:
                        new = False
                writer.write(b"N\n" if new else b"S\n")
                await writer.drain()  # (a peer that does not read its answers is not buffered for)
        except (OSError, ConnectionError, ValueError):  # ValueError: a line past the reader's limit
            pass
        finally:
            writer.close()

    async def _dump(self, writer: asyncio.StreamWriter) -> None:
        now = self.guard.clock()  # type: ignore[operator]
        batch = []
        for key, seen in list(self.guard.seen.items()):
            batch.append(f"{key} {now - seen:.1f}\n".encode())
            if len(batch) >= 1000:
                writer.write(b"".join(batch))
                batch.clear()
                await writer.drain()
        batch.append(b".\n")
        writer.write(b"".join(batch))
        await writer.drain()

    async def copy_from_a_peer(self) -> bool:
        """Copy every nonce a sibling worker (else another pod) holds, at start; True when one answered."""
        for name, _verb in self.targets():
            kind, _, where = name.partition(":")
            try:
                async with asyncio.timeout(COPY_TIMEOUT):
                    if kind == "worker":
                        reader, writer = await asyncio.open_unix_connection(
                            sibling_address(self.peer_port, int(where), self.scope))
                    else:
                        reader, writer = await asyncio.open_connection(where, self.peer_port)
                    try:
                        writer.write(b"D\n")
                        copied = 0
                        now = self.guard.clock()  # type: ignore[operator]
                        while (line := await reader.readline()) and line != b".\n":
                            key, _, age = line.rstrip(b"\n").rpartition(b" ")
                            if KEY.fullmatch(key):
                                self.guard.merge(key.decode("ascii"), now - float(age))
                                copied += 1
                        log.info("copied %d signature nonce(s) from %s", copied, name)
                        return True
                    finally:
                        writer.close()
            except (OSError, TimeoutError, ValueError) as exc:
                log.info("could not copy signature nonces from %s: %s", name, exc)
        return False

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for link in self.links.values():
            link.close()


def endpoint_addresses(slices: Iterable[dict[str, Any]], myself: str | None = None) -> set[str]:
    """Every address in the gateway Service's EndpointSlices, ready or not (a draining pod still serves
    its kept-alive clients), except this pod's own (``myself``: its name)."""
    out: set[str] = set()
    for s in slices:
        for ep in s.get("endpoints") or ():
            if myself is None or (ep.get("targetRef") or {}).get("name") != myself:
                out.update(a for a in ep.get("addresses") or () if a)
    return out


async def follow_peers(peers: Peers, clients: Clients, namespace: str, service: str, reach: Reach | None = None) -> None:
    """Keep ``peers.pods`` to the other pods behind the gateway's Service (its EndpointSlices), for ever."""
    slices: dict[str, dict[str, Any]] = {}
    myself = socket.gethostname()  # a pod's hostname is its name

    def listed(items: list[dict[str, Any]]) -> None:
        slices.clear()
        slices.update({s["metadata"]["name"]: s for s in items})
        peers.set_pods(endpoint_addresses(slices.values(), myself))

    def changed(kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            slices.pop(obj["metadata"]["name"], None)
        else:
            slices[obj["metadata"]["name"]] = obj
        peers.set_pods(endpoint_addresses(slices.values(), myself))

    await list_watch(clients, Resource("discovery.k8s.io", "v1", "endpointslices", namespace,
                                       f"kubernetes.io/service-name={service}"),
                     listed=listed, changed=changed, reach=reach, backoff=Backoff(first=0.5, most=5.0))

