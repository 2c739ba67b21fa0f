"""Both storage backends keep the same promises: a folder, and a real S3 server (moto).

Every test runs against each backend; the S3 one gets a prefix of its own in the
session's bucket, so the tests never see each other's keys.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from src.core.object_storage import UPLOAD_CHUNK, ObjectStorage
from src.core.storage import LocalStorage, Storage, TooLarge
from src.jobs import layout
from src.jobs.layout import SourceError, input_relpath, part_relpaths, result_relpath
from tests.support.services import S3Bucket

# Over one copy chunk (1 MiB) and not a multiple of it: reads and parts meet uneven ends.
DATA = bytes(range(256)) * 6_000 + b"tail"


@pytest.fixture(params=["local", "s3"])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "data")
    return object_storage(request.getfixturevalue("s3"), tmp_path)


def object_storage(bucket: S3Bucket, tmp_path: Path) -> ObjectStorage:
    env = bucket.env(f"t-{uuid.uuid4().hex[:12]}")
    return ObjectStorage(
        env["STORAGE_URL"],
        env["S3_ENDPOINT_URL"],
        env["S3_ACCESS_KEY"],
        env["S3_SECRET_KEY"],
        env["S3_REGION"],
        tmp_path / "data" / ".scratch",
    )


def put(files: Storage, rel: str, data: bytes = DATA) -> None:
    files.save_stream(rel, io.BytesIO(data), limit=len(data))


def read(files: Storage, rel: str) -> bytes:
    with files.fetch(rel) as path:
        return path.read_bytes()


def scratch_is_empty(files: Storage) -> bool:
    """ObjectStorage's local copies are gone once their context ends."""
    if isinstance(files, ObjectStorage) and files.scratch.exists():
        return not [p for p in files.scratch.rglob("*") if p.is_file()]
    return True


def test_save_stream_gives_hash_and_size(files: Storage) -> None:
    rel = input_relpath("job1", ".csv")
    digest, size = files.save_stream(rel, io.BytesIO(DATA), limit=len(DATA))
    assert digest == hashlib.sha256(DATA).hexdigest()
    assert size == len(DATA) == files.size(rel)
    assert read(files, rel) == DATA


def test_save_stream_over_the_limit_keeps_nothing(files: Storage) -> None:
    rel = input_relpath("job1", ".csv")
    with pytest.raises(TooLarge):
        files.save_stream(rel, io.BytesIO(DATA), limit=len(DATA) - 1)
    assert files.size(rel) is None


def test_save_stream_exactly_at_the_limit_is_kept(files: Storage) -> None:
    rel = input_relpath("job1", ".csv")
    assert files.save_stream(rel, io.BytesIO(b"abc"), limit=3)[1] == 3
    assert files.size(rel) == 3


def test_save_stream_over_the_limit_after_several_parts_keeps_nothing(files: Storage) -> None:
    """Past one S3 part: the multipart upload already begun is aborted, not completed."""
    rel = input_relpath("job1", ".csv")
    big = io.BytesIO(b"x" * (UPLOAD_CHUNK + (2 << 20)))
    with pytest.raises(TooLarge):
        files.save_stream(rel, big, limit=UPLOAD_CHUNK + (1 << 20))
    assert files.size(rel) is None


def test_size_of_a_missing_key_is_none(files: Storage) -> None:
    assert files.size("jobs/nope/input.csv") is None


def test_fetch_gives_the_bytes(files: Storage) -> None:
    put(files, "raw/sample.csv")
    with files.fetch("raw/sample.csv") as path:
        assert path.suffix == ".csv"  # the engine picks the reader by suffix
        assert path.read_bytes() == DATA
    assert scratch_is_empty(files)


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 10), (0, len(DATA)), (5, 1 << 20), ((1 << 20) - 3, (1 << 20) + 7), (100, 100)],
)
def test_fetch_range_gives_exactly_those_bytes(files: Storage, start: int, end: int) -> None:
    put(files, "raw/sample.csv")
    with files.fetch_range("raw/sample.csv", start, end) as (path, lo, hi):
        with path.open("rb") as fh:
            fh.seek(lo)
            got = fh.read(hi - lo)
        assert hi - lo == end - start
        assert got == DATA[start:end]
    assert scratch_is_empty(files)


def test_publish_stores_on_success(files: Storage) -> None:
    rel = result_relpath("job1", "csv")
    with files.publish(rel) as path:
        assert path.name == "result.csv"  # the engine picks the writer by suffix
        path.write_bytes(DATA)
    assert files.size(rel) == len(DATA)
    assert read(files, rel) == DATA
    assert scratch_is_empty(files)


def test_publish_stores_nothing_on_an_exception(files: Storage) -> None:
    rel = part_relpaths("job1", 3, "csv")[0]
    with pytest.raises(RuntimeError, match="cancelled"), files.publish(rel) as path:
        path.write_bytes(DATA)
        raise RuntimeError("cancelled")
    assert files.size(rel) is None
    assert scratch_is_empty(files)
    if isinstance(files, LocalStorage):  # no temp folder left beside the target either
        assert not list(files.path(rel).parent.iterdir())


def test_publish_replaces_an_earlier_result(files: Storage) -> None:
    rel = result_relpath("job1", "csv")
    for data in (b"first", b"second"):
        with files.publish(rel) as path:
            path.write_bytes(data)
    assert read(files, rel) == b"second"


