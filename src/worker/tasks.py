"""Celery tasks: thin glue from an id to `src.jobs` (one context, by name)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from functools import lru_cache

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init
from pymongo.errors import PyMongoError

from src.core import broker
from src.core.config import get_settings
from src.core.logging import log_context, setup_logging
from src.core.notify import Publisher
from src.core.storage import Storage, StorageUnavailable, open_storage
from src.data.lossy import french_words
from src.jobs import callbacks, merge, parts, run, tracking
from src.jobs.context import JobContext, Outcome, Senders, time_limits
from src.jobs.model import JobStatus
from src.jobs.records import job_of_part
from src.jobs.store import JobStore
from src.jobs.sweep import sweep as sweep_jobs
from src.worker.celery_app import app
from src.worker.job_metrics import JobMetrics

log = logging.getLogger(__name__)
setup_logging()

SENDERS = Senders(
    clean=broker.send_clean,
    part=broker.send_part,
    merge=broker.send_merge,
    track=broker.send_track,
)


@lru_cache(maxsize=1)
def store() -> JobStore:
    """One MongoClient per worker process (created after the prefork fork)."""
    return JobStore(get_settings())


@lru_cache(maxsize=1)
def publisher() -> Publisher:
    """Change notices for the API (best effort); one Redis client per process."""
    return Publisher(get_settings().redis_url)


@lru_cache(maxsize=1)
def files() -> Storage:
    """The folder or bucket of job files; one client per process, like the store."""
    found = open_storage(get_settings())
    log.info("job files: %s", found.description)
    return found


def context() -> JobContext:
    """What a job step needs, for this process; new events each time (per-task counts)."""
    return JobContext(
        store=store(),
        settings=get_settings(),
        files=files(),
        worker=worker_name(),
        senders=SENDERS,
        events=JobMetrics(publish=publisher().publish),
        interruptions=(SoftTimeLimitExceeded,),
    )


def worker_name() -> str:
    """This process as job documents name it: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner(job_id: str) -> str | None:
    """The name of the API key that created the job, for the log context (best effort)."""
    try:
        doc = store().get(job_id)
    except PyMongoError:
        return None  # the task's own read will meet the outage and retry
    return doc.get("owner") if doc else None


def _job_log(job_id: str, part: str | None = None) -> AbstractContextManager[None]:
    """Log lines of a task's body carry its job, part, owner and worker."""
    return log_context(job_id=job_id, part=part, owner=_owner(job_id), worker=worker_name())


@worker_process_init.connect
def _fresh_client(**_: object) -> None:
    store.cache_clear()  # a MongoClient must not cross a fork
    files.cache_clear()
    publisher.cache_clear()


@worker_init.connect
def _preload(**_: object) -> None:
    """Load the French word list before the pool forks: every child shares it."""
    french_words()


# Job steps retry a store outage with backoff; BUSY retries are theirs (`_after`).
# Past JOB_TIME_LIMIT_SECONDS a run stops itself between chunks; Celery's soft limit
# stops one stuck inside a chunk, its hard limit kills (and replaces) a deaf pool process.
SOFT_TIME_LIMIT, HARD_TIME_LIMIT = time_limits(get_settings().job_time_limit_seconds)
JOB_TASK = {
    "bind": True,
    "autoretry_for": (PyMongoError, StorageUnavailable),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 8,
    "soft_time_limit": SOFT_TIME_LIMIT,
    "time_limit": HARD_TIME_LIMIT,
}


@contextlib.contextmanager
def _changes(job_id: str) -> Iterator[None]:
    """Publish the job's id when the block ends, however it ends: the block writes the
    job's callback fields, which readers, the API's cache among them (`src.api.jobcache`),
    must see. (The other writers of a job tell `JobEvents`, which publishes.)"""
    try:
        yield
    finally:
        publisher().publish(job_id)


def _after(task: Task, outcome: Outcome, job_id: str) -> str:
    if outcome is Outcome.BUSY:
        # Another worker holds it with a live heartbeat (or it just died and the
        # heartbeat is not stale yet): look again once it would be.
        raise task.retry(countdown=get_settings().stale_after_seconds + 1, max_retries=20)
    if outcome is Outcome.DONE:
        doc = store().get(job_id)
        if doc and doc.get("callback_url") and doc["status"] != JobStatus.RUNNING:
            callback.delay(job_id)
    # GONE too: a queued job the API cancelled ends without a worker; its task comes here.
    if tracking.wanted(store(), get_settings(), job_id):
        broker.send_track(job_id)
    return outcome.value


@app.task(name=broker.CLEAN_TASK, **JOB_TASK)
def clean(self: Task, job_id: str) -> str:
    with _job_log(job_id):
        return _after(self, run.run_job(context(), job_id), job_id)


@app.task(name=broker.PART_TASK, **JOB_TASK)
def clean_part(self: Task, part_id: str) -> str:
    """One byte range of a split job's input."""
    job_id = job_of_part(part_id)
    with _job_log(job_id, part=part_id.rpartition(".")[2]):
        return _after(self, parts.run_part(context(), part_id), job_id)


@app.task(name=broker.MERGE_TASK, **JOB_TASK)
def merge_parts(self: Task, job_id: str) -> str:
    """The last step of a split job: its parts, in order, into one result."""
    with _job_log(job_id):
        return _after(self, merge.run_merge(context(), job_id), job_id)


@app.task(name=broker.CALLBACK_TASK, bind=True, max_retries=None)
def callback(self: Task, job_id: str) -> bool:
    with _job_log(job_id), _changes(job_id):
        try:
            return callbacks.deliver_callback(store(), get_settings(), job_id)
        except callbacks.CallbackFailed as exc:
            final = exc.final or self.request.retries >= get_settings().callback_retries
            callbacks.record_failure(store(), job_id, str(exc), final)
            if final:
                log.warning("job %s: callback given up: %s", job_id, exc)
                return False
            raise self.retry(countdown=min(2**self.request.retries, 60)) from exc


@app.task(name=broker.TRACK_TASK, autoretry_for=(PyMongoError,), max_retries=3)
def track(job_id: str) -> str | None:
    """Log a finished job to MLflow (MLFLOW_TRACKING_URI); its failures are the sweep's."""
    with _job_log(job_id):
        return tracking.track_job(context(), job_id)


@app.task(name=broker.SWEEP_TASK, autoretry_for=(PyMongoError,), max_retries=3)
def sweep() -> dict[str, int]:
    with log_context(worker=worker_name()):
        result = sweep_jobs(context())
    return {k: len(v) for k, v in vars(result).items()}
