"""Waiters woken by change notices (Redis pub/sub), against the real service.

Each API here runs with WATCH_FALLBACK_SECONDS=3600: its slow poll never comes within a
test, so only a notice from the worker (or the API) can wake a `?wait=` request or an
event stream. Jobs are held in flight (tests/support/hold.py) until the waiter is
known to wait, so no assertion depends on how fast anything runs. With Redis out of
the API's reach, waiters still finish: they poll the store while notices are down.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pymongo import MongoClient

from src.core.notify import CHANNEL
from src.jobs.model import JOB_ID
from src.jobs.store import COLLECTION
from tests.integration.conftest import hold_path, upload, wait_held, wait_job
from tests.integration.test_callbacks import receiver
from tests.support.hold import held
from tests.support.inputs import job_doc, make_input
from tests.support.services import Stack, free_port, stop

OFF = "3600"  # WATCH_FALLBACK_SECONDS: no fallback poll within a test
FOREVER = "3600"  # JOB_CACHE_SECONDS: no cached job is read again for its age in a test
DEADLINE = 60  # seconds: a waiter that needs more than this was never woken
CHUNKS = '{"chunk_rows": 200}'  # many progress reports: the hold catches the first


@dataclass
class Api:
    client: httpx.Client
    base: str
    pid: int


@contextlib.contextmanager
def started_api(stack: Stack, **env: str) -> Iterator[Api]:
    """A fresh API process of the stack (its listener not yet subscribed)."""
    proc, base = stack.start_api(**env)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield Api(client, base, proc.pid)
    finally:
        stop(proc)


@pytest.fixture
def quiet_api(stack: Stack, worker: subprocess.Popen) -> Iterator[Api]:
    """An API whose waiters only a notice wakes; without its job cache, which would
    subscribe at start: this one subscribes with its first waiter."""
    with started_api(stack, WATCH_FALLBACK_SECONDS=OFF, JOB_CACHE_SECONDS="0") as api:
        yield api


@pytest.fixture
def big(tmp_path: Path) -> Path:
    return make_input(tmp_path / "big.csv", times=3)


def subscribed(stack: Stack, api: Api) -> bool:
    """That API process's subscription to the notices is open (Redis's own view)."""
    client = redis.Redis.from_url(stack.redis.url)
    try:
        return any(
            c.get("name", "").startswith("cleaning-api:")
            and c.get("name", "").endswith(f":{api.pid}")
            and int(c.get("sub", 0)) >= 1
            for c in client.client_list()
        )
    finally:
        client.close()


def until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout}s"
        time.sleep(0.05)


@dataclass
class Waiting:
    """`GET /jobs/{id}?wait=` in a thread: its answer and how long it took."""

    base: str
    job_id: str
    answer: list[httpx.Response] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._ask, daemon=True)
        self.thread.start()

    def _ask(self) -> None:
        started = time.monotonic()
        r = httpx.get(f"{self.base}/jobs/{self.job_id}", params={"wait": DEADLINE}, timeout=90)
        self.seconds.append(time.monotonic() - started)
        self.answer.append(r)

    def result(self) -> tuple[dict[str, Any], float]:
        self.thread.join(90)
        assert self.answer, "the request never answered"
        assert self.answer[0].status_code == 200, self.answer[0].text
        return self.answer[0].json(), self.seconds[0]


class Stream:
    """A job's event stream read in a thread; the test takes its events as they come."""

    def __init__(self, base: str, job_id: str) -> None:
        self.base, self.job_id = base, job_id
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            url = f"{self.base}/jobs/{self.job_id}/events"
            with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=120)) as r:
                assert r.status_code == 200, r.read()
                kind = None
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        self._queue.put({"event": kind, **json.loads(line[5:])})
            self._queue.put(None)  # the stream ended
        except BaseException as exc:
            self._queue.put(exc)

    def next(self) -> dict[str, Any] | None:
        """The next event (None once the stream ended); fails after DEADLINE seconds."""
        try:
            item = self._queue.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError(f"no event for {DEADLINE}s after {self.events}") from None
        if isinstance(item, BaseException):
            raise item
        if item is not None:
            self.events.append(item)
        return item

    def until(self, wanted: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        while True:
            event = self.next()
            assert event is not None, f"the stream ended before {what}: {self.events}"
            if wanted(event):
                return event

    def to_end(self) -> list[dict[str, Any]]:
        while self.next() is not None:
            pass
        return self.events


def states(events: list[dict[str, Any]]) -> list[tuple[str, int, bool]]:
    return [(e["status"], e["progress"]["rows_done"], e["cancel_requested"]) for e in events]


# ------------------------------------------------------------------ woken by notices
def test_wait_is_woken_by_the_workers_notice(stack: Stack, quiet_api: Api, big: Path) -> None:
    api = quiet_api
    with held(hold_path(stack)) as hold:
        job_id = upload(api.client, big, CHUNKS).json()["id"]
        wait_held(api.client, job_id, hold)
        assert not subscribed(stack, api)  # nobody waited on this API yet
        waiting = Waiting(api.base, job_id)
        # Its subscription opens with its first waiter: that request waits now, and
        # every notice from here on reaches it.
        until(lambda: subscribed(stack, api), "the API subscribed")
    job, seconds = waiting.result()  # released: the job runs on and ends
    assert job["status"] == "succeeded", job
    assert job["progress"]["rows_done"] == 3 * 672
    assert seconds < DEADLINE, "answered by its timeout, not by the job's end"


def test_event_stream_follows_running_progress_succeeded(
    stack: Stack, quiet_api: Api, big: Path
) -> None:
    """Both pool processes held on other jobs, the job is queued when its stream opens:
    its claim, its progress and its end can only reach the stream as notices."""
    api = quiet_api
    with held(hold_path(stack)) as hold:
        others = [upload(api.client, big, CHUNKS).json()["id"] for _ in range(2)]
        for other in others:
            wait_held(api.client, other, hold)  # the worker's two processes are busy
        job_id = upload(api.client, big, CHUNKS).json()["id"]
        stream = Stream(api.base, job_id)
        first = stream.until(lambda e: True, "the first event")
        assert first["event"] == "job" and first["status"] == "queued", first
        assert api.client.post(f"/jobs/{others[0]}/cancel").status_code == 200  # one is free
        # Claimed, then held at its first progress report: seen without any poll.
        held_at = stream.until(
            lambda e: e["status"] == "running" and e["progress"]["rows_done"] > 0,
            "running with progress",
        )
        assert held_at["progress"]["rows_done"] < 3 * 672
        api.client.post(f"/jobs/{others[1]}/cancel")
    events = stream.to_end()  # released: the job runs on and ends
    assert events[-1]["status"] == "succeeded", events
    assert events[-1]["progress"]["rows_done"] == 3 * 672
    seen = states(events)
    statuses = [s for s, _, _ in seen]
    assert statuses[0] == "queued" and "running" in statuses, seen
    rows = [r for _, r, _ in seen]
    assert rows == sorted(rows), seen  # progress only goes forward
    assert all(a != b for a, b in itertools.pairwise(seen)), seen  # one per change
    assert all(e["event"] == "job" and e["id"] == job_id for e in events)
    for other in others:
        wait_job(api.client, other)


def test_a_cancel_through_the_api_wakes_its_waiters(stack: Stack, sample_path: Path) -> None:
    """The API publishes its own changes: on a database no worker reads, a queued job
    changes only by the cancel, whose notice must reach the waiters."""
    unserved = {"MONGO_DB": "cleaning_notify_unserved", "WATCH_FALLBACK_SECONDS": OFF}
    with started_api(stack, **unserved) as api:
        job_id = upload(api.client, sample_path).json()["id"]
        waiting = Waiting(api.base, job_id)
        until(lambda: subscribed(stack, api), "the API subscribed")  # the request waits
        stream = Stream(api.base, job_id)
        assert stream.until(lambda e: True, "the first event")["status"] == "queued"
        r = api.client.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        events = stream.to_end()
        job, seconds = waiting.result()
    assert states(events) == [("queued", 0, False), ("cancelled", 0, False)], events
    assert job["status"] == "cancelled", job
    assert seconds < DEADLINE, "answered by its timeout, not by the cancel"


# ------------------------------------------------------------------ Redis out of reach
def test_waiters_finish_without_notices(
    stack: Stack, api: httpx.Client, big: Path, worker: subprocess.Popen
) -> None:
    """The API's Redis is a dead port: no notice can reach it, and its fallback poll is
    off; its waiters still finish, polling the store while notices are down. Jobs are
    submitted through the session's API (this one has no broker either)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with started_api(stack, REDIS_URL=dead, WATCH_FALLBACK_SECONDS=OFF) as blind:
        with held(hold_path(stack)) as hold:
            job_id = upload(api, big, CHUNKS).json()["id"]
            wait_held(api, job_id, hold)
            stream = Stream(blind.base, job_id)
            stream.until(lambda e: e["status"] == "running", "running")  # it waits now
            waiting = Waiting(blind.base, job_id)
        events = stream.to_end()
        job, seconds = waiting.result()
    assert events[-1]["status"] == "succeeded", events
    assert job["status"] == "succeeded", job
    assert seconds < DEADLINE, "answered by its timeout, not by the job's end"


def test_the_worker_publishes_job_ids_only(
    stack: Stack, api: httpx.Client, sample_path: Path
) -> None:
    """What travels on the channel: the ids of the jobs that changed, never their data."""
    client = redis.Redis.from_url(stack.redis.url)
    pubsub = client.pubsub()
    seen: list[bytes] = []
    try:
        pubsub.subscribe(CHANNEL)
        confirmed = pubsub.get_message(timeout=DEADLINE)
        assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
        job_id = upload(api, sample_path).json()["id"]
        assert wait_job(api, job_id)["status"] == "succeeded"
        deadline = time.monotonic() + DEADLINE
        while seen.count(job_id.encode()) < 2:  # at least its claim and its end
            assert time.monotonic() < deadline, seen
            if (message := pubsub.get_message(timeout=1)) is not None:
                seen.append(message["data"])
    finally:
        pubsub.close()
        client.close()
    assert all(JOB_ID.fullmatch(data.decode()) for data in seen), seen


# ------------------------------------------------------------------ GET answered by the cache
def test_a_get_after_the_workers_notice_never_answers_the_old_state(
    stack: Stack, worker: subprocess.Popen, big: Path
) -> None:
    """The job is read (and kept) while held running; once its callback comes, the
    worker has stored its end and published the notice: the next GET says so, though
    the cache never re-reads a job for its age here."""
    env = {"WATCH_FALLBACK_SECONDS": OFF, "JOB_CACHE_SECONDS": FOREVER}
    with started_api(stack, **env) as api, receiver() as hook:
        until(lambda: subscribed(stack, api), "the API subscribed (at its start)")
        with held(hold_path(stack)) as hold:
            r = upload(api.client, big, CHUNKS, callback_url=hook.url())
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            wait_held(api.client, job_id, hold)
            for _ in range(3):
                assert api.client.get(f"/jobs/{job_id}").json()["status"] == "running"
        until(lambda: bool(hook.hits), "the callback of the job's end")
        job = api.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    assert job["progress"]["rows_done"] == 3 * 672


def test_the_callbacks_outcome_reaches_a_cached_job(
    stack: Stack, worker: subprocess.Popen, sample_path: Path
) -> None:
    """The callback task stores its delivery after the webhook answered, and publishes
    the job's id: a GET that read (and kept) the job while the webhook was held sees
    the delivery, though the cache never re-reads a job for its age here."""
    arrived, release = threading.Event(), threading.Event()

    def held_answer(path: str) -> tuple[int, dict[str, str]]:
        arrived.set()
        release.wait(DEADLINE)
        return 204, {}

    env = {"WATCH_FALLBACK_SECONDS": OFF, "JOB_CACHE_SECONDS": FOREVER}
    with started_api(stack, **env) as api, receiver(held_answer) as hook:
        until(lambda: subscribed(stack, api), "the API subscribed (at its start)")
        r = upload(api.client, sample_path, callback_url=hook.url())
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert arrived.wait(DEADLINE), "the webhook never came"
        for _ in range(2):  # the second is the cache's answer
            job = api.client.get(f"/jobs/{job_id}").json()
            assert job["status"] == "succeeded" and job["callback_status"] != "delivered", job
        release.set()
        until(
            lambda: api.client.get(f"/jobs/{job_id}").json()["callback_status"] == "delivered",
            "the callback's delivery shown by GET",
        )


@dataclass
class Unserved:
    """Jobs of a database no worker reads, changed by the test alone."""

    db: str
    mongo: MongoClient
    redis: redis.Redis

    def insert(self) -> str:
        doc = job_doc()
        self.mongo[self.db][COLLECTION].insert_one(doc)
        return doc["_id"]

    def set_rows(self, job_id: str, rows: int) -> None:
        """A change in the store that no notice tells."""
        self.mongo[self.db][COLLECTION].update_one({"_id": job_id}, {"$set": {"rows_done": rows}})


@pytest.fixture
def unserved(stack: Stack) -> Iterator[Unserved]:
    env = stack.env()
    mongo: MongoClient = MongoClient(env["MONGO_URL"])
    client = redis.Redis.from_url(stack.redis.url)
    try:
        yield Unserved("cleaning_notify_cache", mongo, client)
    finally:
        mongo.close()
        client.close()


def rows(api: Api, job_id: str) -> int:
    r = api.client.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return int(r.json()["progress"]["rows_done"])


def test_a_cached_job_is_answered_until_its_notice(stack: Stack, unserved: Unserved) -> None:
    """The cache does answer (a change no notice tells stays unseen), and a notice
    published before a GET is always seen by it."""
    env = {"MONGO_DB": unserved.db, "JOB_CACHE_SECONDS": FOREVER}
    with started_api(stack, **env) as api:
        until(lambda: subscribed(stack, api), "the API subscribed (at its start)")
        job_id = unserved.insert()
        deadline = time.monotonic() + DEADLINE
        for n in itertools.count(1):  # until live: the API may not have its confirmation yet
            assert time.monotonic() < deadline, "the API never answered from its cache"
            rows(api, job_id)
            unserved.set_rows(job_id, n)
            if rows(api, job_id) == n - 1:  # the cache answered: the store says n
                break
        for _ in range(3):
            unserved.set_rows(job_id, n + 100)
            assert unserved.redis.publish(CHANNEL, job_id) >= 1  # the API hears it
            assert rows(api, job_id) == n + 100
            n += 100


def test_without_notices_every_get_reads_the_store(stack: Stack, unserved: Unserved) -> None:
    """The API's Redis is a dead port: its cache is never trusted."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {"MONGO_DB": unserved.db, "REDIS_URL": dead, "JOB_CACHE_SECONDS": FOREVER}
    with started_api(stack, **env) as api:
        job_id = unserved.insert()
        for n in range(1, 6):
            unserved.set_rows(job_id, n)
            assert rows(api, job_id) == n
