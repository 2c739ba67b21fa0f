"""A per-key rate limit kept in Redis, so every API replica shares one budget.

Fixed one-minute windows (INCR + EXPIRE): simple, and exact enough for
protecting the service. When Redis is unreachable the limit fails open — the
submission itself then answers 503 for the broker.
"""

from __future__ import annotations

import hashlib
import logging
import time

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


async def enforce(request: Request, settings: Settings, api_key: str | None) -> None:
    """429 with Retry-After once a key (or a client address, without keys) is over budget."""
    limit = settings.rate_limit_per_minute
    if limit <= 0:
        return
    who = api_key or (request.client.host if request.client else "unknown")
    # Hashed: the key itself never reaches Redis (nor its logs).
    digest = hashlib.sha256(who.encode()).hexdigest()[:24]
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    name = f"ratelimit:{digest}:{window}"
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
            f"rate limit exceeded: {limit} requests per minute; retry in {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )
