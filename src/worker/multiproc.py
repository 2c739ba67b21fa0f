"""prometheus_client's multiprocess mode for the worker: where each process writes its values.

Celery's prefork pool processes each write their metric values to memory-mapped
files under PROMETHEUS_MULTIPROC_DIR; the worker's main process exports their sum
(`src.worker.exporter`). The variable must be set before prometheus_client is first
imported, so the worker's entry point (`src.worker.celery_app`) calls `configure()`
first. The image sets the variable; otherwise (a developer's `celery worker`, the
tests) a directory of this worker's own is made under the temp dir.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
OWN_DIR_PREFIX = "cleaning-worker-metrics-"


@dataclass(frozen=True)
class MultiprocDir:
    path: Path
    owned: bool  # made by this worker (removed at its shutdown), not given by the environment


_configured: MultiprocDir | None = None


def configure() -> MultiprocDir:
    """Set PROMETHEUS_MULTIPROC_DIR if the environment did not, and create the directory.

    Idempotent; pool processes inherit the result through the fork.
    """
    global _configured
    if _configured is None:
        owned = ENV not in os.environ
        if owned:
            os.environ[ENV] = str(Path(tempfile.gettempdir()) / f"{OWN_DIR_PREFIX}{os.getpid()}")
        path = Path(os.environ[ENV])
        path.mkdir(parents=True, exist_ok=True)
        _configured = MultiprocDir(path, owned)
    return _configured
