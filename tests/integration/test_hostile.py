"""The hostile corpus against the real service: a 4xx or a readable `failed`, never a crash.

A good job submitted first must still succeed at the end, and the worker must
still be alive.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hostile.generate import CASES, Case
from tests.integration.conftest import upload, wait_job
from tests.support.services import Stack, stop


@pytest.fixture(scope="module")
def hostile_api(stack: Stack, worker: subprocess.Popen) -> Iterator[httpx.Client]:
    link = stack.data_dir / "raw" / "link-out"
    if not link.is_symlink():
        link.symlink_to("/etc/hostname")
    proc, base = stack.start_api(MAX_UPLOAD_MB="60")
    with httpx.Client(base_url=base, timeout=120) as client:
        yield client
    stop(proc)


@pytest.fixture(scope="module")
def good_job(hostile_api: httpx.Client, sample_path: Path) -> str:
    """Submitted before the hostile cases, checked after them."""
    r = upload(hostile_api, sample_path)
    assert r.status_code == 202
    return r.json()["id"]


def _submit(client: httpx.Client, case: Case, tmp_path: Path) -> httpx.Response:
    if case.json_body is not None:
        return client.post("/jobs/clean", json=case.json_body)
    if case.raw is not None:
        return client.post(
            "/jobs/clean", content=case.raw[1], headers={"content-type": case.raw[0]}
        )
    assert case.body is not None
    path = tmp_path / case.filename
    path.write_bytes(case.body())
    return upload(client, path, case.options)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(
    hostile_api: httpx.Client, good_job: str, case: Case, tmp_path: Path
) -> None:
    r = _submit(hostile_api, case, tmp_path)
    assert r.status_code == case.status, r.text
    if case.status != 202:
        detail = r.json()["detail"]
        assert case.detail in detail
        assert "Traceback" not in r.text
        return
    job = wait_job(hostile_api, r.json()["id"], timeout=120)
    assert job["status"] == case.outcome, job
    if case.outcome == "failed":
        assert case.error in job["error"]
        assert "Traceback" not in job["error"] and "internal error" not in job["error"]
        assert hostile_api.get(f"/jobs/{job['id']}/result").status_code == 409
    elif case.check is not None:
        result = hostile_api.get(f"/jobs/{job['id']}/result")
        assert result.status_code == 200
        assert case.check(result.content)


def test_good_job_and_worker_survive(
    hostile_api: httpx.Client, good_job: str, worker: subprocess.Popen, stack: Stack
) -> None:
    assert wait_job(hostile_api, good_job)["status"] == "succeeded"
    assert worker.poll() is None, "the worker died"
    leftovers = [p for p in (stack.data_dir / "jobs").rglob("*.tmp")]
    assert leftovers == [], "half-written outputs left behind"
