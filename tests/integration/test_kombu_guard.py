"""Redis restarted under a worker holding an unacknowledged task: no task lost, no dead worker.

kombu 5.7.0 kills such a worker ("Unrecoverable error: AttributeError: 'NoneType'
object has no attribute 'hostname'") when the worker has a task in flight and room to
prefetch another (a BRPOP pending): src/worker/kombu_guard.py explains the path and
guards it. Without the guard this test fails on most runs: the worker's log shows
the unrecoverable error and the worker exits. This module runs its own stack, since
it restarts Redis.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    api_client,
    hold_path,
    stack_or_skip,
    upload,
    wait_held,
    wait_job,
)
from tests.support.hold import held
from tests.support.inputs import OPTIONS, make_input
from tests.support.services import Stack, stop, wait_for

CRASH = b"Unrecoverable error"


@pytest.fixture(scope="module")
def kstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack_or_skip(tmp_path_factory.mktemp("kombu"), MONGO_DB="kombu_guard") as s:
        yield s


@pytest.fixture(scope="module")
def kworker(kstack: Stack) -> Iterator[subprocess.Popen]:
    # Not supervised: a worker that dies must fail this test. Two processes, prefetch 2:
    # one task held leaves room for another, so a BRPOP is pending when Redis goes.
    proc = kstack.start_worker(
        "kombu", concurrency=2, hold_file=hold_path(kstack), WORKER_METRICS_PORT="0"
    )
    yield proc
    stop(proc)


@pytest.fixture(scope="module")
def kapi(kstack: Stack, kworker: subprocess.Popen) -> Iterator[httpx.Client]:
    with api_client(kstack) as client:
        yield client


def worker_log(stack: Stack) -> bytes:
    return (stack.logs / "worker-kombu.log").read_bytes()


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_redis_restart_with_unacked_task_keeps_worker(
    kstack: Stack, kapi: httpx.Client, kworker: subprocess.Popen, tmp_path: Path, round_: int
) -> None:
    """Three rounds on one worker: each restart must leave it alive and consuming."""
    source = make_input(tmp_path / "in.csv")
    with held(hold_path(kstack)) as hold:
        job_id = upload(kapi, source, OPTIONS.model_dump_json()).json()["id"]
        wait_held(kapi, job_id, hold)  # running, its message unacknowledged (acks_late)
        log_before = len(worker_log(kstack))
        kstack.redis = kstack.redis.restart()
        # The worker sees the loss and reconnects, or (without the guard) dies of it,
        # while its task is still held.
        wait_for(
            lambda: any(m in worker_log(kstack)[log_before:] for m in (b"Connected to", CRASH)),
            60,
            "worker reconnected",
        )
    log = worker_log(kstack)[log_before:].decode(errors="replace")
    assert CRASH.decode() not in log, "\n".join(
        line for line in log.splitlines() if CRASH.decode() in line or "Error: " in line
    )
    assert wait_job(kapi, job_id)["status"] == "succeeded"  # the task in flight is not lost
    wait_for(lambda: kapi.get("/ready").status_code == 200, 30, "API ready after restart")
    after = [upload(kapi, source, OPTIONS.model_dump_json()).json()["id"] for _ in range(3)]
    for new in after:  # and the worker consumes new tasks
        assert wait_job(kapi, new)["status"] == "succeeded"
    assert kworker.poll() is None, "the worker exited"
