"""Uploads read once, as they arrive: the file part streams to storage, nothing is left
when the request fails part-way (cut short, too large, refused, the client gone).

Bodies are sent as async generators, so a test can wait for a state of the app (the
input file appearing in storage) between two chunks instead of hoping for a timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from src.api.upload import MAX_TEXT_BYTES
from src.jobs.uploads import SPOOL_BYTES
from tests.unit.conftest import CSV, Api, locs, problem_of

pytestmark = pytest.mark.anyio

MULTIPART = "multipart/form-data; boundary=b0undary"
MB = 1 << 20
PIECE = 64 << 10


def head(name: str = "file", filename: str | None = "p.csv") -> bytes:
    """The start of a part, up to its data."""
    disposition = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else ""
    )
    return f"--b0undary\r\nContent-Disposition: {disposition}\r\n\r\n".encode()


def text(name: str, value: bytes) -> bytes:
    return head(name, None) + value + b"\r\n"


END = b"--b0undary--\r\n"


def big_csv(size: int) -> bytes:
    row = b"1,Chaise,<p>une chaise</p>\n"
    return b",designation,description\n" + row * (size // len(row))


class Body:
    """`parts` sent in order; a callable among them is awaited (a state to wait for) before
    the next chunk goes; `sent` counts the bytes the app has pulled."""

    def __init__(self, *parts: bytes | Callable[[], Any]) -> None:
        self.parts, self.sent = parts, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if callable(part):
                await part()
                continue
            for i in range(0, len(part), PIECE):  # as a server receives it: in pieces
                piece = part[i : i + PIECE]
                self.sent += len(piece)
                yield piece


async def post(api: Api, body: Body, **headers: str) -> Any:
    return await api.client.post(
        "/jobs/clean", content=body, headers={"content-type": MULTIPART, **headers}
    )


def stored_inputs(api: Api) -> list[str]:
    return [p for p in api.leftovers() if p.endswith("/input.csv")]


def until_stored(api: Api) -> Callable[[], Any]:
    """A body step: wait until the upload's first bytes are in storage (as they stream)."""

    async def wait() -> None:
        with anyio.fail_after(10):
            while not stored_inputs(api):
                await anyio.sleep(0.005)

    return wait


