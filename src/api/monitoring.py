"""The API's /metrics: HTTP metrics (prometheus-fastapi-instrumentator), job counters, and
the service state read at scrape time (queue depth from Redis, jobs from MongoDB).

The API runs one process per container (scale with replicas), so its metrics live in
the process: do not set PROMETHEUS_MULTIPROC_DIR for the API (the instrumentator would
then export only the multiprocess files, without the scrape-time state).
"""

from __future__ import annotations

import threading

import redis
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_fastapi_instrumentator import Instrumentator

from src.core import instruments
from src.core.broker import QUEUE
from src.core.config import Settings
from src.jobs.model import JobStatus
from src.jobs.store import JobStore

# Scrape-time reads give up after this: /metrics answers even with Redis or MongoDB down.
STATE_TIMEOUT_S = 1.0
# kombu's Redis transport keeps one list per priority step: "cleaning", "cleaning\x06\x163", …
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding a Celery queue (as kombu's `Channel._size` counts them)."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEPARATOR}{p}" for p in PRIORITY_STEPS]


class StateSources:
    """Redis and MongoDB clients for the collector, created at the first scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._store: JobStore | None = None

    def redis(self) -> redis.Redis:
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    self.settings.redis_url,
                    socket_timeout=STATE_TIMEOUT_S,
                    socket_connect_timeout=STATE_TIMEOUT_S,
                )
            return self._redis

    def store(self) -> JobStore:
        with self._lock:
            if self._store is None:
                self._store = JobStore(self.settings, timeout_ms=int(STATE_TIMEOUT_S * 1000))
            return self._store

    def queue_depth(self) -> int:
        with self.redis().pipeline(transaction=False) as pipe:
            for key in queue_keys(QUEUE):
                pipe.llen(key)
            return sum(pipe.execute())

    def count_by_status(self) -> dict[str, int]:
        return self.store().count_by_status()

    def oldest_queued_created(self) -> float | None:
        return self.store().oldest_created_ts(JobStatus.QUEUED)

    def close(self) -> None:
        with self._lock:
            if self._redis is not None:
                self._redis.close()
            if self._store is not None:
                self._store.close()
            self._redis = self._store = None


_state: StateSources | None = None


def instrument(app: FastAPI, settings: Settings) -> StateSources:
    """HTTP metrics for every route, the job counters and the state collector at /metrics.

    Latency is measured until the response starts: an SSE stream or a download counts
    the time to its first byte, not the length of the job or of the transfer.
    """
    Instrumentator(
        excluded_handlers=["/metrics"], should_exclude_streaming_duration=True
    ).instrument(app, latency_lowr_buckets=instruments.API_LATENCY_BUCKETS).expose(
        app, include_in_schema=False
    )
    instruments.JOBS_CANCELLED_QUEUED.labels(status=JobStatus.CANCELLED)  # 0, not absent
    for owner in {key.name for key in settings.keys} or {""}:
        instruments.JOBS_SUBMITTED.labels(owner=owner)
    global _state
    if _state is None:  # one collector per process, even if several apps are created
        _state = StateSources(settings)
        REGISTRY.register(
            instruments.StateCollector(
                QUEUE,
                _state.queue_depth,
                _state.count_by_status,
                _state.oldest_queued_created,
                statuses=[s.value for s in JobStatus],
            )
        )
    return _state
