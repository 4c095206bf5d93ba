"""Verification of FC's ``ACS3-HMAC-SHA256`` request signatures, as FC's official Python SDK makes them
(tests/unit/test_gateway_signing.py checks requests captured from that SDK), plus a replay window (date skew, nonce reuse).

Everything is computed from the request as it arrived: the raw, still percent-encoded path (a
session id may contain ``%2F``), the wire query, and exactly the headers the client says it signed.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit

from fnsession.gateway import errors

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ACCESS_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class Authorization:
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str | None) -> Authorization:
    """``ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<h1;h2>,Signature=<hex>``."""
    if not value or not value.startswith(ALGORITHM + " "):
        raise errors.unauthenticated(f"the Authorization header is not {ALGORITHM}")
    fields = dict(part.split("=", 1) for part in value[len(ALGORITHM) + 1:].split(",") if "=" in part)
    try:
        signed = tuple(fields["SignedHeaders"].split(";"))
        credential = fields["Credential"]
        auth = Authorization(credential, signed, fields["Signature"])
    except KeyError as missing:
        raise errors.unauthenticated(f"the Authorization header lacks {missing.args[0]}") from None
    if not ACCESS_KEY_ID.fullmatch(credential):  # (one spelling per key: it names the key's Secret and its nonces)
        raise errors.unauthenticated("Credential must be an access key id: letters, digits, '.', '_' or '-'")
    return auth


def nonce_of(headers: Mapping[str, str]) -> str:
    """``x-acs-signature-nonce`` as the signature covers it (surrounding whitespace is not signed, so it
    does not make another nonce)."""
    return headers.get("x-acs-signature-nonce", "").strip()


def canonical_query(raw_query: str) -> str:
    """Decode the wire query as form data, drop valueless keys, sort by key, re-encode values as RFC 3986."""
    pairs = [(k, v) for k, v in parse_qsl(raw_query, keep_blank_values=True)]
    return "&".join(f"{k}={quote(v, safe='~')}" for k, v in sorted(pairs, key=lambda kv: kv[0]))


def canonical_request(method: str, raw_target: str, headers: Mapping[str, str], signed_headers: tuple[str, ...],
                      payload_sha256: str) -> str:
    """``raw_target``: the request target as received (origin or absolute form), not decoded."""
    parts = urlsplit(raw_target)
    path = parts.path or "/"
    lines = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed_headers)
    return "\n".join([method.upper(), path, canonical_query(parts.query), lines, ";".join(signed_headers), payload_sha256])


def sign(secret: str, canonical: str) -> str:
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def verify(*, method: str, raw_target: str, headers: Mapping[str, str], body: bytes, secret: str,
           authorization: Authorization) -> None:
    """Raise FC's 401 unless the request is signed with ``secret``. ``headers``: lower-case names."""
    payload = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-acs-content-sha256")
    if claimed is not None and claimed != payload:
        raise errors.signature_mismatch()
    if "host" not in authorization.signed_headers:
        raise errors.unauthenticated("the signature must cover the host header")
    expected = sign(secret, canonical_request(method, raw_target, headers, authorization.signed_headers, payload))
    if not hmac.compare_digest(expected, authorization.signature.lower()):
        raise errors.signature_mismatch()


