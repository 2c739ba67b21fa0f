"""Following a job's event stream (`GET /jobs/{id}/events`) for `CleaningClient.wait`."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
from httpx_sse import connect_sse

from src.jobs.model import Job

log = logging.getLogger(__name__)

JobRef = str | Job  # a job id, or a job the client returned
STREAM_READ_TIMEOUT = 60.0  # the server pings every 15 s: longer silence is a dead stream


class EventStream:
    """`GET /jobs/{id}/events`, read by a daemon thread into a queue, so that `wait` can
    keep its deadline while the stream is silent (a queued job sends nothing for long).

    The stream only speeds waiting up: any failure of it ends the iteration, and `wait`
    carries on with `GET /jobs/{id}?wait=`, which reports the real errors.
    """

    def __init__(self, http: httpx.Client, job_id: str, timeout: float) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._read,
            args=(http, job_id, httpx.Timeout(timeout, read=STREAM_READ_TIMEOUT)),
            name=f"job-events-{job_id}",
            daemon=True,
        )
        self._thread.start()

    def _read(self, http: httpx.Client, job_id: str, timeout: httpx.Timeout) -> None:
        try:
            with connect_sse(http, "GET", f"{job_path(job_id)}/events", timeout=timeout) as source:
                if source.response.status_code != 200:
                    log.debug("job %s: events answered %s", job_id, source.response.status_code)
                    return
                for event in source.iter_sse():
                    if self._stopped.is_set():
                        return
                    if event.event == "job":
                        self._jobs.put(Job.model_validate_json(event.data))
                    elif event.event == "gone":
                        return
        except Exception as exc:  # the fallback reports what matters
            log.debug("job %s: event stream failed: %r", job_id, exc)
        finally:
            self._jobs.put(None)

    def jobs(self, deadline: float | None) -> Iterator[Job]:
        """The jobs the stream sends, until it ends, fails or the deadline passes."""
        while True:
            try:
                job = self._jobs.get(timeout=time_left(deadline))
            except queue.Empty:
                return
            if job is None:
                return
            yield job

    def stop(self) -> None:
        """Let the reader go (at its next event or ping); `wait` does not wait for it."""
        self._stopped.set()


def job_id_of(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else job


def job_path(job: JobRef) -> str:
    return f"jobs/{quote(job_id_of(job), safe='')}"


def time_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def changed(before: Job, after: Job) -> bool:
    """Whether `after` is news to a progress callback that saw `before`."""
    return (before.status, before.progress, before.cancel_requested) != (
        after.status,
        after.progress,
        after.cancel_requested,
    )
