"""Uploads through the real API (uvicorn) into the real stores, read once as they arrive.

The file part goes to its destination while the body is still coming: a test waits for
that state (an S3 multipart upload in flight, an input file in DATA_DIR) between two
chunks of the body, then finishes it, oversteps MAX_UPLOAD_MB or drops the connection.
Whatever the ending, nothing may stay behind: no object, no incomplete multipart
upload, no file, no job.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import stack_or_skip
from tests.support.services import S3Bucket, Stack, stop

PREFIX = "uploads"
MULTIPART = "multipart/form-data; boundary=b0undary"
HEAD = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
END = b"\r\n--b0undary--\r\n"
MB = 1 << 20
LIMIT_MB = 12


class ClientGone(Exception):
    """Raised inside a request body: httpx drops the connection mid-body."""


def big_csv(size: int) -> bytes:
    row = b"1,Chaise,<p>une chaise</p>\n"
    return b",designation,description\n" + row * (size // len(row))


def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def body(*parts: bytes | Callable[[], None]) -> Iterator[bytes]:
    """The parts in order, in 64 kB chunks; a callable runs between two of them."""
    for part in parts:
        if callable(part):
            part()
            continue
        for i in range(0, len(part), 64 << 10):
            yield part[i : i + (64 << 10)]


def post(base: str, content: Iterator[bytes]) -> httpx.Response:
    with httpx.Client(base_url=base, timeout=120) as client:
        return client.post("/jobs/clean", content=content, headers={"content-type": MULTIPART})


def jobs(base: str) -> list[dict]:
    return httpx.get(f"{base}/jobs", params={"limit": 200}, timeout=30).json()["items"]


@pytest.fixture(scope="module")
def s3stack(tmp_path_factory: pytest.TempPathFactory, s3: S3Bucket) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("uploads-s3")
    with stack_or_skip(workdir, MONGO_DB="uploads", **s3.env(PREFIX)) as stack:
        yield stack


@pytest.fixture(scope="module")
def s3api(s3stack: Stack) -> Iterator[str]:
    """The API alone (no worker: jobs stay queued), MAX_UPLOAD_MB=12."""
    proc, base = s3stack.start_api(MAX_UPLOAD_MB=str(LIMIT_MB))
    yield base
    stop(proc)


def in_flight(s3: S3Bucket) -> Callable[[], None]:
    """A body step: wait until the upload is a multipart upload in the bucket (its first
    8 MB part sent while the rest of the body has not come yet)."""
    return lambda: until(lambda: s3.incomplete_uploads(PREFIX) != [], "a multipart upload")


def test_a_large_upload_streams_into_the_bucket(s3api: str, s3: S3Bucket, s3stack: Stack) -> None:
    data = big_csv(10 * MB)
    r = post(s3api, body(HEAD, data[: 9 * MB], in_flight(s3), data[9 * MB :], END))
    assert r.status_code == 202, r.text
    key = f"{PREFIX}/jobs/{r.json()['id']}/input.csv"
    assert hashlib.sha256(s3.read(key)).digest() == hashlib.sha256(data).digest()
    assert s3.incomplete_uploads(PREFIX) == []
    assert not any(p.is_file() for p in s3stack.data_dir.rglob("*"))  # nothing spooled here


def test_over_the_limit_mid_stream_aborts_the_multipart_upload(
    s3api: str, s3: S3Bucket, s3stack: Stack
) -> None:
    before, jobs_before = s3.keys(f"{PREFIX}/jobs"), jobs(s3api)
    data = big_csv((LIMIT_MB + 1) * MB)
    r = post(s3api, body(HEAD, data[: 9 * MB], in_flight(s3), data[9 * MB :], END))
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"upload exceeds MAX_UPLOAD_MB ({LIMIT_MB} MB)"
    assert s3.incomplete_uploads(PREFIX) == []
    assert s3.keys(f"{PREFIX}/jobs") == before and jobs(s3api) == jobs_before
    assert not any(p.is_file() for p in s3stack.data_dir.rglob("*"))


def test_client_gone_mid_file_aborts_the_multipart_upload(s3api: str, s3: S3Bucket) -> None:
    before, jobs_before = s3.keys(f"{PREFIX}/jobs"), jobs(s3api)
    data = big_csv(10 * MB)

    def gone() -> None:
        raise ClientGone

    with pytest.raises(ClientGone):
        post(s3api, body(HEAD, data[: 9 * MB], in_flight(s3), gone))
    until(lambda: s3.incomplete_uploads(PREFIX) == [], "the multipart upload aborted")
    assert s3.keys(f"{PREFIX}/jobs") == before and jobs(s3api) == jobs_before


def test_client_gone_mid_file_leaves_no_file(stack: Stack, tmp_path: Path) -> None:
    """DATA_DIR: the input file grows as the body comes, and goes when the client does."""
    data_dir = tmp_path / "data"
    proc, base = stack.start_api(DATA_DIR=str(data_dir))
    inputs = lambda: list(data_dir.glob("jobs/*/input.csv"))  # noqa: E731
    data = big_csv(4 * MB)

    def gone() -> None:
        until(lambda: inputs() != [], "the input file in DATA_DIR")
        raise ClientGone

    try:
        jobs_before = jobs(base)
        with pytest.raises(ClientGone):
            post(base, body(HEAD, data[: 3 * MB], gone))
        until(lambda: not any((data_dir / "jobs").iterdir()), "the job's folder removed")
        assert jobs(base) == jobs_before
    finally:
        stop(proc)
