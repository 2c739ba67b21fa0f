"""The HTTP API in process: routing, validation and error mapping, with no service running.

The app, the fake store and the checks of problem documents are in `conftest.py`.
Every error is an RFC 9457 problem document (`problem_of` checks its media type and
members, and that its `type` resolves through `GET /problems/{slug}`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

from src.api import ratelimit
from src.api.routes import health
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc
from tests.unit.conftest import (
    API_KEY,
    CSV,
    UNKNOWN_ID,
    Api,
    FailingStore,
    FakeRedis,
    FakeStore,
    locs,
    problem_of,
)

pytestmark = pytest.mark.anyio

# Every kind of problem the API answers: the contract's list, not read from src.
PROBLEM_KINDS = {
    "invalid-request": 400,
    "invalid-cursor": 400,
    "invalid-source": 400,
    "unauthorized": 401,
    "not-found": 404,
    "job-not-found": 404,
    "source-not-found": 404,
    "result-gone": 404,
    "method-not-allowed": 405,
    "job-state-conflict": 409,
    "idempotency-conflict": 409,
    "upload-too-large": 413,
    "unsupported-media-type": 415,
    "validation-failed": 422,
    "rate-limited": 429,
    "internal-error": 500,
    "service-unavailable": 503,
}


class RacingStore(FakeStore):
    """A concurrent twin with the same Idempotency-Key inserts between our lookup and insert."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get_by_idempotency_key(self, key: str) -> JobDoc | None:
        self.lookups += 1
        return None if self.lookups == 1 else await super().get_by_idempotency_key(key)


def job_id_of(response: Any) -> str:
    return response.json()["id"]


# ------------------------------------------------------------------ routing
async def test_health_and_openapi(api: Api) -> None:
    assert (await api.client.get("/health")).json() == {"status": "ok"}
    schema = await api.client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/jobs/clean" in schema.json()["paths"]


async def test_upload_is_accepted_stored_and_queued(api: Api) -> None:
    r = await api.upload(options='{"lowercase": true}', output_format="parquet")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["input_name"] == "products.csv"
    assert job["output_format"] == "parquet"
    assert job["options"]["lowercase"] is True
    assert job["result_url"] is None
    assert api.sent == [job["id"]]
    assert (api.root / "jobs" / job["id"] / "input.csv").read_bytes() == CSV
    stored = api.store.docs[job["id"]]
    assert stored["input"] == f"jobs/{job['id']}/input.csv" and stored["owns_input"] is True
    assert "Idempotent-Replayed" not in r.headers