def test_iter_bytes(files: Storage) -> None:
    put(files, "raw/sample.csv")
    chunks = list(files.iter_bytes("raw/sample.csv", chunk=100_000))
    assert b"".join(chunks) == DATA
    assert len(chunks) > 1


def test_resolve_source_accepts_a_stored_key(files: Storage) -> None:
    put(files, "raw/X_test.csv")
    assert layout.resolve_source(files, "raw/X_test.csv") == "raw/X_test.csv"
    assert layout.resolve_source(files, "./raw//X_test.csv") == "raw/X_test.csv"


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("../outside.csv", SourceError),
        ("raw/../../outside.csv", SourceError),
        ("/etc/passwd", SourceError),
        ("raw\\X_test.csv", SourceError),
        ("", SourceError),
        ("raw/missing.csv", FileNotFoundError),
        ("raw", FileNotFoundError),  # a folder (a prefix) is no file
    ],
)
def test_resolve_source_refuses(files: Storage, source: str, error: type[Exception]) -> None:
    put(files, "raw/X_test.csv")
    with pytest.raises(error):
        layout.resolve_source(files, source)


def test_remove_job_removes_only_that_job(files: Storage) -> None:
    mine = [
        input_relpath("job1", ".csv"),
        part_relpaths("job1", 0, "csv")[1],
        result_relpath("job1", "csv"),
    ]
    # job10 shares job1's name as a prefix: a key match without the '/' would take it too
    theirs = [input_relpath("job10", ".csv"), result_relpath("job2", "csv"), "raw/keep.csv"]
    for rel in mine + theirs:
        put(files, rel, rel.encode())
    layout.remove_job(files, "job1")
    assert [files.size(rel) for rel in mine] == [None] * len(mine)
    assert [read(files, rel) for rel in theirs] == [rel.encode() for rel in theirs]
    layout.remove_job(files, "job1")  # twice: nothing left to remove is no error


def test_remove_parts_keeps_input_and_result(files: Storage) -> None:
    parts = [rel for i in range(3) for rel in part_relpaths("job1", i, "csv")]
    kept = [input_relpath("job1", ".csv"), result_relpath("job1", "csv")]
    for rel in parts + kept:
        put(files, rel, rel.encode())
    layout.remove_parts(files, "job1")
    assert all(files.size(rel) is None for rel in parts)
    assert all(files.size(rel) is not None for rel in kept)


def test_remove_one_key(files: Storage) -> None:
    put(files, "raw/a.csv")
    put(files, "raw/b.csv")
    files.remove("raw/a.csv")
    files.remove("raw/a.csv")  # already gone: no error
    assert files.size("raw/a.csv") is None
    assert files.size("raw/b.csv") == len(DATA)


def test_object_storage_keys_live_under_the_prefix(s3: S3Bucket, tmp_path: Path) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}/nested"
    env = s3.env(prefix)
    files = ObjectStorage(
        env["STORAGE_URL"],
        env["S3_ENDPOINT_URL"],
        env["S3_ACCESS_KEY"],
        env["S3_SECRET_KEY"],
        env["S3_REGION"],
        tmp_path,
    )
    files.prepare()  # exists already: no error
    put(files, "raw/a.csv", b"a")
    assert s3.keys(prefix) == {f"{prefix}/raw/a.csv"}
    assert s3.read(f"{prefix}/raw/a.csv") == b"a"


def test_object_storage_refuses_a_bad_url(tmp_path: Path) -> None:
    for url in ("http://bucket/x", "s3:///x", "bucket/x"):
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            ObjectStorage(url, "http://127.0.0.1:9", "k", "s", "us-east-1", tmp_path)


def test_ensure_bucket_creates_a_missing_one(s3: S3Bucket, tmp_path: Path) -> None:
    name = f"new-{uuid.uuid4().hex[:8]}"
    env = s3.env("p")
    files = ObjectStorage(
        f"s3://{name}/p",
        env["S3_ENDPOINT_URL"],
        env["S3_ACCESS_KEY"],
        env["S3_SECRET_KEY"],
        env["S3_REGION"],
        tmp_path,
    )
    files.prepare()
    put(files, "x.csv", b"x")
    assert s3.client.bucket_exists(name)
    assert read(files, "x.csv") == b"x"


def test_a_missing_file_is_file_not_found_on_both(files: Storage) -> None:
    """The runner turns this into a job `failed` with a readable error, on either backend."""
    with pytest.raises(FileNotFoundError), files.fetch("jobs/none/input.csv") as path:
        path.read_bytes()


def test_remove_job_refuses_an_empty_id(files: Storage) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        layout.remove_job(files, "")


def test_scratch_of_dead_processes_is_removed(s3: S3Bucket, tmp_path: Path) -> None:
    """A worker SIGKILLed mid-download leaves its scratch copy; the next job removes it."""
    files = object_storage(s3, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    files.scratch.mkdir(parents=True)
    left = files.scratch / f"s3-{host}-{dead.pid}-abc.csv"
    left_dir = files.scratch / f"s3-{host}-{dead.pid}-out"
    mine = files.scratch / f"s3-{host}-{os.getpid()}-def.csv"
    other_host = files.scratch / f"s3-elsewhere-{dead.pid}-ghi.csv"
    for path in (left, mine, other_host):
        path.write_bytes(DATA)
    left_dir.mkdir()
    (left_dir / "result.csv").write_bytes(DATA)
    layout.discard_abandoned(files, "job1")
    assert not left.exists() and not left_dir.exists()
    assert mine.exists() and other_host.exists()
