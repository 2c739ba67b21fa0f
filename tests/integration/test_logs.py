"""LOG_FORMAT=json on a real worker and API: every log record one JSON object a line,
and a job's lines carry its job_id and the worker that ran it.

Its own stack: a worker on the shared one would compete for the job with the session's
worker, which logs text.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import stack_or_skip, upload, wait_job
from tests.support.inputs import OPTIONS, make_input
from tests.support.services import Stack, stop

TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ \S+: ")


@pytest.fixture(scope="module")
def jstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack_or_skip(tmp_path_factory.mktemp("logs"), MONGO_DB="logs", LOG_FORMAT="json") as s:
        yield s


@pytest.fixture(scope="module")
def jworker(jstack: Stack) -> Iterator[subprocess.Popen]:
    proc = jstack.start_worker("json", concurrency=2, beat=True, WORKER_METRICS_PORT="0")
    yield proc
    stop(proc)


@pytest.fixture(scope="module")
def japi(jstack: Stack, jworker: subprocess.Popen) -> Iterator[tuple[httpx.Client, Path]]:
    proc, base = jstack.start_api()
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client, jstack.logs / f"api-{base.rsplit(':', 1)[1]}.log"
    stop(proc)


def records(log: Path) -> list[dict]:
    """Every line from the first JSON one on, each parsed (fails on any that is not JSON).

    Before it, only what Celery prints itself at start (its banner, a warning about root).
    """
    lines = log.read_text().splitlines()
    assert not [line for line in lines if TEXT_RECORD.match(line)], "a record formatted as text"
    first = next(i for i, line in enumerate(lines) if line.startswith("{"))
    return [json.loads(line) for line in lines[first:] if line.strip()]


def test_json_logs_carry_the_job(
    jstack: Stack, japi: tuple[httpx.Client, Path], jworker: subprocess.Popen, tmp_path: Path
) -> None:
    client, api_log = japi
    job_id = upload(client, make_input(tmp_path / "in.csv"), OPTIONS.model_dump_json()).json()["id"]
    job = wait_job(client, job_id)
    assert job["status"] == "succeeded"

    worker_records = records(jstack.logs / "worker-json.log")  # read while it runs
    assert {"level", "logger", "message", "time"} <= set(worker_records[0])
    ours = [
        r for r in worker_records if r["logger"].startswith("src.jobs") and job_id in r["message"]
    ]
    assert [r for r in ours if "claimed" in r["message"]], worker_records
    assert [r for r in ours if "succeeded" in r["message"]], worker_records
    for record in ours:
        assert record["job_id"] == job_id, record
        assert re.fullmatch(r".+:\d+", record["worker"]), record
    assert any(r["logger"].startswith("celery.") for r in worker_records)  # Celery's own too

    api_records = records(api_log)
    assert any(job_id in r["message"] for r in api_records), api_records
    assert jworker.poll() is None
