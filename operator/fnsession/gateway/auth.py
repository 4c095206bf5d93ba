"""Who is calling, in which namespace, and may they: all decided by Kubernetes (the gateway keeps no users or roles of its own).

- ``Authorization: Bearer <token>``: a TokenReview says who it is. A ServiceAccount acts in its own
  namespace; other users in the ``x-fnsession-namespace`` header's, else the gateway's default.
- ``Authorization: ACS3-HMAC-SHA256 Credential=<key id>,...`` (FC's SDKs): the key's Secret (in the
  gateway's namespace, labelled ``fnsession.dev/access-key-id``) holds the secret, the namespace and
  the ServiceAccount the key acts as; the signature is verified and replays are refused.
- Then a SubjectAccessReview on ``functionsessions`` in that namespace, for the operation's verb:
  the REST API grants nothing that RBAC does not.

Decisions are cached for a few seconds (tokens, keys, reviews), so a stream of requests costs no
API call per request. A bearer token's identity and its ``get`` decision that are still in use past
half their life are asked again in the background (one TokenReview and one SubjectAccessReview per
token, whatever the number of connections), so that a steady stream never finds them expired and
never waits on the API server; no answer is used longer than :data:`CACHE_SECONDS` after it was
given, and a token that no longer authenticates is forgotten at once. Concurrent misses for one
key make one API call, which they all await.

The data plane outlives the control plane: when the API server cannot be reached (no connection, no
answer within :data:`API_TIMEOUT`, a 5xx), a credential that was positively answered in the last
:data:`GRACE_SECONDS` keeps its last identity and RBAC answers until the API server answers again
(:class:`Reachability` tells; one call a second tries it while it is down, the rest fail at once),
and anything else (a credential not seen, or refused, or seen longer ago) gets FC's 503
``ServiceUnavailable`` at once instead of waiting.

With several gateway processes (workers, replicas), a signed request's nonce is also claimed from
every other process (:mod:`fnsession.gateway.peers`: a round trip on the pod network, no API call), so
a request replayed to another process is refused too. When that cannot be certain (a process did not
answer, or the processes changed in the last seconds), or the other replicas cannot be reached at
all (no ``--peer-port``), it is claimed in the cluster as well (:class:`SharedNonces`: a Lease named
after it, which the API server creates once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from fnsession.api.names import GROUP, SESSION
from fnsession.gateway import errors, signing
from fnsession.gateway.peers import Peers, Verdict
from fnsession.kube import reviews
from fnsession.kube.client import Clients
from fnsession.kube.objects import ApiException

log = logging.getLogger(__name__)
LABEL_ACCESS_KEY = "fnsession.dev/access-key-id"
NAMESPACE_HEADER = "x-fnsession-namespace"
CACHE_SECONDS = 10.0
RENEW_AFTER = 0.5  # of a cached decision's life: asked again in the background from then, when in use
GRACE_SECONDS = 300.0  # how long a positive answer stands in while the API server cannot be reached
API_TIMEOUT = 3.0  # seconds an authentication or authorisation call waits for the API server
RETRY_WHILE_DOWN = 1.0  # seconds between tries of the API server while it is unreachable
LABEL_NONCE = "fnsession.dev/signature-nonce"


class Unreachable(Exception):
    """The API server did not answer (no connection, a timeout, a 5xx)."""


def unavailable(why: str) -> errors.FCError:
    return errors.FCError(503, "ServiceUnavailable", why, retry_after_ms=1000)


def unreachable_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the API server could not be reached (rather than that it refused)."""
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status == 0 or exc.status >= 500
    return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError))


