"""The OpenAPI document: valid, complete, and true to what the running app answers.

Every error response is a problem document (`application/problem+json`, the `Problem`
schema, examples); the job routes document 401/422/429/500/503 too; every status an
operation documents is one an in-process request makes it answer (`RECIPES`), and
every status a recipe produces is documented.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from pymongo.errors import PyMongoError

from src.api.routes import health
from src.jobs.model import JobStatus
from tests.unit.conftest import (
    API_KEY,
    CSV,
    PROBLEM,
    UNKNOWN_ID,
    Api,
    FailingStore,
    FakeRedis,
    locs,
    openapi_document,
    operations,
    problem_of,
)

OPERATION_IDS = {
    "submitCleaningJob",
    "listJobs",
    "getJob",
    "getJobResult",
    "cancelJob",
    "streamJobEvents",
    "deleteJob",
    "getHealth",
    "getReadiness",
    "listProblemKinds",
    "getProblemKind",
}
JOB_ROUTE_ERRORS = {"401", "429", "500", "503"}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi_document()


def walk(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    """Every (JSON pointer, value) under `node`."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"external $ref {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"$ref {ref} does not resolve"
        node = node[part]
    return node


def deref(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = resolve(doc, schema["$ref"])
    return schema


def error_responses() -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        (op["operationId"], method, status, response)
        for method, _, op in operations()
        for status, response in op["responses"].items()
        if int(status) >= 400
    ]


# ------------------------------------------------------------------ the document
def test_document_validates(doc: dict[str, Any]) -> None:
    validate(doc)  # type: ignore[arg-type]
    assert doc["openapi"].startswith("3.1")


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = [(where, value) for where, value in walk(doc) if where.endswith("/$ref")]
    assert len(refs) > 20
    for where, ref in refs:
        target = resolve(doc, ref)
        assert isinstance(target, dict) and target, f"{where}: {ref} is empty"


def test_operations_have_ids_and_tags(doc: dict[str, Any]) -> None:
    ids = [op.get("operationId") for _, _, op in operations()]
    assert sorted(ids) == sorted(OPERATION_IDS)  # each once
    for method, path, op in operations():
        assert op.get("tags"), f"{method} {path} has no tags"
        assert op.get("summary"), f"{method} {path} has no summary"
    declared = {tag["name"] for tag in doc.get("tags", [])}
    assert {tag for _, _, op in operations() for tag in op["tags"]} <= declared


@pytest.mark.parametrize(
    ("method", "path"), [(m, p) for m, p, op in operations() if "jobs" in op["tags"]]
)
def test_job_routes_document_common_errors(method: str, path: str) -> None:
    """401, 429, 500, 503; and 422 where a query, a header or a body can fail validation."""
    op = openapi_document()["paths"][path][method.lower()]
    validated = op.get("requestBody") or any(
        p["in"] in ("query", "header") for p in op.get("parameters", [])
    )
    expected = JOB_ROUTE_ERRORS | ({"422"} if validated else set())
    assert set(op["responses"]) >= expected, (method, path, sorted(op["responses"]))
    for status in ("429", "503"):
        assert "Retry-After" in op["responses"][status].get("headers", {}), (method, path, status)


@pytest.mark.parametrize(
    ("operation", "status", "response"),
    [(op_id, status, response) for op_id, _, status, response in error_responses()],
    ids=[f"{op_id}-{status}" for op_id, _, status, _ in error_responses()],
)
def test_error_responses_are_problem_documents(
    operation: str, status: str, response: dict[str, Any]
) -> None:
    content = response.get("content", {})
    assert list(content) == [PROBLEM], f"{operation} {status}: {list(content)}"
    media = content[PROBLEM]
    assert media["schema"] == PROBLEM_REF
    examples = [e["value"] for e in media.get("examples", {}).values()]
    examples += [media["example"]] if "example" in media else []
    assert examples, f"{operation} {status} has no example"
    for example in examples:
        assert example["status"] == int(status), example
        assert example["type"].startswith("/problems/") and example["title"], example
        assert example["detail"], example


@pytest.mark.anyio
async def test_error_examples_are_kinds_the_api_lists(api: Api) -> None:
    kinds = {k["type"]: k for k in (await api.client.get("/problems")).json()}
    for operation, _, status, response in error_responses():
        for example in response.get("content", {}).get(PROBLEM, {}).get("examples", {}).values():
            value = example["value"]
            kind = kinds.get(value["type"])
            assert kind is not None, f"{operation} {status}: {value['type']} is not listed"
            assert (kind["title"], kind["status"]) == (value["title"], value["status"]), value


def test_no_fastapi_validation_error_schema(doc: dict[str, Any]) -> None:
    refs = {value for where, value in walk(doc) if where.endswith("/$ref")}
    assert not {r for r in refs if r.endswith(("/HTTPValidationError", "/ValidationError"))}
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_problem_schema(doc: dict[str, Any]) -> None:
    problem = deref(doc, PROBLEM_REF)
    assert set(problem["required"]) >= {"title", "status", "detail"}
    assert set(problem["properties"]) == {"type", "title", "status", "detail", "instance", "errors"}


def test_submit_has_both_bodies(doc: dict[str, Any]) -> None:
    body = doc["paths"]["/jobs/clean"]["post"]["requestBody"]
    assert body["required"] is True
    assert body["content"] == {
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/UploadRequest"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/SourceRequest"}},
    }
    upload = deref(doc, body["content"]["multipart/form-data"]["schema"])
    assert upload["required"] == ["file"]
    assert upload["properties"]["file"]["format"] == "binary"
    assert set(upload["properties"]) == {"file", "options", "output_format", "callback_url"}
    source = deref(doc, body["content"]["application/json"]["schema"])
    assert source["required"] == ["source"]
    assert source.get("additionalProperties") is False
    assert deref(doc, source["properties"]["options"]) == deref(
        doc, {"$ref": "#/components/schemas/CleaningOptions"}
    )


