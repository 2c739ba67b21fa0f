"""The HTTP API in process: routing, validation and error mapping, with no service running.

`create_app` builds the real app; its lifespan (MongoDB, Redis, broker warm-up) never
runs: httpx's `ASGITransport` sends HTTP requests only, no lifespan events. The job
store is an in-memory fake (`FakeStore`) with the return shapes of `AsyncJobStore` and
its cancel rules from `src.jobs.rules`; files go to a real `LocalStorage` in
`tmp_path`; the broker's `send_clean` is replaced by a recorder. Every outgoing socket
connection is refused, so a test that reached for Redis or MongoDB fails at once
instead of hanging.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo.errors import DuplicateKeyError, PyMongoError, ServerSelectionTimeoutError

from src.api.deps import get_files, get_store
from src.api.main import create_app
from src.core import broker
from src.core.config import Settings
from src.core.storage import LocalStorage
from src.jobs import rules
from src.jobs.model import JobStatus
from src.jobs.records import JobDoc, new_job_doc

pytestmark = pytest.mark.anyio

SAMPLE = Path(__file__).parents[1] / "fixtures" / "rakuten_sample.csv"
UNKNOWN_ID = "0" * 22
API_KEY = "test-key-1"


def sample_csv(rows: int = 5) -> bytes:
    """The header and the first `rows` rows of the real Rakuten sample, as CSV bytes."""
    with SAMPLE.open(encoding="utf-8", newline="") as fh:
        kept = [row for _, row in zip(range(rows + 1), csv.reader(fh), strict=False)]
    out = io.StringIO()
    csv.writer(out).writerows(kept)
    return out.getvalue().encode()


CSV = sample_csv()


# ------------------------------------------------------------------ the fake store
class FakeStore:
    """In-memory `AsyncJobStore`: the methods the routes use, returning the stored dicts.

    Copies in and out (as a database would); a unique `_id` and a unique sparse
    `idempotency_key` (DuplicateKeyError, like the real indexes); `cancel` runs the
    filters and updates of `src.jobs.rules`, as the real store does.
    """

    def __init__(self) -> None:
        self.docs: dict[str, JobDoc] = {}

    async def insert(self, doc: JobDoc) -> None:
        if doc["_id"] in self.docs:
            raise DuplicateKeyError(f"E11000 duplicate key: _id {doc['_id']}")
        key = doc.get("idempotency_key")
        if key is not None and any(d.get("idempotency_key") == key for d in self.docs.values()):
            raise DuplicateKeyError(f"E11000 duplicate key: idempotency_key {key}")
        self.docs[doc["_id"]] = copy.deepcopy(doc)

    async def get(self, job_id: str) -> JobDoc | None:
        doc = self.docs.get(job_id)
        return copy.deepcopy(doc) if doc is not None else None

    async def get_by_idempotency_key(self, key: str) -> JobDoc | None:
        for doc in self.docs.values():
            if doc.get("idempotency_key") == key:
                return copy.deepcopy(doc)
        return None

    async def delete(self, job_id: str) -> None:
        self.docs.pop(job_id, None)

    async def list(
        self, status: JobStatus | None, limit: int, before_id: str | None
    ) -> list[JobDoc]:
        docs = sorted(self.docs.values(), key=lambda d: d["_id"], reverse=True)
        docs = [
            d
            for d in docs
            if (status is None or d["status"] == status)
            and (before_id is None or d["_id"] < before_id)
        ]
        return [copy.deepcopy(d) for d in docs[:limit]]

    async def cancel(self, job_id: str) -> JobDoc | None:
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


class FailingStore(FakeStore):
    """Every call the routes make raises `exc`."""

    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    async def _raise(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc

    insert = get = get_by_idempotency_key = delete = list = cancel = _raise  # type: ignore[assignment]


class RacingStore(FakeStore):
    """A concurrent twin with the same Idempotency-Key inserts between our lookup and insert."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get_by_idempotency_key(self, key: str) -> JobDoc | None:
        self.lookups += 1
        return None if self.lookups == 1 else await super().get_by_idempotency_key(key)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Api]]:
    clients: list[httpx.AsyncClient] = []

    def make(
        store: FakeStore | None = None,
        send: Callable[[str], None] | None = None,
        raise_app_exceptions: bool = True,
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
        app = create_app(settings)
        # raise_app_exceptions=False: the 500 answer is checked, not the exception re-raised.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        clients.append(client)
        api = Api(app, client, store or FakeStore(), tmp_path)
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


def job_id_of(response: httpx.Response) -> str:
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
    assert r.json()["id"] == job_id and r.json()["status"] == "queued"
    missing = await api.client.get(f"/jobs/{UNKNOWN_ID}")
    assert missing.status_code == 404
    assert missing.json() == {"detail": f"job {UNKNOWN_ID} not found"}


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
    ("query", "status", "names"),
    [
        ("cursor=garbage", 400, "invalid cursor"),
        ("cursor=" + "A" * 30, 400, "invalid cursor"),
        ("limit=0", 422, "limit"),
        ("limit=1000", 422, "limit"),
        ("limit=many", 422, "limit"),
        ("status=bogus", 422, "status"),
    ],
)
async def test_list_refuses_bad_query(api: Api, query: str, status: int, names: str) -> None:
    r = await api.client.get(f"/jobs?{query}")
    assert r.status_code == status, r.text
    assert names in r.json()["detail"]


