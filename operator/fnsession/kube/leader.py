"""Leader election over a ``coordination.k8s.io`` Lease, as client-go's leaderelection does it.

One replica of the operator acts; the others wait. The holder renews the Lease every
``retry_period``; a candidate takes it only when the record it last saw has not changed for
``lease_duration`` (measured on its own clock from when it saw the change, so clock skew between
machines does not matter) or the holder released it. Every write is an update at the
resourceVersion just read, so two candidates can never both succeed.

A holder that cannot renew for ``renew_deadline`` (shorter than the lease duration) stops acting at
once, before anyone else could take over: :attr:`LeaderElector.acting` is cleared, and everything
that writes waits on it (:meth:`LeaderElector.may_act`). It keeps its process and its memory and
keeps trying (every ``outage_retry``); what the next answer says decides:

- the Lease is still at the resourceVersion of our own last write: nobody wrote it meanwhile (a
  takeover is a write), so we renew it and act again at once. This is an API server outage, where
  nobody can write: the operator rides it out with no restart and no rebuild, and acts again within
  ``outage_retry`` of the API server's return;
- anything else (another holder, or any write since ours, even one that left it free again):
  :class:`LostLease` is raised; the caller exits, as controller-runtime does, and comes back as a
  standby that rebuilds its state from the API.

A candidate whose reads failed (no answer, or any error but 404) does not count the time it was blind
against the holder: not hearing from the API server is no evidence that the holder is gone (during an
outage the holder cannot renew either), so a standby does not take the Lease from a holder that was
only waiting for the same API server; sporadic failed reads only delay a takeover by their length.

The deadline is kept by the clock, not by the answers: while acting, every request's timeout is cut
to what is left before the renew deadline, and the keeper wakes at the deadline. A standby counts
the lease duration from when its read returned, the holder its renewal from before it was sent. A
renewal whose answer was lost is recognised by its record (ours, our renewTime) and adopted.

What the gate cannot recall: a write already sent when the deadline passes (as with client-go), and
kopf's own bookkeeping patches (``status.kopf`` progress and diff-base), which bind nothing; the
session handler looks at the gate again before kopf writes the status it returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)


class LeaseApi(Protocol):
    """What this module needs of kubernetes_asyncio's ``CoordinationV1Api`` (a fake in unit tests)."""

    def read_namespaced_lease(self, name: str, namespace: str, *, _request_timeout: float = ...) -> Awaitable[Any]: ...
    def create_namespaced_lease(self, namespace: str, body: Any, *, _request_timeout: float = ...) -> Awaitable[Any]: ...
    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, *,
                                 _request_timeout: float = ...) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class LeaseConfig:
    identity: str                      # the pod's name
    name: str = "fnsession-operator"
    namespace: str = "fnsession-system"
    lease_duration: float = 15.0       # a candidate waits this long after the last change it saw
    renew_deadline: float = 10.0       # the holder stops acting if it could not renew for this long
    retry_period: float = 2.0          # between renewals, and between a candidate's attempts
    outage_retry: float = 0.5          # between a holder's attempts once a renewal failed (at most retry_period)
    standby_poll: float = 0.5          # between a standby's reads of a held Lease: a release is seen this soon

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election: identity must not be empty (set POD_NAME)")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election: need 0 < retry_period < renew_deadline < lease_duration, got "
                             f"{self.retry_period}, {self.renew_deadline}, {self.lease_duration}")
        if not self.outage_retry > 0:
            raise ValueError(f"leader election: need 0 < outage_retry, got {self.outage_retry}")
        if not self.standby_poll > 0:
            raise ValueError(f"leader election: need 0 < standby_poll, got {self.standby_poll}")


class LostLease(Exception):
    """Another identity holds the Lease we held."""


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime


def _field(obj: Any, snake: str, camel: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(camel)
    return getattr(obj, snake, None)


def _record(lease: Any) -> dict[str, Any]:
    """The lease's spec as a plain dict (models from the API client, or dicts from a fake)."""
    spec = _field(lease, "spec", "spec") or {}
    fields = {"holderIdentity": "holder_identity", "leaseDurationSeconds": "lease_duration_seconds",
              "acquireTime": "acquire_time", "renewTime": "renew_time", "leaseTransitions": "lease_transitions"}
    out = {}
    for camel, snake in fields.items():
        value = _field(spec, snake, camel)
        out[camel] = _stamp(value) if isinstance(value, datetime) else value
    return out


def _resource_version(lease: Any) -> str | None:
    meta = _field(lease, "metadata", "metadata") or {}
    version = _field(meta, "resource_version", "resourceVersion")
    return None if version is None else str(version)


class LeaderElector:
    def __init__(self, api: LeaseApi, config: LeaseConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.wall = wall
        self.sleep = sleep
        self.observed: dict[str, Any] | None = None  # the record last read
        self.observed_at = 0.0                        # when it last changed, on our clock
        self.last_renew: float | None = None          # when our last successful write as holder was sent
        self.last_contact: float | None = None        # the API last answered us (readiness of a standby)
        self.blind_since: float | None = None         # reads failing since then: we know nothing of the Lease
        self.failing_since: float | None = None       # the first of the current run of failed attempts
        self.own_version: str | None = None           # the resourceVersion our last write made
        self.sent: dict[str, Any] | None = None       # the record our last write sent (its answer may be lost)
        self.lost = False                             # someone else wrote (or deleted) the Lease since we last did
        self.attempt_failed = False                   # the last attempt met an error (not a refusal)
        self.leading = False                          # we hold the Lease, as far as we know
        self.acting = asyncio.Event()                 # ... and renewed it within the renew deadline
        self.released = False                         # given up on a clean stop (:meth:`release`)

    @property
    def paused(self) -> bool:
        """Holding the Lease but not acting: it could not be renewed within the renew deadline."""
        return self.leading and not self.acting.is_set()

    async def may_act(self) -> None:
        """Return once this process may act (write) as the leader; wait while it may not."""
        await self.acting.wait()

    @property
    def holder(self) -> str | None:
        return (self.observed or {}).get("holderIdentity") or None

    def _left(self) -> float | None:
        """Seconds until the renew deadline while acting (None when not acting as the holder)."""
        if not self.acting.is_set() or self.last_renew is None:
            return None
        return self.last_renew + self.config.renew_deadline - self.clock()

    def _timeout(self) -> float:
        """A request's timeout: never past the renew deadline while acting, so that an attempt that
        hangs cannot keep us acting beyond it (the check follows every attempt)."""
        left = self._left()
        limit = self.config.retry_period * 2
        return limit if left is None else max(0.05, min(limit, left))

    def _check_deadline(self) -> None:
        left = self._left()
        if left is not None and left <= 0:
            # before anyone could take it (lease duration > renew deadline): nothing written from now
            self.acting.clear()
            cfg = self.config
            log.warning("leader election: could not renew Lease %s/%s for %g s: not acting (no handler, "
                        "no write) until it is renewed; exiting if another replica takes it",
                        cfg.namespace, cfg.name, cfg.renew_deadline)

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when we hold the Lease afterwards. Never raises for API trouble."""
        cfg = self.config
        self.attempt_failed = False
        sent_at, wall = self.clock(), self.wall()  # a renewal counts from before it was sent
        try:
            lease = await self.api.read_namespaced_lease(cfg.name, cfg.namespace, _request_timeout=self._timeout())
        except ApiException as exc:
            if exc.status != 404:
                self._blind(sent_at, "reading", exc.reason)
                return False
            if self.leading:  # deleted under us: someone else wrote it
                self.lost = True
                return False
            return await self._write(None, self._new_record(None, wall), sent_at)
        except Exception as exc:  # noqa: BLE001 - timeouts, connection errors: retried
            self._blind(sent_at, "reading", exc)
            return False
        seen = self.clock()  # a standby counts the lease duration from when it saw the record
        self.last_contact = seen
        record = _record(lease)
        if self.leading and self.own_version is not None and _resource_version(lease) != self.own_version:
            if self.sent is not None and record == self.sent:
                self.own_version = _resource_version(lease)  # our own write, whose answer we never got
            else:
                self.observed = record
                self.lost = True  # a write since ours: the Lease changed hands, whatever it says now
                return False
        if record != self.observed:
            self.observed, self.observed_at = record, seen
        elif self.blind_since is not None:
            # unchanged, but for a while we could not look: the holder may have been just as cut off
            # (an API server outage), so the time we were blind does not count against it
            self.observed_at += seen - self.blind_since
        self.blind_since = None
        holder = record.get("holderIdentity")
        if holder and holder != cfg.identity and seen < self.observed_at + cfg.lease_duration:
            return False  # held by someone else, and renewed (or first seen) within the lease duration
        return await self._write(lease, self._new_record(record, wall), sent_at)

    def _new_record(self, old: dict[str, Any] | None, wall: datetime) -> dict[str, Any]:
        cfg = self.config
        ours = old is not None and old.get("holderIdentity") == cfg.identity
        return {"holderIdentity": cfg.identity, "leaseDurationSeconds": int(cfg.lease_duration),
                "acquireTime": old["acquireTime"] if ours and old and old.get("acquireTime") else _stamp(wall),
                "renewTime": _stamp(wall),
                "leaseTransitions": ((old or {}).get("leaseTransitions") or 0) + (0 if ours or old is None else 1)}

    async def _write(self, lease: Any, record: dict[str, Any], sent_at: float) -> bool:
        cfg = self.config
        body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": record}
        self.sent = record
        try:
            if lease is None:
                written = await self.api.create_namespaced_lease(cfg.namespace, body, _request_timeout=self._timeout())
            else:
                body["metadata"]["resourceVersion"] = _resource_version(lease)  # a conflict if anyone wrote since
                written = await self.api.replace_namespaced_lease(cfg.name, cfg.namespace, body,
                                                                  _request_timeout=self._timeout())
        except ApiException as exc:
            if exc.status != 409:  # 409: someone wrote it since our read; the next read says who
                self._failed(sent_at, "writing", exc.reason)
            return False
        except Exception as exc:  # noqa: BLE001
            self._failed(sent_at, "writing", exc)
            return False
        now = self.clock()
        self.observed, self.observed_at, self.last_renew, self.last_contact = record, now, sent_at, now
        self.own_version = _resource_version(written)
        if self.failing_since is not None:
            log.info("leader election: Lease %s/%s written again after %.1f s of failures",
                     cfg.namespace, cfg.name, now - self.failing_since)
            self.failing_since = None
        return True

    def _blind(self, now: float, doing: str, why: Any) -> None:
        """A failed read (any answer but 404, or none): we know nothing of the Lease from now."""
        if self.blind_since is None:
            self.blind_since = now
        self._failed(now, doing, why)

    def _failed(self, now: float, doing: str, why: Any) -> None:
        """Log the first failure of a run (a warning) and the rest quietly: an outage is one story."""
        cfg = self.config
        self.attempt_failed = True
        if self.failing_since is None:
            self.failing_since = now
            log.warning("leader election: %s Lease %s/%s: %s (retrying)", doing, cfg.namespace, cfg.name, why)
        else:
            log.debug("leader election: %s Lease %s/%s: %s", doing, cfg.namespace, cfg.name, why)

    def _pause(self) -> float:
        return self.config.retry_period * (1 + 0.2 * random.random())  # client-go's JitterFactor 1.2

    async def acquire(self) -> None:
        """Wait until we hold the Lease (a standby waits here, retrying every retry period)."""
        while not await self.try_acquire_or_renew():
            pause = self._pause()
            if self.holder and self.holder != self.config.identity and not self.attempt_failed:
                # look again every standby_poll (a holder stopped cleanly releases the Lease: taken
                # within that, not up to a retry period later; one small read of a Lease each time),
                # and once more just as the lease runs out
                expires_in = self.observed_at + self.config.lease_duration - self.clock()
                pause = min(pause, self.config.standby_poll * (1 + 0.2 * random.random()), max(0.05, expires_in + 0.05))
            await self.sleep(pause)
        self.leading = True
        self.acting.set()
        log.info("leader election: %s acquired Lease %s/%s", self.config.identity, self.config.namespace, self.config.name)

    async def keep(self) -> None:
        """Renew every retry period (every ``outage_retry`` once a renewal failed). At the renew
        deadline without a renewal, stop acting until one succeeds; raise :class:`LostLease` once
        another identity wrote the Lease. Returns after :meth:`release`, else only by cancellation."""
        cfg = self.config
        renewed = True
        while True:
            pause = cfg.retry_period if renewed else min(cfg.outage_retry, cfg.retry_period)
            left = self._left()
            # wake at the deadline (at once when an attempt ran past it)
            await self.sleep(pause if left is None else max(0.0, min(pause, left)))
            if self.released:
                return  # given up on a clean stop: nothing to renew, and nobody to race
            self._check_deadline()
            renewed = await self.try_acquire_or_renew()
            if self.released:
                return
            if renewed:
                if not self.acting.is_set():
                    log.warning("leader election: Lease %s/%s renewed: nobody took it meanwhile, acting again",
                                cfg.namespace, cfg.name)
                    self.acting.set()
                continue
            if self.lost or (self.holder and self.holder != cfg.identity):
                self.leading = False
                self.acting.clear()
                raise LostLease(f"Lease {cfg.namespace}/{cfg.name} was written by another replica since our last "
                                f"renewal (holder now: {self.holder or 'none'})" if self.lost else
                                f"Lease {cfg.namespace}/{cfg.name} is held by {self.holder}")

    async def release(self) -> bool:
        """Give the Lease up on a clean stop (client-go's ReleaseOnCancel), so a standby takes over at
        once instead of after the lease duration. It stops acting first, and ends :meth:`keep`; a
        renewal in flight meanwhile makes the write a 409, and it is tried once more."""
        cfg = self.config
        self.leading = False
        self.released = True
        self.acting.clear()
        for attempt in (1, 2):
            try:
                lease = await self.api.read_namespaced_lease(cfg.name, cfg.namespace, _request_timeout=2)
                record = _record(lease)
                if record.get("holderIdentity") != cfg.identity:
                    return False
                wall = _stamp(self.wall())
                released = {**record, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": wall, "acquireTime": wall}
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": cfg.name, "namespace": cfg.namespace,
                                     "resourceVersion": _resource_version(lease)}, "spec": released}
                await self.api.replace_namespaced_lease(cfg.name, cfg.namespace, body, _request_timeout=2)
                break
            except Exception as exc:  # noqa: BLE001 - the standby then waits for the lease duration instead
                if attempt == 1 and getattr(exc, "status", None) == 409:
                    continue
                log.warning("leader election: releasing Lease %s/%s: %s", cfg.namespace, cfg.name, exc)
                return False
        log.info("leader election: %s released Lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
        return True
