"""Job change notices (src/core/notify.py, notices.py) without Redis: what is published, when it is
dropped, which waiters a notice wakes, and how the API's waiters read the store then.

The subscription is a fake fed by the test (`FakeSubscription`); a publisher's client
is a recorder or one that fails. No test waits for time to pass: each waits for a state,
and fails (not hangs) after 10 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from src.api.watch import JobWatcher, job_changes
from src.core import notices as notices_module
from src.core.notices import Listener, Watch
from src.core.notify import CHANNEL, Publisher, RareLog
from src.jobs.model import JobStatus
from src.jobs.records import part_id
from src.worker.job_metrics import JobMetrics
from tests.unit.conftest import FakeStore

A, B = "a" * 22, "b" * 22
HUGE = 3600.0  # a fallback poll that never comes within a test


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield until `condition` holds; fail (not hang) if it never does."""
    with anyio.fail_after(10):
        while not condition():
            await asyncio.sleep(0.001)
    assert condition(), what


# ------------------------------------------------------------------ RareLog
def test_rare_log_says_an_outage_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rare = RareLog(logging.getLogger("test.rare"), every=60, clock=clock)
    with caplog.at_level(logging.WARNING, "test.rare"):
        assert rare.warning("down: %s", "x") is True
        clock.now += 59
        assert rare.warning("down: %s", "y") is False
        assert rare.warning("down: %s", "z") is False
        clock.now += 1
        assert rare.warning("down: %s", "w") is True
    assert [r.getMessage() for r in caplog.records] == [
        "down: x",
        "down: w (2 more since the last such message)",
    ]


# ------------------------------------------------------------------ Publisher (worker)
class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def publish(self, channel: str, message: str) -> int:
        self.sent.append((channel, message))
        return 1


class Down:
    def __init__(self) -> None:
        self.calls = 0

    def publish(self, channel: str, message: str) -> int:
        self.calls += 1
        raise RedisConnectionError("Connection refused")


def test_publisher_sends_the_job_id_only() -> None:
    client = Recorder()
    Publisher("redis://unused", client=client).publish(A)
    assert client.sent == [(CHANNEL, A)]


def test_publisher_never_raises_and_pauses_after_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, client = Clock(), Down()
    publisher = Publisher("redis://unused", client=client, pause=(1.0, 3.0), clock=clock)
    # (seconds later, Redis tried so far): pauses of 1, 2, then 3 s (the most) while it fails
    steps = [(0, 1), (0.5, 1), (0.5, 2), (1.5, 2), (0.5, 3), (2.5, 3), (0.5, 4), (2.9, 4)]
    with caplog.at_level(logging.WARNING, "src.core.notify"):
        for later, tried in steps:
            clock.now += later
            publisher.publish(A)  # never raises
            assert client.calls == tried, (later, tried)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "waiters fall back to polling" in warnings[0], warnings


def test_publisher_pauses_briefly_again_once_redis_is_back() -> None:
    clock, down = Clock(), Down()
    publisher = Publisher("redis://unused", client=down, pause=(1.0, 8.0), clock=clock)
    for _ in range(3):  # failing: pauses of 1, 2, 4 s
        publisher.publish(A)
        clock.now += 8.0
    back = Recorder()
    publisher._client = back
    publisher.publish(A)  # works: the next failure pauses 1 s again
    assert back.sent == [(CHANNEL, A)]
    publisher._client = down
    publisher.publish(A)
    clock.now += 1.0
    publisher.publish(A)
    assert down.calls == 5


def test_publisher_with_a_malformed_url_never_raises() -> None:
    Publisher("not-a-url").publish(A)


# ------------------------------------------------------------------ the worker's events
def test_worker_events_publish_the_job_that_changed() -> None:
    sent: list[str] = []
    events = JobMetrics(publish=sent.append)
    doc: Any = {"_id": A, "status": JobStatus.RUNNING, "attempts": 2}
    events.claimed(doc)
    events.progressed(A, 10, 100)
    events.progressed(part_id(B, 3), 10, 100)  # a part's progress: its job changed
    events.changed(B)
    events.finished({**doc, "status": JobStatus.FAILED, "finished_ts": 1.0})
    events.tracked(A, "logged")  # mlflow_status changed: the API shows it
    assert sent == [A, A, B, B, A, A]


