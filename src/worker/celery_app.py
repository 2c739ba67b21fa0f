"""The Celery app (`src.worker.celery_app:app`): Redis broker, no result backend.

Only job ids cross the broker; the state lives in MongoDB. The API imports
this module to send tasks by name, so it must not import the tasks (nor pandas).
"""

from __future__ import annotations

import logging

from celery import Celery

from src.core.config import get_settings

QUEUE = "cleaning"
CLEAN_TASK = "clean"
SWEEP_TASK = "sweep"
CALLBACK_TASK = "deliver_callback"
PART_TASK = "clean_part"
MERGE_TASK = "merge_parts"

settings = get_settings()
app = Celery("cleaning", broker=settings.redis_url, include=["src.worker.tasks"])
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
    broker_connection_timeout=settings.broker_timeout_seconds,
    broker_transport_options={
        "visibility_timeout": 3600,
        "socket_connect_timeout": settings.broker_timeout_seconds,
        "socket_timeout": settings.broker_timeout_seconds,
    },
    # A submission waits a bounded time for the broker, then the API answers 503.
    task_publish_retry=True,
    task_publish_retry_policy={
        "max_retries": 2,
        "interval_start": 0.2,
        "interval_step": 0.3,
        "interval_max": 0.5,
    },
    beat_schedule={
        "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds},
    },
)


def send_clean(job_id: str) -> None:
    """Queue the cleaning of one job (its id only)."""
    app.send_task(CLEAN_TASK, args=[job_id], queue=QUEUE)


def send_part(part_id: str) -> None:
    """Queue one part of a split job: any worker may take it."""
    app.send_task(PART_TASK, args=[part_id], queue=QUEUE)


def send_merge(job_id: str) -> None:
    app.send_task(MERGE_TASK, args=[job_id], queue=QUEUE)


def warm_up() -> None:
    """Set up the app and one broker connection now, not in the first request.

    Without it the first submissions after start-up each pay ~0.5 s (Celery
    finalises the app and builds its producer pool on first use). Best effort:
    a broker that is down now is the submissions' business (503).
    """
    try:
        app.finalize()
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
    except Exception as exc:
        logging.getLogger(__name__).warning("broker not warmed up: %s", exc)
