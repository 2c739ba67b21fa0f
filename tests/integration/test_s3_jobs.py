"""The job service with its files in an S3 bucket (moto's real server), end to end.

Its own stacks (Redis, store, workers, API) with STORAGE_URL set: inputs and results
must go to the bucket and never to DATA_DIR, and the results must be byte for byte
what the `clean-data` command writes for the same file. And with the store gone, the API
answers 503 and keeps nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration.conftest import BUCKET, stack_or_skip, unavailable, upload, wait_job
from tests.support.inputs import make_input
from tests.support.services import (
    VENV_BIN,
    S3Bucket,
    S3Server,
    ServiceUnavailable,
    Stack,
    stop,
    wait_for,
)

PREFIX = "svc"
SPLIT_PREFIX = "svc-split"


def cli_output(source: Path, target: Path, *flags: str) -> bytes:
    """What `clean-data` writes for `source`: the reference every job result must equal."""
    done = subprocess.run(
        [str(VENV_BIN / "clean-data"), str(source), "-o", str(target), "-q", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return target.read_bytes()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def job_keys(s3: S3Bucket, prefix: str, job_id: str) -> set[str]:
    """The job's object names, relative to its folder (`input.csv`, `result.csv`, …)."""
    folder = f"{prefix}/jobs/{job_id}"
    return {key.removeprefix(f"{folder}/") for key in s3.keys(folder)}


@pytest.fixture(scope="module")
def s3stack(tmp_path_factory: pytest.TempPathFactory, s3: S3Bucket) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("s3jobs")
    with stack_or_skip(workdir, MONGO_DB="s3jobs", **s3.env(PREFIX)) as s:
        yield s


@pytest.fixture(scope="module")
def s3api(s3stack: Stack) -> Iterator[httpx.Client]:
    worker = s3stack.start_worker("s3", concurrency=2)
    proc, base = s3stack.start_api()
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client
    stop(proc)
    stop(worker)


