"""API keys, per-key rate limits and request body limits: the HTTP side of the threat model.

A request's key comes from ``X-API-Key`` or ``Authorization: Bearer``. Keys are compared by
their SHA-256 digests with :func:`hmac.compare_digest`, against every configured key without
stopping at the first match, so neither the time taken nor the order of the keys tells a
caller how close a guess was or which key it matched. Each request then takes a token from a
bucket: its key's when it presented a valid one, its client address's otherwise.

Errors keep FastAPI's shape and name the header: 401 when no key was given and one is needed,
403 when the key given is wrong, 429 (with ``Retry-After``) when the bucket is empty.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from serving.settings import ServingSettings

log = logging.getLogger(__name__)

#: The header carrying an API key (``Authorization: Bearer <key>`` is accepted too).
API_KEY_HEADER = "X-API-Key"
_LOC = ["header", API_KEY_HEADER]

_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="An API key from the serving settings."
)
_bearer = HTTPBearer(auto_error=False, description="The same API key, as a bearer token.")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """A set of API keys, checked in constant time.

    Examples:
        >>> ring = KeyRing.of(["a-key-of-16-chars", "another-key-16chr"])
        >>> ring.match("another-key-16chr") == ring.match("another-key-16chr") is not None
        True
        >>> ring.match("a-key-of-16-charZ") is None, ring.match("") is None
        (True, True)
        >>> len(KeyRing.of([]))
        0
    """

    def __init__(self, digests: Sequence[bytes]) -> None:
        self._digests = tuple(digests)

    @classmethod
    def of(cls, keys: Sequence[str | SecretStr]) -> KeyRing:
        """The ring of these keys (plain or secret strings); only their digests are kept."""
        plain = [k.get_secret_value() if isinstance(k, SecretStr) else k for k in keys]
        return cls([_digest(k) for k in plain])

    def __len__(self) -> int:
        return len(self._digests)

    def __add__(self, other: KeyRing) -> KeyRing:
        return KeyRing(self._digests + other._digests)

    def match(self, presented: str) -> str | None:
        """A stable, non-secret name of the key ``presented`` is (None when it is none).

        Every configured key is compared, matched or not; comparing fixed-length digests
        keeps the keys' lengths out of the timing too.
        """
        if not presented:
            return None
        candidate = _digest(presented)
        found = 0
        for digest in self._digests:
            found |= hmac.compare_digest(digest, candidate)
        return "key:" + candidate[:8].hex() if found else None


def constant_time_in(presented: str, keys: Sequence[str | SecretStr]) -> bool:
    """Whether ``presented`` is one of ``keys``, taking the same time whichever it matches.

    Examples:
        >>> constant_time_in("b" * 16, ["a" * 16, "b" * 16])
        True
        >>> constant_time_in("b" * 15, ["a" * 16, "b" * 16]), constant_time_in("", [""])
        (False, False)
    """
    return KeyRing.of(keys).match(presented) is not None


class RateLimiter:
    """Token buckets per client (a key's name or an address), thread-safe, bounded in memory.

    Each client may make ``burst`` requests at once and ``rate_per_s`` per second on average.
    At most ``max_clients`` buckets are kept: the least recently used is forgotten first,
    which costs nothing for a client idle long enough to have refilled (its bucket is full
    either way). A rate of 0 turns limiting off.

    Examples:
        >>> now = [0.0]
        >>> limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
        >>> [limiter.acquire("k") for _ in range(4)]
        [0.0, 0.0, 0.0, 0.5]
        >>> now[0] = 0.5
        >>> limiter.acquire("k"), limiter.acquire("k")
        (0.0, 0.5)
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s < 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_s must be >= 0, burst and max_clients >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, client: str) -> float:
        """Take a token from ``client``'s bucket: 0.0 if there was one, else the seconds
        until there will be (nothing is taken then)."""
        if self.rate_per_s == 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(now - at, 0.0) * self.rate_per_s)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate_per_s
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the server unreachable from other machines.

    Examples:
        >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost")
        (True, True, True)
        >>> is_loopback("0.0.0.0"), is_loopback("10.0.0.5"), is_loopback("api.internal")
        (False, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AccessPolicy:
    """Who may read and write, built once from the settings (no secrets kept, only digests)."""

    write_keys: KeyRing
    read_keys: KeyRing  # the read keys and the write keys
    anonymous_writes: bool
    anonymous_reads: bool
    limiter: RateLimiter

    @classmethod
    def from_settings(
        cls, settings: ServingSettings, clock: Callable[[], float] = time.monotonic
    ) -> AccessPolicy:
        write = KeyRing.of(settings.write_api_keys)
        mode = settings.unauthenticated_writes
        anonymous_writes = not write and (
            mode == "always" or (mode == "loopback" and is_loopback(settings.host))
        )
        limiter = RateLimiter(
            settings.rate_limit_per_s,
            settings.rate_limit_burst,
            max_clients=settings.rate_limit_max_clients,
            clock=clock,
        )
        return cls(
            write_keys=write,
            read_keys=KeyRing.of(settings.read_api_keys) + write,
            anonymous_writes=anonymous_writes,
            anonymous_reads=not settings.require_read_key,
            limiter=limiter,
        )

    def describe_writes(self, host: str) -> tuple[int, str]:
        """The log level and the one line on how writes are authenticated, for start-up."""
        if self.write_keys:
            count = len(self.write_keys)
            return logging.INFO, f"POST /events and /items need one of {count} write key(s)"
        if self.anonymous_writes:
            level = logging.INFO if is_loopback(host) else logging.WARNING
            return level, (
                f"POST /events and /items accept writes without a key (bound to {host},"
                " no serving.write_api_keys)"
            )
        return logging.WARNING, (
            f"POST /events and /items refuse every write: no serving.write_api_keys are set"
            f" and the API is bound to {host} (set STREAMREC_SERVING__WRITE_API_KEYS)"
        )


def _presented(header: str | None, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    """The key the request carries: X-API-Key first, then a bearer token."""
    if header:
        return header
    return bearer.credentials if bearer is not None else None


def _denied(status: int, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status, detail=[{"loc": _LOC, "msg": message}], headers=headers)


def _check(
    request: Request,
    presented: str | None,
    ring: KeyRing,
    anonymous: bool,
    what: str,
) -> None:
    """Rate-limit, then authenticate: raises the 429, 401 or 403 the request has earned."""
    policy: AccessPolicy = request.app.state.access
    name = ring.match(presented) if presented and ring else None
    client = request.client.host if request.client is not None else "unknown"
    wait = policy.limiter.acquire(name or "addr:" + client)
    if wait > 0:
        retry = max(1, math.ceil(wait))
        raise _denied(
            429,
            f"rate limit exceeded ({policy.limiter.rate_per_s:g}/s, burst"
            f" {policy.limiter.burst}); retry after {retry} s",
            {"Retry-After": str(retry)},
        )
    if name is not None:
        return
    if presented and (ring or not anonymous):
        raise _denied(403, f"the key given in {API_KEY_HEADER} or as bearer is not a {what} key")
    if not presented and not anonymous:
        raise _denied(
            401,
            f"a {what} key is required in {API_KEY_HEADER} or Authorization: Bearer",
            {"WWW-Authenticate": "Bearer"},
        )


async def require_write(
    request: Request,
    header: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Dependency of every write endpoint: a write key, unless anonymous writes are allowed."""
    policy: AccessPolicy = request.app.state.access
    _check(request, _presented(header, bearer), policy.write_keys, policy.anonymous_writes, "write")


async def require_read(
    request: Request,
    header: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Dependency of every read endpoint: a read or write key when ``require_read_key``."""
    policy: AccessPolicy = request.app.state.access
    _check(request, _presented(header, bearer), policy.read_keys, policy.anonymous_reads, "read")


class BodyTooLargeError(Exception):
    """A request body over the limit (``size`` is None when it had no Content-Length)."""

    def __init__(self, size: int | None, limit: int) -> None:
        self.size, self.limit = size, limit
        of = "" if size is None else f" of {size} bytes"
        super().__init__(f"body{of} exceeds the limit of {limit} bytes")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``max_bytes``: from its
    Content-Length before reading anything, or while reading a chunked body without one."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(
                400, [{"loc": ["header", "content-length"], "msg": "not an integer"}]
            ) from None
        if size > max_bytes:
            raise BodyTooLargeError(size, max_bytes)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise BodyTooLargeError(None, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)
