"""Prometheus metric definitions: one place for every name the dashboards and alerts use.

Three kinds, by where they are recorded:

- API metrics (the default registry, exposed with prometheus-fastapi-instrumentator's
  HTTP metrics at the API's /metrics): jobs submitted, queued jobs cancelled by the API.
- Worker metrics (`WORKER_REGISTRY`): recorded in Celery's prefork pool processes. The
  worker runs them in prometheus_client's multiprocess mode (each process writes its
  values to files under PROMETHEUS_MULTIPROC_DIR) and its main process exports the sum
  of all of them (the worker's exporter).
- State read at scrape time (`StateCollector`, registered by the API): queue depth from
  the broker, jobs per status and the oldest queued job from the store.

This module imports prometheus_client only: no Redis, MongoDB, FastAPI or Celery, and
nothing of the job model (statuses are passed in as strings).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Job durations go from a second (the bundled sample) to an hour (a big catalogue).
DURATION_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# Queue waits are short while workers keep up, long when they do not.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# API latency by route: the instrumentator's default (0.1, 0.5, 1) is too coarse for p99.
API_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# ---------------------------------------------------------------- API (default registry)
JOBS_SUBMITTED = Counter(
    "cleaning_jobs_submitted_total",
    "Jobs created and queued by the API (idempotent replays not counted), by the name of "
    "the API key that submitted them (empty without API_KEYS; as many as there are keys).",
    ["owner"],
)
JOBS_CANCELLED_QUEUED = Counter(
    "cleaning_jobs_finished_total",
    "Jobs that reached a final status. The API counts queued jobs it cancels at once; "
    "workers count everything else.",
    ["status"],
)

# ---------------------------------------------------------------- worker (multiprocess)
WORKER_REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_FINISHED = Counter(
    "cleaning_jobs_finished_total",
    "Jobs that reached a final status, by that status.",
    ["status"],
    registry=WORKER_REGISTRY,
)
JOB_DURATION = Histogram(
    "cleaning_job_duration_seconds",
    "From the claim by a worker to the final status (last attempt).",
    ["status"],
    buckets=DURATION_BUCKETS,
    registry=WORKER_REGISTRY,
)
JOB_QUEUE_WAIT = Histogram(
    "cleaning_job_queue_wait_seconds",
    "From submission to the first claim by a worker.",
    buckets=WAIT_BUCKETS,
    registry=WORKER_REGISTRY,
)
ROWS_CLEANED = Counter(
    "cleaning_rows_cleaned_total",
    "Rows read and cleaned, counted chunk by chunk as jobs progress.",
    registry=WORKER_REGISTRY,
)
INPUT_BYTES = Counter(
    "cleaning_input_bytes_total",
    "Input bytes read, counted chunk by chunk as jobs progress.",
    registry=WORKER_REGISTRY,
)
OUTPUT_BYTES = Counter(
    "cleaning_output_bytes_total",
    "Bytes of the result files written by succeeded jobs.",
    registry=WORKER_REGISTRY,
)
MLFLOW_LOGGING = Counter(
    "cleaning_mlflow_logging_total",
    "Attempts to log a finished job to MLflow, by outcome: logged, retrying (MLflow "
    "failed; the sweep retries) or failed (given up after MLFLOW_RETRIES).",
    ["outcome"],
    registry=WORKER_REGISTRY,
)
TASKS = Counter(
    "cleaning_worker_tasks_total",
    "Celery tasks run by the pool processes, by task name and final Celery state.",
    ["task", "state"],
    registry=WORKER_REGISTRY,
)
TASK_DURATION = Histogram(
    "cleaning_worker_task_duration_seconds",
    "Wall time of a Celery task in a pool process.",
    ["task"],
    buckets=DURATION_BUCKETS,
    registry=WORKER_REGISTRY,
)
# Gauges of live processes only: a dead process's file is dropped (mark_process_dead).
POOL_PROCESSES = Gauge(
    "cleaning_worker_processes",
    "Live Celery pool processes.",
    multiprocess_mode="livesum",
    registry=WORKER_REGISTRY,
)
BUSY_PROCESSES = Gauge(
    "cleaning_worker_busy_processes",
    "Pool processes running a task right now.",
    multiprocess_mode="livesum",
    registry=WORKER_REGISTRY,
)


def initialise_worker_series(final_statuses: Iterable[str]) -> None:
    """Create every labelled series at 0, so a panel shows 0 rather than "No data"."""
    for status in final_statuses:
        JOBS_FINISHED.labels(status=status)
        JOB_DURATION.labels(status=status)


# ---------------------------------------------------------------- read at scrape time
QueueDepth = Callable[[], int]
CountByStatus = Callable[[], Mapping[str, int]]
OldestQueued = Callable[[], float | None]


class StateCollector(Collector):
    """Queue depth and job counts, read when Prometheus scrapes.

    Each source is read with its own bounded timeout (set by the caller's clients);
    a failed read is logged, reported as `cleaning_state_up{source=...} 0`, and its
    metrics are left out of this scrape: /metrics itself never fails.
    """

    def __init__(
        self,
        queue: str,
        queue_depth: QueueDepth,
        count_by_status: CountByStatus,
        oldest_queued_created: OldestQueued,
        *,
        statuses: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.statuses = tuple(statuses)
        self._queue_depth = queue_depth
        self._count_by_status = count_by_status
        self._oldest_queued_created = oldest_queued_created
        self._clock = clock

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only: registering must not read Redis or MongoDB.
        yield from self._families()

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "cleaning_state_up",
                "1 when the last scrape could read the source (broker, store), else 0.",
                labels=["source"],
            ),
            GaugeMetricFamily(
                "cleaning_queue_depth",
                "Messages waiting in the broker queue (Redis list length, all priorities).",
                labels=["queue"],
            ),
            GaugeMetricFamily("cleaning_jobs", "Jobs in the store, by status.", labels=["status"]),
            GaugeMetricFamily(
                "cleaning_oldest_queued_job_age_seconds",
                "Age of the oldest job still queued; 0 when none is.",
            ),
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up, depth, jobs, oldest = self._families()
        try:
            depth.add_metric([self.queue], self._queue_depth())
            up.add_metric(["broker"], 1)
        except Exception as exc:
            log.warning("metrics: queue depth unavailable: %s", exc)
            up.add_metric(["broker"], 0)
        try:
            counts = self._count_by_status()
            created = self._oldest_queued_created()
        except Exception as exc:
            log.warning("metrics: job counts unavailable: %s", exc)
            up.add_metric(["store"], 0)
        else:
            up.add_metric(["store"], 1)
            for status in self.statuses:
                jobs.add_metric([status], counts.get(status, 0))
            oldest.add_metric([], 0.0 if created is None else max(0.0, self._clock() - created))
        yield up
        for family in (depth, jobs, oldest):
            if family.samples:
                yield family
