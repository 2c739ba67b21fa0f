"""Two teams and an admin on the real stack (API, Redis, the store, a worker): each key
sees, downloads, cancels and deletes its own jobs only; an admin sees all."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import hold_path, upload, wait_held, wait_job
from tests.support.hold import held
from tests.support.services import Stack, stop

A, B, ADMIN = "team-a-secret-1f2e", "team-b-secret-9c8d", "ops-secret-7a6b"


@pytest.fixture(scope="module")
def base(stack: Stack, worker: subprocess.Popen) -> Iterator[str]:
    proc, url = stack.start_api(API_KEYS=f"team-a:{A},team-b:{B}", ADMIN_API_KEYS=f"ops:{ADMIN}")
    yield url
    stop(proc)


@pytest.fixture
def clients(base: str) -> Iterator[dict[str, httpx.Client]]:
    made = {
        name: httpx.Client(base_url=base, timeout=30, headers={"X-API-Key": key})
        for name, key in (("a", A), ("b", B), ("admin", ADMIN))
    }
    yield made
    for client in made.values():
        client.close()


def test_a_job_belongs_to_the_key_that_created_it(
    clients: dict[str, httpx.Client], sample_path: Path, stack: Stack, base: str
) -> None:
    a, b, admin = clients["a"], clients["b"], clients["admin"]
    r = upload(a, sample_path)
    assert r.status_code == 202, r.text
    job = wait_job(a, r.json()["id"])
    assert job["status"] == "succeeded" and job["owner"] == "team-a"
    job_id = job["id"]

    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/result"),
        ("GET", f"/jobs/{job_id}/events"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("DELETE", f"/jobs/{job_id}"),
    ]:
        other = b.request(method, path)
        assert other.status_code == 404, (method, path, other.text)
        assert other.json()["type"] == "/problems/job-not-found"
    assert job_id not in {j["id"] for j in b.get("/jobs", params={"limit": 200}).json()["items"]}
    assert job_id in {j["id"] for j in a.get("/jobs", params={"limit": 200}).json()["items"]}
    assert job_id in {j["id"] for j in admin.get("/jobs", params={"limit": 200}).json()["items"]}
    assert a.get(f"/jobs/{job_id}/result").status_code == 200
    assert admin.get(f"/jobs/{job_id}").json()["owner"] == "team-a"

    # Where the owner shows: the API's log names it; the key itself is nowhere.
    log = (stack.logs / f"api-{base.rsplit(':', 1)[1]}.log").read_text()
    assert A not in log and B not in log
    assert a.delete(f"/jobs/{job_id}").status_code == 204


def test_an_admin_may_cancel_any_job(
    clients: dict[str, httpx.Client], sample_path: Path, stack: Stack
) -> None:
    b, admin = clients["b"], clients["admin"]
    with held(hold_path(stack)) as hold:  # in flight until the cancel lands
        job_id = upload(b, sample_path).json()["id"]
        wait_held(b, job_id, hold)
        assert clients["a"].post(f"/jobs/{job_id}/cancel").status_code == 404
        r = admin.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 200, r.text
        done = wait_job(b, job_id)
    assert done["status"] == "cancelled" and done["owner"] == "team-b"


def test_idempotency_keys_are_per_owner(
    clients: dict[str, httpx.Client], sample_path: Path, tmp_path: Path
) -> None:
    a, b = clients["a"], clients["b"]
    key = {"Idempotency-Key": "nightly-run"}
    other = tmp_path / "other.csv"
    other.write_bytes(sample_path.read_bytes().replace(b"\n", b"\r\n", 1))
    first = upload(a, sample_path, headers=key)
    theirs = upload(b, other, headers=key)  # another team, another file, the same key: fine
    again = upload(a, sample_path, headers=key)
    assert first.status_code == theirs.status_code == again.status_code == 202
    assert theirs.json()["id"] != first.json()["id"]
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
