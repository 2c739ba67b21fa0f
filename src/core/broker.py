"""The broker: the Celery app, built on first use, and tasks sent by name (ids only).

Both sides use it: the API sends tasks without importing the worker's code (nor
pandas), and the worker's entry point adds its tasks and schedule to the
same app. Building the app reads the settings, so it happens at the first send or
warm-up, never at import.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

from src.core.config import get_settings

log = logging.getLogger(__name__)

QUEUE = "cleaning"
CLEAN_TASK = "clean"
PART_TASK = "clean_part"
MERGE_TASK = "merge_parts"
SWEEP_TASK = "sweep"
CALLBACK_TASK = "deliver_callback"
TRACK_TASK = "track_job"  # log a finished job to MLflow


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    """The one Celery app of this process: Redis broker, no result backend."""
    settings = get_settings()
    timeout = settings.broker_timeout_seconds
    app = Celery("cleaning", broker=settings.redis_url)
    app.conf.update(
        task_default_queue=QUEUE,
        task_routes={"*": {"queue": QUEUE}},
        # A task is acknowledged after it ran: a worker killed mid-job gives it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=timeout,
        broker_transport_options={
            # Longer than a task may run (JOB_TIME_LIMIT_SECONDS and its hard-limit
            # margin): Redis must not hand a running task to a second worker.
            "visibility_timeout": max(3600, int(settings.job_time_limit_seconds * 1.2) + 120),
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
        },
        # A submission waits a bounded time for the broker, then the API answers 503.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.3,
            "interval_max": 0.5,
        },
    )
    return app


def send(task: str, record_id: str) -> None:
    """Queue `task` for one job or part: its id only, never data."""
    celery_app().send_task(task, args=[record_id], queue=QUEUE)


def send_clean(job_id: str) -> None:
    send(CLEAN_TASK, job_id)


def send_part(part_id: str) -> None:
    """One part of a split job: any worker may take it."""
    send(PART_TASK, part_id)


def send_merge(job_id: str) -> None:
    send(MERGE_TASK, job_id)


def send_track(job_id: str) -> None:
    send(TRACK_TASK, job_id)


def warm_up() -> None:
    """Build the app and open one broker connection now, not in the first request.

    Otherwise the first submissions after start-up each wait while Celery finalises
    the app and builds its producer pool. Best effort: a broker that is down now is
    the submissions' business (503).
    """
    try:
        app = celery_app()
        app.finalize()
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
    except Exception as exc:
        log.warning("broker not warmed up: %s", exc)
