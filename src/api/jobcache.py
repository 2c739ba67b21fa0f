"""`GET /jobs/{id}` answered without the store while the job did not change.

Each API process keeps the job documents it read lately (at most `size`, least recently
used first out), and trusts one only while the process's subscription to job change
notices (`src.core.notices.Listener`) is live: every notice evicts that job's entry; the
subscription becoming live or being lost clears them all (a notice may have been missed).

Guards, each against one way of answering an old state:
- a read racing a notice: each read takes the job's generation (bumped by every notice
  while reads of it are in flight) and the cache's epoch (bumped by every reset) before
  it starts; its document is kept only if neither moved meanwhile;
- a notice still on its way: an entry is answered only after a fence (`Listener.fence`,
  one PING through the subscription shared by the requests of the moment), so every
  notice Redis took before the request came has been seen;
- a lost notice (a worker drops its notices for a while after Redis failed it once,
  while this process may stay subscribed): an entry older than `max_age` seconds is
  read again.
A job submitted here is kept as it was inserted (`put_new`: nobody else knows its id
yet, so no notice about it can be missed). The reads the cache cannot answer, asked at
the same moment, are one store query (`get_many`), not one each. Without a live
subscription every read goes to the store on its own, as without the cache. Whose job
it is stays the route's check, on the document, wherever it came from.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from src.core.notices import Listener
from src.jobs.records import JobDoc

SIZE = 10_000  # documents, and once polled their JSON (~2 KB): tens of MB at most
FENCE_SECONDS = 0.5  # a fence not answered by then: read the store instead


class Reads(Protocol):
    """What the cache reads from (`AsyncJobStore`)."""

    async def get(self, job_id: str) -> JobDoc | None: ...
    async def get_many(self, job_ids: list[str]) -> list[JobDoc]: ...


@dataclass
class _Entry:
    doc: JobDoc
    read_at: float
    body: bytes | None = None  # the document as the route renders it, once asked


class JobCache:
    """Job documents by id, valid while `notices` is live; see the module's docstring."""

    def __init__(
        self,
        notices: Listener,
        max_age: float,
        size: int = SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notices, self.size, self.max_age, self._clock = notices, size, max_age, clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._reading: dict[str, list[int]] = {}  # id → [reads in flight, generation]
        self._epoch = 0
        self._remove: Callable[[], None] | None = None
        self._batch: dict[str, list[asyncio.Future[JobDoc | None]]] = {}  # the next query's
        self._loading: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Observe the notices (opens the subscription; in a running event loop)."""
        if self.size > 0 and self.max_age > 0 and self._remove is None:
            self._remove = self.notices.observe(self.changed, self.reset)

    def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        self.reset()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def trusted(self) -> bool:
        """Whether entries may be kept and answered now."""
        return self._remove is not None and self.notices.live

    # ---- told by the listener
    def changed(self, job_id: str) -> None:
        self._entries.pop(job_id, None)
        if (reading := self._reading.get(job_id)) is not None:
            reading[1] += 1

    def reset(self) -> None:
        self._epoch += 1
        self._entries.clear()

    # ---- what this process wrote
    def put_new(self, doc: JobDoc) -> None:
        """A job this process just inserted, before its task is sent: nobody else knows
        its id, so no notice about it can have come yet."""
        if self.trusted:
            self._keep(doc["_id"], doc, self._clock())

    def _keep(self, job_id: str, doc: JobDoc, read_at: float) -> None:
        self._entries[job_id] = _Entry(doc, read_at)
        self._entries.move_to_end(job_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def rendered(self, doc: JobDoc, render: Callable[[JobDoc], bytes]) -> bytes:
        """`render(doc)`, kept with the entry while the entry holds this very document: a
        job polled again and again is rendered once per change, not once per poll. A
        notice replaces the entry, and the body with it."""
        entry = self._entries.get(doc["_id"])
        if entry is None or entry.doc is not doc:
            return render(doc)
        if entry.body is None:
            entry.body = render(doc)
        return entry.body

    # ---- the reads
    async def get(self, job_id: str, store: Reads) -> JobDoc | None:
        """The job's document: from the cache when it may be trusted, else read (and
        kept, when nothing changed during the read)."""
        if not self.trusted:
            return await store.get(job_id)
        entry = self._entries.get(job_id)
        if entry is not None and self._clock() - entry.read_at <= self.max_age:
            epoch = self._epoch
            if await self.notices.fence(FENCE_SECONDS) and epoch == self._epoch:
                entry = self._entries.get(job_id)  # gone meanwhile: a notice came
                if entry is not None:
                    self._entries.move_to_end(job_id)
                    return entry.doc
        return await self._read(job_id, store)

    async def _read(self, job_id: str, store: Reads) -> JobDoc | None:
        reading = self._reading.setdefault(job_id, [0, 0])
        reading[0] += 1
        generation, epoch, read_at = reading[1], self._epoch, self._clock()
        try:
            doc = await self._load(job_id, store)
        finally:
            reading[0] -= 1
            if not reading[0]:
                del self._reading[job_id]
        if doc is not None and reading[1] == generation and epoch == self._epoch and self.trusted:
            self._keep(job_id, doc, read_at)
        return doc

    async def _load(self, job_id: str, store: Reads) -> JobDoc | None:
        """Read along with the other reads of the moment: one query for all those that
        came while the previous one was on its way. Each starts after its request came,
        so none answers a state older than its request."""
        future: asyncio.Future[JobDoc | None] = asyncio.get_running_loop().create_future()
        self._batch.setdefault(job_id, []).append(future)
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load_batches(store), name="job-reads")
        return await future

    async def _load_batches(self, store: Reads) -> None:
        while self._batch:
            batch, self._batch = self._batch, {}
            try:
                if len(batch) == 1:
                    found = [doc] if (doc := await store.get(next(iter(batch)))) else []
                else:
                    found = await store.get_many(list(batch))
            except Exception as exc:  # each request answers it (a 503 for the store)
                for futures in batch.values():
                    _settle(futures, exc=exc)
                continue
            docs = {doc["_id"]: doc for doc in found}
            for job_id, futures in batch.items():
                _settle(futures, docs.get(job_id))


def _settle(
    futures: list[asyncio.Future[JobDoc | None]],
    doc: JobDoc | None = None,
    exc: Exception | None = None,
) -> None:
    for future in futures:
        if future.done():  # its request was cancelled
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(doc)
