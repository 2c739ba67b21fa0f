"""The API's job cache (src/api/jobcache.py) and the listener's fences and observers
(src/core/notices.py), without Redis: the subscription is a fake fed by the test.

No test waits for time to pass: each waits for a state, and fails (not hangs) after 10 s.
The cache's clock is the test's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from src.api.jobcache import JobCache
from src.api.sending import TaskSender, send_all
from src.core.notices import Listener
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc
from tests.unit.conftest import FakeStore
from tests.unit.test_notify import HUGE, Clock, FakeSubscription, Subscriptions, until

pytestmark = pytest.mark.anyio
A, B, C = "a" * 22, "b" * 22, "c" * 22


class PingedSubscription(FakeSubscription):
    """A fake subscription that answers each PING with a PONG, unless told to hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.pings = 0
        self.answer = True

    async def ping(self) -> None:
        self.pings += 1
        if self.answer:
            self.pong()

    def pong(self) -> None:
        self.messages.put_nowait({"type": "pong", "channel": None, "data": b""})


class Pinged(Subscriptions):
    def __call__(self) -> PingedSubscription:
        self.made.append(PingedSubscription())
        return self.made[-1]  # type: ignore[return-value]

    @property
    def last(self) -> PingedSubscription:
        return self.made[-1]  # type: ignore[return-value]


