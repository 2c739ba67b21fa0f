"""Per-key rate limits kept in Redis, so every API replica shares one budget.

Two budgets: submissions (RATE_LIMIT_PER_MINUTE) and everything else (reads, generous
by default), so a client polling its job never runs out of submissions. An event
stream is one request however long it lasts; open streams are capped per key.

Fixed one-minute windows (INCR + EXPIRE): simple, and exact enough for
protecting the service. When Redis is unreachable the limit fails open — the
submission itself then answers 503 for the broker.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Request
from redis.exceptions import RedisError

from src.api.errors import RATE_LIMITED, ApiError
from src.core.config import Settings

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60


def _client(request: Request, settings: Settings) -> aioredis.Redis:
    client = getattr(request.app.state, "ratelimit_redis", None)
    if client is None:
        timeout = settings.broker_timeout_seconds
        client = aioredis.from_url(
            settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        request.app.state.ratelimit_redis = client
    return client


@dataclass(frozen=True)
class Budget:
    """One per-key budget: its Redis key prefix, what it counts, and its limit."""

    prefix: str
    unit: str
    limit: Callable[[Settings], int]


SUBMISSIONS = Budget("ratelimit", "submissions", lambda s: s.rate_limit_per_minute)
READS = Budget("readlimit", "requests", lambda s: s.read_rate_limit)


async def enforce(request: Request, settings: Settings, who: str, budget: Budget) -> None:
    """429 with Retry-After once `who` (a key's digest, or a client address) is over budget."""
    limit = budget.limit(settings)
    if limit <= 0:
        return
    # Hashed: no key or address reaches Redis (nor its logs).
    digest = hashlib.sha256(who.encode()).hexdigest()[:24]
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    name = f"{budget.prefix}:{digest}:{window}"
    try:
        client = _client(request, settings)
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.expire(name, WINDOW_SECONDS + 1)
            count, _ = await pipe.execute()
    except RedisError as exc:
        log.warning("rate limit not enforced (Redis unavailable): %s", type(exc).__name__)
        return
    if count > limit:
        retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now) + 1)
        raise ApiError(
            RATE_LIMITED,
            f"rate limit exceeded: {limit} {budget.unit} per minute; retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )


class StreamSlots:
    """Open event streams per caller, in this API process: each stream holds one slot."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def take(self, who: str, limit: int) -> Callable[[], None]:
        """A slot for `who` (429 when `limit` are open; 0: no limit); call the result to free it."""
        if limit and self._open.get(who, 0) >= limit:
            raise ApiError(
                RATE_LIMITED,
                f"too many open event streams: at most {limit} per key; close one, or "
                "poll GET /jobs/{id}?wait=",
                headers={"Retry-After": "5"},
            )
        self._open[who] = self._open.get(who, 0) + 1
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self._open[who] -= 1
                if not self._open[who]:
                    del self._open[who]

        return free
