"""The ml-worker's Celery app (`src.worker.celery_app:app`), and its entry point.

`celery -A src.worker.celery_app worker|beat` imports this module first: it sets up
the metrics' multiprocess directory before anything imports prometheus_client, then
takes the broker's app (`src.core.broker`, shared with the API) and adds the
worker's metrics exporter, its tasks and the sweep's schedule. Only job ids cross the
broker; the state lives in MongoDB.
"""

from __future__ import annotations

from src.core import broker
from src.core.config import get_settings
from src.worker import kombu_guard, multiproc

multiproc.configure()
kombu_guard.apply()  # kombu 5.7.0 can kill the worker when Redis restarts
app = broker.celery_app()
app.conf.update(
    # The exporter first: it checks that prometheus_client saw the multiprocess directory.
    include=["src.worker.exporter", "src.worker.tasks"],
    beat_schedule={
        "sweep": {"task": broker.SWEEP_TASK, "schedule": get_settings().sweep_interval_seconds},
    },
)
