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

A candidate that could not read the Lease at all counts the lease duration again from when it next
reads it: not hearing from the API server is no evidence that the holder is gone (during an outage
the holder cannot renew either), so a standby never takes the Lease from a holder that was only
waiting for the same API server.
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

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election: identity must not be empty (set POD_NAME)")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election: need 0 < retry_period < renew_deadline < lease_duration, got "
                             f"{self.retry_period}, {self.renew_deadline}, {self.lease_duration}")
        if not self.outage_retry > 0:
            raise ValueError(f"leader election: need 0 < outage_retry, got {self.outage_retry}")


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
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.wall = wall
        self.observed: dict[str, Any] | None = None  # the record last read
        self.observed_at = 0.0                        # when it last changed, on our clock
        self.last_renew: float | None = None          # our last successful write as holder
        self.last_contact: float | None = None        # the API last answered us (readiness of a standby)
        self.blind = False                            # the last read failed: we know nothing of the Lease now
        self.failing_since: float | None = None       # the first of the current run of failed attempts
        self.own_version: str | None = None           # the resourceVersion our last write made
        self.lost = False                             # someone wrote the Lease since we last did
        self.leading = False                          # we hold the Lease, as far as we know
        self.acting = asyncio.Event()                 # ... and renewed it within the renew deadline

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

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when we hold the Lease afterwards. Never raises for API trouble."""
        cfg = self.config
        now, wall = self.clock(), self.wall()
        try:
            lease = await self.api.read_namespaced_lease(cfg.name, cfg.namespace, _request_timeout=cfg.retry_period * 2)
        except ApiException as exc:
            if exc.status != 404:
                self._failed(now, "reading", exc.reason)
                return False
            return await self._write(None, self._new_record(None, wall), now)
        except Exception as exc:  # noqa: BLE001 - timeouts, connection errors: retried
            self.blind = True
            self._failed(now, "reading", exc)
            return False
        self.last_contact = now
        if self.leading and self.own_version is not None and _resource_version(lease) != self.own_version:
            self.lost = True  # a write since ours: the Lease changed hands, whatever it says now
            return False
        record = _record(lease)
        if record != self.observed or self.blind:
            # a change; or the first look after we could not look at all, which restarts the count
            self.observed, self.observed_at, self.blind = record, now, False
        holder = record.get("holderIdentity")
        if holder and holder != cfg.identity and now < self.observed_at + cfg.lease_duration:
            return False  # held by someone else, and renewed (or first seen) within the lease duration
        return await self._write(lease, self._new_record(record, wall), now)

    def _new_record(self, old: dict[str, Any] | None, wall: datetime) -> dict[str, Any]:
        cfg = self.config
        ours = old is not None and old.get("holderIdentity") == cfg.identity
        return {"holderIdentity": cfg.identity, "leaseDurationSeconds": int(cfg.lease_duration),
                "acquireTime": old["acquireTime"] if ours and old and old.get("acquireTime") else _stamp(wall),
                "renewTime": _stamp(wall),
                "leaseTransitions": ((old or {}).get("leaseTransitions") or 0) + (0 if ours or old is None else 1)}

    async def _write(self, lease: Any, record: dict[str, Any], now: float) -> bool:
        cfg = self.config
        body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": record}
        try:
            if lease is None:
                written = await self.api.create_namespaced_lease(cfg.namespace, body, _request_timeout=cfg.retry_period * 2)
            else:
                body["metadata"]["resourceVersion"] = _resource_version(lease)  # a conflict if anyone wrote since
                written = await self.api.replace_namespaced_lease(cfg.name, cfg.namespace, body,
                                                                  _request_timeout=cfg.retry_period * 2)
        except ApiException as exc:
            if exc.status not in (409, 422):
                self._failed(now, "writing", exc.reason)
            return False
        except Exception as exc:  # noqa: BLE001
            self._failed(now, "writing", exc)
            return False
        self.observed, self.observed_at, self.last_renew, self.last_contact = record, now, now, now
        self.own_version = _resource_version(written)
        if self.failing_since is not None:
            log.info("leader election: Lease %s/%s written again after %.1f s of failures",
                     cfg.namespace, cfg.name, now - self.failing_since)
            self.failing_since = None
        return True

    def _failed(self, now: float, doing: str, why: Any) -> None:
        """Log the first failure of a run (a warning) and the rest quietly: an outage is one story."""
        cfg = self.config
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
            if self.holder and self.holder != self.config.identity:
                # look again every retry period, and once more just as the lease runs out, not up to a
                # retry period after it (the takeover comes that much sooner)
                expires_in = self.observed_at + self.config.lease_duration - self.clock()
                pause = min(pause, max(0.05, expires_in + 0.05))
            await asyncio.sleep(pause)
        self.leading = True
        self.acting.set()
        log.info("leader election: %s acquired Lease %s/%s", self.config.identity, self.config.namespace, self.config.name)

    async def keep(self) -> None:
        """Renew every retry period (every ``outage_retry`` once a renewal failed). Past the renew
        deadline without a renewal, stop acting until one succeeds; raise :class:`LostLease` once
        another identity holds the Lease. Returns only by cancellation."""
        cfg = self.config
        renewed = True
        while True:
            await asyncio.sleep(cfg.retry_period if renewed else min(cfg.outage_retry, cfg.retry_period))
            renewed = await self.try_acquire_or_renew()
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
            if self.acting.is_set() and (self.last_renew is None or self.clock() - self.last_renew >= cfg.renew_deadline):
                # before anyone could take it (lease duration > renew deadline): nothing written from now
                self.acting.clear()
                log.warning("leader election: could not renew Lease %s/%s for %g s: not acting (no handler, "
                            "no write) until it is renewed; exiting if another replica takes it",
                            cfg.namespace, cfg.name, cfg.renew_deadline)

    async def release(self) -> bool:
        """Give the Lease up on a clean stop (client-go's ReleaseOnCancel), so a standby takes over at
        once instead of after the lease duration. Call it only once this process has stopped acting."""
        cfg = self.config
        self.leading = False
        self.acting.clear()
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
        except Exception as exc:  # noqa: BLE001 - the standby then waits for the lease duration instead
            log.warning("leader election: releasing Lease %s/%s: %s", cfg.namespace, cfg.name, exc)
            return False
        log.info("leader election: %s released Lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
        return True