class Reachability:
    """Whether the API server answers, as the gateway's calls find it: down from a call that could not
    reach it, up again at the next that could. While down, :meth:`wait` refuses at once except for one
    caller a second, which tries."""

    def __init__(self) -> None:
        self.down_since: float | None = None  # monotonic
        self.last_try = 0.0
        self.outages = 0  # for metrics

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def may_try(self) -> bool:
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now - self.last_try >= RETRY_WHILE_DOWN:
            self.last_try = now
            return True
        return False

    def failed(self) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self.outages += 1
            log.warning("the API server is unreachable: known credentials keep their last answers for up to %.0f s",
                        GRACE_SECONDS)
        self.last_try = now

    def answered(self) -> None:
        if self.down_since is not None:
            log.info("the API server answers again (after %.1f s)", time.monotonic() - self.down_since)
            self.down_since = None

    async def call(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``, bounded by :data:`API_TIMEOUT`; :class:`Unreachable` when the API server did not
        answer (or is known down and it is not this caller's turn to try)."""
        if not self.may_try():
            raise Unreachable("the API server is unreachable")
        try:
            out = await asyncio.wait_for(call(), API_TIMEOUT)
        except Exception as exc:
            if unreachable_error(exc):
                self.failed()
                raise Unreachable(str(exc) or type(exc).__name__) from exc
            self.answered()
            raise
        self.answered()
        return out


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]
    uid: str | None
    namespace: str
    extra: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())