# ------------------------------------------------------------------ Listener (API)
class FakeSubscription:
    """What Listener uses of redis.asyncio's PubSub; the test pushes what Redis would say."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self.channels: list[str] = []
        self.closed = False

    async def subscribe(self, *channels: str) -> None:
        self.channels += channels

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None:
        try:
            item = await asyncio.wait_for(self.messages.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True

    def confirm(self) -> None:
        self.messages.put_nowait({"type": "subscribe", "channel": CHANNEL.encode(), "data": 1})

    def notice(self, job_id: str) -> None:
        self.messages.put_nowait({"type": "message", "channel": CHANNEL.encode(), "data": job_id})

    def lose(self) -> None:
        self.messages.put_nowait(RedisConnectionError("Connection reset by peer"))


class Subscriptions:
    """The `connect` of a Listener: a new FakeSubscription each time."""

    def __init__(self) -> None:
        self.made: list[FakeSubscription] = []

    def __call__(self) -> FakeSubscription:
        self.made.append(FakeSubscription())
        return self.made[-1]

    @property
    def last(self) -> FakeSubscription:
        return self.made[-1]


def listener(subs: Subscriptions, **kwargs: Any) -> Listener:
    values: dict[str, Any] = {"idle": HUGE, "retry": (0.001, 0.001), "read_every": 0.01}
    return Listener("redis://unused", connect=subs, **{**values, **kwargs})


class Bell:
    """A waiter's wake callback that counts its rings."""

    def __init__(self) -> None:
        self.rings = 0

    def __call__(self) -> None:
        self.rings += 1


@pytest.mark.anyio
async def test_listener_connects_at_the_first_waiter_and_wakes_only_that_jobs() -> None:
    subs = Subscriptions()
    notices = listener(subs)
    assert subs.made == [] and not notices.live  # nothing before someone waits
    a1, a2, b = Bell(), Bell(), Bell()
    notices.add(A, a1)
    notices.add(A, a2)
    notices.add(B, b)
    await until(lambda: len(subs.made) == 1 and subs.last.channels == [CHANNEL], "subscribed")
    assert not notices.live  # not until Redis confirms the subscription
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    # Live: everyone re-reads once (a change may have come before the subscription).
    assert (a1.rings, a2.rings, b.rings) == (1, 1, 1)
    subs.last.notice(A)
    await until(lambda: a1.rings == 2, "A's waiters woken")
    assert (a1.rings, a2.rings, b.rings) == (2, 2, 1)
    subs.last.notice("c" * 22)  # nobody waits on it here: nothing happens
    subs.last.notice(B)
    await until(lambda: b.rings == 2, "B's waiter woken")
    assert (a1.rings, a2.rings) == (2, 2)
    assert len(subs.made) == 1  # one connection for all the waiters
    await notices.close()
    assert subs.last.closed and not notices.live


@pytest.mark.anyio
async def test_a_removed_waiter_is_not_woken() -> None:
    subs = Subscriptions()
    notices = listener(subs)
    kept, gone = Bell(), Bell()
    notices.add(A, kept)
    remove = notices.add(A, gone)
    await until(lambda: bool(subs.made), "subscribing")
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    remove()
    subs.last.notice(A)
    await until(lambda: kept.rings == 2, "woken")
    assert gone.rings == 1  # only the ring of becoming live
    assert notices.watched() == 1
    await notices.close()


@pytest.mark.anyio
async def test_a_lost_subscription_wakes_everyone_and_reconnects() -> None:
    subs = Subscriptions()
    notices = listener(subs)
    bell = Bell()
    notices.add(A, bell)
    await until(lambda: bool(subs.made), "subscribing")
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    first = subs.last
    first.lose()
    await until(lambda: not notices.live, "lost")
    assert bell.rings == 2  # live, then lost: poll now, a notice may be missed
    assert first.closed
    await until(lambda: len(subs.made) == 2, "reconnecting")
    subs.last.confirm()
    await until(lambda: notices.live, "live again")
    assert bell.rings == 3  # re-read what changed while it was down
    subs.last.notice(A)
    await until(lambda: bell.rings == 4, "notices again")
    await notices.close()


@pytest.mark.anyio
async def test_a_failing_connection_leaves_the_listener_down_then_retries() -> None:
    attempts: list[int] = []

    def refused() -> FakeSubscription:
        attempts.append(1)
        raise RedisConnectionError("Connection refused")

    notices = Listener("redis://unused", connect=refused, retry=(0.001, 0.001))
    notices.add(A, Bell())
    await until(lambda: len(attempts) >= 3, "retrying")
    assert not notices.live
    await notices.close()


@pytest.mark.anyio
async def test_the_last_waiter_leaving_ends_the_wait_to_reconnect() -> None:
    def refused() -> FakeSubscription:
        raise RedisConnectionError("Connection refused")

    notices = Listener("redis://unused", connect=refused, retry=(HUGE, HUGE))
    remove = notices.add(A, Bell())
    task = notices._task
    assert task is not None
    await until(lambda: notices._changed is not None, "waiting to reconnect")
    remove()
    await until(task.done, "the listener ended with its last waiter")


