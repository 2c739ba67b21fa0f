"""Keys own their jobs, in-process: another key's job is "not found" on every route,
lists are per key, admins see all, idempotency keys are per owner, and the two
rate-limit budgets (submissions, reads) and the open-stream cap are separate."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from src.api.ratelimit import StreamSlots
from src.core.config import Settings
from tests.unit.conftest import Api, FakeRedis, problem_of

pytestmark = pytest.mark.anyio

A, B, ADMIN = "key-of-team-a", "key-of-team-b", "key-of-the-admin"
KEYS = {"api_keys": f"team-a:{A},{B}", "admin_api_keys": f"ops:{ADMIN}"}


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def test_keys_are_named_and_bare_keys_get_a_stable_name() -> None:
    settings = Settings(_env_file=None, **KEYS)  # type: ignore[call-arg]
    names = {k.name: k for k in settings.keys}
    assert names["team-a"].key == A and not names["team-a"].admin
    assert names["ops"].admin
    bare = f"key-{hashlib.sha256(B.encode()).hexdigest()[:8]}"
    assert names[bare].key == B  # the name never shows the key
    assert B not in repr(names[bare])  # nor does its repr (logs)
    assert names["team-a"].digest == hashlib.sha256(A.encode()).hexdigest()


async def test_another_keys_job_is_not_found_on_every_route(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(**KEYS)
    r = await api.client.post("/jobs/clean", files={"file": ("p.csv", b"x")}, headers=h(A))
    job = r.json()
    assert r.status_code == 202 and job["owner"] == "team-a"
    stored = api.store.docs[job["id"]]
    assert stored["owner_hash"] == hashlib.sha256(A.encode()).hexdigest()
    assert A not in str(stored)  # the key itself is never stored
    for method, path in [
        ("GET", f"/jobs/{job['id']}"),
        ("GET", f"/jobs/{job['id']}?wait=1"),
        ("GET", f"/jobs/{job['id']}/result"),
        ("GET", f"/jobs/{job['id']}/events"),
        ("POST", f"/jobs/{job['id']}/cancel"),
        ("DELETE", f"/jobs/{job['id']}"),
    ]:
        other = await api.client.request(method, path, headers=h(B))
        await problem_of(api, other, 404, "job-not-found")
    assert api.store.docs[job["id"]]["status"] == "queued"  # B cancelled nothing
    mine = await api.client.get(f"/jobs/{job['id']}", headers=h(A))
    assert mine.status_code == 200


async def test_lists_are_per_key_and_admins_see_and_cancel_all(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(**KEYS)
    ids = {}
    for key in (A, B, A):
        r = await api.client.post("/jobs/clean", files={"file": ("p.csv", b"x")}, headers=h(key))
        ids.setdefault(key, []).append(r.json()["id"])
    listed = {
        key: {j["id"] for j in (await api.client.get("/jobs", headers=h(key))).json()["items"]}
        for key in (A, B, ADMIN)
    }
    assert listed[A] == set(ids[A]) and listed[B] == set(ids[B])
    assert listed[ADMIN] == set(ids[A]) | set(ids[B])
    r = await api.client.post(f"/jobs/{ids[B][0]}/cancel", headers=h(ADMIN))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["owner"] != "ops"  # still B's job


async def test_idempotency_keys_are_scoped_per_owner(make_api: Callable[..., Api]) -> None:
    api = make_api(**KEYS)
    same = {"Idempotency-Key": "nightly-2026-11-30"}

    async def submit(key: str, content: bytes) -> dict:
        r = await api.client.post(
            "/jobs/clean", files={"file": ("p.csv", content)}, headers={**h(key), **same}
        )
        assert r.status_code == 202, r.text
        return r.json() | {"replayed": r.headers.get("idempotent-replayed")}

    a = await submit(A, b"a,b\n1,2\n")
    b = await submit(B, b"other,content\n")  # same key, other team, other request: no 409
    assert a["id"] != b["id"] and b["replayed"] is None
    again = await submit(A, b"a,b\n1,2\n")
    assert again["id"] == a["id"] and again["replayed"] == "true"


async def test_submissions_and_reads_have_separate_budgets(
    make_api: Callable[..., Api],
) -> None:
    """A client polling its job never uses up its submissions."""
    api = make_api(**KEYS, rate_limit_per_minute=1, read_rate_limit_per_minute=3, redis=FakeRedis())
    first = await api.client.post("/jobs/clean", files={"file": ("p.csv", b"x")}, headers=h(A))
    assert first.status_code == 202
    job = first.json()["id"]
    reads = [(await api.client.get(f"/jobs/{job}", headers=h(A))).status_code for _ in range(4)]
    assert reads == [200, 200, 200, 429]
    second = await api.client.post("/jobs/clean", files={"file": ("p.csv", b"x")}, headers=h(A))
    body = await problem_of(api, second, 429, "rate-limited")
    assert body["detail"].startswith("rate limit exceeded: 1 submissions per minute")
    other = await api.client.post("/jobs/clean", files={"file": ("p.csv", b"x")}, headers=h(B))
    assert other.status_code == 202  # B's budget is its own


def test_reads_default_to_ten_times_submissions() -> None:
    settings = Settings(_env_file=None, rate_limit_per_minute=6)  # type: ignore[call-arg]
    assert settings.read_rate_limit == 60
    assert Settings(_env_file=None).read_rate_limit == 0  # type: ignore[call-arg]


async def test_open_streams_are_capped_per_key(make_api: Callable[..., Api]) -> None:
    api = make_api(**KEYS, max_streams_per_key=1)
    job = (
        await api.client.post("/jobs/clean", files={"file": ("p.csv", b"x")}, headers=h(A))
    ).json()["id"]
    slots = StreamSlots()
    api.app.state.stream_slots = slots
    held = slots.take(hashlib.sha256(A.encode()).hexdigest(), 1)  # one stream open already
    r = await api.client.get(f"/jobs/{job}/events", headers=h(A))
    body = await problem_of(api, r, 429, "rate-limited")
    assert "event streams" in body["detail"] and r.headers["retry-after"]
    held()  # closed: a slot is free again
    api.store.docs[job]["status"] = "succeeded"  # a finished job's stream ends at once
    r = await api.client.get(f"/jobs/{job}/events", headers=h(A))
    assert r.status_code == 200 and "event: job" in r.text
    assert slots._open == {}  # the stream gave its slot back
