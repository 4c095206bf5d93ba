"""Who is calling, in which namespace, and may they: all decided by Kubernetes (SPEC §5).

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
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client

from fnsession.api.names import GROUP, SESSION
from fnsession.gateway import errors, signing
from fnsession.kube.client import Clients

log = logging.getLogger(__name__)
LABEL_ACCESS_KEY = "fnsession.dev/access-key-id"
NAMESPACE_HEADER = "x-fnsession-namespace"
CACHE_SECONDS = 10.0
RENEW_AFTER = 0.5  # of a cached decision's life: asked again in the background from then, when in use


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

    def put(self, key: Any, value: Any) -> Any:
        if len(self.items) > 10000:
            self.items.clear()
        self.items[key] = (time.monotonic() + self.seconds, value)
        return value


class Authenticator:
    """``mode``: ``kubernetes`` (tokens and access keys) or ``none`` (nobody is checked: development only)."""

    def __init__(self, clients: Clients, mode: str, default_namespace: str, keys_namespace: str) -> None:
        self.clients, self.mode = clients, mode
        self.default_namespace, self.keys_namespace = default_namespace, keys_namespace
        self.auth_api = client.AuthenticationV1Api(clients.api)
        self.authz_api = client.AuthorizationV1Api(clients.api)
        self.tokens, self.keys, self.reviews = TTLCache(), TTLCache(), TTLCache()
        self.replays = signing.ReplayGuard()
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
            self.renewals += 1
        except errors.FCError:  # not authenticated any more: forgotten, so its next request is refused
            self.tokens.items.pop(key, None)
        except Exception as exc:  # the API server did not answer: the entries expire as they would have
            log.warning("renewing a bearer token's identity and RBAC decision failed: %s", exc)

    async def once(self, key: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``'s result, shared by every caller that asks for ``key`` while it runs."""
        task = self.calls.get(key)
        if task is None:
            task = self.calls[key] = asyncio.ensure_future(call())
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
        identity: Identity = await self.once(("token", token, header_ns), lambda: self.token_review(token, header_ns))
        return identity

    async def token_review(self, token: str, header_ns: str | None) -> Identity:
        review = await self.auth_api.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
        if not review.status.authenticated:
            raise errors.unauthenticated("the bearer token is not valid")
        user = review.status.user
        name = user.username
        if name.startswith("system:serviceaccount:"):
            namespace = name.split(":")[2]
        else:
            namespace = header_ns or self.default_namespace
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.extra or {}).items()))
        return self.tokens.put((token, header_ns), Identity(name, tuple(user.groups or ()), user.uid, namespace, extra))

    async def by_access_key(self, method: str, raw_target: str, headers: Mapping[str, str], body: bytes) -> Identity:
        auth = signing.parse_authorization(headers.get("authorization"))
        key = await self.access_key(auth.access_key_id)
        signing.verify(method=method, raw_target=raw_target, headers=headers, body=body, secret=key["secret"],
                       authorization=auth)
        self.replays.check(headers, auth)
        user, groups = service_account(key["namespace"], key["serviceAccount"])
        return Identity(user, groups, None, key["namespace"])

    async def access_key(self, key_id: str) -> dict[str, str]:
        found = self.keys.get(key_id)
        if found is not None:
            return found
        secrets = await self.clients.core.list_namespaced_secret(
            self.keys_namespace, label_selector=f"{LABEL_ACCESS_KEY}={key_id}")
        if len(secrets.items) != 1:
            raise errors.unauthenticated(f"access key {key_id} does not exist")
        data = {k: base64.b64decode(v).decode() for k, v in (secrets.items[0].data or {}).items()}
        if not {"accessKeySecret", "namespace", "serviceAccount"} <= set(data):
            raise errors.unauthenticated(f"access key {key_id} is incomplete (its Secret lacks fields)")
        return self.keys.put(key_id, {"secret": data["accessKeySecret"], "namespace": data["namespace"],
                                      "serviceAccount": data["serviceAccount"]})

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
            allowed = await self.once(("review", who, verb), lambda: self.access_review(who, verb))
        return bool(allowed)

    async def access_review(self, who: Identity, verb: str) -> bool:
        review = await self.authz_api.create_subject_access_review(client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=who.user, groups=list(who.groups), uid=who.uid,
                extra={k: list(v) for k, v in who.extra} or None,
                resource_attributes=client.V1ResourceAttributes(
                    group=GROUP, resource=SESSION.plural, verb=verb, namespace=who.namespace))))
        allowed: bool = self.reviews.put((who, verb), bool(review.status.allowed))
        return allowed
