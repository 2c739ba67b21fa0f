"""Any malformed query parameter, path parameter, header or body gets a 4xx that names it.

Never a 5xx, and never an exception out of the app (the in-process transport re-raises
them: a server would log it, and answer 500 if nothing was sent yet). The routes and
their parameters are read from the OpenAPI document, so a new parameter is covered
without a new test; the bodies are the media types `POST /jobs/clean` documents.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

from src.api.deps import get_files, get_store
from src.api.main import create_app
from src.api.routes import health
from src.core import broker
from src.core.config import Settings
from src.core.storage import LocalStorage
from src.jobs.model import JobStatus
from tests.unit.conftest import (
    API_KEY,
    CSV,
    UNKNOWN_ID,
    Api,
    FakeStore,
    locs,
    openapi_document,
    operations,
    problem_of,
)

pytestmark = pytest.mark.anyio

# Query values as they go on the wire (already percent-encoded).
VALUES: dict[str, str] = {
    "empty": "",
    "10k-chars": "x" * 10_000,
    "not-utf8": "%FF%FE",
    "bad-utf8": "%C3%28",
    "nul": "%00",
    "abc": "abc",
    "minus-one": "-1",
    "1e309": "1e309",
    "nan": "NaN",
    "10**30": str(10**30),
    "nosql": quote('{"$gt": ""}', safe=""),
}
PATH_VALUES: dict[str, str] = {**VALUES, "dot-dot": "..%2F..", "slash-dot-dot": "..%2F..%2Fetc"}
# A value each path parameter accepts, for the parameters a test does not spoil.
GOOD_PATH = {"job_id": UNKNOWN_ID, "slug": "not-found"}
# Kinds that name what they refuse by themselves: no such job (or path); a body type,
# a multipart body without its boundary, or the body read as the type says (JSON that
# is not JSON); an upload too large.
NAMING_KINDS = {
    "path": {"/problems/job-not-found", "/problems/not-found"},
    "header:content-type": {
        "/problems/unsupported-media-type",
        "/problems/invalid-request",
        "/problems/validation-failed",
    },
    "header:content-length": {"/problems/upload-too-large"},
}
SECURED = "APIKeyHeader"
KEY = {"X-API-Key": API_KEY}
UPLOAD = {"files": {"file": ("p.csv", CSV)}}


def parameters(where: str) -> list[tuple[str, str, str]]:
    """(method, path, name) of every parameter `in` where, from the OpenAPI document."""
    return [
        (method, path, param["name"])
        for method, path, op in operations()
        for param in op.get("parameters", [])
        if param["in"] == where
    ]


def secured() -> list[tuple[str, str]]:
    return [(m, p) for m, p, op in operations() if {SECURED: []} in op.get("security", [])]


def with_body() -> list[tuple[str, str, str]]:
    return [
        (method, path, media)
        for method, path, op in operations()
        for media in op.get("requestBody", {}).get("content", {})
    ]


def url_of(path: str, **values: str) -> str:
    return path.format(**{**GOOD_PATH, **values})


async def send(api: Api, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return await api.client.request(method, url, **kwargs)
    except Exception as exc:  # raised out of the app, past every handler
        pytest.fail(f"{method} {url[:120]}: the app raised {type(exc).__name__}: {exc}")


def names(body: dict[str, Any], name: str) -> bool:
    """Whether a problem document names `name`: in its detail or one of its `errors`."""
    name = name.lower()
    in_locs = any(name in [str(p).lower() for p in loc] for loc in locs(body))
    return in_locs or name in body["detail"].lower()


async def refused(api: Api, r: httpx.Response, what: str, name: str | None) -> dict[str, Any]:
    """`r` is a 4xx problem document naming `name` (or of a kind that names it)."""
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    body = await problem_of(api, r, r.status_code, instance=r.json().get("instance"))
    if name is not None:
        kinds = NAMING_KINDS.get(what.split(" ")[0], set())
        assert body["type"] in kinds or names(body, name), f"{what}: does not name {name}: {body}"
    return body


@pytest.fixture
def seeded(make_api: Callable[..., Api], monkeypatch: pytest.MonkeyPatch) -> Api:
    """An app with keys, and one finished job (so that a valid `wait` answers at once)."""

    async def redis_ok(url: str, timeout: float) -> str:
        return "ok"

    monkeypatch.setattr(health, "_check_redis", redis_ok)  # /ready: ready, not 503
    api = make_api(api_keys=API_KEY)
    api.store.seed(UNKNOWN_ID, JobStatus.SUCCEEDED)
    return api


# ------------------------------------------------------------------ query and path
@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize(("method", "path", "name"), parameters("query"))
async def test_malformed_query_parameter(
    seeded: Api, method: str, path: str, name: str, value: str
) -> None:
    r = await send(seeded, method, f"{url_of(path)}?{name}={value}", headers=KEY)
    if r.status_code < 300 and r.status_code != 204:
        return  # a value the parameter accepts (an empty cursor is no cursor)
    await refused(seeded, r, f"query {method} {path} {name}={value[:20]}", name)


@pytest.mark.parametrize("value", PATH_VALUES.values(), ids=PATH_VALUES.keys())
@pytest.mark.parametrize(("method", "path", "name"), parameters("path"))
async def test_malformed_path_parameter(
    seeded: Api, method: str, path: str, name: str, value: str
) -> None:
    url = url_of(path, **{name: value})
    r = await send(seeded, method, url, headers=KEY)
    if value == "" and r.status_code == 307:  # `/jobs/` is `/jobs`: a redirect there
        assert r.headers["location"].endswith(url.rstrip("/"))
        return
    await refused(seeded, r, f"path {method} {path} {name}={value[:20]}", name)
    assert UNKNOWN_ID in seeded.store.docs  # nothing deleted, whatever the id


# ------------------------------------------------------------------ headers
LATIN1 = b"\xe9\xff\xb2"  # 'éÿ²': not ASCII, not UTF-8
HEADER_VALUES: dict[str, str | bytes] = {"8KB": "k" * 8192, "latin-1": LATIN1, "empty": ""}
CONTENT_LENGTHS: dict[str, str | bytes] = {
    "abc": "abc",
    "minus-one": "-1",
    "1e309": "1e309",
    "10**30": str(10**30),
    "superscript-two": "²".encode(),
    "8K-digits": "1" * 8192,
    "empty": "",
}
CONTENT_TYPES: dict[str, str | bytes] = {
    **HEADER_VALUES,
    "no-boundary": "multipart/form-data",
    "empty-boundary": "multipart/form-data; boundary=",
    "8KB-boundary": "multipart/form-data; boundary=" + "b" * 8192,
    "json-utf16": "application/json; charset=utf-16",
    "nosql": '{"$gt": ""}',
}


def body_for(method: str, path: str) -> dict[str, Any]:
    """A body the operation accepts, so that only the header under test is wrong."""
    return UPLOAD if openapi_document()["paths"][path][method.lower()].get("requestBody") else {}


@pytest.mark.parametrize("value", HEADER_VALUES.values(), ids=HEADER_VALUES.keys())
@pytest.mark.parametrize(("method", "path"), secured())
async def test_malformed_api_key(seeded: Api, method: str, path: str, value: str | bytes) -> None:
    r = await send(
        seeded, method, url_of(path), headers={"X-API-Key": value}, **body_for(method, path)
    )
    body = await refused(seeded, r, f"header {method} {path} X-API-Key", "X-API-Key")
    assert body["type"] == "/problems/unauthorized"


@pytest.mark.parametrize("value", HEADER_VALUES.values(), ids=HEADER_VALUES.keys())
@pytest.mark.parametrize(("method", "path", "name"), parameters("header"))
async def test_malformed_header_parameter(
    seeded: Api, method: str, path: str, name: str, value: str | bytes
) -> None:
    headers = {**KEY, name: value}
    r = await send(seeded, method, url_of(path), headers=headers, **body_for(method, path))
    if r.status_code < 300:
        return  # a value the header accepts (an Idempotency-Key may be any text)
    await refused(seeded, r, f"header {method} {path} {name}", name)


@pytest.mark.parametrize("value", CONTENT_TYPES.values(), ids=CONTENT_TYPES.keys())
@pytest.mark.parametrize(("method", "path"), sorted({(m, p) for m, p, _ in with_body()}))
async def test_malformed_content_type(
    seeded: Api, method: str, path: str, value: str | bytes
) -> None:
    headers = {**KEY, "content-type": value}  # in place of the upload's own
    r = await send(seeded, method, url_of(path), headers=headers, **UPLOAD)
    if value == "multipart/form-data; boundary=" and r.status_code == 202:
        return  # python-multipart finds the parts without the boundary: the file is intact
    await refused(seeded, r, f"header:content-type {method} {path}", "content-type")
    assert seeded.leftovers() == [] and seeded.sent == []


@pytest.mark.parametrize("value", CONTENT_LENGTHS.values(), ids=CONTENT_LENGTHS.keys())
@pytest.mark.parametrize("media", ["multipart/form-data", "application/json"])
async def test_malformed_content_length(seeded: Api, media: str, value: str | bytes) -> None:
    assert ("POST", "/jobs/clean", media) in with_body()
    kwargs: dict[str, Any] = UPLOAD if media.startswith("multipart") else {"json": {"source": "x"}}
    headers = {**KEY, "content-length": value}  # in place of the body's own
    r = await send(seeded, "POST", "/jobs/clean", headers=headers, **kwargs)
    if media == "application/json":  # the body is read to its end, whatever the header says
        await refused(seeded, r, "header:content-length json", None)
    else:
        await refused(seeded, r, "header:content-length multipart", "content-length")
    assert seeded.leftovers() == [] and seeded.sent == []


async def test_malformed_content_length_without_a_body(seeded: Api) -> None:
    """A route that reads no body ignores Content-Length; it must not fail on it either."""
    failed = []
    for method, path, _ in operations():
        try:
            r = await seeded.client.request(
                method, url_of(path), headers={**KEY, "content-length": "abc"}
            )
        except Exception as exc:  # raised out of the app, past every handler
            failed.append(f"{method} {path}: {type(exc).__name__}: {exc}")
        else:
            if r.status_code >= 500:
                failed.append(f"{method} {path}: {r.status_code} {r.text[:200]}")
    assert failed == []


# ------------------------------------------------------------------ bodies
def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> bytes:
    """A multipart body of (name, filename or None, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


FILE = ("file", "p.csv", CSV)
MULTIPART = "multipart/form-data; boundary=b0undary"
JSON = "application/json"

# (content type, body, what the problem must name: None for the body as a whole)
BODIES: dict[str, tuple[str, bytes, str | None]] = {
    "json-not-utf8": (JSON, b'\xff\xfe{"source": "x.csv"}', "body"),
    "json-latin1-string": (JSON, b'{"source": "\xe9.csv"}', "body"),
    "json-array": (JSON, b"[]", "body"),
    "json-string": (JSON, b'"raw/x.csv"', "body"),
    "json-number": (JSON, b"1e309", "body"),
    "json-null": (JSON, b"null", "body"),
    "json-empty": (JSON, b"", "body"),
    "json-nested-10k-open": (JSON, b"[" * 10_000, "body"),
    "json-nested-10k": (JSON, b"[" * 10_000 + b"]" * 10_000, "body"),
    "json-nested-10k-object": (JSON, b'{"source":' + b'{"a":' * 10_000, "body"),
    "json-source-nosql": (JSON, b'{"source": {"$gt": ""}}', "source"),
    "json-source-10k": (JSON, b'{"source": "' + b"a" * 10_000 + b'"}', "source"),
    "json-source-nul": (JSON, b'{"source": "raw/\\u0000x.csv"}', "source"),
    "json-source-long-name": (JSON, b'{"source": "' + b"a" * 1000 + b'.csv"}', "source"),
    "json-source-number": (JSON, b'{"source": 1e309}', "source"),
    "json-options-text": (JSON, b'{"source": "x.csv", "options": "{\\"$gt\\": 1}"}', "options"),
    "json-options-huge": (
        JSON,
        b'{"source": "x.csv", "options": {"chunk_rows": ' + str(10**30).encode() + b"}}",
        "chunk_rows",
    ),
    "json-options-nan": (JSON, b'{"source": "x.csv", "options": {"min_length": NaN}}', "body"),
    "json-callback-10k": (
        JSON,
        b'{"source": "x.csv", "callback_url": "http://' + b"a" * 10_000 + b'.org"}',
        "callback_url",
    ),
    "multipart-broken-boundary": (
        "multipart/form-data; boundary=other",
        multipart(FILE),
        None,
    ),
    "multipart-truncated": (MULTIPART, multipart(FILE)[:60], None),
    "multipart-no-parts": (MULTIPART, b"--b0undary--\r\n", "file"),
    "multipart-empty": (MULTIPART, b"", "file"),
    "multipart-file-as-text": (MULTIPART, multipart(("file", None, CSV)), "file"),
    "multipart-file-twice": (MULTIPART, multipart(FILE, FILE), "file"),
    "multipart-options-as-file": (
        MULTIPART,
        multipart(FILE, ("options", "o.json", b'{"lowercase": true}')),
        "options",
    ),
    "multipart-output-format-twice": (
        MULTIPART,
        multipart(FILE, ("output_format", None, b"csv"), ("output_format", None, b"parquet")),
        "output_format",
    ),
    "multipart-output-format-not-utf8": (
        MULTIPART,
        multipart(FILE, ("output_format", None, b"\xff\xfe")),
        "output_format",
    ),
    "multipart-options-not-utf8": (
        MULTIPART,
        multipart(FILE, ("options", None, b"\xff\xfe")),
        "options",
    ),
    "multipart-options-nested-10k": (
        MULTIPART,
        multipart(FILE, ("options", None, b"[" * 10_000)),
        "options",
    ),
    "multipart-options-array": (MULTIPART, multipart(FILE, ("options", None, b"[]")), "options"),
    "multipart-callback-10k": (
        MULTIPART,
        multipart(FILE, ("callback_url", None, b"http://" + b"a" * 10_000 + b".org")),
        "callback_url",
    ),
    "multipart-20-fields": (
        MULTIPART,
        multipart(FILE, *[(f"f{i}", None, b"v") for i in range(20)]),
        None,
    ),
}


def test_every_documented_body_kind_is_tried() -> None:
    documented = {media for _, _, media in with_body()}
    tried = {content_type.split(";")[0] for content_type, _, _ in BODIES.values()}
    assert documented == tried


@pytest.mark.parametrize(("content_type", "content", "name"), BODIES.values(), ids=BODIES.keys())
async def test_malformed_body(
    seeded: Api, content_type: str, content: bytes, name: str | None
) -> None:
    (seeded.root / "x.csv").write_bytes(CSV)  # the one valid source
    headers = {**KEY, "content-type": content_type}
    r = await send(seeded, "POST", "/jobs/clean", content=content, headers=headers)
    await refused(seeded, r, f"body {content_type} {content[:40]!r}", name)
    assert seeded.leftovers() == [] and seeded.sent == []
    assert list(seeded.store.docs) == [UNKNOWN_ID]


class Body:
    """A request body of `megabytes` MB after `head`, sent in chunks without Content-Length;
    `sent` counts the bytes the app has pulled so far."""

    def __init__(self, head: bytes, megabytes: int) -> None:
        self.head, self.megabytes, self.sent = head, megabytes, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        for _ in range(self.megabytes):
            self.sent += 1 << 20
            yield b"x" * (1 << 20)
        yield b"\r\n--b0undary--\r\n"


@pytest.mark.parametrize(
    ("content_type", "head"),
    [
        (
            MULTIPART,
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="p.csv"\r\n\r\n',
        ),
        (JSON, b'{"source": "'),
    ],
    ids=["multipart", "json"],
)
async def test_oversized_body_without_content_length_is_not_read_to_its_end(
    make_api: Callable[..., Api], content_type: str, head: bytes
) -> None:
    """40 MB sent chunked to an app taking 1 MB uploads: refused before the app holds it all."""
    api = make_api(max_upload_mb=1)
    body = Body(head, 40)
    r = await send(api, "POST", "/jobs/clean", content=body, headers={"content-type": content_type})
    assert "content-length" not in r.request.headers
    await refused(api, r, f"body {content_type} 40 MB", None)
    assert body.sent <= 4 << 20, f"the app read {body.sent >> 20} MB before refusing"
    assert api.leftovers() == [] and api.store.docs == {}


# ------------------------------------------------------------------ schemathesis
FUZZED_ROOT = tempfile.TemporaryDirectory(prefix="schemathesis-")  # removed at exit


def _fuzzed_app() -> Any:
    """The app schemathesis drives (through Starlette's test client): keys on, no lifespan."""
    root = Path(FUZZED_ROOT.name)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=root,
        api_keys=API_KEY,
        rate_limit_per_minute=0,
        storage_url="",
        docs_enabled=True,
    )
    app = create_app(settings)

    @contextlib.asynccontextmanager
    async def no_services(app: Any) -> AsyncIterator[None]:
        yield  # the real lifespan connects to MongoDB and Redis

    app.router.lifespan_context = no_services
    store = FakeStore()
    app.dependency_overrides[get_store] = lambda: store
    app.dependency_overrides[get_files] = lambda: LocalStorage(root)
    return app


FUZZED = schemathesis.openapi.from_asgi("/openapi.json", _fuzzed_app())
# Inputs the schema cannot describe whole, so that schema-valid data may be refused
# (the check that valid data is accepted is left out for these paths): an upload's
# type is known by its file name's suffix (a generated `file.png` is a 415), a
# cursor is a token the API made (any other string of 64 characters is a 400).
OPAQUE = {"/jobs/clean", "/jobs"}


@pytest.fixture
def services_faked(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    async def redis_ok(url: str, timeout: float) -> str:
        return "ok"

    monkeypatch.setattr(health, "_check_redis", redis_ok)
    monkeypatch.setattr(broker, "send_clean", lambda job_id: None)


@FUZZED.parametrize()
@hypothesis.settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_schemathesis(case: Any, services_faked: None) -> None:
    """Generated requests, valid and not, to every operation; every answer as documented."""
    excluded = [positive_data_acceptance] if case.operation.path in OPAQUE else []
    case.call_and_validate(headers=KEY, excluded_checks=excluded)
