"""Worker metrics across Celery's prefork processes: prometheus_client multiprocess mode.

Each pool process writes its metric values to memory-mapped files under
PROMETHEUS_MULTIPROC_DIR; the worker's main process serves the sum of all of them
on WORKER_METRICS_PORT (default 9808). A container therefore exports every one of its
processes through one port, and Prometheus scrapes every container (one target per
`ml-worker` replica, found through the compose DNS name).

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported, so
this module is imported first by `src.worker.tasks`. When the environment does not set
it (a developer's `celery worker`, the tests), a directory of this worker's own is
used. Import it only in the worker: the API exports its metrics in-process.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_OWN_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
_OWN_DIR_PREFIX = "cleaning-worker-metrics-"
if _OWN_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(
        Path(tempfile.gettempdir()) / f"{_OWN_DIR_PREFIX}{os.getpid()}"
    )
MULTIPROC_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)

from celery.signals import (  # noqa: E402
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import multiprocess, start_http_server, values  # noqa: E402
from prometheus_client.core import Metric  # noqa: E402
from prometheus_client.registry import Collector, CollectorRegistry  # noqa: E402

from src.core import metrics  # noqa: E402
from src.core.config import get_settings  # noqa: E402
from src.core.processes import pid_alive  # noqa: E402
from src.jobs.runner import JobEvents  # noqa: E402

if values.ValueClass is values.MutexValue:  # imported earlier without the variable
    raise RuntimeError(
        "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
        "import src.worker.metrics first in the worker"
    )

log = logging.getLogger(__name__)

_LIVE_GAUGE_PREFIX = "gauge_live"


# ---------------------------------------------------------------- job events → metrics
class JobMetrics(JobEvents):
    """Records what `runner.run_job` reports, in the pool process that ran the job."""

    def __init__(self) -> None:
        self._counted: dict[str, tuple[int, int]] = {}  # job id → (rows, bytes) counted

    def claimed(self, doc: dict[str, Any]) -> None:
        if doc.get("attempts") == 1 and doc.get("started_ts") and doc.get("created_ts"):
            metrics.JOB_QUEUE_WAIT.observe(max(0.0, doc["started_ts"] - doc["created_ts"]))

    def progressed(self, job_id: str, rows_done: int, bytes_done: int) -> None:
        rows, size = self._counted.get(job_id, (0, 0))
        metrics.ROWS_CLEANED.inc(max(0, rows_done - rows))
        metrics.INPUT_BYTES.inc(max(0, bytes_done - size))
        self._counted[job_id] = (max(rows, rows_done), max(size, bytes_done))

    def finished(self, doc: dict[str, Any]) -> None:
        status = doc["status"]
        metrics.JOBS_FINISHED.labels(status=status).inc()
        if doc.get("started_ts") and doc.get("finished_ts"):
            duration = max(0.0, doc["finished_ts"] - doc["started_ts"])
            metrics.JOB_DURATION.labels(status=status).observe(duration)
        if status == "succeeded":
            if not doc.get("parts_total"):  # a split job's rows were counted part by part
                # The exact totals, whatever the last progress report said.
                self.progressed(doc["_id"], doc.get("rows_done") or 0, doc.get("bytes_total") or 0)
            metrics.OUTPUT_BYTES.inc(doc.get("result_bytes") or 0)
        self._counted.pop(doc["_id"], None)


# ---------------------------------------------------------------- Celery task metrics
_task_started: dict[str, float] = {}


@task_prerun.connect
def _task_started_at(task_id: str | None = None, **_: object) -> None:
    metrics.BUSY_PROCESSES.inc()
    if task_id:
        _task_started[task_id] = time.monotonic()


@task_postrun.connect
def _task_ended(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: object
) -> None:
    metrics.BUSY_PROCESSES.dec()
    name = getattr(task, "name", None) or "unknown"
    metrics.TASKS.labels(task=name, state=state or "UNKNOWN").inc()
    started = _task_started.pop(task_id or "", None)
    if started is not None:
        metrics.TASK_DURATION.labels(task=name).observe(time.monotonic() - started)


# ---------------------------------------------------------------- process lifecycle
@worker_process_init.connect
def _pool_process_started(**_: object) -> None:
    metrics.POOL_PROCESSES.set(1)


@worker_process_shutdown.connect
def _pool_process_exiting(pid: int | None = None, **_: object) -> None:
    multiprocess.mark_process_dead(pid or os.getpid(), str(MULTIPROC_DIR))


def _file_pid(path: Path) -> int | None:
    try:
        return int(path.stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return None


def remove_stale_files(directory: Path, keep_pid: int) -> int:
    """Files left by an earlier worker in this directory (a restarted container)."""
    removed = 0
    for path in directory.glob("*.db"):
        if _file_pid(path) != keep_pid:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class WorkerCollector(Collector):
    """The worker metrics of every process of this container, summed.

    Before reading, forgets the live gauges of pool processes that died without
    running their shutdown hook (SIGKILL, out of memory): `mark_process_dead` for them.
    Only the worker's own metric names are exported (the API's counters, defined in the
    same module, would otherwise show up as zeros).
    """

    def __init__(self, directory: Path, names: Iterable[str]) -> None:
        self.directory = directory
        self.names = frozenset(names)
        self._merged = multiprocess.MultiProcessCollector(None, path=str(directory))

    def forget_dead_processes(self) -> None:
        for path in self.directory.glob(f"{_LIVE_GAUGE_PREFIX}*.db"):
            pid = _file_pid(path)
            if pid is not None and not pid_alive(pid):
                multiprocess.mark_process_dead(pid, str(self.directory))

    def collect(self) -> Iterator[Metric]:
        self.forget_dead_processes()
        for family in self._merged.collect():
            if family.name in self.names:
                yield family


def worker_metric_names() -> set[str]:
    return {family.name for family in metrics.WORKER_REGISTRY.collect()}


class Exporter:
    """The HTTP endpoint of one worker container (its main process)."""

    def __init__(self) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, addr: str, port: int) -> bool:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(MULTIPROC_DIR, worker_metric_names()))
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:  # another worker on this host holds the port
            log.warning("worker metrics not exported on %s:%s: %s", addr, port, exc)
            return False
        log.info("worker metrics on http://%s:%s/metrics (dir %s)", addr, port, MULTIPROC_DIR)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


EXPORTER = Exporter()


def remove_dead_workers_dirs(parent: Path) -> None:
    """Default directories of workers that were killed (no shutdown hook ran)."""
    for directory in parent.glob(f"{_OWN_DIR_PREFIX}*"):
        suffix = directory.name.removeprefix(_OWN_DIR_PREFIX)
        if suffix.isdigit() and int(suffix) != os.getpid() and not pid_alive(int(suffix)):
            shutil.rmtree(directory, ignore_errors=True)


@worker_init.connect
def _worker_starting(**_: object) -> None:
    removed = remove_stale_files(MULTIPROC_DIR, os.getpid())
    if removed:
        log.info("worker metrics: removed %d files of an earlier worker", removed)
    if _OWN_DIR:
        remove_dead_workers_dirs(MULTIPROC_DIR.parent)
    metrics.initialise_worker_series()


@worker_ready.connect
def _worker_ready(**_: object) -> None:
    settings = get_settings()
    if settings.worker_metrics_port:
        EXPORTER.start(settings.worker_metrics_addr, settings.worker_metrics_port)


@worker_shutdown.connect
def _worker_stopping(**_: object) -> None:
    EXPORTER.stop()
    if _OWN_DIR:
        shutil.rmtree(MULTIPROC_DIR, ignore_errors=True)
