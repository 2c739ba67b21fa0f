"""The Python client (`src.client`) and `clean-data --remote`, against the real service:
the real API, Redis, store and Celery worker of tests/integration/conftest.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest

from src.client import ApiError, CleaningClient, CleaningOptions, Job, JobFailed, JobStatus
from src.data.pipeline import clean_file
from tests.integration.conftest import hold_path, wait_held
from tests.support.hold import held
from tests.support.inputs import make_input
from tests.support.services import VENV_BIN, Stack, stop

BAD_CSV = "a,b\n1,2\n"  # no designation/description: the job fails
API_KEY = "client-key-1"


@pytest.fixture
def client(api: httpx.Client) -> Iterator[CleaningClient]:
    with CleaningClient(str(api.base_url).rstrip("/")) as c:
        yield c


@pytest.fixture(scope="module")
def keyed_api(stack: Stack, worker: subprocess.Popen) -> Iterator[str]:
    """The base URL of an API with API_KEYS set (on the session's store, so jobs run)."""
    proc, base = stack.start_api(API_KEYS=f"{API_KEY},another-key")
    yield base
    stop(proc)


def _key(name: str) -> str:
    """An idempotency key of this test run only (the store lives as long as the session)."""
    return f"client-{name}-{os.getpid()}-{time.time_ns()}"


def test_clean_matches_a_local_run(client: CleaningClient, sample_path: Path, tmp_path: Path):
    seen: list[Job] = []
    dest = tmp_path / "out" / "remote.csv"
    job = client.clean(sample_path, dest, {"lowercase": True}, on_progress=seen.append)

    assert job.status == JobStatus.SUCCEEDED and job.report is not None
    assert job.report.rows_in == job.report.rows_out == 672
    assert job.options == CleaningOptions(lowercase=True)
    assert seen and seen[-1] == job  # on_progress had the final state
    assert [j.id for j in seen] == [job.id] * len(seen)
    expected = tmp_path / "local.csv"
    local = clean_file(sample_path, expected, CleaningOptions(lowercase=True))
    assert dest.read_bytes() == expected.read_bytes()
    assert job.report.columns == local.columns
    assert sorted(p.name for p in dest.parent.iterdir()) == ["remote.csv"]  # no temp file left


def test_submit_source_wait_download_parquet(
    client: CleaningClient, stack: Stack, sample_path: Path, tmp_path: Path
) -> None:
    shutil.copy(sample_path, stack.data_dir / "raw" / "client_X.csv")
    job = client.submit_source("raw/client_X.csv", CleaningOptions(drop_duplicates=True), "parquet")
    assert job.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    assert job.input_name == "client_X.csv" and job.output_format == "parquet"
    done = client.wait(job.id, timeout=60)
    assert done.status == JobStatus.SUCCEEDED, done
    assert done.result_url == f"/jobs/{job.id}/result"
    dest = client.download(done, tmp_path / "x.parquet")
    assert dest.read_bytes()[:4] == b"PAR1"
    expected = tmp_path / "local.parquet"
    clean_file(sample_path, expected, CleaningOptions(drop_duplicates=True))
    assert pl.read_parquet(dest).equals(pl.read_parquet(expected))
    assert client.get(job.id) == done


def test_options_as_dict_or_model_and_idempotency(
    client: CleaningClient, sample_path: Path
) -> None:
    key = _key("options")
    first = client.submit(sample_path, {"lowercase": True}, idempotency_key=key)
    # the same request, options as the model: the first job again, not a new one
    again = client.submit(sample_path, CleaningOptions(lowercase=True), idempotency_key=key)
    assert again.id == first.id
    assert first.options.lowercase and first.options.text_columns == ["designation", "description"]
    with pytest.raises(ApiError) as refused:
        client.submit(sample_path, {"lowercase": False}, idempotency_key=key)
    assert refused.value.status == 409
    assert refused.value.type == "/problems/idempotency-conflict"
    assert "Idempotency-Key" in refused.value.detail
    assert client.wait(first, timeout=60).status == JobStatus.SUCCEEDED


def test_failed_job_raises_job_failed(client: CleaningClient, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_CSV)
    dest = tmp_path / "out.csv"
    with pytest.raises(JobFailed) as failed:
        client.clean(bad, dest)
    job = failed.value.job
    assert job.status == JobStatus.FAILED
    assert "missing expected column(s): designation, description" in str(failed.value)
    assert str(failed.value) == job.error
    assert not dest.exists()
    with pytest.raises(ApiError) as no_result:
        client.download(job, dest)
    assert no_result.value.status == 409 and "failed" in no_result.value.detail
    assert not dest.exists() and list(tmp_path.iterdir()) == [bad]


def test_refusals_carry_the_problem_document(client: CleaningClient, tmp_path: Path) -> None:
    sheet = tmp_path / "x.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    with pytest.raises(ApiError) as refused:
        client.submit(sheet)
    e = refused.value
    assert (e.status, e.type, e.instance) == (
        415,
        "/problems/unsupported-media-type",
        "/jobs/clean",
    )
    assert e.title == "Unsupported media or file type" and ".xlsx" in e.detail
    assert str(e).startswith("415 Unsupported media or file type: ") and ".xlsx" in str(e)

    csv = tmp_path / "ok.csv"
    csv.write_text(BAD_CSV)
    with pytest.raises(ApiError) as invalid:
        client.submit(csv, {"min_length": -1})
    assert invalid.value.status == 422 and invalid.value.type == "/problems/validation-failed"
    assert any("min_length" in e["loc"] for e in invalid.value.errors), invalid.value.errors

    with pytest.raises(ApiError) as missing:
        client.submit_source("raw/no-such-file.csv")
    assert missing.value.status == 404 and missing.value.type == "/problems/source-not-found"
    with pytest.raises(ApiError) as unknown:
        client.get("0" * 22)
    assert unknown.value.status == 404 and unknown.value.type == "/problems/job-not-found"
    with pytest.raises(FileNotFoundError):  # a local path that does not exist: no request
        client.submit(tmp_path / "nowhere.csv")


def test_cancel_and_delete(
    client: CleaningClient, api: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    """Held after its first chunk (tests/support/hold.py): the job cannot end before the cancel."""
    big = make_input(tmp_path / "big.csv", times=3)
    with held(hold_path(stack)) as hold:
        job = client.submit(big, {"chunk_rows": 200})
        wait_held(api, job.id, hold)
        with pytest.raises(ApiError) as busy:
            client.delete(job)
        assert busy.value.status == 409 and "cancel it first" in busy.value.detail
        asked = client.cancel(job)
        assert asked.cancel_requested and asked.status == JobStatus.RUNNING
        done = client.wait(job, timeout=60)  # the held run sees the cancel at its next report
    assert done.status == JobStatus.CANCELLED, done
    with pytest.raises(ApiError) as finished:
        client.cancel(job)
    assert finished.value.status == 409
    client.delete(job)
    with pytest.raises(ApiError) as gone:
        client.get(job)
    assert gone.value.status == 404


def test_wait_keeps_its_timeout_on_a_silent_job(stack: Stack, sample_path: Path) -> None:
    # An API on another database: no worker sees its jobs, so they stay queued (silent).
    proc, base = stack.start_api(MONGO_DB="cleaning_client_unserved")
    try:
        with CleaningClient(base) as client:
            job = client.submit(sample_path)
            seen: list[Job] = []
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="still queued"):
                client.wait(job, timeout=1.0, on_progress=seen.append)
            assert time.monotonic() - started < 10  # not the stream's 15 s pings, nor forever
            assert [j.status for j in seen] == [JobStatus.QUEUED]
            assert client.cancel(job).status == JobStatus.CANCELLED
            assert client.wait(job, timeout=10).status == JobStatus.CANCELLED
    finally:
        stop(proc)


class _NoStream(httpx.BaseTransport):
    """The real service behind a proxy that breaks Server-Sent Events: `mode` "html"
    answers them with an error page, "cut" ends the stream after one event."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.inner = httpx.HTTPTransport()
        self.streams = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/events"):
            return self.inner.handle_request(request)
        self.streams += 1
        if self.mode == "html":
            return httpx.Response(502, html="<html><body>Bad gateway</body></html>")
        real = self.inner.handle_request(request)
        real.read()  # the whole real stream; send on only its first event, then cut
        first = re.split(rb"\r?\n\r?\n", real.content)[0] + b"\r\n\r\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=first)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("mode", ["html", "cut"])
def test_wait_falls_back_when_the_stream_fails(
    api: httpx.Client, sample_path: Path, tmp_path: Path, mode: str
) -> None:
    transport = _NoStream(mode)
    with CleaningClient(str(api.base_url).rstrip("/"), transport=transport) as client:
        seen: list[Job] = []
        job = client.clean(sample_path, tmp_path / "o.csv", on_progress=seen.append, timeout=60)
    assert job.status == JobStatus.SUCCEEDED and seen[-1] == job
    assert transport.streams == 1
    assert (tmp_path / "o.csv").stat().st_size > 0


def test_list_and_iter_jobs(client: CleaningClient, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(BAD_CSV)
    ids = [client.submit(bad).id for _ in range(3)]
    for job_id in ids:
        client.wait(job_id, timeout=60)
    page = client.list_jobs(JobStatus.FAILED, limit=2)
    assert len(page.items) == 2 and page.next_cursor
    assert all(j.status == JobStatus.FAILED for j in page.items)
    mine = []
    for job in client.iter_jobs(JobStatus.FAILED, page_size=2):  # newest first, page by page
        if job.id in ids:
            mine.append(job.id)
        if len(mine) == len(ids):
            break
    assert mine == ids[::-1]
    with pytest.raises(ApiError) as bad_cursor:
        client.list_jobs(cursor="!!")
    assert bad_cursor.value.status == 400


def test_api_key(keyed_api: str, sample_path: Path, tmp_path: Path) -> None:
    for key in (None, "wrong"):
        with CleaningClient(keyed_api, api_key=key) as client, pytest.raises(ApiError) as denied:
            client.submit(sample_path)
        assert denied.value.status == 401 and denied.value.type == "/problems/unauthorized"
        assert "X-API-Key" in denied.value.detail
    with CleaningClient(keyed_api, api_key=API_KEY) as client:
        job = client.clean(sample_path, tmp_path / "o.csv", timeout=60)  # the stream too
        assert job.status == JobStatus.SUCCEEDED


# -- clean-data --remote --------------------------------------------------------------


def _cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "clean-data"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_cli_remote_like_a_local_run(api: httpx.Client, sample_path: Path, tmp_path: Path):
    base = str(api.base_url).rstrip("/")
    out, report = tmp_path / "remote.csv", tmp_path / "remote.json"
    remote = _cli("--remote", base, sample_path, "-o", out, "--report", report, "--lowercase")
    assert remote.returncode == 0, remote.stderr
    local_out, local_report = tmp_path / "local.csv", tmp_path / "local.json"
    local = _cli(sample_path, "-o", local_out, "--report", local_report, "--lowercase")
    assert local.returncode == 0, local.stderr

    assert out.read_bytes() == local_out.read_bytes()
    lines, local_lines = remote.stdout.splitlines(), local.stdout.splitlines()
    assert lines[0].startswith(f"{sample_path} → {out} (job ")
    assert lines[1].startswith("rows: 672 in, 672 out")
    assert lines[2:] == local_lines[2:]  # the same summary (the timings aside)
    data, expected = json.loads(report.read_text()), json.loads(local_report.read_text())
    assert data["input"] == str(sample_path) and data["output"] == str(out)
    for name in ("rows_in", "rows_out", "columns", "options", "encoding", "output_format"):
        assert data[name] == expected[name], name


def test_cli_remote_parquet_and_quiet(api: httpx.Client, sample_path: Path, tmp_path: Path):
    out = tmp_path / "o.parquet"
    remote = _cli("--remote", str(api.base_url), sample_path, "-o", out, "-q")
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == "" and out.read_bytes()[:4] == b"PAR1"


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("bad.csv", BAD_CSV, "failed: missing expected column(s): designation, description"),
        ("x.xlsx", "PK", "the service refused: 415 Unsupported media or file type"),
    ],
    ids=["job-fails", "refused"],
)
def test_cli_remote_bad_input_one_line_no_output(
    api: httpx.Client, tmp_path: Path, name: str, content: str, words: str
) -> None:
    src = tmp_path / name
    src.write_text(content)
    out = tmp_path / "out" / "o.csv"
    result = _cli("--remote", str(api.base_url), src, "-o", out)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert lines[0].startswith("clean-data: error: ")
    assert not out.exists() and not out.parent.exists()


def test_cli_remote_api_key_from_the_environment(
    keyed_api: str, sample_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o.csv"
    denied = _cli("--remote", keyed_api, sample_path, "-o", out, CLEANING_API_KEY="nope")
    assert denied.returncode == 1 and "401" in denied.stderr and not out.exists()
    ok = _cli("--remote", keyed_api, sample_path, "-o", out, "-q", CLEANING_API_KEY=API_KEY)
    assert ok.returncode == 0, ok.stderr
    out.unlink()
    flag = _cli("--remote", keyed_api, sample_path, "-o", out, "-q", "--api-key", API_KEY)
    assert flag.returncode == 0 and out.exists(), flag.stderr
