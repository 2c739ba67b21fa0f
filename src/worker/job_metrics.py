"""The worker's job and task metrics, recorded in the pool process that ran them.

`JobMetrics` turns the job lifecycle's events (`src.jobs.context.JobEvents`) into
Prometheus metrics, and into change notices for the API (`src.core.notify`: the job id
on every status change and progress report); the Celery signal handlers below time
every task. Values go to the multiprocess directory (`src.worker.multiproc`);
`src.worker.exporter` serves them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery.signals import task_postrun, task_prerun

from src.core import instruments
from src.jobs.context import JobEvents
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc, job_of_part


def _nobody(job_id: str) -> None:
    """No notices (tests, tools): nobody listens."""


class JobMetrics(JobEvents):
    """Records what a job step reports, in the pool process that ran it, and publishes
    the id of the job that changed (a part's: its job's) with `publish`, which never
    raises nor waits long (`src.core.notify.Publisher.publish`)."""

    def __init__(self, publish: Callable[[str], None] = _nobody) -> None:
        self._counted: dict[str, tuple[int, int]] = {}  # record id → (rows, bytes) counted
        self._publish = publish

    def claimed(self, doc: JobDoc) -> None:
        self._publish(doc["_id"])
        started, created = doc.get("started_ts"), doc.get("created_ts")
        if doc.get("attempts") == 1 and started and created:
            instruments.JOB_QUEUE_WAIT.observe(max(0.0, started - created))

    def progressed(self, record_id: str, rows_done: int, bytes_done: int) -> None:
        self._publish(job_of_part(record_id))
        self._count(record_id, rows_done, bytes_done)

    def _count(self, record_id: str, rows_done: int, bytes_done: int) -> None:
        rows, size = self._counted.get(record_id, (0, 0))
        instruments.ROWS_CLEANED.inc(max(0, rows_done - rows))
        instruments.INPUT_BYTES.inc(max(0, bytes_done - size))
        self._counted[record_id] = (max(rows, rows_done), max(size, bytes_done))

    def changed(self, job_id: str) -> None:
        self._publish(job_id)

    def finished(self, doc: JobDoc) -> None:
        self._publish(doc["_id"])
        status = doc["status"]
        instruments.JOBS_FINISHED.labels(status=status).inc()
        started, ended = doc.get("started_ts"), doc.get("finished_ts")
        if started and ended:
            instruments.JOB_DURATION.labels(status=status).observe(max(0.0, ended - started))
        if status == JobStatus.SUCCEEDED:
            if not doc.get("parts_total"):  # a split job's rows were counted part by part
                # The exact totals, whatever the last progress report said.
                self._count(doc["_id"], doc.get("rows_done") or 0, doc.get("bytes_total") or 0)
            instruments.OUTPUT_BYTES.inc(doc.get("result_bytes") or 0)
        self._counted.pop(doc["_id"], None)

    def tracked(self, job_id: str, status: str) -> None:
        self._publish(job_id)  # mlflow_status (and run or error) changed: the API shows them
        instruments.MLFLOW_LOGGING.labels(outcome=status).inc()


_task_started: dict[str, float] = {}


@task_prerun.connect
def _task_started_at(task_id: str | None = None, **_: object) -> None:
    instruments.BUSY_PROCESSES.inc()
    if task_id:
        _task_started[task_id] = time.monotonic()


@task_postrun.connect
def _task_ended(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: object
) -> None:
    instruments.BUSY_PROCESSES.dec()
    name = getattr(task, "name", None) or "unknown"
    instruments.TASKS.labels(task=name, state=state or "UNKNOWN").inc()
    started = _task_started.pop(task_id or "", None)
    if started is not None:
        instruments.TASK_DURATION.labels(task=name).observe(time.monotonic() - started)