async def test_result_before_success_is_a_conflict(api: Api) -> None:
    job_id = job_id_of(await api.upload())
    r = await api.client.get(f"/jobs/{job_id}/result")
    assert r.status_code == 409
    assert r.json()["detail"] == "job is queued; the result is available once it succeeded"
    assert (await api.client.get(f"/jobs/{UNKNOWN_ID}/result")).status_code == 404


async def test_result_download(api: Api) -> None:
    job_id = "1" * 22
    result = f"jobs/{job_id}/result.csv"
    api.store.seed(job_id, JobStatus.SUCCEEDED, result=result)
    r = await api.client.get(f"/jobs/{job_id}/result")
    assert r.status_code == 404
    assert r.json()["detail"] == f"result of job {job_id} is gone (expired or removed)"

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
    assert again.status_code == 409
    assert again.json()["detail"] == (
        "job is cancelled; only queued or running jobs can be cancelled"
    )
    missing = await api.client.post(f"/jobs/{UNKNOWN_ID}/cancel")
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"job {UNKNOWN_ID} not found"


async def test_cancel_running_asks_the_worker(api: Api) -> None:
    job_id = "2" * 22
    api.store.seed(job_id, JobStatus.RUNNING, worker="host:1")
    r = await api.client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True


async def test_events_of_unknown_job(api: Api) -> None:
    r = await api.client.get(f"/jobs/{UNKNOWN_ID}/events")
    assert r.status_code == 404
    assert r.json()["detail"] == f"job {UNKNOWN_ID} not found"


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("form", "filename", "status", "detail"),
    [
        ({}, "products.xlsx", 415, "unsupported file type '.xlsx'"),
        ({}, "products", 415, "unsupported file type '(none)'"),
        ({"options": "{not json"}, "products.csv", 422, "invalid options"),
        ({"options": '{"min_length": -1}'}, "products.csv", 422, "invalid options: min_length"),
        ({"options": '{"colour": "red"}'}, "products.csv", 422, "invalid options: colour"),
        ({"output_format": "xml"}, "products.csv", 422, "output_format must be"),
    ],
)
async def test_upload_refused(
    api: Api, form: dict[str, str], filename: str, status: int, detail: str
) -> None:
    r = await api.upload(name=filename, **form)
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(detail), r.json()
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


async def test_multipart_without_file(api: Api) -> None:
    r = await api.client.post("/jobs/clean", files={"options": (None, '{"lowercase": true}')})
    assert r.status_code == 422
    assert r.json()["detail"] == "multipart field 'file' is required (the CSV or Parquet file)"
    assert api.store.docs == {} and api.leftovers() == []


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"source": "/etc/passwd"}, 400, "source must be a relative path under DATA_DIR"),
        ({"source": "raw/../../secret.csv"}, 400, "source must not contain '..'"),
        ({"source": "raw\\products.csv"}, 400, "source must be a relative path"),
        ({"source": "raw/missing.csv"}, 404, "source not found under DATA_DIR: raw/missing.csv"),
        ({"source": "raw"}, 404, "source not found under DATA_DIR: raw"),
        ({"source": "raw/products.csv", "colour": 1}, 422, "invalid request: colour"),
        ({"options": {}}, 422, "invalid request: source"),
        ({"source": "raw/products.csv", "output_format": "xml"}, 422, "invalid request"),
        (
            {"source": "raw/products.csv", "options": {"chunk_rows": 0}},
            422,
            "invalid request: options.chunk_rows",
        ),
        (
            {"source": "raw/products.csv", "callback_url": "not a url"},
            422,
            "invalid request: callback_url",
        ),
    ],
)
async def test_source_refused(api: Api, body: dict[str, Any], status: int, detail: str) -> None:
    (api.root / "raw").mkdir()
    (api.root / "raw" / "products.csv").write_bytes(CSV)
    r = await api.client.post("/jobs/clean", json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(detail), r.json()
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


async def test_source_leaving_data_dir_through_a_link(api: Api, tmp_path_factory: Any) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.csv"
    outside.write_bytes(CSV)
    (api.root / "link.csv").symlink_to(outside)
    r = await api.client.post("/jobs/clean", json={"source": "link.csv"})
    assert r.status_code == 400
    assert "leaves DATA_DIR" in r.json()["detail"]
    assert api.store.docs == {}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "detail"),
    [
        ("text/plain", b"raw/products.csv", 415, "send multipart/form-data"),
        (None, b"", 415, "send multipart/form-data"),
        ("application/json", b"{not json", 422, "invalid request"),
    ],
)
async def test_body_kind_refused(
    api: Api, content_type: str | None, body: bytes, status: int, detail: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = await api.client.post("/jobs/clean", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(detail)
    assert api.store.docs == {} and api.leftovers() == []


@pytest.mark.parametrize("size_mb", [1.5, 3])  # read then refused; refused by Content-Length
async def test_upload_too_large(make_api: Callable[..., Api], size_mb: float) -> None:
    api = make_api(max_upload_mb=1)
    big = CSV + b"x" * int(size_mb * (1 << 20))
    r = await api.upload(content=big)
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == "upload exceeds MAX_UPLOAD_MB (1 MB)"
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
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == "Idempotency-Key already used with a different request"
    assert list(api.store.docs) == [job_id_of(first)] and api.sent == [job_id_of(first)]
    assert api.leftovers() == [f"jobs/{job_id_of(first)}", f"jobs/{job_id_of(first)}/input.csv"]


async def test_idempotency_key_race_lost_to_a_twin(make_api: Callable[..., Api]) -> None:
    api = make_api(store=RacingStore())
    first = await api.client.post(
        "/jobs/clean", files={"file": ("p.csv", CSV)}, headers={"Idempotency-Key": "k"}
    )
    assert first.status_code == 202
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
    assert r.status_code == 422
    assert "idempotency-key" in r.json()["detail"]
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
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.json() == {"detail": "broker (Redis) unavailable: job not created; retry later"}
    assert api.store.docs == {}
    assert api.leftovers() == []
    if kind == "source":  # the user's own file is never removed
        assert (api.root / "raw" / "products.csv").read_bytes() == CSV


async def test_store_down_on_submit(make_api: Callable[..., Api]) -> None:
    api = make_api(store=FailingStore(ServerSelectionTimeoutError("127.0.0.1:27017: refused")))
    r = await api.upload()
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.json() == {"detail": "job store (MongoDB) unavailable: job not created; retry later"}
    assert api.sent == [] and api.leftovers() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/jobs/{UNKNOWN_ID}"),
        ("GET", "/jobs"),
        ("GET", f"/jobs/{UNKNOWN_ID}/result"),
        ("POST", f"/jobs/{UNKNOWN_ID}/cancel"),
        ("GET", f"/jobs/{UNKNOWN_ID}/events"),
    ],
)
async def test_store_down_is_503(make_api: Callable[..., Api], method: str, path: str) -> None:
    api = make_api(store=FailingStore(PyMongoError("connection closed")))
    r = await api.client.request(method, path)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "5"
    assert r.json() == {"detail": "job store (MongoDB) unavailable; retry later"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/jobs/{UNKNOWN_ID}"),
        ("GET", "/jobs"),
        ("POST", f"/jobs/{UNKNOWN_ID}/cancel"),
        ("POST", "/jobs/clean"),
    ],
)
async def test_unexpected_error_is_500_without_traceback(
    make_api: Callable[..., Api], method: str, path: str
) -> None:
    api = make_api(
        store=FailingStore(RuntimeError("secret-internal-state")), raise_app_exceptions=False
    )
    files = {"file": ("p.csv", CSV)} if path == "/jobs/clean" else None
    r = await api.client.request(method, path, files=files)
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error (RuntimeError)"}
    assert "secret-internal-state" not in r.text and "Traceback" not in r.text
    # The upload of a job that was never recorded must not stay behind (no job, no file).
    assert api.leftovers() == []


