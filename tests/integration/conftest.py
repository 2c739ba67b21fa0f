"""Real Redis, the wire-protocol store, a real Celery worker and the real HTTP API.

A missing service skips these tests on a developer machine, but fails them
when CI=true: CI never passes without running the integration suite.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from src.core.config import Settings
from tests.support.hold import held_pids
from tests.support.services import (
    S3Bucket,
    S3Server,
    ServiceUnavailable,
    Stack,
    running_stack,
    stop,
    unavailable,
)

TERMINAL = {"succeeded", "failed", "cancelled"}
BUCKET = "cleaning-test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@contextlib.contextmanager
def stack_or_skip(workdir: Path, **env: str) -> Iterator[Stack]:
    try:
        with running_stack(workdir, **env) as s:
            yield s
    except ServiceUnavailable as exc:
        unavailable("integration services", exc)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack_or_skip(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Bucket]:
    """A real S3 server (moto) with one bucket; each test keeps to a prefix of its own."""
    try:
        server = S3Server.start(tmp_path_factory.mktemp("s3"))
    except ServiceUnavailable as exc:
        unavailable("S3 server (moto_server)", exc)
    try:
        yield server.bucket(BUCKET)
    finally:
        server.stop()


def settings_for(stack: Stack, **overrides: object) -> Settings:
    """The settings the stack's API and workers run with, for tests that drive
    `src.jobs` in-process against the same store."""
    env = stack.env()
    values: dict[str, object] = {
        "mongo_url": env["MONGO_URL"],
        "mongo_db": env["MONGO_DB"],
        "redis_url": env["REDIS_URL"],
        "data_dir": Path(env["DATA_DIR"]),
        "stale_after_seconds": float(env["STALE_AFTER_SECONDS"]),
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def hold_path(stack: Stack) -> Path:
    """The hold file of the stack's workers: runs stay in flight while it exists."""
    return stack.logs / "hold"


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Iterator[subprocess.Popen]:
    proc = stack.start_worker("main", concurrency=2, hold_file=hold_path(stack))
    yield proc
    stop(proc)


@contextlib.contextmanager
def api_client(stack: Stack, **env: str) -> Iterator[httpx.Client]:
    """The stack's real API (started with `env`) and a client of it, for the block."""
    proc, base = stack.start_api(**env)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def api(stack: Stack, worker: subprocess.Popen) -> Iterator[httpx.Client]:
    with api_client(stack) as client:
        yield client


def wait_job(
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict], bool] = lambda j: j["status"] in TERMINAL,
    timeout: float = 60,
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stuck: {job}")
        time.sleep(0.1)


def wait_held(client: httpx.Client, job_id: str, hold: Path) -> dict:
    """Until the job, held in flight (tests/support/hold.py), shows cleaned rows."""
    job = wait_job(
        client, job_id, lambda j: j["progress"]["rows_done"] > 0 or j["status"] in TERMINAL
    )
    pids = held_pids(hold) or "none: is the engine called through its module?"
    assert job["status"] == "running", f"ended while held: {job}; processes that held: {pids}"
    return job


def upload(
    client: httpx.Client,
    path: Path,
    options: str | None = None,
    name: str | None = None,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    data = dict(fields)
    if options is not None:
        data["options"] = options
    with path.open("rb") as fh:
        return client.post(
            "/jobs/clean",
            files={"file": (name or path.name, fh, "text/csv")},
            data=data,
            headers=headers,
        )


@dataclass
class Pair:
    client: httpx.Client
    db: str
    hold: Path


@contextlib.contextmanager
def pair(stack: Stack, name: str, redis_db: int, beat: bool = False, **env: str) -> Iterator[Pair]:
    """A worker (with the sweep when `beat`) and an API sharing a Redis database and a
    store database of their own."""
    db = f"cleaning_{name}"
    env = {"REDIS_URL": f"redis://127.0.0.1:{stack.redis.port}/{redis_db}", "MONGO_DB": db, **env}
    hold = stack.logs / f"hold-{name}"
    worker = stack.start_worker(name, concurrency=2, beat=beat, hold_file=hold, **env)
    try:
        proc, base = stack.start_api(**env)
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                yield Pair(client, db, hold)
        finally:
            stop(proc)
    finally:
        stop(worker)
