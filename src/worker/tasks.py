"""Celery tasks: thin glue from a job id to `src.jobs.runner`."""

from __future__ import annotations

# First: it sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported.
from src.worker import metrics as worker_metrics  # isort: skip

import logging
import os
import socket
from functools import lru_cache

from celery import Task
from celery.signals import worker_init, worker_process_init
from pymongo.errors import PyMongoError

from src.core.config import get_settings
from src.core.logging import setup_logging
from src.core.storage import Storage, open_storage
from src.data.lossy import french_words
from src.jobs import runner
from src.jobs.store import JobStore
from src.worker.celery_app import (
    CALLBACK_TASK,
    CLEAN_TASK,
    MERGE_TASK,
    PART_TASK,
    SWEEP_TASK,
    app,
    send_clean,
    send_merge,
    send_part,
)

log = logging.getLogger(__name__)
setup_logging()


@lru_cache(maxsize=1)
def store() -> JobStore:
    """One MongoClient per worker process (created after the prefork fork)."""
    return JobStore(get_settings())


@lru_cache(maxsize=1)
def files() -> Storage:
    """The folder or bucket of job files; one client per process, like the store."""
    found = open_storage(get_settings())
    log.info("job files: %s", found.description)
    return found


SENDERS = runner.Senders(clean=send_clean, part=send_part, merge=send_merge)


@worker_process_init.connect
def _fresh_client(**_: object) -> None:
    store.cache_clear()  # a MongoClient must not cross a fork
    files.cache_clear()


@worker_init.connect
def _preload(**_: object) -> None:
    """Load the French word list before the pool forks: every child shares it (no 0.9 s
    first job per process)."""
    french_words()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Job steps retry a store outage with backoff; BUSY retries are theirs (`_after`).
JOB_TASK = {
    "bind": True,
    "autoretry_for": (PyMongoError,),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 8,
}


@app.task(name=CLEAN_TASK, **JOB_TASK)
def clean(self: Task, job_id: str) -> str:
    settings = get_settings()
    events = worker_metrics.JobMetrics()
    outcome = runner.run_job(store(), settings, job_id, worker_name(), events, files(), SENDERS)
    return _after(self, outcome, job_id)


def _after(task: Task, outcome: runner.Outcome, job_id: str) -> str:
    if outcome is runner.Outcome.BUSY:
        # Another worker holds it with a live heartbeat (or it just died and the
        # heartbeat is not stale yet): look again once it would be.
        raise task.retry(countdown=get_settings().stale_after_seconds + 1, max_retries=20)
    if outcome is runner.Outcome.DONE:
        doc = store().get(job_id)
        if doc and doc.get("callback_url") and doc["status"] != "running":
            callback.delay(job_id)
    return outcome.value


@app.task(name=PART_TASK, **JOB_TASK)
def clean_part(self: Task, part_id: str) -> str:
    """One byte range of a split job's input."""
    events = worker_metrics.JobMetrics()
    outcome = runner.run_part(
        store(), get_settings(), part_id, worker_name(), SENDERS, files(), events
    )
    return _after(self, outcome, part_id.partition(".")[0])


@app.task(name=MERGE_TASK, **JOB_TASK)
def merge_parts(self: Task, job_id: str) -> str:
    """The last step of a split job: its parts, in order, into one result."""
    events = worker_metrics.JobMetrics()
    outcome = runner.run_merge(store(), get_settings(), job_id, worker_name(), files(), events)
    return _after(self, outcome, job_id)


@app.task(name=CALLBACK_TASK, bind=True, max_retries=None)
def callback(self: Task, job_id: str) -> bool:
    settings = get_settings()
    try:
        return runner.deliver_callback(store(), job_id)
    except runner.CallbackFailed as exc:
        if self.request.retries >= settings.callback_retries:
            store().set_fields(job_id, callback_status="failed", callback_error=str(exc))
            log.warning("job %s: callback given up: %s", job_id, exc)
            return False
        store().set_fields(job_id, callback_status="retrying", callback_error=str(exc))
        raise self.retry(countdown=min(2**self.request.retries, 60)) from exc


@app.task(name=SWEEP_TASK, autoretry_for=(PyMongoError,), max_retries=3)
def sweep() -> dict[str, int]:
    result = runner.sweep(store(), get_settings(), SENDERS)
    return {k: len(v) for k, v in vars(result).items()}