def _enum(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The enum of a property, through a `$ref` and an `anyOf [X, null]`."""
    if "anyOf" in schema:
        kinds = [s for s in schema["anyOf"] if s.get("type") != "null"]
        assert len(kinds) == 1 and len(schema["anyOf"]) == 2, schema
        schema = kinds[0]
    return deref(doc, schema)["enum"]


def test_job_schema_is_typed(doc: dict[str, Any]) -> None:
    job = doc["components"]["schemas"]["Job"]["properties"]
    assert _enum(doc, job["status"]) == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert _enum(doc, job["output_format"]) == ["csv", "parquet"]
    assert _enum(doc, job["callback_status"]) == ["retrying", "delivered", "failed"]
    assert job["options"] == {"$ref": "#/components/schemas/CleaningOptions"}
    report = [s for s in job["report"]["anyOf"] if s.get("type") != "null"]
    assert report == [{"$ref": "#/components/schemas/CleaningReport"}]


# ------------------------------------------------------------------ documented = produced
Recipe = Callable[[Callable[..., Api]], Awaitable[httpx.Response]]
RECIPES: dict[tuple[str, int], Recipe] = {}

# A request of each job operation, answered without a key, a budget or a store problem.
JOB_CALLS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "submitCleaningJob": ("POST", "/jobs/clean", {"files": {"file": ("p.csv", CSV)}}),
    "listJobs": ("GET", "/jobs", {}),
    "getJob": ("GET", f"/jobs/{UNKNOWN_ID}", {}),
    "deleteJob": ("DELETE", f"/jobs/{UNKNOWN_ID}", {}),
    "getJobResult": ("GET", f"/jobs/{UNKNOWN_ID}/result", {}),
    "cancelJob": ("POST", f"/jobs/{UNKNOWN_ID}/cancel", {}),
    "streamJobEvents": ("GET", f"/jobs/{UNKNOWN_ID}/events", {}),
}


def recipe(operation: str, status: int) -> Callable[[Recipe], Recipe]:
    def register(make: Recipe) -> Recipe:
        RECIPES[operation, status] = make
        return make

    return register


def _common(operation: str, method: str, path: str, kwargs: dict[str, Any]) -> None:
    async def unauthorized(make_api: Callable[..., Api]) -> httpx.Response:
        return await make_api(api_keys=API_KEY).client.request(method, path, **kwargs)

    async def rate_limited(make_api: Callable[..., Api]) -> httpx.Response:
        api = make_api(
            rate_limit_per_minute=1, read_rate_limit_per_minute=1, redis=FakeRedis(already=1)
        )
        return await api.client.request(method, path, **kwargs)

    async def internal(make_api: Callable[..., Api]) -> httpx.Response:
        api = make_api(store=FailingStore(RuntimeError("boom")), raise_app_exceptions=False)
        return await api.client.request(method, path, **kwargs)

    async def unavailable(make_api: Callable[..., Api]) -> httpx.Response:
        api = make_api(store=FailingStore(PyMongoError("down")))
        return await api.client.request(method, path, **kwargs)

    for status, make in [(401, unauthorized), (429, rate_limited), (500, internal)]:
        recipe(operation, status)(make)
    recipe(operation, 503)(unavailable)


for _operation, (_method, _path, _kwargs) in JOB_CALLS.items():
    _common(_operation, _method, _path, _kwargs)
    if _operation not in {"submitCleaningJob", "listJobs"}:

        @recipe(_operation, 404)
        async def _job_not_found(
            make_api: Callable[..., Api], method: str = _method, path: str = _path
        ) -> httpx.Response:
            return await make_api().client.request(method, path)


@recipe("submitCleaningJob", 400)
async def _no_boundary(make_api: Callable[..., Api]) -> httpx.Response:
    headers = {"content-type": "multipart/form-data"}
    return await make_api().client.post("/jobs/clean", content=b"--x\r\n", headers=headers)


@recipe("submitCleaningJob", 404)
async def _source_not_found(make_api: Callable[..., Api]) -> httpx.Response:
    return await make_api().client.post("/jobs/clean", json={"source": "raw/missing.csv"})


@recipe("submitCleaningJob", 409)
async def _idempotency_conflict(make_api: Callable[..., Api]) -> httpx.Response:
    api, key = make_api(), {"Idempotency-Key": "k"}
    first = await api.client.post("/jobs/clean", files={"file": ("p.csv", CSV)}, headers=key)
    assert first.status_code == 202
    return await api.client.post("/jobs/clean", files={"file": ("p.csv", CSV * 2)}, headers=key)


@recipe("submitCleaningJob", 413)
async def _too_large(make_api: Callable[..., Api]) -> httpx.Response:
    return await make_api(max_upload_mb=1).upload(content=CSV + b"x" * (3 << 20))


@recipe("submitCleaningJob", 415)
async def _not_a_body_kind(make_api: Callable[..., Api]) -> httpx.Response:
    headers = {"content-type": "text/plain"}
    return await make_api().client.post("/jobs/clean", content=b"x", headers=headers)


@recipe("submitCleaningJob", 422)
async def _bad_options(make_api: Callable[..., Api]) -> httpx.Response:
    return await make_api().upload(options='{"min_length": -1}')


@recipe("listJobs", 400)
async def _bad_cursor(make_api: Callable[..., Api]) -> httpx.Response:
    return await make_api().client.get("/jobs", params={"cursor": "garbage"})


@recipe("listJobs", 422)
async def _bad_limit(make_api: Callable[..., Api]) -> httpx.Response:
    return await make_api().client.get("/jobs", params={"limit": 0})


@recipe("getJob", 422)
async def _bad_wait(make_api: Callable[..., Api]) -> httpx.Response:
    return await make_api().client.get(f"/jobs/{UNKNOWN_ID}", params={"wait": 61})


async def _unfinished(make_api: Callable[..., Api], method: str, suffix: str) -> httpx.Response:
    api = make_api()
    api.store.seed(UNKNOWN_ID, JobStatus.RUNNING)
    return await api.client.request(method, f"/jobs/{UNKNOWN_ID}{suffix}")


@recipe("deleteJob", 409)
async def _delete_running(make_api: Callable[..., Api]) -> httpx.Response:
    return await _unfinished(make_api, "DELETE", "")


@recipe("getJobResult", 409)
async def _result_of_running(make_api: Callable[..., Api]) -> httpx.Response:
    return await _unfinished(make_api, "GET", "/result")


@recipe("getJobResult", 404)
async def _result_gone(make_api: Callable[..., Api]) -> httpx.Response:
    api = make_api()
    api.store.seed(UNKNOWN_ID, JobStatus.SUCCEEDED, result=f"jobs/{UNKNOWN_ID}/result.csv")
    return await api.client.get(f"/jobs/{UNKNOWN_ID}/result")


@recipe("cancelJob", 409)
async def _cancel_finished(make_api: Callable[..., Api]) -> httpx.Response:
    api = make_api()
    api.store.seed(UNKNOWN_ID, JobStatus.SUCCEEDED)
    return await api.client.post(f"/jobs/{UNKNOWN_ID}/cancel")


@recipe("getProblemKind", 404)
async def _unknown_kind(make_api: Callable[..., Api]) -> httpx.Response:
    return await make_api().client.get("/problems/no-such-kind")


@recipe("getReadiness", 503)
async def _not_ready(make_api: Callable[..., Api]) -> httpx.Response:
    async def redis_ok(url: str, timeout: float) -> str:
        return "ok"

    api = make_api(store=FailingStore(PyMongoError("down")))
    original, health._check_redis = health._check_redis, redis_ok  # type: ignore[assignment]
    try:
        return await api.client.get("/ready")
    finally:
        health._check_redis = original  # type: ignore[assignment]


def documented_errors() -> set[tuple[str, int]]:
    return {(op_id, int(status)) for op_id, _, status, _ in error_responses()}


def test_every_documented_error_has_a_recipe() -> None:
    """…and every status a recipe produces is documented: the two lists are one."""
    assert sorted(documented_errors() - set(RECIPES)) == [], "documented, never produced"
    assert sorted(set(RECIPES) - documented_errors()) == [], "produced, not documented"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("operation", "status"), sorted(RECIPES), ids=[f"{o}-{s}" for o, s in sorted(RECIPES)]
)
async def test_the_app_answers_each_documented_error(
    make_api: Callable[..., Api], operation: str, status: int
) -> None:
    r = await RECIPES[operation, status](make_api)
    api = make_api()  # a plain app, to resolve the problem's type
    body = await problem_of(api, r, status, extensions=operation == "getReadiness")
    if status == 422:  # what did not validate is named
        assert locs(body), body
