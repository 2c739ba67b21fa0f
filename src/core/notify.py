"""Job change notices over Redis pub/sub: whoever changes a job says which one (this
module: the channel and the publisher), and the API wakes exactly the requests that wait
on it (`?wait=`, event streams; `src.core.notices`) instead of polling the store once per
client.

Only a job id travels, never data: a woken waiter reads the store. Notices are best
effort both ways. A publish that fails is dropped (a worker's job never waits on
Redis), and a listener that lost Redis says so (`Listener.live` false): waiters then
poll the store, as they also do slowly while live, so a lost notice only delays them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

CHANNEL = "cleaning:jobs"
PUBLISH_TIMEOUT_SECONDS = 0.25  # a notice is worth less than a chunk's time
PUBLISH_PAUSE_SECONDS = (1.0, 16.0)  # after a failed publish, drop notices this long,
# doubling while they fail: a Redis that hangs costs a job one short timeout now and then
LOG_EVERY_SECONDS = 60.0


class RareLog:
    """A warning at most once per `every` seconds: an outage is said, not shouted."""

    def __init__(
        self,
        logger: logging.Logger,
        every: float = LOG_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger, self._every, self._clock = logger, every, clock
        self._last: float | None = None
        self._quiet = 0

    def warning(self, msg: str, *args: object) -> bool:
        """Log unless one was logged less than `every` seconds ago; True when logged."""
        now = self._clock()
        if self._last is not None and now - self._last < self._every:
            self._quiet += 1
            return False
        if self._quiet:
            msg += f" ({self._quiet} more since the last such message)"
        self._last, self._quiet = now, 0
        self._logger.warning(msg, *args)
        return True


class _Publishing(Protocol):
    def publish(self, channel: str, message: str) -> Any: ...


class Publisher:
    """Publishes job ids from a worker process (blocking, short): never raises, never
    waits longer than `timeout`; after a failure it drops notices for `pause[0]` seconds,
    doubling up to `pause[1]` while they fail, so an outage costs a job next to nothing."""

    def __init__(
        self,
        url: str,
        channel: str = CHANNEL,
        *,
        timeout: float = PUBLISH_TIMEOUT_SECONDS,
        pause: tuple[float, float] = PUBLISH_PAUSE_SECONDS,
        client: _Publishing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.channel = url, channel
        self._timeout, self._pause, self._clock = timeout, pause, clock
        self._client = client
        self._paused_until = 0.0
        self._next_pause = pause[0]
        self._log = RareLog(log, clock=clock)

    def _redis(self) -> _Publishing:
        if self._client is None:  # at first use: no connection at import or construction
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),  # redis-py retries 10 times by default
            )
        return self._client

    def publish(self, job_id: str) -> None:
        if self._clock() < self._paused_until:
            return
        try:
            self._redis().publish(self.channel, job_id)
        except Exception as exc:  # Redis down, slow, misconfigured: the job goes on
            self._paused_until = self._clock() + self._next_pause
            self._next_pause = min(self._next_pause * 2, self._pause[1])
            self._log.warning(
                "job change notices not sent (%s: %s); waiters fall back to polling",
                type(exc).__name__,
                exc,
            )
        else:
            self._next_pause = self._pause[0]
