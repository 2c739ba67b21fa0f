"""The HTTP API in process, shared by test_api, test_openapi and test_malformed.

`create_app` builds the real app; its lifespan (MongoDB, Redis, broker warm-up) never
runs: httpx's `ASGITransport` sends HTTP requests only, no lifespan events. The job
store is an in-memory fake (`FakeStore`) with the return shapes of `AsyncJobStore` and
its cancel rules from `src.jobs.rules`; files go to a real `LocalStorage` in
`tmp_path`; the broker's `send_clean` is replaced by a recorder; the rate limit's
Redis is `FakeRedis`. Every outgoing socket connection is refused, so a test that
reached for Redis or MongoDB fails at once instead of hanging.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import socket
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import instrumentation
from pymongo.errors import DuplicateKeyError

from src.api.deps import get_files, get_store
from src.api.main import create_app
from src.core import broker
from src.core.config import Settings
from src.core.storage import LocalStorage
from src.jobs import rules
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc, PartDoc, new_job_doc, part_id

SAMPLE = Path(__file__).parents[1] / "fixtures" / "rakuten_sample.csv"
UNKNOWN_ID = "0" * 22
API_KEY = "test-key-1"
PROBLEM = "application/problem+json"


def sample_csv(rows: int = 5) -> bytes:
    """The header and the first `rows` rows of the real Rakuten sample, as CSV bytes."""
    with SAMPLE.open(encoding="utf-8", newline="") as fh:
        kept = [row for _, row in zip(range(rows + 1), csv.reader(fh), strict=False)]
    out = io.StringIO()
    csv.writer(out).writerows(kept)
    return out.getvalue().encode()


CSV = sample_csv()


# ------------------------------------------------------------------ fakes
class FakeStore:
    """In-memory `AsyncJobStore`: the methods the routes use, returning the stored dicts.

    Copies in and out (as a database would); a unique `_id` and a unique sparse
    `idempotency_key` (DuplicateKeyError, like the real indexes); `cancel` runs the
    filters and updates of `src.jobs.rules`, as the real store does. `parts` is the
    `job_parts` collection (`delete_job` removes a job's parts with it). `calls`
    counts the calls of each method; `get_many_calls` keeps the ids of each batch.
    """

    def __init__(self) -> None:
        self.docs: dict[str, JobDoc] = {}
        self.parts: dict[str, PartDoc] = {}
        self.calls: Counter[str] = Counter()
        self.get_many_calls: list[list[str]] = []

    async def ping(self) -> None:
        self.calls["ping"] += 1

    async def insert(self, doc: JobDoc) -> None:
        self.calls["insert"] += 1
        if doc["_id"] in self.docs:
            raise DuplicateKeyError(f"E11000 duplicate key: _id {doc['_id']}")
        key = doc.get("idempotency_key")
        if key is not None and any(d.get("idempotency_key") == key for d in self.docs.values()):
            raise DuplicateKeyError(f"E11000 duplicate key: idempotency_key {key}")
        self.docs[doc["_id"]] = copy.deepcopy(doc)

    async def get(self, job_id: str) -> JobDoc | None:
        self.calls["get"] += 1
        doc = self.docs.get(job_id)
        return copy.deepcopy(doc) if doc is not None else None

    async def get_many(self, job_ids: list[str]) -> list[JobDoc]:
        """Those of the jobs that exist, in one call (`find({"_id": {"$in": ids}})`)."""
        self.calls["get_many"] += 1
        self.get_many_calls.append(list(job_ids))
        return [copy.deepcopy(d) for d in self.docs.values() if d["_id"] in job_ids]

    async def get_by_idempotency_key(self, key: str) -> JobDoc | None:
        self.calls["get_by_idempotency_key"] += 1
        for doc in self.docs.values():
            if doc.get("idempotency_key") == key:
                return copy.deepcopy(doc)
        return None

    async def delete(self, job_id: str) -> None:
        self.calls["delete"] += 1
        self.docs.pop(job_id, None)

    async def delete_job(self, job_id: str) -> None:
        """The job's record and its parts' (no error when there is none)."""
        self.calls["delete_job"] += 1
        for key in [k for k, p in self.parts.items() if p["job_id"] == job_id]:
            del self.parts[key]
        self.docs.pop(job_id, None)

    async def list(
        self, status: JobStatus | None, limit: int, before_id: str | None, owner: str | None = None
    ) -> list[JobDoc]:
        self.calls["list"] += 1
        docs = sorted(self.docs.values(), key=lambda d: d["_id"], reverse=True)
        docs = [
            d
            for d in docs
            if (status is None or d["status"] == status)
            and (before_id is None or d["_id"] < before_id)
            and (owner is None or d.get("owner_hash") == owner)
        ]
        return [copy.deepcopy(d) for d in docs[:limit]]

    async def cancel(self, job_id: str) -> JobDoc | None:
        self.calls["cancel"] += 1
        now = time.time()
        doc = self._find_one_and_update(
            rules.cancel_queued(job_id),
            rules.finish_update(JobStatus.CANCELLED, now, error="cancelled by request"),
        )
        if doc is None:
            doc = self._find_one_and_update(
                rules.cancel_running(job_id), {"$set": {"cancel_requested": True}}
            )
        return doc

    def _find_one_and_update(self, query: dict[str, Any], update: dict[str, Any]) -> JobDoc | None:
        """Equality filters and `$set` only: anything else in rules fails loudly here."""
        assert set(update) == {"$set"}, update
        assert not any(isinstance(v, dict) for v in query.values()), query
        for doc in self.docs.values():
            if all(doc.get(k) == v for k, v in query.items()):
                doc.update(copy.deepcopy(update["$set"]))  # type: ignore[typeddict-item]
                return copy.deepcopy(doc)
        return None

    # test helpers
    def seed(self, job_id: str, status: JobStatus = JobStatus.QUEUED, **fields: Any) -> JobDoc:
        doc = new_job_doc(
            job_id=job_id,
            input_relpath=f"jobs/{job_id}/input.csv",
            input_name="products.csv",
            options={},
            output_format="csv",
            retention_hours=1,
        )
        doc.update(status=status, **fields)  # type: ignore[typeddict-item]
        self.docs[job_id] = doc
        return doc

    def seed_part(self, job_id: str, index: int, status: JobStatus = JobStatus.FAILED) -> PartDoc:
        now = time.time()
        part = PartDoc(
            _id=part_id(job_id, index),
            job_id=job_id,
            index=index,
            start=0,
            end=1,
            status=status,
            created_ts=now,
            attempts=1,
            expires_ts=now + 3600,
        )
        self.parts[part["_id"]] = part
        return part

    def finish(self, job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> None:
        """What a worker does when the job ends (for tests that wait on it)."""
        self.docs[job_id].update(status=status, finished_ts=time.time())


class FailingStore(FakeStore):
    """Every call the routes make raises `exc`."""

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    async def _raise(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc

    insert = get = get_many = get_by_idempotency_key = delete = delete_job = _raise  # type: ignore[assignment]
    list = cancel = ping = _raise  # type: ignore[assignment]


class FakeRedis:
    """What `src.api.ratelimit` uses of `redis.asyncio.Redis`: a MULTI of INCR and EXPIRE.

    `already` is how many requests every window has seen before the test's first.
    """

    def __init__(self, already: int = 0) -> None:
        self.counts: Counter[str] = Counter()
        self.already = already
        self.expires: dict[str, int] = {}

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.ops: list[tuple[str, str, int]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def incr(self, name: str) -> FakePipeline:
        self.ops.append(("incr", name, 0))
        return self

    def expire(self, name: str, seconds: int) -> FakePipeline:
        self.ops.append(("expire", name, seconds))
        return self

    async def execute(self) -> list[Any]:
        results: list[Any] = []
        for op, name, seconds in self.ops:
            if op == "incr":
                if name not in self.redis.counts:
                    self.redis.counts[name] = self.redis.already
                self.redis.counts[name] += 1
                results.append(self.redis.counts[name])
            else:
                self.redis.expires[name] = seconds
                results.append(True)
        self.ops = []
        return results


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Redis, no MongoDB, no broker: any outgoing connection raises instead of reaching one."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"unit test tried to open a connection: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    store: FakeStore
    root: Path
    redis: FakeRedis
    sent: list[str] = field(default_factory=list)

    def leftovers(self) -> list[str]:
        """Every file or folder under DATA_DIR/jobs (an empty `jobs/` folder is fine)."""
        jobs = self.root / "jobs"
        return sorted(p.relative_to(self.root).as_posix() for p in jobs.rglob("*"))

    async def upload(
        self, content: bytes = CSV, name: str = "products.csv", **form: str
    ) -> httpx.Response:
        return await self.client.post("/jobs/clean", files={"file": (name, content)}, data=form)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def make_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> AsyncIterator[Callable[..., Api]]:
    clients: list[httpx.AsyncClient] = []

    def make(
        store: FakeStore | None = None,
        send: Callable[[str], None] | None = None,
        raise_app_exceptions: bool = True,
        redis: FakeRedis | None = None,
        **overrides: Any,
    ) -> Api:
        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "api_keys": "",
            "rate_limit_per_minute": 0,
            "storage_url": "",
            "docs_enabled": True,
            **overrides,
        }
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        # The HTTP metrics of each app in a registry of its own: in the shared one, only
        # the first app of the process would get them (the instrumentator skips metrics
        # already registered), and each app must run the middleware production runs.
        monkeypatch.setattr(instrumentation, "REGISTRY", CollectorRegistry())
        app = create_app(settings)
        # raise_app_exceptions=False: the 500 answer is checked, not the exception re-raised.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        api = Api(app, client, store or FakeStore(), tmp_path, redis or FakeRedis())
        app.state.ratelimit_redis = api.redis
        app.dependency_overrides[get_store] = lambda: api.store
        app.dependency_overrides[get_files] = lambda: LocalStorage(tmp_path)
        monkeypatch.setattr(broker, "send_clean", send or api.sent.append)
        return api

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document (generated once: tests parametrize over its operations)."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tempfile.gettempdir(),
        api_keys="",
        rate_limit_per_minute=0,
        storage_url="",
        docs_enabled=True,
    )
    return copy.deepcopy(create_app(settings).openapi())


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation the document describes."""
    return [
        (method.upper(), path, operation)
        for path, item in openapi_document()["paths"].items()
        for method, operation in item.items()
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    ]


# ------------------------------------------------------------------ problem documents
async def problem_of(
    api: Api,
    r: httpx.Response,
    status: int,
    slug: str | None = None,
    *,
    detail: str | None = None,
    instance: str | None = None,
    extensions: bool = False,
) -> dict[str, Any]:
    """The RFC 9457 document of `r`, checked: its media type, members and `status`.

    Its `type` must resolve through `GET /problems/{slug}` to the same title and
    status, so every problem a test meets is one the API documents. `extensions`:
    members beyond RFC 9457's (and `errors`) are allowed.
    """
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    body = r.json()
    if not extensions:  # RFC 9457 extension members only where a test expects them
        assert set(body) <= {"type", "title", "status", "detail", "instance", "errors"}, body
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert "Traceback" not in r.text
    if slug is not None:
        assert body["type"] == f"/problems/{slug}", body
    if detail is not None:
        assert body["detail"] == detail, body
    assert body["instance"] == (instance if instance is not None else r.request.url.path), body
    if "errors" in body:
        assert body["errors"], body  # absent, never empty
        for error in body["errors"]:
            assert set(error) == {"loc", "msg", "type"}, error
            assert isinstance(error["loc"], list) and error["loc"], error
    assert body["type"].startswith("/problems/"), body
    kind = await api.client.get(body["type"])
    assert kind.status_code == 200, f"{body['type']} does not resolve: {kind.text}"
    assert kind.json() == {"type": body["type"], "title": body["title"], "status": status}
    return body


def locs(body: dict[str, Any]) -> list[list[str | int]]:
    return [e["loc"] for e in body.get("errors", [])]