def test_upload_goes_to_the_bucket_and_matches_cli(
    s3api: httpx.Client, s3stack: Stack, s3: S3Bucket, sample_path: Path, tmp_path: Path
) -> None:
    r = upload(s3api, sample_path, json.dumps({"lowercase": True, "drop_duplicates": True}))
    assert r.status_code == 202, r.text
    done = wait_job(s3api, r.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["rows_done"] == done["progress"]["rows_total"] == 672

    result = s3api.get(f"/jobs/{done['id']}/result")
    assert result.status_code == 200
    assert "rakuten_sample.cleaned.csv" in result.headers["content-disposition"]
    assert result.headers["content-type"].startswith("text/csv")
    assert int(result.headers["content-length"]) == len(result.content)
    expected = cli_output(sample_path, tmp_path / "out.csv", "--lowercase", "--drop-duplicates")
    assert result.content == expected

    # Both files in the bucket, none in DATA_DIR (not even a scratch copy left behind).
    assert job_keys(s3, PREFIX, done["id"]) == {"input.csv", "result.csv"}
    assert s3.read(f"{PREFIX}/jobs/{done['id']}/input.csv") == sample_path.read_bytes()
    assert s3.read(f"{PREFIX}/jobs/{done['id']}/result.csv") == expected
    assert files_under(s3stack.data_dir) == []


def test_source_key_in_the_bucket(
    s3api: httpx.Client, s3stack: Stack, s3: S3Bucket, sample_path: Path, tmp_path: Path
) -> None:
    source = f"{PREFIX}/raw/X_test.csv"
    s3.put(source, sample_path.read_bytes())
    r = s3api.post("/jobs/clean", json={"source": "raw/X_test.csv"})
    assert r.status_code == 202, r.text
    done = wait_job(s3api, r.json()["id"])
    assert done["status"] == "succeeded", done
    body = s3api.get(f"/jobs/{done['id']}/result").content
    assert body == cli_output(sample_path, tmp_path / "expected.csv")
    assert s3.read(source) == sample_path.read_bytes()  # a named source is not consumed
    assert job_keys(s3, PREFIX, done["id"]) == {"result.csv"}  # and not copied
    assert files_under(s3stack.data_dir) == []
    # the API's checks hold for keys too
    assert s3api.post("/jobs/clean", json={"source": "raw/missing.csv"}).status_code == 404
    assert s3api.post("/jobs/clean", json={"source": "../raw/X_test.csv"}).status_code == 400


def test_upload_over_the_limit_413_leaves_nothing(
    s3api: httpx.Client, s3stack: Stack, s3: S3Bucket, tmp_path: Path
) -> None:
    """10 MB against a 9 MB limit: past the first 8 MB part, so a multipart upload begins."""
    proc, base = s3stack.start_api(MAX_UPLOAD_MB="9")
    big = tmp_path / "big.csv"
    big.write_bytes(b",designation,description\n" + b"1,abc,def\n" * 1_050_000)
    before = s3.keys(f"{PREFIX}/jobs")
    jobs_before = s3api.get("/jobs", params={"limit": 200}).json()["items"]
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            r = upload(c, big)
            assert r.status_code == 413 and "MAX_UPLOAD_MB" in r.json()["detail"]
    finally:
        stop(proc)
    assert s3api.get("/jobs", params={"limit": 200}).json()["items"] == jobs_before
    assert s3.keys(f"{PREFIX}/jobs") == before
    assert s3.incomplete_uploads(PREFIX) == []
    assert files_under(s3stack.data_dir) == []


@pytest.fixture(scope="module")
def split_stack(tmp_path_factory: pytest.TempPathFactory, s3: S3Bucket) -> Iterator[Stack]:
    """A stack that cuts any CSV above 50 kB into ~20 kB parts (its own Redis: its own queue)."""
    env = {**s3.env(SPLIT_PREFIX), "SPLIT_ABOVE_MB": "0.05", "PART_MB": "0.02"}
    with stack_or_skip(tmp_path_factory.mktemp("s3split"), MONGO_DB="s3split", **env) as s:
        yield s


@pytest.fixture(scope="module")
def split_api(split_stack: Stack) -> Iterator[httpx.Client]:
    """Two workers to share the parts."""
    workers = [split_stack.start_worker(f"split{i}", concurrency=1) for i in (1, 2)]
    proc, base = split_stack.start_api()
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client
    stop(proc)
    for worker in workers:
        stop(worker)


def test_split_job_matches_cli(
    split_api: httpx.Client, split_stack: Stack, s3: S3Bucket, tmp_path: Path
) -> None:
    """Split or not, the result is the CLI's, byte for byte.

    The sample twice over (816 kB, ~40 parts): every row of the second copy repeats
    one of the first, in another part, so the duplicate pass must see across parts.
    """
    tiled = make_input(tmp_path / "tiled.csv", times=2)
    assert tiled.stat().st_size > 0.05 * (1 << 20)
    options = {"lowercase": True, "drop_duplicates": True}
    r = upload(split_api, tiled, json.dumps(options))
    assert r.status_code == 202, r.text
    done = wait_job(split_api, r.json()["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["report"]["rows_in"] == 2 * 672
    assert done["report"]["duplicate_rows_dropped"] >= 672

    body = split_api.get(f"/jobs/{done['id']}/result").content
    expected = cli_output(tiled, tmp_path / "expected.csv", "--lowercase", "--drop-duplicates")
    assert body == expected
    # the parts go just after the merge marks the job succeeded: wait for that state
    wait_for(
        lambda: job_keys(s3, SPLIT_PREFIX, done["id"]) == {"input.csv", "result.csv"},
        30,
        "the parts removed from the bucket after the merge",
    )
    assert files_under(split_stack.data_dir) == []


DOWN_PREFIX = "svc-down"


@pytest.fixture(scope="module")
def down_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server of this module's own: the test stops it (the shared one serves others)."""
    try:
        server = S3Server.start(tmp_path_factory.mktemp("s3down"))
    except ServiceUnavailable as exc:
        unavailable("S3 server (moto_server)", exc)
    try:
        yield server
    finally:
        server.stop()


def test_object_store_down_503_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory, down_store: S3Server, sample_path: Path
) -> None:
    """With the object store gone, a submission (upload or source) and a download answer 503
    with Retry-After, and nothing is left: no job, no task, no file."""
    bucket = down_store.bucket(BUCKET)
    workdir = tmp_path_factory.mktemp("s3down-stack")
    with stack_or_skip(workdir, MONGO_DB="s3down", **bucket.env(DOWN_PREFIX)) as stack:
        worker = stack.start_worker("down", concurrency=1)
        proc, base = stack.start_api()
        try:
            with httpx.Client(base_url=base, timeout=120) as api:
                r = upload(api, sample_path)
                assert r.status_code == 202, r.text
                done = wait_job(api, r.json()["id"])
                assert done["status"] == "succeeded", done
                stop(worker)  # from here on, a task sent would stay in the queue
                jobs_before = api.get("/jobs", params={"limit": 200}).json()["items"]

                down_store.stop()
                refused = [
                    upload(api, sample_path),
                    api.post("/jobs/clean", json={"source": "raw/X_test.csv"}),
                    api.get(f"/jobs/{done['id']}/result"),
                ]
                for r in refused:
                    assert r.status_code == 503, r.text
                    assert int(r.headers["retry-after"]) > 0
                    assert r.headers["content-type"] == "application/problem+json"
                    problem = r.json()
                    assert problem["type"] == "/problems/service-unavailable", problem
                    assert "object store unavailable" in problem["detail"], problem

                assert api.get("/jobs", params={"limit": 200}).json()["items"] == jobs_before
                assert api.get("/ready").status_code == 200  # MongoDB and Redis still answer
        finally:
            stop(proc)
            stop(worker)
        queued = redis.Redis.from_url(stack.redis.url).llen("cleaning")
        assert queued == 0, "a task was sent for a refused submission"
        assert files_under(stack.data_dir) == []  # no upload spooled or copied to DATA_DIR
