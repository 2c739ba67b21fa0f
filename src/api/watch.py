"""Waiting for jobs to finish, for `GET /jobs/{id}?wait=`: one store read per interval
for all the requests of this process that wait, however many they are.

A waiting request registers a future; one loop, running only while someone waits,
reads every watched job in one query and resolves the futures of those that ended
(or vanished). The store is never polled once per waiting client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pymongo.errors import PyMongoError

from src.jobs.async_store import AsyncJobStore
from src.jobs.model import TERMINAL
from src.jobs.records import JobDoc

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.25


class JobWatcher:
    def __init__(self, store: AsyncJobStore, interval: float = INTERVAL_SECONDS) -> None:
        self.store = store
        self.interval = interval
        self._waiters: dict[str, list[asyncio.Future[JobDoc | None]]] = {}
        self._loop: asyncio.Task[None] | None = None

    async def wait_finished(self, job_id: str, timeout: float) -> JobDoc | None:
        """The job once final (None if it was deleted), or None when `timeout` passes first."""
        future: asyncio.Future[JobDoc | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
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
                self._waiters.pop(job_id, None)

    async def _watch(self) -> None:
        while self._waiters:
            await asyncio.sleep(self.interval)
            ids = list(self._waiters)
            if not ids:
                return
            try:
                docs = {d["_id"]: d for d in await self.store.get_many(ids)}
            except PyMongoError as exc:  # the waiters time out; the next read may work
                log.warning("job watcher: store unavailable: %s", exc)
                continue
            for job_id in ids:
                doc = docs.get(job_id)
                if doc is None or doc["status"] in TERMINAL:
                    for future in self._waiters.pop(job_id, []):
                        if not future.done():
                            future.set_result(doc)
