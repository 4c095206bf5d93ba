"""The gateway's Kubernetes decisions as cached: one API call for many concurrent askers, and the
renewal in the background that keeps a steady stream of requests from ever finding them expired
(auth.py). The TokenReview and SubjectAccessReview APIs are stand-ins here; the integration tests
run the real ones."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from fnsession.gateway import auth as auth_module
from fnsession.gateway.auth import CACHE_SECONDS, GRACE_SECONDS, Authenticator
from fnsession.gateway.errors import FCError

TOKEN = "tok-1"
BEARER = b"Bearer " + TOKEN.encode()
USER = "system:serviceaccount:team:caller"


class Kubernetes:
    """TokenReview and SubjectAccessReview that count their calls, answer after ``delay`` seconds,
    and say what ``authenticated`` and ``allowed`` say (or raise ``failure``)."""

    def __init__(self) -> None:
        self.token_reviews = self.access_reviews = 0
        self.authenticated, self.allowed, self.delay = True, True, 0.02
        self.failure: Exception | None = None

    async def create_token_review(self, body: Any) -> Any:
        self.token_reviews += 1
        await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        user = SimpleNamespace(username=USER, groups=["system:serviceaccounts"], uid="uid-1", extra=None)
        return SimpleNamespace(status=SimpleNamespace(authenticated=self.authenticated, user=user))

    async def create_subject_access_review(self, body: Any) -> Any:
        self.access_reviews += 1
        await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        return SimpleNamespace(status=SimpleNamespace(allowed=self.allowed))


@pytest.fixture
async def world() -> AsyncIterator[tuple[Authenticator, Kubernetes]]:
    api = ApiClient()
    auth = Authenticator(SimpleNamespace(api=api), "kubernetes", "default", "fnsession-system")  # type: ignore[arg-type]
    kube = Kubernetes()
    auth.auth_api = auth.authz_api = kube  # type: ignore[assignment]
    yield auth, kube
    await api.close()


def age(auth: Authenticator, seconds: float) -> None:
    """Every cached decision as if given ``seconds`` ago."""
    for cache in (auth.tokens, auth.reviews):
        cache.items = {k: (expiry - seconds, v) for k, (expiry, v) in cache.items.items()}


async def settle(auth: Authenticator) -> None:
    for _ in range(100):
        if not auth.calls:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"calls still under way: {list(auth.calls)}")


async def test_concurrent_misses_make_one_call_each(world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world

    async def invoke() -> None:
        who = await auth.by_token(TOKEN, None)
        await auth.authorize(who, "get")

    await asyncio.gather(*(invoke() for _ in range(16)))
    assert (kube.token_reviews, kube.access_reviews) == (1, 1)
    assert auth.cached_grant(BEARER, None) is not None and not auth.calls


async def test_one_caller_cancelled_does_not_cancel_the_call_for_the_others(world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    first = asyncio.ensure_future(auth.by_token(TOKEN, None))
    second = asyncio.ensure_future(auth.by_token(TOKEN, None))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).user == USER and kube.token_reviews == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_refusal_reaches_every_concurrent_caller(world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    kube.authenticated = False
    results = await asyncio.gather(*(auth.by_token(TOKEN, None) for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, FCError) and r.status == 401 for r in results) and kube.token_reviews == 1
    assert auth.tokens.get((TOKEN, None)) is None  # a refusal is not cached: the next request asks again


async def grant(auth: Authenticator) -> None:
    who = await auth.by_token(TOKEN, None)
    await auth.authorize(who, "get")


async def test_a_decision_in_use_is_renewed_in_the_background_past_half_its_life(
        world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    await grant(auth)
    until, _ = auth.cached_grant(BEARER, None)  # type: ignore[misc]
    # young: good until the renewal is due, half its life from now, and nothing is asked
    assert until == pytest.approx(time.monotonic() + CACHE_SECONDS * auth_module.RENEW_AFTER, abs=0.5)
    assert not auth.calls

    age(auth, CACHE_SECONDS * 0.75)
    for _ in range(16):  # sixteen connections' memos running out together: one renewal
        until, _who = auth.cached_grant(BEARER, None)  # type: ignore[misc]
    assert until == pytest.approx(time.monotonic() + CACHE_SECONDS * 0.25, abs=0.5), "still only until it expires"
    assert list(auth.calls) == [("renew", (TOKEN, None))]
    await settle(auth)
    assert (kube.token_reviews, kube.access_reviews, auth.renewals) == (2, 2, 1)
    token_expiry = auth.tokens.items[(TOKEN, None)][0]
    assert token_expiry == pytest.approx(time.monotonic() + CACHE_SECONDS, abs=0.5), "renewed: a full life again"
    assert auth.cached_grant(BEARER, None) is not None and not auth.calls


async def test_the_full_paths_cached_identity_renews_too(world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    await grant(auth)
    age(auth, CACHE_SECONDS * 0.75)
    assert auth.cached_identity({"authorization": "Bearer " + TOKEN}) is not None
    await settle(auth)
    assert auth.renewals == 1 and kube.token_reviews == 2


async def test_a_token_that_no_longer_authenticates_is_forgotten_on_renewal(
        world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    await grant(auth)
    age(auth, CACHE_SECONDS * 0.75)
    kube.authenticated = False
    assert auth.cached_grant(BEARER, None) is not None  # still good until the renewal answers
    await settle(auth)
    assert auth.cached_grant(BEARER, None) is None and auth.tokens.get((TOKEN, None)) is None
    with pytest.raises(FCError) as refused:
        await auth.by_token(TOKEN, None)
    assert refused.value.status == 401


async def test_rbac_withdrawn_is_seen_on_renewal(world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    await grant(auth)
    age(auth, CACHE_SECONDS * 0.75)
    kube.allowed = False
    auth.cached_grant(BEARER, None)
    await settle(auth)
    assert auth.cached_grant(BEARER, None) is None  # the lane declines; the full path answers 403
    with pytest.raises(FCError) as refused:
        await auth.authorize(await auth.by_token(TOKEN, None), "get")
    assert refused.value.status == 403


async def test_a_renewal_the_api_server_does_not_answer_keeps_the_last_answers_for_the_grace_only(
        world: tuple[Authenticator, Kubernetes], caplog: pytest.LogCaptureFixture) -> None:
    auth, kube = world
    await grant(auth)
    age(auth, CACHE_SECONDS * 0.75)
    kube.failure = ConnectionError("the API server went away")
    with caplog.at_level(logging.WARNING):
        auth.cached_grant(BEARER, None)
        await settle(auth)
    assert "the API server is unreachable" in caplog.text and auth.renewals == 0 and auth.reach.down
    age(auth, CACHE_SECONDS * 0.3)  # past the answers' own expiry: the grace stands in, the lane flows
    assert auth.cached_grant(BEARER, None) is not None
    age_grace(auth, GRACE_SECONDS - 2)
    age(auth, CACHE_SECONDS * 0.6)
    auth.reach.last_try -= auth_module.RETRY_WHILE_DOWN
    assert auth.cached_grant(BEARER, None) is not None  # renewal due: from the grace again
    await settle(auth)
    assert auth.tokens.items[(TOKEN, None)][0] <= time.monotonic() + 2.5, "never past the grace"
    age_grace(auth, 3)
    age(auth, CACHE_SECONDS)
    assert auth.cached_grant(BEARER, None) is None
    auth.reach.last_try -= auth_module.RETRY_WHILE_DOWN
    with pytest.raises(FCError) as refused:
        await auth.by_token(TOKEN, None)
    assert refused.value.status == 503 and "not checked in the last 300 s" in refused.value.message


def age_grace(auth: Authenticator, seconds: float) -> None:
    """Every answer the grace keeps as if given ``seconds`` earlier."""
    for grace in (auth.grace_tokens, auth.grace_reviews, auth.grace_keys):
        grace.items = {k: (at - seconds, v) for k, (at, v) in grace.items.items()}


async def test_while_the_api_server_is_unreachable_known_credentials_flow_and_others_get_503_at_once(
        world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    await grant(auth)                                   # seen and allowed to get
    kube.allowed = False
    who = await auth.by_token(TOKEN, None)
    assert not await auth.decide(who, "delete")         # seen, refused
    kube.authenticated = False
    with pytest.raises(FCError):
        await auth.by_token("tok-refused", None)        # a token refused
    kube.authenticated, kube.allowed = True, True
    age(auth, CACHE_SECONDS * 2)                        # every cached answer expired
    kube.failure = ConnectionRefusedError("connection refused")
    calls = kube.token_reviews + kube.access_reviews

    # known: the last identity and RBAC answer, without waiting
    began = time.monotonic()
    assert (await auth.by_token(TOKEN, None)).user == USER
    await auth.authorize(who, "get")
    assert auth.cached_grant(BEARER, None) is not None, "the lane takes it again"
    assert auth.reach.down and auth.graced == 2
    # unseen, refused, or a right refused: FC's 503 at once, never the grace
    for attempt in (lambda: auth.by_token("tok-new", None), lambda: auth.by_token("tok-refused", None),
                    lambda: auth.authorize(who, "delete")):
        with pytest.raises(FCError) as refused:
            await attempt()
        assert refused.value.status == 503 and refused.value.code == "ServiceUnavailable"
    assert time.monotonic() - began < 0.5
    assert kube.token_reviews + kube.access_reviews - calls == 1, "one try while down, the rest refused at once"

    # the API server answers again: the next try (a second later at most) finds it, and it decides again
    kube.failure = None
    auth.reach.last_try -= auth_module.RETRY_WHILE_DOWN
    assert (await auth.by_token("tok-new", None)).user == USER and not auth.reach.down


async def test_an_api_server_that_hangs_is_given_up_on_after_the_timeout(
        world: tuple[Authenticator, Kubernetes], monkeypatch: pytest.MonkeyPatch) -> None:
    auth, kube = world
    await grant(auth)
    age(auth, CACHE_SECONDS * 2)
    monkeypatch.setattr(auth_module, "API_TIMEOUT", 0.2)
    kube.delay = 30
    began = time.monotonic()
    assert (await auth.by_token(TOKEN, None)).user == USER
    with pytest.raises(FCError) as refused:
        await auth.by_token("tok-new", None)
    assert refused.value.status == 503 and time.monotonic() - began < 1.0 and auth.reach.down


async def test_the_grace_never_outlives_a_refusal(world: tuple[Authenticator, Kubernetes]) -> None:
    auth, kube = world
    await grant(auth)
    kube.authenticated = False
    age(auth, CACHE_SECONDS * 2)
    with pytest.raises(FCError):
        await auth.by_token(TOKEN, None)               # refused now: forgotten by the grace too
    kube.failure = ConnectionRefusedError("connection refused")
    with pytest.raises(FCError) as refused:
        await auth.by_token(TOKEN, None)
    assert refused.value.status == 503


class Leases:
    """create_namespaced_lease as the API server answers it: once per name, then 409."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    async def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> Any:
        if body.metadata.name in self.names:
            raise ApiException(status=409, reason="AlreadyExists")
        self.names.add(body.metadata.name)
        return body


async def test_a_nonce_claimed_by_one_gateway_process_is_refused_by_every_other() -> None:
    api = ApiClient()
    leases = Leases()
    processes = []
    for _ in range(2):  # two gateway processes (workers or replicas), one API server
        a = Authenticator(SimpleNamespace(api=api), "kubernetes", "default", "fnsession-system",  # type: ignore[arg-type]
                          shared_nonces=True)
        a.nonces.api = leases  # type: ignore[union-attr]
        processes.append(a)
    first, second = processes
    await first.nonces.claim("KEY1", "n-1")  # type: ignore[union-attr]
    with pytest.raises(FCError) as refused:
        await second.nonces.claim("KEY1", "n-1")  # type: ignore[union-attr]
    assert refused.value.status == 401 and "already used" in refused.value.message
    await second.nonces.claim("KEY2", "n-1")  # type: ignore[union-attr]  # another key's nonce: its own
    assert len(leases.names) == 2 and all(n.startswith("fnsession-nonce-") and len(n) <= 63 for n in leases.names)
    await api.close()