async def test_source_under_data_dir_is_accepted(api: Api) -> None:
    (api.root / "raw").mkdir()
    (api.root / "raw" / "products.csv").write_bytes(CSV)
    r = await api.client.post("/jobs/clean", json={"source": "raw/products.csv"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["input_name"] == "products.csv"
    assert api.sent == [job["id"]]
    stored = api.store.docs[job["id"]]
    assert stored["input"] == "raw/products.csv" and stored["owns_input"] is False
    assert api.leftovers() == []  # a source is not copied


async def test_get_job(api: Api) -> None:
    job_id = job_id_of(await api.upload())
    r = await api.client.get(f"/jobs/{job_id}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["id"] == job_id and r.json()["status"] == "queued"
    missing = await api.client.get(f"/jobs/{UNKNOWN_ID}")
    await problem_of(api, missing, 404, "job-not-found", detail=f"job {UNKNOWN_ID} not found")


async def test_list_pages_newest_first(api: Api) -> None:
    ids = [f"{i:012x}{'a' * 10}" for i in range(1, 6)]
    for i, job_id in enumerate(ids):
        api.store.seed(job_id, JobStatus.SUCCEEDED if i % 2 else JobStatus.QUEUED)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await api.client.get("/jobs", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3

    queued = (await api.client.get("/jobs", params={"status": "queued"})).json()
    assert [j["id"] for j in queued["items"]] == [ids[4], ids[2], ids[0]]
    assert queued["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "status", "slug", "names"),
    [
        ("cursor=garbage", 400, "invalid-cursor", "invalid cursor"),
        ("cursor=" + "A" * 30, 400, "invalid-cursor", "invalid cursor"),
        ("cursor=%FF%FE", 400, "invalid-cursor", "invalid cursor"),  # not UTF-8
        ("cursor=w6k", 400, "invalid-cursor", "invalid cursor"),  # base64 of non-ASCII 'é'
        ("limit=0", 422, "validation-failed", "limit"),
        ("limit=1000", 422, "validation-failed", "limit"),
        ("limit=many", 422, "validation-failed", "limit"),
        ("status=bogus", 422, "validation-failed", "status"),
    ],
)
async def test_list_refuses_bad_query(
    api: Api, query: str, status: int, slug: str, names: str
) -> None:
    r = await api.client.get(f"/jobs?{query}")
    body = await problem_of(api, r, status, slug)
    assert names in body["detail"]
    if status == 422:
        assert locs(body) == [["query", names]]
    else:
        assert "errors" not in body
    assert api.store.calls["list"] == 0


async def test_result_before_success_is_a_conflict(api: Api) -> None:
    job_id = job_id_of(await api.upload())
    r = await api.client.get(f"/jobs/{job_id}/result")
    detail = "job is queued; the result is available once it succeeded"
    await problem_of(api, r, 409, "job-state-conflict", detail=detail)
    missing = await api.client.get(f"/jobs/{UNKNOWN_ID}/result")
    await problem_of(api, missing, 404, "job-not-found")


async def test_result_download(api: Api) -> None:
    job_id = "1" * 22
    result = f"jobs/{job_id}/result.csv"
    api.store.seed(job_id, JobStatus.SUCCEEDED, result=result)
    r = await api.client.get(f"/jobs/{job_id}/result")
    detail = f"result of job {job_id} is gone (expired or removed)"
    await problem_of(api, r, 404, "result-gone", detail=detail)

    (api.root / result).parent.mkdir(parents=True)
    (api.root / result).write_bytes(CSV)
    r = await api.client.get(f"/jobs/{job_id}/result")
    assert r.status_code == 200
    assert r.content == CSV
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="products.cleaned.csv"' in r.headers["content-disposition"]


async def test_cancel(api: Api) -> None:
    job_id = job_id_of(await api.upload())
    r = await api.client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["error"] == "cancelled by request"
    assert r.headers["location"] == f"/jobs/{job_id}"
    again = await api.client.post(f"/jobs/{job_id}/cancel")
    detail = "job is cancelled; only queued or running jobs can be cancelled"
    await problem_of(api, again, 409, "job-state-conflict", detail=detail)
    missing = await api.client.post(f"/jobs/{UNKNOWN_ID}/cancel")
    await problem_of(api, missing, 404, "job-not-found", detail=f"job {UNKNOWN_ID} not found")


async def test_cancel_running_asks_the_worker(api: Api) -> None:
    job_id = "2" * 22
    api.store.seed(job_id, JobStatus.RUNNING, worker="host:1")
    r = await api.client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True


async def test_events_of_unknown_job(api: Api) -> None:
    r = await api.client.get(f"/jobs/{UNKNOWN_ID}/events")
    await problem_of(api, r, 404, "job-not-found", detail=f"job {UNKNOWN_ID} not found")


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("form", "filename", "status", "slug", "detail", "loc"),
    [
        ({}, "products.xlsx", 415, "unsupported-media-type", "unsupported file type '.xlsx'", None),
        ({}, "products", 415, "unsupported-media-type", "unsupported file type '(none)'", None),
        ({"options": "{not json"}, "products.csv", 422, "validation-failed", "invalid options", []),
        (
            {"options": '{"min_length": -1}'},
            "products.csv",
            422,
            "validation-failed",
            "invalid options",
            ["min_length"],
        ),
        (
            {"options": '{"colour": "red"}'},
            "products.csv",
            422,
            "validation-failed",
            "invalid options",
            ["colour"],
        ),
        ({"output_format": "xml"}, "products.csv", 422, "validation-failed", "invalid", None),
    ],
)
async def test_upload_refused(
    api: Api,
    form: dict[str, str],
    filename: str,
    status: int,
    slug: str,
    detail: str,
    loc: list[str] | None,
) -> None:
    r = await api.upload(name=filename, **form)
    body = await problem_of(api, r, status, slug)
    assert body["detail"].startswith(detail), body
    if "output_format" in form:
        assert "output_format" in body["detail"]
        assert locs(body) == [["body", "output_format"]]
    elif loc is not None:  # the options field, and the option inside it
        assert locs(body) == [["body", "options", *loc]], body
        assert ".".join(["options", *loc]) in body["detail"]
    else:
        assert "errors" not in body
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


async def test_multipart_without_file(api: Api) -> None:
    r = await api.client.post("/jobs/clean", files={"options": (None, '{"lowercase": true}')})
    body = await problem_of(api, r, 422, "validation-failed")
    assert "file" in body["detail"]
    assert body["errors"] == [{"loc": ["body", "file"], "msg": "Field required", "type": "missing"}]
    assert api.store.docs == {} and api.leftovers() == []


@pytest.mark.parametrize(
    ("body", "status", "slug", "detail"),
    [
        (
            {"source": "/etc/passwd"},
            400,
            "invalid-source",
            "source must be a relative path under DATA_DIR",
        ),
        ({"source": "raw/../../secret.csv"}, 400, "invalid-source", "source must not contain '..'"),
        ({"source": "raw\\products.csv"}, 400, "invalid-source", "source must be a relative path"),
        (
            {"source": "raw/missing.csv"},
            404,
            "source-not-found",
            "source not found under DATA_DIR: raw/missing.csv",
        ),
        ({"source": "raw"}, 404, "source-not-found", "source not found under DATA_DIR: raw"),
        (
            {"source": "raw/products.csv", "colour": 1},
            422,
            "validation-failed",
            "invalid request: colour",
        ),
        ({"options": {}}, 422, "validation-failed", "invalid request: source"),
        (
            {"source": "raw/products.csv", "output_format": "xml"},
            422,
            "validation-failed",
            "invalid request: output_format",
        ),
        (
            {"source": "raw/products.csv", "options": {"chunk_rows": 0}},
            422,
            "validation-failed",
            "invalid options: options.chunk_rows",
        ),
        (
            {"source": "raw/products.csv", "callback_url": "not a url"},
            422,
            "validation-failed",
            "invalid request: callback_url",
        ),
    ],
)
async def test_source_refused(
    api: Api, body: dict[str, Any], status: int, slug: str, detail: str
) -> None:
    (api.root / "raw").mkdir()
    (api.root / "raw" / "products.csv").write_bytes(CSV)
    r = await api.client.post("/jobs/clean", json=body)
    problem = await problem_of(api, r, status, slug)
    assert problem["detail"].startswith(detail), problem
    if status == 422:  # the field, in `errors` too
        field = detail.rsplit(": ", 1)[1].split(".")
        assert ["body", *field] in locs(problem), problem
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


async def test_source_leaving_data_dir_through_a_link(api: Api, tmp_path_factory: Any) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.csv"
    outside.write_bytes(CSV)
    (api.root / "link.csv").symlink_to(outside)
    r = await api.client.post("/jobs/clean", json={"source": "link.csv"})
    body = await problem_of(api, r, 400, "invalid-source")
    assert "leaves DATA_DIR" in body["detail"]
    assert api.store.docs == {}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "slug", "detail"),
    [
        (
            "text/plain",
            b"raw/products.csv",
            415,
            "unsupported-media-type",
            "send multipart/form-data",
        ),
        (None, b"", 415, "unsupported-media-type", "send multipart/form-data"),
        ("application/json", b"{not json", 422, "validation-failed", "invalid request"),
    ],
)
async def test_body_kind_refused(
    api: Api, content_type: str | None, body: bytes, status: int, slug: str, detail: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = await api.client.post("/jobs/clean", content=body, headers=headers)
    problem = await problem_of(api, r, status, slug)
    assert problem["detail"].startswith(detail)
    assert api.store.docs == {} and api.leftovers() == []


@pytest.mark.parametrize("size_mb", [1.5, 3])  # read then refused; refused by Content-Length
async def test_upload_too_large(make_api: Callable[..., Api], size_mb: float) -> None:
    api = make_api(max_upload_mb=1)
    big = CSV + b"x" * int(size_mb * (1 << 20))
    r = await api.upload(content=big)
    detail = "upload exceeds MAX_UPLOAD_MB (1 MB)"
    await problem_of(api, r, 413, "upload-too-large", detail=detail)
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


# ------------------------------------------------------------------ idempotency
async def test_idempotency_key_replay(api: Api) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = await api.client.post("/jobs/clean", files={"file": ("p.csv", CSV)}, headers=key)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = await api.client.post("/jobs/clean", files={"file": ("p.csv", CSV)}, headers=key)
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert job_id_of(again) == job_id_of(first)
    assert again.headers["location"] == f"/jobs/{job_id_of(first)}"
    assert api.sent == [job_id_of(first)]  # one task only
    assert list(api.store.docs) == [job_id_of(first)]
    assert api.leftovers() == [f"jobs/{job_id_of(first)}", f"jobs/{job_id_of(first)}/input.csv"]


@pytest.mark.parametrize(
    "second",
    [
        {"files": {"file": ("p.csv", CSV + b"1,x,,1,1\n")}},  # other content
        {"files": {"file": ("p.csv", CSV)}, "data": {"options": '{"lowercase": true}'}},
        {"files": {"file": ("p.csv", CSV)}, "data": {"output_format": "parquet"}},
    ],
)
async def test_idempotency_key_reused_with_another_request(
    api: Api, second: dict[str, Any]
) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = await api.client.post("/jobs/clean", files={"file": ("p.csv", CSV)}, headers=key)
    assert first.status_code == 202
    r = await api.client.post("/jobs/clean", headers=key, **second)
    detail = "Idempotency-Key already used with a different request"
    await problem_of(api, r, 409, "idempotency-conflict", detail=detail)
    assert list(api.store.docs) == [job_id_of(first)] and api.sent == [job_id_of(first)]
    assert api.leftovers() == [f"jobs/{job_id_of(first)}", f"jobs/{job_id_of(first)}/input.csv"]


async def test_idempotency_key_race_lost_to_a_twin(make_api: Callable[..., Api]) -> None:
    api = make_api(store=RacingStore())
    first = await api.client.post(
        "/jobs/clean", files={"file": ("p.csv", CSV)}, headers={"Idempotency-Key": "k"}
    )
    assert first.status_code == 202
    assert isinstance(api.store, RacingStore)
    api.store.lookups = 0  # the next lookup misses: the twin inserts right after it
    r = await api.client.post(
        "/jobs/clean", files={"file": ("p.csv", CSV)}, headers={"Idempotency-Key": "k"}
    )
    assert r.status_code == 202, r.text
    assert r.headers["Idempotent-Replayed"] == "true" and job_id_of(r) == job_id_of(first)
    assert api.sent == [job_id_of(first)] and list(api.store.docs) == [job_id_of(first)]
    assert api.leftovers() == [f"jobs/{job_id_of(first)}", f"jobs/{job_id_of(first)}/input.csv"]


async def test_idempotency_key_too_long(api: Api) -> None:
    r = await api.client.post(
        "/jobs/clean", files={"file": ("p.csv", CSV)}, headers={"Idempotency-Key": "k" * 201}
    )
    body = await problem_of(api, r, 422, "validation-failed")
    assert "idempotency-key" in body["detail"]
    assert locs(body) == [["header", "idempotency-key"]]
    assert api.store.docs == {} and api.leftovers() == []


# ------------------------------------------------------------------ outages and failures
def broker_down(job_id: str) -> None:
    raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.mark.parametrize("kind", ["upload", "source"])
async def test_broker_down_rolls_back(make_api: Callable[..., Api], kind: str) -> None:
    api = make_api(send=broker_down)
    if kind == "upload":
        r = await api.upload()
    else:
        (api.root / "raw").mkdir()
        (api.root / "raw" / "products.csv").write_bytes(CSV)
        r = await api.client.post("/jobs/clean", json={"source": "raw/products.csv"})
    detail = "broker (Redis) unavailable: job not created; retry later"
    await problem_of(api, r, 503, "service-unavailable", detail=detail)
    assert r.headers["retry-after"] == "5"
    assert api.store.docs == {}
    assert api.leftovers() == []
    if kind == "source":  # the user's own file is never removed
        assert (api.root / "raw" / "products.csv").read_bytes() == CSV


async def test_store_down_on_submit(make_api: Callable[..., Api]) -> None:
    api = make_api(store=FailingStore(ServerSelectionTimeoutError("127.0.0.1:27017: refused")))
    r = await api.upload()
    detail = "job store (MongoDB) unavailable: job not created; retry later"
    await problem_of(api, r, 503, "service-unavailable", detail=detail)
    assert r.headers["retry-after"] == "5"
    assert api.sent == [] and api.leftovers() == []


STORE_ROUTES = [
    ("GET", f"/jobs/{UNKNOWN_ID}"),
    ("GET", f"/jobs/{UNKNOWN_ID}?wait=5"),
    ("GET", "/jobs"),
    ("GET", f"/jobs/{UNKNOWN_ID}/result"),
    ("POST", f"/jobs/{UNKNOWN_ID}/cancel"),
    ("GET", f"/jobs/{UNKNOWN_ID}/events"),
    ("DELETE", f"/jobs/{UNKNOWN_ID}"),
]


@pytest.mark.parametrize(("method", "path"), STORE_ROUTES)
async def test_store_down_is_503(make_api: Callable[..., Api], method: str, path: str) -> None:
    api = make_api(store=FailingStore(PyMongoError("connection closed")))
    r = await api.client.request(method, path)
    detail = "job store (MongoDB) unavailable; retry later"
    await problem_of(api, r, 503, "service-unavailable", detail=detail, instance=path.split("?")[0])
    assert r.headers["retry-after"] == "5"


@pytest.mark.parametrize(("method", "path"), [*STORE_ROUTES, ("POST", "/jobs/clean")])
async def test_unexpected_error_is_500_without_traceback(
    make_api: Callable[..., Api], method: str, path: str
) -> None:
    api = make_api(
        store=FailingStore(RuntimeError("secret-internal-state")), raise_app_exceptions=False
    )
    files = {"file": ("p.csv", CSV)} if path == "/jobs/clean" else None
    r = await api.client.request(method, path, files=files)
    detail = "internal error (RuntimeError)"
    await problem_of(api, r, 500, "internal-error", detail=detail, instance=path.split("?")[0])
    assert "secret-internal-state" not in r.text and "Traceback" not in r.text
    # The upload of a job that was never recorded must not stay behind (no job, no file).
    assert api.leftovers() == []


async def test_ready_names_the_service_that_is_down(
    make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def redis_ok(url: str, timeout: float) -> str:
        return "ok"

    monkeypatch.setattr(health, "_check_redis", redis_ok)
    api = make_api(store=FailingStore(ServerSelectionTimeoutError("refused")))
    r = await api.client.get("/ready")
    assert r.status_code == 503, r.text
    assert "mongodb" in r.text and "ServerSelectionTimeoutError" in r.text


# ------------------------------------------------------------------ API keys, rate limit
KEYED_ROUTES = [
    ("GET", "/jobs"),
    ("GET", f"/jobs/{UNKNOWN_ID}"),
    ("GET", f"/jobs/{UNKNOWN_ID}/result"),
    ("GET", f"/jobs/{UNKNOWN_ID}/events"),
    ("POST", f"/jobs/{UNKNOWN_ID}/cancel"),
    ("DELETE", f"/jobs/{UNKNOWN_ID}"),
    ("POST", "/jobs/clean"),
]


@pytest.mark.parametrize(("method", "path"), KEYED_ROUTES)
@pytest.mark.parametrize("given", [None, "", "wrong-key", API_KEY + "x"])
async def test_api_key_required(
    make_api: Callable[..., Api], method: str, path: str, given: str | None
) -> None:
    api = make_api(api_keys=f"other-key, {API_KEY}")
    headers = {} if given is None else {"X-API-Key": given}
    files = {"file": ("p.csv", CSV)} if path == "/jobs/clean" else None
    r = await api.client.request(method, path, headers=headers, files=files)
    detail = "missing or invalid API key (header X-API-Key)"
    await problem_of(api, r, 401, "unauthorized", detail=detail)
    assert r.headers["www-authenticate"] == "APIKey"
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []
    assert sum(api.store.calls.values()) == 0


async def test_api_key_accepted(make_api: Callable[..., Api]) -> None:
    api = make_api(api_keys=f"other-key,{API_KEY}")
    key = {"X-API-Key": API_KEY}
    assert (await api.client.get("/health")).status_code == 200  # no key needed
    assert (await api.client.get("/problems")).status_code == 200
    r = await api.client.post("/jobs/clean", files={"file": ("p.csv", CSV)}, headers=key)
    assert r.status_code == 202, r.text
    assert (await api.client.get(f"/jobs/{job_id_of(r)}", headers=key)).status_code == 200
    assert (await api.client.get("/jobs", headers={"X-API-Key": "other-key"})).status_code == 200
    assert (await api.client.post(f"/jobs/{job_id_of(r)}/cancel", headers=key)).status_code == 200
    assert (await api.client.delete(f"/jobs/{job_id_of(r)}", headers=key)).status_code == 204


@pytest.mark.parametrize(("method", "path"), KEYED_ROUTES)
async def test_rate_limited(make_api: Callable[..., Api], method: str, path: str) -> None:
    """Over the budget of the window: 429 with Retry-After, before the route does anything."""
    api = make_api(
        rate_limit_per_minute=5, read_rate_limit_per_minute=5, redis=FakeRedis(already=5)
    )
    files = {"file": ("p.csv", CSV)} if path == "/jobs/clean" else None
    r = await api.client.request(method, path, files=files)
    body = await problem_of(api, r, 429, "rate-limited")
    unit = "submissions" if path == "/jobs/clean" else "requests"
    assert body["detail"].startswith(f"rate limit exceeded: 5 {unit} per minute; retry in ")
    assert 1 <= int(r.headers["retry-after"]) <= 61
    assert sum(api.store.calls.values()) == 0 and api.sent == [] and api.leftovers() == []


async def test_rate_limit_counts_per_key(
    make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 1_800_000_030.0))
    api = make_api(read_rate_limit_per_minute=2, api_keys=f"other-key,{API_KEY}")
    for _ in range(2):
        r = await api.client.get("/jobs", headers={"X-API-Key": API_KEY})
        assert r.status_code == 200, r.text
    over = await api.client.get("/jobs", headers={"X-API-Key": API_KEY})
    body = await problem_of(api, over, 429, "rate-limited")
    assert body["detail"] == "rate limit exceeded: 2 requests per minute; retry in 31s"
    assert over.headers["retry-after"] == "31"
    other = await api.client.get("/jobs", headers={"X-API-Key": "other-key"})
    assert other.status_code == 200, other.text
    assert sorted(api.redis.counts.values()) == [1, 3]
    assert set(api.redis.expires.values()) == {61}
    assert API_KEY not in str(dict(api.redis.counts))  # the key itself never reaches Redis


async def test_problem_on_unknown_route_and_method(api: Api) -> None:
    r = await api.client.get("/nowhere")
    await problem_of(api, r, 404, "not-found", detail="Not Found")
    r = await api.client.put(f"/jobs/{UNKNOWN_ID}")
    await problem_of(api, r, 405, "method-not-allowed", detail="Method Not Allowed")
    # RFC 9110: a 405 lists every method the resource has (GET and DELETE here).
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "DELETE"}, r.headers
    r = await api.client.delete("/jobs")
    await problem_of(api, r, 405, "method-not-allowed")
    r = await api.client.get("/problems/no-such-kind")
    body = await problem_of(api, r, 404, "not-found")
    assert "no-such-kind" in body["detail"]


async def test_replay_with_json_source(api: Api) -> None:
    (api.root / "raw").mkdir()
    (api.root / "raw" / "products.csv").write_bytes(CSV)
    key = {"Idempotency-Key": "src-1"}
    body = {"source": "raw/products.csv", "options": {"lowercase": True}}
    first = await api.client.post("/jobs/clean", json=body, headers=key)
    again = await api.client.post(
        "/jobs/clean", content=json.dumps(body), headers={**key, "content-type": "application/json"}
    )
    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert job_id_of(again) == job_id_of(first) and api.sent == [job_id_of(first)]


async def test_events_of_a_finished_job(api: Api) -> None:
    job_id = "3" * 22
    api.store.seed(job_id, JobStatus.CANCELLED)
    r = await api.client.get(f"/jobs/{job_id}/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.splitlines() if line.startswith("event:")]
    assert events == ["event: job"]
    assert f'"id":"{job_id}"' in r.text and '"status":"cancelled"' in r.text


async def test_multipart_callback_url(api: Api) -> None:
    r = await api.upload(callback_url="https://93.184.215.14/hook")
    assert r.status_code == 202, r.text
    assert r.json()["callback_url"] == "https://93.184.215.14/hook"


@pytest.mark.parametrize("url", ["not a url", "file:///etc/passwd"])
async def test_multipart_callback_url_is_validated_like_json(api: Api, url: str) -> None:
    r = await api.upload(callback_url=url)
    body = await problem_of(api, r, 422, "validation-failed")
    assert "callback_url" in body["detail"]
    assert locs(body) == [["body", "callback_url"]]
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


async def test_multipart_with_two_files(api: Api) -> None:
    files = [("file", ("p.csv", CSV)), ("file", ("q.csv", CSV))]
    r = await api.client.post("/jobs/clean", files=files)
    body = await problem_of(api, r, 400, "invalid-request")
    assert body["detail"].startswith("Too many files. Maximum number of files is 1.")
    assert api.store.docs == {} and api.leftovers() == []


# ------------------------------------------------------------------ ?wait=
def waiting(api: Api) -> dict[str, list[Any]]:
    """The jobs the app's watcher has waiters for (none before the first wait)."""
    watcher = getattr(api.app.state, "watcher", None)
    return {} if watcher is None else watcher._waiters


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the app until `condition` holds; fail (not hang) if it never does."""
    with anyio.fail_after(10):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
async def test_wait_answers_a_finished_job_at_once(api: Api, status: JobStatus) -> None:
    job_id = "4" * 22
    api.store.seed(job_id, status)
    r = await api.client.get(f"/jobs/{job_id}", params={"wait": 30})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == status
    assert api.store.calls["get_many"] == 0 and waiting(api) == {}  # never watched


async def test_wait_answers_when_the_job_finishes(api: Api) -> None:
    job_id = "5" * 22
    api.store.seed(job_id, JobStatus.RUNNING)
    request = asyncio.create_task(api.client.get(f"/jobs/{job_id}", params={"wait": 30}))
    await until(lambda: job_id in waiting(api), "the request waits")
    assert not request.done()
    api.store.finish(job_id)
    with anyio.fail_after(10):  # well before the 30 s the request would wait
        r = await request
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"
    assert waiting(api) == {}
    assert all(ids == [job_id] for ids in api.store.get_many_calls)


async def test_wait_times_out_with_the_running_job(api: Api) -> None:
    job_id = "6" * 22
    api.store.seed(job_id, JobStatus.RUNNING, rows_done=7)
    r = await api.client.get(f"/jobs/{job_id}", params={"wait": 0.3})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["progress"]["rows_done"] == 7
    assert waiting(api) == {}  # the timed-out waiter is gone


async def test_wait_on_a_job_deleted_meanwhile_is_404(api: Api) -> None:
    job_id = "7" * 22
    api.store.seed(job_id, JobStatus.RUNNING)
    request = asyncio.create_task(api.client.get(f"/jobs/{job_id}", params={"wait": 30}))
    await until(lambda: job_id in waiting(api), "the request waits")
    del api.store.docs[job_id]
    with anyio.fail_after(10):
        r = await request
    await problem_of(api, r, 404, "job-not-found", instance=f"/jobs/{job_id}")


@pytest.mark.parametrize("wait", ["61", "-1", "60.001", "soon", "nan", "inf"])
async def test_wait_out_of_range(api: Api, wait: str) -> None:
    api.store.seed("8" * 22, JobStatus.RUNNING)
    r = await api.client.get(f"/jobs/{'8' * 22}?wait={wait}")
    body = await problem_of(api, r, 422, "validation-failed")
    assert "wait" in body["detail"] and locs(body) == [["query", "wait"]]
    assert api.store.calls["get"] == 0 and waiting(api) == {}


class GatedStore(FakeStore):
    """`get_many` answers only once `gate` is set: the test decides when the watcher reads."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def get_many(self, job_ids: list[str]) -> list[JobDoc]:
        await self.gate.wait()
        return await super().get_many(job_ids)


async def test_many_waiters_cost_one_store_read_per_interval(
    make_api: Callable[..., Api],
) -> None:
    """50 requests waiting on 50 jobs: the watcher reads them all in one batch, not 50 reads."""
    store = GatedStore()
    api = make_api(store=store)
    ids = [f"{i:022x}" for i in range(1, 51)]
    for job_id in ids:
        store.seed(job_id, JobStatus.RUNNING)
    requests = [
        asyncio.create_task(api.client.get(f"/jobs/{job_id}", params={"wait": 30}))
        for job_id in ids
    ]
    await until(lambda: len(waiting(api)) == len(ids), "all 50 requests wait")
    for job_id in ids:
        store.finish(job_id)
    store.gate.set()
    with anyio.fail_after(10):
        answers = await asyncio.gather(*requests)
    assert [r.json()["status"] for r in answers] == ["succeeded"] * len(ids)
    # The read in flight when the gate opened may have listed only the first waiters;
    # the next one lists the rest. Never one read per waiter.
    assert 1 <= len(store.get_many_calls) <= 2, store.get_many_calls
    assert max(len(batch) for batch in store.get_many_calls) >= len(ids) // 2
    assert sorted({i for batch in store.get_many_calls for i in batch}) == ids
    assert all(len(batch) == len(set(batch)) for batch in store.get_many_calls)
    assert waiting(api) == {}


# ------------------------------------------------------------------ DELETE
def job_files(api: Api, job_id: str) -> list[str]:
    for name in ("input.csv", "result.csv", "parts/00000.csv", "parts/00000.keys.parquet"):
        path = api.root / "jobs" / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(CSV)
    return api.leftovers()


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
async def test_delete_a_finished_job(api: Api, status: JobStatus) -> None:
    job_id, other = "9" * 22, "a" * 22
    api.store.seed(job_id, status, result=f"jobs/{job_id}/result.csv")
    api.store.seed_part(job_id, 0)
    api.store.seed(other, JobStatus.SUCCEEDED)
    api.store.seed_part(other, 0)
    job_files(api, job_id)
    kept = [p for p in job_files(api, other) if p.startswith(f"jobs/{other}")]
    r = await api.client.delete(f"/jobs/{job_id}")
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert api.leftovers() == kept  # this job's folder is gone, the other job's is not
    assert list(api.store.docs) == [other]
    assert [p["job_id"] for p in api.store.parts.values()] == [other]
    gone = await api.client.get(f"/jobs/{job_id}")
    await problem_of(api, gone, 404, "job-not-found")
    again = await api.client.delete(f"/jobs/{job_id}")
    await problem_of(api, again, 404, "job-not-found", detail=f"job {job_id} not found")


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
async def test_delete_an_unfinished_job_is_a_conflict(api: Api, status: JobStatus) -> None:
    job_id = "b" * 22
    api.store.seed(job_id, status)
    api.store.seed_part(job_id, 0, status)
    files = job_files(api, job_id)
    r = await api.client.delete(f"/jobs/{job_id}")
    detail = f"job is {status}; cancel it first, then delete it"
    await problem_of(api, r, 409, "job-state-conflict", detail=detail)
    assert api.leftovers() == files
    assert list(api.store.docs) == [job_id] and len(api.store.parts) == 1
    assert api.store.calls["delete_job"] == 0


async def test_delete_unknown_job(api: Api) -> None:
    r = await api.client.delete(f"/jobs/{UNKNOWN_ID}")
    await problem_of(api, r, 404, "job-not-found", detail=f"job {UNKNOWN_ID} not found")
    assert api.store.calls["delete_job"] == 0


async def test_delete_keeps_the_users_source(api: Api) -> None:
    (api.root / "raw").mkdir()
    (api.root / "raw" / "products.csv").write_bytes(CSV)
    r = await api.client.post("/jobs/clean", json={"source": "raw/products.csv"})
    job_id = job_id_of(r)
    assert (await api.client.post(f"/jobs/{job_id}/cancel")).json()["status"] == "cancelled"
    assert (await api.client.delete(f"/jobs/{job_id}")).status_code == 204
    assert (api.root / "raw" / "products.csv").read_bytes() == CSV
    assert api.store.docs == {}


# ------------------------------------------------------------------ problem kinds
async def test_problem_kinds_are_listed_and_resolve(api: Api) -> None:
    r = await api.client.get("/problems")
    assert r.status_code == 200
    listed = r.json()
    assert {k["type"]: k["status"] for k in listed} == {
        f"/problems/{slug}": status for slug, status in PROBLEM_KINDS.items()
    }
    for kind in listed:
        one = await api.client.get(kind["type"])
        assert one.status_code == 200 and one.json() == kind
        assert kind["title"]
