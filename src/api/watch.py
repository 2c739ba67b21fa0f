"""Waiting on jobs, for `GET /jobs/{id}?wait=` and the event streams: woken by change
notices (`src.core.notices`), not by polling the store per client.

`?wait=`: a waiting request registers a future; one loop, running only while someone
waits, reads the jobs it was told changed (in one query, however many) and resolves
the futures of those that ended (or vanished). An event stream reads its job once per
notice. Both still read on a slow fallback poll (WATCH_FALLBACK_SECONDS), so a lost
notice only delays them; while the notices are down (Redis), they poll every
`INTERVAL_SECONDS` instead, as before notices existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, Callable

from pymongo.errors import PyMongoError

from src.core.notices import Listener
from src.jobs.async_store import AsyncJobStore
from src.jobs.model import TERMINAL
from src.jobs.records import JobDoc

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.25  # the poll while notices are down
FALLBACK_SECONDS = 5.0  # the poll while they work (WATCH_FALLBACK_SECONDS)


def poll_seconds(notices: Listener | None, fallback: float) -> float:
    """How long a waiter sleeps without a notice before it reads the store anyway."""
    return fallback if notices is not None and notices.live else INTERVAL_SECONDS


class JobWatcher:
    def __init__(
        self,
        store: AsyncJobStore,
        notices: Listener | None = None,
        fallback: float = FALLBACK_SECONDS,
    ) -> None:
        self.store = store
        self.notices = notices
        self.fallback = fallback
        self._waiters: dict[str, list[asyncio.Future[JobDoc | None]]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._due: set[str] = set()  # told (or about to be) that these changed: read them
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    async def wait_finished(self, job_id: str, timeout: float) -> JobDoc | None:
        """The job once final (None if it was deleted), or None when `timeout` passes first."""
        future: asyncio.Future[JobDoc | None] = asyncio.get_running_loop().create_future()
        waiting = self._waiters.setdefault(job_id, [])
        waiting.append(future)
        if len(waiting) == 1 and self.notices is not None:
            wake = functools.partial(self._changed, job_id)
            self._unsubscribe[job_id] = self.notices.add(job_id, wake)
        # Read it once more: it may have ended between the caller's read and now.
        self._changed(job_id)
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._watch())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            waiting = self._waiters.get(job_id, [])
            with contextlib.suppress(ValueError):
                waiting.remove(future)
            if not waiting:
                self._forget(job_id)
                if not self._waiters:
                    self._wake.set()  # the loop ends now, not at its next poll

    def _changed(self, job_id: str) -> None:
        self._due.add(job_id)
        self._wake.set()

    def _forget(self, job_id: str) -> list[asyncio.Future[JobDoc | None]]:
        """Stop watching `job_id`; its waiters' futures."""
        if unsubscribe := self._unsubscribe.pop(job_id, None):
            unsubscribe()
        return self._waiters.pop(job_id, [])

    async def _watch(self) -> None:
        while self._waiters:
            polled = False
            if not self._due:
                try:
                    await asyncio.wait_for(
                        self._wake.wait(), poll_seconds(self.notices, self.fallback)
                    )
                except TimeoutError:
                    polled = True
            self._wake.clear()
            # Told which changed: those only; the poll: every one.
            ids = list(self._waiters) if polled else [i for i in self._due if i in self._waiters]
            self._due.clear()
            if not ids:
                continue
            try:
                docs = {d["_id"]: d for d in await self.store.get_many(ids)}
            except PyMongoError as exc:  # the waiters time out; the next read may work
                log.warning("job watcher: store unavailable: %s", exc)
                continue
            for job_id in ids:
                doc = docs.get(job_id)
                if doc is None or doc["status"] in TERMINAL:
                    for future in self._forget(job_id):
                        if not future.done():
                            future.set_result(doc)


async def job_changes(
    store: AsyncJobStore, notices: Listener, job_id: str, fallback: float
) -> AsyncGenerator[JobDoc | None, None]:
    """The job as stored (None once deleted): now, then after each notice about it (or
    the fallback poll). Registered before the first read, so no change is missed; the
    reads are never more than the notices (several during one read cost one more)."""
    with notices.watch(job_id) as watch:
        while True:
            yield await store.get(job_id)
            await watch.wait(poll_seconds(notices, fallback))