# ------------------------------------------------------------------ API keys
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs"),
        ("GET", f"/jobs/{UNKNOWN_ID}"),
        ("GET", f"/jobs/{UNKNOWN_ID}/result"),
        ("GET", f"/jobs/{UNKNOWN_ID}/events"),
        ("POST", f"/jobs/{UNKNOWN_ID}/cancel"),
        ("POST", "/jobs/clean"),
    ],
)
@pytest.mark.parametrize("given", [None, "", "wrong-key", API_KEY + "x"])
async def test_api_key_required(
    make_api: Callable[..., Api], method: str, path: str, given: str | None
) -> None:
    api = make_api(api_keys=f"other-key, {API_KEY}")
    headers = {} if given is None else {"X-API-Key": given}
    files = {"file": ("p.csv", CSV)} if path == "/jobs/clean" else None
    r = await api.client.request(method, path, headers=headers, files=files)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "APIKey"
    assert r.json() == {"detail": "missing or invalid API key (header X-API-Key)"}
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


async def test_api_key_accepted(make_api: Callable[..., Api]) -> None:
    api = make_api(api_keys=f"other-key,{API_KEY}")
    key = {"X-API-Key": API_KEY}
    assert (await api.client.get("/health")).status_code == 200  # no key needed
    r = await api.client.post("/jobs/clean", files={"file": ("p.csv", CSV)}, headers=key)
    assert r.status_code == 202, r.text
    assert (await api.client.get(f"/jobs/{job_id_of(r)}", headers=key)).status_code == 200
    assert (await api.client.get("/jobs", headers={"X-API-Key": "other-key"})).status_code == 200
    assert (await api.client.post(f"/jobs/{job_id_of(r)}/cancel", headers=key)).status_code == 200


async def test_json_detail_on_unknown_route(api: Api) -> None:
    r = await api.client.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = await api.client.delete(f"/jobs/{UNKNOWN_ID}")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}


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
    r = await api.upload(callback_url="https://example.org/hook")
    assert r.status_code == 202, r.text
    assert r.json()["callback_url"] == "https://example.org/hook"


@pytest.mark.parametrize("url", ["not a url", "file:///etc/passwd"])
async def test_multipart_callback_url_is_validated_like_json(api: Api, url: str) -> None:
    r = await api.upload(callback_url=url)
    assert r.status_code == 422, r.text
    assert "callback_url" in r.json()["detail"]
    assert api.store.docs == {} and api.sent == [] and api.leftovers() == []


async def test_multipart_with_two_files(api: Api) -> None:
    files = [("file", ("p.csv", CSV)), ("file", ("q.csv", CSV))]
    r = await api.client.post("/jobs/clean", files=files)
    assert r.status_code == 400
    assert r.json() == {"detail": "Too many files. Maximum number of files is 1."}
    assert api.store.docs == {} and api.leftovers() == []