@pytest.mark.anyio
async def test_the_listener_stops_when_idle_and_starts_again() -> None:
    subs = Subscriptions()
    notices = listener(subs, idle=0.0)
    remove = notices.add(A, Bell())
    await until(lambda: bool(subs.made), "subscribing")
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    remove()
    for _ in range(3):
        subs.last.notice(B)  # notices for jobs nobody here waits on do not keep it open
    await until(lambda: subs.last.closed, "closed once idle")
    assert not notices.live
    notices.add(B, Bell())  # a new waiter: a new subscription
    await until(lambda: len(subs.made) == 2, "subscribed again")
    await notices.close()


@pytest.mark.anyio
async def test_a_failing_waiter_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    subs = Subscriptions()
    notices = listener(subs)

    def broken() -> None:
        raise RuntimeError("boom")

    bell = Bell()
    notices.add(A, broken)
    notices.add(A, bell)
    assert notices.dispatch(A) == 2
    assert bell.rings == 1
    assert "job notice waiter failed" in caplog.text
    await notices.close()


@pytest.mark.anyio
async def test_publish_while_down_wakes_this_process_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel or delete in this API process reaches its own waiters even without Redis."""
    sent: list[tuple[str, str]] = []

    class FakeRedis:
        async def publish(self, channel: str, message: str) -> int:
            sent.append((channel, message))
            return 0

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(notices_module.aioredis.Redis, "from_url", lambda *a, **k: FakeRedis())
    subs = Subscriptions()
    notices = listener(subs)
    bell = Bell()
    notices.add(A, bell)
    notices.publish(A)
    assert bell.rings == 1  # not live: woken here, before Redis says anything
    await until(lambda: sent == [(CHANNEL, A)], "published for the other processes")
    await notices.close()


@pytest.mark.anyio
async def test_watch_rings_for_a_notice_during_the_read() -> None:
    """A notice between two waits (the caller was reading) is not lost: the next wait
    returns at once."""
    watch = Watch()
    watch.wake()
    with anyio.fail_after(10):
        assert await watch.wait(HUGE) is True
    assert await watch.wait(0.0) is False  # rung once, answered once


# ------------------------------------------------------------------ the API's waiters
async def live_listener(subs: Subscriptions) -> Listener:
    notices = listener(subs)
    notices.add("0" * 22, Bell())  # someone waits: subscribed
    await until(lambda: bool(subs.made), "subscribing")
    subs.last.confirm()
    await until(lambda: notices.live, "live")
    return notices


@pytest.mark.anyio
async def test_a_notice_wakes_wait_with_one_read_of_that_job() -> None:
    subs = Subscriptions()
    notices = await live_listener(subs)
    store = FakeStore()
    store.seed(A, JobStatus.RUNNING)
    store.seed(B, JobStatus.RUNNING)
    watcher = JobWatcher(store, notices, fallback=HUGE)  # type: ignore[arg-type]
    waiting_a = asyncio.create_task(watcher.wait_finished(A, HUGE))
    waiting_b = asyncio.create_task(watcher.wait_finished(B, HUGE))
    # Each is read once on arrival (it may have ended since the request's own read).
    await until(lambda: sorted(i for c in store.get_many_calls for i in c) == [A, B], "read")
    reads = len(store.get_many_calls)
    store.finish(A)
    subs.last.notice(A)
    with anyio.fail_after(10):
        doc = await waiting_a
    assert doc is not None and doc["status"] == JobStatus.SUCCEEDED
    assert store.get_many_calls[reads:] == [[A]]  # that job only, once
    assert not waiting_b.done()
    del store.docs[B]  # deleted: its waiter answers None
    subs.last.notice(B)
    with anyio.fail_after(10):
        assert await waiting_b is None
    assert watcher._waiters == {} and notices.watched() == 1  # only live_listener's own
    await notices.close()


@pytest.mark.anyio
async def test_event_stream_reads_once_per_notice() -> None:
    subs = Subscriptions()
    notices = await live_listener(subs)
    store = FakeStore()
    store.seed(A, JobStatus.RUNNING)
    changes = job_changes(store, notices, A, fallback=HUGE)  # type: ignore[arg-type]
    with anyio.fail_after(10):
        first = await anext(changes)
        assert first is not None and first["status"] == JobStatus.RUNNING
        assert store.calls["get"] == 1
        store.docs[A]["rows_done"] = 500
        subs.last.notice(A)
        second = await anext(changes)
        assert second is not None and second["rows_done"] == 500
        assert store.calls["get"] == 2
        store.finish(A)
        subs.last.notice(A)
        third = await anext(changes)
        assert third is not None and third["status"] == JobStatus.SUCCEEDED
    await changes.aclose()
    assert notices.watched() == 1  # the stream's registration is gone with it
    await notices.close()