def service_account(namespace: str, name: str) -> tuple[str, tuple[str, ...]]:
    return (f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


class TTLCache:
    def __init__(self, seconds: float = CACHE_SECONDS) -> None:
        self.seconds = seconds
        self.items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        hit = self.entry(key)
        return None if hit is None else hit[1]

    def entry(self, key: Any) -> tuple[float, Any] | None:
        """``(expiry, value)`` (monotonic time) while the entry holds; None when missing or expired."""
        hit = self.items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit

    def put(self, key: Any, value: Any, until: float = math.inf) -> Any:
        """Keep ``value`` for the cache's seconds, or until ``until`` (monotonic) if sooner."""
        if len(self.items) > 10000:
            self.items.clear()
        self.items[key] = (min(time.monotonic() + self.seconds, until), value)
        return value


class Grace:
    """The last positive answer per key, and when it was given (monotonic): what stands in while the
    API server is unreachable, for :data:`GRACE_SECONDS` after it was given, never longer."""

    def __init__(self, seconds: float = GRACE_SECONDS) -> None:
        self.seconds = seconds
        self.items: dict[Any, tuple[float, Any]] = {}

    def keep(self, key: Any, value: Any) -> None:
        if len(self.items) > 20000:
            cutoff = time.monotonic() - self.seconds
            self.items = {k: v for k, v in self.items.items() if v[0] >= cutoff}
        self.items[key] = (time.monotonic(), value)

    def forget(self, key: Any) -> None:
        self.items.pop(key, None)

    def get(self, key: Any) -> tuple[float, Any] | None:
        """``(until, value)``: the answer and until when (monotonic) it may stand in; None if none."""
        hit = self.items.get(key)
        if hit is None:
            return None
        until = hit[0] + self.seconds
        return (until, hit[1]) if time.monotonic() < until else None


class SharedNonces:
    """A signed request's nonce claimed for every gateway process at once: a Lease named after it in
    the gateway's namespace, which the API server creates once (409 for a replay, whichever process
    it reaches). :meth:`sweep` deletes those older than twice the replay window."""

    def __init__(self, clients: Clients, namespace: str, window: float) -> None:
        self.api = reviews.coordination_api(clients)
        self.namespace, self.window = namespace, window

    @staticmethod
    def name(access_key_id: str, nonce: str) -> str:
        return "fnsession-nonce-" + hashlib.sha256(f"{access_key_id}/{nonce}".encode()).hexdigest()[:40]

    async def claim(self, access_key_id: str, nonce: str) -> None:
        if not await reviews.create_lease(self.api, self.namespace, self.name(access_key_id, nonce),
                                          {LABEL_NONCE: "true"}, _request_timeout=API_TIMEOUT):
            raise errors.unauthenticated("x-acs-signature-nonce was already used: a replayed request")

    async def sweep(self) -> None:
        cutoff = datetime.now(UTC).timestamp() - 2 * self.window
        await reviews.delete_leases_older(self.api, self.namespace, f"{LABEL_NONCE}=true", cutoff)

    async def run_sweeper(self, every: float = 60.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.debug("sweeping signature nonces: %s", exc)


class Authenticator:
    """``mode``: ``kubernetes`` (tokens and access keys) or ``none`` (nobody is checked: development only)."""

    def __init__(self, clients: Clients, mode: str, default_namespace: str, keys_namespace: str,
                 reachability: Reachability | None = None, shared_nonces: bool = False) -> None:
        self.clients, self.mode = clients, mode
        self.default_namespace, self.keys_namespace = default_namespace, keys_namespace
        self.auth_api = reviews.authentication_api(clients)
        self.authz_api = reviews.authorization_api(clients)
        self.tokens, self.keys, self.reviews = TTLCache(), TTLCache(), TTLCache()
        self.grace_tokens, self.grace_keys, self.grace_reviews = Grace(), Grace(), Grace()
        self.reach = reachability or Reachability()
        self.replays = signing.ReplayGuard()
        self.nonces = SharedNonces(clients, keys_namespace, self.replays.window) if shared_nonces else None
        self.peers: Peers | None = None  # the other gateway processes, asked first (module docstring)
        self.graced = 0  # answers given from the grace while the API server was unreachable (metrics)
        self.calls: dict[Any, asyncio.Task[Any]] = {}  # API calls under way, by what they decide (single-flight)
        self.renewals = 0  # tokens renewed in the background (metrics)

    async def identify(self, method: str, raw_target: str, headers: Mapping[str, str], body: bytes) -> Identity:
        """``headers``: lower-case names. FC's 401 when nobody can be identified."""
        header_ns = headers.get(NAMESPACE_HEADER)
        if self.mode == "none":
            return self.anonymous(header_ns)
        value = headers.get("authorization", "")
        if value.startswith("Bearer "):
            return await self.by_token(value[7:].strip(), header_ns)
        if value.startswith(signing.ALGORITHM + " "):
            return await self.by_access_key(method, raw_target, headers, body)
        raise errors.unauthenticated("no credentials: send a Kubernetes bearer token or sign with an fnsession access key")

    def cached_identity(self, headers: Mapping[str, str]) -> Identity | None:
        """Who a bearer-token request is, if known from an earlier request (no API call); None otherwise.
        Signed requests always take :meth:`identify`: their signature covers the body."""
        if self.mode == "none":
            return self.anonymous(headers.get(NAMESPACE_HEADER))
        value = headers.get("authorization", "")
        if not value.startswith("Bearer "):
            return None
        key = (value[7:].strip(), headers.get(NAMESPACE_HEADER))
        hit = self.tokens.entry(key)
        if hit is None:
            return None
        if time.monotonic() >= self.renew_at(hit[0]):
            self.renew(key)
        identity: Identity = hit[1]
        return identity

    def cached_grant(self, credential: bytes | None, header_ns: bytes | None) -> tuple[float, Identity] | None:
        """For the lane: ``(until, identity)`` when a request with this Authorization value (as sent)
        may invoke with no API call, its bearer token known and RBAC's ``get`` allowed, both cached
        until ``until`` (monotonic time); None when either must be asked (or was refused)."""
        ns = None if header_ns is None else header_ns.decode("latin-1")
        if self.mode == "none":
            return math.inf, self.anonymous(ns)
        if credential is None or not credential.startswith(b"Bearer "):
            return None
        key = (credential[7:].strip().decode("latin-1"), ns)
        token = self.tokens.entry(key)
        if token is None:
            return None
        decision = self.reviews.entry((token[1], "get"))
        if decision is None or not decision[1]:
            return None
        expiry = min(token[0], decision[0])
        renew_at = self.renew_at(expiry)
        if time.monotonic() < renew_at:
            return renew_at, token[1]  # asked again then, when the renewal is due
        self.renew(key)
        return expiry, token[1]

    def renew_at(self, expiry: float) -> float:
        """When a cached decision that expires at ``expiry`` (monotonic time) is due to be asked again."""
        return expiry - min(self.tokens.seconds, self.reviews.seconds) * RENEW_AFTER

    def renew(self, key: tuple[str, str | None]) -> None:
        """Ask again, in the background, who the token ``key`` is and whether they may ``get``; once."""
        if ("renew", key) in self.calls:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a caller outside the gateway): the entries just expire
            return
        task = self.calls[("renew", key)] = loop.create_task(self.renewal(key))
        task.add_done_callback(lambda _: self.calls.pop(("renew", key), None))

    async def renewal(self, key: tuple[str, str | None]) -> None:
        try:
            who = await self.by_token(*key, fresh=True)
            await self.decide(who, "get", fresh=True)
            if not self.reach.down:  # (else the grace answered: kept, not renewed)
                self.renewals += 1
        except errors.FCError as err:  # not authenticated any more: forgotten, so its next request is refused
            if err.status != 503:
                self.tokens.items.pop(key, None)
        except Unreachable:  # the entries expire as they would have; the grace stands in meanwhile
            pass
        except Exception as exc:  # noqa: BLE001 - a background renewal: whatever failed, the entries expire as they would have
            log.warning("renewing a bearer token's identity and RBAC decision failed: %s", exc)

    async def once(self, key: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``'s result, shared by every caller that asks for ``key`` while it runs."""
        task = self.calls.get(key)
        if task is None:
            task = self.calls[key] = asyncio.ensure_future(self.reach.call(call))
            task.add_done_callback(lambda t: (self.calls.pop(key, None), t.cancelled() or t.exception()))
        return await asyncio.shield(task)  # one caller cancelled does not cancel the call for the others

    def anonymous(self, header_ns: str | None) -> Identity:
        return Identity("anonymous", (), None, header_ns or self.default_namespace)

    @staticmethod
    def denied(who: Identity, verb: str) -> errors.FCError:
        return errors.forbidden(f"{who.user} may not {verb} functionsessions.{GROUP} in namespace {who.namespace}")

    def cached_decision(self, who: Identity, verb: str) -> bool | None:
        """RBAC's answer for ``who`` and ``verb`` if known (no API call); None otherwise."""
        return True if self.mode == "none" else self.reviews.get((who, verb))

    async def by_token(self, token: str, header_ns: str | None, fresh: bool = False) -> Identity:
        found = None if fresh else self.tokens.get((token, header_ns))
        if found is not None:
            return found
        try:
            identity: Identity = await self.once(("token", token, header_ns), lambda: self.token_review(token, header_ns))
        except Unreachable:
            identity = self.from_grace(self.grace_tokens, self.tokens, (token, header_ns), "the bearer token")
        return identity

    def from_grace(self, grace: Grace, cache: TTLCache, key: Any, what: str) -> Any:
        """The API server is unreachable: the last positive answer for ``key`` if recent enough (kept in
        ``cache`` again, no longer than the grace), else FC's 503."""
        hit = grace.get(key)
        if hit is None:
            raise unavailable(f"the API server is unreachable and {what} was not checked in the last "
                              f"{GRACE_SECONDS:.0f} s; retry later")
        self.graced += 1
        return cache.put(key, hit[1], until=hit[0])

    async def token_review(self, token: str, header_ns: str | None) -> Identity:
        review = await reviews.token_review(self.auth_api, token)
        if not review.authenticated:
            self.grace_tokens.forget((token, header_ns))
            raise errors.unauthenticated("the bearer token is not valid")
        user = review.user
        name = user.username
        if name.startswith("system:serviceaccount:"):
            namespace = name.split(":")[2]
        else:
            namespace = header_ns or self.default_namespace
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.extra or {}).items()))
        identity = Identity(name, tuple(user.groups or ()), user.uid, namespace, extra)
        self.grace_tokens.keep((token, header_ns), identity)
        return self.tokens.put((token, header_ns), identity)

    async def by_access_key(self, method: str, raw_target: str, headers: Mapping[str, str], body: bytes) -> Identity:
        auth = signing.parse_authorization(headers.get("authorization"))
        key = await self.access_key(auth.access_key_id)
        signing.verify(method=method, raw_target=raw_target, headers=headers, body=body, secret=key["secret"],
                       authorization=auth)
        until = self.replays.check(headers, auth)
        if self.peers is not None:  # and for every other gateway process
            verdict = await self.peers.claim(self.replays.key(auth.access_key_id, signing.nonce_of(headers)), until)
            if verdict is Verdict.SEEN:
                raise errors.unauthenticated("x-acs-signature-nonce was already used: a replayed request")
            sure = verdict is Verdict.NEW
        else:
            sure = False
        if self.nonces is not None and not sure:  # in the cluster, when the processes could not tell for certain
            try:
                await self.reach.call(lambda: self.nonces.claim(auth.access_key_id,  # type: ignore[union-attr]
                                                                signing.nonce_of(headers)))
            except Unreachable:  # a key seen lately: this process's own guard (above) alone, for the outage
                if self.grace_keys.get(auth.access_key_id) is None:
                    raise unavailable("the API server is unreachable: a signed request's nonce cannot be checked") from None
        user, groups = service_account(key["namespace"], key["serviceAccount"])
        return Identity(user, groups, None, key["namespace"])

    async def access_key(self, key_id: str) -> dict[str, str]:
        found = self.keys.get(key_id)
        if found is not None:
            return found
        try:
            secrets = await self.reach.call(lambda: reviews.secrets_data(
                self.clients, self.keys_namespace, f"{LABEL_ACCESS_KEY}={key_id}"))
        except Unreachable:
            found = self.from_grace(self.grace_keys, self.keys, key_id, f"access key {key_id}")
            return dict(found)
        if len(secrets) != 1:
            self.grace_keys.forget(key_id)
            raise errors.unauthenticated(f"access key {key_id} does not exist")
        data = secrets[0]
        if not {"accessKeySecret", "namespace", "serviceAccount"} <= set(data):
            raise errors.unauthenticated(f"access key {key_id} is incomplete (its Secret lacks fields)")
        key = {"secret": data["accessKeySecret"], "namespace": data["namespace"], "serviceAccount": data["serviceAccount"]}
        self.grace_keys.keep(key_id, key)
        return self.keys.put(key_id, key)

    async def authorize(self, who: Identity, verb: str) -> None:
        """FC's 403 unless RBAC lets ``who`` do ``verb`` on functionsessions in their namespace."""
        if self.mode == "none":
            return
        if not await self.decide(who, verb):
            raise self.denied(who, verb)

    async def decide(self, who: Identity, verb: str, fresh: bool = False) -> bool:
        """RBAC's answer for ``who`` and ``verb``: from the cache, else (or when ``fresh``) a SubjectAccessReview."""
        allowed = None if fresh else self.reviews.get((who, verb))
        if allowed is None:
            try:
                allowed = await self.once(("review", who, verb), lambda: self.access_review(who, verb))
            except Unreachable:
                allowed = self.from_grace(self.grace_reviews, self.reviews, (who, verb), f"{who.user}'s right to {verb}")
        return bool(allowed)

    async def access_review(self, who: Identity, verb: str) -> bool:
        answer = await reviews.access_review(self.authz_api, user=who.user, groups=list(who.groups), uid=who.uid,
                                             extra={k: list(v) for k, v in who.extra} or None,
                                             group=GROUP, resource=SESSION.plural, verb=verb, namespace=who.namespace)
        allowed: bool = self.reviews.put((who, verb), answer)
        if allowed:
            self.grace_reviews.keep((who, verb), True)
        else:
            self.grace_reviews.forget((who, verb))
        return allowed