class ReplayGuard:
    """Refuses a request whose ``x-acs-date`` is off by more than ``window`` seconds, or whose
    ``x-acs-signature-nonce`` was seen while that request could still pass the date check.

    A nonce is kept until its request's date is ``window`` seconds past (the latest time a replay
    of it would still be in the window), so up to twice the window when the date is ahead of the
    gateway's clock. Memory is bounded by the traffic of that time: a key is 16 bytes kept once, in
    a dict and in the list of the :data:`BUCKET`-second slot it expires in; whole slots are dropped
    as they pass (about 150 bytes a nonce, measured in tests/unit/test_gateway_peers.py)."""

    BUCKET = 10.0  # seconds: a key is kept until the end of the slot its expiry falls in (never less)

    def __init__(self, window: float = 900.0, clock: object = time.time) -> None:
        self.window = window
        self.clock = clock
        self.seen: dict[bytes, int] = {}  # key -> the slot it expires at the end of
        self.slots: dict[int, list[bytes]] = {}
        self.order: list[int] = []  # a heap of the slots in use

    def __len__(self) -> int:
        self.prune()
        return len(self.seen)

    def __contains__(self, key: str) -> bool:
        self.prune()
        return bytes.fromhex(key) in self.seen

    def check(self, headers: Mapping[str, str], authorization: Authorization) -> float:
        """Refuse a stale date or a nonce seen (FC's 401); else mark the nonce and return until when it
        is kept: the request's date plus the window (the latest a replay of it would pass the date check)."""
        now = self.clock()  # type: ignore[operator]
        for header in ("x-acs-date", "x-acs-signature-nonce"):
            if header not in authorization.signed_headers:
                raise errors.unauthenticated(f"the signature must cover {header}")
        try:
            sent = datetime.strptime(headers["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        except (KeyError, ValueError):
            raise errors.unauthenticated("x-acs-date must be a UTC time like 2026-11-22T03:47:51Z") from None
        if abs(now - sent) > self.window:
            raise errors.unauthenticated(f"x-acs-date is more than {int(self.window)} s away from the server's time")
        if not nonce_of(headers):
            raise errors.unauthenticated("x-acs-signature-nonce must not be empty")
        if not self.mark(self.key(authorization.access_key_id, nonce_of(headers)), sent + self.window):
            raise errors.unauthenticated("x-acs-signature-nonce was already used: a replayed request")
        return sent + self.window

    @staticmethod
    def key(access_key_id: str, nonce: str) -> str:
        """What is kept of a nonce: a digest of the key id and the nonce (also what the gateway's
        processes tell each other, fnsession.gateway.peers)."""
        return hashlib.sha256(f"{access_key_id}/{nonce}".encode()).hexdigest()[:32]

    def mark(self, key: str, until: float | None = None) -> bool:
        """Note ``key`` as used, to be kept until ``until`` (default: ``window`` seconds from now;
        clamped to between now and twice the window ahead); False when it is held already."""
        now = self.prune()
        raw = bytes.fromhex(key)
        if raw in self.seen:
            self._keep(raw, now, until)  # (a later expiry told by another process is kept)
            return False
        self._keep(raw, now, until)
        return True

    def merge(self, key: str, until: float) -> None:
        """Note ``key`` as used until ``until`` (copied from another process); a time already past is ignored."""
        now = self.prune()
        if until > now:  # (NaN is not)
            self._keep(bytes.fromhex(key), now, until)

    def ttls(self) -> list[tuple[str, float]]:
        """Every key held and the seconds it is kept for yet (a snapshot, for another process)."""
        now = self.prune()
        return [(raw.hex(), slot * self.BUCKET - now) for raw, slot in self.seen.items()]

    def prune(self) -> float:
        """Drop the slots that have passed; the time now."""
        now: float = self.clock()  # type: ignore[operator]
        while self.order and self.order[0] * self.BUCKET < now:  # slot s: keys to be kept until s * BUCKET
            slot = heapq.heappop(self.order)
            for raw in self.slots.pop(slot, ()):
                if self.seen.get(raw) == slot:
                    del self.seen[raw]
        return now

    def _keep(self, raw: bytes, now: float, until: float | None) -> None:
        if until is None or until != until:  # (NaN)
            until = now + self.window
        until = min(max(until, now), now + 2 * self.window)
        slot = math.ceil(until / self.BUCKET)
        held = self.seen.get(raw)
        if held is not None and held >= slot:
            return
        self.seen[raw] = slot
        bucket = self.slots.get(slot)
        if bucket is None:
            bucket = self.slots[slot] = []
            heapq.heappush(self.order, slot)
        bucket.append(raw)
