"""The API's side of job change notices: one subscription a process (`Listener`) that
wakes exactly the requests waiting on a job (`Watch`), tells observers of every notice
(the API's job cache, `src.api.jobcache`), and fences: `fence` returns once every notice
published before it was called has been dispatched. The channel, the publisher and what
travels are in `src.core.notify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from src.core.notify import CHANNEL, PUBLISH_TIMEOUT_SECONDS, RareLog

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.5, 15.0)  # the listener reconnects after this, doubling up to the second
IDLE_SECONDS = 30.0  # the listener keeps its connection this long after its last waiter
READ_SECONDS = 1.0  # how often the listener looks up from Redis (idle, shutdown)

Wake = Callable[[], None]
Seen = Callable[[str], None]  # an observer's: told the id of every job that changed


class Watch:
    """One waiter's doorbell: `wait` returns when its job may have changed, or on timeout."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True when woken (a change since the last wait), False after `timeout`.

        Read the store after this returns: a notice that came while the caller was
        reading rings at once, so none is missed between two waits.
        """
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()


class _Subscription(Protocol):
    async def subscribe(self, *channels: str) -> Any: ...
    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None: ...
    async def aclose(self) -> None: ...
    def ping(self) -> Awaitable[Any]: ...


class Listener:
    """The API process's one subscription, shared by every waiter of the process.

    Started with the first waiter or observer, closed `idle` seconds after the last
    waiter leaves while no observer is left (or by `close`). Each notice wakes exactly
    the waiters of that job, and tells every observer; while the subscription is not
    live (connecting, Redis down) `live` is false, and when it becomes live or is lost
    every waiter is woken and every observer reset: it may have missed a notice.
    Its connection is named `<name>:<host>:<pid>` (Redis `CLIENT LIST`). `connect`
    (tests) gives the subscription instead of a Redis connection.
    """

    def __init__(
        self,
        url: str,
        channel: str = CHANNEL,
        *,
        name: str = "cleaning",
        idle: float = IDLE_SECONDS,
        retry: tuple[float, float] = RETRY_SECONDS,
        read_every: float = READ_SECONDS,
        connect: Callable[[], _Subscription] | None = None,
    ) -> None:
        self.url, self.channel, self.name = url, channel, name
        self._idle, self._retry, self._read_every = idle, retry, read_every
        self._connect = connect or self._redis_subscription
        self._waiters: dict[str, list[Wake]] = {}
        self._observers: list[tuple[Seen, Wake]] = []
        self._subscription: _Subscription | None = None  # while live: `fence` pings on it
        self._fence_next: list[asyncio.Future[bool]] = []  # callers of `fence` not pinged yet
        self._fence_sent: deque[list[asyncio.Future[bool]]] = deque()  # a batch a PING
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._publisher: aioredis.Redis | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._log = RareLog(log)
        self.live = False

    # ------------------------------------------------------------ waiters
    def add(self, job_id: str, wake: Wake) -> Callable[[], None]:
        """Call `wake` on each notice about `job_id` (and on live/lost); returns `remove`."""
        self._waiters.setdefault(job_id, []).append(wake)
        self._start()

        def remove() -> None:
            wakes = self._waiters.get(job_id, [])
            with contextlib.suppress(ValueError):
                wakes.remove(wake)
            if not wakes:
                self._waiters.pop(job_id, None)
            self._left()

        return remove

    def observe(self, seen: Seen, reset: Wake) -> Callable[[], None]:
        """Call `seen(job_id)` on every notice (and at once on this process's own
        `publish`), and `reset()` whenever the subscription becomes live or is lost; keeps
        the subscription open until the returned `remove` is called."""
        entry = (seen, reset)
        self._observers.append(entry)
        self._start()

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._observers.remove(entry)
            self._left()

        return remove

    def _needed(self) -> bool:
        return bool(self._waiters or self._observers)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="job-notices")

    def _left(self) -> None:
        if not self._needed() and self._changed is not None:
            self._changed.set()  # a listener waiting to reconnect leaves now

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """A `Watch` rung by notices about `job_id` while the block runs."""
        watch = Watch()
        remove = self.add(job_id, watch.wake)
        try:
            yield watch
        finally:
            remove()

    def watched(self) -> int:
        """How many jobs have waiters (for tests and diagnostics)."""
        return len(self._waiters)

    def dispatch(self, job_id: str) -> int:
        """Tell the observers, then wake the waiters of `job_id`; how many waiters."""
        self._tell(job_id)
        wakes = list(self._waiters.get(job_id, ()))
        for wake in wakes:
            _call(wake)
        return len(wakes)

    def _tell(self, job_id: str) -> None:
        for seen, _ in list(self._observers):
            _call(functools.partial(seen, job_id))

    def _wake_all(self) -> None:
        for _, reset in list(self._observers):
            _call(reset)
        for wakes in list(self._waiters.values()):
            for wake in list(wakes):
                _call(wake)

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            if not live:
                self._end_fences()
            self._wake_all()  # connected: re-read what may have changed meanwhile; lost: poll

    # ------------------------------------------------------------ fences
    async def fence(self, timeout: float) -> bool:
        """True once every notice that Redis took before this call has been dispatched
        here: a PING through the subscription, whose PONG comes after them, shared by the
        callers that come while the previous one is on its way. False at once while not
        live, and when the subscription is lost or no PONG came within `timeout`."""
        if not self.live or self._subscription is None:
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._fence_next.append(future)
        if not self._fence_sent:
            self._ping()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return False

    def _ping(self) -> None:
        """Send one PING for every caller waiting for the next one."""
        batch, self._fence_next = self._fence_next, []
        self._fence_sent.append(batch)
        task = asyncio.create_task(self._send_ping())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_ping(self) -> None:
        subscription = self._subscription
        try:
            if subscription is None:
                raise ConnectionError("not subscribed")
            await subscription.ping()
        except Exception as exc:  # the listener sees the connection lost, and says so
            log.debug("fence not sent: %s", exc)
            if self._subscription is subscription:
                self._end_fences()

    def _pong(self) -> None:
        if self._fence_sent:
            _settle(self._fence_sent.popleft(), True)
        if self._fence_next and not self._fence_sent:
            self._ping()

    def _end_fences(self) -> None:
        """The subscription is gone: every fence answers False."""
        while self._fence_sent:
            _settle(self._fence_sent.popleft(), False)
        _settle(self._fence_next, False)
        self._fence_next = []

    # ------------------------------------------------------------ publishing (API side)
    def publish(self, job_id: str) -> None:
        """Tell every API process `job_id` changed (a cancel, a delete), in the background.

        The observers are told at once (this process's cache must not answer the state
        before a change it made itself); while not live, its waiters are woken at once too.
        """
        if not self.live:
            self.dispatch(job_id)
        else:
            self._tell(job_id)
        task = asyncio.create_task(self._publish(job_id))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, job_id: str) -> None:
        try:
            if self._publisher is None:
                self._publisher = aioredis.Redis.from_url(
                    self.url,
                    socket_timeout=PUBLISH_TIMEOUT_SECONDS,
                    socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS,
                    retry=AsyncRetry(NoBackoff(), 0),
                )
            await self._publisher.publish(self.channel, job_id)
        except Exception as exc:
            self._log.warning("job change notice not sent (%s: %s)", type(exc).__name__, exc)

    # ------------------------------------------------------------ the subscription
    def _redis_subscription(self) -> _Subscription:
        name = re.sub(r"[^\w.:-]", "_", f"{self.name}:{socket.gethostname()}:{os.getpid()}")
        client = aioredis.Redis.from_url(
            self.url,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            client_name=name,
            retry=AsyncRetry(NoBackoff(), 0),  # this loop reconnects, and says so
        )
        return client.pubsub()

    async def _run(self) -> None:
        delay = self._retry[0]
        self._changed = asyncio.Event()
        # Checked with no await before returning: `add` sees this task done, or it is seen.
        while self._needed():
            try:
                if await self._listen():
                    delay = self._retry[0]
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning(
                    "job change notices unavailable (%s: %s); waiters poll the store",
                    type(exc).__name__,
                    exc,
                )
            if self._needed():  # wait to reconnect, but leave at once when the last waiter does
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
                delay = min(delay * 2, self._retry[1])

    async def _listen(self) -> bool:
        """Subscribe and dispatch until idle long enough; True when it was live."""
        subscription = self._connect()
        idle_since: float | None = None
        try:
            await subscription.subscribe(self.channel)
            self._subscription = subscription
            while True:
                if message := await subscription.get_message(timeout=self._read_every):
                    self._handle(message)
                if self._needed():
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self._idle:
                    return self.live
        finally:
            was_live = self.live
            self._subscription = None
            self._set_live(False)
            self._end_fences()
            with contextlib.suppress(Exception):
                await subscription.aclose()
            if was_live:
                log.info("job change notices: subscription closed")

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":  # Redis confirmed: from now on, nothing is missed
            self._set_live(True)
        elif message["type"] == "message":
            data = message["data"]
            self.dispatch(data.decode() if isinstance(data, bytes) else str(data))
        elif message["type"] == "pong":  # a fence's: every notice before it was dispatched
            self._pong()

    async def close(self) -> None:
        """Stop listening and sending (at shutdown)."""
        tasks = [t for t in (self._task, *self._sending) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()
            self._publisher = None
        self.live = False
        self._subscription = None
        self._end_fences()


def _settle(futures: list[asyncio.Future[bool]], value: bool) -> None:
    for future in futures:
        if not future.done():
            future.set_result(value)


def _call(wake: Wake) -> None:
    """A waiter's doorbell; its failure never stops the others'."""
    try:
        wake()
    except Exception:
        log.exception("job notice waiter failed")