async def test_a_large_upload_streams_to_storage_before_the_body_ends(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(max_upload_mb=8)
    data = big_csv(3 * MB)
    body = Body(head(), data[: 2 * MB], until_stored(api), data[2 * MB :], b"\r\n", END)
    r = await post(api, body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert (api.root / "jobs" / job_id / "input.csv").read_bytes() == data
    assert api.sent == [job_id]


async def test_streamed_and_spooled_uploads_hash_the_same_bytes(api: Api) -> None:
    """The sha256 taken while streaming makes the Idempotency-Key replay: same bytes, same
    job; one byte changed, a conflict."""
    data = big_csv(SPOOL_BYTES + MB)
    for content in (CSV, data):
        key = {"Idempotency-Key": hashlib.sha256(content).hexdigest()}
        first = await post(api, Body(head(), content, b"\r\n", END), **key)
        again = await post(api, Body(head(), content, b"\r\n", END), **key)
        assert first.status_code == again.status_code == 202, first.text
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        other = await post(api, Body(head(), content[:-1] + b"!", b"\r\n", END), **key)
        await problem_of(api, other, 409, "idempotency-conflict")
    assert len(api.store.docs) == 2
    assert sorted(stored_inputs(api)) == sorted(f"jobs/{j}/input.csv" for j in api.store.docs)


@pytest.mark.parametrize("size", [1000, 3 * MB], ids=["spooled", "streaming"])
async def test_a_body_cut_mid_file_keeps_nothing(make_api: Callable[..., Api], size: int) -> None:
    api = make_api(max_upload_mb=8)
    data = big_csv(size)
    waits = [until_stored(api)] if size > SPOOL_BYTES else []
    r = await post(api, Body(head(), data[: size // 2], *waits, data[size // 2 : -100]))
    body = await problem_of(api, r, 400, "invalid-request")
    assert "ends before its closing boundary" in body["detail"]
    assert api.leftovers() == [] and api.store.docs == {} and api.sent == []


async def test_a_body_cut_after_the_file_part_keeps_nothing(api: Api) -> None:
    """The file part whole, but no closing boundary: not a complete form."""
    r = await post(api, Body(head(), CSV, b"\r\n--b0undary\r\n"))
    await problem_of(api, r, 400, "invalid-request")
    assert api.leftovers() == [] and api.store.docs == {}


async def test_too_large_mid_stream_stops_reading_and_keeps_nothing(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(max_upload_mb=2)
    data = big_csv(6 * MB)
    body = Body(head(), data[: 2 * MB - 1000], until_stored(api), data[2 * MB - 1000 :], END)
    r = await post(api, body)
    await problem_of(api, r, 413, "upload-too-large", detail="upload exceeds MAX_UPLOAD_MB (2 MB)")
    assert body.sent <= 3 * MB, f"the app read {body.sent / MB:.1f} MB before refusing"
    assert api.leftovers() == [] and api.store.docs == {} and api.sent == []


async def test_a_file_part_without_filename_is_refused(api: Api) -> None:
    r = await post(api, Body(text("file", CSV), END))
    body = await problem_of(api, r, 422, "validation-failed")
    assert locs(body) == [["body", "file"]] and "must be a file part" in body["detail"]
    assert api.leftovers() == [] and api.store.docs == {}


async def test_a_large_file_part_without_filename_is_refused_early(api: Api) -> None:
    """`curl -F file=<data.csv` sends the file as text: refused once past the text cap."""
    body = Body(head("file", None), big_csv(4 * MB), b"\r\n", END)
    r = await post(api, body)
    problem = await problem_of(api, r, 422, "validation-failed")
    assert locs(problem) == [["body", "file"]] and "file part" in problem["detail"]
    assert body.sent <= MB
    assert api.leftovers() == [] and api.store.docs == {}


@pytest.mark.parametrize("name", ["options", "callback_url", "output_format", "unknown"])
async def test_a_huge_text_field_is_refused_without_reading_it_all(
    make_api: Callable[..., Api], name: str
) -> None:
    """After a file large enough to be streaming: what was stored is removed too."""
    api = make_api(max_upload_mb=64)
    data = big_csv(2 * MB)
    body = Body(head(), data, until_stored(api), b"\r\n", text(name, b"x" * (20 * MB)), END)
    r = await post(api, body)
    problem = await problem_of(api, r, 422, "validation-failed")
    assert locs(problem) == [["body", name]]
    assert f"{MAX_TEXT_BYTES // 1024} KB" in problem["detail"]
    assert body.sent <= 2 * MB + 2 * MAX_TEXT_BYTES + (512 << 10)
    assert api.leftovers() == [] and api.store.docs == {} and api.sent == []


@pytest.mark.parametrize(
    ("field", "value", "status"),
    [
        ("options", b'{"min_length": -1}', 422),
        ("output_format", b"xml", 422),
        ("callback_url", b"file:///etc/passwd", 422),
        ("callback_url", b"http://127.0.0.1/hook", 422),
    ],
)
async def test_a_refused_field_after_a_streamed_file_keeps_nothing(
    make_api: Callable[..., Api], field: str, value: bytes, status: int
) -> None:
    api = make_api(max_upload_mb=8)
    data = big_csv(3 * MB)
    body = Body(head(), data, until_stored(api), b"\r\n", text(field, value), END)
    r = await post(api, body)
    problem = await problem_of(api, r, status)
    assert field in problem["detail"]
    assert api.leftovers() == [] and api.store.docs == {} and api.sent == []


async def test_an_unsupported_type_is_never_stored(make_api: Callable[..., Api]) -> None:
    """Its bytes go nowhere as they come; the 415 once the form has been read."""
    api = make_api(max_upload_mb=8)
    seen: list[list[str]] = []

    async def look() -> None:
        seen.append(api.leftovers())

    body = Body(head(filename="p.xlsx"), big_csv(3 * MB), look, b"\r\n", END)
    r = await post(api, body)
    await problem_of(api, r, 415, "unsupported-media-type")
    assert seen == [[]] and api.leftovers() == [] and api.store.docs == {}


async def test_a_second_file_part_stops_the_stream_and_keeps_nothing(
    make_api: Callable[..., Api],
) -> None:
    api = make_api(max_upload_mb=8)
    data = big_csv(3 * MB)
    body = Body(head(), data, until_stored(api), b"\r\n", head("options", "o.json"), b"{}\r\n", END)
    r = await post(api, body)
    problem = await problem_of(api, r, 400, "invalid-request")
    assert problem["detail"].startswith("Too many files. Maximum number of files is 1.")
    assert api.leftovers() == [] and api.store.docs == {}


async def test_the_client_going_away_mid_file_keeps_nothing(make_api: Callable[..., Api]) -> None:
    """The ASGI app driven by hand: the body's messages, then `http.disconnect` (what a
    server sends when the connection drops); the app must clean up and not raise."""
    api = make_api(max_upload_mb=8)
    data = big_csv(3 * MB)
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": head(), "more_body": True},
        *(
            {"type": "http.request", "body": data[i : i + MB], "more_body": True}
            for i in range(0, 2 * MB, MB)
        ),
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await until_stored(api)()  # streaming had begun when the client went
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/jobs/clean",
        "raw_path": b"/jobs/clean",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", MULTIPART.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await api.app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert api.leftovers() == [] and api.store.docs == {} and api.sent == []