class GatedStore(FakeStore):
    """Reads wait for `gate` (when closed): a test acts while a read is on its way."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def get(self, job_id: str) -> JobDoc | None:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().get(job_id)

    async def get_many(self, job_ids: list[str]) -> list[JobDoc]:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().get_many(job_ids)


def reads(store: FakeStore) -> int:
    return store.calls["get"] + store.calls["get_many"]


async def live_cache(**kwargs: Any) -> tuple[JobCache, Listener, Pinged, Clock]:
    subs, clock = Pinged(), Clock()
    notices = Listener("redis://unused", connect=subs, idle=HUGE, retry=(0.001, 0.001))
    cache = JobCache(notices, **{"max_age": 5.0, "clock": clock, **kwargs})
    cache.start()
    await until(lambda: len(subs.made) == 1, "subscribed")
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    return cache, notices, subs, clock


def seeded(*ids: str) -> GatedStore:
    store = GatedStore()
    for job_id in ids:
        store.seed(job_id, JobStatus.QUEUED)
    return store


# ------------------------------------------------------------------ the cache
async def test_without_a_live_subscription_every_read_goes_to_the_store() -> None:
    store = seeded(A)
    subs = Pinged()
    notices = Listener("redis://unused", connect=subs, idle=HUGE, retry=(0.001, 0.001))
    idle = JobCache(notices, max_age=5.0)  # never started: the app's lifespan did not run
    for _ in range(3):
        assert (await idle.get(A, store))["status"] == JobStatus.QUEUED  # type: ignore[index]
    assert store.calls["get"] == 3 and subs.made == []
    cache = JobCache(notices, max_age=5.0)
    cache.start()
    await until(lambda: len(subs.made) == 1, "subscribing")
    for _ in range(3):  # subscribing, not confirmed yet: not live
        await cache.get(A, store)
    assert store.calls["get"] == 6 and len(cache) == 0
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    await cache.get(A, store)
    await cache.get(A, store)
    assert store.calls["get"] == 7  # live: one read, then the cache
    subs.last.lose()  # the subscription is lost: nothing may be trusted
    await until(lambda: not notices.live, "down")
    assert len(cache) == 0
    await cache.get(A, store)
    await cache.get(A, store)
    assert store.calls["get"] == 9
    await notices.close()


async def test_a_notice_evicts_and_the_next_read_sees_the_change() -> None:
    cache, notices, subs, _ = await live_cache()
    store = seeded(A, B)
    await cache.get(A, store)
    await cache.get(B, store)
    assert reads(store) == 2
    store.docs[A]["status"] = JobStatus.RUNNING  # the worker's change, then its notice
    subs.last.notice(A)
    await until(lambda: A not in cache._entries, "evicted")
    assert (await cache.get(A, store))["status"] == JobStatus.RUNNING  # type: ignore[index]
    assert (await cache.get(B, store))["status"] == JobStatus.QUEUED  # type: ignore[index]
    assert reads(store) == 3  # A read again; B still from the cache
    await notices.close()


async def test_a_job_is_rendered_once_per_change() -> None:
    """A polled job's body is kept with its entry: rendered again only after a notice,
    and never kept for a document that is not the cached one."""
    cache, notices, subs, _ = await live_cache()
    store = seeded(A)
    renders: list[str] = []

    def render(doc: JobDoc) -> bytes:
        renders.append(doc["status"])
        return str(doc["status"]).encode()

    for _ in range(3):
        assert cache.rendered(await cache.get(A, store), render) == b"queued"  # type: ignore[arg-type]
    assert renders == ["queued"]
    store.docs[A]["status"] = JobStatus.RUNNING
    subs.last.notice(A)
    await until(lambda: A not in cache._entries, "evicted")
    for _ in range(2):
        assert cache.rendered(await cache.get(A, store), render) == b"running"  # type: ignore[arg-type]
    assert renders == ["queued", "running"]
    own = await store.get(A)  # the store's own copy (as after ?wait=): rendered each time
    assert own is not None
    cache.rendered(own, render)
    cache.rendered(own, render)
    assert renders == ["queued", "running", "running", "running"]
    await notices.close()


async def test_a_notice_on_its_way_is_seen_before_an_entry_is_answered() -> None:
    """The fence: an entry answers only once a PING's PONG came back, after every notice
    Redis took before it."""
    cache, notices, subs, _ = await live_cache()
    store = seeded(A)
    await cache.get(A, store)
    store.docs[A]["status"] = JobStatus.RUNNING
    subs.last.answer = False  # the PONG comes when the test says
    request = asyncio.create_task(cache.get(A, store))
    await until(lambda: subs.last.pings == 1, "the fence pinged")
    subs.last.notice(A)  # published before the PING: Redis delivers it first
    subs.last.pong()
    assert (await request)["status"] == JobStatus.RUNNING  # type: ignore[index]
    await notices.close()


async def test_requests_of_one_moment_share_a_fence() -> None:
    cache, notices, subs, _ = await live_cache()
    store = seeded(A, B)
    await cache.get(A, store)
    await cache.get(B, store)
    subs.last.answer = False
    first = asyncio.create_task(cache.get(A, store))
    await until(lambda: subs.last.pings == 1, "pinged")
    later = [asyncio.create_task(cache.get(i, store)) for i in (A, B, A)]
    await asyncio.sleep(0.01)
    assert subs.last.pings == 1  # those wait for the next PING, sent after this PONG
    subs.last.answer = True
    subs.last.pong()
    await first
    await asyncio.gather(*later)
    assert subs.last.pings == 2 and reads(store) == 2
    await notices.close()


async def test_a_notice_during_a_read_keeps_that_read_out() -> None:
    cache, notices, subs, _ = await live_cache()
    store = seeded(A)
    store.gate.clear()
    request = asyncio.create_task(cache.get(A, store))
    await until(lambda: store.waiting == 1, "reading")
    subs.last.notice(A)  # the change came while the read was on its way
    await until(lambda: subs.last.messages.empty(), "dispatched")
    store.gate.set()
    await request
    assert len(cache) == 0  # that answer may be older than the notice: not kept
    await cache.get(A, store)
    await cache.get(A, store)
    assert reads(store) == 2  # the next read is kept
    await notices.close()


async def test_a_reconnect_clears_and_keeps_reads_in_flight_out() -> None:
    cache, notices, subs, _ = await live_cache()
    store = seeded(A, B)
    await cache.get(A, store)
    store.gate.clear()
    request = asyncio.create_task(cache.get(B, store))
    await until(lambda: store.waiting == 1, "reading")
    subs.last.lose()
    await until(lambda: len(subs.made) == 2, "reconnecting")
    subs.last.confirm()
    await until(lambda: notices.live, "live again")
    store.gate.set()
    await request
    assert len(cache) == 0  # A cleared, B read across the gap not kept
    await notices.close()


async def test_old_entries_are_read_again() -> None:
    cache, notices, _, clock = await live_cache(max_age=5.0)
    store = seeded(A)
    await cache.get(A, store)
    clock.now += 5.0
    await cache.get(A, store)
    assert reads(store) == 1
    clock.now += 0.1
    await cache.get(A, store)  # older than 5 s: read again (a lost notice costs that much)
    assert reads(store) == 2
    await notices.close()


async def test_the_least_recently_used_leave_first() -> None:
    cache, notices, _, _ = await live_cache(size=2)
    store = seeded(A, B, C)
    await cache.get(A, store)
    await cache.get(B, store)
    await cache.get(A, store)  # A used last: B goes when C comes
    await cache.get(C, store)
    assert list(cache._entries) == [A, C]
    await notices.close()


async def test_reads_of_one_moment_are_one_query() -> None:
    cache, notices, _, _ = await live_cache()
    store = seeded(A, B)
    store.gate.clear()
    first = asyncio.create_task(cache.get(A, store))
    await until(lambda: store.waiting == 1, "the first read on its way")
    others = [asyncio.create_task(cache.get(i, store)) for i in (A, B, C, B)]
    await asyncio.sleep(0.01)
    store.gate.set()
    docs = await asyncio.gather(first, *others)
    assert [d["_id"] if d else None for d in docs] == [A, A, B, None, B]
    assert store.calls["get"] == 1 and store.get_many_calls == [[A, B, C]]
    await notices.close()


async def test_a_job_submitted_here_is_answered_without_a_read() -> None:
    cache, notices, _, _ = await live_cache()
    store = seeded(A)
    cache.put_new(store.docs[A])
    assert (await cache.get(A, store))["_id"] == A  # type: ignore[index]
    assert reads(store) == 0
    cache.stop()
    assert len(cache) == 0 and not cache.trusted
    await notices.close()


# ------------------------------------------------------------------ the listener
async def test_observers_hear_every_notice_and_own_publishes_at_once() -> None:
    subs = Pinged()
    notices = Listener("redis://unused", connect=subs, idle=HUGE, retry=(0.001, 0.001))
    seen: list[str] = []
    resets: list[bool] = []
    remove = notices.observe(seen.append, lambda: resets.append(notices.live))
    await until(lambda: len(subs.made) == 1, "subscribed for the observer alone")
    subs.last.confirm()
    await until(lambda: resets == [True], "reset when live")
    subs.last.notice(A)
    await until(lambda: seen == [A], "told")
    notices._publisher = FailingPublisher()  # type: ignore[assignment]
    notices.publish(B)  # this process's own change: told before Redis echoes it
    assert seen == [A, B]
    subs.last.lose()
    await until(lambda: resets == [True, False], "reset when lost")
    remove()
    await notices.close()


async def test_a_fence_is_false_while_down_and_when_the_subscription_is_lost() -> None:
    subs = Pinged()
    notices = Listener("redis://unused", connect=subs, idle=HUGE, retry=(0.001, 0.001))
    assert await notices.fence(1.0) is False  # not live
    notices.observe(lambda _: None, lambda: None)
    await until(lambda: len(subs.made) == 1, "subscribed")
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    assert await notices.fence(1.0) is True
    subs.last.answer = False
    pending = asyncio.create_task(notices.fence(30.0))
    await until(lambda: subs.last.pings == 2, "pinged")
    subs.last.lose()
    assert await pending is False  # answered at once, not after its timeout
    await notices.close()


class FailingPublisher:
    async def publish(self, channel: str, job_id: str) -> None:
        raise ConnectionError("down")

    async def aclose(self) -> None:
        pass


# ------------------------------------------------------------------ the task sender
async def test_tasks_of_one_moment_are_sent_in_one_batch_each_answered() -> None:
    sent: list[list[str]] = []
    gate = asyncio.Event()

    def send(job_id: str) -> None:
        if job_id == C:
            raise ConnectionError("broker down")
        sent[-1].append(job_id)

    loop = asyncio.get_running_loop()

    def batch_send(job_id: str) -> None:  # runs in the sender's thread
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
        send(job_id)

    sender = TaskSender(batch_send)
    sent.append([])
    first = asyncio.create_task(sender(A))
    await asyncio.sleep(0.01)  # the first batch is on its way, held at the gate
    others = [asyncio.create_task(sender(i)) for i in (B, C)]
    await asyncio.sleep(0.01)
    gate.set()
    await first
    results = await asyncio.gather(*others, return_exceptions=True)
    assert results[0] is None and isinstance(results[1], ConnectionError)
    assert sent == [[A, B]]


def test_after_a_failed_send_the_rest_of_the_batch_fails_untried() -> None:
    tried: list[str] = []

    def send(job_id: str) -> None:
        tried.append(job_id)
        if job_id == B:
            raise ConnectionError("broker down")

    outcomes = send_all([A, B, C], send)
    assert tried == [A, B]
    assert outcomes[0] is None and outcomes[1] is outcomes[2]
    assert isinstance(outcomes[2], ConnectionError)
