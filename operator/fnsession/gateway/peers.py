"""Signature nonces claimed among the gateway's own processes, without a write to the API server.

A signed request (FC's SDKs) carries a nonce that must be used once. One process refuses a nonce it
holds (:class:`fnsession.gateway.signing.ReplayGuard`); with several processes (``--workers``,
replicas) a replay sent to another process must be refused too. Each process therefore tells every
other process of each nonce it takes, and takes it only when none of them held it:

1. the process marks the nonce in its own table (a replay to the same process stops there);
2. it asks every sibling worker of its pod (an abstract unix socket per worker) and every other
   gateway pod (``--peer-port``, found from the gateway Service's EndpointSlices) to mark it too;
   a pod that is asked marks it and asks its own workers;
3. the nonce is **new** when every process answered that it had not held it, **seen** (a replay:
   FC's 401) when any had, and **unsure** when a process did not answer (or a pod could not vouch
   for one of its workers) or this process does not know its peers for certain: in the
   :attr:`Peers.settle` seconds after any membership change, while its watch of the
   EndpointSlices is broken, and after a copy at start that was not whole (below). An unsure
   nonce is claimed in the API server as well (a Lease, created once; ``auth.SharedNonces``).

Why two copies of one request are never both taken: each process marks before it asks, so of two
processes that take the same nonce, the one that asks the other finds the other's mark, or leaves
its own for the other to find. Both can take it only if neither knows of the other. A process
knows every pod that was in the EndpointSlices when it listed them, so that needs two pods that
both appeared after the other listed: both are within their settle time then, and both go to the
Lease. What this rests on: a process's watch shows it a new pod within :data:`SETTLE_SECONDS`
(else its watch is broken and it is unsure), and a pod that cannot be reached makes the nonce unsure.

The nonces live only in the processes. A process that starts copies every other process's table
(every sibling worker and every other pod, all of them, each copy counted only when it arrived
whole, in a time that grows with the table); unless every copy came whole, it is unsure, as while
it settles, until a later copy (tried again in the background) is whole, or for twice the window
(by then whatever it missed has expired). A pod that is shut down (SIGTERM) hands its table to
every other pod first (each of its workers its whole table, in a time that grows with it). So
rolling updates and rescheduling lose nothing; what is lost is what only a pod killed without
notice knew (nonces it took in its first seconds, before the others knew of it), and everything,
if every replica is lost at once. ``--peer-port 0`` with several replicas keeps every nonce in the API
server instead.

Who may ask: this pod's workers (the abstract unix sockets live in the pod's network namespace, and
the connecting process must run as the same uid), and on the peer port only a process that proves
it runs as the gateway's ServiceAccount: its first line is a token projected for the audience
:data:`AUDIENCE`, checked with a TokenReview (cached; at most :data:`MAX_CONNECTIONS` connections,
:data:`HELLO_TIMEOUT` seconds to prove it). Nothing else is read from a connection before that.

The wire, one line each, after ``A <token>`` (answered ``A <pod name>``) on the peer port:
``C <key> <until>`` (mark, and ask this pod's other workers), ``L <key> <until>`` (mark here only),
answered in order ``N`` (was new), ``S`` (held) or ``U`` (a worker did not answer); requests on one
connection are worked on at once, up to :data:`MAX_PENDING`. Or, alone on a connection, ``D``
(answered with every key held, ``<key> <until>`` a line, then ``.``) or ``P <key> <until>`` lines ended
by ``.`` (a hand-off, answered ``.``). Keys are digests of the access key id and the nonce, never
the nonce itself; ``<until>`` is the Unix time the key must be kept until (for a nonce, its request's
``x-acs-date`` plus the window: the same instant to every process, whatever its clock says), kept by
the one told until its own clock passes it (at most twice the window ahead, as
:meth:`~fnsession.gateway.signing.ReplayGuard.mark` clamps it; a time already past is not kept).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from enum import Enum
from typing import Any

from fnsession.gateway.signing import ReplayGuard
from fnsession.kube import reviews
from fnsession.kube.client import Clients
from fnsession.kube.watching import Backoff, Reach, Resource, Told, list_watch

log = logging.getLogger(__name__)
ASK_TIMEOUT = 0.5  # seconds a peer's answer may take before the nonce is unsure (claimed in the API server)
STALLED = 2.0  # a link whose oldest unanswered ask is this old is closed (its peer is stuck)
SETTLE_SECONDS = 10.0  # after a membership change, nonces are unsure (see the module's docstring)
CONNECT_TIMEOUT = 0.5
HELLO_TIMEOUT = 3.0  # seconds from a connection to the peer port to its proven identity
COPY_TIMEOUT = 5.0  # seconds the copy of another process's nonces may take at start, plus PER_ENTRY a nonce
HAND_OFF_TIMEOUT = 5.0  # seconds the hand-off of this process's nonces to a pod may take, plus PER_ENTRY a nonce
PER_ENTRY = 20e-6  # seconds a nonce adds to a copy or hand-off (about 3 us measured on loopback)
COPY_AGAIN = 5.0  # seconds after a copy that was not whole before the next (doubling, up to 12 times this)
DOWN_FIRST, DOWN_MOST = 0.5, 5.0  # a peer that could not be reached is not tried again for this long (doubling)
MAX_LINE = 256  # a request line, after the hello
MAX_HELLO = 8192  # the hello line (a token)
MAX_CONNECTIONS = 64  # on the peer port, per process (each other pod's workers hold one each)
MAX_HELLOS = 8  # of them, still to prove who they are
IDLE_TIMEOUT = 300.0  # a proven connection with no request for this long is closed (its peer reconnects)
MAX_PENDING = 256  # requests of one connection being worked on; reading waits beyond it
REVIEW_CACHE_SECONDS = 60.0
AUDIENCE = "fnsession-gateway-peers"
TOKEN_FILE = "/var/run/secrets/fnsession/peers/token"
KEY = re.compile(rb"[0-9a-f]{32}")  # signing.ReplayGuard.key: nothing else is marked for a peer
UNTIL = re.compile(rb"[0-9]{1,12}(\.[0-9]{1,3})?")  # a Unix time


class Verdict(Enum):
    NEW = "new"
    SEEN = "seen"
    UNSURE = "unsure"


def sibling_address(peer_port: int, index: int, scope: str = "") -> str:
    """The abstract unix socket of worker ``index`` of this pod (no file: it lives in the pod's network
    namespace; ``scope`` tells apart several gateways sharing one, as tests do)."""
    return f"\0fnsession-gateway-nonces{scope}-{peer_port}-{index}"


def this_pod() -> str:
    """This pod's name: ``$POD_NAME`` (the downward API), else the host name (a pod's, unless it sets spec.hostname)."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def parse(line: bytes) -> tuple[bytes, str, float] | None:
    """``<verb> <key> <until>`` from a peer, or None when it is not that."""
    parts = line.rstrip(b"\n").split(b" ")
    if len(parts) != 3 or not KEY.fullmatch(parts[1]) or not UNTIL.fullmatch(parts[2]):
        return None
    return parts[0], parts[1].decode("ascii"), float(parts[2])


