"""The worker's /metrics: the sum of every process's values, served by the main process.

Each pool process writes its values under the multiprocess directory
(`src.worker.multiproc`); this module serves their sum on WORKER_METRICS_PORT
(default 9808), so a container exports every one of its processes through one port
and Prometheus scrapes each `ml-worker` replica. It also keeps that directory
true: files of an earlier worker and live gauges of dead processes are dropped.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import multiprocess, start_http_server, values
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from src.core import instruments
from src.core.config import get_settings
from src.core.processes import pid_alive
from src.jobs.model import TERMINAL
from src.worker import multiproc

if values.ValueClass is values.MutexValue:  # imported earlier without the variable
    raise RuntimeError(
        "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
        "the worker's entry point is src.worker.celery_app (it calls multiproc.configure())"
    )

log = logging.getLogger(__name__)
MULTIPROC = multiproc.configure()
_LIVE_GAUGE_PREFIX = "gauge_live"


# ---------------------------------------------------------------- process lifecycle
@worker_process_init.connect
def _pool_process_started(**_: object) -> None:
    instruments.POOL_PROCESSES.set(1)


@worker_process_shutdown.connect
def _pool_process_exiting(pid: int | None = None, **_: object) -> None:
    multiprocess.mark_process_dead(pid or os.getpid(), str(MULTIPROC.path))


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
    return {family.name for family in instruments.WORKER_REGISTRY.collect()}


class Exporter:
    """The HTTP endpoint of one worker container (its main process)."""

    def __init__(self) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, addr: str, port: int) -> bool:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WorkerCollector(MULTIPROC.path, worker_metric_names()))
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:  # another worker on this host holds the port
            log.warning("worker metrics not exported on %s:%s: %s", addr, port, exc)
            return False
        log.info("worker metrics on http://%s:%s/metrics (dir %s)", addr, port, MULTIPROC.path)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


EXPORTER = Exporter()


def remove_dead_workers_dirs(parent: Path) -> None:
    """Default directories of workers that were killed (no shutdown hook ran)."""
    for directory in parent.glob(f"{multiproc.OWN_DIR_PREFIX}*"):
        suffix = directory.name.removeprefix(multiproc.OWN_DIR_PREFIX)
        if suffix.isdigit() and int(suffix) != os.getpid() and not pid_alive(int(suffix)):
            shutil.rmtree(directory, ignore_errors=True)


@worker_init.connect
def _worker_starting(**_: object) -> None:
    removed = remove_stale_files(MULTIPROC.path, os.getpid())
    if removed:
        log.info("worker metrics: removed %d files of an earlier worker", removed)
    if MULTIPROC.owned:
        remove_dead_workers_dirs(MULTIPROC.path.parent)
    instruments.initialise_worker_series(sorted(TERMINAL))


@worker_ready.connect
def _worker_ready(**_: object) -> None:
    settings = get_settings()
    if settings.worker_metrics_port:
        EXPORTER.start(settings.worker_metrics_addr, settings.worker_metrics_port)


@worker_shutdown.connect
def _worker_stopping(**_: object) -> None:
    EXPORTER.stop()
    if MULTIPROC.owned:
        shutil.rmtree(MULTIPROC.path, ignore_errors=True)