def entry(verb: bytes, key: str, until: float) -> bytes:
    """``<verb> <key> <until>`` (``until`` rounded up to a tenth of a second: never kept shorter)."""
    return b"%s %s %.1f\n" % (verb, key.encode("ascii"), max(0.0, math.ceil(until * 10) / 10))


# --- who may ask on the peer port

def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, NOT verified (to tell what it says of itself; the TokenReview verifies)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


class TokenVerifier:
    """Whether a token is the gateway's own ServiceAccount's, projected for :data:`AUDIENCE` (a TokenReview;
    answers cached by the token's digest for :data:`REVIEW_CACHE_SECONDS`, at most two reviews at once).
    ``identity``: the ServiceAccount's user name; None: this process's own token's subject."""

    def __init__(self, clients: Clients, identity: str | None = None, token_file: str = TOKEN_FILE) -> None:
        self.api = reviews.authentication_api(clients)
        self.token_file, self._identity = token_file, identity
        self.cache: dict[str, tuple[float, str | None]] = {}
        self.running = asyncio.Semaphore(2)

    def identity(self) -> str | None:
        if self._identity is None:
            with contextlib.suppress(OSError), open(self.token_file) as f:
                self._identity = token_claims(f.read().strip()).get("sub")
        return self._identity

    async def __call__(self, token: str) -> str | None:
        """The pod name the token was issued to (or its user name), or None when it is not a peer's."""
        claims, expected = token_claims(token), self.identity()
        aud = claims.get("aud")
        if (expected is None or claims.get("sub") != expected
                or AUDIENCE not in (aud if isinstance(aud, list) else [aud])):
            return None  # (not worth a review: it does not even say it is one)
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self.cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.running:
            try:
                review = await reviews.token_review(self.api, token, [AUDIENCE], _request_timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - any failure is "not proven"
                log.info("nonce peers: a token could not be reviewed: %s", exc)
                return None
        who: str | None = None
        if review.authenticated and review.user is not None and review.user.username == expected \
                and AUDIENCE in (review.audiences or ()):
            pods = (review.user.extra or {}).get("authentication.kubernetes.io/pod-name") or [expected]
            who = pods[0]
        if who is not None:  # (a refusal is not kept: made-up tokens would fill the cache)
            if len(self.cache) >= 256:
                self.cache = {d: v for d, v in self.cache.items() if v[0] > now}
                if len(self.cache) >= 256:
                    self.cache.clear()
            self.cache[digest] = (now + REVIEW_CACHE_SECONDS, who)
        return who


def keep_alive(writer: asyncio.StreamWriter) -> None:
    """TCP keep-alive probes after 30 s idle, so that a peer whose node is gone is found out."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def read_token(path: str = TOKEN_FILE) -> str:
    with open(path) as f:
        return f.read().strip()


# --- asking

# a connection made: its reader, its writer and, when it says, the peer's pod name (from its hello)
Opened = tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None]


class Link:
    """One kept-alive connection to a peer, requests pipelined and answered in order.

    ``open_connection``: connects and, to a pod, proves this process to it (its hello): the
    reader, the writer and the peer's name (None for a worker), at most :data:`CONNECT_TIMEOUT` plus
    :data:`HELLO_TIMEOUT` in all (:meth:`Peers._open`). The connection (and the hello) is made in
    the background, never inside an ask's time: an ask waits for it at most its own
    :data:`ASK_TIMEOUT`, and the connection goes on being made after that. A
    peer that cannot be reached, or does not answer in time (a connect, a hello or an ask that times
    out), is not asked again for a while (:data:`DOWN_FIRST`, doubling up to :data:`DOWN_MOST`): asks
    fail at once meanwhile. An ask that times out leaves the connection up (its answer is dropped when
    it comes); one whose oldest unanswered ask is :data:`STALLED` old is closed. A link that is
    :meth:`shut` (its pod left) is never connected again."""

    def __init__(self, open_connection: Callable[[], Awaitable[Opened]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.open_connection, self.clock = open_connection, clock
        self.writer: asyncio.StreamWriter | None = None
        self.waiting: deque[tuple[float, asyncio.Future[bytes]]] = deque()
        self.reader_task: asyncio.Task[None] | None = None
        self.opening: asyncio.Task[asyncio.StreamWriter | None] | None = None
        self.failures, self.down_until = 0, 0.0
        self.closed = False  # for good (shut)
        self.peer: str | None = None  # the peer's pod name, from its hello

    async def ask(self, line: bytes) -> bytes | None:
        """The peer's answer to ``line``, or None when it cannot be reached or does not answer in time."""
        now = self.clock()
        if self.waiting and now - self.waiting[0][0] > STALLED:
            self.close()
        if now < self.down_until:
            return None
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                writer = await self._connected()
                if writer is None:
                    return None
                answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                self.waiting.append((now, answer))
                writer.write(line)
                got = await answer
            self.failures = 0
            return got
        except TimeoutError:
            self._failed("no answer in time")
            return None
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            self.close()
            return None

    def _failed(self, why: object) -> None:
        """Count a failure: not tried again for a while (once for asks that time out together)."""
        if self.clock() < self.down_until:
            return
        self.failures += 1
        self.down_until = self.clock() + min(DOWN_MOST, DOWN_FIRST * 2 ** min(16, self.failures - 1))
        if self.failures == 1:
            log.info("nonce peers: cannot reach a peer: %r", why)

    async def _connected(self) -> asyncio.StreamWriter | None:
        """The connection, made now (in the background: an asker that gives up does not stop it) unless it
        is up, or the peer is down."""
        if self.writer is not None and not self.writer.is_closing():
            return self.writer
        if self.closed or self.clock() < self.down_until:
            return None
        if self.opening is None or self.opening.done():
            self.opening = asyncio.ensure_future(self._open())
        return await asyncio.shield(self.opening)

    async def _open(self) -> asyncio.StreamWriter | None:
        try:
            opened = await asyncio.wait_for(self.open_connection(), CONNECT_TIMEOUT + HELLO_TIMEOUT)
        except (OSError, TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            self._failed(exc)
            return None
        except asyncio.CancelledError:
            if not self.closed:
                raise
            return None  # (shut: the askers waiting for it are told None, not cancelled)
        reader, writer, peer = opened
        if self.closed:  # (shut while it was being made: nothing may keep it)
            writer.close()
            return None
        self.peer = peer
        self.failures, self.down_until, self.writer = 0, 0.0, writer
        keep_alive(writer)
        self.reader_task = asyncio.create_task(self._read(reader, writer), name="nonce-peer-reader")
        return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if self.waiting:
                    _sent, waiter = self.waiting.popleft()
                    if not waiter.done():  # (one whose asker timed out is dropped in order)
                        waiter.set_result(line.strip())
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            if self.writer is writer:
                self.close()

    def close(self) -> None:
        writer, self.writer = self.writer, None
        while self.waiting:
            _sent, waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the peer closed the connection"))
        if writer is not None:
            writer.close()

    def shut(self) -> None:
        """Close for good, a connection being made too (its pod left, or this process stops)."""
        self.closed = True
        if self.opening is not None and not self.opening.done():
            self.opening.cancel()
        self.close()


class Peers:
    """This process's part in claiming nonces among the gateway's processes (module docstring).

    ``index`` and ``workers``: this process among its pod's workers; ``peer_port``: where every gateway
    pod listens for other pods (``0``: this pod's workers only, for a single pod). ``verify``: who a
    token on the peer port is (None: not a peer); ``token``: this process's own token, to prove itself."""

    def __init__(self, guard: ReplayGuard, *, peer_port: int, index: int = 0, workers: int = 1,
                 settle: float = SETTLE_SECONDS, pods_known: bool = False, host: str = "0.0.0.0",
                 scope: str = "", clock: Callable[[], float] = time.monotonic,
                 verify: Callable[[str], Awaitable[str | None]] | None = None,
                 token: Callable[[], str] = read_token, name: str | None = None) -> None:
        self.guard, self.peer_port, self.index, self.workers = guard, peer_port, index, workers
        self.host, self.scope = host, scope
        self.settle, self.clock = settle, clock
        self.verify, self.token = verify, token
        self.name = name or this_pod()
        self.pods: frozenset[str] = frozenset()  # other gateway pods' addresses
        self.pods_known = pods_known  # the pods were listed, or there are none (never, for pods it cannot reach)
        self.watching = True  # the watch of the pods is up (follow_peers says when not)
        self.listed = asyncio.Event()  # the first list of the pods came
        self.changed = clock()  # the last membership change (this process's start counts)
        self.unsure_until = 0.0  # a copy at start was not whole: unsure until then (or a whole copy)
        self.links: dict[str, Link] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.connections = 0  # open on the peer port
        self.hellos: dict[asyncio.StreamWriter, None] = {}  # of them, not proven yet, oldest first
        self.tasks: set[asyncio.Task[Any]] = set()
        self.claims = dict.fromkeys(Verdict, 0)  # for metrics

    # --- membership
    def set_pods(self, addresses: Iterable[str]) -> None:
        pods = frozenset(addresses)
        if pods != self.pods or not self.pods_known:
            for gone in self.pods - pods:
                link = self.links.pop(f"pod:{gone}", None)
                if link is not None:  # (a hello under way too: it keeps nothing)
                    link.shut()
            self.pods, self.pods_known, self.changed = pods, True, self.clock()
            log.info("nonce peers: %d other gateway pod(s) %s", len(pods), sorted(pods))
            for ip in pods:  # connect (and learn who they are) now, not on the first signed request
                self._spawn(self.link(f"pod:{ip}")._connected())
        self.listed.set()

    def watch_broken(self) -> None:
        if self.watching:
            log.warning("nonce peers: the watch of the gateway's pods is broken: nonces are claimed in the API server too")
        self.watching = False

    def watch_up(self, up: bool) -> None:
        """What the watch of the pods says: down (every nonce unsure) or up again."""
        if up:
            self.watch_answered()
        else:
            self.watch_broken()

    def watch_answered(self) -> None:
        if not self.watching:
            self.changed = self.clock()  # (what it missed meanwhile: settle again)
        self.watching = True

    def settled(self) -> bool:
        now = self.clock()
        return self.pods_known and self.watching and now - self.changed >= self.settle and now >= self.unsure_until

    def targets(self) -> list[tuple[str, bytes]]:
        """(link name, request verb) for every other process: this pod's workers, then the other pods
        (one address per pod, never this one: told by their hellos)."""
        out = [(f"worker:{i}", b"L") for i in range(self.workers) if i != self.index]
        names = {self.name}
        for ip in sorted(self.pods):
            peer = self.link(f"pod:{ip}").peer
            if peer is not None:
                if peer in names:
                    continue
                names.add(peer)
            out.append((f"pod:{ip}", b"C"))
        return out

    def link(self, name: str) -> Link:
        link = self.links.get(name)
        if link is None:
            link = self.links[name] = Link(functools.partial(self._open, name), clock=self.clock)
        return link

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(b"A " + self.token().encode() + b"\n")
        line = await reader.readline()
        if not line.startswith(b"A ") or not line.endswith(b"\n"):
            raise ConnectionError("the peer did not accept this process's token")
        return line[2:].strip().decode("utf-8", "replace")

    # --- claiming
    async def claim(self, key: str, until: float | None = None) -> Verdict:
        """Whether ``key`` (already marked in this process's guard) is new to every other process
        (``until``: the time it must be kept until, on the guard's clock)."""
        if until is None:
            until = self.guard.clock() + self.guard.window  # type: ignore[operator]
        verdict = await self._ask_all(key, until, self.targets())
        if verdict is Verdict.NEW and not self.settled():
            verdict = Verdict.UNSURE
        self.claims[verdict] += 1
        return verdict

    async def _ask_all(self, key: str, until: float, targets: list[tuple[str, bytes]]) -> Verdict:
        if not targets:
            return Verdict.NEW
        answers = await asyncio.gather(*(self.link(name).ask(entry(verb, key, until)) for name, verb in targets))
        if any(a == b"S" for a in answers):
            return Verdict.SEEN
        if any(a != b"N" for a in answers):
            return Verdict.UNSURE
        return Verdict.NEW

    # --- serving
    async def serve(self) -> None:
        """Listen for this pod's workers (abstract unix socket) and, with a peer port, for other pods."""
        self.servers.append(await asyncio.start_unix_server(
            self._serve_sibling, sibling_address(self.peer_port, self.index, self.scope), limit=MAX_HELLO))
        if self.peer_port:
            self.servers.append(await asyncio.start_server(self._serve_pod, self.host, self.peer_port, limit=MAX_HELLO,
                                                           reuse_address=True, reuse_port=True))

    async def _serve_sibling(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                  struct.calcsize("3i")))
        except (OSError, AttributeError):
            uid = -1
        if uid != os.getuid():
            writer.close()
            return
        with contextlib.suppress(asyncio.CancelledError):  # (the server closed: nothing to tell anyone)
            await self._requests(reader, writer, "worker")

    async def _serve_pod(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS or self.verify is None:
            writer.close()
            return
        if len(self.hellos) >= MAX_HELLOS:  # the one waiting longest to prove itself makes room (a flood of
            oldest = next(iter(self.hellos))  # silent connections cannot keep a real peer out)
            del self.hellos[oldest]
            oldest.close()
        self.connections += 1
        keep_alive(writer)
        try:
            self.hellos[writer] = None
            try:
                async with asyncio.timeout(HELLO_TIMEOUT):
                    line = await reader.readline()
                    who = await self.verify(line[2:].strip().decode("ascii")) \
                        if line.startswith(b"A ") and line.endswith(b"\n") else None
            except (OSError, ConnectionError, ValueError, TimeoutError, RecursionError):  # ValueError: past the line limit
                who = None
            finally:
                self.hellos.pop(writer, None)
            if who is None or writer.is_closing():
                writer.close()
                return
            writer.write(b"A " + self.name.encode() + b"\n")
            await self._requests(reader, writer, who)
        except asyncio.CancelledError:  # (the server closed: nothing to tell anyone)
            writer.close()
        finally:
            self.connections -= 1

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str) -> None:
        answers: asyncio.Queue[asyncio.Future[bytes] | None] = asyncio.Queue(MAX_PENDING)
        answering = asyncio.create_task(self._answer(answers, writer), name="nonce-peer-answers")
        first = True
        try:
            while not answering.done():  # (it gives up on a peer that does not read its answers)
                async with asyncio.timeout(IDLE_TIMEOUT if who != "worker" else None):
                    line = await reader.readline()
                if not line or len(line) > MAX_LINE or not line.endswith(b"\n"):
                    break
                if first and line == b"D\n":
                    await self._dump(writer)
                    break
                if first and line.startswith(b"P "):
                    await self._take_hand_off(line, reader, writer, who)
                    break
                first = False
                request = parse(line)
                if request is None or request[0] not in (b"C", b"L"):
                    break
                verb, key, until = request
                new = self.guard.mark(key, until)  # (clamped to between now and twice the window ahead)
                answer: asyncio.Future[bytes]
                if verb == b"C" and self.workers > 1:  # from another pod: this pod's other workers mark it too
                    answer = asyncio.ensure_future(self._relay(key, until, new))
                else:
                    answer = asyncio.get_running_loop().create_future()
                    answer.set_result(b"N\n" if new else b"S\n")
                if answers.full():  # (waits when MAX_PENDING are being worked on, or the answers are not read)
                    putting = asyncio.ensure_future(answers.put(answer))
                    await asyncio.wait((putting, answering), return_when=asyncio.FIRST_COMPLETED)
                    if not putting.done():  # the answers stopped: so does the reading
                        putting.cancel()
                        break
                else:
                    answers.put_nowait(answer)
        except (OSError, ConnectionError, ValueError, TimeoutError):  # ValueError: a line past the reader's limit
            pass
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                answers.put_nowait(None)
            try:
                async with asyncio.timeout(ASK_TIMEOUT * 2):
                    await answering
            except (TimeoutError, asyncio.CancelledError):
                answering.cancel()
            writer.close()

    async def _relay(self, key: str, until: float, new: bool) -> bytes:
        others = [(f"worker:{i}", b"L") for i in range(self.workers) if i != self.index]
        verdict = await self._ask_all(key, until, others)
        if verdict is Verdict.SEEN or not new:
            return b"S\n"
        return b"U\n" if verdict is Verdict.UNSURE else b"N\n"

    async def _answer(self, answers: asyncio.Queue[asyncio.Future[bytes] | None], writer: asyncio.StreamWriter) -> None:
        """Write the answers in the order of their requests (a peer that does not read them is let go: its
        connection is dropped, unsent answers and all, and its requests are no longer read)."""
        try:
            while (answer := await answers.get()) is not None:
                writer.write(await answer)
                if answers.empty():
                    async with asyncio.timeout(STALLED):
                        await writer.drain()
        except (OSError, ConnectionError, TimeoutError):
            writer.transport.abort()  # (close() would wait for the peer to read what is unsent)

    def expiries(self) -> list[tuple[str, float]]:
        """Every key held and the Unix time it is kept until (a snapshot, for another process)."""
        now = self.guard.clock()  # type: ignore[operator]
        return [(key, now + ttl) for key, ttl in self.guard.ttls()]

    async def _dump(self, writer: asyncio.StreamWriter) -> None:
        entries = self.expiries()
        async with asyncio.timeout(COPY_TIMEOUT + PER_ENTRY * len(entries)):
            for start in range(0, len(entries), 1000):
                writer.write(b"".join(entry(b"", key, until)[1:] for key, until in entries[start:start + 1000]))
                await writer.drain()
                await asyncio.sleep(0)  # (a large table does not hold the loop)
            writer.write(b".\n")
            await writer.drain()

    async def _take_hand_off(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             who: str) -> None:
        taken: list[tuple[str, float]] = []
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(HAND_OFF_TIMEOUT) as deadline:
            while line and line != b".\n":
                if len(line) > MAX_LINE:
                    return
                request = parse(line)
                if request is None or request[0] != b"P":
                    return
                self.guard.merge(request[1], request[2])
                taken.append((request[1], request[2]))
                if len(taken) % 1000 == 0:  # (the time it may take grows with what has come)
                    deadline.reschedule(started + HAND_OFF_TIMEOUT + PER_ENTRY * (len(taken) + 1000))
                    await asyncio.sleep(0)
                line = await reader.readline()
            deadline.reschedule(None)  # (the hand-offs to the workers have their own time)
            if who != "worker":  # (the pod's port reached one of its workers: the others take them too)
                await asyncio.gather(*(self._hand_to(f"worker:{i}", taken)
                                       for i in range(self.workers) if i != self.index))
            writer.write(b".\n")
            await writer.drain()
        log.info("nonce peers: took %d nonce(s) handed off by %s", len(taken), who)

    # --- start and end
    async def copy_from_peers(self) -> tuple[int, int]:
        """Copy every nonce every other process holds (at start, all at once; each copy may take
        :data:`COPY_TIMEOUT` plus :data:`PER_ENTRY` a nonce); (whole copies, processes asked). Unless
        every copy came whole, this process stays unsure (:meth:`settled`) until a later copy is whole
        (tried again in the background) or twice the window has passed (what it missed has expired)."""
        whole, asked = await self._copy_all()
        if whole < asked:
            self.unsure_until = self.clock() + 2 * self.guard.window
            log.warning("nonce peers: not every other process's nonces were copied: nonces are claimed in the API "
                        "server too until a whole copy, or for %.0f s", 2 * self.guard.window)
            self._spawn(self._copy_again())
        return whole, asked

    async def _copy_all(self) -> tuple[int, int]:
        targets = self.targets()
        if not targets:
            return 0, 0
        done = await asyncio.gather(*(self._copy(name) for name, _verb in targets))
        whole = sum(1 for d in done if d)
        log.info("nonce peers: copied the nonces of %d of %d other process(es); %d held", whole, len(targets),
                 len(self.guard))
        return whole, len(targets)

    async def _copy_again(self) -> None:
        """After a copy that was not whole: copy again (every :data:`COPY_AGAIN` seconds, doubling) until
        every other process's copy comes whole, then this process may be sure again."""
        pause = COPY_AGAIN
        while self.clock() < self.unsure_until:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 12 * COPY_AGAIN)
            whole, asked = await self._copy_all()
            if whole == asked:
                self.unsure_until = 0.0
                log.info("nonce peers: every other process's nonces are copied now")
                return

    async def _open(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str | None]:
        """A connection to ``name`` (``worker:<index>`` or ``pod:<address>``), this process proven to a pod
        (its hello); the pod's name, from its answer."""
        kind, _, where = name.partition(":")
        if kind == "worker":
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(
                sibling_address(self.peer_port, int(where), self.scope)), CONNECT_TIMEOUT)
            return reader, writer, None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(where, self.peer_port), CONNECT_TIMEOUT)
        try:
            peer = await asyncio.wait_for(self._hello(reader, writer), HELLO_TIMEOUT)
        except BaseException:
            writer.close()
            raise
        return reader, writer, peer

    async def _copy(self, name: str) -> bool:
        try:
            reader, writer, _peer = await self._open(name)
        except (OSError, TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            log.info("nonce peers: could not copy the nonces of %s: %r", name, exc)
            return False
        try:
            loop = asyncio.get_running_loop()
            started, count = loop.time(), 0
            async with asyncio.timeout(COPY_TIMEOUT) as deadline:
                writer.write(b"D\n")
                while line := await reader.readline():
                    if line == b".\n":
                        return True
                    request = parse(b"K " + line)
                    if request is None:
                        return False
                    self.guard.merge(request[1], request[2])
                    count += 1
                    if count % 1000 == 0:  # (the time a copy may take grows with what has come)
                        deadline.reschedule(started + COPY_TIMEOUT + PER_ENTRY * (count + 1000))
            return False  # cut short: what came is kept, but it is not a whole copy
        except (OSError, ConnectionError, ValueError, TimeoutError) as exc:
            log.info("nonce peers: the copy of the nonces of %s was cut short: %r", name, exc)
            return False
        finally:
            writer.close()

    async def hand_off(self) -> int:
        """Give every nonce this process holds to every other pod (at shut-down; each hand-off may take
        :data:`HAND_OFF_TIMEOUT` plus :data:`PER_ENTRY` a nonce for each of the pod's workers); the pods
        that took them."""
        pods = [name for name, verb in self.targets() if verb == b"C"]
        if not pods or not len(self.guard):
            return 0
        entries = self.expiries()
        took = await asyncio.gather(*(self._hand_to(name, entries, self.workers) for name in pods))
        log.info("nonce peers: handed %d nonce(s) to %d of %d other pod(s)", len(entries), sum(took), len(pods))
        return sum(took)

    async def _hand_to(self, name: str, entries: list[tuple[str, float]], workers: int = 1) -> bool:
        """``workers``: how many processes take them there (a pod hands them on to its other workers
        before it answers)."""
        try:
            reader, writer, _peer = await self._open(name)
        except (OSError, TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            return False
        try:
            async with asyncio.timeout(HAND_OFF_TIMEOUT + PER_ENTRY * len(entries) * workers):
                for start in range(0, len(entries), 1000):
                    writer.write(b"".join(entry(b"P", key, until) for key, until in entries[start:start + 1000]))
                    await writer.drain()
                writer.write(b".\n")
                return await reader.readline() == b".\n"
        except (OSError, ConnectionError, ValueError, TimeoutError):
            return False
        finally:
            writer.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no running loop (a test's set-up): connected on first use instead
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for link in self.links.values():
            link.shut()
        for task in list(self.tasks):
            task.cancel()


def endpoint_addresses(slices: Iterable[dict[str, Any]], myself: str | None = None,
                       my_addresses: Iterable[str] = ()) -> set[str]:
    """One address of every pod in the gateway Service's EndpointSlices, ready or not (a draining pod
    still serves its kept-alive clients), except this pod (``myself``: its name; ``my_addresses``: its
    IPs). A pod in several slices (one per address family) is counted once."""
    mine = set(my_addresses)
    by_pod: dict[str, set[str]] = {}
    for s in slices:
        for ep in s.get("endpoints") or ():
            ref = ep.get("targetRef") or {}
            addresses = [a for a in ep.get("addresses") or () if a]
            if (myself is not None and ref.get("name") == myself) or mine.intersection(addresses):
                continue
            pod = ref.get("uid") or ref.get("name")
            for a in addresses:
                by_pod.setdefault(pod or a, set()).add(a)
    return {min(addresses, key=lambda a: (":" in a, a)) for addresses in by_pod.values()}  # (IPv4 first)


async def follow_peers(peers: Peers, clients: Clients, namespace: str, service: str, reach: Reach | None = None) -> None:
    """Keep ``peers.pods`` to the other pods behind the gateway's Service (its EndpointSlices), for ever."""
    slices: dict[str, dict[str, Any]] = {}
    myself = this_pod()
    my_addresses = [a for a in os.environ.get("POD_IPS", "").split(",") if a]

    def listed(items: list[dict[str, Any]]) -> None:
        slices.clear()
        slices.update({s["metadata"]["name"]: s for s in items})
        peers.set_pods(endpoint_addresses(slices.values(), myself, my_addresses))

    def changed(kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            slices.pop(obj["metadata"]["name"], None)
        else:
            slices[obj["metadata"]["name"]] = obj
        peers.set_pods(endpoint_addresses(slices.values(), myself, my_addresses))

    await list_watch(clients, Resource("discovery.k8s.io", "v1", "endpointslices", namespace,
                                       f"kubernetes.io/service-name={service}"),
                     listed=listed, changed=changed, reach=Told(peers.watch_up, reach),
                     backoff=Backoff(first=0.5, most=5.0), refused=peers.watch_broken)
